//! Figure 5: accuracy against forward FLOPs per image, one point per trained placement,
//! one panel per task.

use plotters::prelude::*;

use super::{
    Area, DrawResult, FONT, Figure, category_colour, draw_legend, error_range, min_max, padded,
    padded_pair, per_task,
};
use crate::analysis::{Analysis, PlacementStats, TaskAnalysis};
use crate::stats::MeanStd;
use crate::{ReportError, fmt_num};

pub(super) fn figure(a: &Analysis) -> Result<Figure, ReportError> {
    let panels = per_task(
        a,
        5,
        (900, 560),
        |t| {
            let drawn: Vec<&PlacementStats> =
                t.placements.iter().filter(|p| p.test.is_some()).collect();
            if drawn.is_empty() {
                return Err(format!(
                    "no run of task {} finished, so there is nothing to place",
                    t.task
                ));
            }
            Ok(drawn)
        },
        |root, t, drawn| draw(root, t, drawn),
    )?;
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

fn draw(root: &Area, t: &TaskAnalysis, drawn: &[&PlacementStats]) -> DrawResult {
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
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}
