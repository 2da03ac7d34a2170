//! Restarts as durable events. A monitor never writes the state (an apply
//! may hold it): it keeps its restarts in its status file. The next `apply`,
//! `status`, `state show` or `metrics` imports them into `events` (kind
//! `restart`), each once: a row of `restart_imports` keys it by the instance
//! (its handle's identity and its monitor's pid and start time) and the
//! restart's number (0 for an opened circuit). Like audit rows, these take
//! no lock and leave the serial alone: they change nothing deployed.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Event, StateError};

/// One restart (or an opened circuit) read from a monitor's status file.
#[derive(Clone, Debug)]
pub(crate) struct RestartRow {
    /// The instance: its handle's identity and its monitor's pid and start time.
    pub instance: String,
    /// The restart's number since that monitor started; 0 for an opened circuit.
    pub restart: u32,
    /// The event (its `id` is ignored).
    pub event: Event,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Imports the restarts not yet in the state at `path`; returns how many
/// were new. A state that does not exist yet is left alone.
pub(crate) fn import(path: &Path, rows: &[RestartRow]) -> Result<usize, StateError> {
    if rows.is_empty() || !path.exists() {
        return Ok(0);
    }
    let mut conn = super::open_for_events(path)?;
    let e = |op| StateError::sql(op, path);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e("import restarts into"))?;
    let mut new = 0;
    for r in rows {
        let known: Option<i64> = tx
            .query_row(
                "SELECT event_id FROM restart_imports WHERE instance = ?1 AND restart = ?2",
                params![r.instance, r.restart],
                |row| row.get(0),
            )
            .optional()
            .map_err(e("import restarts into"))?;
        if known.is_some() {
            continue;
        }
        let message = crate::redact::text(&r.event.message);
        tx.execute(
            "INSERT INTO events (revision, at, service, kind, outcome, message) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_i64(r.event.revision),
                r.event.at,
                r.event.service.as_ref().map(|s| s.as_str()),
                r.event.kind.as_str(),
                r.event.outcome.as_str(),
                message.as_ref()
            ],
        )
        .map_err(e("import restarts into"))?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO restart_imports (instance, restart, event_id) VALUES (?1, ?2, ?3)",
            params![r.instance, r.restart, id],
        )
        .map_err(e("import restarts into"))?;
        new += 1;
    }
    tx.commit().map_err(e("import restarts into"))?;
    Ok(new)
}

/// The restarts recorded in the state, per service (opened circuits not
/// counted).
pub(crate) fn counts(path: &Path) -> Result<BTreeMap<String, u64>, StateError> {
    let mut out = BTreeMap::new();
    let Some(conn) = super::open_for_reading(path)? else {
        return Ok(out);
    };
    let e = |op| StateError::sql(op, path);
    let mut stmt = conn
        .prepare(
            "SELECT service, COUNT(*) FROM events \
             WHERE kind = 'restart' AND outcome = 'succeeded' AND service IS NOT NULL \
             GROUP BY service",
        )
        .map_err(e("read"))?;
    let mut rows = stmt.query([]).map_err(e("read"))?;
    while let Some(r) = rows.next().map_err(e("read"))? {
        let service: String = r.get(0).map_err(e("read"))?;
        let n: i64 = r.get(1).map_err(e("read"))?;
        out.insert(service, u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceName;
    use crate::state::{Holder, Store};

    fn row(instance: &str, restart: u32, outcome: crate::state::EventOutcome) -> RestartRow {
        RestartRow {
            instance: instance.into(),
            restart,
            event: Event {
                id: 0,
                revision: 1,
                at: format!("2026-01-01T00:00:0{restart}.000Z"),
                service: ServiceName::parse("web").ok(),
                kind: crate::state::EventKind::Restart,
                outcome,
                message: format!("replica 0: restart {restart}"),
            },
        }
    }

    #[test]
    fn each_restart_is_imported_once_and_the_serial_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        assert_eq!(
            import(
                &path,
                &[row("p:1:2@1:2", 1, crate::state::EventOutcome::Succeeded)]
            )
            .unwrap(),
            0
        );
        assert!(!path.exists(), "no state is made for restarts");
        drop(Store::open(&path, &Holder::current("t"), None).unwrap());
        let serial = crate::state::load_snapshot(&path).unwrap().serial;
        let first = [
            row("p:1:2@1:2", 1, crate::state::EventOutcome::Succeeded),
            row("p:1:2@1:2", 2, crate::state::EventOutcome::Succeeded),
        ];
        assert_eq!(import(&path, &first).unwrap(), 2);
        assert_eq!(import(&path, &first).unwrap(), 0, "imported once");
        // A new monitor of the same instance counts from 1 again.
        let more = [
            row("p:1:2@1:2", 2, crate::state::EventOutcome::Succeeded),
            row("p:1:2@7:8", 1, crate::state::EventOutcome::Succeeded),
            row("p:1:2@7:8", 0, crate::state::EventOutcome::Failed),
        ];
        assert_eq!(import(&path, &more).unwrap(), 2);
        let events = crate::state::events(&path, None, 10).unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == crate::state::EventKind::Restart)
                .count(),
            4
        );
        assert_eq!(counts(&path).unwrap().get("web"), Some(&3));
        assert_eq!(crate::state::load_snapshot(&path).unwrap().serial, serial);
    }
}
