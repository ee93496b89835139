//! TensorBoard event files, written without TensorFlow: the TFRecord framing
//! (length, masked CRC-32C of the length, payload, masked CRC-32C of the
//! payload) around hand-encoded `Event` protocol buffers holding scalar and
//! text summaries. Only the handful of fields TensorBoard reads are written.
//!
//! Every value is logged against the global optimiser step (epoch values at the
//! step that ended the epoch), so one axis serves both. A writer opened for a
//! resumed run first writes a `SessionLog.START` event at the step it resumes
//! from, which makes TensorBoard drop what an interrupted process had logged
//! past the checkpoint.

use crate::events::{Event, Observer, Progress};
use crate::train::EpochMetrics;
use adanoise_core::{NoiseKind, PolicyConfig};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `((crc >> 15) | (crc << 17)) + 0xa282ead8`, TFRecord's masked CRC-32C.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: `u64` length, its masked CRC, the payload, the payload's masked CRC.
pub fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

/// Protocol-buffer encoding of the few field types events need.
mod proto {
    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const BYTES: u64 = 2;
    const FIXED32: u64 = 5;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
        varint(out, (field << 3) | wire);
    }

    pub fn uint(out: &mut Vec<u8>, field: u64, v: u64) {
        key(out, field, VARINT);
        varint(out, v);
    }

    pub fn double(out: &mut Vec<u8>, field: u64, v: f64) {
        key(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn float(out: &mut Vec<u8>, field: u64, v: f32) {
        key(out, field, FIXED32);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(out: &mut Vec<u8>, field: u64, v: &[u8]) {
        key(out, field, BYTES);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn varints_as_the_protobuf_docs_show_them() {
            let mut out = Vec::new();
            super::varint(&mut out, 150);
            assert_eq!(out, [0x96, 0x01]);
            let mut out = Vec::new();
            super::uint(&mut out, 2, 1);
            assert_eq!(out, [0x10, 0x01]);
        }
    }
}

/// What an event carries besides its time and step.
enum Payload<'a> {
    FileVersion,
    Scalar(&'a str, f32),
    Text(&'a str, &'a str),
    SessionStart,
}

/// `Event { wall_time = 1, step = 2, file_version = 3 | summary = 5 | session_log = 7 }`.
fn encode_event(wall_time: f64, step: u64, payload: Payload) -> Vec<u8> {
    let mut event = Vec::new();
    proto::double(&mut event, 1, wall_time);
    proto::uint(&mut event, 2, step);
    match payload {
        Payload::FileVersion => proto::bytes(&mut event, 3, b"brain.Event:2"),
        Payload::SessionStart => {
            // session_log = 7: SessionLog { status = 1: START (1) }
            let mut log = Vec::new();
            proto::uint(&mut log, 1, 1);
            proto::bytes(&mut event, 7, &log);
        }
        Payload::Scalar(tag, value) => {
            // Summary { value = 1: Value { tag = 1, simple_value = 2 } }
            let mut value_msg = Vec::new();
            proto::bytes(&mut value_msg, 1, tag.as_bytes());
            proto::float(&mut value_msg, 2, value);
            let mut summary = Vec::new();
            proto::bytes(&mut summary, 1, &value_msg);
            proto::bytes(&mut event, 5, &summary);
        }
        Payload::Text(tag, text) => {
            // Value { tag = 1, metadata = 9 { plugin_data = 1 { plugin_name = 1: "text" } },
            //         tensor = 8 { dtype = 1: DT_STRING (7), tensor_shape = 2: {}, string_val = 8 } }
            let mut plugin = Vec::new();
            proto::bytes(&mut plugin, 1, b"text");
            let mut metadata = Vec::new();
            proto::bytes(&mut metadata, 1, &plugin);
            let mut tensor = Vec::new();
            proto::uint(&mut tensor, 1, 7);
            proto::bytes(&mut tensor, 2, &[]);
            proto::bytes(&mut tensor, 8, text.as_bytes());
            let mut value_msg = Vec::new();
            proto::bytes(&mut value_msg, 1, tag.as_bytes());
            proto::bytes(&mut value_msg, 9, &metadata);
            proto::bytes(&mut value_msg, 8, &tensor);
            let mut summary = Vec::new();
            proto::bytes(&mut summary, 1, &value_msg);
            proto::bytes(&mut event, 5, &summary);
        }
    }
    event
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Makes sure `dir` can hold event files (creating it), so that a bad `--tensorboard` is
/// refused before a run directory is touched.
pub fn check_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "--tensorboard {} is a file, not a directory: give a directory for the event files",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "could not create the TensorBoard directory {}: give another --tensorboard",
            dir.display()
        )
    })
}

