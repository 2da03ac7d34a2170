//! The writable store: create or migrate, lock, and record every change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::model::SecretKey;

/// Errors of the state file. Every variant says what to do next.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StateError {
    #[error("state error: {0}")]
    #[diagnostic(code("deploy_code::E012"))]
    Other(String),
}

/// An open, locked, migrated state file. Dropping it releases the lock.
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// Opens (creating it with mode 0600 in a 0700 directory when missing),
    /// migrates and locks the state file. With `lock_timeout` a held lock is
    /// waited for; a lock whose holder process is gone on this host is broken.
    pub fn open(
        path: &Path,
        holder: &Holder,
        lock_timeout: Option<Duration>,
    ) -> Result<Store, StateError> {
        let _ = (holder, lock_timeout);
        Err(StateError::Other(format!(
            "{} not implemented",
            path.display()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives a new state its lineage and secret key (the key a saved plan brought
    /// for an empty state, or a new one). No-op when the state has an identity.
    pub fn ensure_identity(&mut self, key: Option<&SecretKey>) -> Result<(), StateError> {
        let _ = key;
        todo!()
    }

    pub fn snapshot(&self) -> Result<Snapshot, StateError> {
        todo!()
    }

    /// Opens a new deployment; returns its revision.
    pub fn begin_deployment(&mut self, d: &NewDeployment) -> Result<u64, StateError> {
        let _ = d;
        todo!()
    }

    /// Writes an intent row before a side effect; returns its id.
    pub fn record_intent(
        &mut self,
        revision: u64,
        service: &ServiceName,
        action: &str,
        detail: &serde_json::Value,
    ) -> Result<i64, StateError> {
        let _ = (revision, service, action, detail);
        todo!()
    }

    /// Closes an intent after its side effect, with `succeeded` / `failed` and details.
    pub fn close_intent(
        &mut self,
        id: i64,
        outcome: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StateError> {
        let _ = (id, outcome, detail);
        todo!()
    }

    /// Inserts or replaces a service record.
    pub fn put_service(&mut self, record: &ServiceRecord) -> Result<(), StateError> {
        let _ = record;
        todo!()
    }

    pub fn remove_service(&mut self, name: &ServiceName) -> Result<(), StateError> {
        let _ = name;
        todo!()
    }

    pub fn event(
        &mut self,
        revision: u64,
        service: Option<&ServiceName>,
        kind: &str,
        outcome: &str,
        message: &str,
    ) -> Result<(), StateError> {
        let _ = (revision, service, kind, outcome, message);
        todo!()
    }

    pub fn finish_deployment(
        &mut self,
        revision: u64,
        outcome: Outcome,
        evidence: &serde_json::Value,
    ) -> Result<(), StateError> {
        let _ = (revision, outcome, evidence);
        todo!()
    }
}

/// Reads the state without writing anything: read-only, no lock, no migration on
/// disk (an older schema is read as it is). A missing file is an empty snapshot.
pub fn load_snapshot(path: &Path) -> Result<Snapshot, StateError> {
    let _ = path;
    todo!()
}

/// The deployment history, newest first.
pub fn history(path: &Path, limit: u64) -> Result<Vec<Deployment>, StateError> {
    let _ = (path, limit);
    todo!()
}

/// One deployment.
pub fn deployment(path: &Path, revision: u64) -> Result<Option<Deployment>, StateError> {
    let _ = (path, revision);
    todo!()
}

/// Recent events, newest first, of one service or of all.
pub fn events(
    path: &Path,
    service: Option<&ServiceName>,
    limit: u64,
) -> Result<Vec<Event>, StateError> {
    let _ = (path, service, limit);
    todo!()
}
