//! Every option of a training run in one serialisable struct. A run's
//! `config.toml` is this struct; a `--config` file may hold any subset of it,
//! and command-line flags override the file.

use crate::data::placement::DataPlacement;
use crate::device::DeviceKind;
use crate::models::ModelKind;
use crate::noise::{NoiseKind, NoiseSchedulerConfig};
use crate::optim::OptimizerKind;
use crate::schedule::CosineRestartsConfig;
use crate::train::Precision;
use adanoise_core::{NoisePolicy, PolicyConfig, WeightNoiseScale};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The resolved configuration of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The architecture.
    pub model: ModelKind,
    /// The name of a model trained by the user's own code (`model = "other"`), as the
    /// Python package records it; reports label its rows with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Initial peak learning rate (`eta_max`).
    pub lr: f64,
    /// Epochs to train.
    #[serde(default = "defaults::epochs")]
    pub epochs: u64,
    /// Length of the LR schedule (`E_max`); defaults to `epochs`.
    #[serde(default)]
    pub schedule_epochs: Option<u64>,
    /// Images per batch.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Seeds initialisation, data order, augmentation and noise.
    #[serde(default)]
    pub seed: u64,
    /// The backend.
    #[serde(default)]
    pub device: DeviceKind,
    /// The data folder (binary release or image folder).
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// Train on the first N images of a fixed seeded shuffle of the training set.
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Training images held out as the validation set, stratified by class (0: the test
    /// set is the validation set, as in the study).
    #[serde(default)]
    pub val_split: usize,
    /// Seed of the validation split: the same held-out images for every run seed.
    #[serde(default = "defaults::split_seed")]
    pub split_seed: u64,
    /// Peak learning rate at the schedule's last restart.
    #[serde(default = "defaults::lr_final_max")]
    pub lr_final_max: f64,
    /// Floor of every cosine cycle.
    #[serde(default = "defaults::lr_min")]
    pub lr_min: f64,
    /// Length of the first cosine cycle, in epochs.
    #[serde(default = "defaults::restart_epochs")]
    pub restart_epochs: u64,
    /// Growth factor of the cycle length.
    #[serde(default = "defaults::t_mult")]
    pub t_mult: f64,
    /// L2 weight decay added to the gradient.
    #[serde(
        default = "defaults::weight_decay",
        deserialize_with = "defaults::decimal_weight_decay"
    )]
    pub weight_decay: f64,
    /// CPU threads for the CPU backend (all cores when absent).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Where batches are assembled: on the host, or on the device from a dataset uploaded once.
    #[serde(default)]
    pub data_placement: DataPlacement,
    /// What the training step computes in: f32, or mixed precision (bf16, f16) with f32
    /// weights.
    #[serde(default)]
    pub precision: Precision,
    /// The distribution of injected noise; `none` still decides and records.
    #[serde(default)]
    pub noise: NoiseKind,
    /// Who sets the noise: the adaptive scheduler, or a constant or annealed baseline.
    #[serde(default)]
    pub noise_policy: NoisePolicy,
    /// Standard deviation of the constant policy's gradient noise.
    #[serde(default = "defaults::noise_sigma")]
    pub noise_sigma: f64,
    /// `eta` of the annealed policy, `sigma_t^2 = eta / (1 + t)^gamma`.
    #[serde(default = "defaults::anneal_eta")]
    pub anneal_eta: f64,
    /// `gamma` of the annealed policy.
    #[serde(default = "defaults::anneal_gamma")]
    pub anneal_gamma: f64,
    /// How weight noise is scaled: sigma times each tensor's root mean square (`relative`,
    /// the default of new runs), sigma per element (`absolute`), or not at all (`none`). A
    /// recorded config that names none was written when `absolute` was the only reading.
    #[serde(default = "defaults::unrecorded_weight_noise_scale")]
    pub weight_noise_scale: WeightNoiseScale,
    /// `anti-pgd`: the standard deviation of each draw, per weight.
    #[serde(default = "defaults::anti_pgd_sigma")]
    pub anti_pgd_sigma: f64,
    /// `perturbed`: the gradient norm at or below which it perturbs.
    #[serde(default = "defaults::perturb_threshold")]
    pub perturb_threshold: f64,
    /// `perturbed`: the fewest optimiser steps between two perturbations.
    #[serde(default = "defaults::perturb_interval")]
    pub perturb_interval: u64,
    /// `perturbed`: the radius of a perturbation of all weights together.
    #[serde(default = "defaults::perturb_radius")]
    pub perturb_radius: f64,
    /// `langevin`: the temperature `T` (noise variance `2 lr_t T` after each step).
    #[serde(default = "defaults::langevin_temperature")]
    pub langevin_temperature: f64,
    /// `label-noise`: the probability that a training label is replaced at a step.
    #[serde(default = "defaults::label_noise")]
    pub label_noise: f64,
    /// `shrink-perturb`: every this many epochs.
    #[serde(default = "defaults::shrink_every")]
    pub shrink_every: u64,
    /// `shrink-perturb`: the factor the weights are multiplied by.
    #[serde(default = "defaults::shrink_factor")]
    pub shrink_factor: f64,
    /// `shrink-perturb`: the standard deviation of the noise then added, per weight.
    #[serde(default = "defaults::shrink_sigma")]
    pub shrink_sigma: f64,
    /// Label smoothing of the training loss, PyTorch's `label_smoothing` (0: none), with
    /// any policy.
    #[serde(default = "defaults::label_smoothing")]
    pub label_smoothing: f64,
    /// Thresholds of the adaptive noise scheduler (Table V).
    #[serde(default)]
    pub noise_scheduler: NoiseSchedulerConfig,
}

