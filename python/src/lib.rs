//! `adanoise._adanoise`: the Python face of `adanoise-core`. The classes here
//! are thin wrappers: every rule, default and error sentence comes from the
//! core crate, so Python decides exactly as the `adanoise` command does.

use adanoise_core::defaults;
use adanoise_core::lr_schedule::CosineRestartsConfig;
use adanoise_core::scheduler::{self, NoiseSchedulerConfig, Observation};
use adanoise_core::{
    AfterStep, NoiseKind, NoisePolicy as NoisePolicyKind, PolicyConfig, WeightNoiseScale,
};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt};

create_exception!(
    _adanoise,
    AdanoiseError,
    PyValueError,
    "A value adanoise cannot work with; the message says what was wrong and what to do."
);

/// The weight-noise reading of a new `NoisePolicy` (and so of a new `AdaptiveNoise`) that
/// names none: `relative` reproduces the study's tables, `absolute` (its text read
/// literally) does not. A recorded state or config that names none means `absolute`,
/// which was the only reading when it was written.
const WEIGHT_NOISE_SCALE_FOR_NEW_RUNS: &str = "relative";

fn error(e: impl std::fmt::Display) -> PyErr {
    AdanoiseError::new_err(e.to_string())
}

/// A keyword value as JSON, so that serde can check names and types against the config.
fn json_value(key: &str, value: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    if value.is_instance_of::<PyBool>() {
        return Err(error(format!("{key} must be a number, not a bool")));
    }
    if value.is_instance_of::<PyInt>() {
        if let Ok(v) = value.extract::<u64>() {
            return Ok(v.into());
        }
        return Ok(value.extract::<f64>()?.into());
    }
    if value.is_instance_of::<PyFloat>() {
        let v: f64 = value.extract()?;
        return serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| error(format!("{key} must be a finite number (got {v})")));
    }
    Err(error(format!(
        "{key} must be a number (got {})",
        value.get_type().name()?
    )))
}

fn scheduler_config(thresholds: Option<&Bound<'_, PyDict>>) -> PyResult<NoiseSchedulerConfig> {
    let mut map = serde_json::Map::new();
    if let Some(kwargs) = thresholds {
        for (key, value) in kwargs.iter() {
            let key: String = key.extract()?;
            let v = json_value(&key, &value)?;
            map.insert(key, v);
        }
    }
    let config: NoiseSchedulerConfig = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| error(format!("the noise scheduler's thresholds are invalid: {e}")))?;
    config.validate().map_err(error)?;
    Ok(config)
}

/// The decision taken after an epoch: the noise of the next epoch.
#[pyclass(module = "adanoise._adanoise", frozen, eq)]
#[derive(Clone, PartialEq)]
struct Decision {
    inner: scheduler::Decision,
}

#[pymethods]
impl Decision {
    /// The epoch just observed; the noise applies to the next one.
    #[getter]
    fn epoch(&self) -> u64 {
        self.inner.epoch
    }
    /// Standard deviation of the next epoch's gradient noise (0: none).
    #[getter]
    fn grad_sigma(&self) -> f64 {
        self.inner.grad_sigma
    }
    /// Standard deviation of the weight noise at the next epoch's start (0: none).
    #[getter]
    fn weight_sigma(&self) -> f64 {
        self.inner.weight_sigma
    }
    /// The flags raised, in the method's order.
    #[getter]
    fn flags(&self) -> Vec<&'static str> {
        self.inner.flags.iter().map(|f| f.into()).collect()
    }
    /// Cooldown epochs left including the one this decision suppresses, or 0.
    #[getter]
    fn cooldown(&self) -> u64 {
        self.inner.cooldown
    }
    /// Whether the next epoch gets any noise.
    #[getter]
    fn injects(&self) -> bool {
        self.inner.injects()
    }
    /// The decision record as a dict (the `decision` of a run's `metrics.jsonl`).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.inner).map_err(error)?;
        py.import("json")?.call_method1("loads", (text,))
    }
    /// The decision a `to_dict()` (or a run's `decision` record) describes.
    #[staticmethod]
    fn from_dict(py: Python<'_>, record: &Bound<'_, PyAny>) -> PyResult<Self> {
        let text: String = py
            .import("json")?
            .call_method1("dumps", (record,))?
            .extract()?;
        let inner: scheduler::Decision = serde_json::from_str(&text)
            .map_err(|e| error(format!("the record is not a decision: {e}")))?;
        let sigmas = [inner.grad_sigma, inner.weight_sigma];
        if sigmas.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(error(format!(
                "the decision's sigmas must be finite numbers >= 0 (got {} and {})",
                inner.grad_sigma, inner.weight_sigma
            )));
        }
        Ok(Self { inner })
    }
    fn __repr__(&self) -> String {
        format!(
            "Decision(epoch={}, grad_sigma={}, weight_sigma={}, flags={:?}, cooldown={})",
            self.inner.epoch,
            self.inner.grad_sigma,
            self.inner.weight_sigma,
            self.flags(),
            self.inner.cooldown
        )
    }
}

