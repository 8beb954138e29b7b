//! Figure 3: accuracy against budget (adapters and trainable parameters), one curve per
//! heuristic variant and the baselines as lines, one panel per task.

use plotters::prelude::*;

use super::{
    Area, CurveColour, DARK, DrawResult, FONT, Figure, category_colour, curve_colours, draw_legend,
    error_range, min_max, padded, per_task,
};
use crate::analysis::{Analysis, Reference, TaskAnalysis};
use crate::{ReportError, fmt_num};

pub(super) fn figure(a: &Analysis) -> Result<Figure, ReportError> {
    let colours = curve_colours(a);
    let panels = per_task(
        a,
        3,
        (1180, 520),
        |t| {
            if t.series.is_empty() {
                return Err(format!(
                    "task {} has no finished run of a heuristic with a budget (one that makes \
                     a placement per budget), so there is no curve to draw",
                    t.task
                ));
            }
            Ok(())
        },
        |root, t, ()| draw(root, t, &colours),
    )?;
    let one_seed = a
        .tasks
        .iter()
        .any(|t| !t.series.is_empty() && t.max_seeds_per_placement() < 2);
    let mut caption = "Higher at fewer adapters (left) or parameters (right) is better: a \
                       heuristic that reaches the parallel-all line with fewer adapters is more \
                       efficient; bars are ± one standard deviation over seeds (random-k: over \
                       seeds and draws)."
        .to_owned();
    if one_seed {
        caption.push_str(" Points with one finished run have no bar.");
    }
    if a.tasks.iter().any(|t| t.lora.is_some()) {
        caption.push_str(
            " LoRA (rank r on every block's query and value projections) is a dashed line, and \
             on the right a triangle at its trainable parameters.",
        );
    }
    Ok(Figure {
        number: 3,
        title: "Accuracy against budget".into(),
        caption,
        panels,
    })
}

fn draw(root: &Area, t: &TaskAnalysis, colours: &[CurveColour]) -> DrawResult {
    let (l, r) = root.split_horizontally(590);
    let refs: Vec<&Reference> = [&t.parallel_all, &t.lora, &t.linear_probe, &t.full]
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
        // LoRA is a point on the parameter panel too: its parameters beside the placements'.
        let lora_x = t
            .lora
            .as_ref()
            .filter(|_| by_params)
            .map(|r| r.params as f64);
        let (xlo, xhi) = min_max(
            t.series
                .iter()
                .flat_map(|s| s.points.iter().map(xs))
                .chain(lora_x),
        );
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
        for s in &t.series {
            let colour = colours
                .iter()
                .find(|c| c.heuristic == s.heuristic && c.label == s.label)
                .map_or(DARK, |c| c.colour);
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
            let label = match r.label {
                "parallel-all" => format!("parallel-all ({} adapters)", r.adapters),
                "lora" => format!("LoRA ({} parameters)", fmt_num(r.params as f64)),
                _ => r.label.to_owned(),
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
        if let (Some(r), Some(x)) = (&t.lora, lora_x) {
            let colour = category_colour(r.label);
            let (a, b) = error_range(&r.test);
            chart.draw_series([TriangleMarker::new((x, r.test.mean), 6, colour.filled())])?;
            if r.test.std.is_some() {
                chart.draw_series([ErrorBar::new_vertical(
                    x,
                    a,
                    r.test.mean,
                    b,
                    colour.stroke_width(1),
                    6,
                )])?;
            }
        }
        if !by_params && t.series.len() + refs.len() > 1 {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
    }
    Ok(())
}
