//! Progress display: an indicatif bar per epoch on a terminal, plain log lines
//! (a few per epoch) when stdout is a file or a pipe.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Progress of one training epoch.
pub struct EpochProgress {
    bar: Option<ProgressBar>,
    label: String,
    steps: u64,
    next_log: u64,
}

impl EpochProgress {
    pub fn new(epoch: u64, epochs: u64, steps: u64, quiet: bool) -> Self {
        let label = format!("epoch {epoch}/{epochs}");
        let bar = (!quiet && std::io::stdout().is_terminal()).then(|| {
            let bar = ProgressBar::new(steps);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar
        });
        Self {
            bar,
            label,
            steps,
            next_log: if quiet { u64::MAX } else { steps.div_ceil(4) },
        }
    }

    /// Reports `step` steps done with the running loss and accuracy, the LR and the speed.
    pub fn update(
        &mut self,
        step: u64,
        loss: f64,
        acc: f64,
        lr: f64,
        images_per_s: f64,
        note: &str,
    ) {
        let msg = format!("loss {loss:.4} acc {acc:.4} lr {lr:.3e} {images_per_s:.0} img/s{note}");
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(msg);
            }
            None if step >= self.next_log && step < self.steps => {
                println!("{} step {step}/{}: {msg}", self.label, self.steps);
                self.next_log += self.steps.div_ceil(4);
            }
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A byte counter for downloads (hidden when stderr is not a terminal).
pub fn bytes_bar(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bytes}/{total_bytes} {bar:30} {bytes_per_sec} ({eta})")
            .expect("valid template"),
    );
    bar
}
