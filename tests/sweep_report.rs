//! Sweeps end to end on synthetic data (grid, skip and resume, a failing cell,
//! two concurrent sweep processes), and the report and figures made from them.

mod common;

use adanoise::data::synthetic::write_binary_release;
use adanoise::report::{find_runs, tables};
use adanoise::train::{RunOptions, TrainConfig, train};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{adanoise, metrics_epochs, ok};

/// A 2 x 2 x 2 grid of quick baby-cnn runs, plus `extra` grid lines.
fn sweep_file(root: &Path, extra: &str) -> (PathBuf, PathBuf) {
    let data = root.join("data");
    if !data.exists() {
        write_binary_release(&data, 100, 40, 4).unwrap();
    }
    let file = root.join("small.toml");
    let out = root.join("out");
    std::fs::write(
        &file,
        format!(
            "out = '{}'\n[base]\nmodel = 'baby-cnn'\nepochs = 2\nbatch_size = 50\ndata_dir = '{}'\n\
             [grid]\noptimizer = ['sgd', 'adam']\nnoise = ['none', 'gaussian']\nlr = [0.01, 0.001]\n{extra}",
            out.display(),
            data.display()
        ),
    )
    .unwrap();
    (file, out)
}

#[test]
fn sweep_runs_skips_resumes_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_file(tmp.path(), "");
    let f = file.to_str().unwrap();
    let list = ok(&adanoise(&["sweep", f, "--list"]));
    assert_eq!(list.matches("pending").count(), 8, "{list}");
    assert!(list.contains("sgd-none-lr0.01"), "{list}");

    // One cell interrupted after its first epoch, as if killed: the sweep resumes it.
    let partial = out.join("adam-gaussian-lr0.01");
    let cfg = TrainConfig::for_new_run(
        format!(
            "model = 'baby-cnn'\noptimizer = 'adam'\nnoise = 'gaussian'\nlr = 0.01\nepochs = 2\nbatch_size = 50\ndata_dir = '{}'",
            tmp.path().join("data").display()
        )
        .parse()
        .unwrap(),
    )
    .unwrap();
    train(
        &cfg,
        &partial,
        &RunOptions {
            stop_after: Some(1),
            offline: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(metrics_epochs(&partial), vec![1]);

    let run = ok(&adanoise(&["sweep", f, "--workers", "2"]));
    assert!(run.contains("8 cells") && run.contains("0 failed"), "{run}");
    assert_eq!(
        metrics_epochs(&partial),
        vec![1, 2],
        "the interrupted cell resumed without repeating an epoch"
    );
    let list = ok(&adanoise(&["sweep", f, "--list"]));
    assert_eq!(list.matches(" done ").count(), 8, "{list}");
    // Nothing left to do: a second run skips every cell.
    let again = ok(&adanoise(&["sweep", f]));
    assert!(again.contains("8 done before, 0 finished now"), "{again}");

    // The report's numbers are the runs' own, at the best learning rate.
    let runs = find_runs(&out, 2, &mut adanoise::events::Silent).unwrap();
    assert_eq!(runs.len(), 8);
    let t = tables::build(&runs, tables::LrSelection::PerNoise);
    assert_eq!(t.by_optimizer.len(), 2);
    for (_, rows) in &t.by_optimizer {
        assert_eq!(rows.len(), 2);
        for row in rows {
            let candidates: Vec<_> = runs
                .iter()
                .filter(|r| r.config.optimizer == row.optimizer && r.config.noise == row.noise)
                .collect();
            let best = candidates
                .iter()
                .max_by(|a, b| {
                    a.final_epoch()
                        .unwrap()
                        .val_acc
                        .total_cmp(&b.final_epoch().unwrap().val_acc)
                        .then(a.config.lr.total_cmp(&b.config.lr))
                })
                .unwrap();
            assert_eq!(
                row.lr, best.config.lr,
                "best lr of {:?}/{:?}",
                row.optimizer, row.noise
            );
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(best.dir.join("summary.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(
                row.val_acc.mean,
                summary["final_epoch"]["val_acc"].as_f64().unwrap()
            );
            assert_eq!(
                row.train_loss.mean,
                summary["final_epoch"]["train_loss"].as_f64().unwrap()
            );
        }
    }
    let md = ok(&adanoise(&["report", out.to_str().unwrap()]));
    assert!(
        md.contains("Table I: results for sgd") && md.contains("Table III: results for adam"),
        "{md}"
    );
    assert!(
        md.contains("| baby-cnn | gaussian, adaptive, relative weight noise |"),
        "{md}"
    );
    let csv = ok(&adanoise(&[
        "report",
        out.to_str().unwrap(),
        "--format",
        "csv",
    ]));
    assert_eq!(csv.lines().count(), 1 + 4);
    let latex = ok(&adanoise(&[
        "report",
        out.to_str().unwrap(),
        "--format",
        "latex",
    ]));
    assert!(latex.contains("\\begin{tabular}"));

    // Figures: a run's three figures as images of the expected size, and the sweep's.
    let one = out.join("sgd-gaussian-lr0.01");
    ok(&adanoise(&["plot", one.to_str().unwrap()]));
    for (name, size) in [
        ("figure1", (1000, 560)),
        ("lr", (1000, 420)),
        ("curves", (1100, 440)),
    ] {
        let img = image::open(one.join(format!("{name}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), size, "{name}");
        let svg = std::fs::read_to_string(one.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{name}");
    }
    ok(&adanoise(&["plot", out.to_str().unwrap()]));
    let sweep_png = image::open(out.join("sweep.png")).unwrap();
    assert_eq!(sweep_png.width(), 1000);

    // The HTML report: self-contained, every table present; in Chromium when available.
    let html_path = tmp.path().join("report.html");
    ok(&adanoise(&[
        "report",
        out.to_str().unwrap(),
        "--format",
        "html",
        "--out",
        html_path.to_str().unwrap(),
    ]));
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_eq!(html.matches("<table class=\"results\"").count(), 2);
    assert!(html.contains("<svg"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the page must not fetch anything"
    );
    check_in_chromium(&html_path, 2);
}

/// Opens the page in headless Chromium: no console error, and every table in the DOM.
fn check_in_chromium(page: &Path, tables: usize) {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var("ADANOISE_REQUIRE_CHROMIUM").is_err(),
            "ADANOISE_REQUIRE_CHROMIUM is set but no chromium is on PATH"
        );
        eprintln!(
            "SKIPPED the Chromium check of the HTML report: no chromium on PATH (`apt-get install chromium` enables it; .ci/run installs it)"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {log}");
    assert_eq!(
        dom.matches("class=\"results\"").count(),
        tables,
        "tables missing from the rendered page"
    );
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("Error") || l.contains("Uncaught")))
        .collect();
    assert!(
        console_errors.is_empty(),
        "console errors: {console_errors:?}"
    );
}

#[test]
fn a_failing_cell_is_recorded_and_does_not_stop_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_file(tmp.path(), "");
    // lr 1e12 with plain SGD diverges; the other cell must still finish.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("lr = [0.01, 0.001]", "lr = [0.01, 1e12]");
    std::fs::write(&file, text).unwrap();
    let args = [
        "sweep",
        file.to_str().unwrap(),
        "--only",
        "noise=none",
        "--only",
        "optimizer=sgd",
    ];
    let o = adanoise(&args);
    assert!(
        !o.status.success(),
        "a sweep with a failed cell exits non-zero"
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("FAIL") && text.contains("diverged"), "{text}");
    assert!(
        out.join("sgd-none-lr1000000000000.0/failed.json").is_file()
            || out.join("sgd-none-lr1e12/failed.json").is_file(),
        "{text}"
    );
    assert_eq!(metrics_epochs(&out.join("sgd-none-lr0.01")), vec![1, 2]);
    let list = ok(&adanoise(&[&args[..], &["--list"]].concat()));
    assert!(
        list.contains("failed") && list.contains("diverged"),
        "{list}"
    );
}

#[test]
fn two_sweep_processes_never_run_a_cell_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, out) = sweep_file(tmp.path(), "seed = [1, 2]\n");
    let f = file.to_str().unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_adanoise"))
            .args(["sweep", f, "--workers", "2", "--threads", "1"])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    ok(&a);
    ok(&b);
    let runs = find_runs(&out, 2, &mut adanoise::events::Silent).unwrap();
    assert_eq!(runs.len(), 16);
    for run in &runs {
        assert_eq!(
            metrics_epochs(&run.dir),
            vec![1, 2],
            "{}",
            run.dir.display()
        );
        // Each cell trained once: a single "training ..." start in its log.
        let log = std::fs::read_to_string(run.dir.join("train.log")).unwrap();
        assert_eq!(
            log.matches("training baby-cnn").count(),
            1,
            "{}: {log}",
            run.dir.display()
        );
    }
}
