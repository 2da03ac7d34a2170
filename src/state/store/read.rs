//! Reads: snapshots, history, events and audit events, read-only, with no
//! lock and no migration.

use super::*;

pub(super) fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// Reads a whole snapshot in one read transaction.
pub(super) fn read_snapshot(
    conn: &Connection,
    path: &Path,
    schema: u32,
) -> Result<Snapshot, StateError> {
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
                action: enum_from_str(path, "intent action", r.get(3).map_err(e("read"))?)?,
                detail: parse_json(path, "intent", &r.get::<_, String>(4).map_err(e("read"))?)?,
                started_at: r.get(5).map_err(e("read"))?,
            });
        }
    }
    snap.lock = read_lock(&tx).map_err(e("read"))?.map(|(l, _)| l);
    Ok(snap)
}

pub(super) fn row_to_deployment(
    path: &Path,
    r: &rusqlite::Row<'_>,
) -> Result<Deployment, StateError> {
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
        config_replay: r.get(11).map_err(e("read"))?,
    })
}

pub(super) const DEPLOYMENT_COLUMNS: &str = "revision, started_at, finished_at, user, host, command, \
     config_snapshot, config_hash, plan_summary, outcome, evidence";

/// [`DEPLOYMENT_COLUMNS`] and `config_replay`, which a file of schema 1
/// (read as it is) lacks.
fn deployment_columns(version: u32) -> String {
    let replay = if version >= 2 {
        "config_replay"
    } else {
        "NULL"
    };
    format!("{DEPLOYMENT_COLUMNS}, {replay}")
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
    let Some((conn, version)) = open_read(path)? else {
        return Ok(Vec::new());
    };
    let e = |op| StateError::sql(op, path);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {} FROM deployments ORDER BY revision DESC LIMIT ?1",
            deployment_columns(version)
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
    let Some((conn, version)) = open_read(path)? else {
        return Ok(None);
    };
    let e = |op| StateError::sql(op, path);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {} FROM deployments WHERE revision = ?1",
            deployment_columns(version)
        ))
        .map_err(e("read"))?;
    let mut rows = stmt.query([to_i64(revision)]).map_err(e("read"))?;
    match rows.next().map_err(e("read"))? {
        Some(r) => Ok(Some(row_to_deployment(path, r)?)),
        None => Ok(None),
    }
}

/// The audit events, newest first, with their records.
pub(crate) fn audit_events(
    path: &Path,
    limit: u64,
) -> Result<Vec<(Event, AuditRecord)>, StateError> {
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
        .query(params![AUDIT_KIND.as_str(), to_i64(limit)])
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
                kind: enum_from_str(path, "event kind", r.get(3).map_err(e("read"))?)?,
                outcome: enum_from_str(path, "event outcome", r.get(4).map_err(e("read"))?)?,
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
            kind: enum_from_str(path, "event kind", r.get(4).map_err(e("read"))?)?,
            outcome: enum_from_str(path, "event outcome", r.get(5).map_err(e("read"))?)?,
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
            store
                .event(0, None, EventKind::Adopt, EventOutcome::Succeeded, "hello")
                .unwrap();
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
