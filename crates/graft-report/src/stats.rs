//! Small statistics with no dependencies: mean and sample standard deviation (graft-tables'
//! [`mean_std`], re-exported), average ranks,
//! Spearman's ρ and its two-sided p-value from Student's t with n − 2 degrees of freedom
//! (through the regularized incomplete beta function), Student's t quantiles by bisection on
//! that tail, Snedecor's F and its quantiles, and 95 % confidence intervals of a mean and of a difference of means over seeds
//! (paired by seed, or Welch's).

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

/// The two-sided `1 − alpha` quantile of Student's t: the `t > 0` with
/// P(|T| ≥ t) = `alpha` (2.262 for alpha 0.05, df 9), by bisection on
/// [`student_t_two_sided`]; NaN for df ≤ 0 or alpha outside (0, 1).
pub fn student_t_quantile(alpha: f64, df: f64) -> f64 {
    let valid = df > 0.0 && alpha > 0.0 && alpha < 1.0;
    if !valid {
        return f64::NAN;
    }
    bisect_positive(|t| student_t_two_sided(t, df) > alpha)
}

/// The x > 0 where `below(x)` turns from true to false (`below` true means the root lies
/// above x): doubling from 1 to bracket it, then bisection to a relative 1e-13; infinity
/// when no x below 1e12 brackets it.
fn bisect_positive(below: impl Fn(f64) -> bool) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while below(hi) {
        hi *= 2.0;
        if hi > 1e12 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if below(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-13 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Half-width of the 95 % confidence interval of a mean over `n` seeds: t(0.975, n − 1) ·
/// s / √n; `None` with fewer than two values.
pub fn ci95_half_width(m: &MeanStd) -> Option<f64> {
    let s = m.std?;
    (m.n >= 2).then(|| student_t_quantile(0.05, (m.n - 1) as f64) * s / (m.n as f64).sqrt())
}

/// The difference of two means (a − b) with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    /// Mean of a minus mean of b.
    pub diff: f64,
    pub lo: f64,
    pub hi: f64,
    /// Degrees of freedom of the t quantile (n − 1 paired; Welch–Satterthwaite otherwise).
    pub df: f64,
    /// Paired by seed (both sides have the same distinct seeds).
    pub paired: bool,
    pub n_a: usize,
    pub n_b: usize,
}

/// What can be said of a − b over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comparison {
    /// Both sides have at least two finite values.
    Interval(Difference),
    /// One side has fewer than two values: no interval.
    OneSeed { diff: f64, n_a: usize, n_b: usize },
    /// One side has no value at all.
    Missing,
}

