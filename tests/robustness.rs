//! What a hostile but realistic user does: two processes on one run, resuming on
//! other data, symbolic links in a sweep, the debris of a killed write, replays
//! past the schedule, copied checkpoints, out-of-range and wrong-typed options,
//! edited sweep files. Each must end in a clear error or be honoured.

mod common;

use adanoise::data::synthetic::write_binary_release;
use adanoise::events::Silent;
use adanoise::report::find_runs;
use adanoise::train::lock::RunLock;
use adanoise::train::{RunOptions, TrainConfig, train};
use common::{adanoise, metrics_epochs, ok};
use std::path::{Path, PathBuf};

fn data(root: &Path, name: &str, train: usize, seed: u64) -> PathBuf {
    let dir = root.join(name);
    write_binary_release(&dir, train, 40, seed).unwrap();
    dir
}

fn config(data: &Path, extra: &str) -> TrainConfig {
    common::config_from(
        "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.01\nepochs = 3\nbatch_size = 50\nseed = 1",
        data,
        extra,
    )
}

fn first_epoch_only() -> RunOptions {
    RunOptions {
        offline: true,
        stop_after: Some(1),
        ..Default::default()
    }
}

fn resume() -> RunOptions {
    RunOptions {
        offline: true,
        resume: true,
        ..Default::default()
    }
}

fn err_text(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected a failure: {o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_run_directory_has_one_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path(), "data", 100, 1);
    let out = tmp.path().join("run");
    train(&config(&d, ""), &out, &first_epoch_only()).unwrap();
    // Another process (here: this one) holds the run, as a running train or sweep would.
    let lock = RunLock::acquire(&out).unwrap();
    let o = adanoise(&[
        "train",
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--offline",
    ]);
    let err = err_text(&o);
    let pid = std::process::id().to_string();
    assert!(
        err.contains("is being trained by another process") && err.contains(&pid),
        "{err}"
    );
    let err = format!("{:#}", train(&config(&d, ""), &out, &resume()).unwrap_err());
    assert!(err.contains(&format!("PID {pid}")), "{err}");
    assert_eq!(metrics_epochs(&out), vec![1], "nothing was recorded twice");
    drop(lock);
    // Released: the resume goes through, and `--resume --out` alone reads the run's config.
    ok(&adanoise(&[
        "train",
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--offline",
    ]));
    assert_eq!(metrics_epochs(&out), vec![1, 2, 3]);
}

#[test]
fn resume_refuses_other_data_but_follows_a_moved_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let a = data(tmp.path(), "a", 100, 1);
    let b = data(tmp.path(), "b", 100, 2);
    let fewer = data(tmp.path(), "fewer", 90, 1);
    let out = tmp.path().join("run");
    train(&config(&a, ""), &out, &first_epoch_only()).unwrap();
    let before = std::fs::read_to_string(out.join("config.toml")).unwrap();
    for (other, what) in [
        (&b, "other contents"),
        (&fewer, "training images 100 -> 90"),
    ] {
        let err = format!(
            "{:#}",
            train(&config(other, ""), &out, &resume()).unwrap_err()
        );
        assert!(
            err.contains("trained on other data") && err.contains(what),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("config.toml")).unwrap(),
        before,
        "a refused resume must not rewrite the record of what the run trained on"
    );
    // The same images in another folder: resumes.
    let moved = tmp.path().join("moved");
    std::fs::rename(&a, &moved).unwrap();
    train(&config(&moved, ""), &out, &resume()).unwrap();
    assert_eq!(metrics_epochs(&out), vec![1, 2, 3]);
}

