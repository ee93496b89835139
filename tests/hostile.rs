//! More of what a hostile but realistic user does, on the newer surfaces: deleting a
//! run's lock file mid-run, a policy that injects nothing, one TensorBoard folder for two
//! runs, reports of a crashed run, a second Ctrl-C, options that are checked only after
//! something was written, a checkpoint that cannot be written, and the progress a long
//! run and a sweep show. Each ends in a clear error that changes nothing, or is honoured.

mod common;

use adanoise::data::synthetic::write_binary_release;
use common::{adanoise, metrics_epochs, ok};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn data(root: &Path) -> PathBuf {
    let dir = root.join("data");
    write_binary_release(&dir, 100, 40, 1).unwrap();
    dir
}

/// `train` words for a quick baby-cnn run of `epochs` epochs into `out`.
fn train_args(data: &Path, out: &Path, epochs: u32) -> Vec<String> {
    [
        "train",
        "--model",
        "baby-cnn",
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--batch-size",
        "10",
        "--threads",
        "1",
        "--offline",
        "--epochs",
        &epochs.to_string(),
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_adanoise"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `run` has recorded `epochs` epochs.
fn wait_for_epochs(run: &Path, epochs: usize) {
    let started = Instant::now();
    while metrics_epochs(run).len() < epochs {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run did not get to epoch {epochs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
}

fn failure(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected a failure: {o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_deleted_lock_file_does_not_let_a_second_process_in() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let run = tmp.path().join("run");
    let mut first = spawn(&train_args(&d, &run, 1000));
    wait_for_epochs(&run, 1);
    // It stays in every run, so it looks stale: the user deletes it.
    std::fs::remove_file(run.join(".lock")).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let mut resume = train_args(&d, &run, 1000);
    resume.push("--resume".into());
    let err = failure(&adanoise(&resume));
    assert!(err.contains("being trained by another process"), "{err}");
    assert!(
        err.contains(&first.id().to_string()),
        "names the holder: {err}"
    );
    signal(&first, libc::SIGTERM);
    assert_eq!(first.wait().unwrap().code(), Some(75));
    // The first process checkpointed normally, and the run goes on from there.
    let done = metrics_epochs(&run).len();
    let second = spawn(&resume);
    wait_for_epochs(&run, done + 1);
    signal(&second, libc::SIGTERM);
    let o = second.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_live_writers_temporary_file_is_never_removed_as_stray() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let run = tmp.path().join("run");
    let mut first = spawn(&train_args(&d, &run, 1000));
    wait_for_epochs(&run, 1);
    signal(&first, libc::SIGTERM);
    assert_eq!(first.wait().unwrap().code(), Some(75));
    // One of this (live) process, one of a process that no longer exists.
    let live = run.join(format!(".tmp-{}-checkpoint", std::process::id()));
    let dead = run.join(".tmp-999999999-checkpoint");
    std::fs::write(&live, b"being written").unwrap();
    std::fs::write(&dead, b"left by a kill").unwrap();
    let mut resume = train_args(&d, &run, 1000);
    resume.push("--resume".into());
    let second = spawn(&resume);
    let done = metrics_epochs(&run).len();
    wait_for_epochs(&run, done + 1);
    signal(&second, libc::SIGTERM);
    assert_eq!(second.wait_with_output().unwrap().status.code(), Some(75));
    assert!(live.exists(), "a live writer's file was removed");
    assert!(!dead.exists(), "a dead writer's file stayed");
}

#[test]
fn a_policy_that_would_inject_nothing_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let run = tmp.path().join("run");
    let mut args = train_args(&d, &run, 1);
    args.extend(["--noise-policy", "constant", "--noise-sigma", "0.5"].map(String::from));
    let err = failure(&adanoise(&args));
    assert!(err.contains("--noise gaussian"), "{err}");
    assert!(!run.exists(), "the refused run left a directory");
    let mut args = train_args(&d, &run, 1);
    args.extend(["--noise", "gaussian", "--noise-policy", "annealed"].map(String::from));
    args.extend(["--anneal-eta", "0"].map(String::from));
    assert!(failure(&adanoise(&args)).contains("--anneal-eta 0"));
}

#[test]
fn two_runs_logging_to_one_tensorboard_folder_stay_two_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let tb = tmp.path().join("tb");
    for name in ["a", "b"] {
        let mut args = train_args(&d, &tmp.path().join(name), 1);
        args.extend(["--tensorboard".into(), tb.display().to_string()]);
        ok(&adanoise(&args));
    }
    for name in ["a", "b"] {
        let files: Vec<_> = std::fs::read_dir(tb.join(name)).unwrap().collect();
        assert_eq!(files.len(), 1, "{name} has its own event file");
    }
    // A file given as the folder is refused before the run directory is made.
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let run = tmp.path().join("c");
    let mut args = train_args(&d, &run, 1);
    args.extend(["--tensorboard".into(), file.display().to_string()]);
    let err = failure(&adanoise(&args));
    assert!(err.contains("--tensorboard"), "{err}");
    assert!(!run.exists(), "the corrected command would be refused");
    let mut args = train_args(&d, &run, 1);
    args.extend(["--tensorboard", "tb", "--tensorboard-every", "0"].map(String::from));
    assert!(failure(&adanoise(&args)).contains("--tensorboard-every"));
}

#[test]
fn reports_and_plots_read_every_complete_epoch_of_a_crashed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let run = tmp.path().join("runs/crashed");
    ok(&adanoise(&train_args(&d, &run, 2)));
    // A kill while the third line was appended.
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"epoch\": 3, \"train_lo");
    std::fs::write(&metrics, text).unwrap();
    let runs = tmp.path().join("runs");
    let o = adanoise(&["report", runs.to_str().unwrap()]);
    let report = ok(&o);
    assert!(report.contains("baby-cnn"), "{report}");
    let warning = String::from_utf8_lossy(&o.stderr);
    assert!(
        warning.contains("half written") && warning.contains("2 complete epochs"),
        "{warning}"
    );
    let plotted = ok(&adanoise(&["plot", run.to_str().unwrap()]));
    assert!(plotted.contains("figure1"), "{plotted}");
}

/// The `.tmp-*` files in `run`: a checkpoint or record being written.
fn temporaries(run: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(run)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    // The second Ctrl-C must land while the checkpoint asked for by the first is being
    // written. How long that write takes depends on the machine, so each attempt waits
    // for the checkpoint's temporary file to appear, and a write that finished before the
    // signal arrived (exit 75, checkpoint complete) is tried again in a fresh run.
    for attempt in 0..8 {
        let run = tmp.path().join(format!("run-{attempt}"));
        // simple-cnn: the largest checkpoint of the four models, so the slowest to write.
        let mut args = train_args(&d, &run, 1000);
        args[2] = "simple-cnn".into();
        let mut child = spawn(&args);
        wait_for_epochs(&run, 1);
        signal(&child, libc::SIGINT);
        let started = Instant::now();
        while temporaries(&run).is_empty() && child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no checkpoint was written"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        signal(&child, libc::SIGINT);
        let o = child.wait_with_output().unwrap();
        if o.status.code() == Some(75) {
            continue;
        }
        assert_eq!(o.status.code(), Some(130), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("interrupted again"), "{err}");
        let stray = temporaries(&run);
        assert!(stray.is_empty(), "left {stray:?}");
        return;
    }
    panic!("in 8 runs, a second Ctrl-C during a checkpoint write never exited at once");
}

#[test]
fn a_checkpoint_that_cannot_be_written_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let run = tmp.path().join("run");
    let child = spawn(&train_args(&d, &run, 1000));
    wait_for_epochs(&run, 1);
    // The next checkpoint cannot replace the file (as on a full disk, the write fails).
    let checkpoint = run.join("checkpoint.bin");
    loop {
        let _ = std::fs::remove_file(&checkpoint);
        if std::fs::create_dir(&checkpoint).is_ok() {
            break;
        }
    }
    std::fs::write(checkpoint.join("keep"), b"x").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("could not write the checkpoint") && err.contains("--resume"),
        "{err}"
    );
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    assert!(
        summary.contains("could not write the checkpoint"),
        "{summary}"
    );
}

