//! The `adanoise` command line: argument parsing and dispatch to the library.

mod commands;
mod console;
mod sweep;

use crate::data::placement::DataPlacement;
use crate::device::DeviceKind;
use crate::models::ModelKind;
use crate::noise::NoiseKind;
use crate::optim::OptimizerKind;
use crate::train::Precision;
use adanoise_core::defaults::{self, with_default};
use adanoise_core::{NoisePolicy, WeightNoiseScale};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "adanoise",
    version,
    about = "Adaptive noise injection for CNN training on CIFAR-10"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Train a model (or resume an interrupted run).
    Train(Box<TrainArgs>),
    /// List the models with their trainable parameter counts.
    Models {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the learning rate of every step as CSV (step,epoch,lr).
    LrSchedule(LrScheduleArgs),
    /// Replay the noise scheduler on a metrics file and print its decisions as JSONL.
    NoiseReplay(NoiseReplayArgs),
    /// Time training steps and print the median images per second.
    Bench(BenchArgs),
    /// Run a grid of trainings (a sweep file), resumably, several at a time.
    Sweep(SweepArgs),
    /// Tables I-III (and more) from the runs under a directory.
    Report(ReportArgs),
    /// Write a run's figures (figure1, lr, curves; PNG and SVG) into its directory.
    Plot {
        /// A run directory (or a sweep directory: every run in it, plus sweep.png/svg).
        dir: PathBuf,
    },
    /// Manage the CIFAR-10 data.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum DataCommand {
    /// Download, verify and extract CIFAR-10's binary release.
    Download {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Write a small synthetic dataset in the binary format (for trying the pipeline offline).
    Synthetic {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        train: usize,
        #[arg(long, default_value_t = 200)]
        test: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// Options of `train`. Every field that is also a config key overrides the `--config` file.
#[derive(Args, Debug, Serialize, Default)]
pub(crate) struct TrainArgs {
    /// TOML file with any of the options below (flags override it).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Run directory (default: runs/<model>-<optimizer>-<noise>-lr<X>-s<seed>).
    #[arg(long)]
    #[serde(skip)]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in the run directory.
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
    /// Never download the dataset.
    #[arg(long)]
    #[serde(skip)]
    pub offline: bool,
    /// Also write TensorBoard event files into DIR/<run name> (`tensorboard --logdir DIR`).
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    pub tensorboard: Option<PathBuf>,
    /// Steps between two TensorBoard points of the running training loss and the LR [50].
    #[arg(long, value_name = "STEPS", requires = "tensorboard", value_parser = clap::value_parser!(u64).range(1..))]
    #[serde(skip)]
    pub tensorboard_every: Option<u64>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelKind>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerKind>,
    /// Initial peak learning rate.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[arg(long, value_parser = toml_integer::<u64>, help = with_default("Epochs to train", defaults::EPOCHS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u64>,
    /// Length of the LR schedule in epochs (default: --epochs).
    #[arg(long, value_parser = toml_integer::<u64>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_epochs: Option<u64>,
    #[arg(long, value_parser = toml_integer::<usize>, help = with_default("Images per batch", defaults::BATCH_SIZE))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Seeds initialisation, data order, augmentation and noise [default: 0].
    #[arg(long, value_parser = toml_integer::<u64>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
    /// Folder with cifar-10-batches-bin/ or train/<class>/ and test/<class>/ images.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Train on the first N images of a fixed seeded shuffle of the training set.
    #[arg(long, value_parser = toml_integer::<usize>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_subset: Option<usize>,
    /// Hold out N training images (stratified by class) as the validation set the scheduler
    /// and the report read; the test set is then evaluated too [default: 0: the test set
    /// validates, as in the study].
    #[arg(long, value_parser = toml_integer::<usize>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_split: Option<usize>,
    /// Seed of the validation split (the same held-out images for every --seed).
    #[arg(long, value_parser = toml_integer::<u64>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
    #[arg(long, help = with_default("Peak learning rate at the schedule's last restart", defaults::LR_FINAL_MAX))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_final_max: Option<f64>,
    #[arg(long, help = with_default("Floor of every cosine cycle", defaults::LR_MIN))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_min: Option<f64>,
    #[arg(long, value_parser = toml_integer::<u64>, help = with_default("Length of the first cosine cycle, in epochs", defaults::RESTART_EPOCHS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_epochs: Option<u64>,
    #[arg(long, help = with_default("Growth factor of the cycle length", defaults::T_MULT))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t_mult: Option<f64>,
    #[arg(long, help = with_default("L2 weight decay added to the gradient", defaults::WEIGHT_DECAY))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// CPU threads (default: all cores).
    #[arg(long, value_parser = at_least_one)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Where batches are assembled: auto (on the device for GPUs, on the host for the CPU),
    /// host, or device (the dataset is uploaded once; crop, flip, normalisation run there).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_placement: Option<DataPlacement>,
    /// What each step computes in: f32, or mixed precision with f32 weights: bf16, or f16
    /// with dynamic loss scaling (GPU backends; wgpu has no bf16).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Noise distribution: none (decide and record only), gaussian or uniform.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseKind>,
    /// Who sets the noise: the adaptive scheduler, or a method to compare it with: constant
    /// or annealed gradient noise, anti-pgd, perturbed, langevin, label-noise (with --noise
    /// uniform), shrink-perturb; each policy's options below [default: adaptive].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_policy: Option<NoisePolicy>,
    #[arg(long, help = with_default("Gradient-noise sigma of the constant policy", defaults::NOISE_SIGMA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_sigma: Option<f64>,
    #[arg(long, help = with_default("eta of the annealed policy, sigma_t^2 = eta / (1 + t)^gamma", defaults::ANNEAL_ETA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anneal_eta: Option<f64>,
    #[arg(long, help = with_default("gamma of the annealed policy", defaults::ANNEAL_GAMMA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anneal_gamma: Option<f64>,
    #[arg(long, help = with_default("anti-pgd: standard deviation of each draw xi, per weight (w += xi_{n+1} - xi_n after each step)", defaults::ANTI_PGD_SIGMA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_pgd_sigma: Option<f64>,
    #[arg(long, help = with_default("perturbed: gradient norm at or below which the weights are perturbed", defaults::PERTURB_THRESHOLD))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perturb_threshold: Option<f64>,
    #[arg(long, value_parser = toml_integer::<u64>, help = with_default("perturbed: fewest optimiser steps between two perturbations", defaults::PERTURB_INTERVAL))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perturb_interval: Option<u64>,
    #[arg(long, help = with_default("perturbed: radius of a perturbation of all weights together (uniform in the ball with --noise uniform)", defaults::PERTURB_RADIUS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perturb_radius: Option<f64>,
    #[arg(long, help = with_default("langevin: temperature T (noise variance 2 lr T after each step)", defaults::LANGEVIN_TEMPERATURE))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub langevin_temperature: Option<f64>,
    #[arg(long, help = with_default("label-noise: probability that a training label is replaced by a uniformly drawn class at a step", defaults::LABEL_NOISE))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_noise: Option<f64>,
    #[arg(long, value_parser = toml_integer::<u64>, help = with_default("shrink-perturb: every this many epochs", defaults::SHRINK_EVERY))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shrink_every: Option<u64>,
    #[arg(long, help = with_default("shrink-perturb: factor lambda the weights are multiplied by", defaults::SHRINK_FACTOR))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shrink_factor: Option<f64>,
    #[arg(long, help = with_default("shrink-perturb: standard deviation of the noise then added, per weight", defaults::SHRINK_SIGMA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shrink_sigma: Option<f64>,
    #[arg(long, help = with_default("Label smoothing of the training loss, as PyTorch's label_smoothing (with any policy)", defaults::LABEL_SMOOTHING))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_smoothing: Option<f64>,
    /// How weight noise is scaled: sigma times each tensor's root mean square (relative,
    /// which reproduces the study's tables), sigma per element (absolute, the study's text
    /// read literally), or no weight noise (none) [default: relative; a resumed run keeps
    /// its own, and one that names none is absolute].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_noise_scale: Option<WeightNoiseScale>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "NoiseArgs::is_empty")]
    pub noise_scheduler: NoiseArgs,
}

/// Parses an integer option of a run's config. TOML holds integers up to 2^63 - 1, so a
/// larger one is refused here, where clap names the option, rather than by the TOML writer.
/// Parses a count that must be at least 1 (threads, workers, steps), within TOML's range.
fn at_least_one(text: &str) -> Result<usize, String> {
    match toml_integer::<usize>(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// Parses a standard deviation: a finite number from 0 to f32's largest (noise is drawn in
/// f32).
fn noise_sigma(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("not a number ({e})"))?;
    if value.is_finite() && (0.0..=f32::MAX as f64).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be a number from 0 to {:e}", f32::MAX))
    }
}

fn toml_integer<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    let value: u64 = text
        .parse()
        .map_err(|e| format!("not a whole number from 0 to {} ({e})", i64::MAX))?;
    if value > i64::MAX as u64 {
        return Err(format!("out of range: it must be at most {}", i64::MAX));
    }
    T::try_from(value).map_err(|_| format!("out of range on this machine: {value}"))
}

/// Thresholds of the noise scheduler (defaults: the study's Table V).
#[derive(Args, Debug, Serialize, Default, Clone)]
pub(crate) struct NoiseArgs {
    #[arg(long, value_parser = toml_integer::<u64>, help = with_default("Epochs before the flag checks start", defaults::MIN_EPOCHS_BEFORE_FLAG))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_epochs_before_flag: Option<u64>,
    #[arg(long, value_parser = toml_integer::<u64>, help = with_default("Window, in epochs, of the trend checks", defaults::FLAG_WINDOW))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_window: Option<u64>,
    #[arg(long, help = with_default("Minimum relative val-loss improvement over the window", defaults::VAL_PLATEAU_DELTA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_plateau_delta: Option<f64>,
    #[arg(long, value_parser = toml_integer::<u64>, help = with_default("Epochs of rising val loss (train loss not rising) for the overfit flag", defaults::OVERFIT_EPOCHS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overfit_epochs: Option<u64>,
    #[arg(long, help = with_default("Minimum relative grad-norm improvement over the window", defaults::GRAD_PLATEAU))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_plateau: Option<f64>,
    #[arg(long, help = with_default("Threshold on the mean relative weight update over the window", defaults::LOW_WEIGHT_UPDATE))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_weight_update: Option<f64>,
    #[arg(long, help = with_default("Smallest noise standard deviation", defaults::SIGMA_MIN))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_min: Option<f64>,
    #[arg(long, help = with_default("Largest noise standard deviation", defaults::SIGMA_MAX))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    #[arg(long, value_parser = toml_integer::<u64>, help = with_default("Consecutive noisy decisions that trigger a cooldown", defaults::CONSECUTIVE_TRIGGER))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_trigger: Option<u64>,
    #[arg(long, help = with_default("Shortest cooldown, in epochs", defaults::COOLDOWN_MIN))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_min: Option<f64>,
    #[arg(long, help = with_default("Longest cooldown, in epochs", defaults::COOLDOWN_MAX))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_max: Option<f64>,
}

impl NoiseArgs {
    pub fn is_empty(&self) -> bool {
        toml::Table::try_from(self)
            .map(|t| t.is_empty())
            .unwrap_or(true)
    }
}

#[derive(Args, Debug)]
pub(crate) struct NoiseReplayArgs {
    /// A metrics.jsonl (a run's own, or any JSONL with epoch, train_loss, val_loss, grad_norm, weight_update).
    pub metrics: PathBuf,
    /// E_max of the noise damping [the --config run's schedule length, else 300 as in the paper].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Start from this TOML file's [noise_scheduler] table (a run's config.toml works).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub thresholds: NoiseArgs,
}

#[derive(Args, Debug)]
pub(crate) struct SweepArgs {
    /// The sweep file: [base] training options and [grid] lists of values.
    pub file: PathBuf,
    /// Cells run at once (each gets a share of the CPU threads).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub workers: usize,
    /// Only the cells with this value (KEY=VALUE, repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub only: Vec<String>,
    /// Override a base option (KEY=VALUE, dotted keys for [noise_scheduler], repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print every cell with its state and final val accuracy, and run nothing.
    #[arg(long)]
    pub list: bool,
    /// The sweep's output directory [the file's `out`, else sweeps/<file name>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Points every cell at this data folder (as `--set data_dir=DIR`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Trains every cell on this backend (as `--set device=DEVICE`).
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    /// Threads per cell [cores / workers].
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Run only the cell with this index (of the cell list pinned in the output directory).
    #[arg(long)]
    pub cell: Option<usize>,
    /// With --cell: run the pinned cell even if the sweep file now defines another one at
    /// that index (job arrays submitted before an edit of the file).
    #[arg(long, requires = "cell")]
    pub pinned: bool,
    /// Submit the cells not done as a Slurm job array instead of running them here.
    #[arg(long)]
    pub slurm: bool,
    /// Slurm partition.
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// GPUs per array task.
    #[arg(long, requires = "slurm", value_parser = clap::value_parser!(u32).range(1..))]
    pub gpus_per_task: Option<u32>,
    /// CPUs per array task (also the cell's thread count) [1].
    #[arg(long, requires = "slurm", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus_per_task: Option<u32>,
    /// Time limit per task, as Slurm writes it (MINUTES, HH:MM:SS, D-HH:MM:SS, ...); a cell
    /// checkpoints and requeues itself before it.
    #[arg(long, requires = "slurm", value_parser = crate::experiments::slurm::parse_time_limit)]
    pub time: Option<String>,
    /// At most this many tasks at once.
    #[arg(long, requires = "slurm", value_parser = clap::value_parser!(u32).range(1..))]
    pub array_parallelism: Option<u32>,
    /// Extra sbatch option, e.g. --sbatch-arg=--account=lab (repeatable).
    #[arg(long, requires = "slurm", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
    /// Seconds before the time limit at which a cell is told to checkpoint and requeue.
    #[arg(long, requires = "slurm", default_value_t = 120)]
    pub signal_grace: u32,
    /// Write and print the sbatch script without submitting it.
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
    /// Write each cell's TensorBoard event files into DIR/<cell name>.
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
    /// Steps between two TensorBoard points of the running training loss and the LR [50].
    #[arg(long, value_name = "STEPS", requires = "tensorboard", value_parser = clap::value_parser!(u64).range(1..))]
    pub tensorboard_every: Option<u64>,
}

#[derive(Args, Debug)]
pub(crate) struct ReportArgs {
    /// A sweep's output directory (or any directory holding run directories).
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value = "md")]
    pub format: crate::report::Format,
    /// How each row's learning rate is chosen: per-noise (its own best, as in the study)
    /// or shared (the no-noise row's best, for every noise type of that model and optimiser).
    #[arg(long, value_enum, default_value = "per-noise")]
    pub lr_selection: crate::report::tables::LrSelection,
    /// Take the Δ columns against this policy's row of each model and optimiser
    /// (e.g. `adaptive`) instead of the no-noise row.
    #[arg(long, value_name = "POLICY")]
    pub against: Option<String>,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct LrScheduleArgs {
    #[arg(long)]
    pub epochs: u64,
    #[arg(long)]
    pub steps_per_epoch: u64,
    #[arg(long)]
    pub lr_max: f64,
    #[arg(long, default_value_t = defaults::LR_FINAL_MAX)]
    pub lr_final_max: f64,
    #[arg(long, default_value_t = defaults::LR_MIN)]
    pub lr_min: f64,
    #[arg(long, default_value_t = defaults::RESTART_EPOCHS)]
    pub restart_epochs: u64,
    #[arg(long, default_value_t = defaults::T_MULT)]
    pub t_mult: f64,
}

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[arg(long, value_enum)]
    pub model: ModelKind,
    #[arg(long, value_enum, default_value_t = OptimizerKind::SgdMomentum)]
    pub optimizer: OptimizerKind,
    #[arg(long, default_value_t = defaults::BATCH_SIZE, value_parser = at_least_one)]
    pub batch_size: usize,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Also compute the global gradient norm every step, as training does.
    #[arg(long)]
    pub grad_norm: bool,
    /// Add Gaussian gradient noise of this standard deviation every step (implies --grad-norm).
    #[arg(long, value_parser = noise_sigma)]
    pub grad_noise: Option<f64>,
    /// Time plain steps, steps with the gradient norm, and steps with the norm and gradient
    /// noise (--grad-noise, default 0.01), interleaved, and print the overheads.
    #[arg(long)]
    pub noise_overhead: bool,
    /// Assemble each step's batch on the device from an uploaded dataset (crop, flip and
    /// normalisation timed as part of the step) instead of uploading a prepared batch.
    #[arg(long)]
    pub device_data: bool,
    /// Compute each step in f32, or in mixed precision (bf16, or f16 with loss scaling).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Parses the command line, runs it, and prints any error as sentences.
pub fn main() -> ExitCode {
    // Die quietly when a reader closes the pipe (`adanoise lr-schedule ... | head`), as Unix tools do.
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to the default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    crate::memory::keep_freed_buffers();
    let cli = Cli::parse();
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  because: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
