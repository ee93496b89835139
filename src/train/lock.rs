//! One owner per run directory: an exclusive OS file lock on `RUN/.lock`, taken
//! by `train`, `train --resume` and a sweep's cell alike, and released by the
//! operating system when the process dies (so `kill -9` never leaves a run
//! stuck). The holder writes its PID into the file, so that a refused process
//! can say who holds the run.
//!
//! The lock file stays in every run directory and can look stale, so the holder
//! watches it: a deleted `.lock` is re-created and locked again at once, and one
//! that another process replaced (deleted, then created and locked by it) makes
//! the holder stop before it writes anything more ([`RunLock::check`]), so that a
//! run is never written by two processes.

use anyhow::{Context, Result};
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// How often the holder checks that its lock file is still there.
const WATCH_EVERY: Duration = Duration::from_millis(200);

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

/// The lock file was replaced under the holder: another process may own the run now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}/{LOCK_FILE} was deleted and taken by another process while this one trained the run, so that process may be training it now: this one stops without writing anything more (the run's last checkpoint is intact); make sure only one process trains {}, then --resume it",
    dir.display(),
    dir.display()
)]
pub struct LockLost {
    /// The run directory.
    pub dir: PathBuf,
}

/// The exclusive lock on a run directory, held (and watched) until dropped.
#[derive(Debug)]
pub struct RunLock {
    dir: PathBuf,
    lost: Arc<AtomicBool>,
    /// Dropping it ends the watcher, which holds the locked file.
    stop: Option<mpsc::Sender<()>>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RunLock {
    /// Releases the lock before returning: the watcher closes the file as it ends.
    fn drop(&mut self) {
        self.stop.take();
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), or fails with [`RunBusy`]. A process that
    /// only probes the lock ([`is_locked`]) holds it for an instant, so a busy lock is tried
    /// again for up to a second before giving up.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let mut attempt = 0;
        let file = loop {
            match try_lock(dir, false) {
                Err(e) if e.is::<RunBusy>() && attempt < 10 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => break other?,
            }
        };
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel();
        let watched = (dir.to_path_buf(), lost.clone());
        let watcher = std::thread::Builder::new()
            .name("run-lock".into())
            .spawn(move || watch(file, &watched.0, &watched.1, stopped))
            .context("could not start the run lock's watcher")?;
        Ok(RunLock {
            dir: dir.to_path_buf(),
            lost,
            stop: Some(stop),
            watcher: Some(watcher),
        })
    }

    /// Fails with [`LockLost`] once another process has taken the run's lock file: the
    /// holder calls it before every write into the run directory.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(LockLost {
                dir: self.dir.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// A flag that turns true once another process has taken the run's lock file, for a
    /// training loop to stop at its next step.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }
}

/// Opens (or, with `fresh`, creates only if absent) and locks `dir/.lock`, writing this
/// process's PID into it.
fn try_lock(dir: &Path, fresh: bool) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut options = File::options();
    options.read(true).write(true);
    if fresh {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    let mut file = options
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
    Ok(file)
}

/// The file's identity (device and inode), to tell a re-created lock file from ours.
fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

/// Keeps `file` (the locked `.lock` of `dir`) locked until `stop` is dropped: re-creates
/// and locks it again when it was deleted, and sets `lost` when another process took it.
fn watch(mut file: File, dir: &Path, lost: &AtomicBool, stop: mpsc::Receiver<()>) {
    let path = dir.join(LOCK_FILE);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(WATCH_EVERY) {
        let ours = file.metadata().map(|m| identity(&m)).ok();
        match std::fs::metadata(&path) {
            Ok(on_disk) if Some(identity(&on_disk)) == ours => {}
            Ok(_) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match try_lock(dir, true) {
                Ok(again) => file = again,
                // Created by another process between our look and our creation.
                Err(_) => {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            },
            // The directory itself is gone or unreadable: nothing left to guard.
            Err(_) => return,
        }
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

    #[test]
    fn a_deleted_lock_file_is_taken_again_and_a_replaced_one_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        std::thread::sleep(WATCH_EVERY * 3);
        assert!(is_locked(dir.path()), "the holder re-created its lock");
        assert!(RunLock::acquire(dir.path()).is_err(), "still one owner");
        lock.check().unwrap();

        // Another process deletes it and takes a new one before the watcher looks.
        let other = loop {
            let _ = std::fs::remove_file(dir.path().join(LOCK_FILE));
            if let Ok(file) = try_lock(dir.path(), true) {
                break file;
            }
        };
        std::thread::sleep(WATCH_EVERY * 3);
        let err = lock.check().unwrap_err();
        assert!(err.is::<LockLost>(), "{err}");
        assert!(err.to_string().contains("stops without writing"), "{err}");
        drop(other);
    }
}
