//! Error codes and the top-level failure type.
//!
//! Every error the tool reports carries one [`Code`]; the seeds' codes
//! (E001–E010, S001–S005) keep their meaning, and the codes from E011 up are
//! this tool's own. `docs/errors.md` lists every code with an example and a fix,
//! and a test fails when one is missing there.
//!
//! Modules define their own error types with data variants (thiserror for the
//! message) and implement [`Coded`]: the code, the help line and the exit code
//! follow from the variant, never from a code literal, and nothing reads a code
//! back out of rendered text. `coded_diagnostic!` makes such a type a miette
//! diagnostic, the same way for every one; `render` shows it (terminal text,
//! plain text, JSON). Only `cli` turns a [`Failure`] into printed output and an
//! exit code.

use std::fmt;

/// A stable error code, shown as `deploy_code::E004` by miette.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// E001 CONFIG_NOT_FOUND: the configuration file does not exist or cannot be read.
    E001,
    /// E002 CONFIG_INVALID: the configuration does not render, parse or validate.
    E002,
    /// E003 BINARY_NOT_FOUND: a service's command (or a health-check command) is not found.
    E003,
    /// E004 INSUFFICIENT_RESOURCES: the deployment does not fit the capacity.
    E004,
    /// E005 SERVICE_START_FAILED: a service could not be started.
    E005,
    /// E006 HEALTH_CHECK_FAILED: a service did not pass its health gate.
    E006,
    /// E007 DEPENDENCY_FAILED: a dependency is missing, disabled or failed.
    E007,
    /// E008 TIMEOUT_EXCEEDED: an apply, rollback or lock wait ran out of time.
    E008,
    /// E009 ROLLBACK_FAILED: a rollback did not complete.
    E009,
    /// E010 NETWORK_ERROR: a network could not be set up, or an endpoint is unreachable.
    E010,
    /// E011 STATE_LOCKED: another run holds the state lock.
    E011,
    /// E012 STATE_UNUSABLE: the state file is foreign, newer, corrupt or unsafe.
    E012,
    /// E013 PLAN_STALE: a saved plan no longer matches the state or the configuration.
    E013,
    /// E014 BACKEND_UNAVAILABLE: the Docker engine (or Swarm) cannot be reached.
    E014,
    /// E015 IMAGE_UNAVAILABLE: an image is neither present nor pullable.
    E015,
    /// E016 INVALID_ARGUMENT: a command-line argument or an input file is wrong.
    E016,
    /// S001 SERVICE_NOT_FOUND: no such service in the configuration or the state.
    S001,
    /// S002 SERVICE_ALREADY_EXISTS: a service name is defined twice.
    S002,
    /// S003 INVALID_SERVICE_CONFIG: a service's definition is invalid.
    S003,
    /// S004 PORT_CONFLICT: a host port is claimed twice or already in use.
    S004,
    /// S005 VOLUME_MOUNT_FAILED: a volume could not be created or mounted.
    S005,
}

impl Code {
    pub const ALL: [Code; 21] = [
        Code::E001,
        Code::E002,
        Code::E003,
        Code::E004,
        Code::E005,
        Code::E006,
        Code::E007,
        Code::E008,
        Code::E009,
        Code::E010,
        Code::E011,
        Code::E012,
        Code::E013,
        Code::E014,
        Code::E015,
        Code::E016,
        Code::S001,
        Code::S002,
        Code::S003,
        Code::S004,
        Code::S005,
    ];

