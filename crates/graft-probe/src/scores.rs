//! Scores of one edge gradient from its singular values, and the two ways to get those:
//! the direct SVD of the d×d matrix G = Δᵀ X, and the exact shortcut when the probe has
//! fewer rows m than the width d: with thin QR factorisations Δᵀ = Q_Δ R_Δ and
//! Xᵀ = Q_X R_X (once per node), G = Q_Δ (R_Δ R_Xᵀ) Q_Xᵀ, and since both Q have orthonormal
//! columns, σ(G) = σ(R_Δ R_Xᵀ), an m×m core per edge.

use faer::Mat;
use serde::{Deserialize, Serialize};

/// How small a singular value may be and still count for the numerical rank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TolRule {
    /// σ_k > tol · σ_max.
    Relative,
    /// σ_k > σ_max · max(rows, cols) · ε(f32) (NumPy's `matrix_rank` rule, for f32 gradients).
    Epsilon,
}

/// The scores of one edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub rank: usize,
    pub frobenius: f64,
    pub spectral: f64,
    pub nuclear: f64,
    pub stable_rank: f64,
    pub effective_rank: f64,
}

/// Scores from singular values (any order) of a `dim`×`dim` matrix.
pub fn scores(sv: &[f64], dim: usize, rule: TolRule, tol: f64) -> Scores {
    let spectral = sv.iter().copied().fold(0.0, f64::max);
    let fro2: f64 = sv.iter().map(|s| s * s).sum();
    let nuclear: f64 = sv.iter().sum();
    // Both rules are the relative rule of graft-tables (the one the report recomputes ranks
    // at other tolerances with), the epsilon rule at tol = max(rows, cols) · ε(f32).
    let relative = match rule {
        TolRule::Relative => tol,
        TolRule::Epsilon => dim as f64 * f32::EPSILON as f64,
    };
    let rank = graft_tables::relative_rank(sv, relative);
    let effective_rank = if nuclear > 0.0 {
        let h: f64 = sv
            .iter()
            .map(|s| s / nuclear)
            .filter(|p| *p > 0.0)
            .map(|p| -p * p.ln())
            .sum();
        h.exp()
    } else {
        0.0
    };
    Scores {
        rank,
        frobenius: fro2.sqrt(),
        spectral,
        nuclear,
        stable_rank: if spectral > 0.0 {
            fro2 / (spectral * spectral)
        } else {
            0.0
        },
        effective_rank,
    }
}

/// Singular values, largest first, of the row-major `rows`×`cols` matrix `a`. A matrix with
/// a value that is not finite, or an SVD that does not converge, is an error, never an empty
/// or zero spectrum.
pub fn singular_values(a: &[f64], rows: usize, cols: usize) -> Result<Vec<f64>, String> {
    if let Some(k) = a.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "gradient entry [{}, {}] is {}",
            k / cols,
            k % cols,
            a[k]
        ));
    }
    let m = Mat::<f64>::from_fn(rows, cols, |i, j| a[i * cols + j]);
    sorted_finite(m.singular_values())
}

fn sorted_finite<E: std::fmt::Debug>(sv: Result<Vec<f64>, E>) -> Result<Vec<f64>, String> {
    let mut sv = sv.map_err(|e| format!("SVD failed: {e:?}"))?;
    if sv.iter().any(|s| !s.is_finite()) {
        return Err("SVD gave a singular value that is not finite".into());
    }
    sv.sort_by(|a, b| b.total_cmp(a));
    Ok(sv)
}

/// The R factor (k×k, k = min(rows, cols) columns kept) of the thin QR of the transpose of
/// the row-major `rows`×`cols` matrix `a` (so of a `cols`×`rows` matrix), as a faer matrix.
pub fn thin_r_of_transpose(a: &[f64], rows: usize, cols: usize) -> Mat<f64> {
    let t = Mat::<f64>::from_fn(cols, rows, |i, j| a[j * cols + i]);
    let qr = t.qr();
    qr.thin_R().to_owned()
}

