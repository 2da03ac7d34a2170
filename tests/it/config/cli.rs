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

/// `validate` of `text`: its exit code, stdout and stderr.
fn validate_text(text: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-code.yaml");
    std::fs::write(&path, text).unwrap();
    let out = cmd()
        .arg("-c")
        .arg(&path)
        .arg("validate")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A problem more than 65,535 columns into a line, or whose span is longer
/// than that (a list of thousands of entries written on one line), is shown
/// as any other, through windows of the line around the span's ends; the
/// JSON form keeps the true column.
#[test]
fn a_problem_far_into_a_long_line_is_shown_not_a_crash() {
    // Weights rising from 1 to 99 again and again: a problem at every
    // 99th step, most of them past column 65,535.
    let steps: Vec<String> = (0..5000)
        .map(|i| format!("{{weight: {}}}", i % 99 + 1))
        .collect();
    let canary = format!(
        "deployment:\n  strategy: Canary\n  canary: {{steps: [{}]}}\nservices:\n  web:\n    command: x\n    ports: [{{container_port: 8080, host_port: 18080}}]\n",
        steps.join(", ")
    );
    let filler: Vec<String> = (0..4000)
        .map(|i| format!("svc{i:05}: {{command: run}}"))
        .collect();
    let mapping = format!(
        "services: {{{}, last: {{command: run, replicas: -1}}}}\n",
        filler.join(", ")
    );
    assert!(mapping.len() > 65_536 && mapping.len() < 200_000);
    for (what, text, message) in [
        (
            "5,000 canary steps",
            &canary,
            "canary step 100 has weight 1 after 99",
        ),
        (
            "a long flow mapping",
            &mapping,
            "`services.last.replicas` must be at least 1, found -1",
        ),
    ] {
        let (code, _, stderr) = validate_text(text, &[]);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(stderr.contains(message), "{what}: {stderr}");
        assert!(stderr.contains('…'), "{what}: the line is cut: {stderr}");
        assert!(stderr.len() < 1_000_000, "{what}: {} bytes", stderr.len());
        let (code, stdout, stderr) = validate_text(text, &["--format", "json"]);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(v["diagnostics"][0]["code"].is_string(), "{what}: {stdout}");
    }
    let at = mapping.find("replicas: -1").unwrap() + "replicas: ".len();
    let (_, stdout, _) = validate_text(&mapping, &["--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["diagnostics"][0]["line"], 1, "{stdout}");
    assert_eq!(v["diagnostics"][0]["column"], at as u64 + 1, "{stdout}");
    // The snippet's header gives the position in the file as written.
    let (_, _, stderr) = validate_text(&mapping, &[]);
    assert!(
        stderr.contains(&format!(":1:{}]", at + 1)),
        "the true column in the header: {stderr}"
    );
}