/// The 95 % confidence interval of mean(a) − mean(b) over `(seed, value)` pairs. When both
/// sides have the same distinct seeds it is paired: the t interval of the per-seed
/// differences with n − 1 degrees of freedom. Otherwise Welch's: standard error
/// √(s²ₐ/nₐ + s²_b/n_b) with the Welch–Satterthwaite degrees of freedom (nₐ + n_b − 2 when
/// both variances are zero). Non-finite values are dropped first.
pub fn compare_means(a: &[(i64, f64)], b: &[(i64, f64)]) -> Comparison {
    let a: Vec<(i64, f64)> = a.iter().copied().filter(|v| v.1.is_finite()).collect();
    let b: Vec<(i64, f64)> = b.iter().copied().filter(|v| v.1.is_finite()).collect();
    let (Some(ma), Some(mb)) = (
        mean_std(a.iter().map(|v| v.1)),
        mean_std(b.iter().map(|v| v.1)),
    ) else {
        return Comparison::Missing;
    };
    let diff = ma.mean - mb.mean;
    let (n_a, n_b) = (ma.n, mb.n);
    if n_a < 2 || n_b < 2 {
        return Comparison::OneSeed { diff, n_a, n_b };
    }
    let seeds = |v: &[(i64, f64)]| {
        let mut s: Vec<i64> = v.iter().map(|x| x.0).collect();
        s.sort_unstable();
        let n = s.len();
        s.dedup();
        (s.len() == n).then_some(s)
    };
    let paired = match (seeds(&a), seeds(&b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    };
    let (se, df) = if paired {
        let mut a = a.clone();
        let mut b = b.clone();
        a.sort_by_key(|v| v.0);
        b.sort_by_key(|v| v.0);
        let d = mean_std(a.iter().zip(&b).map(|(x, y)| x.1 - y.1));
        let d = d.expect("two or more paired values");
        (d.std.unwrap_or(0.0) / (d.n as f64).sqrt(), (d.n - 1) as f64)
    } else {
        let va = ma.std.unwrap_or(0.0).powi(2) / n_a as f64;
        let vb = mb.std.unwrap_or(0.0).powi(2) / n_b as f64;
        let se2 = va + vb;
        let df = if se2 > 0.0 {
            se2 * se2 / (va * va / (n_a - 1) as f64 + vb * vb / (n_b - 1) as f64)
        } else {
            (n_a + n_b - 2) as f64
        };
        (se2.sqrt(), df)
    };
    let h = student_t_quantile(0.05, df) * se;
    Comparison::Interval(Difference {
        diff,
        lo: diff - h,
        hi: diff + h,
        df,
        paired,
        n_a,
        n_b,
    })
}

/// P(F ≤ f) for Snedecor's F with (`d1`, `d2`) degrees of freedom:
/// I_{d1 f / (d1 f + d2)}(d1 / 2, d2 / 2).
pub fn f_cdf(f: f64, d1: f64, d2: f64) -> f64 {
    if f.is_nan() || d1 <= 0.0 || d2 <= 0.0 {
        return f64::NAN;
    }
    if f <= 0.0 {
        return 0.0;
    }
    if f.is_infinite() {
        return 1.0;
    }
    regularized_incomplete_beta(d1 * f / (d1 * f + d2), d1 / 2.0, d2 / 2.0)
}

/// The `q` quantile of F(`d1`, `d2`) (3.89 for q 0.95, 2 and 12), by bisection on
/// [`f_cdf`]; NaN for q outside (0, 1) or a degree of freedom ≤ 0.
pub fn f_quantile(q: f64, d1: f64, d2: f64) -> f64 {
    if !(q > 0.0 && q < 1.0 && d1 > 0.0 && d2 > 0.0) {
        return f64::NAN;
    }
    bisect_positive(|f| f_cdf(f, d1, d2) < q)
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

    // Quantiles from the usual t tables (mpmath, 30 digits, for the digits beyond them).
    #[test]
    fn t_quantiles_match_tables() {
        close(student_t_quantile(0.05, 1.0), 12.706_204_736_174_7, 1e-9);
        close(student_t_quantile(0.05, 2.0), 4.302_652_729_749_464, 1e-9);
        close(student_t_quantile(0.05, 9.0), 2.262_157_162_798_205, 1e-9);
        close(student_t_quantile(0.05, 10.0), 2.228_138_851_986_273, 1e-9);
        close(student_t_quantile(0.05, 1e6), 1.959_966_4, 1e-6);
        assert!(student_t_quantile(0.05, 0.0).is_nan());
    }

    #[test]
    fn f_quantiles_match_tables() {
        // scipy.stats.f.ppf(0.95, 2, 12), (0.975, 23, 12), (0.025, 23, 12), (0.5, 1, 1).
        close(f_quantile(0.95, 2.0, 12.0), 3.885_293_834_652_39, 1e-9);
        close(f_quantile(0.975, 23.0, 12.0), 3.030_576_320_263_066, 1e-9);
        close(f_quantile(0.025, 23.0, 12.0), 0.389_113_935_763_304_4, 1e-9);
        close(f_quantile(0.5, 1.0, 1.0), 1.0, 1e-9);
        close(f_cdf(3.885_293_834_652_39, 2.0, 12.0), 0.95, 1e-9);
        assert!(f_quantile(1.0, 2.0, 3.0).is_nan() && f_cdf(1.0, 0.0, 3.0).is_nan());
    }

    #[test]
    fn ci_half_width_by_hand() {
        // 70, 71, 72: mean 71, s = 1, n = 3: t(0.975, 2) · 1 / √3 = 4.302653 / 1.732051.
        let m = mean_std([70.0, 71.0, 72.0]).unwrap();
        close(ci95_half_width(&m).unwrap(), 2.484_137_711_750_331, 1e-9);
        assert_eq!(ci95_half_width(&mean_std([70.0]).unwrap()), None);
    }

    #[test]
    fn paired_difference_by_hand() {
        // Per-seed differences 2, 3, 4: mean 3, s = 1, n = 3, df = 2:
        // 3 ± 4.302653 / √3 = 3 ± 2.484138 (4.302653 / 1.732051 = 2.4841377).
        let a = [(0, 72.0), (1, 74.0), (2, 70.0)];
        let b = [(2, 66.0), (0, 70.0), (1, 71.0)];
        let Comparison::Interval(d) = compare_means(&a, &b) else {
            panic!("no interval")
        };
        assert!(d.paired);
        assert_eq!((d.n_a, d.n_b, d.df), (3, 3, 2.0));
        close(d.diff, 3.0, 1e-12);
        close(d.lo, 3.0 - 2.484_137_711_750_331, 1e-9);
        close(d.hi, 3.0 + 2.484_137_711_750_331, 1e-9);
    }

    #[test]
    fn welch_difference_by_hand() {
        // a: 1, 2, 3 (mean 2, s² = 1, n 3); b: 4, 6 (mean 5, s² = 2, n 2), seeds differ.
        // se² = 1/3 + 2/2 = 4/3; df = (4/3)² / ((1/3)²/2 + 1²/1) = (16/9) / (19/18) = 32/19.
        // t(0.975, 32/19) = 5.176231628546520 (mpmath, 30 digits, root of the same tail).
        let a = [(0, 1.0), (1, 2.0), (2, 3.0)];
        let b = [(0, 4.0), (1, 6.0)];
        let Comparison::Interval(d) = compare_means(&a, &b) else {
            panic!("no interval")
        };
        assert!(!d.paired);
        close(d.df, 32.0 / 19.0, 1e-12);
        close(d.diff, -3.0, 1e-12);
        let t = 5.176_231_628_546_52;
        close(student_t_quantile(0.05, 32.0 / 19.0), t, 1e-9);
        close(d.hi - d.diff, t * (4.0f64 / 3.0).sqrt(), 1e-9);
        close(d.diff - d.lo, t * (4.0f64 / 3.0).sqrt(), 1e-9);
        // Equal seeds repeated (pooled draws) are not paired.
        let c = [(0, 1.0), (0, 2.0), (1, 3.0)];
        let e = [(0, 1.0), (1, 2.0), (1, 3.0)];
        let Comparison::Interval(d) = compare_means(&c, &e) else {
            panic!("no interval")
        };
        assert!(!d.paired);
    }

    #[test]
    fn one_seed_has_no_interval() {
        assert_eq!(
            compare_means(&[(0, 5.0)], &[(0, 3.0), (1, 4.0)]),
            Comparison::OneSeed {
                diff: 1.5,
                n_a: 1,
                n_b: 2
            }
        );
        assert_eq!(compare_means(&[], &[(0, 1.0)]), Comparison::Missing);
        assert_eq!(
            compare_means(&[(0, f64::NAN)], &[(0, 1.0)]),
            Comparison::Missing
        );
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
