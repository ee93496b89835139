//! Running a sweep on a Slurm cluster: one job-array task per cell that is not
//! done, mapped to cells through a task list written at submission (so a later
//! edit of the sweep file cannot shuffle them), with a signal before the time
//! limit and requeueing, so that a cell stopped by the limit, preemption or
//! `scontrol requeue` checkpoints and later resumes where it stopped.

use super::cell_state::{CellState, cell_status};
use super::sweep::Sweep;
use crate::fsio::write_atomic;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder of a sweep's Slurm scripts, task lists and task output.
pub const SLURM_DIR: &str = "slurm";
/// The record of a sweep's submitted job arrays.
pub const SUBMISSIONS_FILE: &str = "submissions.json";

/// What `--slurm` asks of Slurm.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// The partition (`--partition`).
    pub partition: Option<String>,
    /// GPUs per array task.
    pub gpus_per_task: Option<u32>,
    /// CPUs per array task, also the cell's thread count.
    pub cpus_per_task: Option<u32>,
    /// `HH:MM:SS` (or any time format sbatch takes).
    pub time: Option<String>,
    /// At most this many array tasks at once (`%N`).
    pub array_parallelism: Option<u32>,
    /// Passed to sbatch as `#SBATCH ARG` lines.
    pub sbatch_args: Vec<String>,
    /// Seconds before the time limit at which the cell is told to checkpoint and requeue.
    pub signal_grace_s: u32,
    /// Print the script instead of submitting it.
    pub dry_run: bool,
    /// Threads per cell, instead of the task's CPUs.
    pub threads: Option<usize>,
    /// Each cell's TensorBoard logging.
    pub logging: super::runner::CellLogging,
}

/// One submitted job array.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    /// Slurm's job id.
    pub job_id: String,
    /// The sbatch script submitted.
    pub script: PathBuf,
    /// The task list (array task i runs the cell on line i+1).
    pub tasks_file: PathBuf,
    /// Cell index of each array task, in task order.
    pub cells: Vec<usize>,
    /// When it was submitted (seconds since the Unix epoch).
    pub unix_time: u64,
}

/// Checks a time limit as sbatch's `--time` takes it (`MINUTES`, `MINUTES:SECONDS`,
/// `HOURS:MINUTES:SECONDS`, `DAYS-HOURS`, `DAYS-HOURS:MINUTES`,
/// `DAYS-HOURS:MINUTES:SECONDS`), so that a mistyped one is refused here rather than by
/// sbatch after the task list was written.
pub fn parse_time_limit(text: &str) -> Result<String, String> {
    time_limit_seconds(text)
        .map(|_| text.to_string())
        .ok_or_else(|| {
            format!(
                "'{text}' is not a Slurm time limit: write MINUTES, HH:MM:SS or D-HH:MM:SS (e.g. 25:00:00 or 1-01:00:00)"
            )
        })
}

/// The seconds of a Slurm time limit, `None` when it is not one.
pub fn time_limit_seconds(text: &str) -> Option<u64> {
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, text),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Option<_>>()?;
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return None,
    };
    (seconds > 0).then_some(seconds)
}

/// An `#SBATCH` option's value, in double quotes when it holds white space (sbatch splits
/// a directive's words at white space outside quotes) .
fn directive_value(value: &str) -> Result<String> {
    if value.contains(['"', '\n', '\r']) {
        bail!(
            "'{value}' cannot be written into an #SBATCH line (it holds a double quote or a line break): choose another --out"
        );
    }
    Ok(if value.contains(char::is_whitespace) {
        format!("\"{value}\"")
    } else {
        value.to_string()
    })
}

/// Quotes a path for a POSIX shell (paths cannot hold the NUL byte shells refuse).
fn sh_quote(path: &Path) -> Result<String> {
    let text = path.to_string_lossy();
    shlex::try_quote(&text)
        .map(|q| q.into_owned())
        .map_err(|e| {
            anyhow::anyhow!(
                "{} cannot be written into a shell script: {e}",
                path.display()
            )
        })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}

