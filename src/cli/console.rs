//! How the command line shows what the library reports: a progress bar per
//! epoch on a terminal, a few log lines per epoch when stdout is a file or a
//! pipe (sweep cells, Slurm tasks), one line per recorded epoch and per noise
//! decision, and a byte counter for downloads.

use crate::events::{CellOutcome, Event, Observer, Progress, RunStart};
use crate::train::metrics::{EpochMetrics, NoiseApplied};
use adanoise_core::NoiseKind;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// The command line's [`Observer`].
pub(crate) struct Console {
    epoch: Option<EpochBar>,
    download: Option<ProgressBar>,
}

impl Console {
    pub(crate) fn new() -> Self {
        Self {
            epoch: None,
            download: None,
        }
    }
}

impl Observer for Console {
    fn on(&mut self, event: &Event) {
        match event {
            Event::Notice(text) => println!("{text}"),
            Event::Warning(text) => eprintln!("warning: {text}"),
            Event::Download { done, total, .. } => {
                let bar = self.download.get_or_insert_with(|| bytes_bar(*total));
                bar.set_position(*done);
                if total.is_some_and(|t| *done >= t) {
                    bar.finish_and_clear();
                }
            }
            Event::RunStarted(start) => run_started(start),
            Event::AlreadyFinished { dir, epochs } => {
                println!(
                    "{} already finished {epochs} epochs; nothing to do",
                    dir.display()
                )
            }
            Event::EpochStarted {
                epoch,
                epochs,
                steps,
                noise,
            } => self.epoch = Some(EpochBar::new(*epoch, *epochs, *steps, noise_note(noise))),
            Event::Progress(progress) => {
                if let Some(bar) = self.epoch.as_mut() {
                    bar.update(progress);
                }
            }
            Event::EpochEnded {
                metrics,
                epochs,
                noise,
            } => {
                self.finish_epoch();
                epoch_ended(metrics, *epochs, *noise);
            }
            Event::Stopped { epoch, step } => {
                self.finish_epoch();
                match step {
                    Some((done, of)) => println!(
                        "stopped in epoch {epoch} after step {done} of {of}; checkpoint written: continue with --resume"
                    ),
                    None => println!(
                        "stopped after epoch {epoch}; checkpoint written: continue with --resume"
                    ),
                }
            }
            Event::CellStarted {
                started,
                total,
                name,
                values,
            } => println!("[{started}/{total}] start {name} ({values})"),
            Event::CellEnded { name, outcome } => cell_ended(name, outcome),
        }
    }
}

impl Console {
    fn finish_epoch(&mut self) {
        if let Some(bar) = self.epoch.take() {
            bar.finish();
        }
    }
}

fn run_started(start: &RunStart) {
    match start.resumed {
        Some((done, Some(step))) => println!(
            "resuming {} in epoch {} after step {step} of {}",
            start.dir.display(),
            done + 1,
            start.steps_per_epoch
        ),
        Some((done, None)) => println!("resuming {} after epoch {done}", start.dir.display()),
        None => {}
    }
    let (train, val, test) = start.images;
    let test = test.map_or(String::new(), |t| format!(" / {t} test"));
    let val_name = if start.images.2.is_some() {
        "validation"
    } else {
        "test"
    };
    println!(
        "training {} ({train} train / {val} {val_name}{test} images, {} steps per epoch)",
        start.what, start.steps_per_epoch
    );
}

fn epoch_ended(m: &EpochMetrics, epochs: u64, noise: NoiseKind) {
    let test = match (m.test_loss, m.test_acc) {
        (Some(loss), Some(acc)) => format!(" | test loss {loss:.4} acc {acc:.4}"),
        _ => String::new(),
    };
    println!(
        "epoch {}/{epochs}{}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4}{test} | grad norm {:.4} update {:.3e} | lr {:.3e} | {:.1}s {:.0} img/s",
        m.epoch,
        noise_note(&m.noise_applied),
        m.train_loss,
        m.train_acc,
        m.val_loss,
        m.val_acc,
        m.grad_norm,
        m.weight_update,
        m.lr,
        m.seconds,
        m.images_per_s
    );
    if let Some(d) = m.decision.as_ref().filter(|d| !d.flags.is_empty()) {
        println!(
            "  noise scheduler after epoch {}: {}",
            m.epoch,
            d.describe(noise)
        );
    }
}

fn cell_ended(name: &str, outcome: &CellOutcome) {
    match outcome {
        CellOutcome::Done { seconds, val_acc } => println!(
            "        done  {name} in {seconds:.0}s: val acc {:.4}",
            val_acc.unwrap_or(f64::NAN)
        ),
        CellOutcome::Interrupted => {
            println!("        stop  {name}: interrupted, checkpoint written")
        }
        CellOutcome::Busy => println!("        skip  {name}: another process is running it"),
        CellOutcome::Failed(error) => println!("        FAIL  {name}: {error}"),
    }
}

/// ` [grad noise 0.0255, weight noise 0.0100]` while noise is in force, else nothing.
fn noise_note(applied: &NoiseApplied) -> String {
    let mut parts = Vec::new();
    if applied.grad_sigma > 0.0 {
        parts.push(format!("grad noise {:.4}", applied.grad_sigma));
    }
    if applied.weight_sigma > 0.0 {
        parts.push(format!("weight noise {:.4}", applied.weight_sigma));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(", "))
    }
}

/// Progress of one training epoch: a bar on a terminal, else a line every quarter epoch.
struct EpochBar {
    bar: Option<ProgressBar>,
    label: String,
    note: String,
    steps: u64,
    next_log: u64,
}

impl EpochBar {
    fn new(epoch: u64, epochs: u64, steps: u64, note: String) -> Self {
        let label = format!("epoch {epoch}/{epochs}");
        let bar = std::io::stdout().is_terminal().then(|| {
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
            note,
            steps,
            next_log: steps.div_ceil(4),
        }
    }

    fn update(&mut self, p: &Progress) {
        let msg = format!(
            "loss {:.4} acc {:.4} lr {:.3e} {:.0} img/s{}",
            p.loss, p.acc, p.lr, p.images_per_s, self.note
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(p.step);
                bar.set_message(msg);
            }
            None if p.step >= self.next_log && p.step < self.steps => {
                println!("{} step {}/{}: {msg}", self.label, p.step, self.steps);
                self.next_log += self.steps.div_ceil(4);
            }
            None => {}
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A byte counter for downloads (hidden when stderr is not a terminal).
fn bytes_bar(total: Option<u64>) -> ProgressBar {
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
