//! The five figures, drawn with plotters into SVG strings. Every figure is a [`Figure`]
//! with one panel per task (one panel in all for the cross-task matrix); a panel that has
//! no data to draw holds the reason instead of an empty plot.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use graft_tables::Method;

use crate::analysis::{Analysis, PlacementStats, Reference, TaskAnalysis};
use crate::stats::MeanStd;
use crate::{ReportError, fmt_num};

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

/// Colour of an edge kind or figure-5 category.
pub fn category_colour(name: &str) -> RGBColor {
    match name {
        "parallel" => RGBColor(31, 119, 180),
        "sequential" => RGBColor(44, 160, 44),
        "long-range" => RGBColor(188, 189, 34),
        "recurrent" => RGBColor(214, 39, 40),
        "parallel-all" => RGBColor(255, 127, 14),
        "linear-probe" | "linear probe" => RGBColor(140, 86, 75),
        "full" | "full fine-tuning" => RGBColor(23, 190, 207),
        "mixed, with recurrent" => RGBColor(227, 119, 194),
        "mixed, forward only" => RGBColor(148, 103, 189),
        "gga" => RGBColor(214, 39, 40),
        "top-k" => RGBColor(31, 119, 180),
        "first-k" => RGBColor(44, 160, 44),
        "last-k" => RGBColor(148, 103, 189),
        "random-k" => RGBColor(127, 127, 127),
        other => extra_colour(other),
    }
}

/// A colour for a name the table above does not know (a heuristic added elsewhere): one of
/// a fixed palette, chosen by a hash of the name so it is the same in every figure and run.
fn extra_colour(name: &str) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(0, 114, 178),
        RGBColor(230, 159, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(213, 94, 0),
    ];
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    PALETTE[(h % PALETTE.len() as u64) as usize]
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

/// All five figures.
pub fn figures(a: &Analysis) -> Result<Vec<Figure>, ReportError> {
    Ok(vec![
        heatmap_figure(a)?,
        correlation_figure(a)?,
        budget_figure(a)?,
        cross_task_figure(a)?,
        flops_figure(a)?,
    ])
}

// ---------------------------------------------------------------- figure 1

fn heatmap_figure(a: &Analysis) -> Result<Figure, ReportError> {
    let mut panels = Vec::new();
    for t in &a.tasks {
        let h = heading(a, t);
        if t.single.is_empty() {
            panels.push(Panel::Skipped {
                heading: h,
                reason: format!(
                    "no single-adapter run of task {} finished, so there is no map to draw: \
                     train a single-sweep proposal to get one",
                    t.task
                ),
            });
            continue;
        }
        panels.push(panel(1, h, render(760, 570, |root| draw_heatmap(root, t)))?);
    }
    Ok(Figure {
        number: 1,
        title: "Single-adapter accuracy over the adjacency matrix".into(),
        caption: "Each cell is one adapter from node i (row) into node j (column) trained alone: \
                  brighter is more accurate, cells 1 to 3 are the best three, grey cells were not \
                  swept, × marks an edge whose runs did not finish; the lines on the colour bar \
                  are full fine-tuning, linear probe and parallel-all."
            .into(),
        panels,
    })
}

