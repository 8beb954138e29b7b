//! Procedural data sets: a source task to pretrain a small model on and two target tasks
//! whose classes differ from it. Every image is drawn from its own RNG, seeded by (task,
//! split, seed, index), so the same seed gives byte-identical tables whatever the thread
//! count.
//!
//! Jitter per image, shared by all classes so it carries no label information: phase,
//! scale (0.85 to 1.15 of the class frequency), orientation (±6°), foreground and
//! background colour, contrast and additive Gaussian noise.
//!
//! The two targets ask for different things. `textures` is pattern geometry the source
//! does not have (new families, in-between angles): mid- and high-level features. `colours`
//! is the one thing the source task taught the network to ignore: its class is an
//! unordered pair of colours from a palette of five, drawn on a texture chosen per image,
//! uniformly, from the source task's sixteen (so the texture carries no label information),
//! which of the two is the foreground decided by a coin, each channel of each colour moved
//! by up to ±0.07. The source's colour jitter is replaced by the class's colours there; every
//! other part of the jitter is the same.

use std::f32::consts::PI;

use image::{Rgb, RgbImage};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A texture family with its class-defining parameters (angles in degrees, frequencies in
/// cycles per image).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    Stripes { angle: f32, freq: f32 },
    Checkers { cells: f32, angle: f32 },
    Dots { cells: f32, radius: f32, hex: bool },
    Grid { cells: f32, width: f32 },
    Noise { octaves: u32, freq: f32 },
    Waves { angle: f32, freq: f32, amp: f32 },
    Rings { freq: f32 },
    Plaid { angle: f32, freq: f32 },
}

/// An RGB colour, each channel in [0, 1].
pub type Colour = [f32; 3];

/// What defines a class: a texture drawn in random colours, or an unordered pair of
/// colours drawn on a random texture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Look {
    Texture(Pattern),
    Colours(Colour, Colour),
}

/// One class of a procedural task.
#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub name: &'static str,
    pub look: Look,
}

const fn c(name: &'static str, pattern: Pattern) -> Class {
    Class {
        name,
        look: Look::Texture(pattern),
    }
}

const fn pair(name: &'static str, a: Colour, b: Colour) -> Class {
    Class {
        name,
        look: Look::Colours(a, b),
    }
}

use Pattern::*;

/// The pretraining task: axis and diagonal stripes, checkers, square dot lattices, thin
/// grids and noise of 1 or 4 octaves.
pub const SOURCE: &[Class] = &[
    c(
        "stripes-000-low",
        Stripes {
            angle: 0.0,
            freq: 4.0,
        },
    ),
    c(
        "stripes-000-high",
        Stripes {
            angle: 0.0,
            freq: 10.0,
        },
    ),
    c(
        "stripes-045-low",
        Stripes {
            angle: 45.0,
            freq: 4.0,
        },
    ),
    c(
        "stripes-045-high",
        Stripes {
            angle: 45.0,
            freq: 10.0,
        },
    ),
    c(
        "stripes-090-low",
        Stripes {
            angle: 90.0,
            freq: 4.0,
        },
    ),
    c(
        "stripes-090-high",
        Stripes {
            angle: 90.0,
            freq: 10.0,
        },
    ),
    c(
        "stripes-135-low",
        Stripes {
            angle: 135.0,
            freq: 4.0,
        },
    ),
    c(
        "stripes-135-high",
        Stripes {
            angle: 135.0,
            freq: 10.0,
        },
    ),
    c(
        "checkers-large",
        Checkers {
            cells: 3.0,
            angle: 0.0,
        },
    ),
    c(
        "checkers-small",
        Checkers {
            cells: 7.0,
            angle: 0.0,
        },
    ),
    c(
        "dots-sparse",
        Dots {
            cells: 4.0,
            radius: 0.22,
            hex: false,
        },
    ),
    c(
        "dots-dense",
        Dots {
            cells: 8.0,
            radius: 0.22,
            hex: false,
        },
    ),
    c(
        "grid-coarse",
        Grid {
            cells: 3.0,
            width: 0.12,
        },
    ),
    c(
        "grid-fine",
        Grid {
            cells: 7.0,
            width: 0.12,
        },
    ),
    c(
        "noise-1-octave",
        Noise {
            octaves: 1,
            freq: 4.0,
        },
    ),
    c(
        "noise-4-octaves",
        Noise {
            octaves: 4,
            freq: 4.0,
        },
    ),
];

