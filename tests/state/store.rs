//! The store API on real files.

use deploy_code::model::SecretKey;
use deploy_code::state::{self, NewDeployment, Outcome, ServiceStatus, Store};

use crate::common::*;

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
            config_hash: "sha256:00".into(),
            plan_summary: serde_json::json!({"add": 1}),
        })
        .unwrap();
    assert_eq!(rev, 1);
    let api = name("api");
    let id = store
        .record_intent(rev, &api, "start", &serde_json::json!({"replica": 0}))
        .unwrap();
    assert_eq!(store.snapshot().unwrap().open_intents.len(), 1);
    store
        .put_service(&record("api", &key, Some("s3cret"), rev))
        .unwrap();
    store
        .close_intent(id, "succeeded", &serde_json::json!({"pid": 4242}))
        .unwrap();
    store
        .event(rev, Some(&api), "start", "succeeded", "started 1 replica")
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
