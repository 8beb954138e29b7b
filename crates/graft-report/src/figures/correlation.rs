//! Figure 2: each continuous probe score against single-adapter accuracy, one panel per task
//! (the gradient rank at three tolerances is figure 6). The scatter of one score, and the
//! reason a task has none, are shared with figure 6.

use plotters::prelude::*;

use super::{
    Area, DrawResult, FONT, Figure, category_colour, draw_legend, min_max, p_is, padded_pair,
    per_task,
};
use crate::analysis::{Analysis, ScoreCorrelation, TaskAnalysis, is_rank};
use crate::{ReportError, fmt_num};

pub(super) fn figure(a: &Analysis) -> Result<Figure, ReportError> {
    let panels = per_task(
        a,
        2,
        (1080, 640),
        |t| sweep_ready(t, |c| !is_rank(c.score)),
        |root, t, ()| draw(root, t),
    )?;
    Ok(Figure {
        number: 2,
        title: "Probe scores against single-adapter accuracy".into(),
        caption: "Each point is one edge of the single-sweep (chosen independently of the \
                  probe; the budget-1 placements of gga and top-k, chosen by its score, are left \
                  out), coloured by kind: a cloud rising to the right means the probe score \
                  orders edges the way training does; ρ, p and n are in each panel's title. The \
                  gradient rank at three tolerances is figure 6."
            .into(),
        panels,
    })
}

/// Whether task `t` has correlations to draw for the scores `pick` selects, else why not.
pub(super) fn sweep_ready(
    t: &TaskAnalysis,
    pick: impl Fn(&ScoreCorrelation) -> bool,
) -> Result<(), String> {
    let usable = t
        .correlations
        .iter()
        .filter(|c| pick(c))
        .any(|c| c.points.len() >= 3);
    if let Some(why) = &t.sweep_missing {
        Err(format!("not measured: {why}"))
    } else if t.data.probe.is_empty() {
        Err(format!(
            "task {} has no probe table, so there is no score to compare",
            t.task
        ))
    } else if !usable {
        Err(format!(
            "task {} has {} single-sweep edge(s) with both a probe score and a finished \
             run; a correlation needs at least 3",
            t.task,
            t.correlations.first().map_or(0, |c| c.points.len())
        ))
    } else {
        Ok(())
    }
}

fn draw(root: &Area, t: &TaskAnalysis) -> DrawResult {
    let areas = root.split_evenly((2, 3));
    let scores = t.correlations.iter().filter(|c| !is_rank(c.score));
    for (k, (c, area)) in scores.zip(areas.iter()).enumerate() {
        scatter(area, c, &c.score.replace('_', " "), k == 0)?;
    }
    if let Some(last) = areas.last() {
        last.draw(&Text::new(
            "gradient rank at 1e-2, 1e-3, 1e-4: figure 6",
            (20, 40),
            (FONT, 13).into_font().color(&super::DARK),
        ))?;
    }
    Ok(())
}

/// One score's scatter against single-adapter test accuracy on `area`, titled with ρ, p and
/// n; points coloured by edge kind, with the legend when `legend` and two kinds or more.
pub(super) fn scatter(area: &Area, c: &ScoreCorrelation, x_desc: &str, legend: bool) -> DrawResult {
    let title = match &c.spearman {
        Some(s) => format!(
            "{x_desc}: ρ = {:.2}, {}, n = {}",
            s.rho,
            s.p.map_or("p n/a".into(), p_is),
            s.n
        ),
        None => format!("{x_desc}: ρ undefined (n = {})", c.points.len()),
    };
    let (xl, xh) = padded_pair(min_max(c.points.iter().map(|p| p.0)));
    let (yl, yh) = padded_pair(min_max(c.points.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, if legend { 16 } else { 14 }))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(xl..xh, yl..yh)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .x_desc(x_desc)
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
    if kinds_present > 1 && legend {
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    Ok(())
}
