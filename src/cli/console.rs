//! How the command line shows what the library reports: a progress bar per
//! epoch on a terminal, a few log lines per epoch when stdout is a file or a
//! pipe (sweep cells, Slurm tasks), one line per recorded epoch and per noise
//! decision, and a byte counter for downloads.

use crate::events::{CellOutcome, Event, Observer, Progress, RunStart, SweepProgress};
use crate::train::metrics::{EpochMetrics, NoiseApplied};
use adanoise_core::{NoiseKind, PolicyConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// The command line's [`Observer`].
pub(crate) struct Console {
    epoch: Option<EpochBar>,
    download: Option<ProgressBar>,
    run: Option<RunClock>,
}

impl Console {
    pub(crate) fn new() -> Self {
        Self {
            epoch: None,
            download: None,
            run: None,
        }
    }
}

/// The whole run's time: what it has taken so far (earlier processes included) and an
/// estimate of what is left, from this process's pace (evaluation included).
struct RunClock {
    started: Instant,
    earlier_seconds: f64,
    first_step: u64,
    total_steps: u64,
}

impl RunClock {
    fn new(start: &RunStart) -> Self {
        let (done, step) = start.resumed.unwrap_or((0, None));
        Self {
            started: Instant::now(),
            earlier_seconds: start.earlier_seconds,
            first_step: done * start.steps_per_epoch + step.unwrap_or(0),
            total_steps: start.epochs * start.steps_per_epoch,
        }
    }

    /// `run 1h02m, about 2h13m left` at global step `step`.
    fn describe(&self, step: u64) -> String {
        let here = self.started.elapsed().as_secs_f64();
        let elapsed = duration(self.earlier_seconds + here);
        let done_here = step.saturating_sub(self.first_step);
        if done_here == 0 {
            return format!("run {elapsed}");
        }
        let left = self.total_steps.saturating_sub(step) as f64 * here / done_here as f64;
        format!("run {elapsed}, about {} left", duration(left))
    }
}

/// `45s`, `12m05s`, `2h13m`, `3d04h`.
pub(crate) fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
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
            Event::RunStarted(start) => {
                self.run = Some(RunClock::new(start));
                run_started(start)
            }
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
                let clock = self.run.as_ref().map(|c| c.describe(progress.global_step));
                if let Some(bar) = self.epoch.as_mut() {
                    bar.update(progress, clock.as_deref().unwrap_or_default());
                }
            }
            Event::EpochEnded {
                metrics,
                epochs,
                noise,
                policy,
            } => {
                self.finish_epoch();
                let clock = self.run.as_ref().map(|c| c.describe(metrics.steps));
                epoch_ended(metrics, *epochs, *noise, policy, clock.as_deref());
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
            Event::CellEnded {
                name,
                outcome,
                sweep,
            } => cell_ended(name, outcome, sweep),
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

fn epoch_ended(
    m: &EpochMetrics,
    epochs: u64,
    noise: NoiseKind,
    policy: &PolicyConfig,
    clock: Option<&str>,
) {
    let test = match (m.test_loss, m.test_acc) {
        (Some(loss), Some(acc)) => format!(" | test loss {loss:.4} acc {acc:.4}"),
        _ => String::new(),
    };
    println!(
        "epoch {}/{epochs}{}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4}{test} | grad norm {:.4} update {:.3e} | lr {:.3e} | {:.1}s {:.0} img/s{}",
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
        m.images_per_s,
        clock.map_or(String::new(), |c| format!(" | {c}"))
    );
    if let Some(d) = m.decision.as_ref().filter(|d| !d.flags.is_empty()) {
        println!(
            "  noise scheduler after epoch {}: {}",
            m.epoch,
            d.describe(noise, policy)
        );
    }
}

fn cell_ended(name: &str, outcome: &CellOutcome, sweep: &SweepProgress) {
    let left = sweep
        .left_s
        .map_or(String::new(), |s| format!(", about {} left", duration(s)));
    let stand = format!(
        "  [sweep: {}/{} cells done, {}{left}]",
        sweep.done,
        sweep.total,
        duration(sweep.elapsed_s)
    );
    cell_outcome(name, outcome);
    println!("{stand}");
}

fn cell_outcome(name: &str, outcome: &CellOutcome) {
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
    use adanoise_core::formulas::compact;
    let mut parts = Vec::new();
    if applied.grad_sigma > 0.0 {
        parts.push(format!("grad noise {:.4}", applied.grad_sigma));
    }
    if let Some(factor) = applied.shrink {
        parts.push(format!("weights x{}", compact(factor)));
    }
    if applied.weight_sigma > 0.0 {
        let relative = applied.weight_scale == Some(adanoise_core::WeightNoiseScale::Relative);
        let unit = if relative { " x rms" } else { "" };
        parts.push(format!("weight noise {:.4}{unit}", applied.weight_sigma));
    }
    if let Some(sigma) = applied.step_weight_sigma {
        parts.push(format!("weight noise {} per step", compact(sigma)));
    }
    if let Some(steps) = applied.perturbed_steps.as_ref().filter(|s| !s.is_empty()) {
        parts.push(format!("{} perturbation(s)", steps.len()));
    }
    if let Some(p) = applied.label_noise {
        parts.push(format!("label noise {}", compact(p)));
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

    fn update(&mut self, p: &Progress, clock: &str) {
        let msg = format!(
            "loss {:.4} acc {:.4} lr {:.3e} {:.0} img/s{} | {clock}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(44.6), "45s");
        assert_eq!(duration(725.0), "12m05s");
        assert_eq!(duration(2.0 * 3600.0 + 13.0 * 60.0 + 7.0), "2h13m");
        assert_eq!(duration(3.0 * 86400.0 + 4.5 * 3600.0), "3d04h");
    }

    #[test]
    fn the_run_clock_projects_this_process_pace_onto_the_steps_left() {
        let start = RunStart {
            dir: std::path::Path::new("r"),
            what: String::new(),
            images: (0, 0, None),
            steps_per_epoch: 10,
            resumed: Some((2, Some(5))),
            epochs: 10,
            earlier_seconds: 100.0,
        };
        let mut clock = RunClock::new(&start);
        assert_eq!(clock.first_step, 25);
        assert_eq!(clock.describe(25), "run 1m40s");
        // 5 steps in 10 s: the 70 steps left take 140 s.
        clock.started -= std::time::Duration::from_secs(10);
        assert_eq!(clock.describe(30), "run 1m50s, about 2m20s left");
    }
}
