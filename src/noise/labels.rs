//! Label noise: which labels of a step's batch are replaced, and by which class.
//! The run draws them from the run's seed and the global step, so that every
//! engine trains on the same labels and a resumed run redraws exactly those of
//! an uninterrupted one.

use crate::rng::{Purpose, stream};
use rand::RngExt;

/// A step's replaced labels: for each batch position, whether its label is replaced and
/// by which class (its own label stays where not replaced).
#[derive(Debug, Clone, PartialEq)]
pub struct StepLabels {
    /// Whether each position's label is replaced.
    pub replaced: Vec<bool>,
    /// The class each position takes where replaced (0 elsewhere).
    pub classes: Vec<i64>,
}

/// The labels of global step `step`'s batch of `n` images under label noise of
/// probability `p` over `classes` classes: each replaced with probability `p` by a class
/// drawn uniformly from all of them (the true one included, as Blanc et al. and Damian
/// et al. do).
pub fn step_labels(seed: u64, step: u64, n: usize, classes: usize, p: f64) -> StepLabels {
    let mut rng = stream(seed, Purpose::LabelNoise, step);
    let mut out = StepLabels {
        replaced: Vec::with_capacity(n),
        classes: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let replace = rng.random::<f64>() < p;
        let class = rng.random_range(0..classes.max(1)) as i64;
        out.replaced.push(replace);
        out.classes.push(if replace { class } else { 0 });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_replaced_at_the_rate_asked_and_redrawn_every_step() {
        let (n, p, classes) = (100_000, 0.2, 10);
        let a = step_labels(3, 7, n, classes, p);
        let replaced = a.replaced.iter().filter(|r| **r).count() as f64 / n as f64;
        // Binomial: std sqrt(p(1-p)/n) = 0.0013.
        assert!((replaced - p).abs() < 0.006, "{replaced}");
        let mut counts = [0usize; 10];
        for (r, c) in a.replaced.iter().zip(&a.classes) {
            if *r {
                counts[*c as usize] += 1;
            }
        }
        let replaced_n = counts.iter().sum::<usize>() as f64;
        assert!(
            counts
                .iter()
                .all(|c| (*c as f64 / replaced_n - 0.1).abs() < 0.01),
            "{counts:?}"
        );
        // A replaced label changes only when the drawn class is another: p (K - 1) / K of
        // the labels change.
        let truth: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
        let changed = a
            .replaced
            .iter()
            .zip(&a.classes)
            .zip(&truth)
            .filter(|((r, c), t)| **r && *c != *t)
            .count() as f64
            / n as f64;
        assert!((changed - p * 0.9).abs() < 0.006, "{changed}");
        // The same step gives the same labels; another step others.
        assert_eq!(a, step_labels(3, 7, n, classes, p));
        assert_ne!(a, step_labels(3, 8, n, classes, p));
        assert_ne!(a, step_labels(4, 7, n, classes, p));
    }
}