fn draw_heatmap(root: &Area, t: &TaskAnalysis) -> DrawResult {
    let n = t.nodes.max(1);
    let (w, h) = root.dim_in_pixel();
    let (left, top, bottom, right) = (70i32, 44i32, 56i32, 230i32);
    let side = ((w as i32 - left - right).min(h as i32 - top - bottom)).max(n as i32);
    let cell = side as f64 / n as f64;
    let px = |k: usize| left + (k as f64 * cell).round() as i32;
    let py = |k: usize| top + (k as f64 * cell).round() as i32;

    root.draw(&Text::new(
        format!("{}: single-adapter test accuracy (%)", t.task),
        (left + side / 2, 16),
        text_style(16, BLACK, HPos::Center, VPos::Center),
    ))?;

    let refs: Vec<&Reference> = [&t.full, &t.linear_probe, &t.parallel_all]
        .into_iter()
        .flatten()
        .collect();
    let (lo, hi) = min_max(
        t.single
            .values()
            .map(|m| m.mean)
            .chain(refs.iter().map(|r| r.test.mean)),
    );
    let (lo, hi) = if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let scale = |v: f64| (v - lo) / (hi - lo);

    // Cells.
    let failed: Vec<graft_graph::Edge> = t
        .placements
        .iter()
        .filter(|p| p.method == Method::Adapters && p.edges.len() == 1 && p.test.is_none())
        .map(|p| p.edges[0])
        .collect();
    for i in 0..n {
        for j in 0..n {
            let e = graft_graph::Edge::new(i, j);
            let colour = t.single.get(&e).map_or(GREY, |m| viridis(scale(m.mean)));
            root.draw(&Rectangle::new(
                [(px(j), py(i)), (px(j + 1), py(i + 1))],
                colour.filled(),
            ))?;
        }
    }
    for e in &failed {
        if e.i < n && e.j < n {
            root.draw(&Text::new(
                "×",
                ((px(e.j) + px(e.j + 1)) / 2, (py(e.i) + py(e.i + 1)) / 2),
                text_style(
                    (cell * 0.8).clamp(6.0, 16.0) as u32,
                    MARK,
                    HPos::Center,
                    VPos::Center,
                ),
            ))?;
        }
    }
    // The diagonal (sequential edges) as a faint guide.
    root.draw(&PathElement::new(
        vec![(px(0), py(0)), (px(n), py(n))],
        WHITE.mix(0.5).stroke_width(1),
    ))?;
    // Best three.
    for (rank, (e, m)) in t.best_single(3).iter().enumerate() {
        root.draw(&Rectangle::new(
            [(px(e.j), py(e.i)), (px(e.j + 1), py(e.i + 1))],
            MARK.stroke_width(3),
        ))?;
        if cell >= 12.0 {
            let c = if scale(m.mean) > 0.6 { BLACK } else { WHITE };
            root.draw(&Text::new(
                format!("{}", rank + 1),
                ((px(e.j) + px(e.j + 1)) / 2, (py(e.i) + py(e.i + 1)) / 2),
                text_style((cell * 0.6).min(16.0) as u32, c, HPos::Center, VPos::Center),
            ))?;
        }
    }
    // Axes: node labels at cell centres, every `step`-th.
    let step = n.div_ceil(25).max(1);
    for k in (0..n).step_by(step) {
        let cx = (px(k) + px(k + 1)) / 2;
        let cy = (py(k) + py(k + 1)) / 2;
        root.draw(&Text::new(
            k.to_string(),
            (cx, top + side + 4),
            text_style(11, DARK, HPos::Center, VPos::Top),
        ))?;
        root.draw(&Text::new(
            k.to_string(),
            (left - 5, cy),
            text_style(11, DARK, HPos::Right, VPos::Center),
        ))?;
    }
    root.draw(&Text::new(
        "output node j",
        (left + side / 2, top + side + 34),
        text_style(13, BLACK, HPos::Center, VPos::Center),
    ))?;
    root.draw(&Text::new(
        "input node i",
        (20, top + side / 2),
        (FONT, 13)
            .into_font()
            .transform(FontTransform::Rotate270)
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;

    // Colour bar with reference marks.
    let bx = left + side + 30;
    let bw = 18;
    let steps = 100;
    for s in 0..steps {
        let y0 = top + side - (side * (s + 1)) / steps;
        let y1 = top + side - (side * s) / steps;
        let v = (s as f64 + 0.5) / steps as f64;
        root.draw(&Rectangle::new(
            [(bx, y0), (bx + bw, y1)],
            viridis(v).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(bx, top), (bx + bw, top + side)],
        DARK.stroke_width(1),
    ))?;
    let yv = |v: f64| top + side - (scale(v) * side as f64).round() as i32;
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        root.draw(&PathElement::new(
            vec![(bx - 4, yv(v)), (bx, yv(v))],
            DARK.stroke_width(1),
        ))?;
        root.draw(&Text::new(
            format!("{v:.1}"),
            (bx - 6, yv(v)),
            text_style(10, DARK, HPos::Right, VPos::Center),
        ))?;
    }
    root.draw(&Text::new(
        "test acc. (%)",
        (bx + bw / 2, top - 10),
        text_style(11, DARK, HPos::Center, VPos::Center),
    ))?;
    let mut marks: Vec<(i32, &Reference)> = refs.iter().map(|r| (yv(r.test.mean), *r)).collect();
    marks.sort_by_key(|m| m.0);
    let mut last_label_y = i32::MIN;
    for (y, r) in marks {
        let c = category_colour(r.label);
        root.draw(&PathElement::new(
            vec![(bx - 3, y), (bx + bw + 8, y)],
            c.stroke_width(3),
        ))?;
        let ly = y.max(last_label_y + 14);
        last_label_y = ly;
        root.draw(&PathElement::new(
            vec![(bx + bw + 8, y), (bx + bw + 14, ly)],
            c.stroke_width(1),
        ))?;
        root.draw(&Text::new(
            format!("{} {:.1}", r.label, r.test.mean),
            (bx + bw + 16, ly),
            text_style(11, BLACK, HPos::Left, VPos::Center),
        ))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- figure 2

fn correlation_figure(a: &Analysis) -> Result<Figure, ReportError> {
    let mut panels = Vec::new();
    for t in &a.tasks {
        let h = heading(a, t);
        let usable = t.correlations.iter().any(|c| c.points.len() >= 3);
        if t.data.probe.is_empty() {
            panels.push(Panel::Skipped {
                heading: h,
                reason: format!(
                    "task {} has no probe table, so there is no score to compare",
                    t.task
                ),
            });
        } else if !usable {
            panels.push(Panel::Skipped {
                heading: h,
                reason: format!(
                    "task {} has {} edge(s) with both a probe score and a finished single-adapter \
                     run; a correlation needs at least 3",
                    t.task,
                    t.correlations.first().map_or(0, |c| c.points.len())
                ),
            });
        } else {
            panels.push(panel(
                2,
                h,
                render(1080, 640, |root| draw_correlations(root, t)),
            )?);
        }
    }
    Ok(Figure {
        number: 2,
        title: "Probe scores against single-adapter accuracy".into(),
        caption: "Each point is one swept edge, coloured by kind: a cloud rising to the right \
                  means the probe score orders edges the way training does; ρ and p are in each \
                  panel's title, gradient rank first."
            .into(),
        panels,
    })
}

fn draw_correlations(root: &Area, t: &TaskAnalysis) -> DrawResult {
    let areas = root.split_evenly((2, 3));
    for (k, (c, area)) in t.correlations.iter().zip(areas.iter()).enumerate() {
        let title = match &c.spearman {
            Some(s) => format!(
                "{}: ρ = {:.2}, {}, n = {}",
                c.score.replace('_', " "),
                s.rho,
                s.p.map_or("p n/a".into(), p_is),
                s.n
            ),
            None => format!(
                "{}: ρ undefined (n = {})",
                c.score.replace('_', " "),
                c.points.len()
            ),
        };
        let (xl, xh) = padded_pair(min_max(c.points.iter().map(|p| p.0)));
        let (yl, yh) = padded_pair(min_max(c.points.iter().map(|p| p.1)));
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, if k == 0 { 16 } else { 14 }))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(xl..xh, yl..yh)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_desc(if c.score == "rank" {
                "gradient rank".to_owned()
            } else {
                c.score.replace('_', " ")
            })
            .y_desc("test accuracy (%)")
            .x_labels(5)
            .y_labels(5)
            .x_label_formatter(&|v| fmt_num(*v))
            .label_style((FONT, 11))
            .axis_desc_style((FONT, 12))
            .draw()?;
        let mut kinds_present = 0;
        for kind in graft_graph::EdgeKind::ALL {
            let pts: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter(|p| p.2.kind() == kind)
                .map(|p| (p.0, p.1))
                .collect();
            if pts.is_empty() {
                continue;
            }
            kinds_present += 1;
            let colour = category_colour(kind.name());
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, colour.filled())))?
                .label(kind.name())
                .legend(move |(x, y)| Circle::new((x, y), 4, colour.filled()));
        }
        if kinds_present > 1 && k == 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(DARK)
                .label_font((FONT, 11))
                .draw()?;
        }
    }
    Ok(())
}

