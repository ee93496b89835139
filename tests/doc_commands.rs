//! Every `adanoise` command line of README.md and docs/*.md, run as written, in the order
//! each file gives them, in a scratch folder per file (a file's commands build on each
//! other, as a reader runs them), so that a command added to the docs is tested without
//! anyone remembering to.
//!
//! What the scratch folder holds, and the only substitutions made:
//! - `data/`: a synthetic CIFAR-10 binary release (5,100 training and 20 test images), so
//!   the default `--data-dir data` and the `DATA` placeholder of the docs read it;
//! - `configs/`: copies of the repository's sweep files whose `[base]` also sets
//!   `epochs = 1` (2, and `shrink_every = 1`, where it sets `shrink_every`: shrink and
//!   perturb first acts at the second epoch) and `train_subset = 60`, and `tests/fixtures/`;
//! - `train` (not `--resume`) gets `--epochs 1` unless it gives `--epochs`, and
//!   `--train-subset 60` unless it gives one: every run is short (the commands' other
//!   options are kept as written);
//! - the `adanoise` of a command is this build's binary, and only the `adanoise` part of a
//!   line is run (what follows `&&`, `|` or `;` is another program, a `#` starts a comment).
//!
//! Commands that need what this machine may not have are listed in [`EXCEPTIONS`] with the
//! reason; each must still match a command of the docs, so that the list stays current.

use adanoise::data::synthetic::write_binary_release;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One command line of the docs.
#[derive(Debug, Clone)]
struct DocCommand {
    /// `docs/runs.md:5`.
    place: String,
    /// The words after `adanoise`.
    args: Vec<String>,
}

/// What is done instead of running a command as written, and why.
enum Instead {
    /// Run it with these words appended.
    Append(&'static [&'static str]),
}

/// Commands (matched by a substring of their words) that are changed, with the reason.
const EXCEPTIONS: &[(&str, Instead, &str)] = &[(
    "--slurm",
    Instead::Append(&["--dry-run"]),
    "a real submission needs the cluster the example names (its partition and GPUs); the script is written and checked",
)];

/// The documentation files, in the order their commands run.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    let mut files = vec![root.join("README.md")];
    files.extend(docs);
    files
}

/// The `adanoise` part of a shell line: up to a comment or the next command.
fn adanoise_part(line: &str) -> Option<Vec<String>> {
    let line = line.trim().trim_start_matches("$ ");
    let mut words = Vec::new();
    for word in shlex::split(line)? {
        if word.starts_with('#') || ["&&", "|", ";", "||"].contains(&word.as_str()) {
            break;
        }
        words.push(word);
    }
    let program = words.first()?;
    // `VAR=value program ...` runs another program.
    if program.contains('=') || (program != "adanoise" && !program.ends_with("/adanoise")) {
        return None;
    }
    Some(words.split_off(1))
}

/// Every command line in the code blocks (fenced, or indented by four spaces) of `file`,
/// with `\` continuations joined.
fn commands_in(file: &Path, root: &Path) -> Vec<DocCommand> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let name = file.strip_prefix(root).unwrap().display().to_string();
    let mut out = Vec::new();
    let mut fenced = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let number = i + 1;
        i += 1;
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !(fenced || line.starts_with("    ")) {
            continue;
        }
        let mut joined = line.trim().to_string();
        while joined.ends_with('\\') && i < lines.len() {
            joined.pop();
            joined.push(' ');
            joined.push_str(lines[i].trim());
            i += 1;
        }
        // A comment's text may quote a command: only the line's own command counts.
        let code = match joined.find(" #") {
            Some(at) => &joined[..at],
            None => joined.as_str(),
        };
        if let Some(args) = adanoise_part(code) {
            out.push(DocCommand {
                place: format!("{name}:{number}"),
                args,
            });
        }
    }
    out
}