/// Serde's defaults for absent keys, all from `adanoise_core::defaults`.
mod defaults {
    use adanoise_core::defaults as paper;
    use std::path::PathBuf;
    pub fn epochs() -> u64 {
        paper::EPOCHS
    }
    pub fn batch_size() -> usize {
        paper::BATCH_SIZE
    }
    pub fn data_dir() -> PathBuf {
        PathBuf::from("data")
    }
    pub fn lr_final_max() -> f64 {
        paper::LR_FINAL_MAX
    }
    pub fn lr_min() -> f64 {
        paper::LR_MIN
    }
    pub fn restart_epochs() -> u64 {
        paper::RESTART_EPOCHS
    }
    pub fn t_mult() -> f64 {
        paper::T_MULT
    }
    pub fn weight_decay() -> f64 {
        paper::WEIGHT_DECAY
    }
    /// Reads a weight decay, giving back the decimal a user wrote where an earlier version
    /// recorded it through f32 (`1e-4` as `0.00009999999747378752`), so that such a run's
    /// config reads as the one it was made from.
    pub fn decimal_weight_decay<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let value = <f64 as serde::Deserialize>::deserialize(d)?;
        let narrow = value as f32;
        Ok(if f64::from(narrow) == value && narrow.is_finite() {
            narrow.to_string().parse().unwrap_or(value)
        } else {
            value
        })
    }
    pub fn unrecorded_weight_noise_scale() -> adanoise_core::WeightNoiseScale {
        adanoise_core::WeightNoiseScale::UNRECORDED
    }
    pub fn split_seed() -> u64 {
        crate::data::split::SPLIT_SEED
    }
    pub fn noise_sigma() -> f64 {
        paper::NOISE_SIGMA
    }
    pub fn anneal_eta() -> f64 {
        paper::ANNEAL_ETA
    }
    pub fn anneal_gamma() -> f64 {
        paper::ANNEAL_GAMMA
    }
    pub fn anti_pgd_sigma() -> f64 {
        paper::ANTI_PGD_SIGMA
    }
    pub fn perturb_threshold() -> f64 {
        paper::PERTURB_THRESHOLD
    }
    pub fn perturb_interval() -> u64 {
        paper::PERTURB_INTERVAL
    }
    pub fn perturb_radius() -> f64 {
        paper::PERTURB_RADIUS
    }
    pub fn langevin_temperature() -> f64 {
        paper::LANGEVIN_TEMPERATURE
    }
    pub fn label_noise() -> f64 {
        paper::LABEL_NOISE
    }
    pub fn shrink_every() -> u64 {
        paper::SHRINK_EVERY
    }
    pub fn shrink_factor() -> f64 {
        paper::SHRINK_FACTOR
    }
    pub fn shrink_sigma() -> f64 {
        paper::SHRINK_SIGMA
    }
    pub fn label_smoothing() -> f64 {
        paper::LABEL_SMOOTHING
    }
}

