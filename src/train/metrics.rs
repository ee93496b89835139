//! What a run records: one [`EpochMetrics`] line per epoch in `metrics.jsonl`
//! and a [`Summary`] of the final and best epochs in `summary.json`.

use crate::noise::Decision;
use serde::{Deserialize, Serialize};

/// The measurements of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: u64,
    /// Mean cross-entropy over the epoch's training images as trained (augmented), against
    /// their true labels and without smoothing, whatever loss the policy trained on.
    pub train_loss: f64,
    /// Training accuracy over the same batches.
    pub train_acc: f64,
    /// Cross-entropy over the whole validation set after the epoch, in evaluation mode.
    pub val_loss: f64,
    /// Accuracy over the validation set.
    pub val_acc: f64,
    /// Cross-entropy over the test set, when a validation split is held out (otherwise
    /// the test set is the validation set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    /// Accuracy over the test set, when a validation split is held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc: Option<f64>,
    /// Mean over the epoch's steps of the global L2 norm of the loss gradient.
    pub grad_norm: f64,
    /// `||w_e - w_{e-1}|| / ||w_{e-1}||` over all trainable parameters.
    pub weight_update: f64,
    /// Learning rate of the epoch's last optimiser step.
    pub lr: f64,
    /// Global optimiser steps taken by the end of the epoch.
    pub steps: u64,
    /// Wall time of the epoch (training and evaluation).
    pub seconds: f64,
    /// Training images per second (training part only).
    pub images_per_s: f64,
    /// What was injected during this epoch (`none` when no noise was in force).
    #[serde(default)]
    pub noise_applied: NoiseApplied,
    /// f16 only: steps whose update was skipped because their gradients were not finite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
    /// f16 only: the dynamic loss scale at the epoch's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// The noise scheduler's decision after this epoch, for the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// The noise actually put into an epoch (zero for a `none` run, whatever was decided).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NoiseApplied {
    /// Standard deviation of the gradient noise added at every step (0: none); for a
    /// policy whose sigma changes from step to step, the epoch's first step's.
    pub grad_sigma: f64,
    /// The last step's gradient-noise sigma, for a policy whose sigma changes from step to
    /// step (the annealed one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_sigma_end: Option<f64>,
    /// Standard deviation of the weight noise added at the epoch's start (0: none); under
    /// the `relative` scale, the factor of each tensor's root mean square.
    pub weight_sigma: f64,
    /// How `weight_sigma` was applied, when weight noise was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_scale: Option<adanoise_core::WeightNoiseScale>,
    /// Shrink and perturb: the factor the weights were multiplied by at the epoch's start,
    /// before `weight_sigma`'s noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrink: Option<f64>,
    /// Weight noise added after every step: anti-PGD's `sigma` of each draw, or Langevin
    /// dynamics' `sqrt(2 lr T)` at the epoch's first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight_sigma: Option<f64>,
    /// Langevin dynamics' `sqrt(2 lr T)` at the epoch's last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight_sigma_end: Option<f64>,
    /// Perturbed gradient descent: the global steps (from 0) after which it perturbed the
    /// weights, in this epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perturbed_steps: Option<Vec<u64>>,
    /// Label noise: the probability that a training label was replaced at each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_noise: Option<f64>,
}

impl NoiseApplied {
    /// Whether the epoch received any noise.
    pub fn any(&self) -> bool {
        self.grad_noise() || self.weight_noise() || self.label_noise.is_some()
    }

    /// Whether the gradients received noise.
    pub fn grad_noise(&self) -> bool {
        self.grad_sigma > 0.0
    }

    /// Whether the weights received noise (or were shrunk) at the epoch's start, after its
    /// steps, or in a perturbation.
    pub fn weight_noise(&self) -> bool {
        self.weight_sigma > 0.0
            || self.shrink.is_some()
            || self.step_weight_sigma.is_some_and(|s| s > 0.0)
            || self.perturbed_steps.as_ref().is_some_and(|s| !s.is_empty())
    }
}

/// Where a run stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display, strum::IntoStaticStr,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum RunStatus {
    /// Training, or interrupted and resumable.
    Running,
    /// All its epochs are recorded.
    Finished,
    /// The loss became NaN or infinite; the run stopped.
    Diverged,
}

impl RunStatus {
    /// `Finished` once all `epochs` are recorded, `Running` before.
    pub fn of_progress(done: u64, epochs: u64) -> Self {
        if done >= epochs {
            Self::Finished
        } else {
            Self::Running
        }
    }
}

/// `summary.json`: the state of the run and its final and best epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Where the run stands.
    pub status: RunStatus,
    /// Epochs recorded.
    pub epochs_done: u64,
    /// Epochs the run trains.
    pub epochs: u64,
    /// The last recorded epoch.
    pub final_epoch: Option<EpochMetrics>,
    /// The epoch with the highest validation accuracy (the earliest on a tie).
    pub best_epoch: Option<EpochMetrics>,
    /// Why the run stopped before its end: a divergence, or an error after which `--resume`
    /// continues (a checkpoint that could not be written).
    pub message: Option<String>,
}

impl Summary {
    /// The summary of the recorded epochs `history` of a run of `epochs` epochs.
    pub fn from_history(
        history: &[EpochMetrics],
        epochs: u64,
        status: RunStatus,
        message: Option<String>,
    ) -> Self {
        let best = history
            .iter()
            .fold(None::<&EpochMetrics>, |best, m| match best {
                Some(b) if b.val_acc >= m.val_acc => Some(b),
                _ => Some(m),
            })
            .cloned();
        Summary {
            status,
            epochs_done: history.len() as u64,
            epochs,
            final_epoch: history.last().cloned(),
            best_epoch: best,
            message,
        }
    }
}