/// The adaptive noise scheduler: call `observe` after every epoch.
#[pyclass(module = "adanoise._adanoise")]
struct NoiseScheduler {
    inner: scheduler::NoiseScheduler,
}

#[pymethods]
impl NoiseScheduler {
    #[new]
    #[pyo3(signature = (epochs, **thresholds))]
    fn new(epochs: u64, thresholds: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let config = scheduler_config(thresholds)?;
        let inner = scheduler::NoiseScheduler::new(config, epochs).map_err(error)?;
        Ok(Self { inner })
    }

    /// Feeds epoch `epoch`'s metrics and returns the decision for the next epoch.
    #[pyo3(signature = (*, epoch, train_loss, val_loss, grad_norm, weight_update))]
    fn observe(
        &mut self,
        epoch: u64,
        train_loss: f64,
        val_loss: f64,
        grad_norm: f64,
        weight_update: f64,
    ) -> PyResult<Decision> {
        let inner = self
            .inner
            .observe(Observation {
                epoch,
                train_loss,
                val_loss,
                grad_norm,
                weight_update,
            })
            .map_err(error)?;
        Ok(Decision { inner })
    }

    /// The thresholds in force, keyed as the `[noise_scheduler]` table of a run's config.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(self.inner.config()).map_err(error)?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// `E_max`, the schedule length in epochs.
    #[getter]
    fn epochs(&self) -> u64 {
        self.inner.schedule_epochs()
    }

    /// Epochs observed so far.
    #[getter]
    fn observed(&self) -> u64 {
        self.inner.observed()
    }

    /// The scheduler's whole state, as plain Python values (JSON-serialisable).
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.inner).map_err(error)?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// Restores a state from `state_dict()`, so that a resumed run decides identically.
    fn load_state_dict(&mut self, py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let text: String = py
            .import("json")?
            .call_method1("dumps", (state,))?
            .extract()?;
        let inner: scheduler::NoiseScheduler = serde_json::from_str(&text).map_err(|e| {
            error(format!(
                "the state is not a noise scheduler's state_dict(): {e}"
            ))
        })?;
        inner.validate_state().map_err(error)?;
        if inner.config() != self.inner.config()
            || inner.schedule_epochs() != self.inner.schedule_epochs()
        {
            return Err(error(
                "the state was saved by a scheduler with other thresholds or another E_max: make this one with the same settings",
            ));
        }
        self.inner = inner;
        Ok(())
    }
}

/// Cosine annealing with decaying restarts, as a function of the optimiser step.
#[pyclass(module = "adanoise._adanoise", frozen)]
struct CosineRestarts {
    inner: CosineRestartsConfig,
}

