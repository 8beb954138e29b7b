//! The six figures, drawn with plotters into SVG strings. Every figure is a [`Figure`]
//! with one panel per task (one panel in all for the cross-task matrix); a panel that has
//! no data to draw holds the reason instead of an empty plot. One file per figure under
//! `figures/`; the per-task ones share [`per_task`], the loop over tasks.

mod budget;
mod correlation;
mod cross_task;
mod flops;
mod heatmap;
mod rank_tolerance;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::ReportError;
use crate::analysis::{Analysis, TaskAnalysis};
use crate::stats::MeanStd;

/// A figure: title, the one-line caption saying what to read from it, and its panels.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub number: usize,
    pub title: String,
    pub caption: String,
    pub panels: Vec<Panel>,
}

/// One drawing of a figure, or why it is not drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Panel {
    Svg {
        heading: Option<String>,
        svg: String,
    },
    Skipped {
        heading: Option<String>,
        reason: String,
    },
}

impl Figure {
    /// Number of panels actually drawn.
    pub fn drawn(&self) -> usize {
        self.panels
            .iter()
            .filter(|p| matches!(p, Panel::Svg { .. }))
            .count()
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const FONT: &str = "sans-serif";
const GREY: RGBColor = RGBColor(225, 225, 225);
const DARK: RGBColor = RGBColor(60, 60, 60);
const MARK: RGBColor = RGBColor(220, 20, 60);

/// Colour of an edge kind, a baseline or a figure-5 category: fixed, so a kind or a
/// baseline looks the same in every figure and report.
pub fn category_colour(name: &str) -> RGBColor {
    match name {
        "parallel" => RGBColor(31, 119, 180),
        "sequential" => RGBColor(44, 160, 44),
        "long-range" => RGBColor(188, 189, 34),
        "recurrent" => RGBColor(214, 39, 40),
        "parallel-all" => RGBColor(255, 127, 14),
        "linear-probe" | "linear probe" => RGBColor(140, 86, 75),
        "full" | "full fine-tuning" => RGBColor(23, 190, 207),
        "adapters-random-init" => RGBColor(127, 127, 127),
        "lora" => RGBColor(140, 20, 90),
        "mixed, with recurrent" => RGBColor(227, 119, 194),
        "mixed, forward only" => RGBColor(148, 103, 189),
        _ => DARK,
    }
}

/// The palette of the budget curves, clear of the baselines' colours.
const CURVE_PALETTE: [RGBColor; 10] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(86, 180, 233),
];

/// One budget curve's colour.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveColour {
    pub heuristic: String,
    pub label: String,
    pub colour: RGBColor,
}

impl CurveColour {
    /// As SVG writes it: `#D62728`.
    pub fn hex(&self) -> String {
        let RGBColor(r, g, b) = self.colour;
        format!("#{r:02X}{g:02X}{b:02X}")
    }
}

/// The colour of every budget curve, by one rule on the data: heuristics take
/// [`CURVE_PALETTE`] in the order they first appear in the analysis (tasks in order, curves
/// in the order of the proposals table), wrapping round after ten; a heuristic's second and
/// third label are lighter shades of its colour. The same curve has the same colour in every
/// task's panel.
pub fn curve_colours(a: &Analysis) -> Vec<CurveColour> {
    let mut heuristics: Vec<&str> = Vec::new();
    let mut out: Vec<CurveColour> = Vec::new();
    for s in a.tasks.iter().flat_map(|t| &t.series) {
        if out
            .iter()
            .any(|c| c.heuristic == s.heuristic && c.label == s.label)
        {
            continue;
        }
        let k = match heuristics.iter().position(|h| *h == s.heuristic) {
            Some(k) => k,
            None => {
                heuristics.push(&s.heuristic);
                heuristics.len() - 1
            }
        };
        let variant = out.iter().filter(|c| c.heuristic == s.heuristic).count();
        out.push(CurveColour {
            heuristic: s.heuristic.clone(),
            label: s.label.clone(),
            colour: lighter(
                CURVE_PALETTE[k % CURVE_PALETTE.len()],
                0.3 * (variant % 3) as f64,
            ),
        });
    }
    out
}