#[test]
fn a_long_run_and_a_sweep_say_how_long_they_have_left() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let out = ok(&adanoise(&train_args(&d, &tmp.path().join("run"), 3)));
    assert!(out.contains("epoch 1/3") && out.contains("left"), "{out}");
    assert!(out.contains("| run "), "{out}");
    let file = tmp.path().join("s.toml");
    std::fs::write(
        &file,
        format!(
            "out = '{}'\n[base]\nmodel = 'baby-cnn'\noptimizer = 'sgd'\nepochs = 1\nbatch_size = 50\ndata_dir = '{}'\n[grid]\nlr = [0.1, 0.01]\n",
            tmp.path().join("sweep").display(),
            d.display()
        ),
    )
    .unwrap();
    let out = ok(&adanoise(&["sweep", file.to_str().unwrap()]));
    assert!(out.contains("[sweep: 1/2 cells done"), "{out}");
    assert!(out.contains("[sweep: 2/2 cells done"), "{out}");
    assert!(
        out.contains("left]"),
        "an estimate after the first cell: {out}"
    );
}

#[test]
fn a_signal_to_the_sweep_alone_stops_its_cells_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let file = tmp.path().join("s.toml");
    let out = tmp.path().join("sweep");
    std::fs::write(
        &file,
        format!(
            "out = '{}'\n[base]\nmodel = 'baby-cnn'\noptimizer = 'sgd'\nepochs = 1000\nbatch_size = 10\ndata_dir = '{}'\n[grid]\nlr = [0.1]\n",
            out.display(),
            d.display()
        ),
    )
    .unwrap();
    let sweep = spawn(&["sweep".to_string(), file.display().to_string()]);
    wait_for_epochs(&out.join("lr0.1"), 1);
    // `kill PID` of the sweep process only, not of its process group as Ctrl-C would.
    signal(&sweep, libc::SIGTERM);
    let o = sweep.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = std::fs::read_to_string(out.join("lr0.1/summary.json")).unwrap();
    assert!(summary.contains("\"running\""), "{summary}");
    assert!(out.join("lr0.1/checkpoint.bin").exists());
}