#[pymethods]
impl CosineRestarts {
    #[new]
    #[pyo3(signature = (
        lr_max,
        epochs,
        steps_per_epoch,
        restart_epochs = defaults::RESTART_EPOCHS,
        t_mult = defaults::T_MULT,
        lr_final_max = defaults::LR_FINAL_MAX,
        lr_min = defaults::LR_MIN
    ))]
    fn new(
        lr_max: f64,
        epochs: u64,
        steps_per_epoch: u64,
        restart_epochs: u64,
        t_mult: f64,
        lr_final_max: f64,
        lr_min: f64,
    ) -> PyResult<Self> {
        let inner = CosineRestartsConfig {
            lr_max,
            lr_final_max,
            lr_min,
            schedule_epochs: epochs,
            restart_epochs,
            t_mult,
            steps_per_epoch,
        };
        inner.validate().map_err(error)?;
        Ok(Self { inner })
    }

    /// The learning rate of global optimiser step `step` (from 0); a step past the schedule's
    /// end is refused.
    fn lr_at(&self, step: u64) -> PyResult<f64> {
        if let Some(total) = self.inner.total_steps().filter(|&t| step >= t) {
            return Err(error(format!(
                "step {step} is past the end of the schedule ({total} optimiser steps: epochs x steps_per_epoch): make `epochs` cover the whole run"
            )));
        }
        Ok(self.inner.lr_at(step))
    }

    /// `epochs * steps_per_epoch`.
    #[getter]
    fn total_steps(&self) -> u64 {
        self.inner.total_steps().unwrap_or(u64::MAX)
    }
}

/// Who sets the noise, with its parameters: the adaptive scheduler's decisions, or one of
/// the field's methods (constant or annealed gradient noise, anti-PGD, perturbed gradient
/// descent, Langevin dynamics, label noise, shrink and perturb); and how the adaptive
/// weight noise is scaled (`relative` unless `weight_noise_scale` says otherwise). Every
/// parameter left out takes core's default (`adanoise.defaults()`).
#[pyclass(module = "adanoise._adanoise", frozen)]
struct NoisePolicy {
    inner: PolicyConfig,
}

/// The policy named `name`, or a sentence listing the names (from the policy type's own
/// list, so that a new policy is listed without a second list here).
fn parse_policy(name: &str) -> PyResult<NoisePolicyKind> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|e| {
        let text = e.to_string();
        let names = text
            .split_once("expected one of ")
            .map(|(_, list)| list.replace('`', ""))
            .unwrap_or(text);
        error(format!("policy must be one of {names} (got {name:?})"))
    })
}