    /// `E004`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::E001 => "E001",
            Code::E002 => "E002",
            Code::E003 => "E003",
            Code::E004 => "E004",
            Code::E005 => "E005",
            Code::E006 => "E006",
            Code::E007 => "E007",
            Code::E008 => "E008",
            Code::E009 => "E009",
            Code::E010 => "E010",
            Code::E011 => "E011",
            Code::E012 => "E012",
            Code::E013 => "E013",
            Code::E014 => "E014",
            Code::E015 => "E015",
            Code::E016 => "E016",
            Code::S001 => "S001",
            Code::S002 => "S002",
            Code::S003 => "S003",
            Code::S004 => "S004",
            Code::S005 => "S005",
        }
    }

    /// `INSUFFICIENT_RESOURCES`.
    pub fn name(self) -> &'static str {
        match self {
            Code::E001 => "CONFIG_NOT_FOUND",
            Code::E002 => "CONFIG_INVALID",
            Code::E003 => "BINARY_NOT_FOUND",
            Code::E004 => "INSUFFICIENT_RESOURCES",
            Code::E005 => "SERVICE_START_FAILED",
            Code::E006 => "HEALTH_CHECK_FAILED",
            Code::E007 => "DEPENDENCY_FAILED",
            Code::E008 => "TIMEOUT_EXCEEDED",
            Code::E009 => "ROLLBACK_FAILED",
            Code::E010 => "NETWORK_ERROR",
            Code::E011 => "STATE_LOCKED",
            Code::E012 => "STATE_UNUSABLE",
            Code::E013 => "PLAN_STALE",
            Code::E014 => "BACKEND_UNAVAILABLE",
            Code::E015 => "IMAGE_UNAVAILABLE",
            Code::E016 => "INVALID_ARGUMENT",
            Code::S001 => "SERVICE_NOT_FOUND",
            Code::S002 => "SERVICE_ALREADY_EXISTS",
            Code::S003 => "INVALID_SERVICE_CONFIG",
            Code::S004 => "PORT_CONFLICT",
            Code::S005 => "VOLUME_MOUNT_FAILED",
        }
    }

    /// `deploy_code::E004`, as miette shows it.
    pub(crate) fn diagnostic_code(self) -> String {
        format!("deploy_code::{}", self.as_str())
    }

    pub fn parse(code: &str) -> Option<Code> {
        let code = code.strip_prefix("deploy_code::").unwrap_or(code);
        let code = code.split("::").next().unwrap_or(code);
        Code::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Code::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown code `{s}`")))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Process exit codes. Documented in `docs/exit-codes.md`.
pub mod exit {
    /// Success; for `plan --detailed-exitcode`: no changes.
    pub(crate) const OK: u8 = 0;
    /// An error before any change was made.
    pub(crate) const ERROR: u8 = 1;
    /// `plan --detailed-exitcode`: the plan has changes.
    pub(crate) const CHANGES: u8 = 2;
    /// The plan is infeasible (capacity, GPUs, ports); `apply` refused it.
    pub(crate) const INFEASIBLE: u8 = 3;
    /// `apply` failed and rolled back cleanly: the previous deployment runs.
    pub(crate) const ROLLED_BACK: u8 = 4;
    /// `apply` failed and the rollback did not complete: see the output and the state.
    pub(crate) const ROLLBACK_FAILED: u8 = 5;
}

/// What a command returns when it fails: a rendered-later diagnostic, its
/// code and the exit code it implies, both taken from the error's variant
/// ([`Coded`]) when it is made, never read back from the rendering.
pub struct Failure {
    pub report: miette::Report,
    pub code: Code,
    pub exit_code: u8,
}

impl Failure {
    /// A failure whose exit code follows from the error's variant.
    pub(crate) fn coded<E>(err: E) -> Self
    where
        E: Coded + miette::Diagnostic + Send + Sync + 'static,
    {
        Self {
            code: err.error_code(),
            exit_code: err.exit_code(),
            report: miette::Report::new(err),
        }
    }
}

/// Any coded error converts into a failure with exit code 1 (`?` in a
/// command); [`Failure::coded`] keeps the variant's own exit code.
impl<E> From<E> for Failure
where
    E: Coded + miette::Diagnostic + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        Self {
            code: err.error_code(),
            exit_code: exit::ERROR,
            report: miette::Report::new(err),
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Failure(exit {}): {:?}", self.exit_code, self.report)
    }
}

