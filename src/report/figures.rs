//! Figures, as PNG and SVG (plotters): for a run, Figure 1 of the paper
//! (gradient norm and validation loss per epoch, noisy epochs marked, cooldowns
//! shaded), its LR schedule and its accuracy/loss curves; for a sweep, the final
//! validation accuracy of every condition (its seeds, mean and interval).

use super::collect::RunRecord;
use crate::noise::NoiseKind;
use crate::schedule::CosineRestartsConfig;
use crate::train::EpochMetrics;
use anyhow::{Result, anyhow};
use plotters::chart::DualCoordChartContext;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// DejaVu Sans, embedded so that PNG text renders the same everywhere (licence in assets/fonts).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Something that can draw itself on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the figure on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("could not draw the figure: {e}")
}

/// Writes `stem.png` and `stem.svg` (each written to a temporary name, then renamed).
pub fn save(figure: &impl Figure, stem: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    let mut written = Vec::new();
    for ext in ["png", "svg"] {
        let target = stem.with_extension(ext);
        let tmp = stem.with_extension(format!("tmp.{ext}"));
        if ext == "png" {
            // Render into memory and encode with the `image` crate the rest of adanoise uses.
            let (w, h) = figure.size();
            let mut pixels = vec![0u8; (w * h * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
                figure.draw(&root)?;
                root.present().map_err(err)?;
            }
            let img = image::RgbImage::from_raw(w, h, pixels).expect("the buffer has w * h pixels");
            img.save_with_format(&tmp, image::ImageFormat::Png)?;
        } else {
            let root = SVGBackend::new(&tmp, figure.size()).into_drawing_area();
            figure.draw(&root)?;
            root.present().map_err(err)?;
        }
        std::fs::rename(&tmp, &target)?;
        written.push(target);
    }
    Ok(written)
}

/// The figure as an SVG document, for inlining in HTML.
pub fn svg_string(figure: &impl Figure) -> Result<String> {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, figure.size()).into_drawing_area();
        figure.draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let scale = lo.abs().max(hi.abs());
    // A single value (one epoch) or a flat series gets a visible range around it, so that
    // the axis labels read different numbers.
    let pad = if hi - lo > 1e-6 * scale.max(1e-12) {
        (hi - lo) * 0.05
    } else {
        (0.05 * scale).max(1e-3)
    };
    (lo - pad, hi + pad)
}

/// A tick label of at most about 8 characters, whatever the value's size: plain for the
/// values a run usually has, in exponent form for huge or tiny ones (a diverging loss
/// would otherwise print 30 digits across the figure).
fn value_tick(v: &f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        let text = format!("{v:.4}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        text.to_string()
    } else {
        format!("{v:.2e}")
    }
}

/// An epoch tick: whole numbers only (the axis is continuous, epochs are not).
fn epoch_tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{:.0}", v.round())
    } else {
        String::new()
    }
}

/// A small filled circle at the point of a one-epoch series, which a line cannot show.
fn dots(
    points: impl Iterator<Item = (f64, f64)>,
    color: RGBColor,
) -> impl Iterator<Item = Circle<(f64, f64), i32>> {
    let points: Vec<(f64, f64)> = points.collect();
    let single = points.len() == 1;
    points
        .into_iter()
        .filter(move |_| single)
        .map(move |p| Circle::new(p, 3, color.filled()))
}

const GRAD_COLOR: RGBColor = RGBColor(200, 60, 40);
const VAL_COLOR: RGBColor = RGBColor(40, 90, 200);
const SHADE: RGBColor = RGBColor(150, 150, 150);

/// Figure 1: gradient norm and validation loss per epoch, with the noise marked.
pub struct Figure1<'a>(pub &'a RunRecord);

/// Epoch (x) against value (y), both continuous.
type Coords = Cartesian2d<RangedCoordf64, RangedCoordf64>;
/// Figure 1's chart: gradient norm on the left axis, validation loss on the right.
type DualChart<'a, DB> = DualCoordChartContext<'a, DB, Coords, Coords>;

