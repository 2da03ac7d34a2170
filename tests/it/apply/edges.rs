//! The edges of the command line, as users hit them: the configuration's
//! `state.path` for every command, a closed pipe, `-q`, the log of a
//! one-shot task.

use std::process::Stdio;

use super::common::*;
use super::verdict::{Fault, ProbeKind, Site, serves};

/// With `state.path` in the configuration, `state list` and `state history`
/// read the state that `apply` wrote.
#[test]
fn the_state_commands_read_the_configured_state_path() {
    let site = Site::new("statepath");
    let port = free_port();
    let web = site.web(ProbeKind::Path, port, 0, "v1", Fault::None);
    site.write(&format!(
        "{}{web}",
        site.header()
            .replace("services:\n", "state: {path: custom/state.db}\nservices:\n")
    ));
    site.apply_ok();
    assert!(site.dir.path().join("custom/state.db").exists());
    assert!(!site.state().exists(), "nothing at the default path");
    let (code, out) = site.run(&["state", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("web"), "{out}");
    let (code, out) = site.run(&["state", "history"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    // The recorded plan summary reads as words, not JSON.
    let (code, out) = site.run(&["state", "show", "--revision", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 to create, 0 to replace"), "{out}");
    site.run(&["destroy", "--auto-approve"]);
}

/// `status | true`, `health | true`, `metrics | true`: a reader that goes
/// away ends the command quietly, never with a panic (exit 101).
#[test]
fn a_closed_pipe_is_not_a_panic() {
    let site = Site::new("pipe");
    let port = free_port();
    site.write_web(ProbeKind::Path, port, "v1", Fault::None);
    site.apply_ok();
    for cmd in [
        &["status"][..],
        &["health"],
        &["metrics"],
        &["state", "list"],
    ] {
        let mut child = site
            .cmd()
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{cmd:?} panicked: {err}");
        assert!(!err.contains("panicked"), "{cmd:?}: {err}");
    }
    site.teardown();
}

/// `-q` prints only errors and the final result: the result is printed.
#[test]
fn quiet_still_prints_the_final_result() {
    let site = Site::new("quiet");
    let port = free_port();
    site.write_web(ProbeKind::Path, port, "v1", Fault::None);
    let (code, out) = site.run(&["-q", "apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Apply complete: revision 1"), "{out}");
    assert!(!out.contains("Phase 1"), "the plan is not shown: {out}");
    assert_eq!(serves(port).as_deref(), Some("version=v1"));
    site.teardown();
}

/// A one-shot task keeps no instance, but `logs` shows what it printed, and
/// only its own run's lines.
#[test]
fn logs_of_a_finished_task_show_its_last_run() {
    let site = Site::new("tasklog");
    let cfg = |word: &str| {
        format!(
            "{}  migrate:\n    oneshot: true\n    command: /bin/sh\n    args: [\"-c\", \"echo migrated {word}\"]\n",
            site.header()
        )
    };
    site.write(&cfg("first"));
    site.apply_ok();
    site.write(&cfg("second"));
    site.apply_ok();
    let (code, out) = site.run(&["logs", "migrate"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("migrated second"), "{out}");
    assert!(!out.contains("migrated first"), "only the last run: {out}");
    site.teardown();
}

/// Off a terminal a gate that waits says so every 5 s, with its last probe:
/// a CI log never looks hung.
#[test]
fn a_waiting_gate_says_so_every_five_seconds() {
    let site = Site::new("waitline");
    let port = free_port();
    let py = python();
    let script = super::verdict::server_script();
    site.write(&format!(
        "{}  slow:\n    command: /bin/sh\n    args: [\"-c\", \"sleep 6; exec {py} {script} {port} v1\"]\n    ports: [{{container_port: {port}}}]\n    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 30}}\n",
        site.header()
    ));
    let (code, out) = site.apply();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("slow: still waiting after 5 s (last probe: failed: GET http://127.0.0.1:"),
        "{out}"
    );
    site.teardown();
}

/// `init` writes a starter that validates and deploys, refuses to overwrite,
/// and says what to run next.
#[test]
fn init_writes_a_starter_that_deploys_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_deploy-code"))
            .current_dir(dir.path())
            .args(args)
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = run(&["init"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("deploy-code validate") && out.contains("deploy-code plan"),
        "{out}"
    );
    let cfg = dir.path().join("deploy-code.yaml");
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        written.starts_with("# yaml-language-server: $schema="),
        "{written}"
    );
    assert!(
        dir.path()
            .join(".deploy-code/deploy-code.schema.json")
            .exists()
    );
    let (code, out) = run(&["validate"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["init"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("exists already"), "{out}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), written, "untouched");
}

/// Applying a saved plan a second time says that it was applied, not that
/// serials differ.
#[test]
fn a_plan_applied_twice_says_so() {
    let site = Site::new("twice");
    let port = free_port();
    site.write_web(ProbeKind::Path, port, "v1", Fault::None);
    let plan = site.dir.path().join("release.plan");
    let plan = plan.to_str().unwrap();
    let (code, out) = site.run(&["plan", "--out", plan]);
    assert!(code == 0 || code == 2, "{out}");
    let (code, out) = site.run(&["apply", plan]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = site.run(&["apply", plan]);
    assert_eq!(code, 1, "{out}");
    let flat: String = out
        .split_whitespace()
        .filter(|w| *w != "|")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        flat.contains("its configuration was already applied (revision 1,"),
        "{out}"
    );
    site.teardown();
}
