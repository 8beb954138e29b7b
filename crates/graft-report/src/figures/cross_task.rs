//! Figure 4: the cross-task matrix of Spearman's ρ between single-adapter accuracies.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    Area, DARK, DrawResult, FONT, Figure, GREY, Panel, diverging, p_is, panel, render, text_style,
};
use crate::ReportError;
use crate::analysis::{Analysis, TaskAnalysis};

pub(super) fn figure(a: &Analysis) -> Result<Figure, ReportError> {
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
            render(size + 200, size, |root| draw(root, a, &swept)),
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

fn draw(root: &Area, a: &Analysis, swept: &[&TaskAnalysis]) -> DrawResult {
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
