//! Experiments: sweep files, their cells, and running them (in parallel, resumably,
//! with a lock per cell so that several sweep processes can share a directory).

pub mod cell_state;
pub mod runner;
pub mod slurm;
pub mod sweep;

pub use cell_state::{CellState, CellStatus, cell_status};
pub use runner::{CellRun, SweepOutcome, run_cell, run_sweep};
pub use sweep::{BaseOverrides, Cell, Sweep, SweepFile, SweepOverrides, read_cells};
