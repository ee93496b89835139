//! Reporting: the paper's tables from a sweep's runs, in Markdown, CSV, LaTeX
//! or HTML, and the figures (Figure 1, LR schedule, curves, sweep overview).

pub mod collect;
pub mod figures;
pub mod render;
pub mod stats;
pub mod tables;

pub use collect::{RunRecord, find_runs, find_some_runs};
pub use render::Format;
