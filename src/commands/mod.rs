//! One file per group of commands: each turns resolved arguments into calls on
//! the engine and hands the results to `render`. They return an exit code or a
//! `Failure`; they never call `std::process::exit`.

/// Prints to stdout through [`out`]: redacted, and quiet when the reader went away.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::commands::out(&format!($($t)*))
    };
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::commands::out(&format!("{}\n", format_args!($($t)*)))
    };
}

pub mod apply;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod serve;
pub mod state;
pub mod status;
pub mod validate;

use std::io::Write;

use crate::cli::Context;
use crate::config::{self, LoadOptions, LoadedConfig};
use crate::error::{Code, Failure, Plain};

/// The configuration as far as a reader of the state needs it (its
/// `state.path` and project, and its secrets, which output must redact), or
/// `None` when it does not load: reading the state needs no services.
pub(crate) fn config_for_reading(ctx: &Context) -> Option<LoadedConfig> {
    config::load(&LoadOptions {
        allow_empty: true,
        ..ctx.load_options()
    })
    .ok()
}

/// The state file of a command that only reads it, by the one rule:
/// `--state` (or `DEPLOY_CODE_STATE`), else the configuration's
/// `state.path`, else `.deploy-code/state.db` beside the configuration.
pub(crate) fn reader_state_path(ctx: &Context) -> std::path::PathBuf {
    let loaded = config_for_reading(ctx);
    config::state_path(
        ctx.global.state.as_deref(),
        loaded.as_ref(),
        &ctx.global.config,
    )
}

/// Writes `text` to stdout where a failure to write cannot change the outcome.
pub(crate) fn out(text: &str) {
    let _ = print(text);
}

/// A receiver of captured output.
type Sink = Box<dyn FnMut(&str)>;

thread_local! {
    /// Where this thread's output goes instead of stdout (see [`capture`]).
    static SINK: std::cell::RefCell<Option<Sink>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with everything it would print to stdout (redacted, as always)
/// handed to `sink` instead: the server runs the same commands as the CLI
/// and returns or streams what they print. Only this thread is affected.
pub(crate) fn capture<R>(sink: impl FnMut(&str) + 'static, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SINK.with(|s| s.borrow_mut().take());
        }
    }
    SINK.with(|s| *s.borrow_mut() = Some(Box::new(sink)));
    let _reset = Reset;
    f()
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn print(text: &str) -> Result<(), Failure> {
    let text = crate::redact::text(text);
    let captured = SINK.with(|s| match s.borrow_mut().as_mut() {
        Some(sink) => {
            sink(&text);
            true
        }
        None => false,
    });
    if captured {
        return Ok(());
    }
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
