//! Replaying the scheduler on recorded metrics: reads per-epoch records (a run's
//! `metrics.jsonl` or any JSONL with the five observed fields), checks them, and
//! returns the decisions the rules give, e.g. under other thresholds.

use super::scheduler::{Decision, NoiseScheduler, NoiseSchedulerConfig, Observation};
use anyhow::{Context, Result, bail};
use std::path::Path;

const FIELDS: [&str; 4] = ["train_loss", "val_loss", "grad_norm", "weight_update"];

/// Parses JSONL observations; every problem names its line.
pub fn parse_observations(text: &str, source: &str) -> Result<Vec<Observation>> {
    let mut out: Vec<Observation> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{source} line {}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{} is not valid JSON", at()))?;
        let Some(obj) = value.as_object() else {
            bail!("{} is not a JSON object", at());
        };
        let epoch = match obj.get("epoch").and_then(|v| v.as_u64()) {
            Some(e) => e,
            None => bail!("{} has no \"epoch\" (a positive integer)", at()),
        };
        let mut values = [0.0; 4];
        for (slot, name) in values.iter_mut().zip(FIELDS) {
            *slot = match obj.get(name) {
                None => bail!("{} has no \"{name}\"", at()),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() => x,
                    _ => bail!("{}: \"{name}\" is {v}, not a finite number", at()),
                },
            };
        }
        let expected = out.last().map_or(1, |o| o.epoch + 1);
        if epoch != expected {
            bail!(
                "{}: epoch {epoch} where epoch {expected} was expected (epochs must start at 1 and be consecutive)",
                at()
            );
        }
        out.push(Observation {
            epoch,
            train_loss: values[0],
            val_loss: values[1],
            grad_norm: values[2],
            weight_update: values[3],
        });
    }
    if out.is_empty() {
        bail!("{source} holds no epoch records");
    }
    Ok(out)
}

pub fn read_observations(path: &Path) -> Result<Vec<Observation>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read {}", path.display()))?;
    parse_observations(&text, &path.display().to_string())
}

/// The decision after every observed epoch, from a fresh scheduler.
pub fn replay(
    observations: &[Observation],
    config: NoiseSchedulerConfig,
    schedule_epochs: u64,
) -> Vec<Decision> {
    let mut scheduler = NoiseScheduler::new(config, schedule_epochs);
    observations.iter().map(|o| scheduler.observe(*o)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_input_names_the_line() {
        let ok =
            r#"{"epoch": 1, "train_loss": 1, "val_loss": 1, "grad_norm": 1, "weight_update": 0.1}"#;
        let cases = [
            (String::new(), "no epoch records"),
            (
                format!("{ok}\n{{\"epoch\": 2, \"train_loss\": 1}}"),
                "line 2 has no \"val_loss\"",
            ),
            (
                format!("{ok}\n{}", ok.replace("\"epoch\": 1", "\"epoch\": 3")),
                "line 2: epoch 3",
            ),
            (
                ok.replace("0.1", "\"x\""),
                "line 1: \"weight_update\" is \"x\"",
            ),
            (
                ok.replace("\"val_loss\": 1", "\"val_loss\": null"),
                "not a finite number",
            ),
            (format!("{ok}\nnot json"), "line 2 is not valid JSON"),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", parse_observations(&text, "m.jsonl").unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // Other fields are ignored.
        let extra = ok.replace("}", ", \"val_acc\": 0.5, \"decision\": {}}");
        assert_eq!(parse_observations(&extra, "m").unwrap().len(), 1);
    }
}
