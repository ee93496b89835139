//! File writes that never leave a half-written file behind: a temporary file in
//! the same folder, synced, then renamed over the target. Temporary files carry
//! their writer's PID (`.tmp-<pid>-...`), so that what a killed writer left can be
//! told from what a live one is writing.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// How the names of temporary files begin.
pub const TEMPORARY_PREFIX: &str = ".tmp-";

/// Whether `name` is a temporary file left by a writer that is no longer running (a
/// killed process): false for one a live process may still be writing.
pub fn is_stale_temporary(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEMPORARY_PREFIX) else {
        return false;
    };
    match rest
        .split('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
    {
        Some(pid) => !process_is_alive(pid),
        // Written before temporary names carried a PID.
        None => true,
    }
}

/// Whether a process with this PID runs on this machine.
fn process_is_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    // The name is known to the signal handler before the file exists, so that no moment
    // leaves a file a second Ctrl-C would not remove.
    let mut registered = None;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{TEMPORARY_PREFIX}{}-", std::process::id()))
        .make_in(dir, |path| {
            registered = None;
            registered = Some(in_progress::Registered::new(path));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
        })
        .with_context(|| format!("could not write into {}", dir.display()))?;
    tmp.write_all(bytes)?;
    set_readable(tmp.as_file())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("could not replace {}", path.display()))?;
    drop(registered);
    Ok(())
}

/// The temporary file a write is filling, known to the signal handler so that a second
/// Ctrl-C, which exits at once, can remove it instead of leaving a large leftover.
pub mod in_progress {
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

    const CAPACITY: usize = 4096;
    static BUSY: AtomicBool = AtomicBool::new(false);
    static READY: AtomicBool = AtomicBool::new(false);
    static LEN: AtomicUsize = AtomicUsize::new(0);
    static PATH: [AtomicU8; CAPACITY] = [const { AtomicU8::new(0) }; CAPACITY];

    /// Registers a path for as long as it lives (one at a time: a second concurrent write
    /// is simply not registered).
    pub struct Registered(bool);

    impl Registered {
        /// Registers `path`.
        pub fn new(path: &std::path::Path) -> Self {
            use std::os::unix::ffi::OsStrExt;
            let bytes = path.as_os_str().as_bytes();
            if bytes.len() >= CAPACITY || BUSY.swap(true, Ordering::AcqRel) {
                return Registered(false);
            }
            for (slot, byte) in PATH.iter().zip(bytes) {
                slot.store(*byte, Ordering::Relaxed);
            }
            LEN.store(bytes.len(), Ordering::Relaxed);
            READY.store(true, Ordering::Release);
            Registered(true)
        }
    }

    impl Drop for Registered {
        fn drop(&mut self) {
            if self.0 {
                READY.store(false, Ordering::Release);
                BUSY.store(false, Ordering::Release);
            }
        }
    }

    /// Removes the registered file. Only async-signal-safe calls: for a signal handler.
    pub fn remove() {
        if !READY.load(Ordering::Acquire) {
            return;
        }
        let mut name = [0u8; CAPACITY + 1];
        let len = LEN.load(Ordering::Relaxed).min(CAPACITY);
        for (byte, slot) in name.iter_mut().zip(PATH.iter()).take(len) {
            *byte = slot.load(Ordering::Relaxed);
        }
        // SAFETY: `name` is NUL-terminated (zeroed past `len`); unlink is async-signal-safe.
        unsafe {
            libc::unlink(name.as_ptr().cast());
        }
    }
}

/// Appends one line and makes sure it reached the disk.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("could not open {} for appending", path.display()))?;
    file.write_all(line.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_data()?;
    Ok(())
}

/// Temporary files are created private (0600); results are meant to be shared like any file.
#[cfg(unix)]
fn set_readable(file: &std::fs::File) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

#[cfg(not(unix))]
fn set_readable(_file: &std::fs::File) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_live_writers_are_not_stale() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("x"), b"1").unwrap();
        let own = format!("{TEMPORARY_PREFIX}{}-abc", std::process::id());
        assert!(!is_stale_temporary(&own));
        // Beyond any pid_max: no such process.
        assert!(is_stale_temporary(".tmp-999999999-abc"));
        assert!(is_stale_temporary(".tmp-XYZ123"));
        assert!(!is_stale_temporary("checkpoint.bin"));
    }
}
