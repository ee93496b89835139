//! Download of CIFAR-10's binary release from its public home: streamed to a
//! temporary file, verified against the published MD5, then extracted without
//! letting any archive entry escape the data folder. Idempotent.

use super::cifar_binary::{self, BATCHES_DIR};
use crate::events::{Event, Observer};
use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::path::{Component, Path};

/// The release's public home. `ADANOISE_CIFAR10_URL` overrides it (a local mirror).
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The published MD5 of `cifar-10-binary.tar.gz`.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The release archive's file name.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

/// What to tell a user who has no internet, for a given data folder.
pub fn offline_help(data_dir: &Path) -> String {
    format!(
        "To train without internet, either put the binary release's files (data_batch_1.bin .. data_batch_5.bin, test_batch.bin) in {dir}/{BATCHES_DIR}/, \
         or copy {ARCHIVE_NAME} (md5 {CIFAR10_MD5}) into {dir}/ and run `adanoise data download --data-dir {dir}`, \
         or point --data-dir at an image folder with train/<class>/*.png|jpg and test/<class>/... \
         (for example the extracted cifar10-jpeg.tar.gz)",
        dir = data_dir.display()
    )
}

/// Makes sure `data_dir` holds a verified, extracted binary release, downloading it if needed.
pub fn ensure_cifar10(data_dir: &Path, observer: &mut dyn Observer) -> Result<()> {
    if cifar_binary::is_present(data_dir) {
        return Ok(());
    }
    let url = std::env::var("ADANOISE_CIFAR10_URL").unwrap_or_else(|_| CIFAR10_URL.to_string());
    fetch_and_extract(&url, CIFAR10_MD5, data_dir, observer)
}

/// Fetches `url` (unless a verified archive is already there), checks its MD5 and extracts it.
pub fn fetch_and_extract(
    url: &str,
    md5_hex: &str,
    data_dir: &Path,
    observer: &mut dyn Observer,
) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("could not create the data folder {}", data_dir.display()))?;
    let archive = data_dir.join(ARCHIVE_NAME);
    let local_md5 = if archive.is_file() {
        Some(file_md5(&archive)?)
    } else {
        None
    };
    if local_md5.as_deref() != Some(md5_hex)
        && let Err(e) = download(url, md5_hex, &archive, observer)
    {
        return Err(match local_md5 {
            // The archive is there, so asking for it would mislead: say what is wrong.
            Some(got) => e.context(format!(
                "{} is there, but its MD5 is {got}, not the published {md5_hex}: it is damaged or not CIFAR-10's binary release, and no good copy could be downloaded; replace it with a good copy (or delete it and run again with internet)",
                archive.display()
            )),
            None => e.context(offline_help(data_dir)),
        });
    }
    extract_tar_gz(&archive, data_dir)?;
    if !cifar_binary::is_present(data_dir) {
        bail!(
            "{} did not contain {BATCHES_DIR}/; it is not CIFAR-10's binary release",
            archive.display()
        );
    }
    Ok(())
}

fn file_md5(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut hasher = Md5::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Streams `url` into a temporary file beside `dest`, checking the MD5 before it is moved into place.
fn download(url: &str, md5_hex: &str, dest: &Path, observer: &mut dyn Observer) -> Result<()> {
    observer.on(&Event::Notice(&format!("downloading {url}")));
    let response = ureq::get(url)
        .call()
        .with_context(|| format!("could not download {url}"))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut done = 0u64;
    let mut reader = response.into_body().into_reader();
    let dir = dest.parent().expect("archive path has a parent");
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("the download of {url} was interrupted"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])?;
        done += n as u64;
        observer.on(&Event::Download { url, done, total });
    }
    let got = format!("{:x}", hasher.finalize());
    if got != md5_hex {
        bail!(
            "the file downloaded from {url} has md5 {got}, not the published {md5_hex}: it is corrupt or not the CIFAR-10 release; nothing was kept, try again"
        );
    }
    tmp.persist(dest)
        .with_context(|| format!("could not save the archive as {}", dest.display()))?;
    Ok(())
}