/// The key of the weight-noise reading, whose default differs between new runs and
/// recorded ones.
pub const WEIGHT_NOISE_SCALE_KEY: &str = "weight_noise_scale";

/// What to tell a user whose run or sweep differs from its directory in the weight-noise
/// reading.
pub const WEIGHT_NOISE_SCALE_HINT: &str = "runs made when `absolute` was the default record `absolute` or name no reading, and new runs default to `relative`: pass --weight-noise-scale absolute (weight_noise_scale = \"absolute\" in a sweep file's [base]) to go on with such a run";

/// The table of a run's `config.toml` that records what data it trained on; not an option.
pub const DATA_FINGERPRINT_KEY: &str = "data_fingerprint";

/// Options that say where or how fast a run executes, not what it computes: a run may be
/// resumed with other values for these.
const LOCATION_KEYS: [&str; 3] = ["data_dir", "threads", "data_placement"];

impl TrainConfig {
    /// Builds a config from a TOML table (a config file with overrides merged in).
    pub fn from_table(mut table: toml::Table) -> Result<Self> {
        table.remove(DATA_FINGERPRINT_KEY);
        let missing: Vec<&str> = ["model", "optimizer", "lr"]
            .into_iter()
            .filter(|k| !table.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            let flags: Vec<String> = missing.iter().map(|k| format!("--{k}")).collect();
            bail!(
                "{} {} required: pass {} or set {} in the --config file",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" },
                flags.join(", "),
                if missing.len() == 1 { "it" } else { "them" }
            );
        }
        check_named_values(&table)?;
        let config: TrainConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let why = e.into_inner().message().trim().to_string();
                if key == "." {
                    anyhow::anyhow!("the training configuration is invalid: {why}")
                } else {
                    anyhow::anyhow!("the training configuration's `{key}` is invalid: {why}")
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Builds the config of a new run from a table: [`TrainConfig::from_table`], with the
    /// weight-noise reading of new runs when the table names none (a recorded config that
    /// names none keeps meaning `absolute`, so only new runs may take this path).
    pub fn for_new_run(mut table: toml::Table) -> Result<Self> {
        table
            .entry(WEIGHT_NOISE_SCALE_KEY)
            .or_insert_with(|| WeightNoiseScale::FOR_NEW_RUNS.name().into());
        Self::from_table(table)
    }

    /// Merges `overrides` into `base`, descending into nested tables (`[noise_scheduler]`).
    pub fn merge_tables(base: &mut toml::Table, overrides: toml::Table) {
        for (key, value) in overrides {
            match (base.get_mut(&key), value) {
                (Some(toml::Value::Table(inner)), toml::Value::Table(over)) => {
                    Self::merge_tables(inner, over)
                }
                (_, value) => {
                    base.insert(key, value);
                }
            }
        }
    }

    /// Reads a TOML config file into a table.
    pub fn read_table(path: &Path) -> Result<toml::Table> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the config file {}", path.display()))?;
        text.parse::<toml::Table>()
            .with_context(|| format!("{} is not valid TOML", path.display()))
    }

    /// The config as TOML (a run's `config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a TrainConfig always serialises")
    }

    /// `E_max`: the schedule length (the run's epoch count unless set on its own).
    pub fn schedule_length(&self) -> u64 {
        self.schedule_epochs.unwrap_or(self.epochs)
    }

    /// What the run's engine is built for.
    pub fn engine_spec(&self) -> crate::engine::EngineSpec {
        crate::engine::EngineSpec {
            model: self.model,
            optimizer: self.optimizer,
            weight_decay: self.weight_decay,
            device: self.device,
            precision: self.precision,
            data_placement: self.data_placement,
            batch_size: self.batch_size,
            seed: self.seed,
            threads: self.threads,
            label_smoothing: self.label_smoothing,
        }
    }

