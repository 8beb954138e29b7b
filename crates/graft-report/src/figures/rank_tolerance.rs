//! Figure 6: single-adapter accuracy against the gradient rank at the relative tolerances
//! 1e-2, 1e-3 and 1e-4 (recomputed from the probe's singular values), three panels side by
//! side per task, each titled with its Spearman ρ, p and n over the single-sweep's edges.

use super::correlation::{scatter, sweep_ready};
use super::{Figure, per_task};
use crate::ReportError;
use crate::analysis::{Analysis, is_rank, rank_tolerance};

pub(super) fn figure(a: &Analysis) -> Result<Figure, ReportError> {
    let panels = per_task(
        a,
        6,
        (1080, 360),
        |t| sweep_ready(t, |c| is_rank(c.score)),
        |root, t, ()| {
            let ranks: Vec<_> = t.correlations.iter().filter(|c| is_rank(c.score)).collect();
            let areas = root.split_evenly((1, ranks.len().max(1)));
            for (k, (c, area)) in ranks.iter().zip(areas.iter()).enumerate() {
                let x = format!(
                    "gradient rank, tol {}",
                    rank_tolerance(c.score).unwrap_or("?")
                );
                scatter(area, c, &x, k == 0)?;
            }
            Ok(())
        },
    )?;
    Ok(Figure {
        number: 6,
        title: "Gradient rank at three tolerances against single-adapter accuracy".into(),
        caption: "The numerical rank of each single-sweep edge's gradient (singular values above \
                  tol × the largest), recomputed from the probe's stored singular values at \
                  tol = 1e-2, 1e-3 and 1e-4, against the edge's single-adapter test accuracy \
                  (mean over seeds), coloured by kind. A correlation that holds at one tolerance \
                  only depends on where the spectrum is cut; ρ, p and n are in each panel's \
                  title and in the correlations table."
            .into(),
        panels,
    })
}
