//! What kind of noise is injected: its distribution ([`NoiseKind`]).

use serde::{Deserialize, Serialize};

/// The distribution of injected noise.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    Serialize,
    Deserialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum NoiseKind {
    /// Decide and record, never inject (the baseline).
    #[default]
    None,
    /// `sigma * N(0, 1)` per element.
    Gaussian,
    /// `U(-sqrt(3) sigma, sqrt(3) sigma)` per element: the same standard deviation.
    Uniform,
}

impl NoiseKind {
    /// The name used in configs, directory names and reports.
    pub fn name(self) -> &'static str {
        self.into()
    }
}