    /// The noise policy with its parameters.
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            policy: self.noise_policy,
            noise_sigma: self.noise_sigma,
            anneal_eta: self.anneal_eta,
            anneal_gamma: self.anneal_gamma,
            weight_scale: self.weight_noise_scale,
            anti_pgd_sigma: self.anti_pgd_sigma,
            perturb_threshold: self.perturb_threshold,
            perturb_interval: self.perturb_interval,
            perturb_radius: self.perturb_radius,
            langevin_temperature: self.langevin_temperature,
            label_noise: self.label_noise,
            shrink_every: self.shrink_every,
            shrink_factor: self.shrink_factor,
            shrink_sigma: self.shrink_sigma,
        }
    }

    /// The LR schedule for a given number of steps per epoch.
    pub fn lr_schedule(&self, steps_per_epoch: u64) -> CosineRestartsConfig {
        CosineRestartsConfig {
            lr_max: self.lr,
            lr_final_max: self.lr_final_max,
            lr_min: self.lr_min,
            schedule_epochs: self.schedule_length(),
            restart_epochs: self.restart_epochs,
            t_mult: self.t_mult,
            steps_per_epoch,
        }
    }

    /// Checks what can be checked before any data is read.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.threads == Some(0) {
            bail!("--threads must be at least 1 (leave it out to use every core)");
        }
        if self.schedule_length() < self.epochs {
            bail!(
                "--schedule-epochs {} is shorter than --epochs {}: the LR schedule must cover the whole run",
                self.schedule_length(),
                self.epochs
            );
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay <= f32::MAX as f64) {
            bail!(
                "weight_decay must be a number from 0 to {:e} (f32's largest, as the weights are f32; got {})",
                f32::MAX,
                self.weight_decay
            );
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "--label-smoothing must be from 0 to below 1, as PyTorch's label_smoothing (got {})",
                self.label_smoothing
            );
        }
        self.lr_schedule(1).validate()?;
        self.noise_scheduler.validate()?;
        self.policy().validate()?;
        Ok(())
    }

    /// The model's name in reports: the study's model, or the user's own.
    pub fn model_label(&self) -> String {
        match (&self.model_name, self.model) {
            (Some(name), ModelKind::Other) => name.clone(),
            _ => self.model.to_string(),
        }
    }

    /// The default run directory name: `<model>-<optimizer>-<noise>-lr<X>-s<seed>`, with the
    /// noise policy after the noise when it is not the adaptive one
    /// (`...-gaussian-constant-lr<X>-s<seed>`) and the weight-noise scale when it is not
    /// the default of new runs (`...-gaussian-weights-absolute-lr<X>-s<seed>`), so that
    /// runs that differ only in these do not share a directory.
    pub fn default_run_name(&self) -> String {
        let policy = match (self.noise_policy, self.weight_noise_scale) {
            (NoisePolicy::Adaptive, WeightNoiseScale::FOR_NEW_RUNS) => String::new(),
            (NoisePolicy::Adaptive, scale) => format!("-weights-{scale}"),
            (other, _) => format!("-{other}"),
        };
        let smoothing = if self.label_smoothing > 0.0 {
            format!("-ls{}", self.label_smoothing)
        } else {
            String::new()
        };
        format!(
            "{}-{}-{}{policy}{smoothing}-lr{}-s{}",
            self.model, self.optimizer, self.noise, self.lr, self.seed
        )
    }

    /// Refuses a noise policy that would inject nothing (a baseline policy with noise
    /// `none`, a zero sigma): such a run would be recorded and reported as a noisy one.
    pub fn check_injects(&self) -> Result<()> {
        match self.policy().injects_nothing(self.noise, self.epochs) {
            Some(why) => bail!(why),
            None => Ok(()),
        }
    }

    /// Whether `key` is a setting this run does not use: a parameter of another policy, or
    /// of any policy (and the weight-noise reading) when the run has no noise.
    fn idle_setting(&self, key: &str) -> bool {
        use NoisePolicy::*;
        let owner = match key {
            "noise_sigma" => Constant,
            "anneal_eta" | "anneal_gamma" => Annealed,
            "weight_noise_scale" => Adaptive,
            "anti_pgd_sigma" => AntiPgd,
            "perturb_threshold" | "perturb_interval" | "perturb_radius" => Perturbed,
            "langevin_temperature" => Langevin,
            "label_noise" => LabelNoise,
            "shrink_every" | "shrink_factor" | "shrink_sigma" => ShrinkPerturb,
            _ => return false,
        };
        self.noise == NoiseKind::None || self.noise_policy != owner
    }

    /// The differences that forbid resuming a run made with `other`, as "key: a -> b" lines.
    /// Settings that change nothing for a run are left out: the parameters of the policies
    /// it does not use (all of them, and the weight-noise reading, for a run without
    /// noise), so that a sweep file that tunes one policy keeps the others' finished runs.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        let a = flatten(toml::Table::try_from(self).expect("serialises"));
        let b = flatten(toml::Table::try_from(other).expect("serialises"));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        let idle = |k: &str| self.idle_setting(k) && other.idle_setting(k);
        keys.into_iter()
            .filter(|k| !LOCATION_KEYS.contains(&k.as_str()))
            .filter(|k| !idle(k))
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k))))
            .collect()
    }
}

