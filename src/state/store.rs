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
//! before it, and the intent journal tells the next run what to reconcile. Reads ([`load_snapshot`], [`history`], …) open the file
//! read-only and never write, lock or migrate.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::*;
use crate::error::Code;
use crate::model::SecretKey;

/// `PRAGMA application_id` of every deploy-code state file ("DPLC").
pub const APPLICATION_ID: i32 = 0x4450_4C43;

/// The schema migrations, in order: `state/NNNN_*.sql`. Migration `n` brings the
/// file to `PRAGMA user_version = n`.
pub const MIGRATIONS: &[(u32, &str)] = &[(1, include_str!("../../state/0001_init.sql"))];

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

impl StateError {
    /// The error's code, from its variant.
    pub fn error_code(&self) -> Code {
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

    /// What to do next.
    pub fn help_text(&self) -> &'static str {
        match self {
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
    }
}

impl miette::Diagnostic for StateError {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.error_code().diagnostic_code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.help_text()))
    }
}

impl StateError {
    fn sql(op: &'static str, path: &Path) -> impl FnOnce(rusqlite::Error) -> StateError {
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

impl Holder {
    /// This process: host name, pid, user and the given command line.
    pub fn current(command: impl Into<String>) -> Holder {
        Holder {
            host: hostname(),
            pid: std::process::id(),
            user: username(),
            command: command.into(),
        }
    }
}

/// The host name of this machine.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn username() -> String {
    if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::getuid()) {
        return u.name;
    }
    std::env::var("USER").unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()))
}

/// `/proc/<pid>/stat` field 22: when the process started, in clock ticks since boot.
pub fn process_start_time(pid: u32) -> Option<u64> {
    crate::procfs::start_time(pid)
}

/// Whether process `pid` on this host is still the one that started at `start_time`.
fn process_alive(pid: u32, start_time: Option<u64>) -> bool {
    use nix::errno::Errno;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match crate::procfs::stat(pid) {
        Some(s) if s.is_dead() => false,
        Some(s) => start_time.is_none_or(|expected| expected == s.start_time),
        None => true,
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

/// Refuses a state file that group or others can write.
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<(), StateError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(StateError::UnsafePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Refuses a state whose directory, `-wal` or `-shm` file group or others
/// can write: the same rule as for the state file.
fn check_companions(path: &Path) -> Result<(), StateError> {
    let dir = dir_of(path).to_path_buf();
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let wal = path.with_file_name(format!("{file}-wal"));
    let shm = path.with_file_name(format!("{file}-shm"));
    for p in [dir, wal, shm] {
        match fs::metadata(&p) {
            // A sticky directory (/tmp) lets nobody replace another's file.
            Ok(meta) if meta.is_dir() && meta.permissions().mode() & 0o1000 != 0 => {}
            Ok(meta) => check_permissions(&p, &meta)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::io("read", &p)(e)),
        }
    }
    Ok(())
}

/// `PRAGMA quick_check`, once per process and file, before anything is
/// written: a damaged state is refused (E012) and left byte for byte as it
/// was. Without a `-wal` file the check reads the file as immutable, so that
/// no companion file is created beside a file that is refused.
fn quick_check(path: &Path) -> Result<(), StateError> {
    static CHECKED: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if CHECKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&abs)
    {
        return Ok(());
    }
    if fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok(());
    }
    let wal = path.with_file_name(format!(
        "{}-wal",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if wal.exists() {
        Connection::open_with_flags(path, flags)
    } else {
        Connection::open_with_flags(
            format!("{}?immutable=1", uri_path(path)),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )
    }
    .map_err(StateError::sql("open", path))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(StateError::sql("check", path))?;
    if verdict != "ok" {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "`PRAGMA quick_check` says: {}",
                verdict.lines().next().unwrap_or_default()
            ),
        });
    }
    CHECKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(abs);
    Ok(())
}

