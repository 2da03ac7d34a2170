//! The `state` commands end to end: human and JSON output (validated against
//! `schemas/state.schema.json`), `rm`, `restore` and the secret canary.

use std::path::Path;

use deploy_code::state::{self, Store};

use super::common::*;
use deploy_code::state::{EventKind, EventOutcome};

fn run_ok(path: &Path, args: &[&str]) -> String {
    let mut all = vec!["--state", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = bin().args(&all).assert().success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

/// Runs a command that must fail with exit code 1; returns its stderr on one line.
fn run_err(path: &Path, args: &[&str]) -> String {
    let mut all = vec!["--state", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = bin().args(&all).assert().code(1);
    flat(&String::from_utf8_lossy(&out.get_output().stderr))
}

fn schema_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/state.schema.json")
}

#[test]
fn the_committed_schema_matches_the_output_types() {
    let generated =
        serde_json::to_string_pretty(&deploy_code::render::state::state_schema()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(schema_path(), &generated).unwrap();
    }
    let committed = std::fs::read_to_string(schema_path()).unwrap_or_default();
    assert_eq!(
        committed, generated,
        "schemas/state.schema.json is stale: run `UPDATE_SCHEMAS=1 cargo test --test it state::`"
    );
}

#[test]
fn json_output_of_every_state_command_validates_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path()).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let check = |args: &[&str], kind: &str| {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let text = run_ok(&path, &all);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{args:?}: {errors:?}\n{text}");
        assert_eq!(doc["kind"], kind);
        assert_eq!(doc["format_version"], 1);
        doc
    };
    // Before the state exists.
    let doc = check(&["state", "show"], "summary");
    assert_eq!(doc["exists"], false);
    check(&["state", "list"], "list");
    check(&["state", "history"], "history");

    seed(&path, &["api", "db"]);
    let doc = check(&["state", "list"], "list");
    assert_eq!(doc["services"].as_array().unwrap().len(), 2);
    assert_eq!(doc["services"][0]["name"], "api");
    assert_eq!(doc["services"][0]["status"], "ready");
    let doc = check(&["state", "show"], "summary");
    assert_eq!(doc["serial"], state::load_snapshot(&path).unwrap().serial);
    assert_eq!(doc["counts"]["ready"], 2);
    assert!(doc["lineage"].is_string());
    let doc = check(&["state", "show", "api"], "service");
    assert_eq!(doc["service"]["spec"]["env"]["API_TOKEN"], "(sensitive)");
    assert_eq!(doc["service"]["handles"][0]["pid"], 4242);
    assert_eq!(doc["events"][0]["kind"], "create");
    let doc = check(&["state", "show", "--revision", "1"], "deployment");
    assert_eq!(doc["deployment"]["outcome"], "succeeded");
    assert!(
        doc["deployment"]["config_snapshot"]
            .as_str()
            .unwrap()
            .contains("project: demo")
    );
    let doc = check(&["state", "history", "--limit", "5"], "history");
    assert_eq!(doc["deployments"][0]["revision"], 1);
    // The schema has teeth: a document without its version or with a wrong status fails.
    let mut broken = doc.clone();
    broken.as_object_mut().unwrap().remove("format_version");
    assert!(!validator.is_valid(&broken));
    let mut broken = check(&["state", "list"], "list");
    broken["services"][0]["status"] = "sleeping".into();
    assert!(!validator.is_valid(&broken));
}

#[test]
fn human_output_is_plain_aligned_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api", "database"]);
    let list = run_ok(&path, &["state", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("SERVICE   BACKEND  STATUS  REVISION  INSTANCES  UPDATED"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("api       process  ready   1         1"),
        "{list}"
    );
    assert!(
        lines[2].starts_with("database  process  ready   1         1"),
        "{list}"
    );
    assert!(!list.contains('\u{1b}'), "no colour when not on a terminal");

    let show = run_ok(&path, &["state", "show"]);
    assert!(
        show.contains("services  2 (2 ready, 0 tainted, 0 pending)"),
        "{show}"
    );
    assert!(show.contains("lock      free"), "{show}");
    let svc = run_ok(&path, &["state", "show", "api"]);
    assert!(svc.contains("API_TOKEN: (sensitive)"), "{svc}");
    assert!(svc.contains("process replica 0: pid 4242"), "{svc}");
    assert!(svc.contains("healthy after 1 probe"), "{svc}");
    assert!(!svc.contains("hmac-sha256"), "digests are not shown: {svc}");
    let rev = run_ok(&path, &["state", "show", "--revision", "1"]);
    assert!(rev.contains("outcome      succeeded"), "{rev}");
    assert!(rev.contains("TOKEN: (sensitive)"), "{rev}");
    let hist = run_ok(&path, &["state", "history"]);
    assert!(hist.starts_with("REVISION  STARTED"), "{hist}");
    assert!(hist.contains("succeeded"), "{hist}");

    let err = run_err(&path, &["state", "show", "nope"]);
    assert!(err.contains("S001") && err.contains("`nope`"), "{err}");
    let err = run_err(&path, &["state", "show", "--revision", "9"]);
    assert!(err.contains("no deployment with revision 9"), "{err}");
}

#[test]
fn state_rm_forgets_one_service_and_raises_the_serial() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api", "db"]);
    let before = state::load_snapshot(&path).unwrap();
    run_ok(&path, &["state", "rm", "api"]);
    let after = state::load_snapshot(&path).unwrap();
    assert_eq!(
        after
            .services
            .keys()
            .map(|k| k.as_str())
            .collect::<Vec<_>>(),
        ["db"]
    );
    assert!(after.serial > before.serial);
    assert!(after.lock.is_none());
    let ev = state::events(&path, Some(&name("api")), 1).unwrap();
    assert_eq!(ev[0].kind, deploy_code::state::EventKind::Forget);
    let err = run_err(&path, &["state", "rm", "api"]);
    assert!(err.contains("S001"), "{err}");
}

