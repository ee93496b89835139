//! Reader for image folders (`train/<class>/*.png|jpg|jpeg`, `test/<class>/...`):
//! how the real-data JPEG archive and users' own datasets are trained on. Images
//! are decoded once, in parallel, and the decoded arrays are cached beside the data
//! in `.adanoise-cache/`, rebuilt whenever a file is added, removed or changed.

use super::{CHANNELS, CIFAR10_CLASSES, Dataset, IMAGE_BYTES, IMAGE_SIZE, Split};
use crate::events::{Event, Observer};
use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

const CACHE_DIR: &str = ".adanoise-cache";
const CACHE_MAGIC: &[u8; 12] = b"ADANOISE-IF1";
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
fn fingerprint(files: &[(PathBuf, u8)], classes: &[String]) -> Result<[u8; 16]> {
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

/// Decodes one image into channel-major bytes, refusing anything but 32x32.
pub fn decode_image(path: &Path) -> Result<Vec<u8>> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("could not open the image {}", path.display()))?
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

fn read_cache(path: &Path, key: &[u8; 16], count: usize) -> Option<Split> {
    let bytes = std::fs::read(path).ok()?;
    let header = CACHE_MAGIC.len() + 16 + 8;
    if bytes.len() != header + count * (1 + IMAGE_BYTES)
        || &bytes[..12] != CACHE_MAGIC
        || &bytes[12..28] != key
    {
        return None;
    }
    let stored = u64::from_le_bytes(bytes[28..36].try_into().ok()?) as usize;
    if stored != count {
        return None;
    }
    let labels = bytes[header..header + count].to_vec();
    let images = bytes[header + count..].to_vec();
    Some(Split { images, labels })
}

fn write_cache(path: &Path, key: &[u8; 16], split: &Split) -> Result<()> {
    let dir = path.parent().expect("cache file has a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(CACHE_MAGIC)?;
    tmp.write_all(key)?;
    tmp.write_all(&(split.len() as u64).to_le_bytes())?;
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
    let key = fingerprint(&files, classes)?;
    let cache = root.join(CACHE_DIR).join(format!("{name}.bin"));
    if let Some(split) = read_cache(&cache, &key, files.len()) {
        return Ok(split);
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
}