impl Figure for Figure1<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let run = self.0;
        let h = &run.history;
        root.fill(&WHITE).map_err(err)?;
        let n = h.len().max(1) as f64;
        let (g0, g1) = range(h.iter().map(|m| m.grad_norm));
        let (v0, v1) = range(h.iter().map(|m| m.val_loss));
        let would = run.config.noise == NoiseKind::None;
        let caption = format!(
            "{}: gradient norm and validation loss{}",
            run.name(),
            if would {
                " (noise none: markers show where noise would fire)"
            } else {
                ""
            }
        );
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0.5..n + 0.5, g0..g1)
            .map_err(err)?
            .set_secondary_coord(0.5..n + 0.5, v0..v1);
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("gradient norm")
            .x_label_formatter(&epoch_tick)
            .y_label_formatter(&value_tick)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("validation loss")
            .y_label_formatter(&value_tick)
            .draw()
            .map_err(err)?;
        draw_cooldowns(&mut chart, h, n, (g0, g1))?;
        draw_curves(&mut chart, h)?;
        draw_noise_markers(&mut chart, h, &epoch_noise(h, would))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// Shades the epochs a cooldown suppressed: the decision after epoch e sets epoch e + 1.
fn draw_cooldowns<DB: DrawingBackend>(
    chart: &mut DualChart<'_, DB>,
    h: &[EpochMetrics],
    n: f64,
    (g0, g1): (f64, f64),
) -> Result<()> {
    let cooldown: Vec<f64> = h
        .iter()
        .filter(|m| m.decision.as_ref().is_some_and(|d| d.cooldown > 0))
        .map(|m| m.epoch as f64 + 1.0)
        .filter(|e| *e <= n)
        .collect();
    chart
        .draw_series(
            cooldown
                .iter()
                .map(|e| Rectangle::new([(e - 0.5, g0), (e + 0.5, g1)], SHADE.mix(0.25).filled())),
        )
        .map_err(err)?
        .label("cooldown")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], SHADE.mix(0.4).filled()));
    Ok(())
}

/// The gradient norm (left axis) and validation loss (right axis) per epoch.
fn draw_curves<DB: DrawingBackend>(
    chart: &mut DualChart<'_, DB>,
    h: &[EpochMetrics],
) -> Result<()> {
    let grad = || h.iter().map(|m| (m.epoch as f64, m.grad_norm));
    let val = || h.iter().map(|m| (m.epoch as f64, m.val_loss));
    chart.draw_series(dots(grad(), GRAD_COLOR)).map_err(err)?;
    chart
        .draw_secondary_series(dots(val(), VAL_COLOR))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(grad(), GRAD_COLOR.stroke_width(2)))
        .map_err(err)?
        .label("gradient norm")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GRAD_COLOR.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(val(), VAL_COLOR.stroke_width(2)))
        .map_err(err)?
        .label("validation loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], VAL_COLOR.stroke_width(2)));
    Ok(())
}

/// The gradient and weight sigma each epoch got or, for a run without noise (`would`),
/// would have got from the decision after the epoch before.
fn epoch_noise(h: &[EpochMetrics], would: bool) -> Vec<(f64, f64)> {
    h.iter()
        .map(|m| {
            if would {
                h.iter()
                    .find(|p| p.epoch + 1 == m.epoch)
                    .and_then(|p| p.decision.as_ref())
                    .map_or((0.0, 0.0), |d| (d.grad_sigma, d.weight_sigma))
            } else {
                // Any weight noise (the policies' after-step noise and perturbations too)
                // gets a marker; its size is not drawn.
                let applied = &m.noise_applied;
                let weight = if applied.weight_noise() {
                    applied.weight_sigma.max(f64::MIN_POSITIVE)
                } else {
                    0.0
                };
                (applied.grad_sigma, weight)
            }
        })
        .collect()
}

/// Triangles on the gradient-norm curve at gradient noise, squares on the validation-loss
/// curve at weight noise.
fn draw_noise_markers<DB: DrawingBackend>(
    chart: &mut DualChart<'_, DB>,
    h: &[EpochMetrics],
    noise: &[(f64, f64)],
) -> Result<()> {
    let noisy = |pick: fn(&(f64, f64)) -> f64| {
        h.iter()
            .zip(noise)
            .filter(move |(_, sigmas)| pick(sigmas) > 0.0)
            .map(|(m, _)| m)
    };
    chart
        .draw_series(
            noisy(|s| s.0).map(|m| {
                TriangleMarker::new((m.epoch as f64, m.grad_norm), 6, GRAD_COLOR.filled())
            }),
        )
        .map_err(err)?
        .label("gradient noise")
        .legend(|(x, y)| TriangleMarker::new((x + 8, y), 6, GRAD_COLOR.filled()));
    chart
        .draw_secondary_series(noisy(|s| s.1).map(|m| {
            EmptyElement::at((m.epoch as f64, m.val_loss))
                + Rectangle::new([(-4, -4), (4, 4)], VAL_COLOR.filled())
        }))
        .map_err(err)?
        .label("weight noise")
        .legend(|(x, y)| Rectangle::new([(x + 3, y - 4), (x + 11, y + 4)], VAL_COLOR.filled()));
    Ok(())
}