#[test]
fn restore_is_guarded_by_lineage_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api", "db"]);
    let backup = dir.path().join("backup.db");
    run_ok(&path, &["state", "backup", backup.to_str().unwrap()]);
    let lineage = state::load_snapshot(&path).unwrap().lineage;

    // Same lineage, same serial: restores, saving the current state first.
    run_ok(&path, &["state", "rm", "api"]);
    // Now the backup is older than the state: refused without --force.
    let err = run_err(&path, &["state", "restore", backup.to_str().unwrap()]);
    assert!(err.contains("older than the current state"), "{err}");
    let serial_before = state::load_snapshot(&path).unwrap().serial;
    let out = run_ok(
        &path,
        &["state", "restore", "--force", backup.to_str().unwrap()],
    );
    assert!(out.contains("the previous state was saved to"), "{out}");
    let snap = state::load_snapshot(&path).unwrap();
    assert_eq!(snap.services.len(), 2);
    assert_eq!(snap.lineage, lineage);
    assert!(
        snap.serial > serial_before,
        "a restore moves the serial forward"
    );
    assert!(snap.lock.is_none());
    assert_eq!(integrity(&path), "ok");
    let saved: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.db.before-restore-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(
        state::load_snapshot(&dir.path().join(&saved[0]))
            .unwrap()
            .services
            .len(),
        1
    );

    // Another lineage is refused.
    let other = dir.path().join("other.db");
    seed(&other, &["web"]);
    let err = run_err(&path, &["state", "restore", other.to_str().unwrap()]);
    assert!(err.contains("lineage"), "{err}");
    // A file that is not a state is refused, whatever --force says.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "not a database").unwrap();
    let err = run_err(
        &path,
        &["state", "restore", "--force", junk.to_str().unwrap()],
    );
    assert!(err.contains("not a SQLite database"), "{err}");
    assert_eq!(state::load_snapshot(&path).unwrap().services.len(), 2);

    // Restoring into a missing state creates it.
    let fresh = dir.path().join("fresh/state.db");
    run_ok(&fresh, &["state", "restore", backup.to_str().unwrap()]);
    assert_eq!(state::load_snapshot(&fresh).unwrap().lineage, lineage);
    assert_eq!(mode(&fresh), 0o600);
}

#[test]
fn a_secret_canary_never_reaches_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let canary = "CANARY-5d1e0c-never-store-me";
    let mut store = Store::open(&path, &holder("deploy-code apply"), None).unwrap();
    store.ensure_identity(None).unwrap();
    let key = store.snapshot().unwrap().secret_key.unwrap();
    let rec = record("api", &key, Some(canary), 1);
    assert!(rec.spec.has_sensitive());
    store.put_service(&rec).unwrap();
    store
        .event(
            1,
            Some(&name("api")),
            EventKind::Create,
            EventOutcome::Succeeded,
            "started",
        )
        .unwrap();
    let bytes = all_bytes(&path);
    assert!(
        !contains(&bytes, canary.as_bytes()),
        "plaintext in db/WAL/shm"
    );
    assert!(
        contains(&bytes, key.digest(canary).as_bytes()),
        "its digest is stored"
    );
    drop(store);
    assert!(!contains(&all_bytes(&path), canary.as_bytes()));
    // A change of the secret changes the stored spec hash.
    let other = record("api", &key, Some("another"), 1);
    assert_ne!(other.spec_hash, rec.spec_hash);
    let shown = run_ok(&path, &["state", "show", "api", "--format", "json"]);
    assert!(
        !shown.contains(canary) && !shown.contains("hmac-sha256"),
        "{shown}"
    );
}

#[test]
fn human_views_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api", "database"]);
    let list = run_ok(&path, &["state", "list"]);
    let service = run_ok(&path, &["state", "show", "api"]);
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[time]");
    settings.add_filter(r"sha256:[0-9a-f]{64}", "sha256:[hash]");
    settings.bind(|| {
        insta::assert_snapshot!("state_list", list);
        insta::assert_snapshot!("state_show_service", service);
    });
}
