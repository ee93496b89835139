//! Stopping cleanly on a signal: SIGINT (Ctrl-C), SIGTERM (preemption, `scancel`,
//! `scontrol requeue`) and SIGUSR1 (Slurm's warning before a time limit) ask the
//! training loop to finish its current step, write a checkpoint and exit; a
//! second SIGINT exits at once, removing the checkpoint it interrupts (the last
//! complete one stays).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The exit code of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL).
pub const EXIT_INTERRUPTED: i32 = 75;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static SIGINTS: AtomicUsize = AtomicUsize::new(0);

/// What a second Ctrl-C prints as it exits.
const EXIT_NOW: &[u8] = b"\ninterrupted again: exiting now; a checkpoint being written is abandoned, the last complete one stays (continue with --resume)\n";

/// What a second Ctrl-C prints as a sweep exits: the sweep writes no checkpoint; its cells,
/// separate processes told to stop at the first signal, end by themselves.
const SWEEP_EXITS_NOW: &[u8] = b"\ninterrupted again: the sweep exits now. The cells it ran were told to stop and end by themselves: each finishes its checkpoint, or abandons it if this Ctrl-C reached it too (its last complete one stays); run the same sweep command again to continue\n";

/// Whether this process is a sweep running cells in other processes.
static RUNS_CELLS: AtomicBool = AtomicBool::new(false);

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
        // SAFETY: the action only touches atomics and calls unlink, write and _exit, which
        // are async-signal-safe.
        unsafe {
            signal_hook::low_level::register(SIGINT, || {
                if SIGINTS.fetch_add(1, Ordering::SeqCst) >= 1 {
                    crate::fsio::in_progress::remove();
                    let message = if RUNS_CELLS.load(Ordering::SeqCst) {
                        SWEEP_EXITS_NOW
                    } else {
                        EXIT_NOW
                    };
                    libc::write(2, message.as_ptr().cast(), message.len());
                    libc::_exit(130);
                }
            })?;
        }
        for signal in [SIGINT, SIGTERM, SIGUSR1] {
            signal_hook::flag::register(signal, f.clone())?;
        }
    }
    Ok(())
}

/// [`install`] for a sweep that runs its cells in other processes: a second Ctrl-C says
/// what becomes of theirs, not of a checkpoint of its own.
pub fn install_for_sweep() -> std::io::Result<()> {
    RUNS_CELLS.store(true, Ordering::SeqCst);
    install()
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Asks for a stop, as a signal would.
pub fn request() {
    flag().store(true, Ordering::SeqCst);
}
