//! The state file on disk: created private, checked (permissions, magic
//! header, companions, `PRAGMA quick_check`), classified, opened read-only or
//! configured and migrated.

use super::*;

/// Refuses a state file that group or others can write.
pub(super) fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<(), StateError> {
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
pub(super) fn check_companions(path: &Path) -> Result<(), StateError> {
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
pub(super) fn quick_check(path: &Path) -> Result<(), StateError> {
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
pub(super) fn check_magic(path: &Path) -> Result<(), StateError> {
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
pub(super) enum Kind {
    /// An empty database (or a zero-byte file): ours to initialize.
    Empty,
    /// A deploy-code state of this schema version (or older).
    Ours(u32),
}

pub(super) fn classify(conn: &Connection, path: &Path) -> Result<Kind, StateError> {
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

pub(super) fn uri_path(path: &Path) -> String {
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

pub(super) fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Opens an existing state read-only: no lock, no migration, nothing written to
/// the file. In a directory this process cannot write (a CI artifact) the file is
/// opened as immutable. `None` when the file does not exist or is empty.
pub(super) fn open_read(path: &Path) -> Result<Option<(Connection, u32)>, StateError> {
    open_read_as(path, false)
}

pub(super) fn open_read_as(
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

/// Creates the directory (0700) and the file (0600) when missing, whatever the
/// umask; refuses an existing file that others can write.
pub(super) fn prepare_file(path: &Path) -> Result<(), StateError> {
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
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
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

pub(super) fn configure(conn: &Connection, path: &Path) -> Result<(), StateError> {
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

impl Store {
    /// Creates or checks, configures and migrates; takes no lock.
    pub(super) fn open_unlocked(path: &Path) -> Result<Connection, StateError> {
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
}