/// The learning rate of every step of a run (sampled to at most 4,000 points).
pub struct LrFigure<'a>(pub &'a RunRecord);

impl Figure for LrFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 420)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let run = self.0;
        root.fill(&WHITE).map_err(err)?;
        let steps_per_epoch = run.history.first().map_or(1, |m| m.steps.max(1));
        let schedule: CosineRestartsConfig = run.config.lr_schedule(steps_per_epoch);
        let total = run.config.epochs * steps_per_epoch;
        let stride = (total / 4000).max(1);
        let points: Vec<(f64, f64)> = (0..total)
            .step_by(stride as usize)
            .map(|t| (t as f64 / steps_per_epoch as f64, schedule.lr_at(t)))
            .collect();
        let (lo, hi) = range(points.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{}: learning rate per step", run.name()),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..run.config.epochs as f64, lo.max(0.0)..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("learning rate")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(points, BLACK.stroke_width(1)))
            .map_err(err)?;
        Ok(())
    }
}

/// Train and validation accuracy (left) and loss (right) per epoch.
pub struct CurvesFigure<'a>(pub &'a RunRecord);

impl Figure for CurvesFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 440)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let run = self.0;
        let h = &run.history;
        root.fill(&WHITE).map_err(err)?;
        let n = h.len().max(1) as f64;
        let panels = root.split_evenly((1, 2));
        type Getter = fn(&crate::train::EpochMetrics) -> f64;
        let specs: [(&str, Getter, Getter); 2] = [
            ("accuracy", |m| m.train_acc, |m| m.val_acc),
            ("loss", |m| m.train_loss, |m| m.val_loss),
        ];
        for (panel, (what, train, val)) in panels.iter().zip(specs) {
            let (lo, hi) = range(h.iter().flat_map(|m| [train(m), val(m)]));
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{}: {what}", run.name()), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(0.5..n + 0.5, lo..hi)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(what)
                .x_label_formatter(&epoch_tick)
                .y_label_formatter(&value_tick)
                .draw()
                .map_err(err)?;
            for (label, get, color) in
                [("train", train, GRAD_COLOR), ("validation", val, VAL_COLOR)]
            {
                chart
                    .draw_series(dots(h.iter().map(|m| (m.epoch as f64, get(m))), color))
                    .map_err(err)?;
                chart
                    .draw_series(LineSeries::new(
                        h.iter().map(|m| (m.epoch as f64, get(m))),
                        color.stroke_width(2),
                    ))
                    .map_err(err)?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Final validation accuracy of a sweep's conditions at a glance: one line per report row
/// (condition), grouped by model and optimiser; each seed a point, the mean a bar and its
/// 95 % interval a line; the axis fitted to the data.
pub struct SweepFigure<'a>(pub &'a [RunRecord]);

/// One line of the sweep figure.
struct SweepLine {
    /// `model / optimizer` of its group.
    group: String,
    /// The condition: noise and policy, with the learning rate.
    label: String,
    /// Each finished seed's final validation accuracy.
    seeds: Vec<f64>,
    /// The mean and its 95 % interval (none for one seed).
    mean: f64,
    interval: Option<(f64, f64)>,
}

impl SweepFigure<'_> {
    fn lines(&self) -> Vec<SweepLine> {
        let tables = super::tables::build(self.0, super::tables::LrSelection::PerNoise);
        let mut lines = Vec::new();
        for (optimizer, rows) in &tables.by_optimizer {
            for row in rows {
                let condition = if row.policy.is_empty() {
                    row.noise.to_string()
                } else {
                    format!("{}, {}", row.noise, row.policy)
                };
                let model = if row.variant.is_empty() {
                    row.model_name.clone()
                } else {
                    format!("{} ({})", row.model_name, row.variant)
                };
                lines.push(SweepLine {
                    group: format!("{model} / {optimizer}"),
                    label: format!("{condition}, lr {}", row.lr),
                    seeds: row.seeds.iter().map(|(_, m)| m.val_acc).collect(),
                    mean: row.val_acc.mean,
                    interval: row.val_acc.interval(),
                });
            }
        }
        lines
    }

    /// The figure's label slots, top to bottom: each group's heading (no line), then its
    /// lines; a line's slot index beside it.
    fn slots(lines: &[SweepLine]) -> Vec<(String, Option<usize>)> {
        let mut slots = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if i == 0 || lines[i - 1].group != line.group {
                slots.push((line.group.clone(), None));
            }
            slots.push((format!("    {}", line.label), Some(i)));
        }
        slots
    }
}

