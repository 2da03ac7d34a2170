//! The store API on real files.

use deploy_code::model::SecretKey;
use deploy_code::state::{self, NewDeployment, Outcome, ServiceStatus, Store};

use super::common::*;
use deploy_code::state::{EventKind, EventOutcome, IntentAction};

#[test]
fn a_new_state_records_a_deployment_and_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".deploy-code/state.db");
    assert_eq!(state::load_snapshot(&path).unwrap().serial, 0);
    assert!(!path.exists(), "reading a missing state creates nothing");

    let key = SecretKey::random();
    let mut store = Store::open(&path, &holder("deploy-code apply"), None).unwrap();
    store.ensure_identity(Some(&key)).unwrap();
    let snap = store.snapshot().unwrap();
    assert!(snap.lineage.is_some());
    assert_eq!(snap.serial, 0);
    assert_eq!(snap.secret_key.unwrap().to_hex(), key.to_hex());
    assert_eq!(snap.schema_version, state::SCHEMA_VERSION);
    assert_eq!(snap.lock.as_ref().unwrap().pid, std::process::id());

    let rev = store
        .begin_deployment(&NewDeployment {
            command: "deploy-code apply".into(),
            config_snapshot: "services: {}".into(),
            config_replay: String::new(),
            config_hash: "sha256:00".into(),
            plan_summary: serde_json::json!({"add": 1}),
        })
        .unwrap();
    assert_eq!(rev, 1);
    let api = name("api");
    let id = store
        .record_intent(
            rev,
            &api,
            IntentAction::Start,
            &serde_json::json!({"replica": 0}),
        )
        .unwrap();
    assert_eq!(store.snapshot().unwrap().open_intents.len(), 1);
    store
        .put_service(&record("api", &key, Some("s3cret"), rev))
        .unwrap();
    store
        .close_intent(id, "succeeded", &serde_json::json!({"pid": 4242}))
        .unwrap();
    store
        .event(
            rev,
            Some(&api),
            EventKind::Create,
            EventOutcome::Succeeded,
            "started 1 replica",
        )
        .unwrap();
    store
        .finish_deployment(rev, Outcome::Succeeded, &serde_json::Value::Null)
        .unwrap();
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.serial, 6);
    assert_eq!(snap.revision, 1);
    assert!(snap.open_intents.is_empty());
    let rec = &snap.services[&api];
    assert_eq!(rec, &record("api", &key, Some("s3cret"), rev));
    assert_eq!(rec.status, ServiceStatus::Ready);
    drop(store);

    let snap = state::load_snapshot(&path).unwrap();
    assert_eq!(snap.serial, 6);
    assert!(snap.lock.is_none(), "dropping the store releases the lock");
    let hist = state::history(&path, 10).unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].outcome, Outcome::Succeeded);
    assert!(hist[0].finished_at.is_some());
    assert_eq!(state::deployment(&path, 1).unwrap().unwrap(), hist[0]);
    assert_eq!(state::deployment(&path, 2).unwrap(), None);
    let ev = state::events(&path, Some(&api), 10).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].message, "started 1 replica");

    let mut store = Store::open(&path, &holder("deploy-code state rm"), None).unwrap();
    store.remove_service(&api).unwrap();
    assert!(store.snapshot().unwrap().services.is_empty());
}

#[test]
fn a_held_lock_fails_at_once_or_after_the_timeout_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let first = Store::open(&path, &holder("deploy-code apply --auto-approve"), None).unwrap();
    // This process is alive, so its lock is not broken even from another store.
    let err = Store::open(&path, &holder("deploy-code destroy"), None).unwrap_err();
    // At once: without a timeout it does not wait for the lock.
    assert!(
        matches!(&err, state::StateError::Locked { waited: None, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("locked by `deploy-code apply --auto-approve`")
            && text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    let started = std::time::Instant::now();
    let err = Store::open(
        &path,
        &holder("deploy-code destroy"),
        Some(std::time::Duration::from_millis(400)),
    )
    .unwrap_err();
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    match err {
        state::StateError::Locked { waited, holder, .. } => {
            assert!(waited.is_some());
            assert_eq!(holder.command, "deploy-code apply --auto-approve");
        }
        other => panic!("{other:?}"),
    }
    drop(first);
    Store::open(&path, &holder("deploy-code destroy"), None).unwrap();
}

#[test]
fn a_run_whose_lock_was_forced_away_stops_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut store = Store::open(&path, &holder("deploy-code apply"), None).unwrap();
    store.ensure_identity(None).unwrap();
    let released = state::unlock(&path, true).unwrap().unwrap();
    assert_eq!(released.command, "deploy-code apply");
    let err = store
        .event(
            0,
            None,
            EventKind::Adopt,
            EventOutcome::Succeeded,
            "should not be written",
        )
        .unwrap_err();
    assert!(matches!(err, state::StateError::LockLost { .. }), "{err:?}");
    assert!(state::events(&path, None, 10).unwrap().is_empty());
}

#[test]
fn identity_is_made_once_and_keeps_a_given_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let key = SecretKey::new([9; 32]);
    let mut store = Store::open(&path, &holder("t"), None).unwrap();
    assert_eq!(store.snapshot().unwrap().lineage, None);
    store.ensure_identity(Some(&key)).unwrap();
    let first = store.snapshot().unwrap();
    store.ensure_identity(Some(&SecretKey::random())).unwrap();
    let second = store.snapshot().unwrap();
    assert_eq!(first.lineage, second.lineage);
    assert_eq!(second.secret_key.unwrap().to_hex(), key.to_hex());
    assert_eq!(second.serial, 0, "identity alone is not a change");
    drop(store);
    let other = dir.path().join("other.db");
    let mut store = Store::open(&other, &holder("t"), None).unwrap();
    store.ensure_identity(None).unwrap();
    assert_ne!(store.snapshot().unwrap().lineage, first.lineage);
}