fn padded_pair((lo, hi): (f64, f64)) -> (f64, f64) {
    padded(lo, hi)
}

// ---------------------------------------------------------------- figure 3

fn budget_figure(a: &Analysis) -> Result<Figure, ReportError> {
    let mut panels = Vec::new();
    let mut one_seed = false;
    for t in &a.tasks {
        let h = heading(a, t);
        if t.series.is_empty() {
            panels.push(Panel::Skipped {
                heading: h,
                reason: format!(
                    "task {} has no finished run of gga, top-k, first-k, last-k or random-k, so \
                     there is no curve to draw",
                    t.task
                ),
            });
            continue;
        }
        one_seed |= t.max_seeds_per_placement() < 2;
        panels.push(panel(3, h, render(1180, 520, |root| draw_budget(root, t)))?);
    }
    let mut caption = "Higher at fewer adapters (left) or parameters (right) is better: a \
                       heuristic that reaches the parallel-all line with fewer adapters is more \
                       efficient; bars are ± one standard deviation over seeds (random-k: over \
                       seeds and draws)."
        .to_owned();
    if one_seed {
        caption.push_str(" Points with one finished run have no bar.");
    }
    Ok(Figure {
        number: 3,
        title: "Accuracy against budget".into(),
        caption,
        panels,
    })
}

