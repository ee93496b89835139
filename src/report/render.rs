//! Writing the tables as Markdown, CSV, LaTeX, or one self-contained HTML page
//! with the figures inlined as SVG.

use super::collect::RunRecord;
use super::figures::{Figure1, SweepFigure, svg_string};
use super::tables::{Row, Stat, Tables};
use anyhow::Result;
use std::fmt::Write;

/// The report's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, strum::Display)]
#[strum(serialize_all = "lowercase")]
pub enum Format {
    /// Markdown tables.
    Md,
    /// One CSV table of every row.
    Csv,
    /// LaTeX `table` environments.
    Latex,
    /// One self-contained HTML page with the figures.
    Html,
}

const HEADERS: [&str; 13] = [
    "Model",
    "Noise",
    "LR",
    "Train acc",
    "Val acc",
    "Train loss",
    "Val loss",
    "Δ val acc",
    "Δ loss gap",
    "Grad-noise epochs",
    "Weight-noise epochs",
    "Cooldown epochs",
    "Seeds",
];

fn stat(s: &Stat) -> String {
    if s.n > 1 {
        format!("{:.4} ± {:.4}", s.mean, s.std)
    } else {
        format!("{:.4}", s.mean)
    }
}

fn signed(v: Option<f64>) -> String {
    v.map_or_else(|| "".to_string(), |v| format!("{v:+.4}"))
}

