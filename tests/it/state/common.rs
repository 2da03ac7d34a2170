//! Helpers shared by the state tests: sample records, and child processes that
//! re-execute this test binary to act as a lock holder or a writer.

use std::path::Path;

use deploy_code::model::{BackendKind, SecretKey, Sensitive, ServiceSpec, Text};
use deploy_code::state::{
    EventKind, EventOutcome, Handle, Holder, IntentAction, ServiceRecord, ServiceStatus,
};

use crate::support::Spec;
pub use crate::support::name;

pub fn spec(service: &str, key: &SecretKey, secret: Option<&str>) -> ServiceSpec {
    let mut s = Spec::process(service, &["/usr/bin/sleep", "1000"])
        .env("PORT", Text::plain("8080"))
        .resources(0.5, 128, 0);
    if let Some(secret) = secret {
        s = s.env(
            "API_TOKEN",
            Text::Sensitive(Sensitive::new(key, secret.to_owned())),
        );
    }
    s.build()
}

pub fn record(
    service: &str,
    key: &SecretKey,
    secret: Option<&str>,
    revision: u64,
) -> ServiceRecord {
    let spec = spec(service, key, secret);
    ServiceRecord {
        name: name(service),
        spec_hash: spec.spec_hash(),
        spec,
        backend: BackendKind::Process,
        handles: vec![Handle::Process {
            replica: 0,
            pid: 4242,
            start_time: 123456,
            log_path: format!("/tmp/{service}.log"),
        }],
        status: ServiceStatus::Ready,
        gpus: Vec::new(),
        revision,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    }
}

pub fn holder(command: &str) -> Holder {
    Holder::current(command)
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A state at `path` with the services `names` (revision 1, succeeded),
/// recorded through the store API; returns its secret key.
pub fn seed(path: &Path, names: &[&str]) -> SecretKey {
    use deploy_code::state::{NewDeployment, Outcome, Store};
    let mut store = Store::open(path, &holder("deploy-code apply"), None).unwrap();
    store.ensure_identity(None).unwrap();
    let key = store.snapshot().unwrap().secret_key.unwrap();
    let rev = store
        .begin_deployment(&NewDeployment {
            command: "deploy-code apply --auto-approve".into(),
            config_snapshot:
                "project: demo\nservices:\n  api:\n    env:\n      TOKEN: (sensitive)\n".into(),
            config_replay: String::new(),
            config_hash: "sha256:abc".into(),
            plan_summary: serde_json::json!({"add": names.len(), "change": 0, "remove": 0}),
        })
        .unwrap();
    for n in names {
        let id = store
            .record_intent(rev, &name(n), IntentAction::Start, &serde_json::json!({}))
            .unwrap();
        store
            .put_service(&record(n, &key, Some("seed-secret"), rev))
            .unwrap();
        store
            .close_intent(id, "succeeded", &serde_json::json!({}))
            .unwrap();
        store
            .event(
                rev,
                Some(&name(n)),
                EventKind::Create,
                EventOutcome::Succeeded,
                "healthy after 1 probe",
            )
            .unwrap();
    }
    store
        .finish_deployment(rev, Outcome::Succeeded, &serde_json::Value::Null)
        .unwrap();
    key
}

/// Every byte of the state: the database, its WAL and its shared-memory file.
pub fn all_bytes(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn integrity(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

pub fn bin() -> assert_cmd::Command {
    let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("deploy-code");
    cmd.env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .env("NO_COLOR", "1");
    cmd
}

/// A diagnostic as one line: miette wraps long messages and help lines.
pub fn flat(text: &str) -> String {
    text.split_whitespace()
        .filter(|w| *w != "|")
        .collect::<Vec<_>>()
        .join(" ")
}
