//! The redacting log writer of a process instance.
//!
//! A process that is given secrets writes its output through a small writer
//! of its own (this binary, started as `deploy-code __log-writer FILE`)
//! instead of straight into its log file: the writer replaces every secret
//! the instance was given (and their base64 and hex forms) with
//! `(sensitive)` before a line reaches the file, so that what a service
//! prints of its secrets never lands on disk. The writer runs in a session
//! of its own, outlives `deploy-code` as the service does, and exits when the
//! service (and everything holding its output) is gone. It carries no marks:
//! it is no instance.
//!
//! The secrets reach the writer through the pipe itself, as its first line
//! (a JSON array), never through its arguments or environment.

use std::io::{BufRead, Write};
use std::path::Path;

/// The first argument that runs the writer.
pub(crate) const ARG: &str = "__log-writer";

/// The binary that runs the writer (and monitors and switches): see
/// [`crate::procfs::deploy_code_program`].
pub use crate::procfs::deploy_code_program as program;

/// Runs the writer: the first line of standard input names the secrets, the
/// rest is the instance's output, appended to `file` line by line, redacted.
pub fn run(file: &Path) -> u8 {
    crate::heap::for_long_lived();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut first = Vec::new();
    if input.read_until(b'\n', &mut first).is_err() {
        return 1;
    }
    let secrets: Vec<String> = serde_json::from_slice(&first).unwrap_or_default();
    for s in &secrets {
        crate::redact::register(s);
    }
    let Ok(mut out) = crate::fsperm::private_append(file) else {
        return 1;
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return 0,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let _ = out.write_all(crate::redact::text(&text).as_bytes());
                let _ = out.flush();
            }
        }
    }
}