fn plant_lock(path: &std::path::Path, host: &str, pid: u32, start_time: Option<i64>) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT OR REPLACE INTO lock (id, host, pid, start_time, user, command, acquired_at) \
         VALUES (1, ?1, ?2, ?3, 'ops', 'deploy-code apply', '2026-01-01T00:00:00Z')",
        rusqlite::params![host, pid, start_time],
    )
    .unwrap();
}

#[test]
fn a_lock_held_on_another_host_is_never_broken_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api"]);
    plant_lock(&path, "build-host-7", 1, None);
    let err = Store::open(&path, &holder("deploy-code apply"), None).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("pid 1 on host `build-host-7`"), "{text}");
    assert!(matches!(
        state::unlock(&path, false).unwrap_err(),
        state::StateError::HolderAlive { .. }
    ));
    let released = state::unlock(&path, true).unwrap().unwrap();
    assert_eq!(released.host, "build-host-7");
    assert_eq!(
        state::unlock(&path, false).unwrap(),
        None,
        "nothing left to release"
    );
    Store::open(&path, &holder("deploy-code apply"), None).unwrap();
}

#[test]
fn a_lock_whose_pid_now_belongs_to_another_process_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api"]);
    // This process's pid, but a start time it never had: the holder is gone
    // and the pid was reused.
    let host = deploy_code::state::hostname();
    plant_lock(&path, &host, std::process::id(), Some(1));
    let store = Store::open(&path, &holder("deploy-code apply"), None).unwrap();
    assert_eq!(
        store.snapshot().unwrap().lock.unwrap().command,
        "deploy-code apply"
    );
    drop(store);
    // The same pid with its real start time is alive: not broken.
    let real = state::process_start_time(std::process::id()).unwrap();
    plant_lock(&path, &host, std::process::id(), Some(real as i64));
    assert!(Store::open(&path, &holder("deploy-code apply"), None).is_err());
}

/// A file of schema 1 has no `config_replay`: read as it is, every revision
/// has none; migrated, a revision whose snapshot withheld no secret replays
/// its snapshot verbatim, and one that withheld secrets keeps none (it cannot
/// be re-applied with them).
#[test]
fn a_history_of_schema_1_gains_what_rollback_re_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut store = Store::open(&path, &holder("deploy-code apply"), None).unwrap();
        store.ensure_identity(None).unwrap();
        for snapshot in [
            "services:\n  a:\n    command: \"{{ not a template }} endraw\"\n",
            "services:\n  a:\n    env: {TOKEN: (sensitive)}\n",
        ] {
            store
                .begin_deployment(&NewDeployment {
                    command: "deploy-code apply".into(),
                    config_snapshot: snapshot.into(),
                    config_replay: "replayed".into(),
                    config_hash: "sha256:00".into(),
                    plan_summary: serde_json::json!({}),
                })
                .unwrap();
        }
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE deployments DROP COLUMN config_replay; DROP TABLE restart_imports",
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let old = state::history(&path, 10).unwrap();
    assert_eq!(old.len(), 2);
    assert!(old.iter().all(|d| d.config_replay.is_none()), "{old:?}");

    drop(Store::open(&path, &holder("deploy-code apply"), None).unwrap());
    let new = state::history(&path, 10).unwrap();
    let by_rev = |r: u64| new.iter().find(|d| d.revision == r).unwrap();
    assert_eq!(by_rev(2).config_replay, None, "its secrets have no names");
    let replay = by_rev(1).config_replay.clone().expect("replayable");
    // Rendered, the replay is the snapshot, byte for byte.
    let env = minijinja::Environment::new();
    assert_eq!(
        env.render_str(&replay, ()).unwrap(),
        by_rev(1).config_snapshot
    );
}
