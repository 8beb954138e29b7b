//! Small statistics with no dependencies: mean and sample standard deviation (graft-tables'
//! [`mean_std`], re-exported), average ranks,
//! Spearman's ρ and its two-sided p-value from Student's t with n − 2 degrees of freedom
//! (through the regularized incomplete beta function).

/// The one mean and sample standard deviation, shared with the fine-tune stage's console.
pub use graft_tables::{MeanStd, mean_std};

/// Ranks starting at 1, ties given the average of the ranks they span.
pub fn average_ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut ranks = vec![0.0; xs.len()];
    let mut k = 0;
    while k < order.len() {
        let mut end = k + 1;
        while end < order.len() && xs[order[end]] == xs[order[k]] {
            end += 1;
        }
        // Positions k..end (0-based) hold ranks k+1..=end; their average:
        let avg = (k + 1 + end) as f64 / 2.0;
        for &o in &order[k..end] {
            ranks[o] = avg;
        }
        k = end;
    }
    ranks
}

/// Pearson's correlation; `None` when either side is constant or fewer than two pairs.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for k in 0..n {
        let (dx, dy) = (x[k] - mx, y[k] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// Spearman's rank correlation with its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spearman {
    pub rho: f64,
    /// Two-sided, from t = ρ √((n − 2) / (1 − ρ²)) with n − 2 degrees of freedom;
    /// `None` for n < 3.
    pub p: Option<f64>,
    pub n: usize,
}

/// Spearman's ρ of the pairs whose both values are finite; `None` with fewer than two such
/// pairs or when one side is constant (ρ is undefined then).
pub fn spearman(pairs: &[(f64, f64)]) -> Option<Spearman> {
    let (x, y): (Vec<f64>, Vec<f64>) = pairs
        .iter()
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .copied()
        .unzip();
    let n = x.len();
    let rho = pearson(&average_ranks(&x), &average_ranks(&y))?;
    let p = (n >= 3).then(|| correlation_p_value(rho, n));
    Some(Spearman { rho, p, n })
}

/// Two-sided p-value of a correlation `r` over `n` pairs under the t approximation.
pub fn correlation_p_value(r: f64, n: usize) -> f64 {
    let df = n as f64 - 2.0;
    if df <= 0.0 {
        return f64::NAN;
    }
    let r2 = r * r;
    if r2 >= 1.0 {
        return 0.0;
    }
    let t2 = r2 * df / (1.0 - r2);
    student_t_two_sided(t2.sqrt(), df)
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom.
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    let x = df / (df + t * t);
    regularized_incomplete_beta(x, df / 2.0, 0.5)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients; relative error about 1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (k, c) in C.iter().enumerate().skip(1) {
        a += c / (x + k as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b), by the continued fraction
/// (modified Lentz), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where it converges
/// faster.
pub fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x.is_nan() || a <= 0.0 || b <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1e-300),
            "{a} != {b} (rel tol {tol})"
        );
    }

    #[test]
    fn ln_gamma_known_values() {
        assert!(ln_gamma(1.0).abs() < 1e-14 && ln_gamma(2.0).abs() < 1e-14);
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-13);
        close(ln_gamma(10.0), 362880.0_f64.ln(), 1e-13);
        close(ln_gamma(100.5), 361.435_540_467_777_6, 1e-13);
    }

    // Reference values from mpmath (50 digits): betainc(a, b, 0, x, regularized=True).
    #[test]
    fn incomplete_beta_matches_mpmath() {
        close(regularized_incomplete_beta(0.3, 2.0, 3.0), 0.3483, 1e-12);
        close(
            regularized_incomplete_beta(0.9, 0.5, 0.5),
            0.795_167_235_300_866_4,
            1e-12,
        );
        close(
            regularized_incomplete_beta(0.2, 11.5, 0.5),
            1.668_818_294_048_373_8e-9,
            1e-9,
        );
        close(
            regularized_incomplete_beta(0.999, 50.0, 0.5),
            0.752_369_019_965_376_7,
            1e-10,
        );
        assert_eq!(regularized_incomplete_beta(0.0, 2.0, 3.0), 0.0);
        assert_eq!(regularized_incomplete_beta(1.0, 2.0, 3.0), 1.0);
    }

    // Two-sided Student t tail, against mpmath and the usual tables.
    #[test]
    fn student_t_tails() {
        // t = 2.228 is the 97.5 % quantile of t(10): two-sided p = 0.05.
        close(student_t_two_sided(2.228_138_851_986_273, 10.0), 0.05, 1e-9);
        close(
            student_t_two_sided(2.0, 10.0),
            0.073_388_034_770_740_38,
            1e-10,
        );
        close(student_t_two_sided(1.0, 1.0), 0.5, 1e-12);
        close(student_t_two_sided(0.0, 5.0), 1.0, 1e-12);
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 20.0, 5.0]),
            vec![2.0, 3.5, 3.5, 1.0]
        );
        assert_eq!(average_ranks(&[1.0, 1.0, 1.0]), vec![2.0, 2.0, 2.0]);
        assert!(average_ranks(&[]).is_empty());
    }

    // Against scipy.stats.spearmanr, recomputed with mpmath from the same definition.
    #[test]
    fn spearman_known_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [5.0, 6.0, 7.0, 8.0, 7.0];
        let s = spearman(&x.iter().copied().zip(y).collect::<Vec<_>>()).unwrap();
        close(s.rho, 0.820_782_681_668_123_3, 1e-12);
        close(s.p.unwrap(), 0.088_587_005_313_543_88, 1e-9);
        assert_eq!(s.n, 5);

        let x = [2.0, 8.0, 4.0, 9.0, 1.0, 7.0, 3.0, 6.0, 5.0, 10.0];
        let y = [3.0, 9.0, 1.0, 7.0, 2.0, 10.0, 5.0, 8.0, 4.0, 6.0];
        let s = spearman(&x.iter().copied().zip(y).collect::<Vec<_>>()).unwrap();
        close(s.rho, 0.696_969_696_969_697, 1e-12);
        close(s.p.unwrap(), 0.025_096_675_882_251_81, 1e-8);

        // Perfect monotone relation: ρ = 1, p = 0.
        let s = spearman(&[(1.0, 10.0), (2.0, 20.0), (3.0, 35.0)]).unwrap();
        assert_eq!((s.rho, s.p), (1.0, Some(0.0)));
        // NaN pairs are dropped; a constant side has no ρ; two pairs have no p.
        let s = spearman(&[(1.0, 1.0), (f64::NAN, 2.0), (2.0, 3.0)]).unwrap();
        assert_eq!((s.n, s.p), (2, None));
        assert!(spearman(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]).is_none());
    }
}
