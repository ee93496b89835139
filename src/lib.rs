//! adanoise: training the CNNs of "Effect of Adaptive Noise Injection in
//! Convolutional Neural Network Training" on CIFAR-10 with Burn, following the
//! rules written out in the repository's `docs/method.md`.
//!
//! - [`data`]: CIFAR-10 readers, download, augmentation.
//! - [`models`]: baby-cnn, tiny-cnn, simple-cnn, resnet18.
//! - [`optim`]: SGD, SGD with momentum and Adam with PyTorch semantics.
//! - [`noise`]: noise injection into a Burn model (the scheduler is `adanoise-core`'s).
//! - [`schedule`]: cosine annealing with decaying restarts (a Burn `LrScheduler`).
//! - [`train`]: the training loop, run directories, checkpoints.
//! - [`engine`]: what holds a run's tensors: Burn's backends, or LibTorch.
//! - [`experiments`]: sweeps over grids of runs.
//! - [`report`]: the paper's tables and figures.
//! - [`bench`](mod@bench): training-step throughput.
//! - [`events`]: the reporting interface (progress, notices) the command line renders.
//! - [`tensorboard`]: TensorBoard event files.
//! - [`device`]: which backend runs the tensors.
//! - [`kernels`], [`memory`]: faster CPU kernels, and allocator settings.
//! - [`cli`]: the `adanoise` command.

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod engine;
pub mod events;
pub mod experiments;
pub mod fsio;
pub mod kernels;
pub mod memory;
pub mod models;
pub mod noise;
pub mod optim;
pub mod report;
pub mod rng;
pub mod schedule;
pub mod tensorboard;
pub mod train;