/// The target task: families and parameters the source task does not have (wavy stripes,
/// stripes at in-between angles, hexagonal and blob lattices, plaid, rings, rotated
/// checkers, thick grids, two-octave noise at two scales).
pub const TEXTURES: &[Class] = &[
    c(
        "waves-horizontal",
        Waves {
            angle: 0.0,
            freq: 6.0,
            amp: 0.06,
        },
    ),
    c(
        "waves-vertical",
        Waves {
            angle: 90.0,
            freq: 6.0,
            amp: 0.06,
        },
    ),
    c(
        "stripes-022",
        Stripes {
            angle: 22.5,
            freq: 7.0,
        },
    ),
    c(
        "stripes-112",
        Stripes {
            angle: 112.5,
            freq: 7.0,
        },
    ),
    c(
        "dots-hexagonal",
        Dots {
            cells: 6.0,
            radius: 0.2,
            hex: true,
        },
    ),
    c(
        "blobs",
        Dots {
            cells: 3.0,
            radius: 0.38,
            hex: false,
        },
    ),
    c(
        "plaid",
        Plaid {
            angle: 30.0,
            freq: 5.0,
        },
    ),
    c("rings", Rings { freq: 5.0 }),
    c(
        "checkers-diagonal",
        Checkers {
            cells: 5.0,
            angle: 45.0,
        },
    ),
    c(
        "grid-thick",
        Grid {
            cells: 4.0,
            width: 0.35,
        },
    ),
    c(
        "noise-coarse",
        Noise {
            octaves: 2,
            freq: 2.0,
        },
    ),
    c(
        "noise-fine",
        Noise {
            octaves: 2,
            freq: 9.0,
        },
    ),
];

const RED: Colour = [0.85, 0.15, 0.15];
const YELLOW: Colour = [0.9, 0.8, 0.15];
const GREEN: Colour = [0.15, 0.65, 0.25];
const BLUE: Colour = [0.15, 0.3, 0.85];
const MAGENTA: Colour = [0.8, 0.2, 0.75];

/// Largest change of one channel of a class colour, per image.
const COLOUR_JITTER: f32 = 0.07;

/// The colour task: every unordered pair of five colours, on a texture of [`SOURCE`] drawn
/// per image.
pub const COLOURS: &[Class] = &[
    pair("red-yellow", RED, YELLOW),
    pair("red-green", RED, GREEN),
    pair("red-blue", RED, BLUE),
    pair("red-magenta", RED, MAGENTA),
    pair("yellow-green", YELLOW, GREEN),
    pair("yellow-blue", YELLOW, BLUE),
    pair("yellow-magenta", YELLOW, MAGENTA),
    pair("green-blue", GREEN, BLUE),
    pair("green-magenta", GREEN, MAGENTA),
    pair("blue-magenta", BLUE, MAGENTA),
];

/// The patterns of [`SOURCE`], from which the colour task draws its textures (checked when
/// compiling: a source class that is not a texture does not build).
const SOURCE_TEXTURES: [Pattern; SOURCE.len()] = {
    let mut out = [Stripes {
        angle: 0.0,
        freq: 0.0,
    }; SOURCE.len()];
    let mut i = 0;
    while i < SOURCE.len() {
        out[i] = match SOURCE[i].look {
            Look::Texture(p) => p,
            Look::Colours(..) => panic!("the source task's classes are textures"),
        };
        i += 1;
    }
    out
};

/// Names of the procedural tasks.
pub const TASKS: &[&str] = &["source", "textures", "colours"];

pub fn task(name: &str) -> Option<&'static [Class]> {
    match name {
        "source" => Some(SOURCE),
        "textures" => Some(TEXTURES),
        "colours" => Some(COLOURS),
        _ => None,
    }
}

/// The RNG of one image.
pub fn image_rng(task: &str, split: &str, seed: u64, index: usize) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"graft-procedural-v1");
    for part in [task.as_bytes(), split.as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(&seed.to_le_bytes());
    h.update(&(index as u64).to_le_bytes());
    let mut seed_bytes = [0u8; 32];
    seed_bytes.copy_from_slice(h.finalize().as_bytes());
    ChaCha8Rng::from_seed(seed_bytes)
}

