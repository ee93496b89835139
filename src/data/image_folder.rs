//! Reader for image folders (`train/<class>/*.png|jpg|jpeg`, `test/<class>/...`):
//! how the real-data JPEG archive and users' own datasets are trained on. Images
//! are decoded once, in parallel, and the decoded arrays are cached beside the data
//! in `.adanoise-cache/`, rebuilt whenever a file is added, removed or changed.

use super::fingerprint::contents_md5;
use super::{CHANNELS, CIFAR10_CLASSES, Dataset, IMAGE_BYTES, IMAGE_SIZE, Split};
use crate::events::{Event, Observer};
use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

const CACHE_DIR: &str = ".adanoise-cache";
const CACHE_MAGIC: &[u8; 12] = b"ADANOISE-IF2";
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `dir` looks like an image folder dataset (has `train/` and `test/` folders).
pub fn is_present(dir: &Path) -> bool {
    dir.join("train").is_dir() && dir.join("test").is_dir()
}

/// Class folders of a split, sorted by name.
fn class_folders(split_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = std::fs::read_dir(split_dir).with_context(|| {
        format!(
            "could not list the class folders of {}",
            split_dir.display()
        )
    })?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The class order: CIFAR-10's label order when the folder names are its classes, else sorted.
pub fn class_order(train_dir: &Path) -> Result<Vec<String>> {
    let names = class_folders(train_dir)?;
    if names.is_empty() {
        bail!(
            "{} has no class folders; an image folder dataset needs train/<class>/*.png|jpg and test/<class>/...",
            train_dir.display()
        );
    }
    if names.len() == 1 {
        bail!(
            "{} has one class folder ('{}'); classification needs at least two classes",
            train_dir.display(),
            names[0]
        );
    }
    let mut cifar: Vec<String> = CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect();
    cifar.sort();
    if names == cifar {
        return Ok(CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect());
    }
    Ok(names)
}

/// Every image file of a split with its label, in a fixed order (class, then file name).
fn list_images(split_dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u8)>> {
    let present = class_folders(split_dir)?;
    for class in classes {
        if !present.contains(class) {
            bail!(
                "{} has no folder for class '{class}', which train/ has; every split needs the same class folders",
                split_dir.display()
            );
        }
    }
    for class in &present {
        if !classes.contains(class) {
            bail!(
                "{} has a folder for class '{class}', which train/ lacks; every split needs the same class folders",
                split_dir.display()
            );
        }
    }
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = split_dir.join(class);
        let mut in_class = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("could not list {}", dir.display()))?
        {
            let path = entry?.path();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
                in_class.push(path);
            }
        }
        if in_class.is_empty() {
            bail!(
                "{} holds no .png, .jpg or .jpeg images; every class needs images in both splits (remove the folder from train/ and test/, or add its images)",
                dir.display()
            );
        }
        in_class.sort();
        files.extend(in_class.into_iter().map(|p| (p, label as u8)));
    }
    if files.is_empty() {
        bail!(
            "{} holds no .png, .jpg or .jpeg images",
            split_dir.display()
        );
    }
    Ok(files)
}

/// A digest of the file list with sizes and modification times: changes when the folder does.
fn folder_key(files: &[(PathBuf, u8)], classes: &[String]) -> Result<[u8; 16]> {
    let mut hasher = Md5::new();
    for class in classes {
        hasher.update(class.as_bytes());
        hasher.update([0]);
    }
    for (path, label) in files {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("could not stat {}", path.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update([*label]);
        hasher.update(meta.len().to_le_bytes());
        hasher.update(mtime.to_le_bytes());
    }
    Ok(hasher.finalize().into())
}

/// Whether `bytes` are a JPEG without its end-of-image marker: a file cut short, which
/// decoders fill in with grey rather than refuse. Bytes after the marker (some writers
/// pad files) are allowed.
fn is_truncated_jpeg(bytes: &[u8]) -> bool {
    let is_jpeg = bytes.starts_with(&[0xff, 0xd8]);
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    is_jpeg && !tail.windows(2).any(|w| w == [0xff, 0xd9])
}

/// Decodes one image into channel-major bytes, refusing anything but 32x32.
pub fn decode_image(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("could not open the image {}", path.display()))?;
    if is_truncated_jpeg(&bytes) {
        bail!(
            "{} is a JPEG cut short (it has no end-of-image marker): the file is damaged; replace it or remove it from the folder",
            path.display()
        );
    }
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("could not read the image {}", path.display()))?
        .decode()
        .with_context(|| format!("{} is not a decodable PNG or JPEG image", path.display()))?;
    if img.width() as usize != IMAGE_SIZE || img.height() as usize != IMAGE_SIZE {
        bail!(
            "{} is {}x{}, but CIFAR-10 models take 32x32 images; resize it or remove it from the folder",
            path.display(),
            img.width(),
            img.height()
        );
    }
    let rgb = img.to_rgb8();
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let mut out = vec![0u8; IMAGE_BYTES];
    for (i, pixel) in rgb.pixels().enumerate() {
        for c in 0..CHANNELS {
            out[c * plane + i] = pixel.0[c];
        }
    }
    Ok(out)
}

