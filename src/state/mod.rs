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
    /// `start`, `stop`, `update`, …
    pub action: String,
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
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub revision: u64,
    pub at: String,
    #[serde(default)]
    pub service: Option<ServiceName>,
    /// e.g. `start`, `health`, `stop`, `rollback`.
    pub kind: String,
    /// `started`, `succeeded`, `failed`.
    pub outcome: String,
    pub message: String,
}
