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

use std::io::Write;

use crate::error::{Code, Failure, Plain};

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn print(text: &str) -> Result<(), Failure> {
    let text = crate::redact::text(text);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| Plain::new(Code::E016, format!("cannot write the output: {e}")).into())
}