#[pymethods]
impl NoisePolicy {
    #[new]
    #[pyo3(signature = (
        policy = "adaptive",
        *,
        noise_sigma = defaults::NOISE_SIGMA,
        anneal_eta = defaults::ANNEAL_ETA,
        anneal_gamma = defaults::ANNEAL_GAMMA,
        weight_noise_scale = WEIGHT_NOISE_SCALE_FOR_NEW_RUNS,
        anti_pgd_sigma = defaults::ANTI_PGD_SIGMA,
        perturb_threshold = defaults::PERTURB_THRESHOLD,
        perturb_interval = None,
        perturb_radius = defaults::PERTURB_RADIUS,
        langevin_temperature = defaults::LANGEVIN_TEMPERATURE,
        label_noise = defaults::LABEL_NOISE,
        shrink_every = None,
        shrink_factor = defaults::SHRINK_FACTOR,
        shrink_sigma = defaults::SHRINK_SIGMA
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        policy: &str,
        noise_sigma: f64,
        anneal_eta: f64,
        anneal_gamma: f64,
        weight_noise_scale: &str,
        anti_pgd_sigma: f64,
        perturb_threshold: f64,
        perturb_interval: Option<&Bound<'_, PyAny>>,
        perturb_radius: f64,
        langevin_temperature: f64,
        label_noise: f64,
        shrink_every: Option<&Bound<'_, PyAny>>,
        shrink_factor: f64,
        shrink_sigma: f64,
    ) -> PyResult<Self> {
        let inner = PolicyConfig {
            policy: parse_policy(policy)?,
            noise_sigma,
            anneal_eta,
            anneal_gamma,
            weight_scale: weight_noise_scale
                .parse::<WeightNoiseScale>()
                .map_err(|_| {
                    error(format!(
                        "weight_noise_scale must be one of absolute, relative, none (got {weight_noise_scale:?})"
                    ))
                })?,
            anti_pgd_sigma,
            perturb_threshold,
            perturb_interval: whole_number("perturb_interval", perturb_interval)?
                .unwrap_or(defaults::PERTURB_INTERVAL),
            perturb_radius,
            langevin_temperature,
            label_noise,
            shrink_every: whole_number("shrink_every", shrink_every)?
                .unwrap_or(defaults::SHRINK_EVERY),
            shrink_factor,
            shrink_sigma,
        };
        inner.validate().map_err(error)?;
        Ok(Self { inner })
    }

    /// "adaptive", "constant", "annealed", "anti-pgd", "perturbed", "langevin",
    /// "label-noise" or "shrink-perturb".
    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy.into()
    }

    /// "relative" (the default), "absolute" or "none".
    #[getter]
    fn weight_noise_scale(&self) -> &'static str {
        self.inner.weight_scale.into()
    }

    /// The gradient noise's sigma at global optimiser step `step`, given the adaptive
    /// decision's (which only the adaptive policy follows).
    fn grad_sigma(&self, decided: f64, step: u64) -> f64 {
        self.inner.grad_sigma(decided, step)
    }

    /// The adaptive weight noise's sigma at an epoch's start, given the adaptive decision's.
    fn weight_sigma(&self, decided: f64) -> f64 {
        self.inner.weight_sigma(decided)
    }

    /// What the policy does to the weights at the start of `epoch` (from 1), given the
    /// adaptive decision's weight sigma: `None`, or `(shrink, sigma, scale)` for
    /// `w <- shrink * w + noise`, the noise of standard deviation `sigma` read as `scale`
    /// ("absolute", "relative") says.
    fn epoch_start(&self, epoch: u64, decided: f64) -> Option<(f64, f64, &'static str)> {
        self.inner
            .epoch_start(epoch, decided)
            .map(|s| (s.shrink, s.sigma, s.scale.into()))
    }

    /// What the policy does to the weights after a step's update at learning rate `lr`, as
    /// a dict: `{"kind": "nothing"}`, `{"kind": "anticorrelated", "sigma": ...}`,
    /// `{"kind": "langevin", "sigma": sqrt(2 lr T)}` or `{"kind": "perturbed", "threshold":
    /// ..., "interval": ..., "radius": ...}`.
    fn after_step<'py>(&self, py: Python<'py>, lr: f64) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        match self.inner.after_step(lr) {
            AfterStep::Nothing => d.set_item("kind", "nothing")?,
            AfterStep::Anticorrelated { sigma } => {
                d.set_item("kind", "anticorrelated")?;
                d.set_item("sigma", sigma)?;
            }
            AfterStep::Langevin { sigma } => {
                d.set_item("kind", "langevin")?;
                d.set_item("sigma", sigma)?;
            }
            AfterStep::Perturbed(rule) => {
                d.set_item("kind", "perturbed")?;
                d.set_item("threshold", rule.threshold)?;
                d.set_item("interval", rule.interval)?;
                d.set_item("radius", rule.radius)?;
            }
        }
        Ok(d)
    }

    /// Perturbed gradient descent's rule: whether global step `step` (from 0), whose
    /// gradient norm before noise was `norm`, perturbs, the last perturbation having been
    /// at step `last` (None: none yet). False for every other policy.
    #[pyo3(signature = (step, norm, last))]
    fn perturb_fires(&self, step: u64, norm: f64, last: Option<u64>) -> bool {
        match self.inner.after_step(0.0) {
            AfterStep::Perturbed(rule) => rule.fires(step, norm, last),
            _ => false,
        }
    }

    /// The probability that a training label is replaced at a step: the label-noise
    /// policy's, None for the others.
    fn label_noise(&self) -> Option<f64> {
        self.inner.label_noise()
    }

    /// A short label for reports, as the command's: "constant 0.01", "anti-pgd sigma
    /// 0.001", ...
    fn label(&self) -> String {
        self.inner.label()
    }

    /// Refuses a policy that would inject nothing with noise `noise` over a run of
    /// `epochs` epochs (or draw a distribution it does not), naming the option.
    fn check_injects(&self, noise: &str, epochs: u64) -> PyResult<()> {
        let kind: NoiseKind = noise.parse().map_err(|_| {
            error(format!(
                "noise must be one of none, gaussian, uniform (got {noise:?})"
            ))
        })?;
        match self.inner.injects_nothing(kind, epochs) {
            Some(why) => Err(error(why)),
            None => Ok(()),
        }
    }

    /// The policy and every parameter, keyed as in a run's config (`policy` is the config's
    /// `noise_policy`).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = &self.inner;
        let d = PyDict::new(py);
        d.set_item("policy", self.policy())?;
        d.set_item("noise_sigma", p.noise_sigma)?;
        d.set_item("anneal_eta", p.anneal_eta)?;
        d.set_item("anneal_gamma", p.anneal_gamma)?;
        d.set_item("weight_noise_scale", self.weight_noise_scale())?;
        d.set_item("anti_pgd_sigma", p.anti_pgd_sigma)?;
        d.set_item("perturb_threshold", p.perturb_threshold)?;
        d.set_item("perturb_interval", p.perturb_interval)?;
        d.set_item("perturb_radius", p.perturb_radius)?;
        d.set_item("langevin_temperature", p.langevin_temperature)?;
        d.set_item("label_noise", p.label_noise)?;
        d.set_item("shrink_every", p.shrink_every)?;
        d.set_item("shrink_factor", p.shrink_factor)?;
        d.set_item("shrink_sigma", p.shrink_sigma)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "NoisePolicy({:?}, weight_noise_scale={:?})",
            self.inner.label(),
            self.weight_noise_scale()
        )
    }
}

