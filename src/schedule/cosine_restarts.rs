//! Cosine annealing with decaying restarts (`docs/method.md`, section 4) as a
//! Burn [`LrScheduler`], stepped once per optimiser step; the formula itself is
//! `adanoise-core`'s.

use adanoise_core::lr_schedule::{CosineRestartsConfig, ScheduleError};
use burn::optim::LearningRate;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

/// A stateful [`LrScheduler`]: each [`LrScheduler::step`] returns the rate of the
/// next optimiser step and advances the global step counter.
#[derive(Debug, Clone)]
pub struct CosineRestarts {
    config: CosineRestartsConfig,
    step: u64,
}

impl CosineRestarts {
    /// A scheduler at step 0; fails when the parameters make the formula meaningless.
    pub fn new(config: CosineRestartsConfig) -> Result<Self, ScheduleError> {
        config.validate()?;
        Ok(Self { config, step: 0 })
    }

    /// The global step the next call to `step()` will use.
    pub fn current_step(&self) -> u64 {
        self.step
    }

    /// Moves to a given global step (used when resuming from a checkpoint).
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    /// The schedule's parameters.
    pub fn config(&self) -> &CosineRestartsConfig {
        &self.config
    }
}

impl LrScheduler for CosineRestarts {
    fn step(&mut self) -> LearningRate {
        let lr = self.config.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_steps_and_resumes() {
        let c = CosineRestartsConfig::paper(1e-2, 300, 7);
        let mut a = CosineRestarts::new(c).unwrap();
        let first: Vec<f64> = (0..20).map(|_| a.step()).collect();
        assert_eq!(first[0], 1e-2);
        let record = a.to_record();
        let mut b = CosineRestarts::new(c).unwrap();
        b.load_record(record);
        assert_eq!(b.step(), c.lr_at(20));
    }
}