/// The sbatch script for `tasks` array tasks.
pub fn script(
    sweep: &Sweep,
    options: &SlurmOptions,
    tasks_file: &Path,
    tasks: usize,
    exe: &Path,
) -> Result<String> {
    let out = absolute(&sweep.out)?;
    let file = absolute(&sweep.file)?;
    let name: String = out
        .file_name()
        .map_or("sweep".into(), |n| n.to_string_lossy().into_owned());
    let mut s = String::from("#!/usr/bin/env bash\n");
    let mut directive = |line: String| {
        s.push_str("#SBATCH ");
        s.push_str(&line);
        s.push('\n');
    };
    directive(format!(
        "--job-name={}",
        directive_value(&format!("adanoise-{name}"))?
    ));
    let parallel = options
        .array_parallelism
        .map_or(String::new(), |n| format!("%{n}"));
    directive(format!("--array=0-{}{parallel}", tasks - 1));
    directive(format!(
        "--output={}",
        directive_value(&format!("{}/{SLURM_DIR}/%A_%a.out", out.display()))?
    ));
    directive("--open-mode=append".into());
    directive("--requeue".into());
    directive(format!("--signal=B:USR1@{}", options.signal_grace_s));
    directive(format!(
        "--cpus-per-task={}",
        options.cpus_per_task.unwrap_or(1)
    ));
    if let Some(p) = &options.partition {
        directive(format!("--partition={p}"));
    }
    if let Some(g) = options.gpus_per_task {
        directive(format!("--gpus-per-task={g}"));
    }
    if let Some(t) = &options.time {
        directive(format!("--time={t}"));
    }
    for arg in &options.sbatch_args {
        directive(arg.clone());
    }
    s.push_str(&format!(
        r#"# Written by adanoise {version} for {file}.
# Array task i runs the cell whose index is on line i+1 of the task list.
set -u
cell=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {tasks})
echo "[$(date -Is)] array task $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID, restart ${{SLURM_RESTART_COUNT:-0}}): cell $cell"
{exe} sweep {file} --cell "$cell" --pinned --out {out} --threads {threads}{logging} &
child=$!
# Before the time limit: the cell finishes its step, checkpoints and exits; then requeue this task.
trap 'kill -USR1 "$child" 2>/dev/null; wait "$child"; scontrol requeue "$SLURM_JOB_ID"; exit 0' USR1
# Preemption, scancel or scontrol requeue: Slurm signals the cell too; wait for its checkpoint.
trap 'wait "$child"; exit 143' TERM
wait "$child"
exit $?
"#,
        version = env!("CARGO_PKG_VERSION"),
        file = sh_quote(&file)?,
        tasks = sh_quote(&absolute(tasks_file)?)?,
        exe = sh_quote(exe)?,
        out = sh_quote(&out)?,
        threads = options
            .threads
            .map_or("\"${SLURM_CPUS_PER_TASK:-1}\"".to_string(), |n| n.to_string()),
        logging = logging_options(&options.logging)?,
    ));
    Ok(s)
}

/// The cell's logging options as script words, paths made absolute (a task may start
/// elsewhere).
fn logging_options(logging: &super::runner::CellLogging) -> Result<String> {
    let mut words = String::new();
    if let Some(dir) = &logging.tensorboard {
        words.push_str(&format!(" --tensorboard {}", sh_quote(&absolute(dir)?)?));
    }
    if let Some(every) = logging.tensorboard_every {
        words.push_str(&format!(" --tensorboard-every {every}"));
    }
    Ok(words)
}

/// What `submit` did.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Every cell is done: nothing was submitted.
    NothingToDo,
    /// `--dry-run`: the script and the task list were written, not submitted.
    DryRun {
        /// The script's text.
        script: String,
        /// Where it was written.
        script_file: PathBuf,
        /// The task list.
        tasks_file: PathBuf,
        /// Array tasks it would run.
        tasks: usize,
    },
    /// The job array was submitted.
    Submitted(Submission),
}