/// An error whose code and help line follow from its variant (its message is
/// its `Display`). [`coded_diagnostic!`] makes it a miette diagnostic, so that
/// every such error is shown the same way.
pub trait Coded: std::error::Error {
    /// The code, from the variant.
    fn error_code(&self) -> Code;
    /// What to do next, when there is something to say.
    fn help_text(&self) -> Option<String>;
    /// The process exit code it implies.
    fn exit_code(&self) -> u8 {
        exit::ERROR
    }
}

/// `impl miette::Diagnostic` for a [`Coded`] error: its code and help line.
macro_rules! coded_diagnostic {
    ($t:ty) => {
        impl miette::Diagnostic for $t {
            fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
                Some(Box::new(
                    $crate::error::Coded::error_code(self).diagnostic_code(),
                ))
            }

            fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
                $crate::error::Coded::help_text(self)
                    .map(|h| Box::new(h) as Box<dyn std::fmt::Display + 'a>)
            }
        }
    };
}
pub(crate) use coded_diagnostic;

/// How a run of `apply` (or `destroy`) ends when it does not succeed; each
/// variant implies its exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The plan does not fit the capacity; nothing was changed.
    #[error("the plan does not fit: {}", .problems.join("; "))]
    Infeasible {
        problems: Vec<String>,
        /// What an operator can change, each once.
        remedies: Vec<&'static str>,
    },
    /// A service failed and the run was rolled back: the previous deployment runs.
    #[error("apply of revision {revision} failed and was rolled back: {reason}")]
    RolledBack {
        revision: u64,
        /// The code of the first failure.
        code: Code,
        reason: String,
    },
    /// A service failed and the rollback did not complete (or was not made).
    #[error("apply of revision {revision} failed and was not fully rolled back: {what}")]
    NotRolledBack { revision: u64, what: String },
    /// SIGINT or SIGTERM stopped the run before its first change: as an
    /// interrupted run that rolled back, the previous deployment runs.
    #[error("interrupted during {during}: nothing was changed")]
    Interrupted { during: String },
}

impl Coded for RunError {
    fn error_code(&self) -> Code {
        match self {
            RunError::Infeasible { .. } => Code::E004,
            RunError::RolledBack { code, .. } => *code,
            RunError::NotRolledBack { .. } => Code::E009,
            RunError::Interrupted { .. } => Code::E008,
        }
    }

    fn help_text(&self) -> Option<String> {
        Some(match self {
            RunError::Infeasible { remedies, .. } => {
                let mut r = remedies.clone();
                r.push("or run with `--force` to apply anyway");
                r.join("; ")
            }
            RunError::RolledBack { .. } => "the previous deployment runs again; fix the failing service (see the evidence above, or `deploy-code state history`) and apply again".to_owned(),
            RunError::NotRolledBack { .. } => "`deploy-code status` shows what runs; `deploy-code plan` shows what an apply would repair".to_owned(),
            RunError::Interrupted { .. } => "the previous deployment runs as it did; run the command again to make the change".to_owned(),
        })
    }

    fn exit_code(&self) -> u8 {
        match self {
            RunError::Infeasible { .. } => exit::INFEASIBLE,
            RunError::RolledBack { .. } | RunError::Interrupted { .. } => exit::ROLLED_BACK,
            RunError::NotRolledBack { .. } => exit::ROLLBACK_FAILED,
        }
    }
}

coded_diagnostic!(RunError);

/// A plain error with a code, a message and a help line, for errors that point at
/// no file (arguments, the environment).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Plain {
    pub code: Code,
    pub message: String,
    pub help: Option<String>,
}

impl Plain {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl Coded for Plain {
    fn error_code(&self) -> Code {
        self.code
    }

    fn help_text(&self) -> Option<String> {
        self.help.clone()
    }
}

coded_diagnostic!(Plain);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in Code::ALL {
            assert_eq!(Code::parse(code.as_str()), Some(code));
            assert_eq!(
                Code::parse(&format!("deploy_code::{code}::unknown_key")),
                Some(code)
            );
        }
    }
}
