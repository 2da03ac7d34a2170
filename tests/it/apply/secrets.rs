//! Nothing sensitive leaves the process, even on failure: a canary secret is
//! given through `env`, `args` and `command`, services fail in the ways that
//! used to leak it (a secret command that is not found, a service that
//! prints its secret and dies), and every command's output in every format,
//! and every file under the state directory, are scanned for the canary in
//! plain text, base64 and hex.

use std::path::Path;

use base64::Engine;

use super::common::*;
use super::verdict::{Site, server_script};

const CANARY: &str = "canary-5e9d-hunter2-xyzzy";

fn forms() -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    vec![
        CANARY.to_owned(),
        STANDARD.encode(CANARY),
        STANDARD_NO_PAD.encode(CANARY),
        hex::encode(CANARY),
        hex::encode_upper(CANARY),
    ]
}

/// Where the canary shows in `text`, by form.
fn hits(text: &str) -> Vec<String> {
    forms()
        .into_iter()
        .filter(|f| text.contains(f.as_str()))
        .collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn the_canary_never_leaves_the_process() {
    let site = Site::new("canary");
    let port = free_port();
    let py = python();
    let script = server_script();
    let mut scanned = 0;
    let mut found = Vec::new();
    let mut scan = |what: String, text: &str| {
        scanned += 1;
        for h in hits(text) {
            found.push(format!("{what}: `{h}`"));
        }
    };
    let env = [("API_TOKEN", CANARY), ("CANARY_CMD", CANARY)];
    let run = |args: &[&str]| site.run_with(args, &env);

    // 1. A healthy service with the secret in its environment and argv.
    let healthy = format!(
        "{}  web:\n    command: {py}\n    args: [\"{script}\", \"{port}\", \"v1\", \"none\", \"0\", \"{{{{ secret('API_TOKEN') }}}}\"]\n    env: {{TOKEN: \"{{{{ secret('API_TOKEN') }}}}\"}}\n    ports: [{{container_port: {port}}}]\n    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2}}\n",
        site.header()
    );
    site.write(&healthy);
    let plan_file = site.dir.path().join("release.plan");
    for args in [
        vec!["validate"],
        vec!["validate", "--format", "json"],
        vec!["plan"],
        vec!["plan", "--format", "json"],
        vec!["plan", "--format", "markdown"],
        vec!["plan", "--out", plan_file.to_str().unwrap()],
        vec!["show", plan_file.to_str().unwrap()],
        vec!["apply", plan_file.to_str().unwrap()],
        vec!["status"],
        vec!["status", "--format", "json"],
        vec!["status", "--format", "yaml"],
        vec!["health", "--format", "json"],
        vec!["state", "list", "--format", "json"],
        vec!["state", "show", "web"],
        vec!["state", "history", "--format", "json"],
    ] {
        let (_, out) = run(&args);
        scan(format!("`{}`", args.join(" ")), &out);
    }
    scan(
        "the plan file".into(),
        &std::fs::read_to_string(&plan_file).unwrap(),
    );

    // 2. The secret as `command`, which is not found: refused before any change.
    site.write(&format!(
        "{}  web:\n    command: \"{{{{ secret('CANARY_CMD') }}}}\"\n    ports: [{{container_port: {port}}}]\n",
        site.header()
    ));
    for args in [
        vec!["apply", "--auto-approve"],
        vec!["apply", "--auto-approve", "--format", "json"],
    ] {
        let (code, out) = run(&args);
        assert_eq!(code, 1, "{out}");
        scan(format!("secret command: `{}`", args.join(" ")), &out);
    }

    // 3. A service that prints its secret and dies: the evidence quotes its log.
    site.write(&format!(
        "{}  web:\n    command: /bin/sh\n    args: [\"-c\", \"echo the token is $TOKEN; echo $TOKEN | base64; exit 3\"]\n    env: {{TOKEN: \"{{{{ secret('API_TOKEN') }}}}\"}}\n    ports: [{{container_port: {port}}}]\n    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2}}\n",
        site.header()
    ));
    for args in [
        vec!["apply", "--auto-approve"],
        vec!["apply", "--auto-approve", "--format", "json"],
        vec!["apply", "--auto-approve", "-v"],
    ] {
        let (code, out) = run(&args);
        assert_eq!(code, 4, "{out}");
        assert!(out.contains("exited with code 3"), "{out}");
        if args.len() == 2 {
            // The evidence is there, with the secret replaced.
            assert!(out.contains("the token is (sensitive)"), "{out}");
        }
        scan(format!("failing service: `{}`", args.join(" ")), &out);
    }
    for args in [
        vec!["state", "history", "--format", "json"],
        vec!["state", "show", "--revision", "3", "--format", "json"],
        vec!["state", "show", "--revision", "4"],
        vec!["logs", "web"],
        vec!["destroy", "--auto-approve"],
    ] {
        let (_, out) = run(&args);
        scan(format!("after the failure: `{}`", args.join(" ")), &out);
    }

    // 4. Every file under the state and log directories: the database, its
    // key, the services' logs (the failing one printed its secret, in plain
    // text and base64: its redacting log writer kept both out).
    let state_dir = site.state().parent().unwrap().to_path_buf();
    let logs = state_dir.join("logs");
    let mut state_files = 0;
    for f in files(&state_dir) {
        state_files += 1;
        let bytes = std::fs::read(&f).unwrap();
        scan(
            format!("file {}", f.display()),
            &String::from_utf8_lossy(&bytes),
        );
    }
    assert!(
        state_files >= 3,
        "the state, its key and the logs were scanned: {:?}",
        files(&state_dir)
    );
    // The service did print its secret: the log shows where, redacted.
    let printed = files(&logs).iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .contains("the token is (sensitive)")
    });
    assert!(printed, "the service's log holds what it printed, redacted");
    site.teardown();
    println!(
        "canary scan: {scanned} outputs and files, {} hits",
        found.len()
    );
    assert!(found.is_empty(), "the canary leaked:\n{}", found.join("\n"));
}

/// `env('X_TOKEN')` goes in as plain text: a warning names `secret()`.
#[test]
fn env_of_a_variable_named_like_a_secret_warns() {
    let site = Site::new("envwarn");
    site.write(&format!(
        "{}  web:\n    command: /bin/true\n    env: {{T: \"{{{{ env('X_TOKEN') }}}}\"}}\n",
        site.header()
    ));
    let (code, out) = site.run_with(&["validate"], &[("X_TOKEN", "abc")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("secret('X_TOKEN')"), "{out}");
}

/// `destroy` where there is neither a configuration nor a state says where
/// it looked, exits 1 and creates nothing.
#[test]
fn destroy_with_neither_config_nor_state_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir.path())
        .args(["destroy", "--auto-approve"])
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no configuration at") && err.contains("no state at"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}