/// Writes the task list and the script for the cells not done, and submits it (or, with
/// `dry_run`, only writes them).
pub fn submit(sweep: &Sweep, options: &SlurmOptions) -> Result<Submitted> {
    check_signal_grace(options)?;
    super::runner::refuse_edited_cells(sweep)?;
    sweep.write_cells()?;
    let pending: Vec<usize> = sweep
        .cells
        .iter()
        .filter(|c| cell_status(&sweep.cell_dir(c), &c.config).state != CellState::Done)
        .map(|c| c.index)
        .collect();
    if pending.is_empty() {
        return Ok(Submitted::NothingToDo);
    }
    let dir = sweep.out.join(SLURM_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut n = 0;
    let (tasks_file, script_file) = loop {
        let suffix = if n == 0 {
            stamp.to_string()
        } else {
            format!("{stamp}-{n}")
        };
        let t = dir.join(format!("tasks-{suffix}.txt"));
        if !t.exists() {
            break (t, dir.join(format!("submit-{suffix}.sbatch")));
        }
        n += 1;
    };
    let exe = std::env::current_exe().context("could not find the adanoise executable")?;
    let text = script(sweep, options, &tasks_file, pending.len(), &exe)?;
    let list: String = pending.iter().map(|i| format!("{i}\n")).collect();
    write_atomic(&tasks_file, list.as_bytes())?;
    write_atomic(&script_file, text.as_bytes())?;
    if options.dry_run {
        return Ok(Submitted::DryRun {
            script: text,
            script_file,
            tasks_file,
            tasks: pending.len(),
        });
    }
    let output = Command::new("sbatch")
        .arg("--parsable")
        .arg(&script_file)
        .output()
        .context("could not run sbatch: is Slurm installed and on the PATH? (--dry-run writes the script without it)")?;
    if !output.status.success() {
        bail!(
            "sbatch refused the job array: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let job_id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if job_id.is_empty() {
        bail!("sbatch printed no job id (it said: {})", stdout.trim());
    }
    let submission = Submission {
        job_id,
        script: script_file,
        tasks_file,
        cells: pending,
        unix_time: stamp,
    };
    let mut all = read_submissions(&sweep.out);
    all.push(submission.clone());
    write_atomic(
        &dir.join(SUBMISSIONS_FILE),
        serde_json::to_string_pretty(&all)?.as_bytes(),
    )?;
    Ok(Submitted::Submitted(submission))
}

/// Refuses a signal grace that does not fit in the time limit: the cell would be told to
/// checkpoint before it started, or never.
fn check_signal_grace(options: &SlurmOptions) -> Result<()> {
    let Some(limit) = options.time.as_deref().and_then(time_limit_seconds) else {
        return Ok(());
    };
    let grace = u64::from(options.signal_grace_s);
    if grace >= limit {
        bail!(
            "--signal-grace {grace} s is not shorter than --time {} ({limit} s): a cell would be told to checkpoint before it could train; give a grace well below the limit (e.g. 120)",
            options.time.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

/// Every job array submitted for the sweep in `out`.
pub fn read_submissions(out: &Path) -> Vec<Submission> {
    std::fs::read_to_string(out.join(SLURM_DIR).join(SUBMISSIONS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// For each cell of a submitted sweep: its latest array task (`JOB_TASK`) and that task's
/// Slurm state (from squeue, else sacct; `-` when neither knows it).
pub fn cell_jobs(out: &Path) -> HashMap<usize, (String, String)> {
    let submissions = read_submissions(out);
    let mut tasks: HashMap<usize, String> = HashMap::new();
    for s in &submissions {
        for (task, cell) in s.cells.iter().enumerate() {
            tasks.insert(*cell, format!("{}_{task}", s.job_id));
        }
    }
    if tasks.is_empty() {
        return HashMap::new();
    }
    let jobs: Vec<&str> = submissions.iter().map(|s| s.job_id.as_str()).collect();
    let mut states: HashMap<String, String> = HashMap::new();
    let ids = jobs.join(",");
    if let Ok(o) = Command::new("sacct")
        .args(["-n", "-P", "-X", "-o", "JobID,State", "-j", &ids])
        .output()
        && o.status.success()
    {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some((id, state)) = line.split_once('|') {
                states.insert(
                    id.to_string(),
                    state.split_whitespace().next().unwrap_or(state).to_string(),
                );
            }
        }
    }
    // squeue is the live view: it wins over sacct for tasks it still knows.
    if let Ok(o) = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i|%T", "-j", &ids])
        .output()
        && o.status.success()
    {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some((id, state)) = line.split_once('|') {
                states.insert(id.to_string(), state.to_string());
            }
        }
    }
    tasks
        .into_iter()
        .map(|(cell, task)| {
            let state = states.get(&task).cloned().unwrap_or_else(|| "-".into());
            (cell, (task, state))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::SweepOverrides;

    #[test]
    fn script_maps_tasks_to_cells_and_asks_for_signal_and_requeue() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            format!(
                "out = '{}'\n[grid]\nmodel = ['baby-cnn']\noptimizer = ['sgd']\nlr = [0.1, 0.01]\n",
                dir.path().join("o").display()
            ),
        )
        .unwrap();
        let sweep = Sweep::load(&file, &SweepOverrides::default()).unwrap();
        let options = SlurmOptions {
            partition: Some("gpu".into()),
            gpus_per_task: Some(1),
            cpus_per_task: Some(8),
            time: Some("04:00:00".into()),
            array_parallelism: Some(3),
            sbatch_args: vec!["--account=lab".into()],
            signal_grace_s: 300,
            dry_run: true,
            threads: None,
            logging: crate::experiments::runner::CellLogging {
                tensorboard: Some("/tb dir".into()),
                tensorboard_every: Some(7),
            },
        };
        let text = script(
            &sweep,
            &options,
            Path::new("/x/tasks.txt"),
            2,
            Path::new("/bin/adanoise"),
        )
        .unwrap();
        for needle in [
            "#SBATCH --array=0-1%3",
            "#SBATCH --partition=gpu",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --time=04:00:00",
            "#SBATCH --requeue",
            "#SBATCH --signal=B:USR1@300",
            "#SBATCH --account=lab",
            "sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" /x/tasks.txt",
            "/bin/adanoise sweep",
            "--cell \"$cell\"",
            "--threads \"${SLURM_CPUS_PER_TASK:-1}\"",
            "--tensorboard '/tb dir' --tensorboard-every 7",
            "scontrol requeue",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let awkward = Path::new("/runs/it's a $HOME \"dir\"");
        let quoted = sh_quote(awkward).unwrap();
        assert_eq!(
            shlex::split(&quoted).unwrap(),
            vec![awkward.display().to_string()]
        );
    }

    #[test]
    fn dry_run_writes_the_task_list_of_pending_cells_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        let out = dir.path().join("o");
        std::fs::write(&file, format!("out = '{}'\n[grid]\nmodel = ['baby-cnn']\noptimizer = ['sgd']\nlr = [0.1, 0.01, 0.001]\n", out.display())).unwrap();
        let sweep = Sweep::load(&file, &SweepOverrides::default()).unwrap();
        let options = SlurmOptions {
            dry_run: true,
            signal_grace_s: 120,
            ..Default::default()
        };
        assert!(matches!(
            submit(&sweep, &options).unwrap(),
            Submitted::DryRun { tasks: 3, .. }
        ));
        let tasks: Vec<_> = std::fs::read_dir(out.join(SLURM_DIR))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("tasks-"))
            .collect();
        assert_eq!(tasks.len(), 1);
        assert_eq!(
            std::fs::read_to_string(tasks[0].path()).unwrap(),
            "0\n1\n2\n"
        );
    }
}
