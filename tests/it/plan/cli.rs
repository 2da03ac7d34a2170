//! The command line against real configuration, state and inventory files.

use std::path::{Path, PathBuf};

use assert_cmd::cargo::cargo_bin_cmd;
use deploy_code::config;
use deploy_code::plan::saved;
use deploy_code::state::{self, Handle, Holder, ServiceRecord, ServiceStatus, Store};

const CANARY: &str = "canary-s3cret-9b7e";

fn fixture(case: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
        .join(file)
}

/// The configuration loaded in this process with the canary as its secret,
/// given in the load's inputs (the process environment stays untouched).
fn load_with_canary(path: &Path) -> config::LoadedConfig {
    let mut inputs = config::template::Inputs::from_process(Vec::new(), Vec::new());
    inputs.env.insert("API_KEY".into(), CANARY.into());
    let text = std::fs::read_to_string(path).unwrap();
    config::load_text(&text, path, &inputs).unwrap()
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture("platform", "deploy-code.yaml"),
            dir.path().join("deploy-code.yaml"),
        )
        .unwrap();
        Case { dir }
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("deploy-code.yaml")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }
    fn cmd(&self, secret: &str) -> assert_cmd::Command {
        let mut c = cargo_bin_cmd!("deploy-code");
        c.current_dir(self.dir.path())
            .env("API_KEY", secret)
            .env("NO_COLOR", "1")
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            .arg("--config")
            .arg(self.config())
            .arg("--state")
            .arg(self.state());
        c
    }
    /// Records every service of the configuration in a real state file, as an
    /// apply would, with `handle` as each one's instance.
    fn record_all(&self, handle: impl Fn(&str) -> Handle) {
        let mut loaded = load_with_canary(&self.config());
        let mut store = Store::open(&self.state(), &Holder::current("test"), None).unwrap();
        store.ensure_identity(None).unwrap();
        let key = store.snapshot().unwrap().secret_key.unwrap();
        loaded.desired.rekey(&key);
        for spec in loaded.desired.services.values() {
            store
                .put_service(&ServiceRecord {
                    name: spec.name.clone(),
                    spec: deploy_code::model::ServiceSpec::clone(spec),
                    spec_hash: spec.spec_hash(),
                    backend: spec.backend,
                    handles: vec![handle(spec.name.as_str())],
                    status: ServiceStatus::Ready,
                    gpus: Vec::new(),
                    revision: 1,
                    created_at: state::now_rfc3339(),
                    updated_at: state::now_rfc3339(),
                })
                .unwrap();
        }
    }
}

