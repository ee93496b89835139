//! Writing the tables as Markdown, CSV, LaTeX, or one self-contained HTML page
//! (a template, `report.html`) with the figures inlined as SVG.

use super::collect::RunRecord;
use super::figures::{Figure1, SweepFigure, svg_string};
use super::stats::Stat;
use super::tables::{EmptyGroup, LrSelection, Row, Tables, Validation};
use anyhow::{Context, Result};
use serde::Serialize;
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

/// The columns of the Markdown and HTML tables; the test-accuracy column only when the
/// runs held out a validation split.
fn headers(tables: &Tables) -> Vec<&'static str> {
    let mut h = vec![
        "Model",
        "Noise",
        "LR",
        "Train acc",
        "Val acc",
        "Val acc 95% CI",
        "Train loss",
        "Val loss",
    ];
    if tables.held_out {
        h.push("Test acc");
    }
    h.extend([
        "Δ val acc [95% CI]",
        "Δ loss gap [95% CI]",
        "Grad-noise epochs",
        "Weight-noise epochs",
        "Cooldown epochs",
        "Seeds",
        "Note",
    ]);
    h
}

/// `0.8500`, or `0.8500 ± 0.0707` (mean ± sample std) over several seeds.
fn stat(s: &Stat) -> String {
    if s.n > 1 {
        format!("{:.4} ± {:.4}", s.mean, s.std)
    } else {
        format!("{:.4}", s.mean)
    }
}

fn interval(s: &Stat) -> String {
    s.interval()
        .map_or(String::new(), |(lo, hi)| format!("[{lo:.4}, {hi:.4}]"))
}

/// `+0.0100 (1 pair)`, or `+0.0100 [-0.0050, +0.0250] (3 pairs)` with the paired 95 %
/// interval: the count is of the seeds both rows finished.
fn delta(d: Option<&Stat>) -> String {
    let Some(d) = d else {
        return String::new();
    };
    let pairs = if d.n == 1 {
        "1 pair".to_string()
    } else {
        format!("{} pairs", d.n)
    };
    match d.interval() {
        Some((lo, hi)) => format!("{:+.4} [{lo:+.4}, {hi:+.4}] ({pairs})", d.mean),
        None => format!("{:+.4} ({pairs})", d.mean),
    }
}

