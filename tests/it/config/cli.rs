//! `deploy-code validate` end to end.

use assert_cmd::cargo::cargo_bin_cmd;

fn cmd() -> assert_cmd::Command {
    let mut c = cargo_bin_cmd!("deploy-code");
    c.env("NO_COLOR", "1").env_remove("DEPLOY_CODE_CONFIG");
    c
}

#[test]
fn validate_prints_one_line_and_exits_0() {
    let out = cmd()
        .args(["-c", "examples/quickstart/deploy-code.yaml", "validate"])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(
        stdout,
        "✓ examples/quickstart/deploy-code.yaml is valid: 4 services\n"
    );
}

#[test]
fn validate_counts_disabled_services() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-code.yaml");
    std::fs::write(
        &path,
        "services:\n  a:\n    command: x\n  b:\n    enabled: false\n    command: y\n",
    )
    .unwrap();
    let out = cmd()
        .arg("-c")
        .arg(&path)
        .arg("validate")
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.ends_with("is valid: 2 services (1 disabled)\n"),
        "{stdout}"
    );
}

#[test]
fn validate_json_success() {
    let out = cmd()
        .args([
            "-c",
            "examples/quickstart/deploy-code.yaml",
            "validate",
            "--format",
            "json",
        ])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["services"], 4);
}

#[test]
fn validate_json_diagnostics_have_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-code.yaml");
    std::fs::write(
        &path,
        "services:\n  api:\n    command: x\n    dependencies: [nope]\n",
    )
    .unwrap();
    let out = cmd()
        .arg("-c")
        .arg(&path)
        .args(["validate", "--format", "json"])
        .assert()
        .code(1);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "E007::unknown_dependency");
    assert_eq!(d["line"], 4);
    assert_eq!(d["column"], 20);
    assert_eq!(d["file"], path.display().to_string());
    assert!(d["help"].as_str().unwrap().contains("define"));
}

#[test]
fn validate_missing_file_exits_1_with_e001() {
    let out = cmd()
        .args(["-c", "/nonexistent/x.yaml", "validate"])
        .assert()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("E001"), "{stderr}");
}

#[test]
fn validate_takes_vars_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-code.yaml");
    std::fs::write(
        &path,
        "services:\n{% for i in range(n) %}\n  s{{ i }}:\n    command: x\n{% endfor %}\n",
    )
    .unwrap();
    let out = cmd()
        .arg("-c")
        .arg(&path)
        .args(["--var", "n=3", "validate"])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(stdout.contains("3 services"), "{stdout}");
}
