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

use crate::error::{Code, Failure, Plain};

/// The error for a command whose implementation has not landed yet.
pub(crate) fn not_yet(what: &str) -> Failure {
    Plain::new(
        Code::E016,
        format!("`{what}` is not available in this build"),
    )
    .into()
}
