//! Every command-line override of `adanoise sweep` reaches the cells it runs: in the
//! sweep's own worker processes, in a `--cell` command and in a Slurm task's script, while
//! a sweep file really edited since its cells were pinned is still refused.

mod common;

use adanoise::data::synthetic::write_binary_release;
use common::{adanoise, ok};
use std::path::{Path, PathBuf};

/// A 2-cell sweep file whose `[base]` names no data folder and whose `out` is `file_out`:
/// only the command line says where the data is.
fn sweep_without_data(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = root.join("images");
    write_binary_release(&data, 60, 20, 3).unwrap();
    let file = root.join("grid.toml");
    let file_out = root.join("file-out");
    std::fs::write(
        &file,
        format!(
            "out = '{}'\n[base]\nmodel = 'baby-cnn'\noptimizer = 'sgd'\nepochs = 2\nbatch_size = 30\n\
             [grid]\nlr = [0.01, 0.001]\n",
            file_out.display()
        ),
    )
    .unwrap();
    (file, data, file_out)
}

fn config_of(cell: &Path) -> toml::Table {
    std::fs::read_to_string(cell.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap()
}

fn args<'a>(file: &'a Path, rest: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["sweep", file.to_str().unwrap()];
    all.extend_from_slice(rest);
    all
}

#[test]
fn data_dir_out_set_and_device_reach_every_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, data, file_out) = sweep_without_data(tmp.path());
    let out = tmp.path().join("elsewhere");
    let run = ok(&adanoise(&args(
        &file,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "epochs=1",
            "--device",
            "cpu",
            "--workers",
            "2",
        ],
    )));
    assert!(run.contains("2 finished now, 0 failed"), "{run}");
    assert!(!file_out.exists(), "--out was ignored");
    for name in ["lr0.01", "lr0.001"] {
        let config = config_of(&out.join(name));
        assert_eq!(config["data_dir"].as_str(), data.to_str());
        assert_eq!(config["epochs"].as_integer(), Some(1), "--set was ignored");
        assert_eq!(config["device"].as_str(), Some("cpu"));
        let summary = std::fs::read_to_string(out.join(name).join("summary.json")).unwrap();
        assert!(summary.contains("\"finished\""), "{summary}");
    }
}

#[test]
fn only_and_threads_reach_the_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, data, file_out) = sweep_without_data(tmp.path());
    let data = data.to_str().unwrap();
    let run = ok(&adanoise(&args(
        &file,
        &["--data-dir", data, "--only", "lr=0.001", "--threads", "1"],
    )));
    assert!(run.contains("1 finished now, 0 failed"), "{run}");
    assert!(!file_out.join("lr0.01").exists(), "--only was ignored");
    assert_eq!(
        config_of(&file_out.join("lr0.001"))["threads"].as_integer(),
        Some(1)
    );
}

#[test]
fn a_cell_command_resolves_the_file_as_it_was_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, data, file_out) = sweep_without_data(tmp.path());
    let data = data.to_str().unwrap();
    // Pins the cells (with the data folder and a shorter run) without running any.
    ok(&adanoise(&args(
        &file,
        &[
            "--data-dir",
            data,
            "--set",
            "epochs=1",
            "--slurm",
            "--dry-run",
        ],
    )));
    // Without the options: they are taken from the pinned cell.
    ok(&adanoise(&args(&file, &["--cell", "0"])));
    assert_eq!(
        config_of(&file_out.join("lr0.01"))["epochs"].as_integer(),
        Some(1)
    );
    // With them again: the same cell.
    ok(&adanoise(&args(
        &file,
        &["--cell", "1", "--data-dir", data, "--set", "epochs=1"],
    )));
    assert_eq!(
        config_of(&file_out.join("lr0.001"))["data_dir"].as_str(),
        Some(data)
    );

    // An option that changes what the cell computes makes it another cell: refused, naming it.
    let o = adanoise(&args(&file, &["--cell", "0", "--set", "epochs=3"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("epochs: 1 -> 3"), "{err}");

    // A real edit of the file since pinning is still caught, and says what changed.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("lr = [0.01, 0.001]", "lr = [0.05, 0.001]");
    std::fs::write(&file, text).unwrap();
    let o = adanoise(&args(&file, &["--cell", "0"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("file changed since the cells were pinned"),
        "{err}"
    );
    assert!(err.contains("lr: 0.01 -> 0.05"), "{err}");
    // --pinned runs the pinned cell, and refuses options that would change it.
    let o = adanoise(&args(
        &file,
        &["--cell", "0", "--pinned", "--set", "lr=0.5"],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--set lr=0.5"), "{err}");
    ok(&adanoise(&args(&file, &["--cell", "0", "--pinned"])));
}

#[test]
fn slurm_tasks_get_threads_and_tensorboard() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, data, _) = sweep_without_data(tmp.path());
    let tb = tmp.path().join("tb");
    let o = adanoise(&args(
        &file,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--slurm",
            "--dry-run",
            "--threads",
            "3",
            "--tensorboard",
            tb.to_str().unwrap(),
            "--tensorboard-every",
            "5",
        ],
    ));
    let script = ok(&o);
    assert!(script.contains("--pinned"), "{script}");
    assert!(script.contains("--threads 3"), "{script}");
    assert!(
        script.contains(&format!(
            "--tensorboard {} --tensorboard-every 5",
            tb.display()
        )),
        "{script}"
    );
}
