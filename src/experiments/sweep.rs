//! Sweep files and their cells. A sweep file has a `[base]` table (any training
//! option) and a `[grid]` table of value lists; the cells are the product of the
//! lists, in the order the file writes them. A list element may be a table that
//! sets several options together (`{optimizer = "adam", lr = 1e-3}`). Each cell
//! is an ordinary run directory under the sweep's output directory, named from
//! its values.

use crate::device::DeviceKind;
use crate::fsio::write_atomic;
use crate::train::TrainConfig;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file that pins the cell list of a sweep directory (index -> name -> config).
pub const CELLS_FILE: &str = "cells.json";
/// Held while a sweep process merges its cells into [`CELLS_FILE`].
const CELLS_LOCK: &str = ".cells.lock";

/// One cell of a sweep: its index, directory name, grid values and resolved config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Its index in the full grid (stable under `--only`).
    pub index: usize,
    /// Its directory name, made of its grid values.
    pub name: String,
    /// The grid values of this cell, as `key = value` in grid order.
    pub values: Vec<(String, String)>,
    /// Its training configuration.
    pub config: TrainConfig,
    /// The command-line changes its sweep file was resolved with when it was pinned, so
    /// that `--cell INDEX` can resolve the file the same way to see whether it was edited.
    #[serde(default)]
    pub pinned_with: BaseOverrides,
}

/// A resolved sweep: its output directory and every cell.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The sweep file.
    pub file: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// The cells, in grid order.
    pub cells: Vec<Cell>,
}

/// Command-line changes to a sweep's `[base]` options (each cell's config is resolved
/// with them, and they are pinned with it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaseOverrides {
    /// `KEY=VALUE` assignments applied to the base configuration (dotted keys for nested tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// Points every cell at this data folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Trains every cell on this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
}

impl BaseOverrides {
    /// Whether none is given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These overrides, each one that is not given taken from `pinned`.
    pub fn or(&self, pinned: &BaseOverrides) -> BaseOverrides {
        BaseOverrides {
            set: if self.set.is_empty() {
                pinned.set.clone()
            } else {
                self.set.clone()
            },
            data_dir: self.data_dir.clone().or_else(|| pinned.data_dir.clone()),
            device: self.device.or(pinned.device),
        }
    }

    /// The overrides as command-line options, for messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.set.iter().map(|s| format!("--set {s}")).collect();
        if let Some(dir) = &self.data_dir {
            parts.push(format!("--data-dir {}", dir.display()));
        }
        if let Some(device) = self.device {
            parts.push(format!("--device {device}"));
        }
        parts.join(" ")
    }
}

/// Command-line changes to a sweep.
#[derive(Debug, Clone, Default)]
pub struct SweepOverrides {
    /// Changes to the base options.
    pub base: BaseOverrides,
    /// `KEY=VALUE` filters: only the cells whose grid (or base) value matches.
    pub only: Vec<String>,
    /// The output directory, instead of the file's.
    pub out: Option<PathBuf>,
}

/// Parses `KEY=VALUE`, reading VALUE as TOML (numbers, booleans, arrays) or else as a string.
pub fn parse_assignment(text: &str) -> Result<(String, toml::Value)> {
    let Some((key, value)) = text.split_once('=') else {
        bail!("'{text}' is not KEY=VALUE");
    };
    let key = key.trim();
    if key.is_empty() {
        bail!("'{text}' has an empty key");
    }
    let value = value.trim();
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.to_string(), parsed))
}

/// Sets a dotted key (`noise_scheduler.flag_window`) in a table.
pub fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current.insert(last.to_string(), value);
}

