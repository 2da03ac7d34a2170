//! `deploy-code doctor` checks the environment and says what to do next.

use assert_cmd::cargo::cargo_bin_cmd;

fn doctor(dir: &std::path::Path, config: &str) -> (i32, serde_json::Value) {
    std::fs::write(dir.join("deploy-code.yaml"), config).unwrap();
    let out = cargo_bin_cmd!("deploy-code")
        .current_dir(dir)
        .args(["doctor", "--format", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), doc)
}

fn verdict(doc: &serde_json::Value, check: &str) -> String {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no `{check}` check in {doc}"))["verdict"]
        .as_str()
        .unwrap()
        .to_owned()
}

const ONE_SERVICE: &str = "services:\n  web:\n    command: /bin/true\n";

#[test]
fn a_fresh_directory_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let (code, doc) = doctor(dir.path(), ONE_SERVICE);
    assert_eq!(code, 0, "{doc:#}");
    for check in ["config", "state", "gpus", "data_dir", "log_dir", "docker"] {
        assert_ne!(verdict(&doc, check), "failed", "{doc:#}");
    }
}

#[test]
fn an_invalid_config_fails_the_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let (code, doc) = doctor(dir.path(), "services:\n  web:\n    replicas: many\n");
    assert_eq!(code, 1);
    assert_eq!(verdict(&doc, "config"), "failed");
}

#[test]
fn a_gpu_service_without_nvml_fails_the_gpu_check() {
    if deploy_code::inventory::nvml_probe().is_ok_and(|g| !g.is_empty()) {
        return; // a host with GPUs passes this check
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, doc) = doctor(
        dir.path(),
        "services:\n  model:\n    command: /bin/true\n    resources: {gpu_count: 1}\n",
    );
    assert_eq!(code, 1);
    assert_eq!(verdict(&doc, "gpus"), "failed", "{doc:#}");
}

#[test]
fn a_world_writable_state_fails_the_state_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A one-shot task: the apply creates a real state and leaves nothing running.
    std::fs::write(
        dir.path().join("deploy-code.yaml"),
        "services:\n  migrate:\n    command: /bin/true\n    oneshot: true\n",
    )
    .unwrap();
    let state = dir.path().join("state.db");
    let apply = cargo_bin_cmd!("deploy-code")
        .current_dir(dir.path())
        .args(["--state", "state.db", "apply", "--auto-approve"])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = cargo_bin_cmd!("deploy-code")
        .current_dir(dir.path())
        .args(["--state", "state.db", "doctor", "--format", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(verdict(&doc, "state"), "failed", "{doc:#}");
}
