//! Writes: opening the store, the locked write transaction that raises the
//! serial, identity, deployments, intents, services, events; the audit log.

use super::*;

/// The kind of the events that record calls to `deploy-code serve`.
pub(crate) const AUDIT_KIND: EventKind = EventKind::Audit;

/// One call to the server, as an audit event records it (its message is this
/// object as JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AuditRecord {
    pub subject: String,
    pub role: String,
    pub call: String,
    #[serde(default)]
    pub detail: String,
}

/// The most bytes an audit event keeps of a call's subject, role and call
/// name (a token may claim roles without end).
pub(crate) const AUDIT_NAME_MAX: usize = 256;
/// The most bytes an audit event keeps of a call's detail (a refusal's or a
/// failure's message).
pub(crate) const AUDIT_DETAIL_MAX: usize = 4 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, then saying
/// how many bytes were left out.
pub(crate) fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes more)", &text[..end], text.len() - end).into()
}

/// The audit events of one state, on a connection of their own kept open
/// by the server. An audit event takes no lock and leaves the serial alone:
/// it changes nothing deployed, so a plan saved before it stays fresh, and
/// a call is recorded while a run holds the lock.
pub(crate) struct AuditLog {
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

    /// Appends an audit event (`kind` [`AUDIT_KIND`]), each field redacted
    /// and then cut to its bound: what a caller sends cannot grow the state
    /// (or a later `state audit`) without end.
    pub fn record(&self, record: &AuditRecord, outcome: EventOutcome) -> Result<(), StateError> {
        let bound = |text: &str, max: usize| cut(&crate::redact::text(text), max).into_owned();
        let record = AuditRecord {
            subject: bound(&record.subject, AUDIT_NAME_MAX),
            role: bound(&record.role, AUDIT_NAME_MAX),
            call: bound(&record.call, AUDIT_NAME_MAX),
            detail: bound(&record.detail, AUDIT_DETAIL_MAX),
        };
        let message = serde_json::to_string(&record).unwrap_or_default();
        let message = crate::redact::text(&message);
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO events (revision, at, service, kind, outcome, message) \
             VALUES (0, ?1, NULL, ?2, ?3, ?4)",
            params![
                now_rfc3339(),
                AUDIT_KIND.as_str(),
                outcome.as_str(),
                message.as_ref()
            ],
        )
        .map_err(StateError::sql("record an audit event in", &self.path))?;
        Ok(())
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
            wal: std::sync::Arc::new(WalSync::new(path)),
        };
        store.acquire(lock_timeout)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in an IMMEDIATE transaction that checks the lock and raises the serial.
    pub(super) fn write<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        self.write_as(Durability::Synced, op, f)
    }

    pub(super) fn write_as<T>(
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
        self.wal.committed();
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
        let replay = crate::redact::text(&d.config_replay).into_owned();
        self.write("record a deployment in", |tx| {
            let next: i64 = tx.query_row(
                "SELECT coalesce(max(revision), 0) + 1 FROM deployments",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                &format!(
                    "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}, config_replay) \
                     VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6, ?7, ?8, 'in_progress', 'null', ?9)"
                ),
                params![
                    next,
                    now_rfc3339(),
                    holder.user,
                    holder.host,
                    command,
                    snapshot,
                    d.config_hash,
                    summary,
                    replay
                ],
            )?;
            Ok(to_u64(next))
        })
        .inspect(|_| {
            // No checkpoint while the deployment runs: a checkpoint syncs the
            // WAL and the file inside whichever commit crosses the threshold,
            // and would hold up the run's steps; `finish_deployment` runs it.
            let _ = self.conn.pragma_update(None, "wal_autocheckpoint", 0);
        })
    }

    /// Writes an intent row before a side effect; returns its id.
    pub fn record_intent(
        &mut self,
        revision: u64,
        service: &ServiceName,
        action: IntentAction,
        detail: &serde_json::Value,
    ) -> Result<i64, StateError> {
        let detail = crate::redact::text(&detail.to_string()).into_owned();
        self.write("record an intent in", |tx| {
            insert_intent(tx, revision, service, action, &detail)
        })
    }

    /// Writes an intent row like [`Store::record_intent`], but returns as soon
    /// as it is in the WAL, with the [`Durable`] to wait on before the side
    /// effect: the waiters of intents written meanwhile share one `fsync` of
    /// the WAL (a group commit), and the store is free for other writes while
    /// it runs. Waiting gives the guarantee of a synced commit.
    pub(crate) fn record_intent_deferred(
        &mut self,
        revision: u64,
        service: &ServiceName,
        action: IntentAction,
        detail: &serde_json::Value,
    ) -> Result<(i64, Durable), StateError> {
        let detail = crate::redact::text(&detail.to_string()).into_owned();
        let id = self.write_as(Durability::Ordered, "record an intent in", |tx| {
            insert_intent(tx, revision, service, action, &detail)
        })?;
        Ok((
            id,
            Durable {
                wal: self.wal.clone(),
                upto: self.wal.written(),
            },
        ))
    }

    /// The outcome of a started side effect in one commit: the service's
    /// record and its intent closed (see [`Store::close_intent`]).
    pub(crate) fn record_started(
        &mut self,
        record: &ServiceRecord,
        intent: i64,
        detail: &serde_json::Value,
    ) -> Result<(), StateError> {
        let detail = crate::redact::text(&detail.to_string()).into_owned();
        self.write_as(Durability::Ordered, "record a service in", |tx| {
            put_records(tx, std::slice::from_ref(record))?;
            tx.execute(
                "UPDATE intents SET closed_at = ?2, outcome = 'succeeded', result = ?3 WHERE id = ?1",
                params![intent, now_rfc3339(), detail],
            )?;
            Ok(())
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
            put_records(tx, records)
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
        kind: EventKind,
        outcome: EventOutcome,
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
                    kind.as_str(),
                    outcome.as_str(),
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
        })?;
        // The checkpoint held back while the deployment ran (SQLite's default
        // threshold again afterwards). Everything is durable already: a
        // checkpoint that does not complete leaves the WAL for the next one.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        let _ = self.conn.pragma_update(None, "wal_autocheckpoint", 1000);
        Ok(())
    }
}

