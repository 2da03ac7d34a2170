//! The state file: a SQLite database that remembers what was deployed.
//!
//! Holds the lineage and serial (identity for saved plans), the id of the
//! secret-digest key (the key itself lives apart, see [`key`]), one record per deployed service (its applied spec with secrets as
//! digests, runtime handles, status), the deployment history, an audit log of
//! events, an intent journal (a row before every side effect, closed after it)
//! and the lock. The schema changes only through the numbered migrations in the
//! top-level `state/` folder.
//!
//! Readers (`plan`, `state show`) never write: [`load_snapshot`] opens the file
//! read-only, takes no lock and migrates nothing on disk.

pub mod key;
pub(crate) mod restarts;
mod store;
pub use store::*;

pub use crate::instance::{GpuRef, Handle};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{BackendKind, SecretKey, ServiceName, ServiceSpec};

impl Snapshot {
    /// Refuses to compare secrets without the state's key: a state made with
    /// a key that is not at hand (a copy, a backup, another runner) would see
    /// every secret as changed.
    pub fn require_key(&self, state: &std::path::Path) -> Result<(), StateError> {
        match (&self.secret_key, &self.secret_key_id) {
            (None, Some(id)) => Err(StateError::BadKey {
                path: state.to_path_buf(),
                detail: format!(
                    "its key ({id}) is neither in `{}` nor in `{}`, and the configuration has secrets to compare",
                    key::path_for(state).display(),
                    key::ENV
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// The status of a service in the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// Deployed and passed its health gate.
    Ready,
    /// Failed during its last apply and was left in place; plans as replace.
    Tainted,
    /// A side effect is under way (or was interrupted).
    Pending,
}

/// One deployed service as the state records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: ServiceName,
    /// The applied spec, canonical, secrets as digests.
    pub spec: ServiceSpec,
    pub spec_hash: String,
    pub backend: BackendKind,
    pub handles: Vec<Handle>,
    pub status: ServiceStatus,
    /// The GPUs it was given.
    #[serde(default)]
    pub gpus: Vec<GpuRef>,
    /// The revision (deployment) that last changed it.
    pub revision: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub updated_at: String,
}

/// The holder of the state lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub host: String,
    pub pid: u32,
    pub command: String,
    /// RFC 3339 UTC.
    pub acquired_at: String,
}

/// A journal row for a side effect that was started and never closed: the run
/// that wrote it was interrupted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenIntent {
    pub id: i64,
    pub revision: u64,
    pub service: ServiceName,
    pub action: IntentAction,
    pub detail: serde_json::Value,
    pub started_at: String,
}

/// Everything a plan needs from the state, read in one consistent transaction.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `None` for a state that does not exist yet.
    pub lineage: Option<String>,
    pub serial: u64,
    /// The newest deployment revision (0 when none).
    pub revision: u64,
    /// The secret-digest key, when it is at hand (see [`key`]).
    pub secret_key: Option<SecretKey>,
    /// The id of the key the state was made with (see [`key::id`]).
    pub secret_key_id: Option<String>,
    pub services: BTreeMap<ServiceName, ServiceRecord>,
    pub open_intents: Vec<OpenIntent>,
    pub lock: Option<LockInfo>,
    /// `PRAGMA user_version` of the file (0 when none).
    pub schema_version: u32,
}

/// Outcome of a deployment in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still running (or interrupted: the run never closed it).
    InProgress,
    Succeeded,
    Failed,
    RolledBack,
    RollbackFailed,
}

/// Who is running this command, for the lock and the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub user: String,
    /// The command line, e.g. `deploy-code apply --auto-approve`.
    pub command: String,
}

/// A new row of the deployment history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewDeployment {
    /// The command line.
    pub command: String,
    /// The rendered config with secrets redacted.
    pub config_snapshot: String,
    /// The rendered config as a template that renders it again, each secret
    /// read anew by name (`LoadedConfig::replay_render`): what `rollback`
    /// re-applies.
    pub config_replay: String,
    pub config_hash: String,
    /// The plan's summary, as JSON.
    pub plan_summary: serde_json::Value,
}