/// A value as it appears in names and filters: strings bare, numbers as TOML writes them.
pub fn show_value(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The part of a cell's directory name for one grid value.
fn name_part(key: &str, value: &toml::Value) -> String {
    let v = show_value(value);
    let part = match key {
        "model" | "optimizer" | "noise" | "noise_policy" | "device" => v,
        "lr" => format!("lr{v}"),
        "seed" => format!("s{v}"),
        "weight_noise_scale" => format!("weights-{v}"),
        "epochs" => format!("e{v}"),
        other => format!(
            "{}{v}",
            other.rsplit('.').next().unwrap_or(other).replace('_', "")
        ),
    };
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The grid's axes: each key with its list of values, in file order.
type Axes = Vec<(String, Vec<toml::Value>)>;

/// A sweep file split into its three parts, before any cell is made.
#[derive(Debug, Clone)]
pub struct SweepFile {
    path: PathBuf,
    base: toml::Table,
    axes: Axes,
    out: Option<toml::Value>,
}

impl SweepFile {
    /// Reads and checks the shape of a sweep file (its cells are made by [`SweepFile::resolve`]).
    pub fn read(path: &Path) -> Result<SweepFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the sweep file {}", path.display()))?;
        let mut file: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let base = match file.remove("base") {
            Some(toml::Value::Table(t)) => t,
            None => toml::Table::new(),
            Some(_) => bail!(
                "{}: [base] must be a table of training options",
                path.display()
            ),
        };
        let grid = match file.remove("grid") {
            Some(toml::Value::Table(t)) => t,
            None => toml::Table::new(),
            Some(_) => bail!("{}: [grid] must be a table of value lists", path.display()),
        };
        let out = file.remove("out");
        if let Some(key) = file.keys().next() {
            bail!(
                "{}: unknown top-level key '{key}' (a sweep file has `out`, [base] and [grid])",
                path.display()
            );
        }
        let mut axes = Axes::new();
        for (key, values) in grid {
            let values = match values {
                toml::Value::Array(v) if !v.is_empty() => v,
                toml::Value::Array(_) => bail!("{}: grid list '{key}' is empty", path.display()),
                single => vec![single],
            };
            axes.push((key, values));
        }
        Ok(SweepFile {
            path: path.to_path_buf(),
            base,
            axes,
            out,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys the grid sets: each axis's own, and those its linked tables set.
    fn grid_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (axis, values) in &self.axes {
            let mut linked = false;
            for value in values {
                if let toml::Value::Table(t) = value {
                    linked = true;
                    keys.extend(t.keys().cloned());
                }
            }
            if !linked {
                keys.push(axis.clone());
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The base table with `--set`, `--data-dir` and `--device` applied. A `--set` of a key
    /// the grid sets is refused: the grid would override it in every cell, so it would
    /// change nothing while looking as if it had.
    fn overridden_base(&self, overrides: &BaseOverrides) -> Result<toml::Table> {
        let mut base = self.base.clone();
        let grid = self.grid_keys();
        for assignment in &overrides.set {
            let (key, value) = parse_assignment(assignment)?;
            if grid.contains(&key) {
                bail!(
                    "--set {assignment} changes the sweep's [base], but `{key}` is set by the grid of {} in every cell, so it would change nothing: \
                     use --only {key}=VALUE to run the cells of one value, or edit the grid",
                    self.path.display()
                );
            }
            set_dotted(&mut base, &key, value);
        }
        if let Some(dir) = &overrides.data_dir {
            base.insert(
                "data_dir".into(),
                toml::Value::String(dir.display().to_string()),
            );
        }
        if let Some(device) = overrides.device {
            base.insert("device".into(), toml::Value::String(device.to_string()));
        }
        Ok(base)
    }

    /// The output directory: `--out`, else the file's `out`, else `sweeps/<file stem>`.
    pub fn out_dir(&self, out: Option<&Path>) -> Result<PathBuf> {
        let path = &self.path;
        Ok(match (out, &self.out) {
            (Some(out), _) => out.to_path_buf(),
            (None, Some(toml::Value::String(s))) => PathBuf::from(s),
            (None, Some(_)) => bail!("{}: `out` must be a path string", path.display()),
            (None, None) => {
                let stem = path
                    .file_stem()
                    .map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
                PathBuf::from("sweeps").join(stem)
            }
        })
    }

    fn cell_count(&self) -> usize {
        self.axes.iter().map(|(_, v)| v.len()).product()
    }

    /// The full table, grid values and name parts of cell `flat`, over `base`. The last
    /// axis varies fastest, like nested loops written in file order.
    fn cell_table(
        &self,
        base: &toml::Table,
        flat: usize,
    ) -> (toml::Table, Vec<(String, String)>, Vec<String>) {
        let mut picks = vec![0; self.axes.len()];
        let mut rest = flat;
        for (i, (_, vals)) in self.axes.iter().enumerate().rev() {
            picks[i] = rest % vals.len();
            rest /= vals.len();
        }
        let mut table = base.clone();
        let mut values = Vec::new();
        let mut names = Vec::new();
        let mut assign = |key: &String, value: &toml::Value| {
            set_dotted(&mut table, key, value.clone());
            values.push((key.clone(), show_value(value)));
            names.push(name_part(key, value));
        };
        for ((key, vals), pick) in self.axes.iter().zip(&picks) {
            match &vals[*pick] {
                // A table sets several options together: `{optimizer = "adam", lr = 1e-3}`.
                toml::Value::Table(linked) => linked.iter().for_each(|(k, v)| assign(k, v)),
                value => assign(key, value),
            }
        }
        (table, values, names)
    }

    /// Every cell (each config validated) with the overrides, and the output directory.
    pub fn resolve(&self, overrides: &SweepOverrides) -> Result<Sweep> {
        let path = &self.path;
        let base = self.overridden_base(&overrides.base)?;
        let out = self.out_dir(overrides.out.as_deref())?;
        let filters = Filters::parse(&overrides.only)?;
        let mut cells = Vec::new();
        for flat in 0..self.cell_count() {
            let (table, values, names) = self.cell_table(&base, flat);
            let invalid = || {
                format!(
                    "{}: the cell {} has an invalid configuration",
                    path.display(),
                    describe(&values)
                )
            };
            let config = TrainConfig::for_new_run(table.clone()).with_context(invalid)?;
            if let Err(why) = config.check_injects() {
                return Err(anyhow::anyhow!(
                    "{why}. In a grid, set the policy together with the noise, e.g. \
                     noise = [{{noise = 'none'}}, {{noise = 'gaussian', noise_policy = 'constant'}}]"
                ))
                .with_context(invalid);
            }
            filters.check_keys(path, &self.grid_keys(), &config)?;
            let keep = filters.keep(&values, &config);
            if keep {
                let name = if names.is_empty() {
                    "run".to_string()
                } else {
                    names.join("-")
                };
                cells.push(Cell {
                    index: flat,
                    name,
                    values,
                    config,
                    pinned_with: overrides.base.clone(),
                });
            }
        }
        check_cells(path, &cells)?;
        Ok(Sweep {
            file: path.to_path_buf(),
            out,
            cells,
        })
    }
}

impl Sweep {
    /// Reads a sweep file and resolves every cell (each config validated) with the overrides.
    pub fn load(path: &Path, overrides: &SweepOverrides) -> Result<Sweep> {
        SweepFile::read(path)?.resolve(overrides)
    }

    /// The run directory of `cell`.
    pub fn cell_dir(&self, cell: &Cell) -> PathBuf {
        self.out.join(&cell.name)
    }

    /// Pins the cell list in the output directory, for `--cell INDEX` and job arrays:
    /// merged into what is pinned there, so that sweeps of other `--only` selections
    /// started into the same directory at the same moment keep each other's cells.
    pub fn write_cells(&self) -> Result<()> {
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("could not create {}", self.out.display()))?;
        let lock_path = self.out.join(CELLS_LOCK);
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("could not open {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("could not lock {}", lock_path.display()))?;
        let mut pinned = read_cells(&self.out).unwrap_or_default();
        for cell in &self.cells {
            match pinned.iter_mut().find(|c| c.index == cell.index) {
                Some(existing) => *existing = cell.clone(),
                None => pinned.push(cell.clone()),
            }
        }
        pinned.sort_by_key(|c| c.index);
        write_atomic(
            &self.out.join(CELLS_FILE),
            serde_json::to_string_pretty(&pinned)?.as_bytes(),
        )
    }
}

/// The pinned cell list of a sweep directory.
pub fn read_cells(out: &Path) -> Result<Vec<Cell>> {
    let path = out.join(CELLS_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("could not read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cell list written by adanoise", path.display()))
}

/// Refuses a cell list that is empty or names two cells alike.
fn check_cells(path: &Path, cells: &[Cell]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    if let Some(cell) = cells.iter().find(|cell| !seen.insert(&cell.name)) {
        bail!(
            "{}: two cells are both named '{}'; make the grid values distinct",
            path.display(),
            cell.name
        );
    }
    if cells.is_empty() {
        bail!(
            "{}: no cell left (the --only filters match nothing)",
            path.display()
        );
    }
    Ok(())
}

/// `--only` filters: a cell is kept when, for every key filtered, its value is one of the
/// values given for that key (`--only lr=0.1 --only lr=0.01` keeps both rates).
struct Filters(Vec<(String, Vec<String>)>);

impl Filters {
    fn parse(only: &[String]) -> Result<Self> {
        let mut filters: Vec<(String, Vec<String>)> = Vec::new();
        for text in only {
            let (key, value) = parse_assignment(text)?;
            let value = show_value(&value);
            match filters.iter_mut().find(|(k, _)| *k == key) {
                Some((_, values)) => values.push(value),
                None => filters.push((key, vec![value])),
            }
        }
        Ok(Self(filters))
    }

    /// Refuses a key that is neither set by the grid nor a training option (a misspelling
    /// would otherwise filter every cell out, or none).
    fn check_keys(&self, path: &Path, grid: &[String], config: &TrainConfig) -> Result<()> {
        for (key, _) in &self.0 {
            if !grid.contains(key) && config_value(config, key).is_none() {
                bail!(
                    "--only {key}=...: `{key}` is neither a grid key of {} ({}) nor a training option; check its spelling",
                    path.display(),
                    grid.join(", ")
                );
            }
        }
        Ok(())
    }

    fn keep(&self, values: &[(String, String)], config: &TrainConfig) -> bool {
        self.0.iter().all(|(key, wanted)| {
            cell_value(values, config, key).is_some_and(|v| wanted.contains(&v))
        })
    }
}

/// A cell's value for `key`: its grid value, else its resolved config's (dotted keys reach
/// `[noise_scheduler]`), as names and filters write it.
fn cell_value(values: &[(String, String)], config: &TrainConfig, key: &str) -> Option<String> {
    if let Some((_, v)) = values.iter().find(|(k, _)| k == key) {
        return Some(v.clone());
    }
    config_value(config, key)
}

fn config_value(config: &TrainConfig, key: &str) -> Option<String> {
    let table = toml::Table::try_from(config).ok()?;
    let mut current = &table;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = current.get(part)?;
        if parts.peek().is_none() {
            return Some(show_value(value));
        }
        current = value.as_table()?;
    }
    None
}

/// `key=value, ...` of a cell's grid values.
pub fn describe(values: &[(String, String)]) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const SWEEP: &str = "[base]\nepochs = 2\nlr = 0.1\n[grid]\nmodel = ['baby-cnn', 'tiny-cnn']\noptimizer = ['sgd', 'adam']\nlr = [0.1, 0.01]\n'noise_scheduler.flag_window' = [5]\n";

    #[test]
    fn sweeps_pinning_cells_at_the_same_moment_keep_each_others() {
        let (dir, path) = write(SWEEP);
        let out = dir.path().join("out");
        let sweep = Sweep::load(&path, &SweepOverrides::default()).unwrap();
        std::thread::scope(|scope| {
            for cell in &sweep.cells {
                let one = Sweep {
                    file: sweep.file.clone(),
                    out: out.clone(),
                    cells: vec![cell.clone()],
                };
                scope.spawn(move || {
                    for _ in 0..20 {
                        one.write_cells().unwrap();
                    }
                });
            }
        });
        let pinned: Vec<usize> = read_cells(&out).unwrap().iter().map(|c| c.index).collect();
        assert_eq!(pinned, (0..sweep.cells.len()).collect::<Vec<_>>());
    }

    #[test]
    fn grid_is_the_product_in_file_order() {
        let (_d, path) = write(SWEEP);
        let sweep = Sweep::load(&path, &SweepOverrides::default()).unwrap();
        assert_eq!(sweep.cells.len(), 8);
        assert_eq!(sweep.cells[0].name, "baby-cnn-sgd-lr0.1-flagwindow5");
        assert_eq!(sweep.cells[1].name, "baby-cnn-sgd-lr0.01-flagwindow5");
        assert_eq!(sweep.cells[7].name, "tiny-cnn-adam-lr0.01-flagwindow5");
        assert_eq!(sweep.cells[7].config.noise_scheduler.flag_window, 5);
        assert_eq!(sweep.cells[3].config.epochs, 2);
        assert_eq!(sweep.out, PathBuf::from("sweeps/s"));
    }

    #[test]
    fn overrides_and_filters() {
        let (_d, path) = write(SWEEP);
        let o = SweepOverrides {
            base: BaseOverrides {
                set: vec!["epochs=7".into(), "noise_scheduler.sigma_max=0.1".into()],
                ..Default::default()
            },
            only: vec!["optimizer=adam".into(), "lr=0.01".into()],
            out: Some("elsewhere".into()),
        };
        let sweep = Sweep::load(&path, &o).unwrap();
        assert_eq!(
            sweep.cells.iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![3, 7]
        );
        assert!(
            sweep
                .cells
                .iter()
                .all(|c| c.config.epochs == 7 && c.config.noise_scheduler.sigma_max == 0.1)
        );
        assert_eq!(sweep.out, PathBuf::from("elsewhere"));
    }

    #[test]
    fn bad_sweeps_are_explained() {
        let (_d, path) =
            write("[grid]\nmodel = ['baby-cnn', 'vgg']\noptimizer = ['sgd']\nlr = [0.1]\n");
        let err = format!(
            "{:#}",
            Sweep::load(&path, &SweepOverrides::default()).unwrap_err()
        );
        assert!(err.contains("model=vgg"), "{err}");
        let (_d, path) = write("[grid]\nmodel = []\n");
        assert!(Sweep::load(&path, &SweepOverrides::default()).is_err());
        let (_d, path) = write(SWEEP);
        let o = SweepOverrides {
            only: vec!["model=resnet18".into()],
            ..Default::default()
        };
        assert!(format!("{:#}", Sweep::load(&path, &o).unwrap_err()).contains("no cell left"));
    }

    #[test]
    fn linked_values_set_several_options() {
        let (_d, path) = write(
            "[grid]\nmodel = ['baby-cnn']\nsetting = [{optimizer = 'sgd', lr = 0.05}, {optimizer = 'adam', lr = 0.001}]\n",
        );
        let sweep = Sweep::load(&path, &SweepOverrides::default()).unwrap();
        assert_eq!(sweep.cells.len(), 2);
        assert_eq!(sweep.cells[1].name, "baby-cnn-adam-lr0.001");
        assert_eq!(sweep.cells[1].config.lr, 0.001);
        let o = SweepOverrides {
            only: vec!["optimizer=sgd".into()],
            ..Default::default()
        };
        let only = Sweep::load(&path, &o).unwrap();
        assert_eq!(only.cells.len(), 1);
        assert_eq!(only.cells[0].config.lr, 0.05);
    }

    #[test]
    fn assignments_read_toml_values() {
        assert_eq!(
            parse_assignment("lr=1e-3").unwrap().1,
            toml::Value::Float(1e-3)
        );
        assert_eq!(
            parse_assignment("model=tiny-cnn").unwrap().1,
            toml::Value::String("tiny-cnn".into())
        );
        assert!(parse_assignment("nothing").is_err());
    }
}