/// The names an option that takes one of a list accepts.
fn names<T: clap::ValueEnum>() -> Vec<String> {
    T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
        .collect()
}

/// Refuses an option that takes one of a list of names but holds another type (`noise = 1`),
/// naming the choices: the deserialiser would only say "invalid type: unit variant".
fn check_named_values(table: &toml::Table) -> Result<()> {
    let named: [(&str, Vec<String>); 8] = [
        ("model", names::<ModelKind>()),
        ("optimizer", names::<OptimizerKind>()),
        ("device", names::<DeviceKind>()),
        ("data_placement", names::<DataPlacement>()),
        ("precision", names::<Precision>()),
        ("noise", names::<NoiseKind>()),
        ("noise_policy", names::<NoisePolicy>()),
        ("weight_noise_scale", names::<WeightNoiseScale>()),
    ];
    for (key, choices) in named {
        match table.get(key) {
            Some(toml::Value::String(_)) | None => {}
            Some(other) => bail!(
                "the training configuration's `{key}` must be one of {} as a quoted string (e.g. {key} = \"{}\"); got {other}",
                choices.join(", "),
                choices[0]
            ),
        }
    }
    Ok(())
}

/// `{a = {b = 1}}` -> `{"a.b" = 1}`, so nested options are compared one by one.
fn flatten(table: toml::Table) -> toml::Table {
    let mut out = toml::Table::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                for (k, v) in flatten(inner) {
                    out.insert(format!("{key}.{k}"), v);
                }
            }
            v => {
                out.insert(key, v);
            }
        }
    }
    out
}