fn epochs(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn model_label(row: &Row) -> String {
    if row.variant.is_empty() {
        row.model.to_string()
    } else {
        format!("{} ({})", row.model, row.variant)
    }
}

fn cells(row: &Row) -> [String; 13] {
    [
        model_label(row),
        row.noise.to_string(),
        format!("{}", row.lr),
        stat(&row.train_acc),
        stat(&row.val_acc),
        stat(&row.train_loss),
        stat(&row.val_loss),
        signed(row.delta_val_acc),
        signed(row.delta_gap),
        epochs(row.grad_noise_epochs),
        epochs(row.weight_noise_epochs),
        epochs(row.cooldown_epochs),
        row.val_acc.n.to_string(),
    ]
}

fn title(optimizer: crate::optim::OptimizerKind) -> String {
    let roman = match optimizer {
        crate::optim::OptimizerKind::Sgd => "I",
        crate::optim::OptimizerKind::SgdMomentum => "II",
        crate::optim::OptimizerKind::Adam => "III",
    };
    format!("Table {roman}: results for {optimizer}")
}

const NOTE: &str = "Final-epoch metrics at the learning rate with the best mean final validation accuracy. \
Δ columns compare with the no-noise row of the same model and optimiser; the loss gap is val loss - train loss. \
Noise and cooldown epochs are per run (mean over seeds); for noise `none` only the cooldowns the scheduler would have imposed are counted.";

pub fn markdown(tables: &Tables) -> String {
    let mut out = String::from("# adanoise report\n\n");
    let _ = writeln!(out, "{NOTE}\n");
    for (optimizer, rows) in &tables.by_optimizer {
        let _ = writeln!(out, "## {}\n", title(*optimizer));
        let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
        let _ = writeln!(out, "|{}", " --- |".repeat(HEADERS.len()));
        for row in rows {
            let _ = writeln!(out, "| {} |", cells(row).join(" | "));
        }
        out.push('\n');
    }
    if !tables.unfinished.is_empty() {
        let _ = writeln!(out, "Not in the tables (not finished):\n");
        for (dir, state) in &tables.unfinished {
            let _ = writeln!(out, "- {dir}: {state}");
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(tables: &Tables) -> String {
    let mut out = String::from(
        "optimizer,model,variant,noise,lr,seeds,train_acc,train_acc_std,val_acc,val_acc_std,train_loss,train_loss_std,val_loss,val_loss_std,delta_val_acc,delta_loss_gap,grad_noise_epochs,weight_noise_epochs,cooldown_epochs\n",
    );
    for (_, rows) in &tables.by_optimizer {
        for r in rows {
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.optimizer,
                r.model,
                csv_field(&r.variant),
                r.noise,
                r.lr,
                r.val_acc.n,
                r.train_acc.mean,
                r.train_acc.std,
                r.val_acc.mean,
                r.val_acc.std,
                r.train_loss.mean,
                r.train_loss.std,
                r.val_loss.mean,
                r.val_loss.std,
                opt(r.delta_val_acc),
                opt(r.delta_gap),
                r.grad_noise_epochs,
                r.weight_noise_epochs,
                r.cooldown_epochs
            );
        }
    }
    out
}

fn latex_escape(s: &str) -> String {
    s.replace('\\', "\\textbackslash{}")
        .replace('_', "\\_")
        .replace('%', "\\%")
        .replace('&', "\\&")
        .replace('#', "\\#")
}

pub fn latex(tables: &Tables) -> String {
    let mut out = String::from("% Generated by adanoise report\n");
    for (optimizer, rows) in &tables.by_optimizer {
        let _ = writeln!(
            out,
            "\\begin{{table}}[ht]\n\\centering\n\\caption{{{}}}",
            latex_escape(&title(*optimizer))
        );
        let _ = writeln!(out, "\\begin{{tabular}}{{llr|rr|rr|rr}}\n\\hline");
        let _ = writeln!(
            out,
            "Model & Noise & LR & Train acc & Val acc & Train loss & Val loss & $\\Delta$ val acc & $\\Delta$ gap \\\\\n\\hline"
        );
        for r in rows {
            let c = cells(r);
            let row: Vec<String> = c[..9]
                .iter()
                .map(|s| latex_escape(&s.replace('±', "$\\pm$")))
                .collect();
            let _ = writeln!(out, "{} \\\\", row.join(" & "));
        }
        let _ = writeln!(out, "\\hline\n\\end{{tabular}}\n\\end{{table}}\n");
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One page with every table and figure inline: opens from disk, fetches nothing.
pub fn html(tables: &Tables, runs: &[RunRecord]) -> Result<String> {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>adanoise report</title>\n<style>\n\
         body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
         th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}td:nth-child(-n+2){text-align:left}\
         .neg{color:#b00}.pos{color:#070}details{margin:0.5em 0}svg{max-width:100%;height:auto}\n</style>\n</head>\n<body>\n<h1>adanoise report</h1>\n",
    );
    let _ = writeln!(out, "<p>{}</p>", html_escape(NOTE));
    for (optimizer, rows) in &tables.by_optimizer {
        let _ = writeln!(
            out,
            "<h2>{}</h2>\n<table class=\"results\" data-optimizer=\"{optimizer}\">\n<tr>",
            html_escape(&title(*optimizer))
        );
        for h in HEADERS {
            let _ = write!(out, "<th>{}</th>", html_escape(h));
        }
        out.push_str("</tr>\n");
        for row in rows {
            out.push_str("<tr>");
            for (i, cell) in cells(row).iter().enumerate() {
                let class = match (i, row.delta_val_acc) {
                    (7, Some(d)) if d < 0.0 => " class=\"neg\"",
                    (7, Some(d)) if d > 0.0 => " class=\"pos\"",
                    _ => "",
                };
                let _ = write!(out, "<td{class}>{}</td>", html_escape(cell));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }
    if !tables.unfinished.is_empty() {
        out.push_str("<h2>Not finished</h2>\n<ul>\n");
        for (dir, state) in &tables.unfinished {
            let _ = writeln!(out, "<li>{}: {}</li>", html_escape(dir), html_escape(state));
        }
        out.push_str("</ul>\n");
    }
    if runs.iter().any(|r| r.final_epoch().is_some()) {
        out.push_str("<h2>Validation accuracy per run</h2>\n");
        out.push_str(&svg_string(&SweepFigure(runs))?);
        out.push('\n');
    }
    out.push_str("<h2>Figure 1 for each row</h2>\n");
    for (_, rows) in &tables.by_optimizer {
        for row in rows {
            let Some(run) = row
                .runs
                .first()
                .and_then(|dir| runs.iter().find(|r| &r.dir == dir))
            else {
                continue;
            };
            let _ = writeln!(
                out,
                "<details><summary>{} — {} — {} (lr {})</summary>",
                row.optimizer,
                html_escape(&model_label(row)),
                row.noise,
                row.lr
            );
            out.push_str(&svg_string(&Figure1(run))?);
            out.push_str("\n</details>\n");
        }
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_seeds_show_mean_and_std() {
        assert_eq!(
            stat(&Stat {
                mean: 0.85,
                std: 0.0707,
                n: 2
            }),
            "0.8500 ± 0.0707"
        );
        assert_eq!(
            stat(&Stat {
                mean: 0.85,
                std: 0.0,
                n: 1
            }),
            "0.8500"
        );
        assert_eq!(signed(Some(-0.01)), "-0.0100");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(latex_escape("lr_min 5%"), "lr\\_min 5\\%");
    }
}