/// Inserts or replaces service records inside a write.
fn put_records(tx: &rusqlite::Transaction<'_>, records: &[ServiceRecord]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO services (name, spec, spec_hash, backend, handles, status, \
         gpus, revision, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for record in records {
        let spec = serde_json::to_string(&record.spec.canonical()).expect("JSON serializes");
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
}

/// The group commit of a store's WAL: commits are counted as they return,
/// and one `fsync` of the WAL file makes every commit counted before it
/// durable, for every writer waiting on it.
pub(crate) struct WalSync {
    /// The state file; its WAL is beside it (`<state>-wal`).
    state: PathBuf,
    /// Commits returned so far.
    written: std::sync::atomic::AtomicU64,
    /// Commits known durable; held while syncing, so that waiters queue
    /// behind one `fsync` and find their commit covered.
    synced: std::sync::Mutex<u64>,
}

impl WalSync {
    fn new(state: &Path) -> Self {
        Self {
            state: state.to_path_buf(),
            written: std::sync::atomic::AtomicU64::new(0),
            synced: std::sync::Mutex::new(0),
        }
    }

    fn committed(&self) {
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn sync_upto(&self, upto: u64) -> Result<(), StateError> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= upto {
            return Ok(());
        }
        let target = self.written();
        let mut wal = self.state.clone().into_os_string();
        wal.push("-wal");
        let io = |source| StateError::Io {
            op: "sync the journal of",
            path: self.state.clone(),
            source,
        };
        match fs::File::open(&wal) {
            Ok(f) => f.sync_data().map_err(io)?,
            // No WAL: what it held was checkpointed into the file itself.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::File::open(&self.state)
                .and_then(|f| f.sync_data())
                .map_err(io)?,
            Err(e) => return Err(io(e)),
        }
        *synced = target;
        Ok(())
    }
}

/// What makes an intent written by [`Store::record_intent_deferred`] durable.
#[must_use = "an intent must be durable before its side effect"]
pub(crate) struct Durable {
    wal: std::sync::Arc<WalSync>,
    upto: u64,
}

impl Durable {
    /// Returns once the intent is on disk (one `fsync` of the WAL, shared
    /// with the intents written meanwhile).
    pub(crate) fn wait(self) -> Result<(), StateError> {
        self.wal.sync_upto(self.upto)
    }
}

/// One intent row (its detail already redacted); returns its id.
fn insert_intent(
    tx: &rusqlite::Transaction<'_>,
    revision: u64,
    service: &ServiceName,
    action: IntentAction,
    detail: &str,
) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO intents (revision, service, action, detail, started_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            to_i64(revision),
            service.as_str(),
            action.as_str(),
            detail,
            now_rfc3339()
        ],
    )?;
    Ok(tx.last_insert_rowid())
}
