//! The lock: who holds it (host, pid, start time), taking it, breaking a
//! stale one, releasing it on drop and `state unlock`.

use super::*;

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

pub(super) fn username() -> String {
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
pub(super) fn process_alive(pid: u32, start_time: Option<u64>) -> bool {
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

pub(super) fn read_lock(conn: &Connection) -> rusqlite::Result<Option<(LockInfo, Option<u64>)>> {
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
pub(super) fn lock_is_stale(lock: &LockInfo, start_time: Option<u64>) -> bool {
    lock.host == hostname() && !process_alive(lock.pid, start_time)
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

impl Store {
    pub(super) fn acquire(&mut self, timeout: Option<Duration>) -> Result<(), StateError> {
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
}