#[test]
fn a_removed_class_is_named_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    for split in ["train", "test"] {
        for (i, class) in ["ant", "bee", "cat"].iter().enumerate() {
            for k in 0..4 {
                let path = root.join(split).join(class).join(format!("{k}.png"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                image::RgbImage::from_fn(32, 32, |x, _| image::Rgb([i as u8 * 60, x as u8, k]))
                    .save(path)
                    .unwrap();
            }
        }
    }
    let out = tmp.path().join("run");
    let cfg = config(&root, "batch_size = 4");
    train(&cfg, &out, &first_epoch_only()).unwrap();
    for split in ["train", "test"] {
        std::fs::remove_dir_all(root.join(split).join("cat")).unwrap();
    }
    let err = format!("{:#}", train(&cfg, &out, &resume()).unwrap_err());
    assert!(
        err.contains("classes [ant, bee, cat] -> [ant, bee]"),
        "{err}"
    );
}

#[test]
fn reports_and_plots_stay_inside_their_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path(), "data", 100, 1);
    let sweep = tmp.path().join("sweep");
    let outside = tmp.path().join("outside-run");
    train(
        &config(&d, "epochs = 1"),
        &sweep.join("run"),
        &RunOptions::default(),
    )
    .unwrap();
    train(&config(&d, "epochs = 1"), &outside, &RunOptions::default()).unwrap();
    std::os::unix::fs::symlink(sweep.join("run"), sweep.join("link-to-run")).unwrap();
    std::os::unix::fs::symlink("..", sweep.join("up")).unwrap();
    std::os::unix::fs::symlink(&outside, sweep.join("link-outside")).unwrap();
    let runs = find_runs(&sweep, 4, &mut Silent).unwrap();
    assert_eq!(
        runs.len(),
        1,
        "{:?}",
        runs.iter().map(|r| &r.dir).collect::<Vec<_>>()
    );
    ok(&adanoise(&["plot", sweep.to_str().unwrap()]));
    assert!(sweep.join("run/figure1.png").is_file());
    assert!(
        !outside.join("figure1.png").exists(),
        "plot wrote outside the folder"
    );
    let md = ok(&adanoise(&["report", sweep.to_str().unwrap()]));
    assert!(md.contains("| baby-cnn | none | 0.01 |"), "{md}");
}

#[test]
fn leftovers_of_a_killed_write_are_cleaned_or_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path(), "data", 100, 1);
    // Killed during the very first write: a lock file and a temporary file, no config.
    let first = tmp.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join(".tmp-abc123"), b"half a config").unwrap();
    std::fs::write(first.join(".lock"), b"12345").unwrap();
    train(&config(&d, "epochs = 1"), &first, &RunOptions::default()).unwrap();
    assert!(!first.join(".tmp-abc123").exists());
    // Killed during a later write: the stray temporary file goes when the run is resumed.
    let out = tmp.path().join("run");
    train(&config(&d, ""), &out, &first_epoch_only()).unwrap();
    std::fs::write(out.join(".tmp-partial"), vec![0u8; 1000]).unwrap();
    train(&config(&d, ""), &out, &resume()).unwrap();
    assert!(!out.join(".tmp-partial").exists());
}

#[test]
fn a_copied_checkpoint_of_another_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path(), "data", 100, 1);
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    train(&config(&d, "seed = 1"), &one, &first_epoch_only()).unwrap();
    train(&config(&d, "seed = 2"), &two, &first_epoch_only()).unwrap();
    std::fs::copy(one.join("checkpoint.bin"), two.join("checkpoint.bin")).unwrap();
    let err = format!(
        "{:#}",
        train(&config(&d, "seed = 2"), &two, &resume()).unwrap_err()
    );
    assert!(err.contains("written by a run with seed 1"), "{err}");
}

#[test]
fn replays_and_schedules_refuse_what_they_cannot_compute() {
    let tmp = tempfile::tempdir().unwrap();
    let line = |e: u64, grad: f64| {
        format!(
            r#"{{"epoch": {e}, "train_loss": 1, "val_loss": 1, "grad_norm": {grad}, "weight_update": 0.1}}"#
        )
    };
    let stream = tmp.path().join("m.jsonl");
    let lines: Vec<String> = (1..=5).map(|e| line(e, 1.0)).collect();
    std::fs::write(&stream, lines.join("\n")).unwrap();
    let o = adanoise(&["noise-replay", stream.to_str().unwrap(), "--epochs", "4"]);
    assert!(err_text(&o).contains("epoch 5 is past the schedule length E_max = 4"));
    assert!(o.stdout.is_empty(), "nothing is printed before the error");
    ok(&adanoise(&[
        "noise-replay",
        stream.to_str().unwrap(),
        "--epochs",
        "5",
    ]));
    std::fs::write(&stream, [line(1, 1.0), line(2, -0.5)].join("\n")).unwrap();
    let o = adanoise(&["noise-replay", stream.to_str().unwrap()]);
    assert!(err_text(&o).contains("cannot be negative"));
    let o = adanoise(&[
        "lr-schedule",
        "--epochs",
        "4611686018427387904",
        "--steps-per-epoch",
        "8",
        "--lr-max",
        "0.1",
    ]);
    assert!(err_text(&o).contains("more steps than can be counted"));
}

