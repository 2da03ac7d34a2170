//! The writable store: create or migrate, lock, and record every change.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction in WAL mode, checks
//! that this process still holds the lock and raises the serial by one.
//!
//! Durability comes in two kinds ([`Durability`]). A deployment's start and
//! end, every intent (written before its side effect) and every maintenance
//! write commit with `synchronous=FULL`: the WAL is synced before the commit
//! returns. The records that follow a side effect (service rows, closed
//! intents, audit events) commit with `synchronous=NORMAL`: they survive the
//! process being killed at once (they are in the WAL), and the next durable
//! commit syncs them with it, since the WAL is written in order. A power loss
//! can lose only a suffix of such records, never one without the intent
//! before it, and the intent journal tells the next run what to reconcile.
//! `apply`'s intents are group-committed ([`Store::record_intent_deferred`]):
//! committed into the WAL, then made durable by one `fsync` of the WAL file
//! shared by every action waiting, before any of their side effects. Reads ([`load_snapshot`], [`history`], …) open the file
//! read-only and never write, lock or migrate.
//!
//! Here: the errors, the schema constants, the [`Store`] itself and the
//! helpers every part shares. `file` creates, checks, opens and migrates the
//! file; `lock` takes, breaks and releases the lock; `write` holds the
//! store's writes and the audit log; `read` the read-only queries; `backup`
//! backups and restores.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::*;
use crate::error::Code;
use crate::model::SecretKey;

mod backup;
mod file;
mod lock;
mod read;
mod write;

pub use backup::*;
use file::*;
pub use lock::*;
pub use read::*;
pub(crate) use write::*;

/// `PRAGMA application_id` of every deploy-code state file ("DPLC").
pub const APPLICATION_ID: i32 = 0x4450_4C43;

/// The schema migrations, in order: `state/NNNN_*.sql`. Migration `n` brings the
/// file to `PRAGMA user_version = n`.
pub(crate) const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../../state/0001_init.sql")),
    (2, include_str!("../../../state/0002_replay.sql")),
    (3, include_str!("../../../state/0003_restart_events.sql")),
];

/// A connection to the state (created and migrated when needed) for rows
/// written without the lock that leave the serial alone: imported restarts
/// (`super::restarts`).
pub(crate) fn open_for_events(path: &Path) -> Result<rusqlite::Connection, StateError> {
    Store::open_unlocked(path)
}

/// A read-only connection to the state, `None` when there is no state (see
/// `read::load_snapshot`): for `super::restarts`.
pub(crate) fn open_for_reading(path: &Path) -> Result<Option<rusqlite::Connection>, StateError> {
    Ok(open_read(path)?.map(|(conn, _)| conn))
}

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const LOCK_POLL: Duration = Duration::from_millis(100);

/// Errors of the state file. Every variant says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state `{}` is locked by `{}` (pid {} on host `{}`) since {}{}",
        path.display(), holder.command, holder.pid, holder.host, holder.acquired_at,
        waited.map(|w| format!("; waited {}s", w.as_secs())).unwrap_or_default()
    )]
    Locked {
        path: PathBuf,
        holder: LockInfo,
        waited: Option<Duration>,
    },

    #[error(
        "the lock of `{}` is held by `{}` (pid {} on host `{}`), which is still running",
        path.display(), holder.command, holder.pid, holder.host
    )]
    HolderAlive { path: PathBuf, holder: LockInfo },

    #[error("this run no longer holds the lock of `{}`", path.display())]
    LockLost { path: PathBuf },

    #[error("`{}` is not a SQLite database", path.display())]
    NotSqlite { path: PathBuf },

    #[error("`{}` is a SQLite database but not a deploy-code state (application id {application_id:#x})", path.display())]
    Foreign { path: PathBuf, application_id: i32 },

    #[error("`{}` has state schema version {found}, newer than this deploy-code understands ({supported})", path.display())]
    Newer {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("`{}` can be written by other users (mode {mode:03o})", path.display())]
    UnsafePermissions { path: PathBuf, mode: u32 },

    #[error("the secret-digest key of `{}` is unusable: {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },

    #[error("`{}` is damaged: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },

    #[error("cannot {op} `{}`: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot {op} `{}`: {source}", path.display())]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("no state file at `{}`", path.display())]
    Missing { path: PathBuf },

    #[error("service `{name}` is not in the state `{}`", path.display())]
    ServiceNotFound { name: String, path: PathBuf },

    #[error("refusing to restore `{}`: {reason}", file.display())]
    RestoreRefused { file: PathBuf, reason: String },
}