/// The scratch folder the commands run in (see the module's documentation).
fn scratch(root: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_binary_release(&dir.path().join("data"), 5100, 20, 0).unwrap();
    let configs = dir.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    for entry in std::fs::read_dir(root.join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let mut file: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let base = file
            .entry("base")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
        // Shrink and perturb acts at the start of an epoch after the first: such a file
        // gets two epochs, shrinking once, at the second.
        let shrinks = base.contains_key("shrink_every");
        base.insert(
            "epochs".into(),
            toml::Value::Integer(if shrinks { 2 } else { 1 }),
        );
        if shrinks {
            base.insert("shrink_every".into(), toml::Value::Integer(1));
        }
        base.insert("train_subset".into(), toml::Value::Integer(60));
        std::fs::write(
            configs.join(path.file_name().unwrap()),
            toml::to_string(&file).unwrap(),
        )
        .unwrap();
    }
    let fixtures = dir.path().join("tests/fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    for entry in std::fs::read_dir(root.join("tests/fixtures")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, fixtures.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// The words actually run: placeholders and shortenings applied (module documentation).
fn as_run(command: &DocCommand) -> Vec<String> {
    let mut args: Vec<String> = command
        .args
        .iter()
        .map(|a| {
            if a == "DATA" {
                "data".into()
            } else {
                a.clone()
            }
        })
        .collect();
    let has = |args: &[String], flag: &str| args.iter().any(|a| a == flag);
    if args.first().is_some_and(|a| a == "train") && !has(&args, "--resume") {
        for (flag, value) in [("--epochs", "1"), ("--train-subset", "60")] {
            if !has(&args, flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
    }
    for (pattern, instead, _why) in EXCEPTIONS {
        if args.iter().any(|a| a.contains(pattern)) {
            match instead {
                Instead::Append(words) => args.extend(words.iter().map(|w| w.to_string())),
            }
        }
    }
    args
}

#[test]
fn every_command_in_the_docs_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: Vec<Vec<DocCommand>> = doc_files(root)
        .iter()
        .map(|f| commands_in(f, root))
        .collect();
    let commands: Vec<DocCommand> = files.iter().flatten().cloned().collect();
    assert!(commands.len() > 10, "found only {commands:?}");
    for (pattern, _, why) in EXCEPTIONS {
        assert!(
            commands
                .iter()
                .any(|c| c.args.iter().any(|a| a.contains(pattern))),
            "the exception for `{pattern}` ({why}) matches no command of the docs any more: remove it"
        );
    }
    for commands in files.iter().filter(|c| !c.is_empty()) {
        let dir = scratch(root);
        for command in commands {
            run(command, dir.path());
        }
    }
}

/// Runs one command of the docs in `dir`; it must succeed.
fn run(command: &DocCommand, dir: &Path) {
    {
        let args = as_run(command);
        let started = std::time::Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_adanoise"))
            .args(&args)
            .current_dir(dir)
            .output()
            .unwrap();
        println!(
            "{}: adanoise {} ({:.1}s)",
            command.place,
            args.join(" "),
            started.elapsed().as_secs_f64()
        );
        assert!(
            output.status.success(),
            "{}: `adanoise {}` failed ({})\nstdout:\n{}\nstderr:\n{}",
            command.place,
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn command_lines_are_found_with_their_continuations_and_without_comments() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("a.md"),
        "Prose with `adanoise report x` inline.\n\n    ./target/release/adanoise train --lr 0.1 \\\n        --seed 2   # a comment with adanoise sweep\n    tensorboard --logdir tb\n    ADANOISE_BIN=target/release/adanoise pytest\n\n```\nadanoise plot runs/a && echo done\n```\n",
    )
    .unwrap();
    let found = commands_in(&docs.join("a.md"), dir.path());
    let words: Vec<Vec<String>> = found.iter().map(|c| c.args.clone()).collect();
    assert_eq!(
        words,
        vec![
            ["train", "--lr", "0.1", "--seed", "2"]
                .map(String::from)
                .to_vec(),
            ["plot", "runs/a"].map(String::from).to_vec(),
        ]
    );
    assert_eq!(found[0].place, "docs/a.md:3");
}