/// An open event file in a TensorBoard log directory.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (made if missing). `resumed_from`: the step a
    /// resumed run continues after; what was logged past it is dropped by TensorBoard.
    pub fn create(dir: &Path, resumed_from: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "could not create the TensorBoard directory {}",
                dir.display()
            )
        })?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "adanoise".into());
        let stamp = now();
        let name = format!(
            "events.out.tfevents.{}.{host}.{}.{}",
            stamp as u64,
            std::process::id(),
            (stamp.fract() * 1e6) as u64
        );
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| {
            format!(
                "could not create the TensorBoard event file {}",
                path.display()
            )
        })?;
        let mut writer = Self {
            file: BufWriter::new(file),
            path,
        };
        writer.write(0, Payload::FileVersion)?;
        if let Some(step) = resumed_from {
            writer.write(step + 1, Payload::SessionStart)?;
        }
        writer.flush()?;
        Ok(writer)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, step: u64, payload: Payload) -> Result<()> {
        let bytes = record(&encode_event(now(), step, payload));
        self.file
            .write_all(&bytes)
            .with_context(|| format!("could not write to {}", self.path.display()))
    }

    /// A scalar under `tag` at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        self.write(step, Payload::Scalar(tag, value as f32))
    }

    /// A text entry under `tag` at `step` (TensorBoard's Text tab).
    pub fn text(&mut self, tag: &str, step: u64, text: &str) -> Result<()> {
        self.write(step, Payload::Text(tag, text))
    }

    /// Pushes what was written to the file (TensorBoard reads files as they grow).
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("could not write to {}", self.path.display()))
    }
}

/// Logs a run to TensorBoard as it reports its events, and passes every event on.
pub struct TensorBoardObserver<'a> {
    inner: &'a mut dyn Observer,
    writer: EventWriter,
    /// Log the running training loss and the LR about every this many steps.
    every: u64,
    next: u64,
    /// Writing failed once (then the run goes on, and TensorBoard is no longer written).
    failed: bool,
}

impl<'a> TensorBoardObserver<'a> {
    /// Opens a new event file in `dir` for a run resumed after global step `resumed_from`
    /// (0 for a new run), passing every event on to `inner`.
    pub fn new(
        dir: &Path,
        resumed_from: u64,
        every: u64,
        inner: &'a mut dyn Observer,
    ) -> Result<Self> {
        let writer = EventWriter::create(dir, (resumed_from > 0).then_some(resumed_from))?;
        Ok(Self {
            inner,
            writer,
            every: every.max(1),
            next: resumed_from + every.max(1),
            failed: false,
        })
    }