/// A keyword that counts something (steps, epochs): a whole number from 0 up, not a bool;
/// None where it was left out.
fn whole_number(key: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(error(format!(
            "{key} must be a whole number (got {})",
            value.repr()?
        )));
    }
    value.extract::<u64>().map(Some).map_err(|_| {
        error(format!(
            "{key} must be a whole number from 0 to 2**64 - 1 (got {})",
            value.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })
}

/// The study's defaults (Tables IV and V), the defaults of every noise policy's
/// parameters and of label smoothing, and the weight-noise reading of new runs, by config
/// key.
#[pyfunction]
fn defaults_dict<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epochs", defaults::EPOCHS)?;
    d.set_item("batch_size", defaults::BATCH_SIZE)?;
    d.set_item("weight_decay", defaults::WEIGHT_DECAY)?;
    d.set_item("lr_final_max", defaults::LR_FINAL_MAX)?;
    d.set_item("lr_min", defaults::LR_MIN)?;
    d.set_item("restart_epochs", defaults::RESTART_EPOCHS)?;
    d.set_item("t_mult", defaults::T_MULT)?;
    d.set_item("weight_noise_scale", WEIGHT_NOISE_SCALE_FOR_NEW_RUNS)?;
    d.set_item("noise_policy", NoisePolicyKind::default().name())?;
    let policy = PolicyConfig::default();
    d.set_item("noise_sigma", policy.noise_sigma)?;
    d.set_item("anneal_eta", policy.anneal_eta)?;
    d.set_item("anneal_gamma", policy.anneal_gamma)?;
    d.set_item("anti_pgd_sigma", policy.anti_pgd_sigma)?;
    d.set_item("perturb_threshold", policy.perturb_threshold)?;
    d.set_item("perturb_interval", policy.perturb_interval)?;
    d.set_item("perturb_radius", policy.perturb_radius)?;
    d.set_item("langevin_temperature", policy.langevin_temperature)?;
    d.set_item("label_noise", policy.label_noise)?;
    d.set_item("shrink_every", policy.shrink_every)?;
    d.set_item("shrink_factor", policy.shrink_factor)?;
    d.set_item("shrink_sigma", policy.shrink_sigma)?;
    d.set_item("label_smoothing", defaults::LABEL_SMOOTHING)?;
    let scheduler = serde_json::to_string(&NoiseSchedulerConfig::default()).map_err(error)?;
    d.set_item(
        "noise_scheduler",
        py.import("json")?.call_method1("loads", (scheduler,))?,
    )?;
    Ok(d)
}

/// `sqrt(3) * sigma`: the bound of uniform noise with standard deviation `sigma`.
#[pyfunction]
fn uniform_bound(sigma: f64) -> f64 {
    adanoise_core::formulas::uniform_bound(sigma)
}

#[pymodule]
fn _adanoise(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("AdanoiseError", m.py().get_type::<AdanoiseError>())?;
    m.add_class::<Decision>()?;
    m.add_class::<NoiseScheduler>()?;
    m.add_class::<CosineRestarts>()?;
    m.add_class::<NoisePolicy>()?;
    m.add_function(wrap_pyfunction!(defaults_dict, m)?)?;
    m.add_function(wrap_pyfunction!(uniform_bound, m)?)?;
    Ok(())
}