/// Draws one image of `look` at `size` x `size` with fresh jitter from `rng`.
pub fn render(look: Look, size: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    match look {
        Look::Texture(pattern) => draw(pattern, size, rng, |rng| {
            let fg = random_colour(rng);
            let mut bg = random_colour(rng);
            while dist(fg, bg) < 0.35 {
                bg = random_colour(rng);
            }
            (fg, bg)
        }),
        Look::Colours(a, b) => {
            let pattern = SOURCE_TEXTURES[rng.random_range(0..SOURCE_TEXTURES.len())];
            draw(pattern, size, rng, |rng| {
                let (fg, bg) = if rng.random::<bool>() { (a, b) } else { (b, a) };
                (jitter_colour(fg, rng), jitter_colour(bg, rng))
            })
        }
    }
}

/// Draws `pattern` with fresh jitter from `rng`, in the colours `colours` draws.
fn draw(
    pattern: Pattern,
    size: u32,
    rng: &mut ChaCha8Rng,
    colours: impl FnOnce(&mut ChaCha8Rng) -> (Colour, Colour),
) -> RgbImage {
    let scale = rng.random_range(0.85f32..1.15);
    let tilt = rng.random_range(-6.0f32..6.0);
    let phase = [
        rng.random::<f32>(),
        rng.random::<f32>(),
        rng.random::<f32>(),
    ];
    let (fg, bg) = colours(rng);
    let contrast = rng.random_range(0.6f32..1.0);
    let sigma = rng.random_range(0.0f32..0.06);
    let field = Field::new(pattern, scale, tilt, phase, rng);

    let mut img = RgbImage::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let u = (x as f32 + 0.5) / size as f32;
            let v = (y as f32 + 0.5) / size as f32;
            let t = 0.5 + contrast * (field.value(u, v) - 0.5);
            let mut px = [0u8; 3];
            for ch in 0..3 {
                let val = bg[ch] + (fg[ch] - bg[ch]) * t + sigma * gaussian(rng);
                px[ch] = (val.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            img.put_pixel(x, y, Rgb(px));
        }
    }
    img
}

fn random_colour(rng: &mut ChaCha8Rng) -> Colour {
    [rng.random(), rng.random(), rng.random()]
}

fn jitter_colour(c: Colour, rng: &mut ChaCha8Rng) -> Colour {
    c.map(|x| (x + rng.random_range(-COLOUR_JITTER..COLOUR_JITTER)).clamp(0.0, 1.0))
}

