//! The one way out of the process for what commands print (in the spirit of
//! cargo's `Shell`): data (documents, tables, the final result) to stdout,
//! chatter (recovery, hooks, progress lines, evidence of failures) to
//! stderr. Quiet, verbose and colour are decided once, when the [`Output`] is
//! made; every byte passes `redact`; a reader that went away ends the output
//! quietly; progress bars are cleared while a line is printed.
//!
//! The server runs the same commands with a captured output
//! ([`Output::captured`]): what would go to stdout is handed to a sink.

use std::io::{BufRead, Write};
use std::sync::Mutex;

use crate::error::{Code, Failure, Plain};

/// How a command's result is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable text (colour on a terminal)
    Human,
    /// A versioned JSON document (or one JSON event per line while applying)
    Json,
    /// Markdown, for pull-request comments
    Markdown,
    /// YAML (for `health` and `inventory`)
    Yaml,
}

/// A receiver of captured stdout.
type Sink = Box<dyn FnMut(&str) + Send>;

/// Where and how a command prints. Made once per command (by `cli`, or by
/// the server for a call).
pub struct Output {
    format: Format,
    quiet: bool,
    verbose: u8,
    color: bool,
    interactive: bool,
    sink: Mutex<Option<Sink>>,
    /// The progress bars on screen, cleared while a line is printed.
    bars: Mutex<Option<indicatif::MultiProgress>>,
}

impl Output {
    /// Output to this process's stdout and stderr: colour only on a
    /// terminal and without `no_color` or `NO_COLOR`; prompts and progress
    /// bars only when stdin and stdout are terminals.
    pub fn terminal(format: Format, quiet: bool, verbose: u8, no_color: bool) -> Self {
        use std::io::IsTerminal;
        let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let stdout_tty = std::io::stdout().is_terminal();
        let color = !no_color && !no_color_env && stdout_tty;
        let interactive = stdout_tty && std::io::stdin().is_terminal();
        Self {
            format,
            quiet,
            verbose,
            color,
            interactive,
            sink: Mutex::new(None),
            bars: Mutex::new(None),
        }
    }

    /// Quiet JSON output whose stdout goes to `sink` (redacted, as always):
    /// the server returns or streams what a command prints.
    pub(crate) fn captured(sink: impl FnMut(&str) + Send + 'static) -> Self {
        Self {
            format: Format::Json,
            quiet: true,
            verbose: 0,
            color: false,
            interactive: false,
            sink: Mutex::new(Some(Box::new(sink))),
            bars: Mutex::new(None),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Only errors and the final result.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    pub(crate) fn verbose(&self) -> u8 {
        self.verbose
    }

    /// Colour on stdout.
    pub fn color(&self) -> bool {
        self.color
    }

    /// stdin and stdout are terminals (confirmation prompts, progress bars).
    pub(crate) fn interactive(&self) -> bool {
        self.interactive
    }

    /// Writes data (a document, a table, the final result) to stdout; a
    /// reader that went away (`| head`) is not an error.
    pub fn data(&self, text: &str) -> Result<(), Failure> {
        let text = crate::redact::text(text);
        if let Some(sink) = self.sink.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            sink(&text);
            return Ok(());
        }
        self.cleared(|| {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        })
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| Plain::new(Code::E016, format!("cannot write the output: {e}")).into())
    }

    /// [`Output::data`] where a failure to write cannot change the outcome.
    pub(crate) fn data_lossy(&self, text: &str) {
        let _ = self.data(text);
    }

    /// Raw bytes to stdout (a man page): not text, not redacted.
    pub fn bytes(&self, bytes: &[u8]) -> Result<(), Failure> {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| Plain::new(Code::E016, format!("cannot write the output: {e}")).into())
    }

    /// A line of chatter on stderr, left out with `-q` (and when captured).
    pub fn status(&self, line: &str) {
        if !self.quiet {
            self.stderr(line);
        }
    }

    /// A line on stderr whatever `-q` says: errors and their evidence.
    pub fn error(&self, line: &str) {
        if self
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return;
        }
        self.stderr(line);
    }

    fn stderr(&self, line: &str) {
        let text = crate::redact::text(line);
        let _ = self.cleared(|| {
            let mut err = std::io::stderr().lock();
            writeln!(err, "{text}").and_then(|()| err.flush())
        });
    }

    /// Asks `question` on stderr and reads one line of stdin.
    pub(crate) fn prompt(&self, question: &str) -> String {
        let _ = self.cleared(|| {
            let mut err = std::io::stderr().lock();
            write!(err, "{}", crate::redact::text(question)).and_then(|()| err.flush())
        });
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        answer
    }

    /// Progress bars drawn on stderr, cleared whenever this output prints.
    pub(crate) fn progress_bars(&self) -> indicatif::MultiProgress {
        let multi =
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
        *self.bars.lock().unwrap_or_else(|e| e.into_inner()) = Some(multi.clone());
        multi
    }

    /// Runs `write` with the progress bars (if any) cleared from the screen.
    fn cleared<R>(&self, write: impl FnOnce() -> R) -> R {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bars {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

/// Where log lines (`tracing`) go: stderr, redacted.
pub(crate) fn log_writer() -> crate::redact::Writer<std::io::Stderr> {
    crate::redact::Writer(std::io::stderr())
}
