//! The CI recipes of docs/ci.md, run for real: the pull-request job (plan with
//! an inventory file, Markdown, detailed exit code, saved plan), the release
//! job (apply the saved plan), and the stale-plan path.

use std::path::Path;
use std::process::Output;

use assert_cmd::cargo::cargo_bin_cmd;

use crate::support::free_port;

fn config(tag: &str, port: u16, mode: &str) -> String {
    format!(
        r#"project: recipes-{pid}-{tag}
services:
  web:
    command: python3
    args: ["-m", "http.server", "{port}", "--bind", "127.0.0.1"]
    env:
      MODE: {mode}
      API_TOKEN: "{{{{ secret('RECIPE_TOKEN') }}}}"
    ports: [{{container_port: {port}}}]
    health_check: {{endpoint: /, interval_seconds: 1, retries: 20}}
"#,
        pid = std::process::id()
    )
}

const INVENTORY: &str = "name: target\ncpu_cores: 4\nmemory_mb: 8192\nstorage_gb: 50\n";

fn run(dir: &Path, args: &[&str]) -> Output {
    cargo_bin_cmd!("deploy-code")
        .current_dir(dir)
        .env("RECIPE_TOKEN", "canary-recipe-7f3a")
        .env_remove("DEPLOY_CODE_STATE")
        .args(args)
        .output()
        .unwrap()
}

/// Stops what the recipes deployed, by the state's own records.
struct Teardown<'a>(&'a Path);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        let _ = run(self.0, &["destroy", "--auto-approve"]);
    }
}

#[test]
fn pull_request_plan_then_release_apply_then_stale() {
    const TAG: &str = "release";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    std::fs::write(d.join("deploy-code.yaml"), config(TAG, port, "blue")).unwrap();
    std::fs::create_dir(d.join("deploy")).unwrap();
    std::fs::write(d.join("deploy/host.yaml"), INVENTORY).unwrap();
    let _teardown = Teardown(d);

    // The pull-request job.
    let pr = [
        "plan",
        "--inventory",
        "deploy/host.yaml",
        "--no-refresh",
        "--detailed-exitcode",
        "--format",
        "markdown",
        "--out",
        "release.plan",
    ];
    let out = run(d, &pr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.contains("1 to create"), "{md}");
    assert!(md.contains("| `+` create | `web` |"), "{md}");
    assert!(
        !md.contains("canary-recipe"),
        "a secret leaked into the Markdown"
    );
    let saved = std::fs::read_to_string(d.join("release.plan")).unwrap();
    assert!(
        !saved.contains("canary-recipe"),
        "a secret leaked into the plan file"
    );

    // The release job applies exactly the reviewed plan.
    let out = run(d, &["apply", "release.plan", "--auto-approve"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = reqwest::blocking_get(port);
    assert!(body.contains("Directory listing"), "{body}");

    // Applying the same plan again: the state moved on, so it is stale.
    let out = run(d, &["apply", "release.plan", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E013"), "{err}");

    // What to do when it says stale: plan again, review, apply that plan.
    std::fs::write(d.join("deploy-code.yaml"), config(TAG, port, "green")).unwrap();
    let out = run(d, &pr);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("replace"));
    let out = run(d, &["show", "release.plan", "--format", "json"]);
    assert!(out.status.success());
    let out = run(d, &["apply", "release.plan", "--auto-approve"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And with nothing left to do, the PR job says so with exit 0.
    let out = run(d, &pr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn pull_request_plan_that_does_not_fit_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("deploy-code.yaml"),
        "services:\n  big:\n    command: /bin/true\n    resources: {cpu_cores: 16, memory_mb: 65536, gpu_count: 1}\n",
    )
    .unwrap();
    std::fs::write(d.join("host.yaml"), INVENTORY).unwrap();
    let out = run(
        d,
        &[
            "plan",
            "--inventory",
            "host.yaml",
            "--detailed-exitcode",
            "--format",
            "markdown",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let md = String::from_utf8(out.stdout).unwrap();
    for dimension in ["cpu", "memory", "gpu"] {
        assert!(
            md.contains(&format!("- {dimension}")),
            "`{dimension}` missing in:\n{md}"
        );
    }
}

mod reqwest {
    /// GET / on a loopback port, blocking.
    pub fn blocking_get(port: u16) -> String {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            deploy_code::net::get(format!("http://127.0.0.1:{port}/"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    }
}

/// Tearing down must not depend on secrets the release job had: a destroy with
/// a configuration that no longer renders still stops everything in the state.
#[test]
fn destroy_works_when_a_secret_is_gone() {
    const TAG: &str = "teardown";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    std::fs::write(d.join("deploy-code.yaml"), config(TAG, port, "blue")).unwrap();
    let _teardown = Teardown(d);
    let out = run(d, &["apply", "--auto-approve"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cargo_bin_cmd!("deploy-code")
        .current_dir(d)
        .env_remove("RECIPE_TOKEN")
        .args(["destroy", "--auto-approve"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("destroying from the state alone"));
    let out = run(d, &["state", "list", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["services"].as_array().map(Vec::len), Some(0), "{doc}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Regression: two state files whose configurations share a project name (two
/// checkouts on one host) must never adopt or stop each other's processes.
#[test]
fn states_sharing_a_project_name_leave_each_other_alone() {
    const TAG: &str = "shared";
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pa, pb) = (free_port(), free_port());
    std::fs::write(a.path().join("deploy-code.yaml"), config(TAG, pa, "blue")).unwrap();
    std::fs::write(b.path().join("deploy-code.yaml"), config(TAG, pb, "blue")).unwrap();
    let _ta = Teardown(a.path());
    let _tb = Teardown(b.path());
    for d in [a.path(), b.path()] {
        let out = run(d, &["apply", "--auto-approve"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A's process is still there, and A plans no change; B's process is
    // reported as another state's, not as an orphan of A's.
    assert!(std::net::TcpStream::connect(("127.0.0.1", pa)).is_ok());
    let out = run(a.path(), &["plan", "--detailed-exitcode"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("another state started it"), "{stdout}");
    assert!(!stdout.contains("the state does not know it"), "{stdout}");
    // cleanup names B's process, promises nothing about it and leaves it running.
    let out = run(a.path(), &["cleanup", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("left alone: `web`"), "{stdout}");
    assert!(!stdout.contains("would remove"), "{stdout}");
    assert!(stdout.contains("Nothing to clean up."), "{stdout}");
    let out = run(a.path(), &["cleanup", "--auto-approve"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", pb)).is_ok());
    assert!(std::net::TcpStream::connect(("127.0.0.1", pa)).is_ok());
}