fn epochs(v: f64) -> String {
    if v.is_nan() {
        "-".to_string()
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn model_label(row: &Row) -> String {
    if row.variant.is_empty() {
        row.model_name.clone()
    } else {
        format!("{} ({})", row.model_name, row.variant)
    }
}

fn noise_label(row: &Row) -> String {
    if row.policy.is_empty() {
        row.noise.to_string()
    } else {
        format!("{}, {}", row.noise, row.policy)
    }
}

/// `3`, or `2 of 3 (1 diverged)` when some runs at the row's rate did not finish.
fn seeds(row: &Row) -> String {
    let c = &row.at_lr;
    if c.finished == c.total() {
        return c.finished.to_string();
    }
    let mut why = Vec::new();
    if c.diverged > 0 {
        why.push(format!("{} diverged", c.diverged));
    }
    if c.unfinished > 0 {
        why.push(format!("{} unfinished", c.unfinished));
    }
    format!("{} of {} ({})", c.finished, c.total(), why.join(", "))
}

fn note(row: &Row) -> String {
    let mut parts = Vec::new();
    if row.at_lr.diverged > 0 {
        parts.push("a seed diverged at this rate".to_string());
    }
    if !row.duplicates.is_empty() {
        parts.push(format!(
            "{} duplicate run(s) of a seed already counted left out ({})",
            row.duplicates.len(),
            row.duplicates.join(", ")
        ));
    }
    parts.extend(row.note.clone());
    parts.join("; ")
}

fn cells(row: &Row, tables: &Tables) -> Vec<String> {
    let mut c = vec![
        model_label(row),
        noise_label(row),
        format!("{}", row.lr),
        stat(&row.train_acc),
        stat(&row.val_acc),
        interval(&row.val_acc),
        stat(&row.train_loss),
        stat(&row.val_loss),
    ];
    if tables.held_out {
        c.push(row.test_acc.as_ref().map_or(String::new(), stat));
    }
    c.extend([
        delta(row.delta_val_acc.as_ref()),
        delta(row.delta_gap.as_ref()),
        epochs(row.grad_noise_epochs),
        epochs(row.weight_noise_epochs),
        epochs(row.cooldown_epochs.unwrap_or(f64::NAN)),
        seeds(row),
        note(row),
    ]);
    c
}

fn title(optimizer: crate::optim::OptimizerKind) -> String {
    let roman = match optimizer {
        crate::optim::OptimizerKind::Sgd => "I",
        crate::optim::OptimizerKind::SgdMomentum => "II",
        crate::optim::OptimizerKind::Adam => "III",
    };
    format!("Table {roman}: results for {optimizer}")
}

/// What the tables say about how they were made.
fn explanation(tables: &Tables) -> String {
    let selection = match tables.selection {
        LrSelection::PerNoise => {
            "Each row is at its own best initial learning rate, as in the study: the highest mean final validation accuracy over the rate's finished and diverged seeds, a diverged seed counting as 0 (unfinished seeds do not count yet)."
        }
        LrSelection::Shared => {
            "Every row of a model and optimiser is at the learning rate best for its no-noise row (--lr-selection shared; best as the highest mean final validation accuracy over finished and diverged seeds, a diverged seed counting as 0), so noisy rows are compared with the baseline at the same rate."
        }
    };
    let validation = match tables.validation {
        Validation::HeldOut => {
            " Validation metrics are on images held out of the training set (--val-split); the learning rate is chosen on them, and the test set is reported apart."
        }
        Validation::TestSet => " The validation set is the test set, as in the study.",
        Validation::Mixed => {
            " Rows whose runs held out a validation split (val_split above 0) are validated on those held-out images, with the test set reported apart; rows with val_split=0 are validated on the test set, as in the study."
        }
    };
    let against = match &tables.against {
        None => "noisy row minus the no-noise row of the same model and optimiser".to_string(),
        Some(policy) => format!(
            "each row minus the `{policy}` row of the same model and optimiser (of the same noise type where there are several; --against {policy})"
        ),
    };
    format!(
        "Final-epoch metrics over seeds (mean ± sample std; 95 % confidence interval of the mean, Student's t). {selection}{validation} \
Δ columns: {against}, paired by seed (same initialisation and data order) over the seeds both rows finished (their count in brackets), with the 95 % interval of the paired difference when there are two pairs or more; the loss gap is val loss - train loss. \
Noise and cooldown epochs are per run (mean over seeds); for noise `none` only the cooldowns the scheduler would have imposed are counted, and for the constant and annealed policies, which follow no decision, none (-). \
Seeds counts the finished runs at the row's rate; diverged and unfinished ones are named there and never silently dropped."
    )
}

/// The Markdown report.
pub fn markdown(tables: &Tables) -> String {
    let mut out = String::from("# adanoise report\n\n");
    let _ = writeln!(out, "{}\n", explanation(tables));
    let headers = headers(tables);
    for (optimizer, rows) in &tables.by_optimizer {
        let _ = writeln!(out, "## {}\n", title(*optimizer));
        let _ = writeln!(out, "| {} |", headers.join(" | "));
        let _ = writeln!(out, "|{}", " --- |".repeat(headers.len()));
        for row in rows {
            let cells: Vec<String> = cells(row, tables).iter().map(|c| md_cell(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    for group in &tables.empty {
        let c = group.counts;
        let _ = writeln!(
            out,
            "No finished run for {} ({} diverged, {} unfinished).\n",
            md_cell(&group.label),
            c.diverged,
            c.unfinished
        );
    }
    if !tables.unfinished.is_empty() {
        let _ = writeln!(out, "Runs not finished:\n");
        for (dir, state) in &tables.unfinished {
            let _ = writeln!(out, "- {}: {}", md_cell(dir), md_cell(state));
        }
    }
    out
}

/// Text as one Markdown table cell or list item: a `|` would end the cell and a line break
/// the row, whatever a user named a model or a folder.
fn md_cell(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace('|', "\\|")
}

/// One CSV record per row.
#[derive(Serialize)]
struct CsvRow<'a> {
    optimizer: &'a str,
    model: &'a str,
    variant: &'a str,
    noise: &'a str,
    policy: &'a str,
    lr_selection: String,
    lr: Option<f64>,
    validation: &'static str,
    seeds_finished: usize,
    seeds_diverged: usize,
    seeds_unfinished: usize,
    train_acc: Option<f64>,
    train_acc_std: Option<f64>,
    val_acc: Option<f64>,
    val_acc_std: Option<f64>,
    val_acc_ci95: Option<f64>,
    train_loss: Option<f64>,
    train_loss_std: Option<f64>,
    val_loss: Option<f64>,
    val_loss_std: Option<f64>,
    test_acc: Option<f64>,
    delta_val_acc: Option<f64>,
    delta_val_acc_ci95: Option<f64>,
    delta_loss_gap: Option<f64>,
    delta_loss_gap_ci95: Option<f64>,
    delta_pairs: Option<usize>,
    /// What the Δ columns are taken against: `none` (the no-noise row) or a policy.
    delta_against: String,
    grad_noise_epochs: Option<f64>,
    weight_noise_epochs: Option<f64>,
    cooldown_epochs: Option<f64>,
    /// Runs of the row's group, at any rate, that did not finish: `dir (state)`, `; `-separated.
    not_finished: String,
    note: String,
}

/// The mean, and the sample std only where there is one (two seeds or more).
fn mean_std(s: &Stat) -> (Option<f64>, Option<f64>) {
    (Some(s.mean), (s.n > 1).then_some(s.std))
}

fn listed(runs: &[(String, String)]) -> String {
    runs.iter()
        .map(|(dir, state)| format!("{dir} ({state})"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn csv_row<'a>(r: &'a Row, tables: &Tables) -> CsvRow<'a> {
    let (train_acc, train_acc_std) = mean_std(&r.train_acc);
    let (val_acc, val_acc_std) = mean_std(&r.val_acc);
    let (train_loss, train_loss_std) = mean_std(&r.train_loss);
    let (val_loss, val_loss_std) = mean_std(&r.val_loss);
    CsvRow {
        optimizer: r.optimizer.into(),
        model: &r.model_name,
        variant: &r.variant,
        noise: r.noise.into(),
        policy: &r.policy,
        lr_selection: tables.selection.to_string(),
        lr: Some(r.lr),
        validation: if r.test_acc.is_some() {
            "held-out"
        } else {
            "test-set"
        },
        seeds_finished: r.at_lr.finished,
        seeds_diverged: r.at_lr.diverged,
        seeds_unfinished: r.at_lr.unfinished,
        train_acc,
        train_acc_std,
        val_acc,
        val_acc_std,
        val_acc_ci95: r.val_acc.ci95,
        train_loss,
        train_loss_std,
        val_loss,
        val_loss_std,
        test_acc: r.test_acc.map(|s| s.mean),
        delta_val_acc: r.delta_val_acc.map(|s| s.mean),
        delta_val_acc_ci95: r.delta_val_acc.and_then(|s| s.ci95),
        delta_loss_gap: r.delta_gap.map(|s| s.mean),
        delta_loss_gap_ci95: r.delta_gap.and_then(|s| s.ci95),
        delta_pairs: r.delta_val_acc.map(|s| s.n),
        delta_against: tables.against.clone().unwrap_or_else(|| "none".into()),
        grad_noise_epochs: Some(r.grad_noise_epochs),
        weight_noise_epochs: Some(r.weight_noise_epochs),
        cooldown_epochs: r.cooldown_epochs,
        not_finished: listed(&r.not_finished),
        note: note(r),
    }
}

/// The CSV record of a group with no finished run: its counts and its runs, no metrics.
fn csv_empty_row<'a>(group: &'a EmptyGroup, tables: &Tables) -> CsvRow<'a> {
    CsvRow {
        optimizer: group.optimizer.into(),
        model: &group.model_name,
        variant: &group.variant,
        noise: group.noise.into(),
        policy: &group.policy,
        lr_selection: tables.selection.to_string(),
        lr: None,
        validation: "",
        seeds_finished: 0,
        seeds_diverged: group.counts.diverged,
        seeds_unfinished: group.counts.unfinished,
        train_acc: None,
        train_acc_std: None,
        val_acc: None,
        val_acc_std: None,
        val_acc_ci95: None,
        train_loss: None,
        train_loss_std: None,
        val_loss: None,
        val_loss_std: None,
        test_acc: None,
        delta_val_acc: None,
        delta_val_acc_ci95: None,
        delta_loss_gap: None,
        delta_loss_gap_ci95: None,
        delta_pairs: None,
        delta_against: tables.against.clone().unwrap_or_else(|| "none".into()),
        grad_noise_epochs: None,
        weight_noise_epochs: None,
        cooldown_epochs: None,
        not_finished: listed(&group.runs),
        note: "no finished run at any rate".into(),
    }
}

/// Every row of every table as CSV (`*_ci95`: half-width of the 95 % interval; `*_std`
/// empty for one seed), then a record per group with no finished run.
pub fn csv(tables: &Tables) -> Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for (_, rows) in &tables.by_optimizer {
        for row in rows {
            writer.serialize(csv_row(row, tables))?;
        }
    }
    for group in &tables.empty {
        writer.serialize(csv_empty_row(group, tables))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| anyhow::anyhow!("could not write the CSV report: {e}"))?;
    String::from_utf8(bytes).context("the CSV report is not UTF-8")
}

/// Escapes the ten characters LaTeX treats specially, so any text typesets as itself.
pub fn latex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '{' | '}' | '$' | '&' | '#' | '_' | '%' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            // A line break or other control character would end the row or the paragraph.
            c if c.is_control() => out.push(' '),
            other => out.push(other),
        }
    }
    out
}

