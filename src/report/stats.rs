//! Summary statistics over seeds: mean, sample standard deviation and the 95 %
//! confidence interval of the mean (Student's t), and the same for a paired
//! difference (noisy run minus the no-noise run of the same seed).

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// The two-sided 95 % quantile of Student's t with `df` degrees of freedom.
pub fn t_quantile_95(df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df as f64)
        .expect("df >= 1 gives a valid distribution")
        .inverse_cdf(0.975)
}

/// Mean, sample standard deviation, count and the half-width of the 95 % confidence
/// interval of the mean (`t_{0.975, n-1} s / sqrt(n)`; none for a single value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// The mean.
    pub mean: f64,
    /// The sample standard deviation (0 for one value).
    pub std: f64,
    /// How many values.
    pub n: usize,
    /// Half-width of the 95 % confidence interval of the mean, when `n > 1`.
    pub ci95: Option<f64>,
}

impl Stat {
    /// The statistics of `values` (NaN mean for none).
    pub fn of(values: &[f64]) -> Stat {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let ci95 = (n > 1).then(|| t_quantile_95(n - 1) * std / (n as f64).sqrt());
        Stat { mean, std, n, ci95 }
    }

    /// The interval `[mean - ci95, mean + ci95]`, when there is one.
    pub fn interval(&self) -> Option<(f64, f64)> {
        self.ci95.map(|h| (self.mean - h, self.mean + h))
    }

    /// Whether the interval excludes 0 (the difference is distinguishable from none).
    pub fn excludes_zero(&self) -> bool {
        self.interval().is_some_and(|(lo, hi)| lo > 0.0 || hi < 0.0)
    }
}

/// The paired differences `a[s] - b[s]` over the keys (seeds) present in both.
pub fn paired<K: PartialEq>(a: &[(K, f64)], b: &[(K, f64)]) -> Option<Stat> {
    let diffs: Vec<f64> = a
        .iter()
        .filter_map(|(k, x)| b.iter().find(|(kb, _)| kb == k).map(|(_, y)| x - y))
        .collect();
    (!diffs.is_empty()).then(|| Stat::of(&diffs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Student's t, two-sided 95 %: df 1, 2, 4, 30 (any statistics table).
        for (df, want) in [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042)] {
            assert!((t_quantile_95(df) - want).abs() < 1e-3, "df {df}");
        }
    }

    #[test]
    fn stat_is_mean_sample_std_and_t_interval() {
        let s = Stat::of(&[0.8, 0.9]);
        assert!((s.mean - 0.85).abs() < 1e-12);
        assert!((s.std - 0.5f64.sqrt() * 0.1).abs() < 1e-12);
        assert_eq!(s.n, 2);
        // 12.706 * 0.0707107 / sqrt(2) = 0.635
        assert!((s.ci95.unwrap() - 0.6353).abs() < 1e-3, "{s:?}");
        let one = Stat::of(&[0.7]);
        assert_eq!((one.std, one.ci95), (0.0, None));
    }

    #[test]
    fn paired_difference_by_hand() {
        // Differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01, t(2) = 4.303,
        // half-width 4.303 * 0.01 / sqrt(3) = 0.024843.
        let noisy = [(0u64, 0.62), (1, 0.61), (2, 0.64), (9, 0.5)];
        let base = [(2u64, 0.61), (0, 0.60), (1, 0.60)];
        let d = paired(&noisy, &base).unwrap();
        assert_eq!(d.n, 3);
        assert!((d.mean - 0.02).abs() < 1e-12);
        assert!((d.std - 0.01).abs() < 1e-12);
        assert!((d.ci95.unwrap() - 0.024843).abs() < 1e-5, "{d:?}");
        assert!(!d.excludes_zero());
        assert!(paired(&noisy, &[(5u64, 0.1)]).is_none());
    }
}
