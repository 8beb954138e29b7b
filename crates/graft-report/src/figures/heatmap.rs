//! Figure 1: single-adapter accuracy over the adjacency matrix, one heat map per task.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use graft_tables::Method;

use super::{
    Area, DARK, DrawResult, FONT, Figure, GREY, MARK, category_colour, min_max, per_task,
    text_style, viridis,
};
use crate::ReportError;
use crate::analysis::{Analysis, Reference, TaskAnalysis};

pub(super) fn figure(a: &Analysis) -> Result<Figure, ReportError> {
    let panels = per_task(
        a,
        1,
        (760, 570),
        |t| {
            if t.single.is_empty() {
                return Err(format!(
                    "no single-adapter run of task {} finished, so there is no map to draw: \
                     train a single-sweep proposal to get one",
                    t.task
                ));
            }
            Ok(())
        },
        |root, t, ()| draw(root, t),
    )?;
    let ranges: Vec<String> = a
        .tasks
        .iter()
        .filter_map(|t| {
            let (lo, hi) = single_range(t)?;
            let (blo, bhi) = bar_range(t);
            Some(format!(
                "{}: single adapters {lo:.1} to {hi:.1} % ({:.1} points), colour bar {blo:.1} to \
                 {bhi:.1} %",
                t.task,
                hi - lo
            ))
        })
        .collect();
    let mut caption = "Each cell is one adapter from node i (row) into node j (column) trained \
                       alone: brighter is more accurate, cells 1 to 3 are the best three, grey \
                       cells were not swept, × marks an edge whose runs did not finish; the lines \
                       on the colour bar are full fine-tuning, linear probe and parallel-all."
        .to_owned();
    if !ranges.is_empty() {
        caption.push_str(&format!(
            " Colour scale (test accuracy, mean over seeds): {}.",
            ranges.join("; ")
        ));
    }
    Ok(Figure {
        number: 1,
        title: "Single-adapter accuracy over the adjacency matrix".into(),
        caption,
        panels,
    })
}

/// The lowest and highest mean single-adapter test accuracy (%) of a task.
fn single_range(t: &TaskAnalysis) -> Option<(f64, f64)> {
    (!t.single.is_empty()).then(|| min_max(t.single.values().map(|m| m.mean)))
}

/// The colour bar's range: the single adapters and the reference lines, widened to one
/// point when they are all equal.
fn bar_range(t: &TaskAnalysis) -> (f64, f64) {
    let (lo, hi) = min_max(
        t.single
            .values()
            .map(|m| m.mean)
            .chain(refs(t).iter().map(|r| r.test.mean)),
    );
    if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

fn refs(t: &TaskAnalysis) -> Vec<&Reference> {
    [&t.full, &t.linear_probe, &t.parallel_all]
        .into_iter()
        .flatten()
        .collect()
}

fn draw(root: &Area, t: &TaskAnalysis) -> DrawResult {
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

    let refs = refs(t);
    let (lo, hi) = bar_range(t);
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
    if let Some((slo, shi)) = single_range(t) {
        root.draw(&Text::new(
            format!("range {slo:.1} to {shi:.1} % ({:.1} points)", shi - slo),
            (bx - 20, top + side + 50),
            text_style(11, DARK, HPos::Left, VPos::Center),
        ))?;
    }
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