fn draw_budget(root: &Area, t: &TaskAnalysis) -> DrawResult {
    let (l, r) = root.split_horizontally(590);
    let refs: Vec<&Reference> = [&t.parallel_all, &t.linear_probe, &t.full]
        .into_iter()
        .flatten()
        .collect();
    let (ylo, yhi) = min_max(
        t.series
            .iter()
            .flat_map(|s| {
                s.points.iter().flat_map(|p| {
                    let (a, b) = error_range(&p.test);
                    [a, b]
                })
            })
            .chain(refs.iter().map(|r| r.test.mean)),
    );
    let (ylo, yhi) = padded(ylo, yhi);
    for (panel_no, area) in [l, r].iter().enumerate() {
        let by_params = panel_no == 1;
        let xs = |p: &crate::analysis::Point| {
            if by_params {
                p.params as f64
            } else {
                p.adapters as f64
            }
        };
        let (xlo, xhi) = min_max(t.series.iter().flat_map(|s| s.points.iter().map(xs)));
        // The adapter panel leaves its right part free for the legend.
        let (xlo, xhi) = if by_params {
            padded(xlo, xhi)
        } else {
            (0.0, (xhi + 1.0) * 1.6)
        };
        let title = if by_params {
            format!("{}: test accuracy against trainable parameters", t.task)
        } else {
            format!("{}: test accuracy against number of adapters", t.task)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(xlo..xhi, ylo..yhi)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_desc(if by_params {
                "trainable parameters"
            } else {
                "adapters"
            })
            .y_desc("test accuracy (%)")
            .x_labels(6)
            .x_label_formatter(&|v| fmt_num(*v))
            .label_style((FONT, 11))
            .axis_desc_style((FONT, 12))
            .draw()?;
        let mut variant_of: std::collections::BTreeMap<&str, usize> = Default::default();
        for s in &t.series {
            let k = variant_of.entry(s.heuristic.as_str()).or_default();
            let colour = lighter(category_colour(&s.heuristic), 0.3 * (*k % 3) as f64);
            *k += 1;
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (xs(p), p.test.mean)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, colour.filled())))?;
            chart.draw_series(s.points.iter().filter(|p| p.test.std.is_some()).map(|p| {
                let (a, b) = error_range(&p.test);
                ErrorBar::new_vertical(xs(p), a, p.test.mean, b, colour.stroke_width(1), 6)
            }))?;
        }
        for r in &refs {
            let colour = category_colour(r.label);
            let label = if r.label == "parallel-all" {
                format!("parallel-all ({} adapters)", r.adapters)
            } else {
                r.label.to_owned()
            };
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(xlo, r.test.mean), (xhi, r.test.mean)],
                    8,
                    5,
                    colour.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        if !by_params && t.series.len() + refs.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(DARK)
                .label_font((FONT, 11))
                .draw()?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- figure 4