fn decode_all(files: &[(PathBuf, u8)]) -> Result<Split> {
    let decoded: Vec<Vec<u8>> = files
        .par_iter()
        .map(|(path, _)| decode_image(path))
        .collect::<Result<_>>()?;
    Ok(Split {
        images: decoded.concat(),
        labels: files.iter().map(|(_, l)| *l).collect(),
    })
}

/// What the cache file of a split holds.
enum Cached {
    /// The decoded split, its checksum verified.
    Valid(Split),
    /// No cache, or one for another state of the folder.
    Stale,
    /// A cache for this folder whose contents do not match their checksum.
    Damaged,
}

/// Magic, folder key, image count, MD5 of the payload: the header of a cache file.
const CACHE_HEADER: usize = 12 + 16 + 8 + 16;

fn read_cache(path: &Path, key: &[u8; 16], count: usize) -> Cached {
    let Ok(bytes) = std::fs::read(path) else {
        return Cached::Stale;
    };
    if bytes.len() < CACHE_HEADER || &bytes[..12] != CACHE_MAGIC || &bytes[12..28] != key {
        return Cached::Stale;
    }
    let stored = u64::from_le_bytes(bytes[28..36].try_into().expect("8 bytes")) as usize;
    if stored != count || bytes.len() != CACHE_HEADER + count * (1 + IMAGE_BYTES) {
        return Cached::Damaged;
    }
    let (labels, images) = bytes[CACHE_HEADER..].split_at(count);
    if contents_md5(labels, images).as_slice() != &bytes[36..52] {
        return Cached::Damaged;
    }
    Cached::Valid(Split {
        images: images.to_vec(),
        labels: labels.to_vec(),
    })
}