fn dist(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Standard normal draw (Box-Muller).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// A pattern with its jitter drawn: evaluates to [0, 1] at any point of the unit square.
struct Field {
    pattern: Pattern,
    scale: f32,
    cos: f32,
    sin: f32,
    phase: [f32; 3],
    centre: (f32, f32),
    lattice: Vec<f32>,
    lattice_side: usize,
}

impl Field {
    fn new(
        pattern: Pattern,
        scale: f32,
        tilt: f32,
        phase: [f32; 3],
        rng: &mut ChaCha8Rng,
    ) -> Field {
        let angle = match pattern {
            Stripes { angle, .. }
            | Checkers { angle, .. }
            | Waves { angle, .. }
            | Plaid { angle, .. } => angle,
            _ => 0.0,
        } + tilt;
        let (sin, cos) = angle.to_radians().sin_cos();
        let centre = (rng.random_range(0.3f32..0.7), rng.random_range(0.3f32..0.7));
        let (lattice, lattice_side) = match pattern {
            Noise { octaves, freq } => {
                let side = (freq * scale * 2f32.powi(octaves as i32 - 1)).ceil() as usize + 2;
                (
                    (0..side * side).map(|_| rng.random::<f32>()).collect(),
                    side,
                )
            }
            _ => (Vec::new(), 0),
        };
        Field {
            pattern,
            scale,
            cos,
            sin,
            phase,
            centre,
            lattice,
            lattice_side,
        }
    }

    /// Coordinates rotated by the pattern's angle, about the image centre.
    fn rotate(&self, u: f32, v: f32) -> (f32, f32) {
        let (x, y) = (u - 0.5, v - 0.5);
        (x * self.cos + y * self.sin, -x * self.sin + y * self.cos)
    }

    fn value(&self, u: f32, v: f32) -> f32 {
        let [p0, p1, p2] = self.phase;
        let s = self.scale;
        match self.pattern {
            Stripes { freq, .. } => {
                let (x, _) = self.rotate(u, v);
                wave(x * freq * s + p0)
            }
            Checkers { cells, .. } => {
                let (x, y) = self.rotate(u, v);
                let a = (x * cells * s + p0).floor() + (y * cells * s + p1).floor();
                if (a as i64).rem_euclid(2) == 0 {
                    1.0
                } else {
                    0.0
                }
            }
            Dots { cells, radius, hex } => {
                let gy = v * cells * s + p1;
                let row = gy.floor();
                let shift = if hex && (row as i64).rem_euclid(2) == 1 {
                    0.5
                } else {
                    0.0
                };
                let gx = u * cells * s + p0 + shift;
                let (fx, fy) = (gx - gx.floor() - 0.5, gy - row - 0.5);
                let d = (fx * fx + fy * fy).sqrt();
                smooth_step(radius + 0.04, radius - 0.04, d)
            }
            Grid { cells, width } => {
                let fx = (u * cells * s + p0).fract();
                let fy = (v * cells * s + p1).fract();
                if fx < width || fy < width { 1.0 } else { 0.0 }
            }
            Noise { octaves, freq } => {
                let mut total = 0.0;
                let mut norm = 0.0;
                for o in 0..octaves {
                    let f = freq * s * 2f32.powi(o as i32);
                    let amp = 0.5f32.powi(o as i32);
                    total += amp
                        * self
                            .value_noise(u * f + p0 * 7.0 * o as f32, v * f + p1 * 7.0 * o as f32);
                    norm += amp;
                }
                ((total / norm - 0.5) * 2.2 + 0.5).clamp(0.0, 1.0)
            }
            Waves { freq, amp, .. } => {
                let (x, y) = self.rotate(u, v);
                wave((x + amp * (2.0 * PI * (y * 3.0 + p2)).sin()) * freq * s + p0)
            }
            Rings { freq } => {
                let (dx, dy) = (u - self.centre.0, v - self.centre.1);
                wave((dx * dx + dy * dy).sqrt() * freq * s + p0)
            }
            Plaid { freq, .. } => {
                let (x, y) = self.rotate(u, v);
                0.5 * (wave(x * freq * s + p0) + wave(y * freq * s + p1))
            }
        }
    }

    /// Smoothly interpolated random lattice values, wrapping at the lattice's side.
    fn value_noise(&self, x: f32, y: f32) -> f32 {
        let n = self.lattice_side;
        let (x0, y0) = (x.floor(), y.floor());
        let (tx, ty) = (fade(x - x0), fade(y - y0));
        let at = |i: f32, j: f32| {
            let i = (i as i64).rem_euclid(n as i64) as usize;
            let j = (j as i64).rem_euclid(n as i64) as usize;
            self.lattice[j * n + i]
        };
        let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1.0, y0) * tx;
        let bottom = at(x0, y0 + 1.0) * (1.0 - tx) + at(x0 + 1.0, y0 + 1.0) * tx;
        top * (1.0 - ty) + bottom * ty
    }
}

fn wave(t: f32) -> f32 {
    0.5 + 0.5 * (2.0 * PI * t).sin()
}