impl crate::error::Coded for StateError {
    fn error_code(&self) -> Code {
        match self {
            StateError::Locked { .. } => Code::E011,
            StateError::HolderAlive { .. } => Code::E011,
            StateError::LockLost { .. } => Code::E011,
            StateError::NotSqlite { .. } => Code::E012,
            StateError::Foreign { .. } => Code::E012,
            StateError::Newer { .. } => Code::E012,
            StateError::UnsafePermissions { .. } => Code::E012,
            StateError::BadKey { .. } => Code::E012,
            StateError::Corrupt { .. } => Code::E012,
            StateError::Io { .. } => Code::E012,
            StateError::Sqlite { .. } => Code::E012,
            StateError::Missing { .. } => Code::E012,
            StateError::ServiceNotFound { .. } => Code::S001,
            StateError::RestoreRefused { .. } => Code::E012,
        }
    }

    fn help_text(&self) -> Option<String> {
        Some(match self {
            StateError::Locked { .. } => {
                "wait for that run to finish (or pass `--lock-timeout 2m`), or run `deploy-code state unlock` if it is gone"
            }
            StateError::HolderAlive { .. } => {
                "wait for it to finish; `deploy-code state unlock --force` releases the lock anyway, at the risk of two runs writing at once"
            }
            StateError::LockLost { .. } => {
                "someone released it with `deploy-code state unlock --force`; check `deploy-code state show` before running again"
            }
            StateError::NotSqlite { .. } => {
                "point `--state` (or `state.path`) at a deploy-code state file; this file was left untouched"
            }
            StateError::Foreign { .. } => {
                "point `--state` (or `state.path`) at a deploy-code state file; this file was left untouched"
            }
            StateError::Newer { .. } => {
                "use a newer deploy-code; a state file is never downgraded (the file was left untouched)"
            }
            StateError::UnsafePermissions { .. } => {
                "anyone who can write the state can change what gets deployed: run `chmod 600` on it"
            }
            StateError::BadKey { .. } => {
                "give the key this state was made with: its key file beside the state (`<state>.key`, mode 0600) or `DEPLOY_CODE_STATE_KEY`"
            }
            StateError::Corrupt { .. } => {
                "restore the latest backup with `deploy-code state restore FILE`; keep a copy of the damaged file for inspection"
            }
            StateError::Io { .. } => {
                "check that the file and its directory exist and belong to you; `deploy-code doctor` checks the state"
            }
            StateError::Sqlite { .. } => {
                "check the disk and the file's permissions; `deploy-code doctor` checks the state, `deploy-code state restore` brings back a backup"
            }
            StateError::Missing { .. } => {
                "check `--state`, `DEPLOY_CODE_STATE` or `state.path`; `deploy-code apply` creates the state"
            }
            StateError::ServiceNotFound { .. } => {
                "`deploy-code state list` shows the services the state knows"
            }
            StateError::RestoreRefused { .. } => {
                "check that this is the backup you mean; `--force` restores it anyway (the current state is backed up first)"
            }
        }
        .to_owned())
    }
}

crate::error::coded_diagnostic!(StateError);

impl StateError {
    pub(crate) fn sql(op: &'static str, path: &Path) -> impl FnOnce(rusqlite::Error) -> StateError {
        let path = path.to_path_buf();
        move |source| match &source {
            rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::NotADatabase => {
                StateError::NotSqlite { path }
            }
            rusqlite::Error::SqliteFailure(e, _)
                if e.code == rusqlite::ErrorCode::DatabaseCorrupt =>
            {
                StateError::Corrupt {
                    path,
                    detail: source.to_string(),
                }
            }
            _ => StateError::Sqlite { op, path, source },
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_path_buf();
        move |source| StateError::Io { op, path, source }
    }
}

/// Now, RFC 3339 UTC to the second.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn random_lineage() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    text: &str,
) -> Result<T, StateError> {
    serde_json::from_str(text).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("{what}: {e}"),
    })
}

fn enum_from_str<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    s: String,
) -> Result<T, StateError> {
    serde_json::from_value(serde_json::Value::String(s)).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("{what}: {e}"),
    })
}

fn enum_to_str<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// How a write is committed (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Synced before the commit returns (`synchronous=FULL`).
    Synced,
    /// In the WAL when the commit returns, synced by the next synced commit
    /// (`synchronous=NORMAL`).
    Ordered,
}

/// An open, locked, migrated state file. Dropping it releases the lock.
pub struct Store {
    path: PathBuf,
    conn: Connection,
    holder: Holder,
    start_time: Option<u64>,
    /// Whether this store took the lock (and so releases it when dropped).
    locked: bool,
    /// The `synchronous` setting the connection has now.
    durability: Durability,
    /// The group commit of intents (see [`Store::record_intent_deferred`]).
    wal: std::sync::Arc<WalSync>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}