impl Figure for SweepFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let slots = Self::slots(&self.lines()).len().max(1);
        (1000, 110 + 24 * slots as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let lines = self.lines();
        let slots = Self::slots(&lines);
        let n = slots.len().max(1) as f64;
        root.fill(&WHITE).map_err(err)?;
        let (lo, hi) = range(lines.iter().flat_map(|l| {
            let interval = l.interval.map_or(Vec::new(), |(a, b)| vec![a, b]);
            l.seeds.iter().copied().chain(interval)
        }));
        let longest = slots.iter().map(|s| s.0.chars().count()).max().unwrap_or(8) as u32;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "final validation accuracy: each seed (dot), the mean (bar) and its 95 % interval (line)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size((longest * 7 + 14).clamp(120, 560))
            .build_cartesian_2d(lo..hi, 0.0..n)
            .map_err(err)?;
        // Slot k (from the top) is drawn at n - k - 0.5: ticks every half slot land on every
        // slot's middle.
        let names: Vec<String> = slots.iter().rev().map(|s| s.0.clone()).collect();
        chart
            .configure_mesh()
            .x_desc("validation accuracy")
            .x_label_formatter(&value_tick)
            .y_labels(slots.len().max(1) * 2 + 1)
            .y_label_formatter(&|y| {
                let i = y.floor() as usize;
                if (y - y.floor() - 0.5).abs() < 1e-6 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_style(("sans-serif", 12))
            .disable_y_mesh()
            .draw()
            .map_err(err)?;
        for (k, (_, line)) in slots.iter().enumerate() {
            let Some(line) = line.map(|i| &lines[i]) else {
                continue;
            };
            let y = n - k as f64 - 0.5;
            if let Some((a, b)) = line.interval {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(a, y), (b, y)],
                        VAL_COLOR.stroke_width(2),
                    )))
                    .map_err(err)?;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(line.mean, y - 0.3), (line.mean, y + 0.3)],
                    BLACK.stroke_width(3),
                )))
                .map_err(err)?;
            chart
                .draw_series(
                    line.seeds
                        .iter()
                        .map(|v| Circle::new((*v, y), 4, GRAD_COLOR.mix(0.8).filled())),
                )
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Writes a run's figures into its directory: figure1, lr, curves (PNG and SVG each).
pub fn plot_run(run: &RunRecord) -> Result<Vec<PathBuf>> {
    if run.history.is_empty() {
        anyhow::bail!("{} has no recorded epoch to plot yet", run.dir.display());
    }
    let mut written = save(&Figure1(run), &run.dir.join("figure1"))?;
    written.extend(save(&LrFigure(run), &run.dir.join("lr"))?);
    written.extend(save(&CurvesFigure(run), &run.dir.join("curves"))?);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_stay_short_and_epochs_whole() {
        for v in [
            1e300,
            -3.5e40,
            1.234_567e-9,
            123_456.0,
            0.123_456_7,
            2.0,
            0.0,
        ] {
            let text = value_tick(&v);
            assert!(text.len() <= 10, "{v}: {text}");
        }
        assert_eq!(value_tick(&2.5), "2.5");
        assert_eq!(value_tick(&1e30), "1.00e30");
        assert_eq!(epoch_tick(&3.0), "3");
        assert_eq!(epoch_tick(&2.5), "");
    }

    #[test]
    fn a_single_value_gets_a_readable_range() {
        // One epoch: the axis must span enough for its labels to read different numbers.
        let (lo, hi) = range([0.7321].into_iter());
        assert!(lo < 0.7321 && hi > 0.7321);
        assert!(hi - lo > 0.05, "{lo}..{hi}");
        let (lo, hi) = range([0.0, 0.0].into_iter());
        assert!(hi - lo >= 2e-3, "{lo}..{hi}");
        let (lo, hi) = range([1.0, 3.0].into_iter());
        assert!((lo - 0.9).abs() < 1e-12 && (hi - 3.1).abs() < 1e-12);
    }
}