fn cross_task_figure(a: &Analysis) -> Result<Figure, ReportError> {
    let swept: Vec<&TaskAnalysis> = a.tasks.iter().filter(|t| !t.single.is_empty()).collect();
    let panels = if a.tasks.len() < 2 {
        vec![Panel::Skipped {
            heading: None,
            reason: format!(
                "the report covers one task ({}); the cross-task matrix needs two or more tasks \
                 with a single-adapter sweep",
                a.tasks.first().map_or("none", |t| t.task.as_str())
            ),
        }]
    } else if swept.len() < 2 {
        vec![Panel::Skipped {
            heading: None,
            reason: format!(
                "{} of {} tasks have a single-adapter sweep; the cross-task matrix needs two",
                swept.len(),
                a.tasks.len()
            ),
        }]
    } else {
        let size = 180 + 90 * swept.len() as u32;
        vec![panel(
            4,
            None,
            render(size + 200, size, |root| draw_cross(root, a, &swept)),
        )?]
    };
    Ok(Figure {
        number: 4,
        title: "Cross-task correlation of single-adapter accuracies".into(),
        caption: "Spearman's ρ between two tasks' single-adapter accuracies over the edges both \
                  swept: red is agreement, blue disagreement, white near 0 means the best places \
                  differ between tasks."
            .into(),
        panels,
    })
}

