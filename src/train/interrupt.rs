//! Stopping cleanly on a signal: SIGINT (Ctrl-C), SIGTERM (preemption, `scancel`,
//! `scontrol requeue`) and SIGUSR1 (Slurm's warning before a time limit) ask the
//! training loop to finish its current step, write a checkpoint and exit; a
//! second SIGINT exits at once.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit code of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL).
pub const EXIT_INTERRUPTED: i32 = 75;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers (once per process). Without them, signals keep their default effect.
pub fn install() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        let f = flag().clone();
        // A second Ctrl-C exits at once. SIGTERM never does: schedulers may send it to every
        // process of a job more than once, and the checkpoint must still be written.
        signal_hook::flag::register_conditional_shutdown(SIGINT, 130, f.clone())?;
        for signal in [SIGINT, SIGTERM, SIGUSR1] {
            signal_hook::flag::register(signal, f.clone())?;
        }
    }
    Ok(())
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Asks for a stop, as a signal would.
pub fn request() {
    flag().store(true, Ordering::SeqCst);
}
