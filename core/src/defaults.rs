//! The study's defaults, in one place. The run configuration, the command line
//! and its help text, the Python package and the documentation all read them
//! from here.
//!
//! | constant | value | unit | source |
//! | --- | ---: | --- | --- |
//! | [`EPOCHS`] | 300 | epochs | study, section II-C |
//! | [`BATCH_SIZE`] | 128 | images | PyTorch_CIFAR10, which the study built on |
//! | [`WEIGHT_DECAY`] | 1e-4 | L2 coefficient | study, section II-C |
//! | [`LR_FINAL_MAX`] | 1e-5 | learning rate | Table IV |
//! | [`LR_MIN`] | 1e-6 | learning rate | Table IV |
//! | [`RESTART_EPOCHS`] | 50 | epochs | Table IV |
//! | [`T_MULT`] | 1 | factor | Table IV (cycles of equal length) |
//! | [`MIN_EPOCHS_BEFORE_FLAG`] | 70 | epochs | Table V |
//! | [`FLAG_WINDOW`] | 10 | epochs | Table V |
//! | [`VAL_PLATEAU_DELTA`] | 1e-4 | relative improvement | Table V |
//! | [`OVERFIT_EPOCHS`] | 3 | epochs | Table V |
//! | [`GRAD_PLATEAU`] | 0.025 | relative improvement | Table V |
//! | [`LOW_WEIGHT_UPDATE`] | 5e-4 | relative change per epoch | Table V |
//! | [`SIGMA_MIN`] | 0.01 | standard deviation | Table V |
//! | [`SIGMA_MAX`] | 0.05 | standard deviation | Table V |
//! | [`CONSECUTIVE_TRIGGER`] | 10 | decisions | Table V |
//! | [`COOLDOWN_MIN`] | 3 | epochs | Table V |
//! | [`COOLDOWN_MAX`] | 10 | epochs | Table V |
//! | [`NOISE_SIGMA`] | 0.01 | standard deviation | constant policy (beyond the study) |
//! | [`ANNEAL_ETA`] | 0.01 | variance scale | Neelakantan et al. 2015 |
//! | [`ANNEAL_GAMMA`] | 0.55 | decay exponent | Neelakantan et al. 2015 |
//! | [`ANTI_PGD_SIGMA`] | 1e-3 | standard deviation per weight | anti-pgd (beyond the study): a tenth of Table V's smallest sigma, since it stays in the weights |
//! | [`PERTURB_THRESHOLD`] | 1 | gradient L2 norm | perturbed (beyond the study): about a third of a small CNN's norm on CIFAR-10 |
//! | [`PERTURB_INTERVAL`] | 400 | optimiser steps | perturbed: about one CIFAR-10 epoch at batch 128 |
//! | [`PERTURB_RADIUS`] | 1 | L2 norm over all weights | perturbed |
//! | [`LANGEVIN_TEMPERATURE`] | 2e-5 | temperature | langevin: 1 / 50,000, the Bayesian posterior of a mean loss over CIFAR-10's training set |
//! | [`LABEL_NOISE`] | 0.1 | probability | label-noise (beyond the study) |
//! | [`SHRINK_EVERY`] | 50 | epochs | shrink-perturb: Table IV's first cosine cycle |
//! | [`SHRINK_FACTOR`] | 0.4 | factor | shrink-perturb: Ash and Adams 2020 |
//! | [`SHRINK_SIGMA`] | 1e-3 | standard deviation per weight | shrink-perturb (beyond the study) |

/// Epochs to train.
pub const EPOCHS: u64 = 300;
/// Images per batch.
pub const BATCH_SIZE: usize = 128;
/// L2 weight decay added to the gradient.
pub const WEIGHT_DECAY: f64 = 1e-4;
/// Peak learning rate reached at the schedule's last restart (`eta_final_max`).
pub const LR_FINAL_MAX: f64 = 1e-5;
/// Floor of every cosine cycle (`eta_min`).
pub const LR_MIN: f64 = 1e-6;
/// Length of the first cosine cycle in epochs (`E_restart`).
pub const RESTART_EPOCHS: u64 = 50;
/// Growth factor of the cycle length (`T_mult`).
pub const T_MULT: f64 = 1.0;

/// Epochs before the scheduler's checks start (`MinEpochs_beforeflag`).
pub const MIN_EPOCHS_BEFORE_FLAG: u64 = 70;
/// Window of the trend checks in epochs (`W`).
pub const FLAG_WINDOW: u64 = 10;
/// Smallest relative val-loss improvement over the window that is not a plateau.
pub const VAL_PLATEAU_DELTA: f64 = 1e-4;
/// Epochs of rising val loss (train loss not rising) for the overfit flag.
pub const OVERFIT_EPOCHS: u64 = 3;
/// Smallest relative grad-norm improvement over the window that is not a plateau.
pub const GRAD_PLATEAU: f64 = 0.025;
/// Mean relative weight update per epoch below which the weights barely move.
pub const LOW_WEIGHT_UPDATE: f64 = 5e-4;
/// Smallest noise standard deviation.
pub const SIGMA_MIN: f64 = 0.01;
/// Largest noise standard deviation.
pub const SIGMA_MAX: f64 = 0.05;
/// Consecutive noisy decisions that trigger a cooldown.
pub const CONSECUTIVE_TRIGGER: u64 = 10;
/// Shortest cooldown in epochs.
pub const COOLDOWN_MIN: f64 = 3.0;
/// Longest cooldown in epochs.
pub const COOLDOWN_MAX: f64 = 10.0;

/// Gradient-noise standard deviation of the constant policy.
pub const NOISE_SIGMA: f64 = 0.01;
/// `eta` of the annealed policy, `sigma_t^2 = eta / (1 + t)^gamma`.
pub const ANNEAL_ETA: f64 = 0.01;
/// `gamma` of the annealed policy.
pub const ANNEAL_GAMMA: f64 = 0.55;

/// Anti-PGD's standard deviation of each draw, per weight.
pub const ANTI_PGD_SIGMA: f64 = 1e-3;
/// Perturbed gradient descent's gradient-norm threshold.
pub const PERTURB_THRESHOLD: f64 = 1.0;
/// Perturbed gradient descent's fewest steps between two perturbations.
pub const PERTURB_INTERVAL: u64 = 400;
/// Perturbed gradient descent's radius, over all weights together.
pub const PERTURB_RADIUS: f64 = 1.0;
/// Langevin dynamics' temperature.
pub const LANGEVIN_TEMPERATURE: f64 = 2e-5;
/// Label noise's probability of replacing a label.
pub const LABEL_NOISE: f64 = 0.1;
/// Shrink and perturb's period, in epochs.
pub const SHRINK_EVERY: u64 = 50;
/// Shrink and perturb's factor on the weights.
pub const SHRINK_FACTOR: f64 = 0.4;
/// Shrink and perturb's noise standard deviation, per weight.
pub const SHRINK_SIGMA: f64 = 1e-3;
/// Label smoothing (none: PyTorch's default).
pub const LABEL_SMOOTHING: f64 = 0.0;

/// A help line with its default appended, as command lines show it: `text [default]`.
pub fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}