fn show(v: Option<&toml::Value>) -> String {
    v.map_or_else(|| "(unset)".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_are_the_papers() {
        let c = TrainConfig::for_new_run(table(
            "model = 'tiny-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.05",
        ))
        .unwrap();
        assert_eq!(c.weight_noise_scale, WeightNoiseScale::Relative);
        // A recorded config without a reading was made when `absolute` was the only one.
        let recorded = TrainConfig::from_table(table(
            "model = 'tiny-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.05\nweight_decay = 0.00009999999747378752",
        ))
        .unwrap();
        assert_eq!(recorded.weight_noise_scale, WeightNoiseScale::Absolute);
        assert_eq!(
            recorded.weight_decay, 1e-4,
            "f32's rounding read back as written"
        );
        assert_eq!(
            recorded.default_run_name(),
            "tiny-cnn-sgd-momentum-none-weights-absolute-lr0.05-s0"
        );
        assert_eq!(c.epochs, 300);
        assert_eq!(c.batch_size, 128);
        assert_eq!(c.restart_epochs, 50);
        assert_eq!(c.lr_final_max, 1e-5);
        assert_eq!(c.weight_decay, 1e-4);
        assert_eq!(c.default_run_name(), "tiny-cnn-sgd-momentum-none-lr0.05-s0");
        let constant = TrainConfig {
            noise: NoiseKind::Gaussian,
            noise_policy: NoisePolicy::Constant,
            ..c.clone()
        };
        assert_eq!(
            constant.default_run_name(),
            "tiny-cnn-sgd-momentum-gaussian-constant-lr0.05-s0"
        );
        // The written config reads back to the same thing.
        let again = TrainConfig::from_table(c.to_toml().parse().unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn a_policy_that_would_inject_nothing_is_refused() {
        let c = |extra: &str| {
            TrainConfig::from_table(table(&format!(
                "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1\n{extra}"
            )))
            .unwrap()
        };
        let err = c("noise_policy = 'constant'\nnoise_sigma = 0.5")
            .check_injects()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--noise gaussian"), "{err}");
        assert!(c("noise_policy = 'annealed'").check_injects().is_err());
        assert!(
            c("noise = 'gaussian'\nnoise_policy = 'constant'\nnoise_sigma = 0")
                .check_injects()
                .is_err()
        );
        assert!(
            c("noise = 'gaussian'\nnoise_policy = 'constant'")
                .check_injects()
                .is_ok()
        );
        assert!(
            c("").check_injects().is_ok(),
            "adaptive with none records only"
        );
    }

    #[test]
    fn sigmas_beyond_f32_are_refused_in_a_readable_form() {
        for (key, value) in [("noise_sigma", "1e39"), ("noise_sigma", "1e300")] {
            let err = format!(
                "{:#}",
                TrainConfig::from_table(table(&format!(
                    "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1\n{key} = {value}"
                )))
                .unwrap_err()
            );
            assert!(err.contains(value), "{err}");
            assert!(err.len() < 200, "{err}");
        }
    }

    #[test]
    fn bad_configs_are_explained() {
        let err = format!(
            "{:#}",
            TrainConfig::from_table(table("model = 'vgg'\noptimizer = 'sgd'\nlr = 0.1"))
                .unwrap_err()
        );
        assert!(err.contains("vgg"), "{err}");
        let err = format!(
            "{:#}",
            TrainConfig::from_table(table("optimizer = 'sgd'\nlr = 0.1")).unwrap_err()
        );
        assert!(err.contains("model"), "{err}");
        let err = format!(
            "{:#}",
            TrainConfig::from_table(table(
                "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1\nlr_min = 1.0"
            ))
            .unwrap_err()
        );
        assert!(err.contains("lr_min"), "{err}");
        assert!(
            TrainConfig::from_table(table(
                "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1\nbogus = 1"
            ))
            .is_err()
        );
    }

    #[test]
    fn differences_ignore_location_only() {
        let a = TrainConfig::from_table(table("model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1"))
            .unwrap();
        let mut b = a.clone();
        b.data_dir = "elsewhere".into();
        b.threads = Some(1);
        assert!(a.differences(&b).is_empty());
        b.lr = 0.2;
        assert_eq!(a.differences(&b), vec!["lr: 0.1 -> 0.2".to_string()]);
        b.lr = a.lr;
        b.noise_scheduler.flag_window = 5;
        assert_eq!(
            a.differences(&b),
            vec!["noise_scheduler.flag_window: 10 -> 5".to_string()]
        );
    }

    #[test]
    fn differences_leave_out_the_settings_a_run_does_not_use() {
        let quiet =
            TrainConfig::for_new_run(table("model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1"))
                .unwrap();
        let mut other = quiet.clone();
        other.perturb_threshold = 3.0;
        other.anti_pgd_sigma = 0.5;
        other.weight_noise_scale = WeightNoiseScale::Absolute;
        assert!(
            quiet.differences(&other).is_empty(),
            "no noise: none is used"
        );
        let anti = TrainConfig {
            noise: NoiseKind::Gaussian,
            noise_policy: NoisePolicy::AntiPgd,
            ..quiet.clone()
        };
        let tuned = TrainConfig {
            anti_pgd_sigma: 0.002,
            perturb_threshold: 9.0,
            ..anti.clone()
        };
        assert_eq!(
            anti.differences(&tuned),
            vec!["anti_pgd_sigma: 0.001 -> 0.002".to_string()]
        );
    }

    #[test]
    fn nested_overrides_merge_key_by_key() {
        let mut base = table(
            "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1\n[noise_scheduler]\nflag_window = 4\nsigma_max = 0.1",
        );
        TrainConfig::merge_tables(
            &mut base,
            table("lr = 0.2\n[noise_scheduler]\nflag_window = 6"),
        );
        let c = TrainConfig::from_table(base).unwrap();
        assert_eq!(c.lr, 0.2);
        assert_eq!(c.noise_scheduler.flag_window, 6);
        assert_eq!(c.noise_scheduler.sigma_max, 0.1);
        assert_eq!(c.noise_scheduler.min_epochs_before_flag, 70);
    }
}
