//! Intervals of one replicate's estimate and of the estimate pooled over replicates.
//!
//! The unit of a pooled interval is the replicate, never the run: a difference of accuracies
//! is pooled as the t interval of the replicates' estimates (k − 1 degrees of freedom); a
//! correlation as Fisher's z with a random-effects variance (DerSimonian–Laird τ²) and the
//! Hartung–Knapp interval (t with k − 1 degrees of freedom), back-transformed. A Spearman
//! ρ over n pairs has Fisher-z variance 1.06 / (n − 3) (Fieller, Hartley and Pearson, 1957).

use crate::stats::{mean_std, student_t_quantile};

/// The two-sided 97.5 % quantile of the standard normal.
const Z_975: f64 = 1.959_963_984_540_054;

/// An estimate with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// Whether the interval lies wholly above `x`.
    pub fn above(&self, x: f64) -> bool {
        self.lo > x
    }

    /// Whether the interval lies wholly below `x`.
    pub fn below(&self, x: f64) -> bool {
        self.hi < x
    }
}

/// The t interval of the mean of the replicates' estimates; `None` with fewer than two.
pub fn pool_mean(xs: &[f64]) -> Option<Interval> {
    let m = mean_std(xs.iter().copied())?;
    let s = m.std?;
    let h = student_t_quantile(0.05, (m.n - 1) as f64) * s / (m.n as f64).sqrt();
    Some(Interval {
        estimate: m.mean,
        lo: m.mean - h,
        hi: m.mean + h,
    })
}

/// Fisher's z of a correlation, kept finite at ±1.
pub fn fisher_z(r: f64) -> f64 {
    r.clamp(-0.999_999, 0.999_999).atanh()
}

/// The variance of Fisher's z of a Spearman ρ over `n` pairs; `None` for n < 4.
pub fn spearman_z_variance(n: usize) -> Option<f64> {
    (n >= 4).then(|| 1.06 / (n as f64 - 3.0))
}

/// The 95 % interval of one Spearman ρ over `n` pairs (normal on Fisher's z); `None` for
/// n < 4.
pub fn spearman_interval(rho: f64, n: usize) -> Option<Interval> {
    let h = Z_975 * spearman_z_variance(n)?.sqrt();
    let z = fisher_z(rho);
    Some(Interval {
        estimate: rho,
        lo: (z - h).tanh(),
        hi: (z + h).tanh(),
    })
}

/// Correlations `(ρ, n)` pooled with a random-effects model on Fisher's z: τ² by
/// DerSimonian–Laird, the mean weighted by 1 / (vᵢ + τ²), the Hartung–Knapp interval with
/// t(k − 1); back-transformed. `None` with fewer than two correlations of n ≥ 4.
pub fn pool_correlations(rs: &[(f64, usize)]) -> Option<Interval> {
    let zv: Vec<(f64, f64)> = rs
        .iter()
        .filter_map(|&(r, n)| Some((fisher_z(r), spearman_z_variance(n)?)))
        .filter(|(z, _)| z.is_finite())
        .collect();
    let k = zv.len();
    if k < 2 {
        return None;
    }
    let weighted_mean = |w: &[f64]| {
        let sw: f64 = w.iter().sum();
        (
            zv.iter().zip(w).map(|((z, _), w)| w * z).sum::<f64>() / sw,
            sw,
        )
    };
    let w: Vec<f64> = zv.iter().map(|(_, v)| 1.0 / v).collect();
    let (z_fixed, sw) = weighted_mean(&w);
    let q: f64 = zv
        .iter()
        .zip(&w)
        .map(|((z, _), w)| w * (z - z_fixed).powi(2))
        .sum();
    let c = sw - w.iter().map(|w| w * w).sum::<f64>() / sw;
    let tau2 = ((q - (k - 1) as f64) / c).max(0.0);
    let w: Vec<f64> = zv.iter().map(|(_, v)| 1.0 / (v + tau2)).collect();
    let (z, sw) = weighted_mean(&w);
    let hk: f64 = zv
        .iter()
        .zip(&w)
        .map(|((zi, _), w)| w * (zi - z).powi(2))
        .sum::<f64>()
        / ((k - 1) as f64 * sw);
    let h = student_t_quantile(0.05, (k - 1) as f64) * hk.sqrt();
    Some(Interval {
        estimate: z.tanh(),
        lo: (z - h).tanh(),
        hi: (z + h).tanh(),
    })
}

