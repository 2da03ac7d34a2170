//! What the engine reports: the events of a run (through the [`Hook`]), its
//! [`Report`], and how a failure is typed ([`FailureKind`]) and evidenced.

use serde::{Deserialize, Serialize};

use super::health::ProbeRecord;
use crate::error::Code;
use crate::model::ServiceName;
use crate::plan::Action;
use crate::state::{Handle, Outcome, StateError};

/// What the engine reports while it runs (rendered by the command).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ApplyStarted {
        revision: u64,
        phases: usize,
        actions: usize,
    },
    /// A step of getting a service ready before the first phase (an image
    /// pull, say).
    Prepare {
        service: ServiceName,
        detail: String,
    },
    PhaseStarted {
        phase: usize,
        services: Vec<ServiceName>,
    },
    ActionStarted {
        service: ServiceName,
        action: Action,
    },
    InstanceStarted {
        service: ServiceName,
        handles: Vec<Handle>,
    },
    Probe {
        service: ServiceName,
        healthy: bool,
        detail: String,
    },
    InstanceStopped {
        service: ServiceName,
        handles: Vec<Handle>,
    },
    ActionSucceeded {
        service: ServiceName,
        action: Action,
        elapsed_ms: u64,
    },
    ActionFailed {
        service: ServiceName,
        action: Action,
        reason: String,
    },
    PhaseFinished {
        phase: usize,
        ok: bool,
        elapsed_ms: u64,
    },
    /// A step of a canary rollout: its start, each judgement of it, or how
    /// it ended; `counters` are the switches' counts of the new set since
    /// the step began.
    Canary {
        service: ServiceName,
        /// 1-based, of `steps`.
        step: usize,
        steps: usize,
        /// The new set's share of new connections, percent.
        weight: u8,
        verdict: CanaryVerdict,
        detail: String,
        counters: crate::switch::Counters,
    },
    RollbackStarted {
        steps: usize,
    },
    RollbackStep {
        service: ServiceName,
        step: UndoStep,
        ok: bool,
        detail: String,
    },
    Finished {
        revision: u64,
        outcome: Outcome,
        elapsed_ms: u64,
    },
}

/// Where a canary step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryVerdict {
    /// The switches send the step's share to the new set.
    Started,
    /// A judgement passed.
    Pass,
    /// A judgement failed: every connection goes back to the old set.
    Fail,
    /// `deploy-code promote`: the remaining pauses are skipped.
    Promoted,
    /// `deploy-code abort`: the step fails.
    Aborted,
}

/// The hook the engine reports through.
pub(crate) type Hook<'a> = &'a (dyn Fn(&Event) + Send + Sync);

/// What kind of failure stopped a run. The error code and the exit code
/// follow from it; nothing reads the reason's words to decide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureKind {
    /// Getting ready before the first phase failed (an image, a command, a
    /// directory): nothing was changed.
    Prepare { code: Code },
    /// The backend could not start, stop or change an instance.
    Backend { code: Code },
    /// The health gate failed.
    #[default]
    Gate,
    /// The state could not be written.
    State,
    /// The plaintext of a secret is not known to this run.
    SecretUnavailable,
    /// The run was interrupted (SIGINT, SIGTERM).
    Interrupted,
}

impl FailureKind {
    /// The error code this failure reports.
    pub fn code(self) -> Code {
        match self {
            FailureKind::Prepare { code } | FailureKind::Backend { code } => code,
            FailureKind::Gate => Code::E006,
            FailureKind::State => Code::E012,
            FailureKind::SecretUnavailable => Code::E016,
            FailureKind::Interrupted => Code::E008,
        }
    }
}

/// Why a service failed, with the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureEvidence {
    pub service: crate::model::Subject,
    pub action: Action,
    #[serde(flatten, default)]
    pub kind: FailureKind,
    pub reason: String,
    /// The last probe results.
    pub probes: Vec<ProbeRecord>,
    /// The last lines of the service's log.
    pub log_tail: Vec<String>,
}

impl FailureEvidence {
    /// The evidence with every secret of the run redacted: log tails and
    /// engine messages may carry what a service printed.
    pub fn redacted(self) -> Self {
        crate::redact::value(&self).unwrap_or(self)
    }
}

/// What one step of a rollback undoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UndoStep {
    /// Stop the instances the run started.
    StopNew,
    /// Start the instances the run stopped again.
    RestartOld,
    /// Put back what an in-place update changed.
    RevertUpdate,
    /// Stop a traffic switch the run started.
    StopSwitch,
    /// Point the switches back at the old set, then stop the new one.
    RestoreOldSet,
    /// Not undone: the rollback was aborted (a second interrupt).
    Aborted,
    /// Not undone: the rollback ran out of time.
    TimedOut,
}

impl UndoStep {
    /// `stop-new`, `restart-old`, …
    pub fn as_str(self) -> &'static str {
        match self {
            UndoStep::StopNew => "stop-new",
            UndoStep::RestartOld => "restart-old",
            UndoStep::RevertUpdate => "revert-update",
            UndoStep::StopSwitch => "stop-switch",
            UndoStep::RestoreOldSet => "restore-old-set",
            UndoStep::Aborted => "aborted",
            UndoStep::TimedOut => "timed-out",
        }
    }
}

impl std::fmt::Display for UndoStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of the rollback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackResult {
    pub service: ServiceName,
    pub step: UndoStep,
    pub ok: bool,
    pub detail: String,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub revision: u64,
    pub outcome: Outcome,
    /// Services whose action completed (before any rollback), in completion order.
    pub completed: Vec<ServiceName>,
    pub failures: Vec<FailureEvidence>,
    pub rollback: Vec<RollbackResult>,
    /// What is left where after a failure that was not fully undone.
    pub left: Vec<String>,
    pub elapsed_ms: u64,
}

impl Report {
    /// The exit code: 0 succeeded, 4 rolled back cleanly, 5 anything else.
    /// The exit code: 0 succeeded, 1 refused before any change, 4 rolled
    /// back cleanly, 5 anything else.
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::Succeeded => 0,
            _ if self.refused() => 1,
            Outcome::RolledBack => 4,
            _ => 5,
        }
    }

    /// Whether the run was refused before it changed anything (a missing
    /// image or command, say).
    pub fn refused(&self) -> bool {
        !self.failures.is_empty()
            && self
                .failures
                .iter()
                .all(|f| matches!(f.kind, FailureKind::Prepare { .. }))
    }
}

/// Why a run could not start or record. Its code and help line follow from
/// the variant ([`Coded`](crate::error::Coded)).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no backend is available for `{service}` ({backend})")]
    NoBackend { service: String, backend: String },
}

impl crate::error::Coded for ApplyError {
    fn error_code(&self) -> crate::error::Code {
        match self {
            ApplyError::State(e) => e.error_code(),
            ApplyError::NoBackend { .. } => crate::error::Code::E014,
        }
    }

    fn help_text(&self) -> Option<String> {
        match self {
            ApplyError::State(e) => e.help_text(),
            ApplyError::NoBackend { .. } => Some(
                "check that the backend of this service is reachable with `deploy-code doctor`"
                    .to_owned(),
            ),
        }
    }
}

crate::error::coded_diagnostic!(ApplyError);
