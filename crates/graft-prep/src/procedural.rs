//! Procedural texture data sets: a source task to pretrain a small model on and a target
//! texture task whose classes differ from it. Every image is drawn from its own RNG, seeded
//! by (task, split, seed, index), so the same seed gives byte-identical tables whatever the
//! thread count.
//!
//! Jitter per image, shared by all classes so it carries no label information: phase,
//! scale (0.85 to 1.15 of the class frequency), orientation (±6°), foreground and
//! background colour, contrast and additive Gaussian noise.

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

/// One class of a procedural task.
#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub name: &'static str,
    pub pattern: Pattern,
}

const fn c(name: &'static str, pattern: Pattern) -> Class {
    Class { name, pattern }
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

/// Names of the procedural tasks.
pub const TASKS: &[&str] = &["source", "textures"];

pub fn task(name: &str) -> Option<&'static [Class]> {
    match name {
        "source" => Some(SOURCE),
        "textures" => Some(TEXTURES),
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

/// Draws one image of `pattern` at `size` x `size` with fresh jitter from `rng`.
pub fn render(pattern: Pattern, size: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let scale = rng.random_range(0.85f32..1.15);
    let tilt = rng.random_range(-6.0f32..6.0);
    let phase = [
        rng.random::<f32>(),
        rng.random::<f32>(),
        rng.random::<f32>(),
    ];
    let fg = random_colour(rng);
    let mut bg = random_colour(rng);
    while dist(fg, bg) < 0.35 {
        bg = random_colour(rng);
    }
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

fn random_colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [rng.random(), rng.random(), rng.random()]
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
        for t in TEXTURES {
            assert!(
                SOURCE
                    .iter()
                    .all(|s| s.pattern != t.pattern && s.name != t.name),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn same_rng_same_image_and_jitter_varies() {
        let a = render(
            SOURCE[0].pattern,
            24,
            &mut image_rng("source", "train", 0, 3),
        );
        let b = render(
            SOURCE[0].pattern,
            24,
            &mut image_rng("source", "train", 0, 3),
        );
        let c = render(
            SOURCE[0].pattern,
            24,
            &mut image_rng("source", "train", 0, 4),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_pattern_has_contrast() {
        for class in SOURCE.iter().chain(TEXTURES) {
            let img = render(class.pattern, 32, &mut image_rng("t", "train", 1, 0));
            let lum: Vec<f32> = img
                .pixels()
                .map(|p| p.0.iter().map(|&c| c as f32).sum::<f32>())
                .collect();
            let mean = lum.iter().sum::<f32>() / lum.len() as f32;
            let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / lum.len() as f32;
            assert!(var.sqrt() > 5.0, "{} is flat", class.name);
        }
    }
}
