//! One owner per run directory: an exclusive OS file lock on `RUN/.lock`, taken
//! by `train`, `train --resume` and a sweep's cell alike, and released by the
//! operating system when the process dies (so `kill -9` never leaves a run
//! stuck). The holder writes its PID into the file, so that a refused process
//! can say who holds the run.

use anyhow::{Context, Result};
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// Another process holds the run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is being trained by another process (PID {pid}); wait for it to finish or stop it first (Ctrl-C or `kill {pid}` writes a checkpoint), then --resume",
    dir.display()
)]
pub struct RunBusy {
    /// The run directory.
    pub dir: PathBuf,
    /// The holder's PID, as it wrote it (`?` when unreadable).
    pub pid: String,
}

/// The exclusive lock on a run directory, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), or fails with [`RunBusy`]. A process that
    /// only probes the lock ([`is_locked`]) holds it for an instant, so a busy lock is tried
    /// again for up to a second before giving up.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let mut attempt = 0;
        loop {
            match Self::try_acquire(dir) {
                Err(e) if e.is::<RunBusy>() && attempt < 10 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    fn try_acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("could not open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(RunBusy {
                    dir: dir.to_path_buf(),
                    pid: if pid.is_empty() {
                        "?".into()
                    } else {
                        pid.into()
                    },
                }
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("could not lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(RunLock { _file: file })
    }
}

/// Whether some process holds the lock of `dir` right now.
pub fn is_locked(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_exclusive_names_its_holder_and_dies_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert!(is_locked(dir.path()));
        let err = RunLock::acquire(dir.path()).unwrap_err();
        let busy = err.downcast_ref::<RunBusy>().unwrap();
        assert_eq!(busy.pid, std::process::id().to_string());
        assert!(err.to_string().contains("being trained by another process"));
        drop(lock);
        assert!(!is_locked(dir.path()));
        assert!(RunLock::acquire(dir.path()).is_ok());
    }
}
