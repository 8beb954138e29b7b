//! The numerical rank of an edge gradient from its singular values: the one definition of
//! the relative rule σ_k > tol · σ_max, used by the probe when it writes the `rank` column
//! and by the report when it recomputes the rank at other tolerances from the stored
//! `singular_values`.

/// The tolerances at which the report shows the rank, recomputed from the stored singular
/// values whatever tolerance the probe used, each with the name of its score column in the
/// report (`rank@1e-2` ...).
pub const RANK_TOLERANCES: [(&str, f64); 3] = [
    ("rank@1e-2", 1e-2),
    ("rank@1e-3", 1e-3),
    ("rank@1e-4", 1e-4),
];

/// How many of `singular_values` (any order) exceed `tol` times the largest: the numerical
/// rank under the relative rule. Zero when every value is zero (or there is none); values
/// that are not finite count as nothing, and do not set the largest.
pub fn relative_rank(singular_values: &[f64], tol: f64) -> usize {
    let spectral = singular_values
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .fold(0.0, f64::max);
    if spectral <= 0.0 {
        return 0;
    }
    let threshold = tol * spectral;
    singular_values
        .iter()
        .filter(|&&s| s.is_finite() && s > threshold)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_counts_values_above_the_relative_threshold() {
        // σ_max = 2: thresholds 0.02, 0.002, 0.0002.
        let sv = [2.0, 0.5, 0.03, 0.02, 0.005, 0.001, 0.0003, 0.0001, 0.0];
        assert_eq!(relative_rank(&sv, 1e-2), 3, "0.02 itself is not above 0.02");
        assert_eq!(relative_rank(&sv, 1e-3), 5);
        assert_eq!(relative_rank(&sv, 1e-4), 7);
        // Order does not matter.
        let mut rev = sv;
        rev.reverse();
        assert_eq!(relative_rank(&rev, 1e-3), 5);
    }

    #[test]
    fn rank_of_nothing_is_zero_and_a_value_that_is_not_finite_counts_for_nothing() {
        assert_eq!(relative_rank(&[], 1e-3), 0);
        assert_eq!(relative_rank(&[0.0, 0.0], 1e-3), 0);
        assert_eq!(relative_rank(&[1.0, f64::NAN, 0.5], 1e-3), 2);
        assert_eq!(relative_rank(&[f64::INFINITY, 1.0], 1e-3), 1);
    }

    #[test]
    fn tolerances_are_ordered_coarse_to_fine() {
        let sv = [1.0, 0.05, 0.005, 0.0005, 0.00005];
        let ranks: Vec<usize> = RANK_TOLERANCES
            .iter()
            .map(|(_, tol)| relative_rank(&sv, *tol))
            .collect();
        assert_eq!(ranks, [2, 3, 4]);
    }
}