/// The study's tables as LaTeX `table` environments (the study's columns and the Δs).
pub fn latex(tables: &Tables) -> String {
    let mut out = String::from("% Generated by adanoise report\n");
    for (optimizer, rows) in &tables.by_optimizer {
        let _ = writeln!(
            out,
            "\\begin{{table}}[ht]\n\\centering\n\\caption{{{}}}",
            latex_escape(&title(*optimizer))
        );
        let _ = writeln!(out, "\\begin{{tabular}}{{llr|rr|rr|rr|l}}\n\\hline");
        let _ = writeln!(
            out,
            "Model & Noise & LR & Train acc & Val acc & Train loss & Val loss & $\\Delta$ val acc & $\\Delta$ gap & Seeds \\\\\n\\hline"
        );
        for r in rows {
            let fields = [
                latex_escape(&model_label(r)),
                latex_escape(&noise_label(r)),
                latex_escape(&format!("{}", r.lr)),
                latex_stat(&r.train_acc),
                latex_stat(&r.val_acc),
                latex_stat(&r.train_loss),
                latex_stat(&r.val_loss),
                latex_escape(&delta(r.delta_val_acc.as_ref())),
                latex_escape(&delta(r.delta_gap.as_ref())),
                latex_escape(&seeds(r)),
            ];
            let _ = writeln!(out, "{} \\\\", fields.join(" & "));
        }
        let _ = writeln!(out, "\\hline\n\\end{{tabular}}\n\\end{{table}}\n");
    }
    out.push_str(&latex_left_out(tables));
    out
}