fn write_cache(path: &Path, key: &[u8; 16], split: &Split) -> Result<()> {
    let dir = path.parent().expect("cache file has a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(CACHE_MAGIC)?;
    tmp.write_all(key)?;
    tmp.write_all(&(split.len() as u64).to_le_bytes())?;
    tmp.write_all(&contents_md5(&split.labels, &split.images))?;
    tmp.write_all(&split.labels)?;
    tmp.write_all(&split.images)?;
    tmp.persist(path)?;
    Ok(())
}

fn load_split(
    root: &Path,
    name: &str,
    classes: &[String],
    observer: &mut dyn Observer,
) -> Result<Split> {
    let files = list_images(&root.join(name), classes)?;
    let key = folder_key(&files, classes)?;
    let cache = root.join(CACHE_DIR).join(format!("{name}.bin"));
    match read_cache(&cache, &key, files.len()) {
        Cached::Valid(split) => return Ok(split),
        Cached::Damaged => observer.on(&Event::Warning(&format!(
            "the image cache {} is damaged (its contents do not match their checksum); decoding the images again",
            cache.display()
        ))),
        Cached::Stale => {}
    }
    observer.on(&Event::Notice(&format!(
        "decoding {} images of {}/{name} (cached afterwards)",
        files.len(),
        root.display()
    )));
    let split = decode_all(&files)?;
    if let Err(e) = write_cache(&cache, &key, &split) {
        observer.on(&Event::Warning(&format!(
            "could not cache the decoded images at {} ({e}); they will be decoded again next time",
            cache.display()
        )));
    }
    Ok(split)
}

/// Loads `root/train` and `root/test`, from the cache when the folders are unchanged.
pub fn load(root: &Path, observer: &mut dyn Observer) -> Result<Dataset> {
    let classes = class_order(&root.join("train"))?;
    if classes.len() > u8::MAX as usize {
        bail!(
            "{} has {} class folders; at most 255 are supported",
            root.display(),
            classes.len()
        );
    }
    let train = load_split(root, "train", &classes, observer)?;
    let test = load_split(root, "test", &classes, observer)?;
    Ok(Dataset {
        train,
        val: None,
        test,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Silent;

    fn write_png(path: &Path, size: u32, value: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img =
            image::RgbImage::from_fn(size, size, |x, y| image::Rgb([value, x as u8, y as u8]));
        img.save(path).unwrap();
    }

    fn make_folder(root: &Path, classes: &[&str]) {
        for split in ["train", "test"] {
            for (i, class) in classes.iter().enumerate() {
                write_png(
                    &root.join(split).join(class).join("a.png"),
                    32,
                    i as u8 * 10,
                );
            }
        }
    }

    #[test]
    fn cifar_names_get_cifar_order_and_pixels_are_channel_major() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path(), &CIFAR10_CLASSES);
        let data = load(dir.path(), &mut Silent).unwrap();
        assert_eq!(data.classes[0], "airplane");
        assert_eq!(data.classes[9], "truck");
        assert_eq!(data.train.len(), 10);
        let img = data.train.image(3); // cat, red channel 30
        assert_eq!(img[0], 30);
        assert_eq!(img[1024 + 5], 5); // green = x
        assert_eq!(img[2048 + 32 * 7], 7); // blue = y
    }

    #[test]
    fn other_names_are_sorted_and_cache_tracks_changes() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path(), &["zebra", "ant"]);
        let first = load(dir.path(), &mut Silent).unwrap();
        assert_eq!(first.classes, vec!["ant", "zebra"]);
        assert!(dir.path().join(CACHE_DIR).join("train.bin").is_file());
        assert_eq!(load(dir.path(), &mut Silent).unwrap().train, first.train);
        write_png(&dir.path().join("train/ant/b.png"), 32, 99);
        assert_eq!(load(dir.path(), &mut Silent).unwrap().train.len(), 3);
    }

    #[test]
    fn missing_class_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path(), &["ant", "bee"]);
        std::fs::remove_dir_all(dir.path().join("test/bee")).unwrap();
        let err = load(dir.path(), &mut Silent).unwrap_err().to_string();
        assert!(err.contains("class 'bee'"), "{err}");
    }

    #[test]
    fn wrong_size_image_is_named() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path(), &["ant", "bee"]);
        write_png(&dir.path().join("train/bee/big.png"), 64, 1);
        let err = format!("{:#}", load(dir.path(), &mut Silent).unwrap_err());
        assert!(err.contains("big.png") && err.contains("64x64"), "{err}");
    }

    #[test]
    fn an_empty_class_folder_or_a_single_class_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path(), &["ant", "bee"]);
        for f in std::fs::read_dir(dir.path().join("test/bee")).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let err = format!("{:#}", load(dir.path(), &mut Silent).unwrap_err());
        assert!(err.contains("test/bee holds no .png"), "{err}");
        let one = tempfile::tempdir().unwrap();
        make_folder(one.path(), &["ant"]);
        let err = format!("{:#}", load(one.path(), &mut Silent).unwrap_err());
        assert!(err.contains("at least two classes"), "{err}");
    }

    #[test]
    fn a_jpeg_cut_short_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path(), &["ant", "bee"]);
        let jpeg = dir.path().join("train/ant/c.jpg");
        image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 7, y as u8 * 5, 9]))
            .save(&jpeg)
            .unwrap();
        assert!(load(dir.path(), &mut Silent).is_ok());
        let bytes = std::fs::read(&jpeg).unwrap();
        std::fs::write(&jpeg, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let err = format!("{:#}", load(dir.path(), &mut Silent).unwrap_err());
        assert!(err.contains("c.jpg is a JPEG cut short"), "{err}");
    }

    #[test]
    fn a_damaged_cache_is_decoded_again() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path(), &["ant", "bee"]);
        let fresh = load(dir.path(), &mut Silent).unwrap();
        let cache = dir.path().join(CACHE_DIR).join("train.bin");
        let mut bytes = std::fs::read(&cache).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&cache, bytes).unwrap();
        let mut notices = crate::events::Notices::default();
        let again = load(dir.path(), &mut notices).unwrap();
        assert_eq!(
            again.train, fresh.train,
            "the flipped pixel must not reach training"
        );
        assert!(
            notices.0.iter().any(|n| n.contains("is damaged")),
            "{:?}",
            notices.0
        );
    }
}
