//! One file per group of commands: each turns resolved arguments into calls on
//! the engine and hands the results to `render`. They return an exit code or a
//! `Failure`; they never call `std::process::exit`.

pub mod apply;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod state;
pub mod status;
pub mod validate;
