//! `deploy-code serve`: the Python API's tests (python/tests, pytest) run
//! against the binary built here, and the server's refusals to start.

use std::process::Command;

use crate::support::free_port;

/// Whether the Python packages the API's tests need are importable; CI
/// installs them (`.ci/run`) and demands them.
fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, jwt, pytest, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("DEPLOY_CODE_REQUIRE_TOOLS").is_some() {
        panic!("the Python API's test packages are required in CI (.ci/run installs them)");
    }
    if !ok {
        eprintln!("skipping: `pip install './python[test]'` first");
    }
    ok
}

#[test]
fn the_python_api_passes_its_tests_against_a_real_server() {
    if !python_ready() {
        return;
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-s",
            "tests",
        ])
        .current_dir("python")
        .env("DEPLOY_CODE_BIN", env!("CARGO_BIN_EXE_deploy-code"))
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest failed:\n{text}");
    // The measured event delivery, for the record.
    for line in text.lines().filter(|l| l.contains("event delivery")) {
        eprintln!("{line}");
    }
}

fn serve(config: &str, listen: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deploy-code.yaml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir.path())
        .args(["serve", "--listen", listen])
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .env("JWT_SECRET", "serve-refusal-secret-0123456789abcdef")
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
}

const SERVICE: &str =
    "services:\n  web:\n    command: /bin/busybox\n    args: [\"sleep\", \"60\"]\n";

#[test]
fn serve_refuses_a_public_address_without_authentication() {
    let (code, out) = serve(SERVICE, &format!("0.0.0.0:{}", free_port()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("without authentication"), "{out}");
    assert!(out.contains("loopback"), "{out}");
}

#[test]
fn serve_refuses_tokens_it_could_not_check() {
    let config = format!("security:\n  auth: {{enabled: true, method: JWT}}\n{SERVICE}");
    let (code, out) = serve(&config, &format!("127.0.0.1:{}", free_port()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("names no key"), "{out}");
}

#[test]
fn serve_refuses_missing_certificate_files() {
    let config = format!(
        "security:\n  tls_enabled: true\n  cert_path: nowhere/server.crt\n  key_path: nowhere/server.key\n{SERVICE}"
    );
    let (code, out) = serve(&config, &format!("127.0.0.1:{}", free_port()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cert_path"), "{out}");
}