/// The mean Fisher z of correlations between pairs of `k` tasks, with a leave-one-task-out
/// jackknife interval (t with k − 1 degrees of freedom): pairs that share a task are not
/// independent, tasks are. `pairs` holds `(task a, task b, ρ)` with a, b < k; `None` with
/// fewer than three tasks or a task left with no pair.
pub fn pool_pairs_jackknife(k: usize, pairs: &[(usize, usize, f64)]) -> Option<Interval> {
    if k < 3 || pairs.is_empty() {
        return None;
    }
    let mean_z = |skip: Option<usize>| {
        let zs: Vec<f64> = pairs
            .iter()
            .filter(|(a, b, _)| skip.is_none_or(|s| *a != s && *b != s))
            .map(|(_, _, r)| fisher_z(*r))
            .collect();
        (!zs.is_empty()).then(|| zs.iter().sum::<f64>() / zs.len() as f64)
    };
    let all = mean_z(None)?;
    let loo: Vec<f64> = (0..k).map(|s| mean_z(Some(s))).collect::<Option<_>>()?;
    let loo_mean = loo.iter().sum::<f64>() / k as f64;
    let var = (k - 1) as f64 / k as f64 * loo.iter().map(|x| (x - loo_mean).powi(2)).sum::<f64>();
    let h = student_t_quantile(0.05, (k - 1) as f64) * var.sqrt();
    Some(Interval {
        estimate: all.tanh(),
        lo: (all - h).tanh(),
        hi: (all + h).tanh(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn a_mean_over_replicates_by_hand() {
        // mean 2, sd 1, n 3: 2 ± 4.302653 / √3.
        let i = pool_mean(&[1.0, 2.0, 3.0]).unwrap();
        close(i.lo, 2.0 - 4.302_652_729_749_464 / 3f64.sqrt(), 1e-9);
        assert!(pool_mean(&[1.0]).is_none());
    }

    #[test]
    fn one_spearman_interval_by_hand() {
        // z = atanh(0.5) = 0.549306; se = √(1.06 / 21) = 0.224668.
        let i = spearman_interval(0.5, 24).unwrap();
        close(
            i.lo,
            (0.549_306_144_334_054_8 - Z_975 * (1.06f64 / 21.0).sqrt()).tanh(),
            1e-12,
        );
        close(
            i.hi,
            (0.549_306_144_334_054_8 + Z_975 * (1.06f64 / 21.0).sqrt()).tanh(),
            1e-12,
        );
        assert!(spearman_interval(0.5, 3).is_none());
    }

    /// Equal correlations: no heterogeneity, τ² = 0, the Hartung–Knapp variance is zero
    /// and the interval collapses onto the common value.
    #[test]
    fn equal_correlations_pool_to_themselves() {
        let i = pool_correlations(&[(0.4, 20), (0.4, 30), (0.4, 25)]).unwrap();
        close(i.estimate, 0.4, 1e-12);
        close(i.lo, 0.4, 1e-9);
        assert!(pool_correlations(&[(0.4, 20)]).is_none());
    }

    /// Against a by-hand DerSimonian–Laird / Hartung–Knapp computation (numpy, scipy).
    #[test]
    fn random_effects_pooling_matches_a_reference() {
        let i =
            pool_correlations(&[(0.1, 24), (0.6, 24), (0.35, 24), (0.7, 24), (0.2, 24)]).unwrap();
        close(i.estimate, 0.418_433_8, 1e-6);
        close(i.lo, 0.041_640_9, 1e-6);
        close(i.hi, 0.691_027_0, 1e-6);
    }

    #[test]
    fn the_jackknife_over_tasks_needs_three() {
        assert!(pool_pairs_jackknife(2, &[(0, 1, 0.3)]).is_none());
        let i = pool_pairs_jackknife(3, &[(0, 1, 0.3), (0, 2, 0.3), (1, 2, 0.3)]).unwrap();
        close(i.estimate, 0.3, 1e-12);
        close(i.hi - i.lo, 0.0, 1e-9);
    }
}