/// What the LaTeX tables cannot show: the notes of their rows, the groups with no finished
/// run and the runs not finished, as a list after the tables.
fn latex_left_out(tables: &Tables) -> String {
    let mut items = Vec::new();
    for (optimizer, rows) in &tables.by_optimizer {
        for row in rows {
            let text = note(row);
            if !text.is_empty() {
                items.push(format!(
                    "{optimizer}, {}, {}: {text}",
                    model_label(row),
                    noise_label(row)
                ));
            }
        }
    }
    for group in &tables.empty {
        let c = group.counts;
        items.push(format!(
            "no finished run for {} ({} diverged, {} unfinished)",
            group.label, c.diverged, c.unfinished
        ));
    }
    for (dir, state) in &tables.unfinished {
        items.push(format!("not finished: {dir}: {state}"));
    }
    if items.is_empty() {
        return String::new();
    }
    let mut out = String::from("\\begin{itemize}\n");
    for item in items {
        let _ = writeln!(out, "\\item {}", latex_escape(&item));
    }
    out.push_str("\\end{itemize}\n");
    out
}

fn latex_stat(s: &Stat) -> String {
    if s.n > 1 {
        format!("{:.4} $\\pm$ {:.4}", s.mean, s.std)
    } else {
        format!("{:.4}", s.mean)
    }
}

/// The page's template: one file, auto-escaped (its name ends in `.html`).
const TEMPLATE: &str = include_str!("report.html");

