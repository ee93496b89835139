//! Sweeps as Slurm job arrays, against a real Slurm (`ci/slurm-up.sh` starts a
//! single-node cluster; `.ci/run` installs and starts it). Where no cluster is
//! up, the tests say so and skip, unless ADANOISE_REQUIRE_SLURM=1 makes that a
//! failure (CI sets it).

mod common;

use adanoise::data::synthetic::write_binary_release;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn slurm_up() -> bool {
    let up = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .any(|s| ["idle", "mixed", "allocated"].contains(&s))
        });
    if !up {
        assert!(
            std::env::var("ADANOISE_REQUIRE_SLURM").is_err(),
            "ADANOISE_REQUIRE_SLURM is set but no Slurm node is up (run ci/slurm-up.sh as root)"
        );
        eprintln!(
            "SKIPPED: no Slurm cluster is up here (install slurm-wlm and munge, then run ci/slurm-up.sh as root)"
        );
    }
    up
}

use common::{adanoise, metrics_epochs as epochs};

fn ok(o: Output) -> String {
    common::ok(&o)
}

fn sweep(root: &Path, base: &str, grid: &str) -> (PathBuf, PathBuf) {
    let file = root.join("sweep.toml");
    let out = root.join("out");
    std::fs::write(
        &file,
        format!(
            "out = '{}'\n[base]\n{base}\ndata_dir = '{}'\n[grid]\n{grid}",
            out.display(),
            root.join("data").display()
        ),
    )
    .unwrap();
    (file, out)
}

fn job_id(submit_stdout: &str) -> String {
    submit_stdout
        .split_whitespace()
        .skip_while(|w| *w != "array")
        .nth(1)
        .unwrap_or_else(|| panic!("no job id in: {submit_stdout}"))
        .to_string()
}

/// Waits until no task of `job` is left in the queue.
fn wait_for(job: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let o = Command::new("squeue")
            .args(["-h", "-r", "-j", job, "-o", "%i %T"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        if text.trim().is_empty() {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "job {job} still queued after {limit:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_sweep_runs_as_a_job_array_and_reports_every_cell() {
    if !slurm_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    write_binary_release(&tmp.path().join("data"), 100, 40, 3).unwrap();
    let (file, out) = sweep(
        tmp.path(),
        "model = 'baby-cnn'\nepochs = 2\nbatch_size = 50\nlr = 0.01",
        "optimizer = ['sgd', 'adam']\nnoise = ['none', 'gaussian']\n",
    );
    let f = file.to_str().unwrap();
    let dry = ok(adanoise(&[
        "sweep",
        f,
        "--slurm",
        "--dry-run",
        "--array-parallelism",
        "2",
    ]));
    assert!(dry.contains("#SBATCH --array=0-3%2"), "{dry}");
    let submitted = ok(adanoise(&[
        "sweep",
        f,
        "--slurm",
        "--array-parallelism",
        "2",
        "--cpus-per-task",
        "1",
        "--time",
        "00:10:00",
    ]));
    let job = job_id(&submitted);
    let list = ok(adanoise(&["sweep", f, "--list"]));
    assert!(
        list.contains(&format!("{job}_0")) && list.contains(&format!("{job}_3")),
        "{list}"
    );
    wait_for(&job, Duration::from_secs(300));
    let list = ok(adanoise(&["sweep", f, "--list"]));
    assert_eq!(list.matches(" done ").count(), 4, "{list}");
    for dir in ["sgd-none", "adam-gaussian"] {
        assert_eq!(epochs(&out.join(dir)), vec![1, 2]);
    }
    let report = ok(adanoise(&["report", out.to_str().unwrap()]));
    assert_eq!(report.matches("| baby-cnn |").count(), 4, "{report}");
    // Nothing left: a second submission submits nothing.
    let again = ok(adanoise(&["sweep", f, "--slurm"]));
    assert!(again.contains("nothing to submit"), "{again}");
}

/// Lets a requeued task start now instead of after Slurm's begin-time delay: once it has
/// been requeued `restarts` times and waits again, its start time moves to now.
fn release(task: &str, restarts: u32) {
    let started = Instant::now();
    loop {
        let o = Command::new("scontrol")
            .args(["show", "job", task])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or("")
                .to_string()
        };
        let (state, count) = (
            field("JobState"),
            field("Restarts").parse::<u32>().unwrap_or(0),
        );
        if count >= restarts {
            if state == "RUNNING" || state == "COMPLETED" {
                return;
            }
            if state == "PENDING" {
                let arg = format!("jobid={task}");
                let o = Command::new("scontrol")
                    .args(["update", &arg, "StartTime=now"])
                    .output()
                    .unwrap();
                if o.status.success() {
                    return;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{task}: {state}, {count} restarts"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_epochs(cell: &Path, n: usize) {
    let started = Instant::now();
    while epochs(cell).len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "epoch {n} not recorded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn slurm_logs(out: &Path) -> String {
    std::fs::read_dir(out.join("slurm"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

fn wait_for_restart(out: &Path, n: usize) {
    let started = Instant::now();
    while !slurm_logs(out).contains(&format!("restart {n}")) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the task did not start again: {}",
            slurm_logs(out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_stopped_or_requeued_task_resumes_its_cell_without_losing_or_repeating_an_epoch() {
    if !slurm_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    write_binary_release(&tmp.path().join("data"), 1200, 40, 3).unwrap();
    let (file, out) = sweep(
        tmp.path(),
        "model = 'tiny-cnn'\noptimizer = 'sgd-momentum'\nepochs = 3\nbatch_size = 16",
        "lr = [0.01]\n",
    );
    let f = file.to_str().unwrap();
    let job = job_id(&ok(adanoise(&[
        "sweep",
        f,
        "--slurm",
        "--cpus-per-task",
        "1",
    ])));
    let task = format!("{job}_0");
    let cell = out.join("lr0.01");

    // The time-limit path: SIGUSR1 to the batch script (what --signal=B:USR1@S sends), which
    // lets the cell checkpoint and requeues the task itself.
    wait_epochs(&cell, 1);
    let o = Command::new("scancel")
        .args(["--signal=USR1", "--batch", &task])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "scancel: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::thread::sleep(Duration::from_secs(1));
    release(&task, 1);
    wait_for_restart(&out, 1);

    // The preemption path: scontrol requeue (SIGTERM to the job, Slurm requeues it).
    wait_epochs(&cell, 2);
    let o = Command::new("scontrol")
        .args(["requeue", &task])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "scontrol requeue: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::thread::sleep(Duration::from_secs(1));
    release(&task, 2);
    wait_for_restart(&out, 2);

    wait_for(&job, Duration::from_secs(400));
    assert_eq!(
        epochs(&cell),
        vec![1, 2, 3],
        "a complete, gap-free metrics file"
    );
    let logs =
        slurm_logs(&out) + &std::fs::read_to_string(cell.join("train.log")).unwrap_or_default();
    assert!(
        logs.contains("resuming"),
        "the cell resumed from its checkpoint: {logs}"
    );
    let list = ok(adanoise(&["sweep", f, "--list"]));
    assert!(list.contains(" done "), "{list}");
}