/// Viridis, piecewise linear through five anchors; `t` in [0, 1].
fn viridis(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * 4.0;
    let k = (x.floor() as usize).min(3);
    let f = x - k as f64;
    let (a, b) = (A[k], A[k + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Blue (−1) through white (0) to red (+1).
fn diverging(r: f64) -> RGBColor {
    let r = if r.is_finite() {
        r.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (to, f) = if r < 0.0 {
        ((33.0, 102.0, 172.0), -r)
    } else {
        ((178.0, 24.0, 43.0), r)
    };
    let mix = |q: f64| (255.0 + (q - 255.0) * f).round() as u8;
    RGBColor(mix(to.0), mix(to.1), mix(to.2))
}

fn lighter(c: RGBColor, f: f64) -> RGBColor {
    let m = |v: u8| (v as f64 + (255.0 - v as f64) * f).round() as u8;
    RGBColor(m(c.0), m(c.1), m(c.2))
}

/// The series legend as every figure draws it: at `position`, on a light box.
fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(DARK)
        .label_font((FONT, 11))
        .draw()?;
    Ok(())
}

fn text_style(size: u32, colour: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    (FONT, size).into_font().color(&colour).pos(Pos::new(h, v))
}

fn render(w: u32, h: u32, draw: impl FnOnce(&Area) -> DrawResult) -> DrawResult<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(buf)
}

fn panel(
    figure: usize,
    heading: Option<String>,
    result: DrawResult<String>,
) -> Result<Panel, ReportError> {
    result
        .map(|svg| Panel::Svg { heading, svg })
        .map_err(|e| ReportError::Draw {
            figure,
            message: e.to_string(),
        })
}

fn heading(a: &Analysis, t: &TaskAnalysis) -> Option<String> {
    (a.tasks.len() > 1).then(|| format!("task {}", t.task))
}

/// Pads a value range by 5 % each side (one unit when it is a single value).
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 1.0, hi + 1.0);
    }
    let p = 0.05 * (hi - lo);
    (lo - p, hi + p)
}

fn min_max(xs: impl IntoIterator<Item = f64>) -> (f64, f64) {
    xs.into_iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        })
}

fn error_range(m: &MeanStd) -> (f64, f64) {
    let s = m.std.unwrap_or(0.0);
    (m.mean - s, m.mean + s)
}

/// One panel per task, in task order: `prepare` gives what to draw for a task, or why there
/// is nothing (`Err(reason)`, a skipped panel); `draw` draws it at `size`. With several tasks
/// each panel is headed by its task.
fn per_task<'a, T>(
    a: &'a Analysis,
    figure: usize,
    (w, h): (u32, u32),
    prepare: impl Fn(&'a TaskAnalysis) -> Result<T, String>,
    draw: impl Fn(&Area, &'a TaskAnalysis, &T) -> DrawResult,
) -> Result<Vec<Panel>, ReportError> {
    a.tasks
        .iter()
        .map(|t| {
            let heading = heading(a, t);
            match prepare(t) {
                Err(reason) => Ok(Panel::Skipped { heading, reason }),
                Ok(data) => panel(figure, heading, render(w, h, |root| draw(root, t, &data))),
            }
        })
        .collect()
}

/// All six figures.
pub fn figures(a: &Analysis) -> Result<Vec<Figure>, ReportError> {
    Ok(vec![
        heatmap::figure(a)?,
        correlation::figure(a)?,
        budget::figure(a)?,
        cross_task::figure(a)?,
        flops::figure(a)?,
        rank_tolerance::figure(a)?,
    ])
}

fn padded_pair((lo, hi): (f64, f64)) -> (f64, f64) {
    padded(lo, hi)
}

/// `p = 0.03` or `p < 0.0001`.
pub fn p_is(p: f64) -> String {
    let t = fmt_p(p);
    if t.starts_with('<') {
        format!("p {t}")
    } else {
        format!("p = {t}")
    }
}

/// A p-value as text: three significant digits, `< 1e-4` below that.
pub fn fmt_p(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p < 1e-4 {
        "< 0.0001".into()
    } else if p < 0.01 {
        format!("{p:.4}")
    } else {
        format!("{p:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_maps_stay_in_range() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(f64::NAN), RGBColor(68, 1, 84));
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
        assert_eq!(diverging(-1.0), RGBColor(33, 102, 172));
        assert_eq!(fmt_p(0.03), "0.03");
        assert_eq!(fmt_p(0.00012), "0.0001");
        assert_eq!(fmt_p(1e-9), "< 0.0001");
    }
}
