//! Nothing a user does may silently change a result: an edited sweep file never passes its
//! old cells for its new ones, options that would change nothing (or something else than
//! they say) are refused, and the messages of refusals say what is wrong.

mod common;

use adanoise::data::synthetic::write_binary_release;
use common::{adanoise, ok};
use std::path::{Path, PathBuf};

/// A 2-cell sweep over `lr` of quick baby-cnn runs; `base` is the [base] table's extra lines.
fn sweep_file(root: &Path, base: &str) -> (PathBuf, PathBuf) {
    let data = root.join("data");
    if !data.exists() {
        write_binary_release(&data, 60, 20, 2).unwrap();
    }
    let file = root.join("grid.toml");
    let out = root.join("out");
    std::fs::write(
        &file,
        format!(
            "out = '{}'\n[base]\nmodel = 'baby-cnn'\noptimizer = 'sgd'\nbatch_size = 30\ndata_dir = '{}'\n{base}\n\
             [grid]\nlr = [0.05, 0.01]\nseed = [0]\n",
            out.display(),
            data.display()
        ),
    )
    .unwrap();
    (file, out)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fails(args: &[&str]) -> String {
    let o = adanoise(args);
    assert!(
        !o.status.success(),
        "{args:?} must fail; stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    stderr(&o)
}

#[test]
fn an_edited_sweep_file_never_passes_its_old_cells_for_new_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_file(tmp.path(), "epochs = 1");
    let f = file.to_str().unwrap();
    ok(&adanoise(&["sweep", f, "--workers", "2"]));
    // The file changes what its cells compute: their finished runs are not its cells.
    for edit in ["epochs = 2", "epochs = 1\nweight_decay = 0.001"] {
        sweep_file(tmp.path(), edit);
        let err = fails(&["sweep", f]);
        assert!(err.contains("2 of the 2 cells"), "{err}");
        assert!(
            err.contains("epochs: 1 -> 2") || err.contains("weight_decay: 0.0001 -> 0.001"),
            "{err}"
        );
        let list = ok(&adanoise(&["sweep", f, "--list"]));
        assert_eq!(list.matches("differs").count(), 2, "{list}");
        assert_eq!(list.matches(" done ").count(), 0, "{list}");
        let slurm = fails(&["sweep", f, "--slurm", "--dry-run"]);
        assert!(slurm.contains("another configuration"), "{slurm}");
    }
    // Where the data lives is not what a cell computes: a moved data folder is the same cell.
    sweep_file(tmp.path(), "epochs = 1");
    let moved = tmp.path().join("moved");
    std::fs::rename(tmp.path().join("data"), &moved).unwrap();
    let again = ok(&adanoise(&[
        "sweep",
        f,
        "--data-dir",
        moved.to_str().unwrap(),
    ]));
    assert!(again.contains("2 done before, 0 finished now"), "{again}");
    assert!(out.join("lr0.05-s0").join("summary.json").is_file());
}

#[test]
fn a_sweep_made_before_the_reading_was_recorded_is_refused_with_the_way_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_file(tmp.path(), "epochs = 1\nnoise = 'gaussian'");
    let f = file.to_str().unwrap();
    ok(&adanoise(&["sweep", f, "--only", "lr=0.05"]));
    // As an older version wrote it: no reading in the cell's config.
    let config = out.join("lr0.05-s0").join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("weight_noise_scale = \"relative\"\n", ""),
    )
    .unwrap();
    let err = fails(&["sweep", f]);
    assert!(err.contains("weight_noise_scale"), "{err}");
    assert!(
        err.contains("weight_noise_scale = \\\"absolute\\\"")
            || err.contains("weight_noise_scale = \"absolute\""),
        "{err}"
    );
    // Stating the old reading in the file goes on with the old cell (and the new one).
    sweep_file(
        tmp.path(),
        "epochs = 1\nnoise = 'gaussian'\nweight_noise_scale = 'absolute'",
    );
    let run = ok(&adanoise(&["sweep", f]));
    assert!(run.contains("1 done before, 1 finished now"), "{run}");
}

