//! The benchmarks' statistics: binomial (Wilson) intervals for one run's test accuracy, Student's
//! t intervals over seeds, and a cell's score over its seeds (`Scored`).

/// The 95% Wilson score interval of `p` measured on `n` trials.
pub fn wilson95(p: f64, n: usize) -> (f64, f64) {
    let (z, n) = (1.959964, n as f64);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    (centre - half, centre + half)
}

/// The half-width of the 95% interval of `p − q`, two accuracies measured on `n` and `m` test
/// images, as independent binomials (conservative when both runs saw the same images).
pub fn diff_half95(p: f64, n: usize, q: f64, m: usize) -> f64 {
    1.959964 * (p * (1.0 - p) / n.max(1) as f64 + q * (1.0 - q) / m.max(1) as f64).sqrt()
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (df ≥ 1; NaN for 0): the
/// half-width factor of a two-sided 95% interval. From `statrs` (the table and interpolation
/// written here before were off beyond 10 degrees of freedom: 2.135 at 20, true 2.086).
pub fn t975(df: usize) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    match StudentsT::new(0.0, 1.0, df as f64) {
        Ok(t) if df > 0 => t.inverse_cdf(0.975),
        _ => f64::NAN,
    }
}

/// Mean, sample standard deviation and the 95% t interval of the mean of `v` (≥ 2 values).
pub fn mean_std_ci(v: &[f64]) -> Option<(f64, f64, (f64, f64))> {
    let m = mean(v)?;
    if v.len() < 2 {
        return None;
    }
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
    let half = t975(v.len() - 1) * sd / (v.len() as f64).sqrt();
    Some((m, sd, (m - half, m + half)))
}

/// The accuracy of one task × method over its seeds, with its interval.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    /// Mean over seeds of the shown accuracy.
    pub accuracy: f64,
    pub seeds: usize,
    /// Test images each accuracy is measured on.
    pub test_images: Option<usize>,
    /// Standard deviation over seeds (several seeds).
    pub std_over_seeds: Option<f64>,
    /// 95% interval: Wilson over the test images for one seed, Student's t over seeds otherwise.
    pub ci95: Option<(f64, f64)>,
}

impl Scored {
    pub fn new(values: &[f64], test_images: Option<usize>) -> Option<Self> {
        let accuracy = mean(values)?;
        let (std_over_seeds, ci95) = match mean_std_ci(values) {
            Some((_, sd, ci)) => (Some(sd), Some(ci)),
            None => (None, test_images.filter(|&n| n > 0).map(|n| wilson95(accuracy, n))),
        };
        Some(Self { accuracy, seeds: values.len(), test_images, std_over_seeds, ci95 })
    }

    /// `62.0 ±3.1`: percent, and the half-width of the interval.
    pub fn cell(&self) -> String {
        match self.ci95 {
            Some((lo, hi)) => format!("{:.1} ±{:.1}", 100.0 * self.accuracy, 50.0 * (hi - lo)),
            None => format!("{:.1}", 100.0 * self.accuracy),
        }
    }
}

pub fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) }
}

/// The 95% interval of the mean over tasks: over seeds (Student's t of the seeds' task means,
/// seeds with every task), or for one seed the normal interval of a mean of independent binomials.
pub fn mean_interval(sc: &[Option<&Scored>], per_seed: &[Vec<Option<f64>>], seeds: usize) -> Option<(f64, f64)> {
    if seeds > 1 {
        let means: Vec<f64> =
            (0..seeds).filter_map(|k| per_seed.iter().map(|v| v.get(k).copied().flatten()).collect::<Option<Vec<f64>>>()).filter_map(|v| mean(&v)).collect();
        return mean_std_ci(&means).map(|(_, _, ci)| ci);
    }
    let parts: Vec<(f64, usize)> = sc.iter().flatten().map(|s| s.test_images.map(|n| (s.accuracy, n))).collect::<Option<Vec<_>>>()?;
    let t = parts.len() as f64;
    let m = parts.iter().map(|(p, _)| p).sum::<f64>() / t;
    let se = parts.iter().map(|(p, n)| p * (1.0 - p) / *n as f64).sum::<f64>().sqrt() / t;
    (t > 0.0).then_some((m - 1.959964 * se, m + 1.959964 * se))
}

#[cfg(test)]
mod tests {
    #[test]
    fn t975_matches_tabulated_values() {
        // two-sided 95% critical values of Student's t (standard tables)
        for (df, want) in [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (12, 2.179), (20, 2.086), (30, 2.042), (60, 2.000), (99, 1.984), (1000, 1.962)] {
            assert!((super::t975(df) - want).abs() < 1e-3, "df {df}: {} vs {want}", super::t975(df));
        }
        assert!(super::t975(0).is_nan());
    }
}