/// One row of the deployment history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub revision: u64,
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    pub user: String,
    pub host: String,
    pub command: String,
    pub config_snapshot: String,
    pub config_hash: String,
    pub plan_summary: serde_json::Value,
    pub outcome: Outcome,
    /// Failure evidence: the failing service, the last probe results, log lines.
    #[serde(default)]
    pub evidence: serde_json::Value,
    /// What `rollback` re-applies (see [`NewDeployment::config_replay`]);
    /// `None` for a revision recorded before the history kept it whose
    /// configuration withheld secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_replay: Option<String>,
}

/// What an intent row says is about to happen (`intents.action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntentAction {
    /// Start a service's instances.
    Start,
    /// Stop a service's instances.
    Stop,
    /// Change a running instance in place.
    Update,
    /// Start a traffic switch.
    SwitchStart,
    /// Point a traffic switch at a new set of instances.
    SwitchSet,
    /// Start the previous instances again, undoing a run.
    RollbackStart,
    /// Stop the instances a run started, undoing it.
    RollbackStop,
    /// Stop an instance a killed run left behind.
    ReconcileStop,
    /// Stop an old set kept after a blue-green flip, its window closed.
    StopKept,
}

impl IntentAction {
    /// `start`, `stop`, `update`, `switch-start`, …
    pub fn as_str(self) -> &'static str {
        match self {
            IntentAction::Start => "start",
            IntentAction::Stop => "stop",
            IntentAction::Update => "update",
            IntentAction::SwitchStart => "switch-start",
            IntentAction::SwitchSet => "switch-set",
            IntentAction::RollbackStart => "rollback-start",
            IntentAction::RollbackStop => "rollback-stop",
            IntentAction::ReconcileStop => "reconcile-stop",
            IntentAction::StopKept => "stop-kept",
        }
    }
}

impl std::fmt::Display for IntentAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event row records (`events.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A planned action's result.
    Create,
    Update,
    Replace,
    Destroy,
    /// A step of undoing a run.
    Rollback,
    /// An instance found by its marks was taken into the state.
    Adopt,
    /// `state rm` removed a service from the state.
    Forget,
    /// A monitor restarted an instance (or opened its circuit).
    Restart,
    /// A call to the server (`serve`).
    Audit,
    /// A canary step's verdict.
    Canary,
    /// An old set kept after a blue-green flip (`blue_green.keep_seconds`).
    #[serde(rename = "kept-old-set")]
    KeptOldSet,
}

impl EventKind {
    /// `create`, `rollback`, `audit`, …
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Update => "update",
            EventKind::Replace => "replace",
            EventKind::Destroy => "destroy",
            EventKind::Rollback => "rollback",
            EventKind::Adopt => "adopt",
            EventKind::Forget => "forget",
            EventKind::Restart => "restart",
            EventKind::Audit => "audit",
            EventKind::Canary => "canary",
            EventKind::KeptOldSet => "kept-old-set",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How what an event records ended (`events.outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventOutcome {
    Succeeded,
    Failed,
    /// A server call without valid credentials.
    Unauthenticated,
    /// A server call whose role lacks the permission.
    Denied,
    /// An old set is kept running after a flip.
    Kept,
    /// A kept old set was stopped at the end of its window.
    Released,
    /// `rollback` flipped back to a kept old set.
    FlippedBack,
}

impl EventOutcome {
    /// `succeeded`, `failed`, `unauthenticated`, `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Succeeded => "succeeded",
            EventOutcome::Failed => "failed",
            EventOutcome::Unauthenticated => "unauthenticated",
            EventOutcome::Denied => "denied",
            EventOutcome::Kept => "kept",
            EventOutcome::Released => "released",
            EventOutcome::FlippedBack => "flipped-back",
        }
    }
}

impl std::fmt::Display for EventOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub revision: u64,
    pub at: String,
    #[serde(default)]
    pub service: Option<ServiceName>,
    pub kind: EventKind,
    pub outcome: EventOutcome,
    pub message: String,
}
