//! Replaying the scheduler on recorded metrics: reads per-epoch records (a
//! run's `metrics.jsonl`, or any JSONL with the five observed fields), checks
//! them, and gives the decisions the rules give, e.g. under other thresholds.

use crate::scheduler::{
    Decision, NoiseScheduler, NoiseSchedulerConfig, Observation, SchedulerError,
};
use std::path::Path;

const FIELDS: [&str; 4] = ["train_loss", "val_loss", "grad_norm", "weight_update"];

/// Why a metrics stream cannot be replayed; every message names its source and line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ReplayError(pub String);

/// Parses JSONL observations; every problem names its line.
pub fn parse_observations(text: &str, source: &str) -> Result<Vec<Observation>, ReplayError> {
    let mut out: Vec<Observation> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{source} line {}", i + 1);
        let observation = parse_line(line, &at).map_err(ReplayError)?;
        let expected = out.last().map_or(1, |o| o.epoch + 1);
        if observation.epoch != expected {
            return Err(ReplayError(format!(
                "{at}: epoch {} where epoch {expected} was expected (epochs must start at 1 and be consecutive)",
                observation.epoch
            )));
        }
        out.push(observation);
    }
    if out.is_empty() {
        return Err(ReplayError(format!("{source} holds no epoch records")));
    }
    Ok(out)
}

fn parse_line(line: &str, at: &str) -> Result<Observation, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("{at} is not valid JSON ({e})"))?;
    let Some(obj) = value.as_object() else {
        return Err(format!("{at} is not a JSON object"));
    };
    let Some(epoch) = obj.get("epoch").and_then(|v| v.as_u64()).filter(|e| *e > 0) else {
        return Err(format!("{at} has no \"epoch\" (a positive integer)"));
    };
    let mut values = [0.0; 4];
    for (slot, name) in values.iter_mut().zip(FIELDS) {
        *slot = match obj.get(name) {
            None => return Err(format!("{at} has no \"{name}\"")),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 => x,
                Some(x) if x.is_finite() => {
                    return Err(format!(
                        "{at}: \"{name}\" is {x}, but losses, norms and updates cannot be negative"
                    ));
                }
                _ => return Err(format!("{at}: \"{name}\" is {v}, not a finite number")),
            },
        };
    }
    Ok(Observation {
        epoch,
        train_loss: values[0],
        val_loss: values[1],
        grad_norm: values[2],
        weight_update: values[3],
    })
}

/// Reads and parses a JSONL file of observations.
pub fn read_observations(path: &Path) -> Result<Vec<Observation>, ReplayError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ReplayError(format!("could not read {} ({e})", path.display())))?;
    parse_observations(&text, &path.display().to_string())
}

/// The decision after every observed epoch, from a fresh scheduler.
pub fn replay(
    observations: &[Observation],
    config: NoiseSchedulerConfig,
    schedule_epochs: u64,
) -> Result<Vec<Decision>, SchedulerError> {
    let mut scheduler = NoiseScheduler::new(config, schedule_epochs)?;
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
            (
                ok.replace("\"grad_norm\": 1", "\"grad_norm\": -0.5"),
                "line 1: \"grad_norm\" is -0.5, but losses, norms and updates cannot be negative",
            ),
            (format!("{ok}\nnot json"), "line 2 is not valid JSON"),
        ];
        for (text, needle) in cases {
            let err = parse_observations(&text, "m.jsonl")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // Other fields are ignored.
        let extra = ok.replace("}", ", \"val_acc\": 0.5, \"decision\": {}}");
        assert_eq!(parse_observations(&extra, "m").unwrap().len(), 1);
    }

    #[test]
    fn replay_refuses_epochs_past_the_schedule() {
        let line = |e: u64| {
            format!(
                r#"{{"epoch": {e}, "train_loss": 1, "val_loss": 1, "grad_norm": 1, "weight_update": 0.1}}"#
            )
        };
        let text: Vec<String> = (1..=4).map(line).collect();
        let observations = parse_observations(&text.join("\n"), "m").unwrap();
        assert_eq!(
            replay(&observations, NoiseSchedulerConfig::default(), 4)
                .unwrap()
                .len(),
            4
        );
        let err = replay(&observations, NoiseSchedulerConfig::default(), 3).unwrap_err();
        assert!(err.to_string().contains("epoch 4 is past"), "{err}");
    }
}