#[test]
fn sweep_options_that_would_change_nothing_or_something_else_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, _) = sweep_file(tmp.path(), "epochs = 1");
    let f = file.to_str().unwrap();
    // --set of a grid key: the grid sets it in every cell.
    for set in ["lr=0.2", "lr=fast", "seed=3"] {
        let err = fails(&["sweep", f, "--set", set, "--list"]);
        assert!(err.contains("set by the grid"), "{set}: {err}");
        assert!(err.contains("--only"), "{err}");
    }
    // A misspelled --only key.
    let err = fails(&["sweep", f, "--only", "learning_rate=0.05", "--list"]);
    assert!(
        err.contains("`learning_rate` is neither a grid key"),
        "{err}"
    );
    // A repeated --only key keeps either value; other keys still narrow.
    let list = ok(&adanoise(&[
        "sweep", f, "--only", "lr=0.05", "--only", "lr=0.01", "--list",
    ]));
    assert_eq!(list.matches("pending").count(), 2, "{list}");
    let list = ok(&adanoise(&[
        "sweep",
        f,
        "--only",
        "lr=0.05",
        "--only",
        "lr=0.01",
        "--only",
        "batch_size=30",
        "--only",
        "seed=0",
        "--list",
    ]));
    assert_eq!(list.matches("pending").count(), 2, "{list}");
    // Counts that must be at least 1.
    for args in [
        vec!["sweep", f, "--workers", "0"],
        vec!["sweep", f, "--threads", "0"],
        vec![
            "train",
            "--model",
            "baby-cnn",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--threads",
            "0",
        ],
        vec!["bench", "--model", "baby-cnn", "--grad-noise", "nan"],
        vec!["bench", "--model", "baby-cnn", "--grad-noise=-1"],
        vec!["bench", "--model", "baby-cnn", "--steps", "0"],
    ] {
        let err = fails(&args);
        assert!(
            err.contains("at least 1") || err.contains("must be a number from 0"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn slurm_options_are_checked_and_paths_with_spaces_are_quoted() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, _) = sweep_file(tmp.path(), "epochs = 1");
    let f = file.to_str().unwrap();
    let spaced = tmp.path().join("my sweeps/out one");
    let o = adanoise(&[
        "sweep",
        f,
        "--slurm",
        "--dry-run",
        "--out",
        spaced.to_str().unwrap(),
        "--time",
        "1-02:00:00",
    ]);
    let script = ok(&o);
    let output_line = script
        .lines()
        .find(|l| l.starts_with("#SBATCH --output="))
        .unwrap();
    assert_eq!(
        output_line,
        format!("#SBATCH --output=\"{}/slurm/%A_%a.out\"", spaced.display())
    );
    assert!(
        script.contains("#SBATCH --job-name=\"adanoise-out one\""),
        "{script}"
    );
    for (args, why) in [
        (vec!["--time", "25h"], "not a Slurm time limit"),
        (vec!["--cpus-per-task", "0"], "0 is not in 1.."),
        (vec!["--array-parallelism", "0"], "0 is not in 1.."),
        (vec!["--gpus-per-task", "0"], "0 is not in 1.."),
        (
            vec!["--time", "10", "--signal-grace", "600"],
            "not shorter than --time",
        ),
    ] {
        let mut all = vec!["sweep", f, "--slurm", "--dry-run"];
        all.extend(args.iter());
        let err = fails(&all);
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn refusals_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-run");
    let err = fails(&["train", "--resume", "--out", missing.to_str().unwrap()]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("required"), "{err}");
    std::fs::create_dir(&missing).unwrap();
    let err = fails(&["train", "--resume", "--out", missing.to_str().unwrap()]);
    assert!(err.contains("holds no run"), "{err}");
    // A wrongly typed named value names the choices.
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1\nnoise = 1\n",
    )
    .unwrap();
    let err = fails(&["train", "--config", config.to_str().unwrap(), "--offline"]);
    assert!(err.contains("none, gaussian, uniform"), "{err}");
    assert!(!err.contains("unit variant"), "{err}");
}

#[test]
fn reports_name_what_they_cannot_read_and_keep_tables_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_file(tmp.path(), "epochs = 2");
    ok(&adanoise(&[
        "sweep",
        file.to_str().unwrap(),
        "--only",
        "lr=0.05",
    ]));
    let run = out.join("lr0.05-s0");
    // A model name a user's own code recorded, with a line break and a pipe.
    let config = run.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "model = \"baby-cnn\"\n",
            "model = \"other\"\nmodel_name = \"my\\nnet | v2\"\n",
        ),
    )
    .unwrap();
    let md = ok(&adanoise(&["report", out.to_str().unwrap()]));
    let row = md
        .lines()
        .find(|l| l.contains("my net"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(row.starts_with("| my net \\| v2 | none |"), "{row}");
    // A metrics line that is not JSON (a NaN) is named, not taken for "no run".
    let metrics = run.join("metrics.jsonl");
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let first = lines.lines().next().unwrap().to_string();
    std::fs::write(
        &metrics,
        format!(
            "{}\n{}",
            first.replacen("\"train_loss\":", "\"train_loss\":NaN,\"x\":", 1),
            lines.lines().nth(1).unwrap()
        ),
    )
    .unwrap();
    let err = fails(&["report", out.to_str().unwrap()]);
    assert!(err.contains("metrics.jsonl line 1"), "{err}");
    let err = fails(&["plot", out.to_str().unwrap()]);
    assert!(err.contains("metrics.jsonl line 1"), "{err}");
}