fn draw_cross(root: &Area, a: &Analysis, swept: &[&TaskAnalysis]) -> DrawResult {
    let k = swept.len() as i32;
    let (left, top, cell) = (130i32, 50i32, 90i32);
    root.draw(&Text::new(
        "Spearman's ρ of single-adapter accuracy between tasks",
        (left + k * cell / 2, 18),
        text_style(15, BLACK, HPos::Center, VPos::Center),
    ))?;
    let rho = |x: &str, y: &str| -> Option<(f64, Option<f64>, usize)> {
        if x == y {
            return Some((1.0, None, 0));
        }
        a.cross
            .iter()
            .find(|c| (c.a == x && c.b == y) || (c.a == y && c.b == x))
            .and_then(|c| c.spearman.map(|s| (s.rho, s.p, s.n)))
    };
    for (r, tr) in swept.iter().enumerate() {
        for (c, tc) in swept.iter().enumerate() {
            let (x0, y0) = (left + c as i32 * cell, top + r as i32 * cell);
            let v = rho(&tr.task, &tc.task);
            let colour = v.map_or(GREY, |v| diverging(v.0));
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                colour.filled(),
            ))?;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                WHITE.stroke_width(2),
            ))?;
            let label = match v {
                Some((v, Some(p), n)) => format!("{v:.2} ({}, n {n})", p_is(p)),
                Some((v, _, _)) => format!("{v:.2}"),
                None => "n/a".into(),
            };
            let big = v.is_some_and(|v| v.0.abs() > 0.6);
            let (first, second) = match label.split_once(' ') {
                Some((a, b)) => (a.to_owned(), b.to_owned()),
                None => (label.clone(), String::new()),
            };
            root.draw(&Text::new(
                first,
                (x0 + cell / 2, y0 + cell / 2 - 8),
                text_style(
                    14,
                    if big { WHITE } else { BLACK },
                    HPos::Center,
                    VPos::Center,
                ),
            ))?;
            root.draw(&Text::new(
                second,
                (x0 + cell / 2, y0 + cell / 2 + 10),
                text_style(
                    10,
                    if big { WHITE } else { BLACK },
                    HPos::Center,
                    VPos::Center,
                ),
            ))?;
        }
        root.draw(&Text::new(
            tr.task.clone(),
            (left - 8, top + r as i32 * cell + cell / 2),
            text_style(12, BLACK, HPos::Right, VPos::Center),
        ))?;
        root.draw(&Text::new(
            tr.task.clone(),
            (left + r as i32 * cell + cell / 2, top + k * cell + 8),
            text_style(12, BLACK, HPos::Center, VPos::Top),
        ))?;
    }
    root.draw(&Text::new(
        "task",
        (left + k * cell / 2, top + k * cell + 34),
        text_style(13, BLACK, HPos::Center, VPos::Center),
    ))?;
    root.draw(&Text::new(
        "task",
        (24, top + k * cell / 2),
        (FONT, 13)
            .into_font()
            .transform(FontTransform::Rotate270)
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    // Colour key.
    let kx = left + k * cell + 40;
    let kh = k * cell;
    for s in 0..50 {
        let v = 1.0 - 2.0 * (s as f64 + 0.5) / 50.0;
        let y0 = top + kh * s / 50;
        let y1 = top + kh * (s + 1) / 50;
        root.draw(&Rectangle::new(
            [(kx, y0), (kx + 16, y1)],
            diverging(v).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(kx, top), (kx + 16, top + kh)],
        DARK.stroke_width(1),
    ))?;
    for (v, y) in [("+1", top), ("0", top + kh / 2), ("−1", top + kh)] {
        root.draw(&Text::new(
            format!("ρ = {v}"),
            (kx + 22, y),
            text_style(11, DARK, HPos::Left, VPos::Center),
        ))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- figure 5

fn flops_figure(a: &Analysis) -> Result<Figure, ReportError> {
    let mut panels = Vec::new();
    for t in &a.tasks {
        let h = heading(a, t);
        let drawn: Vec<&PlacementStats> =
            t.placements.iter().filter(|p| p.test.is_some()).collect();
        if drawn.is_empty() {
            panels.push(Panel::Skipped {
                heading: h,
                reason: format!(
                    "no run of task {} finished, so there is nothing to place",
                    t.task
                ),
            });
            continue;
        }
        panels.push(panel(
            5,
            h,
            render(900, 560, |root| draw_flops(root, t, &drawn)),
        )?);
    }
    Ok(Figure {
        number: 5,
        title: "Accuracy against inference cost".into(),
        caption: "Each point is one trained placement (mean over seeds) at its forward FLOPs per \
                  image: recurrent edges run part of the network twice and sit further right, so \
                  read whether their accuracy pays for the extra cost."
            .into(),
        panels,
    })
}

fn flops_unit(max: f64) -> (f64, &'static str) {
    if max >= 1e9 {
        (1e9, "GFLOPs")
    } else if max >= 1e6 {
        (1e6, "MFLOPs")
    } else if max >= 1e3 {
        (1e3, "kFLOPs")
    } else {
        (1.0, "FLOPs")
    }
}

fn draw_flops(root: &Area, t: &TaskAnalysis, drawn: &[&PlacementStats]) -> DrawResult {
    let (fmin, fmax) = min_max(drawn.iter().map(|p| p.flops as f64));
    let (unit, unit_name) = flops_unit(fmax);
    let (xlo, xhi) = padded(fmin / unit, fmax / unit);
    let (ylo, yhi) = padded_pair(min_max(drawn.iter().flat_map(|p| {
        let (a, b) = p.test.as_ref().map_or((f64::NAN, f64::NAN), error_range);
        [a, b]
    })));
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{}: test accuracy against forward FLOPs per image", t.task),
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(54)
        .build_cartesian_2d(xlo..xhi, ylo..yhi)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .x_desc(format!("forward {unit_name} per image"))
        .y_desc("test accuracy (%)")
        .x_labels(6)
        .x_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 11))
        .axis_desc_style((FONT, 12))
        .draw()?;
    let mut categories: Vec<String> = drawn.iter().map(|p| p.category()).collect();
    categories.sort();
    categories.dedup();
    for cat in &categories {
        let colour = category_colour(cat);
        let pts: Vec<(f64, &MeanStd)> = drawn
            .iter()
            .filter(|p| &p.category() == cat)
            .filter_map(|p| p.test.as_ref().map(|m| (p.flops as f64 / unit, m)))
            .collect();
        chart.draw_series(pts.iter().filter(|p| p.1.std.is_some()).map(|(x, m)| {
            let (a, b) = error_range(m);
            ErrorBar::new_vertical(*x, a, m.mean, b, colour.mix(0.6).stroke_width(1), 5)
        }))?;
        chart
            .draw_series(
                pts.iter()
                    .map(|(x, m)| Circle::new((*x, m.mean), 5, colour.filled())),
            )?
            .label(cat.clone())
            .legend(move |(x, y)| Circle::new((x, y), 5, colour.filled()));
    }
    if categories.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(DARK)
            .label_font((FONT, 11))
            .draw()?;
    }
    Ok(())
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
