//! [`mean_std`]: the one mean and standard deviation over seeds, shared by the fine-tune
//! stage's console table and the report so the two never disagree.

/// Mean, sample standard deviation (n − 1) and count of the finite values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    /// `None` with fewer than two values.
    pub std: Option<f64>,
    pub n: usize,
}

/// Mean and sample standard deviation of the finite values in `xs` (NaN and infinities are
/// dropped); `None` when there is none.
pub fn mean_std(xs: impl IntoIterator<Item = f64>) -> Option<MeanStd> {
    let v: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = (n > 1).then(|| {
        let ss: f64 = v.iter().map(|x| (x - mean).powi(2)).sum();
        (ss / (n - 1) as f64).sqrt()
    });
    Some(MeanStd { mean, std, n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_drops_non_finite_and_needs_two_values_for_a_std() {
        let m = mean_std([1.0, 2.0, f64::NAN, 3.0, f64::INFINITY]).unwrap();
        assert_eq!((m.mean, m.n), (2.0, 3));
        // Sample std: sqrt(((1-2)² + 0 + (3-2)²) / (3 - 1)) = 1.
        assert!((m.std.unwrap() - 1.0).abs() < 1e-15);
        let m = mean_std([2.0, 4.0]).unwrap();
        assert!((m.std.unwrap() - 2f64.sqrt()).abs() < 1e-15);
        // One value: a mean and no std (not 0).
        assert_eq!(
            mean_std([4.0]),
            Some(MeanStd {
                mean: 4.0,
                std: None,
                n: 1
            })
        );
        assert_eq!(mean_std([f64::NAN, f64::NEG_INFINITY]), None);
        assert_eq!(mean_std([]), None);
    }
}
