//! File writes that never leave a half-written file behind: a temporary file in
//! the same folder, synced, then renamed over the target.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("could not write into {}", dir.display()))?;
    tmp.write_all(bytes)?;
    set_readable(tmp.as_file())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("could not replace {}", path.display()))?;
    Ok(())
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