    fn log_epoch(
        &mut self,
        m: &EpochMetrics,
        noise: NoiseKind,
        policy: &PolicyConfig,
    ) -> Result<()> {
        let step = m.steps;
        let w = &mut self.writer;
        for (tag, value) in [
            ("epoch/epoch", m.epoch as f64),
            ("epoch/train_loss", m.train_loss),
            ("epoch/train_acc", m.train_acc),
            ("epoch/val_loss", m.val_loss),
            ("epoch/val_acc", m.val_acc),
            ("epoch/lr", m.lr),
            ("epoch/grad_norm", m.grad_norm),
            ("epoch/weight_update", m.weight_update),
            ("noise/grad_sigma", m.noise_applied.grad_sigma),
            ("noise/weight_sigma", m.noise_applied.weight_sigma),
        ] {
            w.scalar(tag, step, value)?;
        }
        if let (Some(loss), Some(acc)) = (m.test_loss, m.test_acc) {
            w.scalar("epoch/test_loss", step, loss)?;
            w.scalar("epoch/test_acc", step, acc)?;
        }
        // What the field's policies inject, each only for the policy that does.
        let applied = &m.noise_applied;
        let policy_scalars = [
            ("noise/shrink", applied.shrink),
            ("noise/step_weight_sigma", applied.step_weight_sigma),
            (
                "noise/perturbations",
                applied.perturbed_steps.as_ref().map(|s| s.len() as f64),
            ),
            ("noise/label_noise", applied.label_noise),
        ];
        for (tag, value) in policy_scalars {
            if let Some(value) = value {
                w.scalar(tag, step, value)?;
            }
        }
        if let Some(steps) = applied.perturbed_steps.as_ref().filter(|s| !s.is_empty()) {
            let steps: Vec<String> = steps.iter().map(u64::to_string).collect();
            let text = format!(
                "epoch {}: perturbed after steps {}",
                m.epoch,
                steps.join(", ")
            );
            w.text("noise/perturbations", step, &text)?;
        }
        if let Some(d) = &m.decision {
            let text = if d.flags.is_empty() {
                format!("after epoch {}: no flags", m.epoch)
            } else {
                format!("after epoch {}: {}", m.epoch, d.describe(noise, policy))
            };
            w.text("noise/decision", step, &text)?;
        }
        w.flush()
    }

    fn log_progress(&mut self, p: &Progress) -> Result<()> {
        if p.global_step < self.next {
            return Ok(());
        }
        while self.next <= p.global_step {
            self.next += self.every;
        }
        self.writer
            .scalar("step/train_loss", p.global_step, p.loss)?;
        self.writer.scalar("step/lr", p.global_step, p.lr)?;
        // TensorBoard reads files as they grow: the curves move during the epoch.
        self.writer.flush()
    }

    fn log(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::EpochEnded {
                metrics,
                noise,
                policy,
                ..
            } => self.log_epoch(metrics, *noise, policy),
            Event::Progress(p) => self.log_progress(p),
            Event::Stopped { .. } => self.writer.flush(),
            _ => Ok(()),
        }
    }
}

impl Observer for TensorBoardObserver<'_> {
    fn on(&mut self, event: &Event) {
        if !self.failed
            && let Err(e) = self.log(event)
        {
            self.failed = true;
            let warning = format!("TensorBoard logging stopped: {e:#}");
            self.inner.on(&Event::Warning(&warning));
        }
        self.inner.on(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask() {
        // The CRC-32C check value, and TensorFlow's mask of it worked out by hand:
        // ((0xe3069283 >> 15) | (0xe3069283 << 17)) + 0xa282ead8 mod 2^32.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn a_record_frames_its_payload() {
        let r = record(b"abc");
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
    }

    #[test]
    fn a_scalar_event_encodes_tag_and_value() {
        let e = encode_event(1.5, 3, Payload::Scalar("val/loss", 0.25));
        // wall_time (field 1, fixed64), step (field 2, varint), summary (field 5, bytes).
        assert_eq!(e[0], 0x09);
        assert_eq!(&e[1..9], &1.5f64.to_le_bytes());
        assert_eq!(&e[9..11], &[0x10, 3]);
        assert_eq!(e[11], 0x2a);
        let tail = &e[e.len() - 4..];
        assert_eq!(tail, &0.25f32.to_le_bytes());
        assert!(e.windows(8).any(|w| w == b"val/loss"));
    }
}