/// Everything the template reads.
#[derive(Serialize)]
struct Page<'a> {
    explanation: String,
    /// 1-based column of the paired Δ val acc, coloured by its sign.
    delta_column: Option<usize>,
    headers: Vec<&'static str>,
    tables: Vec<HtmlTable>,
    empty: &'a [super::tables::EmptyGroup],
    unfinished: &'a [(String, String)],
    sweep_svg: Option<String>,
    figures: Vec<HtmlFigure>,
}

#[derive(Serialize)]
struct HtmlTable {
    title: String,
    optimizer: String,
    rows: Vec<HtmlRow>,
}

#[derive(Serialize)]
struct HtmlRow {
    cells: Vec<String>,
    /// `pos`/`neg` when the paired Δ val acc is clearly above/below zero.
    delta_class: &'static str,
}

#[derive(Serialize)]
struct HtmlFigure {
    summary: String,
    svg: String,
}

/// `pos`/`neg` only when the paired interval excludes zero: one pair has no interval, so
/// it is never marked.
fn delta_class(row: &Row) -> &'static str {
    match row.delta_val_acc {
        Some(d) if d.excludes_zero() && d.mean < 0.0 => "neg",
        Some(d) if d.excludes_zero() && d.mean > 0.0 => "pos",
        _ => "",
    }
}

/// One page with every table and figure inline: opens from disk, fetches nothing.
pub fn html(tables: &Tables, runs: &[RunRecord]) -> Result<String> {
    let html_tables: Vec<HtmlTable> = tables
        .by_optimizer
        .iter()
        .map(|(optimizer, rows)| HtmlTable {
            title: title(*optimizer),
            optimizer: optimizer.to_string(),
            rows: rows
                .iter()
                .map(|row| HtmlRow {
                    cells: cells(row, tables),
                    delta_class: delta_class(row),
                })
                .collect(),
        })
        .collect();
    let sweep_svg = if runs.iter().any(|r| r.final_epoch().is_some()) {
        Some(svg_string(&SweepFigure(runs))?)
    } else {
        None
    };
    let mut figures = Vec::new();
    for (_, rows) in &tables.by_optimizer {
        for row in rows {
            let Some(run) = row
                .runs
                .first()
                .and_then(|dir| runs.iter().find(|r| &r.dir == dir))
            else {
                continue;
            };
            figures.push(HtmlFigure {
                summary: format!(
                    "{} — {} — {} (lr {})",
                    row.optimizer,
                    model_label(row),
                    noise_label(row),
                    row.lr
                ),
                svg: svg_string(&Figure1(run))?,
            });
        }
    }
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)?;
    let headers = headers(tables);
    let page = Page {
        explanation: explanation(tables),
        delta_column: headers
            .iter()
            .position(|h| h.starts_with("Δ val"))
            .map(|i| i + 1),
        headers,
        tables: html_tables,
        empty: &tables.empty,
        unfinished: &tables.unfinished,
        sweep_svg,
        figures,
    };
    Ok(env
        .get_template("report.html")?
        .render(minijinja::value::Serde(page))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_seeds_show_mean_std_and_intervals() {
        let two = Stat::of(&[0.8, 0.9]);
        assert_eq!(stat(&two), "0.8500 ± 0.0707");
        assert_eq!(interval(&two), "[0.2147, 1.4853]");
        assert_eq!(stat(&Stat::of(&[0.85])), "0.8500");
        assert_eq!(interval(&Stat::of(&[0.85])), "");
        assert_eq!(delta(Some(&Stat::of(&[-0.01]))), "-0.0100 (1 pair)");
        assert_eq!(
            delta(Some(&Stat::of(&[0.01, 0.03]))),
            "+0.0200 [-0.1071, +0.1471] (2 pairs)"
        );
    }

    #[test]
    fn latex_escaping_covers_every_special_character() {
        assert_eq!(
            latex_escape(r"lr_min 5% & #1 {x} $y$ a~b c^d e\f"),
            r"lr\_min 5\% \& \#1 \{x\} \$y\$ a\textasciitilde{}b c\textasciicircum{}d e\textbackslash{}f"
        );
        // A backslash's replacement is not escaped again.
        assert_eq!(latex_escape("\\{"), "\\textbackslash{}\\{");
    }
}