/// Extracts a .tar.gz into `dest`, refusing absolute paths, `..`, links and special files.
/// Entries land in a temporary folder first, so a bad archive leaves nothing behind.
pub fn extract_tar_gz(archive: &Path, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(archive)
        .with_context(|| format!("could not open {}", archive.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(dest)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut top_level = std::collections::BTreeSet::new();
    for entry in tar
        .entries()
        .with_context(|| format!("{} is not a valid .tar.gz", archive.display()))?
    {
        let mut entry =
            entry.with_context(|| format!("{} is not a valid .tar.gz", archive.display()))?;
        let path = entry.path()?.into_owned();
        let safe = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe {
            bail!(
                "{} holds the entry '{}', which would land outside {}: refusing to extract it",
                archive.display(),
                path.display(),
                dest.display()
            );
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            bail!(
                "{} holds '{}', which is a link or special file: refusing to extract it",
                archive.display(),
                path.display()
            );
        }
        if let Some(Component::Normal(first)) = path
            .components()
            .find(|c| matches!(c, Component::Normal(_)))
        {
            top_level.insert(first.to_owned());
        }
        if !entry.unpack_in(staging.path())? {
            bail!(
                "refused to extract '{}' from {}",
                path.display(),
                archive.display()
            );
        }
    }
    for name in top_level {
        let target = dest.join(&name);
        if target.exists() {
            if target.is_dir() {
                std::fs::remove_dir_all(&target)?;
            } else {
                std::fs::remove_file(&target)?;
            }
        }
        std::fs::rename(staging.path().join(&name), &target).with_context(|| {
            format!(
                "could not move the extracted {} into place",
                target.display()
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Silent;

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // Write the raw name so that unsafe paths can be built for the tests.
            let raw = &mut header.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn extracts_normal_entries() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.gz");
        std::fs::write(&archive, tar_gz(&[("top/x.bin", b"hello")])).unwrap();
        extract_tar_gz(&archive, dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("top/x.bin")).unwrap(),
            b"hello"
        );
        // Idempotent: extracting again replaces the folder.
        extract_tar_gz(&archive, dir.path()).unwrap();
    }

    #[test]
    fn refuses_entries_that_escape() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("d");
        std::fs::create_dir(&inner).unwrap();
        let archive = dir.path().join("evil.tar.gz");
        std::fs::write(&archive, tar_gz(&[("ok/a", b"1"), ("../escaped", b"x")])).unwrap();
        let err = extract_tar_gz(&archive, &inner).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
        assert!(!dir.path().join("escaped").exists());
        assert!(
            !inner.join("ok").exists(),
            "a refused archive must leave nothing behind"
        );
    }

    /// Serves `body` once on a loopback port and returns its URL.
    fn serve_once(body: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{addr}/{ARCHIVE_NAME}")
    }

    fn fake_release() -> Vec<u8> {
        let split = crate::data::Split {
            images: vec![7; 2 * crate::data::IMAGE_BYTES],
            labels: vec![1, 2],
        };
        let batch = cifar_binary::encode_batch(&split);
        let mut entries: Vec<(String, Vec<u8>)> = cifar_binary::TRAIN_FILES
            .iter()
            .map(|f| (format!("{BATCHES_DIR}/{f}"), batch.clone()))
            .collect();
        entries.push((format!("{BATCHES_DIR}/{}", cifar_binary::TEST_FILE), batch));
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        tar_gz(&refs)
    }

    #[test]
    fn downloads_verifies_and_extracts() {
        let body = fake_release();
        let md5 = format!("{:x}", Md5::digest(&body));
        let dir = tempfile::tempdir().unwrap();
        fetch_and_extract(&serve_once(body), &md5, dir.path(), &mut Silent).unwrap();
        let data = cifar_binary::load(dir.path()).unwrap();
        assert_eq!(data.train.len(), 10);
        // Second call: archive verified locally, no server needed.
        fetch_and_extract(
            "http://127.0.0.1:9/unreachable",
            &md5,
            dir.path(),
            &mut Silent,
        )
        .unwrap();
    }

    #[test]
    fn corrupt_download_is_rejected_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_and_extract(
            &serve_once(fake_release()),
            CIFAR10_MD5,
            dir.path(),
            &mut Silent,
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("md5"), "{text}");
        assert!(!dir.path().join(ARCHIVE_NAME).exists());
    }

    #[test]
    fn offline_error_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_and_extract("http://127.0.0.1:9/x", CIFAR10_MD5, dir.path(), &mut Silent)
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("data_batch_1.bin") && text.contains("image folder"),
            "{text}"
        );
    }

    #[test]
    fn a_damaged_local_archive_is_named_not_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ARCHIVE_NAME), b"not the release").unwrap();
        let err = fetch_and_extract("http://127.0.0.1:9/x", CIFAR10_MD5, dir.path(), &mut Silent)
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("is there, but its MD5 is") && text.contains("damaged"),
            "{text}"
        );
        assert!(!text.contains("copy cifar-10-binary.tar.gz"), "{text}");
    }
}
