//! Figure 2: each probe score against single-adapter accuracy, one panel per task.

use plotters::prelude::*;

use super::{
    Area, DrawResult, FONT, Figure, category_colour, draw_legend, min_max, p_is, padded_pair,
    per_task,
};
use crate::analysis::{Analysis, TaskAnalysis};
use crate::{ReportError, fmt_num};

pub(super) fn figure(a: &Analysis) -> Result<Figure, ReportError> {
    let panels = per_task(
        a,
        2,
        (1080, 640),
        |t| {
            let usable = t.correlations.iter().any(|c| c.points.len() >= 3);
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
        },
        |root, t, ()| draw(root, t),
    )?;
    Ok(Figure {
        number: 2,
        title: "Probe scores against single-adapter accuracy".into(),
        caption: "Each point is one edge of the single-sweep (chosen independently of the \
                  probe; the budget-1 placements of gga and top-k, chosen by its score, are left \
                  out), coloured by kind: a cloud rising to the right means the probe score \
                  orders edges the way training does; ρ, p and n are in each panel's title, \
                  gradient rank first."
            .into(),
        panels,
    })
}

fn draw(root: &Area, t: &TaskAnalysis) -> DrawResult {
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
            draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
    }
    Ok(())
}