/// Refuses a non-empty file that does not start with SQLite's magic header.
fn check_magic(path: &Path) -> Result<(), StateError> {
    let mut f = fs::File::open(path).map_err(StateError::io("read", path))?;
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StateError::io("read", path)(e)),
        }
    }
    if got == 0 {
        return Ok(());
    }
    if got < head.len() || &head != SQLITE_MAGIC {
        return Err(StateError::NotSqlite {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// What an existing file is.
enum Kind {
    /// An empty database (or a zero-byte file): ours to initialize.
    Empty,
    /// A deploy-code state of this schema version (or older).
    Ours(u32),
}

fn classify(conn: &Connection, path: &Path) -> Result<Kind, StateError> {
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(StateError::sql("read", path))?;
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(StateError::sql("read", path))?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(StateError::sql("read", path))?;
    if app == 0 && version == 0 && objects == 0 {
        return Ok(Kind::Empty);
    }
    if app != APPLICATION_ID {
        return Err(StateError::Foreign {
            path: path.to_path_buf(),
            application_id: app,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StateError::Newer {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Kind::Ours(version))
}

fn uri_path(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = String::from("file:");
    for c in abs.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Opens an existing state read-only: no lock, no migration, nothing written to
/// the file. In a directory this process cannot write (a CI artifact) the file is
/// opened as immutable. `None` when the file does not exist or is empty.
fn open_read(path: &Path) -> Result<Option<(Connection, u32)>, StateError> {
    open_read_as(path, false)
}

fn open_read_as(
    path: &Path,
    force_immutable: bool,
) -> Result<Option<(Connection, u32)>, StateError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::io("read", path)(e)),
    };
    check_permissions(path, &meta)?;
    check_magic(path)?;
    let dir_writable = !force_immutable
        && nix::unistd::access(dir_of(path), nix::unistd::AccessFlags::W_OK).is_ok();
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let attempt = |immutable: bool| -> Result<(Connection, Kind), StateError> {
        let conn = if immutable {
            Connection::open_with_flags(
                format!("{}?immutable=1", uri_path(path)),
                flags | OpenFlags::SQLITE_OPEN_URI,
            )
        } else {
            Connection::open_with_flags(path, flags)
        }
        .map_err(StateError::sql("open", path))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(StateError::sql("open", path))?;
        let kind = classify(&conn, path)?;
        Ok((conn, kind))
    };
    let (conn, kind) = if dir_writable {
        match attempt(false) {
            Ok(x) => x,
            Err(StateError::Sqlite { .. }) => attempt(true)?,
            Err(e) => return Err(e),
        }
    } else {
        attempt(true)?
    };
    match kind {
        Kind::Empty => Ok(None),
        Kind::Ours(v) => Ok(Some((conn, v))),
    }
}

fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn read_lock(conn: &Connection) -> rusqlite::Result<Option<(LockInfo, Option<u64>)>> {
    conn.query_row(
        "SELECT host, pid, command, acquired_at, start_time FROM lock WHERE id = 1",
        [],
        |r| {
            Ok((
                LockInfo {
                    host: r.get(0)?,
                    pid: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    command: r.get(2)?,
                    acquired_at: r.get(3)?,
                },
                r.get::<_, Option<i64>>(4)?.map(to_u64),
            ))
        },
    )
    .optional()
}

/// Whether a lock row belongs to a process that is gone from this host.
fn lock_is_stale(lock: &LockInfo, start_time: Option<u64>) -> bool {
    lock.host == hostname() && !process_alive(lock.pid, start_time)
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

/// Reads a whole snapshot in one read transaction.
fn read_snapshot(conn: &Connection, path: &Path, schema: u32) -> Result<Snapshot, StateError> {
    let e = |op| StateError::sql(op, path);
    let tx = conn.unchecked_transaction().map_err(e("read"))?;
    let mut snap = Snapshot {
        schema_version: schema,
        ..Snapshot::default()
    };
    snap.lineage = meta_get(&tx, "lineage").map_err(e("read"))?;
    snap.serial = meta_get(&tx, "serial")
        .map_err(e("read"))?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The key lives beside the state (see `key`); a state written before
    // that keeps it in `meta` until its next write moves it out.
    snap.secret_key = match super::key::load(path)? {
        Some(k) => Some(k),
        None => match meta_get(&tx, "secret_key").map_err(e("read"))? {
            Some(k) => Some(SecretKey::from_hex(&k).ok_or_else(|| StateError::Corrupt {
                path: path.to_path_buf(),
                detail: "the secret key is not 64 hex digits".into(),
            })?),
            None => None,
        },
    };
    let key_id = meta_get(&tx, "secret_key_id").map_err(e("read"))?;
    match (&snap.secret_key, &key_id) {
        (Some(k), Some(id)) if super::key::id(k) != *id => {
            return Err(StateError::BadKey {
                path: path.to_path_buf(),
                detail: format!(
                    "the key given has id {}, the state was made with {id}",
                    super::key::id(k)
                ),
            });
        }
        _ => {}
    }
    snap.secret_key_id = key_id;
    snap.revision = tx
        .query_row(
            "SELECT coalesce(max(revision), 0) FROM deployments",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(to_u64)
        .map_err(e("read"))?;
    {
        let mut stmt = tx
            .prepare(
                "SELECT name, spec, spec_hash, backend, handles, status, gpus, revision, \
                 created_at, updated_at FROM services ORDER BY name",
            )
            .map_err(e("read"))?;
        let mut rows = stmt.query([]).map_err(e("read"))?;
        while let Some(r) = rows.next().map_err(e("read"))? {
            let name: String = r.get(0).map_err(e("read"))?;
            let rec = ServiceRecord {
                name: ServiceName::parse(&name).map_err(|m| StateError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("service name `{name}`: {m}"),
                })?,
                spec: parse_json(path, &name, &r.get::<_, String>(1).map_err(e("read"))?)?,
                spec_hash: r.get(2).map_err(e("read"))?,
                backend: enum_from_str(path, &name, r.get(3).map_err(e("read"))?)?,
                handles: parse_json(path, &name, &r.get::<_, String>(4).map_err(e("read"))?)?,
                status: enum_from_str(path, &name, r.get(5).map_err(e("read"))?)?,
                gpus: parse_json(path, &name, &r.get::<_, String>(6).map_err(e("read"))?)?,
                revision: to_u64(r.get(7).map_err(e("read"))?),
                created_at: r.get(8).map_err(e("read"))?,
                updated_at: r.get(9).map_err(e("read"))?,
            };
            snap.services.insert(rec.name.clone(), rec);
        }
    }
    {
        let mut stmt = tx
            .prepare(
                "SELECT id, revision, service, action, detail, started_at FROM intents \
                 WHERE closed_at IS NULL ORDER BY id",
            )
            .map_err(e("read"))?;
        let mut rows = stmt.query([]).map_err(e("read"))?;
        while let Some(r) = rows.next().map_err(e("read"))? {
            let service: String = r.get(2).map_err(e("read"))?;
            snap.open_intents.push(OpenIntent {
                id: r.get(0).map_err(e("read"))?,
                revision: to_u64(r.get(1).map_err(e("read"))?),
                service: ServiceName::parse(&service).map_err(|m| StateError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("intent service `{service}`: {m}"),
                })?,
                action: r.get(3).map_err(e("read"))?,
                detail: parse_json(path, "intent", &r.get::<_, String>(4).map_err(e("read"))?)?,
                started_at: r.get(5).map_err(e("read"))?,
            });
        }
    }
    snap.lock = read_lock(&tx).map_err(e("read"))?.map(|(l, _)| l);
    Ok(snap)
}

fn row_to_deployment(path: &Path, r: &rusqlite::Row<'_>) -> Result<Deployment, StateError> {
    let e = |op| StateError::sql(op, path);
    Ok(Deployment {
        revision: to_u64(r.get(0).map_err(e("read"))?),
        started_at: r.get(1).map_err(e("read"))?,
        finished_at: r.get(2).map_err(e("read"))?,
        user: r.get(3).map_err(e("read"))?,
        host: r.get(4).map_err(e("read"))?,
        command: r.get(5).map_err(e("read"))?,
        config_snapshot: r.get(6).map_err(e("read"))?,
        config_hash: r.get(7).map_err(e("read"))?,
        plan_summary: parse_json(
            path,
            "plan summary",
            &r.get::<_, String>(8).map_err(e("read"))?,
        )?,
        outcome: enum_from_str(path, "outcome", r.get(9).map_err(e("read"))?)?,
        evidence: parse_json(
            path,
            "evidence",
            &r.get::<_, String>(10).map_err(e("read"))?,
        )?,
    })
}

const DEPLOYMENT_COLUMNS: &str = "revision, started_at, finished_at, user, host, command, \
     config_snapshot, config_hash, plan_summary, outcome, evidence";

/// Creates the directory (0700) and the file (0600) when missing, whatever the
/// umask; refuses an existing file that others can write.
fn prepare_file(path: &Path) -> Result<(), StateError> {
    let dir = dir_of(path);
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(StateError::io("create the directory of", path))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(StateError::io(
            "set the permissions of the directory of",
            path,
        ))?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(StateError::io("set the permissions of", path))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(path).map_err(StateError::io("read", path))?;
            if !meta.is_file() {
                return Err(StateError::NotSqlite {
                    path: path.to_path_buf(),
                });
            }
            check_permissions(path, &meta)
        }
        Err(e) => Err(StateError::io("create", path)(e)),
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one IMMEDIATE transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let e = |op| StateError::sql(op, path);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e("migrate"))?;
    let version = match classify(&tx, path)? {
        Kind::Empty => 0,
        Kind::Ours(v) => v,
    };
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    for (n, sql) in MIGRATIONS.iter().filter(|(n, _)| *n > version) {
        tx.execute_batch(sql).map_err(e("migrate"))?;
        tracing::debug!(version = n, "applied state migration");
    }
    if version == 0 {
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(e("migrate"))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('serial', '0'), ('created_at', ?1)",
            [now_rfc3339()],
        )
        .map_err(e("migrate"))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(e("migrate"))?;
    tx.commit().map_err(e("migrate"))
}

fn configure(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let e = |op| StateError::sql(op, path);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(e("open"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(e("set WAL mode on"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "the state could not switch to WAL mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(e("open"))?;
    Ok(())
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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
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
        let conn = Self::open_unlocked(path)?;
        let mut store = Store {
            path: path.to_path_buf(),
            conn,
            holder: holder.clone(),
            start_time: process_start_time(holder.pid),
            locked: false,
            durability: Durability::Synced,
        };
        store.acquire(lock_timeout)?;
        Ok(store)
    }

    /// Creates or checks, configures and migrates; takes no lock.
    fn open_unlocked(path: &Path) -> Result<Connection, StateError> {
        prepare_file(path)?;
        check_magic(path)?;
        check_companions(path)?;
        quick_check(path)?;
        // Look before writing anything: a foreign or newer file stays untouched.
        drop(open_read(path)?);
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(StateError::sql("open", path))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(StateError::sql("open", path))?;
        classify(&conn, path)?;
        configure(&conn, path)?;
        migrate(&mut conn, path)?;
        Ok(conn)
    }

    fn acquire(&mut self, timeout: Option<Duration>) -> Result<(), StateError> {
        let started = Instant::now();
        loop {
            let path = self.path.clone();
            let e = |op| StateError::sql(op, &path);
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e("lock"))?;
            let current = read_lock(&tx).map_err(e("lock"))?;
            let take = match &current {
                None => true,
                Some((lock, start)) if lock_is_stale(lock, *start) => {
                    tracing::warn!(
                        "breaking the lock of `{}` held by `{}` (pid {} on host `{}`) since {}: that process is gone",
                        self.path.display(),
                        lock.command,
                        lock.pid,
                        lock.host,
                        lock.acquired_at
                    );
                    true
                }
                Some(_) => false,
            };
            if take {
                tx.execute(
                    "INSERT OR REPLACE INTO lock (id, host, pid, start_time, user, command, acquired_at) \
                     VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        self.holder.host,
                        i64::from(self.holder.pid),
                        self.start_time.map(to_i64),
                        self.holder.user,
                        self.holder.command,
                        now_rfc3339()
                    ],
                )
                .map_err(e("lock"))?;
                tx.commit().map_err(e("lock"))?;
                self.locked = true;
                return Ok(());
            }
            drop(tx);
            let (holder, _) = current.expect("a held lock");
            let waited = started.elapsed();
            match timeout {
                Some(t) if waited < t => std::thread::sleep(LOCK_POLL.min(t - waited)),
                _ => {
                    return Err(StateError::Locked {
                        path: self.path.clone(),
                        holder,
                        waited: timeout.map(|_| waited),
                    });
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in an IMMEDIATE transaction that checks the lock and raises the serial.
    fn write<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        self.write_as(Durability::Synced, op, f)
    }

    fn write_as<T>(
        &mut self,
        durability: Durability,
        op: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let path = self.path.clone();
        let e = |op| StateError::sql(op, &path);
        if durability != self.durability {
            let mode = match durability {
                Durability::Synced => "FULL",
                Durability::Ordered => "NORMAL",
            };
            self.conn
                .pragma_update(None, "synchronous", mode)
                .map_err(e(op))?;
            self.durability = durability;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e(op))?;
        let ours = read_lock(&tx)
            .map_err(e(op))?
            .is_some_and(|(l, _)| l.pid == self.holder.pid && l.host == self.holder.host);
        if !ours {
            return Err(StateError::LockLost { path });
        }
        let out = f(&tx).map_err(e(op))?;
        tx.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'serial'",
            [],
        )
        .map_err(e(op))?;
        tx.commit().map_err(e(op))?;
        Ok(out)
    }

    /// Gives a new state its lineage and secret key (the key a saved plan brought
    /// for an empty state, or a new one). No-op when the state has an identity.
    /// The serial does not change: a plan saved against the empty state still matches.
    pub fn ensure_identity(&mut self, key: Option<&SecretKey>) -> Result<(), StateError> {
        let path = self.path.clone();
        let e = |op| StateError::sql(op, &path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e("write"))?;
        if meta_get(&tx, "lineage").map_err(e("read"))?.is_none() {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('lineage', ?1)",
                [random_lineage()],
            )
            .map_err(e("write"))?;
        }
        // The key: the one beside the state (or in the environment), else
        // the one an older state kept in `meta`, else the one given (a saved
        // plan's), else a new one. It is kept apart from the database, which
        // records only its id.
        let legacy = meta_get(&tx, "secret_key")
            .map_err(e("read"))?
            .and_then(|k| SecretKey::from_hex(&k));
        let recorded_id = meta_get(&tx, "secret_key_id").map_err(e("read"))?;
        let key = match (super::key::load(&path)?, legacy, key) {
            (Some(k), _, _) | (None, Some(k), _) => k,
            (None, None, Some(k)) => k.clone(),
            // The state's key is not at hand: it cannot be made anew.
            (None, None, None) if recorded_id.is_some() => return tx.commit().map_err(e("write")),
            (None, None, None) => SecretKey::random(),
        };
        if let Some(id) = recorded_id
            && id != super::key::id(&key)
        {
            return Err(StateError::BadKey {
                path,
                detail: format!(
                    "the key given has id {}, the state was made with {id}",
                    super::key::id(&key)
                ),
            });
        }
        super::key::store(&path, &key)?;
        tx.execute("DELETE FROM meta WHERE key = 'secret_key'", [])
            .map_err(e("write"))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('secret_key_id', ?1)",
            [super::key::id(&key)],
        )
        .map_err(e("write"))?;
        tx.commit().map_err(e("write"))
    }

    pub fn snapshot(&self) -> Result<Snapshot, StateError> {
        let version: u32 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(StateError::sql("read", &self.path))?;
        read_snapshot(&self.conn, &self.path, version)
    }

    /// Opens a new deployment; returns its revision.
    pub fn begin_deployment(&mut self, d: &NewDeployment) -> Result<u64, StateError> {
        let holder = self.holder.clone();
        let summary = crate::redact::text(&d.plan_summary.to_string()).into_owned();
        let command = crate::redact::text(&d.command).into_owned();
        let snapshot = crate::redact::text(&d.config_snapshot).into_owned();
        self.write("record a deployment in", |tx| {
            let next: i64 = tx.query_row(
                "SELECT coalesce(max(revision), 0) + 1 FROM deployments",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                &format!(
                    "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) \
                     VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6, ?7, ?8, 'in_progress', 'null')"
                ),
                params![
                    next,
                    now_rfc3339(),
                    holder.user,
                    holder.host,
                    command,
                    snapshot,
                    d.config_hash,
                    summary
                ],
            )?;
            Ok(to_u64(next))
        })
    }

    /// Writes an intent row before a side effect; returns its id.
    pub fn record_intent(
        &mut self,
        revision: u64,
        service: &ServiceName,
        action: &str,
        detail: &serde_json::Value,
    ) -> Result<i64, StateError> {
        let detail = crate::redact::text(&detail.to_string()).into_owned();
        self.write("record an intent in", |tx| {
            tx.execute(
                "INSERT INTO intents (revision, service, action, detail, started_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    to_i64(revision),
                    service.as_str(),
                    action,
                    detail,
                    now_rfc3339()
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Closes an intent after its side effect, with `succeeded` / `failed` and details.
    pub fn close_intent(
        &mut self,
        id: i64,
        outcome: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StateError> {
        let detail = crate::redact::text(&detail.to_string()).into_owned();
        self.write_as(Durability::Ordered, "close an intent in", |tx| {
            tx.execute(
                "UPDATE intents SET closed_at = ?2, outcome = ?3, result = ?4 WHERE id = ?1",
                params![id, now_rfc3339(), outcome, detail],
            )?;
            Ok(())
        })
    }

    /// Inserts or replaces a service record.
    pub fn put_service(&mut self, record: &ServiceRecord) -> Result<(), StateError> {
        self.put_services(std::slice::from_ref(record))
    }

    /// Inserts or replaces several service records in one transaction (one commit).
    pub fn put_services(&mut self, records: &[ServiceRecord]) -> Result<(), StateError> {
        self.write_as(Durability::Ordered, "record a service in", |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO services (name, spec, spec_hash, backend, handles, status, \
                 gpus, revision, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for record in records {
                let spec =
                    serde_json::to_string(&record.spec.canonical()).expect("JSON serializes");
                let handles = serde_json::to_string(&record.handles).expect("JSON serializes");
                let gpus = serde_json::to_string(&record.gpus).expect("JSON serializes");
                stmt.execute(params![
                    record.name.as_str(),
                    spec,
                    record.spec_hash,
                    record.backend.as_str(),
                    handles,
                    enum_to_str(&record.status),
                    gpus,
                    to_i64(record.revision),
                    record.created_at,
                    record.updated_at
                ])?;
            }
            crate::failpoint::hit("in-commit");
            Ok(())
        })
    }

    pub fn remove_service(&mut self, name: &ServiceName) -> Result<(), StateError> {
        self.write_as(Durability::Ordered, "remove a service from", |tx| {
            tx.execute("DELETE FROM services WHERE name = ?1", [name.as_str()])?;
            Ok(())
        })
    }

    pub fn event(
        &mut self,
        revision: u64,
        service: Option<&ServiceName>,
        kind: &str,
        outcome: &str,
        message: &str,
    ) -> Result<(), StateError> {
        let message = crate::redact::text(message);
        self.write_as(Durability::Ordered, "record an event in", |tx| {
            tx.execute(
                "INSERT INTO events (revision, at, service, kind, outcome, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    to_i64(revision),
                    now_rfc3339(),
                    service.map(ServiceName::as_str),
                    kind,
                    outcome,
                    message.as_ref()
                ],
            )?;
            Ok(())
        })
    }

    pub fn finish_deployment(
        &mut self,
        revision: u64,
        outcome: Outcome,
        evidence: &serde_json::Value,
    ) -> Result<(), StateError> {
        let evidence = crate::redact::text(&evidence.to_string()).into_owned();
        self.write("finish a deployment in", |tx| {
            tx.execute(
                "UPDATE deployments SET outcome = ?2, evidence = ?3, finished_at = ?4 WHERE revision = ?1",
                params![
                    to_i64(revision),
                    enum_to_str(&outcome),
                    evidence,
                    now_rfc3339()
                ],
            )?;
            Ok(())
        })
    }

    /// Writes a consistent copy of this state to `dest` (see [`backup`]).
    pub fn backup_to(&self, dest: &Path) -> Result<(), StateError> {
        backup_conn(&self.conn, &self.path, dest)
    }

    /// Replaces this state's content with the backup `file` (checked first, see
    /// [`check_backup`]); the current content is copied to `saved_copy` before.
    /// The lock stays with this run and the serial moves past both the current
    /// one and the backup's, so that plans saved against either are stale.
    pub fn restore_from(&mut self, file: &Path, saved_copy: &Path) -> Result<(), StateError> {
        let (src, incoming) = check_backup(file)?;
        let before = self.snapshot()?;
        self.backup_to(saved_copy)?;
        // A private copy of the backup, migrated to this schema, is copied in
        // table by table in one transaction: the lock row is never replaced, so
        // no other run can slip in while the content changes.
        let staging = tempfile::Builder::new()
            .prefix(".deploy-code-restore-")
            .tempdir_in(dir_of(&self.path))
            .map_err(StateError::io("create a directory beside", &self.path))?;
        let staged = staging.path().join("staged.db");
        backup_conn(&src, file, &staged)?;
        drop(src);
        {
            let mut c = Connection::open(&staged).map_err(StateError::sql("migrate", &staged))?;
            migrate(&mut c, &staged)?;
        }
        let path = self.path.clone();
        let e = |op| StateError::sql(op, &path);
        self.conn
            .execute(
                "ATTACH DATABASE ?1 AS incoming",
                [staged.to_string_lossy().as_ref()],
            )
            .map_err(e("restore"))?;
        let serial = before.serial.max(incoming.serial) + 1;
        let copied = self.write("restore", |tx| {
                for table in ["meta", "services", "deployments", "events", "intents"] {
                    tx.execute_batch(&format!(
                        "DELETE FROM main.{table}; INSERT INTO main.{table} SELECT * FROM incoming.{table};"
                    ))?;
                }
                // `write` adds one after this.
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('serial', ?1)",
                    [(serial - 1).to_string()],
                )?;
                Ok(())
            });
        let detached = self
            .conn
            .execute("DETACH DATABASE incoming", [])
            .map_err(e("restore"));
        copied?;
        detached?;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if !self.locked {
            return;
        }
        // The release is synced, and with it every ordered write before it.
        if self.durability != Durability::Synced {
            let _ = self.conn.pragma_update(None, "synchronous", "FULL");
        }
        let released = self.conn.execute(
            "DELETE FROM lock WHERE id = 1 AND host = ?1 AND pid = ?2",
            params![self.holder.host, i64::from(self.holder.pid)],
        );
        if let Err(e) = released {
            tracing::warn!(
                "could not release the lock of `{}`: {e}; run `deploy-code state unlock`",
                self.path.display()
            );
        }
    }
}

fn step_to_done(backup: &rusqlite::backup::Backup<'_, '_>) -> rusqlite::Result<()> {
    use rusqlite::backup::StepResult;
    loop {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked => std::thread::sleep(Duration::from_millis(20)),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Copies `conn` to `dest` with SQLite's backup API (all pages in one step, so the
/// copy is one consistent read even while others write), checks the copy and
/// moves it into place with mode 0600.
fn backup_conn(conn: &Connection, src_path: &Path, dest: &Path) -> Result<(), StateError> {
    let dir = dir_of(dest);
    let tmp = tempfile::Builder::new()
        .prefix(".deploy-code-backup-")
        .tempfile_in(dir)
        .map_err(StateError::io("create a file beside", dest))?;
    {
        let mut out = Connection::open(tmp.path()).map_err(StateError::sql("write", dest))?;
        let backup = rusqlite::backup::Backup::new(conn, &mut out)
            .map_err(StateError::sql("back up", src_path))?;
        step_to_done(&backup).map_err(StateError::sql("back up", src_path))?;
        drop(backup);
        out.pragma_update(None, "journal_mode", "DELETE")
            .map_err(StateError::sql("write", dest))?;
        let check: String = out
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(StateError::sql("check", dest))?;
        if check != "ok" {
            return Err(StateError::Corrupt {
                path: dest.to_path_buf(),
                detail: format!("the copy failed its integrity check: {check}"),
            });
        }
    }
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600))
        .map_err(StateError::io("set the permissions of", dest))?;
    tmp.as_file()
        .sync_all()
        .map_err(StateError::io("write", dest))?;
    tmp.persist(dest)
        .map_err(|e| StateError::io("write", dest)(e.error))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a consistent copy of the state at `path` to `dest` (mode 0600) with
/// SQLite's online backup API, while other runs may read or write. Takes no lock.
pub fn backup(path: &Path, dest: &Path) -> Result<Snapshot, StateError> {
    let Some((conn, version)) = open_read(path)? else {
        return Err(StateError::Missing {
            path: path.to_path_buf(),
        });
    };
    backup_conn(&conn, path, dest)?;
    let snap = read_snapshot(&conn, path, version)?;
    Ok(snap)
}

/// Checks that `file` is a readable, intact deploy-code state this build
/// understands; returns a read-only connection to it and its snapshot.
pub fn check_backup(file: &Path) -> Result<(Connection, Snapshot), StateError> {
    let Some((conn, version)) = open_read(file)? else {
        return Err(StateError::RestoreRefused {
            file: file.to_path_buf(),
            reason: "it is missing or empty".into(),
        });
    };
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(StateError::sql("check", file))?;
    if check != "ok" {
        return Err(StateError::Corrupt {
            path: file.to_path_buf(),
            detail: format!("integrity check: {check}"),
        });
    }
    let snap = read_snapshot(&conn, file, version)?;
    Ok((conn, snap))
}

/// Restores `file` over the state at `path`, guarded: `file` must be an intact
/// deploy-code state; unless `force`, of the same lineage and not older (by
/// serial) than the current state. Takes the lock; the current state is first
/// copied beside it (`state.db.before-restore-<time>`), and that path is returned.
pub fn restore(
    path: &Path,
    file: &Path,
    force: bool,
    holder: &Holder,
    lock_timeout: Option<Duration>,
) -> Result<Option<PathBuf>, StateError> {
    let (_, incoming) = check_backup(file)?;
    let exists = fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
    if !exists {
        let mut store = Store::open(path, holder, lock_timeout)?;
        let saved = saved_copy_path(path);
        store.restore_from(file, &saved)?;
        drop(store);
        let _ = fs::remove_file(&saved);
        return Ok(None);
    }
    let mut store = Store::open(path, holder, lock_timeout)?;
    let current = store.snapshot()?;
    if !force {
        if let (Some(a), Some(b)) = (&current.lineage, &incoming.lineage)
            && a != b
        {
            return Err(StateError::RestoreRefused {
                file: file.to_path_buf(),
                reason: format!("it belongs to lineage `{b}`, the current state to `{a}`"),
            });
        }
        if incoming.lineage.is_none() && current.lineage.is_some() {
            return Err(StateError::RestoreRefused {
                file: file.to_path_buf(),
                reason: "it has no lineage (an empty state)".into(),
            });
        }
        if incoming.serial < current.serial {
            return Err(StateError::RestoreRefused {
                file: file.to_path_buf(),
                reason: format!(
                    "it is older than the current state (serial {} < {})",
                    incoming.serial, current.serial
                ),
            });
        }
    }
    let saved = saved_copy_path(path);
    store.restore_from(file, &saved)?;
    Ok(Some(saved))
}

fn saved_copy_path(path: &Path) -> PathBuf {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".before-restore-{stamp}"));
    path.with_file_name(name)
}

/// Releases the lock of the state at `path`: when its holder is gone from this
/// host, or with `force` whoever holds it. Returns the lock it released.
pub fn unlock(path: &Path, force: bool) -> Result<Option<LockInfo>, StateError> {
    if open_read(path)?.is_none() {
        return Err(StateError::Missing {
            path: path.to_path_buf(),
        });
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(StateError::sql("open", path))?;
    configure(&conn, path)?;
    let e = |op| StateError::sql(op, path);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e("unlock"))?;
    let Some((lock, start)) = read_lock(&tx).map_err(e("unlock"))? else {
        return Ok(None);
    };
    if !force && !lock_is_stale(&lock, start) {
        return Err(StateError::HolderAlive {
            path: path.to_path_buf(),
            holder: lock,
        });
    }
    tx.execute(
        "DELETE FROM lock WHERE id = 1 AND host = ?1 AND pid = ?2",
        params![lock.host, i64::from(lock.pid)],
    )
    .map_err(e("unlock"))?;
    tx.commit().map_err(e("unlock"))?;
    Ok(Some(lock))
}

/// Reads the state without writing anything: read-only, no lock, no migration on
/// disk (an older schema is read as it is). A missing file is an empty snapshot.
pub fn load_snapshot(path: &Path) -> Result<Snapshot, StateError> {
    match open_read(path)? {
        None => Ok(Snapshot::default()),
        Some((conn, version)) => read_snapshot(&conn, path, version),
    }
}

/// The deployment history, newest first.
pub fn history(path: &Path, limit: u64) -> Result<Vec<Deployment>, StateError> {
    let Some((conn, _)) = open_read(path)? else {
        return Ok(Vec::new());
    };
    let e = |op| StateError::sql(op, path);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY revision DESC LIMIT ?1"
        ))
        .map_err(e("read"))?;
    let mut rows = stmt.query([to_i64(limit)]).map_err(e("read"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(e("read"))? {
        out.push(row_to_deployment(path, r)?);
    }
    Ok(out)
}

/// One deployment.
pub fn deployment(path: &Path, revision: u64) -> Result<Option<Deployment>, StateError> {
    let Some((conn, _)) = open_read(path)? else {
        return Ok(None);
    };
    let e = |op| StateError::sql(op, path);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE revision = ?1"
        ))
        .map_err(e("read"))?;
    let mut rows = stmt.query([to_i64(revision)]).map_err(e("read"))?;
    match rows.next().map_err(e("read"))? {
        Some(r) => Ok(Some(row_to_deployment(path, r)?)),
        None => Ok(None),
    }
}

/// The kind of the events that record calls to `deploy-code serve`.
pub const AUDIT_KIND: &str = "audit";

/// One call to the server, as an audit event records it (its message is this
/// object as JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub subject: String,
    pub role: String,
    pub call: String,
    #[serde(default)]
    pub detail: String,
}

/// The audit events of one state, on a connection of their own kept open
/// by the server. An audit event takes no lock and leaves the serial alone:
/// it changes nothing deployed, so a plan saved before it stays fresh, and
/// a call is recorded while a run holds the lock.
pub struct AuditLog {
    path: PathBuf,
    conn: std::sync::Mutex<Connection>,
}

impl AuditLog {
    /// Opens (creating and migrating when needed) the state file.
    pub fn open(path: &Path) -> Result<AuditLog, StateError> {
        Ok(AuditLog {
            path: path.to_path_buf(),
            conn: std::sync::Mutex::new(Store::open_unlocked(path)?),
        })
    }

    /// Appends an audit event (`kind` [`AUDIT_KIND`]).
    pub fn record(&self, record: &AuditRecord, outcome: &str) -> Result<(), StateError> {
        let message = serde_json::to_string(record).unwrap_or_default();
        let message = crate::redact::text(&message);
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO events (revision, at, service, kind, outcome, message) \
             VALUES (0, ?1, NULL, ?2, ?3, ?4)",
            params![now_rfc3339(), AUDIT_KIND, outcome, message.as_ref()],
        )
        .map_err(StateError::sql("record an audit event in", &self.path))?;
        Ok(())
    }
}

/// The audit events, newest first, with their records.
pub fn audit_events(path: &Path, limit: u64) -> Result<Vec<(Event, AuditRecord)>, StateError> {
    let Some((conn, _)) = open_read(path)? else {
        return Ok(Vec::new());
    };
    let e = |op| StateError::sql(op, path);
    let mut stmt = conn
        .prepare(
            "SELECT id, revision, at, kind, outcome, message FROM events \
             WHERE kind = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(e("read"))?;
    let mut rows = stmt
        .query(params![AUDIT_KIND, to_i64(limit)])
        .map_err(e("read"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(e("read"))? {
        let message: String = r.get(5).map_err(e("read"))?;
        let record = serde_json::from_str(&message).unwrap_or_default();
        out.push((
            Event {
                id: r.get(0).map_err(e("read"))?,
                revision: to_u64(r.get(1).map_err(e("read"))?),
                at: r.get(2).map_err(e("read"))?,
                service: None,
                kind: r.get(3).map_err(e("read"))?,
                outcome: r.get(4).map_err(e("read"))?,
                message,
            },
            record,
        ));
    }
    Ok(out)
}

/// Recent events, newest first, of one service or of all.
pub fn events(
    path: &Path,
    service: Option<&ServiceName>,
    limit: u64,
) -> Result<Vec<Event>, StateError> {
    let Some((conn, _)) = open_read(path)? else {
        return Ok(Vec::new());
    };
    let e = |op| StateError::sql(op, path);
    let mut stmt = conn
        .prepare(
            "SELECT id, revision, at, service, kind, outcome, message FROM events \
             WHERE ?1 IS NULL OR service = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(e("read"))?;
    let mut rows = stmt
        .query(params![service.map(ServiceName::as_str), to_i64(limit)])
        .map_err(e("read"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(e("read"))? {
        let svc: Option<String> = r.get(3).map_err(e("read"))?;
        out.push(Event {
            id: r.get(0).map_err(e("read"))?,
            revision: to_u64(r.get(1).map_err(e("read"))?),
            at: r.get(2).map_err(e("read"))?,
            service: svc.and_then(|s| ServiceName::parse(&s).ok()),
            kind: r.get(4).map_err(e("read"))?,
            outcome: r.get(5).map_err(e("read"))?,
            message: r.get(6).map_err(e("read"))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The immutable mode used for a state in a directory this process cannot
    /// write (a CI artifact) reads the same snapshot, even from a path that needs
    /// escaping in a URI, and leaves no `-shm` or `-wal` behind.
    #[test]
    fn an_immutable_read_sees_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("odd ?#% dir");
        let path = sub.join("state.db");
        let key = SecretKey::new([3; 32]);
        {
            let mut store = Store::open(&path, &Holder::current("t"), None).unwrap();
            store.ensure_identity(Some(&key)).unwrap();
            store.event(0, None, "note", "succeeded", "hello").unwrap();
        }
        let before: Vec<_> = fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let (conn, version) = open_read_as(&path, true).unwrap().unwrap();
        let snap = read_snapshot(&conn, &path, version).unwrap();
        drop(conn);
        let after: Vec<_> = fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(before, after);
        let normal = load_snapshot(&path).unwrap();
        assert_eq!(snap.lineage, normal.lineage);
        assert_eq!(snap.serial, 1);
        assert_eq!(snap.secret_key.unwrap().to_hex(), key.to_hex());
    }
}