fn fade(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// 1 below `lo`, 0 above `hi` (with `hi` < `lo` reversed), smooth between.
fn smooth_step(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_and_target_classes_differ() {
        for t in TEXTURES.iter().chain(COLOURS) {
            assert!(
                SOURCE.iter().all(|s| s.look != t.look && s.name != t.name),
                "{}",
                t.name
            );
        }
        for (k, a) in COLOURS.iter().enumerate() {
            for b in &COLOURS[k + 1..] {
                assert_ne!(a.name, b.name);
                let (Look::Colours(a0, a1), Look::Colours(b0, b1)) = (a.look, b.look) else {
                    panic!("{} or {} is not a colour pair", a.name, b.name)
                };
                assert!(
                    (a0, a1) != (b0, b1) && (a0, a1) != (b1, b0),
                    "{} and {} are the same pair",
                    a.name,
                    b.name
                );
            }
        }
    }

    #[test]
    fn same_rng_same_image_and_jitter_varies() {
        for look in [SOURCE[0].look, COLOURS[0].look] {
            let a = render(look, 24, &mut image_rng("source", "train", 0, 3));
            let b = render(look, 24, &mut image_rng("source", "train", 0, 3));
            let c = render(look, 24, &mut image_rng("source", "train", 0, 4));
            assert_eq!(a, b);
            assert_ne!(a, c);
        }
    }

    /// The source and texture tasks' pixels, pinned: the colour task came with a change to
    /// `render`, which must draw them exactly as before (the prep stage's key holds no
    /// pixels, so a change here would need a stage version bump).
    #[test]
    fn texture_images_are_pinned() {
        let mut h = blake3::Hasher::new();
        for (k, class) in SOURCE.iter().chain(TEXTURES).enumerate() {
            h.update(&render(class.look, 16, &mut image_rng("t", "train", 1, k)).into_raw());
        }
        assert_eq!(h.finalize().to_hex().as_str(), TEXTURE_PIXELS);
    }

    const TEXTURE_PIXELS: &str = "8ad439a0533367ffacf66e4829eb55803bf650df2d4ada79e2399b0c6f072dc8";

    #[test]
    fn every_pattern_has_contrast() {
        for class in SOURCE.iter().chain(TEXTURES) {
            let img = render(class.look, 32, &mut image_rng("t", "train", 1, 0));
            let lum: Vec<f32> = img
                .pixels()
                .map(|p| p.0.iter().map(|&c| c as f32).sum::<f32>())
                .collect();
            let mean = lum.iter().sum::<f32>() / lum.len() as f32;
            let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / lum.len() as f32;
            assert!(var.sqrt() > 5.0, "{} is flat", class.name);
        }
    }

    /// Every image of a colour class shows its two colours, in either role: the image's
    /// mean lies near the segment between them (the share of each depends on the texture),
    /// and it has colour contrast (two of its pairs differ little in brightness).
    #[test]
    fn colour_images_show_their_pair() {
        for class in COLOURS {
            let Look::Colours(a, b) = class.look else {
                panic!("{} is not a colour pair", class.name)
            };
            for index in 0..40 {
                let img = render(class.look, 32, &mut image_rng("t", "train", 1, index));
                let n = (img.width() * img.height()) as f32;
                let px: Vec<[f32; 3]> = img
                    .pixels()
                    .map(|p| p.0.map(|c| f32::from(c) / 255.0))
                    .collect();
                let mean: [f32; 3] =
                    std::array::from_fn(|ch| px.iter().map(|p| p[ch]).sum::<f32>() / n);
                let var: f32 = (0..3)
                    .map(|ch| px.iter().map(|p| (p[ch] - mean[ch]).powi(2)).sum::<f32>() / n)
                    .sum();
                assert!(var.sqrt() > 0.05, "{} image {index} is flat", class.name);
                // Distance from the mean to the segment a-b.
                let ab: [f32; 3] = std::array::from_fn(|ch| b[ch] - a[ch]);
                let am: [f32; 3] = std::array::from_fn(|ch| mean[ch] - a[ch]);
                let dot = |x: [f32; 3], y: [f32; 3]| (0..3).map(|ch| x[ch] * y[ch]).sum::<f32>();
                let t = (dot(am, ab) / dot(ab, ab)).clamp(0.0, 1.0);
                let off = (0..3)
                    .map(|ch| (am[ch] - t * ab[ch]).powi(2))
                    .sum::<f32>()
                    .sqrt();
                assert!(
                    off < COLOUR_JITTER * 3f32.sqrt() + 0.03,
                    "{} image {index}: mean {mean:?} is {off} from its pair",
                    class.name
                );
            }
        }
    }

    /// The class of a colour image changes its two colours and nothing else: the same RNG
    /// under two pairs draws the same texture with the same jitter, so the pixels' position
    /// along each pair's colour axis is the same picture.
    #[test]
    fn colour_classes_share_their_textures() {
        let along = |img: &RgbImage, a: Colour, b: Colour| -> Vec<f32> {
            img.pixels()
                .map(|p| (0..3).map(|ch| f32::from(p.0[ch]) * (a[ch] - b[ch])).sum())
                .collect()
        };
        let corr = |x: &[f32], y: &[f32]| {
            let n = x.len() as f32;
            let (mx, my) = (x.iter().sum::<f32>() / n, y.iter().sum::<f32>() / n);
            let cov: f32 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
            let vx: f32 = x.iter().map(|a| (a - mx).powi(2)).sum();
            let vy: f32 = y.iter().map(|b| (b - my).powi(2)).sum();
            cov / (vx * vy).sqrt()
        };
        for index in 0..20 {
            let rng = || image_rng("t", "train", 1, index);
            let pairs: Vec<(Colour, Colour, RgbImage)> = COLOURS
                .iter()
                .map(|class| {
                    let Look::Colours(a, b) = class.look else {
                        panic!("{} is not a colour pair", class.name)
                    };
                    (a, b, render(class.look, 32, &mut rng()))
                })
                .collect();
            let (a0, b0, img0) = &pairs[0];
            for (a, b, img) in &pairs[1..] {
                let r = corr(&along(img0, *a0, *b0), &along(img, *a, *b));
                assert!(r > 0.5, "image {index}: r = {r}");
            }
        }
    }
}
