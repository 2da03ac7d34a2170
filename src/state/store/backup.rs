//! Backups and restores with SQLite's online backup API.

use super::*;

pub(super) fn step_to_done(backup: &rusqlite::backup::Backup<'_, '_>) -> rusqlite::Result<()> {
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
pub(super) fn backup_conn(
    conn: &Connection,
    src_path: &Path,
    dest: &Path,
) -> Result<(), StateError> {
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
pub(crate) fn check_backup(file: &Path) -> Result<(Connection, Snapshot), StateError> {
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

pub(super) fn saved_copy_path(path: &Path) -> PathBuf {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".before-restore-{stamp}"));
    path.with_file_name(name)
}

impl Store {
    /// Writes a consistent copy of this state to `dest` (see [`backup`]).
    pub(crate) fn backup_to(&self, dest: &Path) -> Result<(), StateError> {
        backup_conn(&self.conn, &self.path, dest)
    }

    /// Replaces this state's content with the backup `file` (checked first, see
    /// [`check_backup`]); the current content is copied to `saved_copy` before.
    /// The lock stays with this run and the serial moves past both the current
    /// one and the backup's, so that plans saved against either are stale.
    pub(crate) fn restore_from(
        &mut self,
        file: &Path,
        saved_copy: &Path,
    ) -> Result<(), StateError> {
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