#[test]
fn bad_options_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path(), "data", 100, 1);
    let dd = d.to_str().unwrap();
    let base = [
        "train",
        "--model",
        "baby-cnn",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--data-dir",
        dd,
    ];
    let o = adanoise(&[&base[..], &["--seed", "18446744073709551615"]].concat());
    let err = err_text(&o);
    assert!(
        err.contains("'--seed <SEED>'") && err.contains("out of range: it must be at most"),
        "{err}"
    );
    let o = adanoise(&[&base[..], &["--epochs", "18446744073709551615"]].concat());
    let err = err_text(&o);
    assert!(
        err.contains("'--epochs <EPOCHS>'") && err.contains("out of range"),
        "{err}"
    );
    let file = tmp.path().join("c.toml");
    std::fs::write(
        &file,
        "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = \"0.05\"\n",
    )
    .unwrap();
    let o = adanoise(&[
        "train",
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        dd,
    ]);
    let err = err_text(&o);
    assert!(err.contains("`lr` is invalid"), "{err}");
    assert!(!err.contains("are required"), "{err}");
    let o = adanoise(&[
        "train",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--data-dir",
        dd,
    ]);
    let err = err_text(&o);
    assert!(err.contains("model is required: pass --model"), "{err}");
    let file_out = tmp.path().join("a-file");
    std::fs::write(&file_out, b"x").unwrap();
    let o = adanoise(
        &[
            &base[..],
            &["--out", file_out.to_str().unwrap(), "--offline"],
        ]
        .concat(),
    );
    let err = err_text(&o);
    assert!(
        err.contains(&format!("--out {} is a file", file_out.display())),
        "{err}"
    );
}

#[test]
fn a_divergence_from_noise_blames_the_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path(), "data", 100, 1);
    let cfg = config(
        &d,
        "epochs = 4\nnoise = 'gaussian'\n[noise_scheduler]\nmin_epochs_before_flag = 0\nflag_window = 1\n\
         grad_plateau = 0.9\nlow_weight_update = 0.5\nsigma_max = 1e30\nsigma_min = 1e29",
    );
    let err = format!(
        "{:#}",
        train(&cfg, &tmp.path().join("run"), &RunOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("diverged") && err.contains("this epoch had noise"),
        "{err}"
    );
    assert!(err.contains("try a lower --sigma-max"), "{err}");
}

fn sweep_file(root: &Path, data: &Path, grid: &str) -> PathBuf {
    let file = root.join("s.toml");
    std::fs::write(
        &file,
        format!(
            "out = '{}'\n[base]\nmodel = 'baby-cnn'\noptimizer = 'sgd'\nepochs = 1\nbatch_size = 50\nthreads = 1\ndata_dir = '{}'\n[grid]\n{grid}",
            root.join("out").display(),
            data.display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn sweeps_honour_their_threads_and_refuse_an_edited_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path(), "data", 100, 1);
    let file = sweep_file(tmp.path(), &d, "lr = [0.1, 0.01]\n");
    let f = file.to_str().unwrap();
    ok(&adanoise(&["sweep", f, "--workers", "1"]));
    let cell = tmp.path().join("out/lr0.1");
    let stored = std::fs::read_to_string(cell.join("config.toml")).unwrap();
    assert!(stored.contains("threads = 1"), "{stored}");
    // The grid changes: cell 0 is now another cell than the pinned one.
    sweep_file(tmp.path(), &d, "lr = [0.5, 0.1, 0.01]\n");
    let o = adanoise(&["sweep", f, "--cell", "0"]);
    let err = err_text(&o);
    assert!(
        err.contains("pinned") && err.contains("'lr0.1'") && err.contains("'lr0.5'"),
        "{err}"
    );
    // The pinned cell on request (as job arrays submitted before the edit do): done already.
    ok(&adanoise(&["sweep", f, "--cell", "0", "--pinned"]));
}