/// σ(Δᵀ X) from the R factors of Δᵀ and Xᵀ (see the module doc), largest first; an error
/// like [`singular_values`].
pub fn core_singular_values(r_delta: &Mat<f64>, r_x: &Mat<f64>) -> Result<Vec<f64>, String> {
    let core = r_delta * r_x.transpose();
    for j in 0..core.ncols() {
        for i in 0..core.nrows() {
            if !core[(i, j)].is_finite() {
                return Err(format!(
                    "gradient core entry [{i}, {j}] is {}",
                    core[(i, j)]
                ));
            }
        }
    }
    sorted_finite(core.singular_values())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn random(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Δᵀ X for row-major m×d Δ and X.
    fn gram(delta: &[f64], x: &[f64], m: usize, d: usize) -> Vec<f64> {
        let mut g = vec![0.0; d * d];
        for r in 0..m {
            for a in 0..d {
                for b in 0..d {
                    g[a * d + b] += delta[r * d + a] * x[r * d + b];
                }
            }
        }
        g
    }

    #[test]
    fn rank_of_a_constructed_low_rank_matrix() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (m, d, k) = (40, 24, 5);
        // Δ of rank k: m×k times k×d.
        let u = random(&mut rng, m * k);
        let v = random(&mut rng, k * d);
        let mut delta = vec![0.0; m * d];
        for r in 0..m {
            for c in 0..d {
                delta[r * d + c] = (0..k).map(|t| u[r * k + t] * v[t * d + c]).sum();
            }
        }
        let x = random(&mut rng, m * d);
        let sv = singular_values(&gram(&delta, &x, m, d), d, d).unwrap();
        let s = scores(&sv, d, TolRule::Relative, 1e-6);
        assert_eq!(s.rank, k);
        assert_eq!(scores(&sv, d, TolRule::Epsilon, 0.0).rank, k);
        assert!(s.stable_rank >= 1.0 && s.stable_rank <= k as f64 + 1e-9);
        assert!(s.effective_rank >= 1.0 && s.effective_rank <= k as f64 + 1e-9);
        assert!((s.frobenius - sv.iter().map(|x| x * x).sum::<f64>().sqrt()).abs() < 1e-9);
    }

    #[test]
    fn scores_of_known_singular_values() {
        let s = scores(&[3.0, 4.0, 0.0], 3, TolRule::Relative, 1e-3);
        assert_eq!(s.rank, 2);
        assert_eq!(s.spectral, 4.0);
        assert_eq!(s.frobenius, 5.0);
        assert_eq!(s.nuclear, 7.0);
        assert!((s.stable_rank - 25.0 / 16.0).abs() < 1e-12);
        let p: [f64; 2] = [3.0 / 7.0, 4.0 / 7.0];
        let h: f64 = p.iter().map(|p: &f64| -p * p.ln()).sum();
        assert!((s.effective_rank - h.exp()).abs() < 1e-12);
        let zero = scores(&[0.0, 0.0], 2, TolRule::Relative, 1e-3);
        assert_eq!(
            (zero.rank, zero.stable_rank, zero.effective_rank),
            (0, 0.0, 0.0)
        );
    }

    /// The report recomputes ranks at other tolerances from the stored singular values with
    /// graft-tables' rule: at the probe's own tolerance it must give the `rank` column.
    #[test]
    fn the_rank_column_is_the_rank_the_report_recomputes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for _ in 0..50 {
            let sv: Vec<f64> = (0..16)
                .map(|_| 10f64.powf(rng.random_range(-6.0..0.0)))
                .collect();
            for tol in [1e-2, 1e-3, 1e-4] {
                let row_rank = scores(&sv, 16, TolRule::Relative, tol).rank;
                assert_eq!(row_rank, graft_tables::relative_rank(&sv, tol));
            }
        }
    }

    #[test]
    fn the_qr_shortcut_equals_the_direct_svd() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for (m, d) in [(6, 20), (12, 16), (1, 8)] {
            let delta = random(&mut rng, m * d);
            let x = random(&mut rng, m * d);
            let direct = singular_values(&gram(&delta, &x, m, d), d, d).unwrap();
            let core = core_singular_values(
                &thin_r_of_transpose(&delta, m, d),
                &thin_r_of_transpose(&x, m, d),
            )
            .unwrap();
            assert_eq!(core.len(), m);
            for (k, s) in direct.iter().enumerate() {
                let c = core.get(k).copied().unwrap_or(0.0);
                assert!(
                    (s - c).abs() < 1e-9 * direct[0].max(1.0),
                    "m {m} d {d} k {k}: {s} vs {c}"
                );
            }
        }
    }

    #[test]
    fn a_gradient_that_is_not_finite_is_an_error_not_an_empty_spectrum() {
        let mut a = vec![1.0; 9];
        a[5] = f64::NAN;
        let e = singular_values(&a, 3, 3).unwrap_err();
        assert!(e.contains("[1, 2]") && e.contains("NaN"), "{e}");
        a[5] = f64::INFINITY;
        assert!(singular_values(&a, 3, 3).is_err());
    }

    #[test]
    fn faer_agrees_with_nalgebra() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let d = 32;
        let a = random(&mut rng, d * d);
        let ours = singular_values(&a, d, d).unwrap();
        let na = nalgebra::DMatrix::from_row_slice(d, d, &a);
        let mut theirs: Vec<f64> = na.singular_values().iter().copied().collect();
        theirs.sort_by(|a, b| b.total_cmp(a));
        for (x, y) in ours.iter().zip(&theirs) {
            assert!((x - y).abs() < 1e-10, "{x} vs {y}");
        }
    }
}