fn dead(_: &str) -> Handle {
    Handle::Process {
        replica: 0,
        pid: 4_000_000,
        start_time: 1,
        log_path: "/tmp/none.log".into(),
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn inv(file: &str) -> String {
    fixture("platform", file).display().to_string()
}

#[test]
fn an_empty_state_plans_the_platform_in_phases() {
    let case = Case::new();
    let out = case
        .cmd(CANARY)
        .args([
            "plan",
            "--inventory",
            &inv("inventory.yaml"),
            "--format",
            "json",
        ])
        .args(["--detailed-exitcode", "--out", "release.plan"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        doc["phases"],
        serde_json::json!([
            ["postgresql", "redis"],
            ["auth_service", "circle_of_experts", "mcp_memory"],
            ["api_gateway"]
        ])
    );
    assert_eq!(doc["binding"]["lineage"], serde_json::Value::Null);
    assert_eq!(doc["binding"]["serial"], 0);
    assert!(doc["binding"].get("new_state_key").is_none());
    assert!(
        doc["binding"]["state_key_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("key:")),
        "only the key's id: {doc}"
    );
    assert_eq!(doc["feasibility"]["feasible"], true);
    assert_eq!(
        doc["feasibility"]["gpu_assignments"]["circle_of_experts"][0]["model"],
        "NVIDIA GeForce RTX 4090"
    );
    // The saved plan carries neither the key nor any plaintext: the key of
    // its digests waits beside the (not yet existing) state.
    let file = std::fs::read_to_string(case.dir.path().join("release.plan")).unwrap();
    let saved = deploy_code::planfile::read(&case.dir.path().join("release.plan")).unwrap();
    let key_file = deploy_code::state::key::path_for(&case.state());
    let key = std::fs::read_to_string(&key_file).expect("the key file beside the state");
    assert!(!file.contains(key.trim()), "the key is not in the plan");
    assert_eq!(
        saved.binding.state_key_id.as_deref(),
        Some(
            deploy_code::state::key::id(
                &deploy_code::model::SecretKey::from_hex(key.trim()).unwrap()
            )
            .as_str()
        )
    );
    assert!(!file.contains(CANARY));
    assert!(!stdout(&out).contains(CANARY));
    // Plan wrote no state.
    assert!(!case.state().exists());
}

#[test]
fn a_recorded_state_has_no_changes() {
    let case = Case::new();
    case.record_all(dead);
    let before = std::fs::read(case.state()).unwrap();
    let out = case
        .cmd(CANARY)
        .args([
            "plan",
            "--no-refresh",
            "--inventory",
            &inv("inventory.yaml"),
        ])
        .arg("--detailed-exitcode")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("No changes."), "{}", stdout(&out));
    assert_eq!(
        std::fs::read(case.state()).unwrap(),
        before,
        "plan never writes the state"
    );
}

#[test]
fn a_changed_secret_is_a_replace_that_shows_no_value() {
    let case = Case::new();
    case.record_all(dead);
    for format in ["human", "json", "markdown"] {
        let out = case
            .cmd("another-value-51c2")
            .args([
                "plan",
                "--no-refresh",
                "--inventory",
                &inv("inventory.yaml"),
            ])
            .args(["--format", format])
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(
            text.contains("`env.API_KEY` changed (forces replacement)"),
            "{text}"
        );
        assert!(text.contains("(sensitive, changed)"), "{text}");
        for leak in [CANARY, "another-value-51c2", "hmac-sha256"] {
            assert!(!text.contains(leak), "{format} shows {leak}");
        }
    }
}

#[test]
fn saved_plans_show_and_go_stale() {
    let case = Case::new();
    case.record_all(dead);
    let plan_file = case.dir.path().join("next.plan");
    let out = case
        .cmd("rotated-7d1e")
        .args([
            "plan",
            "--no-refresh",
            "--inventory",
            &inv("inventory.yaml"),
        ])
        .arg("--out")
        .arg(&plan_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let shown = case
        .cmd("rotated-7d1e")
        .arg("show")
        .arg(&plan_file)
        .output()
        .unwrap();
    let planned = stdout(&out);
    assert!(
        planned.starts_with(&stdout(&shown)),
        "{planned}\n---\n{}",
        stdout(&shown)
    );
    let text = std::fs::read_to_string(&plan_file).unwrap();
    assert!(!text.contains("rotated-7d1e") && !text.contains(CANARY));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&plan_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let plan = deploy_code::planfile::read(&plan_file).unwrap();
    let snap = state::load_snapshot(&case.state()).unwrap();
    assert!(plan.binding.state_key_id.is_some());
    saved::check_fresh(&plan, &snap, &plan.binding.config_hash).unwrap();
    let err = saved::check_fresh(&plan, &snap, "sha256:other").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the saved plan is stale: the rendered configuration changed since the plan was made"
    );
    // Another run changes the state: the serial moves on.
    {
        let mut store = Store::open(&case.state(), &Holder::current("test"), None).unwrap();
        let name = deploy_code::model::ServiceName::parse("mcp_memory").unwrap();
        store.remove_service(&name).unwrap();
    }
    let snap = state::load_snapshot(&case.state()).unwrap();
    let err = saved::check_fresh(&plan, &snap, &plan.binding.config_hash).unwrap_err();
    assert!(err.changed[0].contains("the state's serial is"), "{err}");
    let report = format!("{:?}", miette::Report::new(err));
    assert!(report.contains("E013"), "{report}");
}

#[test]
fn an_infeasible_plan_exits_3_with_every_dimension() {
    let case = Case::new();
    let out = case
        .cmd(CANARY)
        .args(["plan", "--inventory", &inv("small.yaml")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    for dim in [
        "  x cpu:",
        "  x memory:",
        "  x storage:",
        "  x gpu_memory:",
        "  x port 18080:",
    ] {
        assert!(text.contains(dim), "{dim} missing in\n{text}");
    }
    // Each exhausted dimension names the key that changes it, once.
    assert!(
        text.contains("help: lower `resources.cpu_cores` of the services (default 0.1 for a local process, 0.5 for a container)"),
        "{text}"
    );
    assert_eq!(
        text.matches("help: lower `resources.memory_mb`").count(),
        1,
        "{text}"
    );
}

/// Four hello-world services that declare no resources fit a 2-core CI
/// runner: a local process is counted at 0.1 core unless it says otherwise.
#[test]
fn four_services_without_resources_fit_a_two_core_runner() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("version: \"1.0.0\"\nservices:\n");
    for i in 0..4 {
        yaml.push_str(&format!(
            "  hello{i}:\n    command: sleep\n    args: [\"600\"]\n"
        ));
    }
    std::fs::write(dir.path().join("deploy-code.yaml"), yaml).unwrap();
    std::fs::write(
        dir.path().join("runner.yaml"),
        "name: ci-runner\ncpu_cores: 2\nmemory_mb: 7000\nstorage_gb: 14\n",
    )
    .unwrap();
    let out = cargo_bin_cmd!("deploy-code")
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .args(["plan", "--inventory", "runner.yaml", "--detailed-exitcode"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("Feasibility: fits"), "{text}");
}

#[test]
fn unknown_targets_are_s001() {
    let case = Case::new();
    let out = case
        .cmd(CANARY)
        .args([
            "plan",
            "--target",
            "api_gatewy",
            "--inventory",
            &inv("inventory.yaml"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("S001"), "{err}");
    assert!(err.contains("did you mean `api_gateway`"), "{err}");
}

#[test]
fn refresh_finds_a_process_that_died() {
    let case = Case::new();
    let mut child = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let pid = child.id();
    let start_time = state::process_start_time(pid).unwrap();
    case.record_all(|_| Handle::Process {
        replica: 0,
        pid,
        start_time,
        log_path: "/tmp/none.log".into(),
    });
    let plan = |case: &Case| {
        let out = case
            .cmd(CANARY)
            .args([
                "plan",
                "--inventory",
                &inv("inventory.yaml"),
                "--format",
                "json",
            ])
            .output()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()
    };
    let alive = plan(&case);
    assert_eq!(alive["drift"], serde_json::json!([]));
    assert_eq!(alive["summary"]["no_op"], 6);
    child.kill().unwrap();
    child.wait().unwrap();
    let died = plan(&case);
    assert_eq!(died["summary"]["replace"], 6, "{died}");
    assert_eq!(died["drift"][0]["kind"], "exited");
    // Without refresh the state alone is trusted.
    let out = case
        .cmd(CANARY)
        .args([
            "plan",
            "--no-refresh",
            "--inventory",
            &inv("inventory.yaml"),
        ])
        .output()
        .unwrap();
    assert!(stdout(&out).starts_with("No changes."));
}

#[test]
fn inventory_prints_a_file_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = cargo_bin_cmd!("deploy-code")
        .current_dir(dir.path())
        .arg("inventory")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let inv = deploy_code::inventory::parse(&stdout(&out), "probe.yaml").unwrap();
    assert!(inv.hosts[0].cpu_cores >= 1.0);
    let out = cargo_bin_cmd!("deploy-code")
        .current_dir(dir.path())
        .args(["inventory", "--format", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["memory_mb"].as_u64().unwrap() > 0);
}

#[test]
fn a_bad_inventory_file_points_at_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("host.yaml");
    std::fs::write(
        &f,
        "name: a\ncpu_cores: 4\nmemory_mb: lots\nstorage_gb: 1\n",
    )
    .unwrap();
    let err = deploy_code::inventory::load_file(&f).unwrap_err();
    assert!(err.message.contains("memory_mb"), "{}", err.message);
    let span = err.span.unwrap();
    assert_eq!(span.offset(), "name: a\ncpu_cores: 4\nmemory_mb: ".len());
    let hosts = "hosts:\n  - {name: a, cpu_cores: 1, memory_mb: 1, storage_gb: 1}\n  - {name: a, cpu_cores: 1, memory_mb: 1, storage_gb: 1}\n";
    let err = deploy_code::inventory::parse(hosts, "x.yaml").unwrap_err();
    assert_eq!(err.message, "host `a` is declared twice");
}

#[test]
fn plan_reads_a_read_only_copy_and_leaves_it_alone() {
    let case = Case::new();
    case.record_all(dead);
    let ro = tempfile::tempdir().unwrap();
    let copy = ro.path().join("backup.db");
    state::backup(&case.state(), &copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let before = std::fs::read(&copy).unwrap();
    // The copy travels without its key (as a CI artifact does); the key is
    // given as the CI's secret.
    let key = std::fs::read_to_string(deploy_code::state::key::path_for(&case.state())).unwrap();
    let out = case
        .cmd(CANARY)
        .env(deploy_code::state::key::ENV, key.trim())
        .args([
            "plan",
            "--no-refresh",
            "--inventory",
            &inv("inventory.yaml"),
        ])
        .arg("--state")
        .arg(&copy)
        .output()
        .unwrap();
    let listing: Vec<_> = std::fs::read_dir(ro.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).starts_with("No changes."));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    assert_eq!(listing.len(), 1, "{listing:?}");
}

#[test]
fn plan_destroy_removes_dependents_first() {
    let case = Case::new();
    case.record_all(dead);
    let out = case
        .cmd(CANARY)
        .args(["plan", "--destroy", "--no-refresh", "--format", "json"])
        .args(["--inventory", &inv("inventory.yaml"), "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        doc["phases"],
        serde_json::json!([
            ["api_gateway", "mcp_memory"],
            ["auth_service", "circle_of_experts"],
            ["postgresql", "redis"]
        ])
    );
    assert_eq!(doc["destroy_all"], true);
    // Without the configuration file the state alone is enough.
    std::fs::remove_file(case.config()).unwrap();
    let out = case
        .cmd(CANARY)
        .args([
            "plan",
            "--destroy",
            "--no-refresh",
            "--inventory",
            &inv("inventory.yaml"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).starts_with("Plan: 0 to create, 0 to replace, 0 to update, 6 to destroy.")
    );
}
