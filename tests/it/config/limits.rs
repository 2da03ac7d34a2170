//! Values outside what a key can hold, and configurations with nothing in them:
//! each is a diagnostic at the exact value, never a silent default.

use assert_cmd::cargo::cargo_bin_cmd;
use miette::Diagnostic;

use super::*;

/// The one problem of `text`: its code, message and help, after checking that
/// its primary label covers exactly `value`, the last occurrence in `text`.
fn problem_at(text: &str, value: &str) -> (String, String, String) {
    let err = match load(text) {
        Ok(l) => panic!(
            "expected a problem at `{value}` in:\n{text}\nloaded {:?}",
            l.desired
        ),
        Err(e) => e,
    };
    assert_eq!(err.problems.len(), 1, "{}", rendered(&err));
    let p = &err.problems[0];
    let at = text.rfind(value).expect("the value is in the text");
    let label = p
        .labels()
        .and_then(|mut l| l.next())
        .unwrap_or_else(|| panic!("no label: {}", rendered(&err)));
    assert_eq!(
        (label.offset(), label.len()),
        (at, value.len()),
        "the label should cover `{value}`:\n{}",
        rendered(&err)
    );
    let help = p.help().map(|h| h.to_string()).unwrap_or_default();
    assert!(!help.is_empty(), "no help: {}", rendered(&err));
    (err.codes()[0].clone(), p.to_string(), help)
}

const SERVICE: &str = "services:\n  api:\n    command: x\n";

#[test]
fn integers_beyond_their_type_are_refused_at_the_value() {
    let cases = [
        // u32
        (
            format!("{SERVICE}    replicas: 4294967297\n"),
            "4294967297",
            "`services.api.replicas` must be at most 4294967295, found 4294967297",
        ),
        (
            format!("deployment:\n  max_parallel: 4294967296\nproject: shop\n{SERVICE}"),
            "4294967296",
            "`deployment.max_parallel` must be at most 4294967295, found 4294967296",
        ),
        (
            format!("{SERVICE}    health_check:\n      tcp: 80\n      retries: 4294967296\n"),
            "4294967296",
            "`services.api.health_check.retries` must be at most 4294967295",
        ),
        (
            format!("{SERVICE}    resources:\n      gpu_count: 4294967296\n"),
            "4294967296",
            "`services.api.resources.gpu_count` must be at most 4294967295",
        ),
        // u16
        (
            format!("{SERVICE}    ports:\n      - container_port: 70000\n"),
            "70000",
            "`services.api.ports.0.container_port` must be at most 65535, found 70000",
        ),
        (
            format!("{SERVICE}    ports:\n      - container_port: 80\n        host_port: 70000\n"),
            "70000",
            "`services.api.ports.0.host_port` must be at most 65535, found 70000",
        ),
        // seconds with fractions: at most a year
        (
            format!(
                "{SERVICE}    health_check:\n      tcp: 80\n      interval_seconds: 99999999999999999999\n"
            ),
            "99999999999999999999",
            "`services.api.health_check.interval_seconds` must be at most 31536000",
        ),
        (
            format!(
                "{SERVICE}    health_check:\n      tcp: 80\n      timeout_seconds: 99999999999999999999\n"
            ),
            "99999999999999999999",
            "`services.api.health_check.timeout_seconds` must be at most 31536000",
        ),
        // and at least 10 ms
        (
            format!("{SERVICE}    health_check:\n      tcp: 80\n      interval_seconds: 0.005\n"),
            "0.005",
            "`services.api.health_check.interval_seconds` must be at least 0.01, found 0.005",
        ),
        (
            format!("{SERVICE}    resources:\n      memory_mb: 99999999999999999999\n"),
            "99999999999999999999",
            "`services.api.resources.memory_mb` must be at most 18446744073709551615",
        ),
        (
            format!("deployment:\n  timeout_seconds: 99999999999999999999\n{SERVICE}"),
            "99999999999999999999",
            "`deployment.timeout_seconds` must be at most 18446744073709551615",
        ),
        // negative where unsigned
        (
            format!("{SERVICE}    replicas: -1\n"),
            "-1",
            "`services.api.replicas` must be at least 1, found -1",
        ),
        (
            format!("deployment:\n  stop_grace_seconds: -5\n{SERVICE}"),
            "-5",
            "`deployment.stop_grace_seconds` must be at least 0, found -5",
        ),
        (
            format!("{SERVICE}    health_check:\n      tcp: 80\n      timeout_seconds: -1\n"),
            "-1",
            "`services.api.health_check.timeout_seconds` must be at least 0.01, found -1",
        ),
        (
            format!("{SERVICE}    resources:\n      gpu_count: -1\n"),
            "-1",
            "`services.api.resources.gpu_count` must be positive, found -1",
        ),
    ];
    for (text, value, want) in cases {
        let (code, message, _) = problem_at(&text, value);
        assert!(
            code == "E002::invalid_value" || code == "S003::non_positive_resource",
            "{code} for\n{text}"
        );
        assert!(message.starts_with(want), "`{message}` for\n{text}");
    }
}

#[test]
fn the_largest_values_of_each_type_load() {
    let text = format!(
        "deployment:\n  max_parallel: 4294967295\n  timeout_seconds: 9223372036854775807\n{SERVICE}    replicas: 4294967295\n    ports:\n      - container_port: 65535\n        host_port: 65535\n    resources:\n      gpu_count: 4294967295\n      memory_mb: 9223372036854775807\n"
    );
    let loaded = load(&text).expect("valid");
    let d = &loaded.desired;
    assert_eq!(d.settings.deployment.max_parallel, u32::MAX);
    let api = d.services.values().next().unwrap();
    assert_eq!(api.replicas, u32::MAX);
    assert_eq!(api.ports[0].host_port, Some(65535));
    assert_eq!(api.resources.gpu_count, u32::MAX);
    assert_eq!(api.resources.memory_mb, i64::MAX as u64);
}

#[test]
fn health_check_seconds_take_fractions_to_the_millisecond() {
    let text = format!(
        "{SERVICE}    health_check:\n      tcp: 80\n      interval_seconds: 0.1\n      timeout_seconds: 0.25\n"
    );
    let loaded = load(&text).expect("valid");
    let check = loaded
        .desired
        .services
        .values()
        .next()
        .unwrap()
        .health_check
        .clone();
    let check = check.expect("a health check");
    assert_eq!(check.interval(), std::time::Duration::from_millis(100));
    assert_eq!(check.timeout(), std::time::Duration::from_millis(250));
    // Whole seconds stay integers in the spec (and so in its hash).
    let whole = load(&format!(
        "{SERVICE}    health_check:\n      tcp: 80\n      interval_seconds: 2\n"
    ))
    .expect("valid");
    let spec = whole.desired.services.values().next().unwrap();
    let json = serde_json::to_value(spec.health_check.as_ref().unwrap()).unwrap();
    assert_eq!(json["interval_seconds"], serde_json::json!(2));
    assert_eq!(json["timeout_seconds"], serde_json::json!(5));
    let json = serde_json::to_value(&check).unwrap();
    assert_eq!(json["interval_seconds"], serde_json::json!(0.1));

    // A finer fraction would have no effect: refused at the value.
    let text =
        format!("{SERVICE}    health_check:\n      tcp: 80\n      timeout_seconds: 0.1255\n");
    let (code, message, help) = problem_at(&text, "0.1255");
    assert_eq!(code, "E002::invalid_value");
    assert_eq!(
        message,
        "`health_check.timeout_seconds` of `api` is 0.1255: it is counted in milliseconds"
    );
    assert!(help.contains("three decimals"), "{help}");
}

#[test]
fn cpu_cores_must_be_a_finite_number() {
    for value in ["1e400", ".inf", "-.inf", ".nan", ".NaN"] {
        let text = format!("{SERVICE}    resources:\n      cpu_cores: {value}\n");
        let (code, message, help) = problem_at(&text, value);
        assert_eq!(code, "E002::invalid_value", "{value}");
        assert!(
            message.starts_with(
                "`services.api.resources.cpu_cores` must be a finite number above 0, found"
            ),
            "{message}"
        );
        assert!(help.contains("leave the key out"), "{help}");
    }
}

#[test]
fn zero_replicas_is_refused() {
    let text = format!("{SERVICE}    replicas: 0\n");
    let (code, message, help) = problem_at(&text, "0");
    assert_eq!(code, "E002::invalid_value");
    assert_eq!(
        message,
        "`services.api.replicas` must be at least 1, found 0"
    );
    assert!(help.contains("remove it or set `enabled: false`"), "{help}");
}

#[test]
fn out_of_range_replicas_as_a_person_sees_it() {
    let err = load(&format!("{SERVICE}    replicas: 4294967297\n")).unwrap_err();
    insta::assert_snapshot!(rendered(&err));
}

#[test]
fn a_configuration_without_services_is_refused() {
    for text in [
        "",
        "\n\n",
        "# nothing here yet\n",
        "~\n",
        "null\n",
        "---\n",
        "services:\n",
        "services: {}\n",
        "services: ~\n",
        "project: shop\nstate:\n  path: shop.db\n",
        "{% if false %}services:\n  a:\n    command: x\n{% endif %}\n",
    ] {
        let err = match load(text) {
            Ok(_) => panic!("{text:?} loaded as a configuration of no services"),
            Err(e) => e,
        };
        assert_eq!(err.codes(), vec!["E002::no_services"], "{text:?}");
        assert_eq!(err.code().unwrap().to_string(), "deploy_code::E002");
        let p = &err.problems[0];
        assert_eq!(p.to_string(), "the configuration defines no services");
        assert!(
            p.help().unwrap().to_string().contains("--allow-empty"),
            "{text:?}"
        );
    }
    // The label is the `services` value when there is one.
    let (_, _, _) = problem_at("services: {}\n", "{}");
}

#[test]
fn only_disabled_services_is_not_empty() {
    let loaded = load("services:\n  a:\n    enabled: false\n    command: x\n").expect("valid");
    assert!(loaded.desired.services.is_empty());
    assert_eq!(loaded.desired.disabled.len(), 1);
}

#[test]
fn no_services_as_a_person_sees_it() {
    let err = load("project: shop\nservices: {}\n").unwrap_err();
    insta::assert_snapshot!(rendered(&err));
}

#[test]
fn the_document_must_be_a_mapping() {
    for (text, value, found) in [
        ("just a string\n", "just a string", "a string"),
        ("42\n", "42", "an integer"),
        ("- a\n- b\n", "- a\n- b", "a list"),
        ("[services]\n", "[services]", "a list"),
    ] {
        let (code, message, _) = problem_at(text, value);
        assert_eq!(code, "E002::wrong_type", "{text:?}");
        assert_eq!(
            message,
            format!("the document should be a mapping, found {found}")
        );
    }
}

fn cmd() -> assert_cmd::Command {
    let mut c = cargo_bin_cmd!("deploy-code");
    c.env("NO_COLOR", "1").env_remove("DEPLOY_CODE_CONFIG");
    c
}

#[test]
fn validate_refuses_an_empty_file_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-code.yaml");
    std::fs::write(&path, "# services come later\n").unwrap();
    let out = cmd().arg("-c").arg(&path).arg("validate").assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("E002::no_services"), "{stderr}");
    assert!(stderr.contains("--allow-empty"), "{stderr}");

    let out = cmd()
        .arg("-c")
        .arg(&path)
        .args(["--allow-empty", "validate"])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(stdout.ends_with("is valid: 0 services\n"), "{stdout}");
}

#[test]
fn allow_empty_is_a_load_option() {
    let opts = config::LoadOptions {
        allow_empty: true,
        ..Default::default()
    };
    let path = Path::new("deploy-code.yaml");
    let loaded = config::load_from_str("project: shop\n", path, &opts).expect("allowed");
    assert!(loaded.desired.services.is_empty());
    assert_eq!(loaded.desired.settings.project, "shop");
    let err = config::load_from_str("project: shop\n", path, &config::LoadOptions::default())
        .unwrap_err();
    assert_eq!(err.codes(), vec!["E002::no_services"]);
}

/// `deploy-code ARGS` in `dir` with its own state file: (exit code, stderr).
fn run_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = cmd()
        .current_dir(dir)
        .args(["--state", "state.db"])
        .args(args)
        .write_stdin("")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apply_refuses_an_empty_configuration_destroy_does_not_need_services() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("deploy-code.yaml"), "~\n").unwrap();
    let (code, err) = run_in(d, &["apply", "--auto-approve"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E002::no_services"), "{err}");
    assert!(!d.join("state.db").exists(), "nothing ran");

    let (code, err) = run_in(d, &["--allow-empty", "apply", "--auto-approve"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = run_in(d, &["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{err}");

    // A configuration that does not load: destroy falls back to one of no
    // services, which must load.
    std::fs::write(d.join("deploy-code.yaml"), "services: [\n").unwrap();
    let (code, err) = run_in(d, &["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{err}");
}

/// A setting that would have no effect is refused, not silently accepted: a
/// drain without a switch, a rollout strategy on a backend it cannot act on,
/// restart settings that nothing applies.
#[test]
fn settings_without_effect_are_refused() {
    for strategy in ["RollingUpdate", "BlueGreen"] {
        let text = format!("deployment:\n  strategy: {strategy}\n{SERVICE}");
        assert!(load(&text).is_ok(), "{strategy} is accepted");
        let text = format!(
            "infrastructure: {{orchestrator: Swarm}}\ndeployment:\n  strategy: {strategy}\nservices:\n  api:\n    image: x:1\n"
        );
        // Swarm rolls its services out itself, by the update policy the
        // strategy gives it (docs/strategies.md).
        assert!(load(&text).is_ok(), "{strategy} on Swarm is accepted");
        let text = format!(
            "deployment:\n  strategy: {strategy}\n{SERVICE}    ports: [{{container_port: 5353, host_port: 5353, protocol: udp}}]\n"
        );
        let (code, message, _) = problem_at(&text, strategy);
        assert!(code.starts_with("E002"), "{code}");
        assert!(message.contains("forwards TCP only"), "{message}");
    }
    let text = format!("deployment:\n  drain_seconds: 17\n{SERVICE}");
    let (code, message, help) = problem_at(&text, "17");
    assert!(code.starts_with("E002"), "{code}");
    assert!(
        message.contains("no effect without a traffic switch"),
        "{message}"
    );
    assert!(help.contains("BlueGreen"), "{help}");
    assert!(
        load(&format!(
            "deployment:\n  strategy: BlueGreen\n  drain_seconds: 17\n{SERVICE}"
        ))
        .is_ok()
    );
    // A container's engine takes the policy, not a back-off.
    let text =
        "services:\n  api:\n    image: x:1\n    restart: {policy: always, initial_delay_ms: 250}\n";
    let (code, message, help) = problem_at(text, "250");
    assert!(code.starts_with("S003"), "{code}");
    assert!(
        message.contains("`restart.initial_delay_ms` has no effect on `api`"),
        "{message}"
    );
    assert!(help.contains("local processes"), "{help}");
    // A back-off without a policy, health-driven restarts without one.
    let text = format!("{SERVICE}    restart: {{max_restarts: 9}}\n");
    let (_, message, help) = problem_at(&text, "9");
    assert!(message.contains("its restart policy is `no`"), "{message}");
    assert!(help.contains("policy: on-failure"), "{help}");
    let text = format!("{SERVICE}    health_check: {{tcp: 80, restart_after_failures: 17}}\n");
    let (_, message, _) = problem_at(&text, "17");
    assert!(
        message.contains("`health_check.restart_after_failures` has no effect on `api`"),
        "{message}"
    );
    // Swarm reschedules its tasks itself; a Docker container runs under a
    // monitor that acts on the failed probes.
    let text = "infrastructure:\n  orchestrator: Swarm\nservices:\n  api:\n    image: x:1\n    restart: always\n    health_check: {tcp: 80, restart_after_failures: 17}\n";
    let (_, message, help) = problem_at(text, "17");
    assert!(
        message.contains("reschedules its tasks itself"),
        "{message}"
    );
    assert!(help.contains("Docker container"), "{help}");
    let text = "services:\n  api:\n    image: x:1\n    restart: {policy: always, max_restarts: 2}\n    health_check: {tcp: 80, restart_after_failures: 17}\n";
    let loaded = load(text).expect("a monitored container");
    let spec = loaded.desired.services.values().next().unwrap();
    assert_eq!(spec.restart_settings.as_ref().unwrap().max_restarts, 2);
    // A one-shot task runs once.
    let text = format!("{SERVICE}    oneshot: true\n    restart: always\n");
    let (_, message, _) = problem_at(&text, "always");
    assert!(message.contains("a one-shot task runs once"), "{message}");
    let text = format!("{SERVICE}    restart: {{policy: 1.5}}\n");
    assert!(load(&text).is_err());
    let text = format!("{SERVICE}    restart: {{policy: on-failure, multiplier: 0.5}}\n");
    assert!(load(&text).is_err());
    // What works is accepted: the policy on a process (its monitor applies
    // it) and on a container (its engine does); `restart: no` says what
    // happens anyway.
    assert!(load(&format!("{SERVICE}    restart: \"no\"\n")).is_ok());
    assert!(load(&format!("{SERVICE}    restart: always\n")).is_ok());
    assert!(load("services:\n  api:\n    image: x:1\n    restart: always\n").is_ok());
}

/// `restart` as a map: every key lowers into the spec, defaults fill the rest.
#[test]
fn restart_settings_lower_into_the_spec() {
    let text = format!(
        "{SERVICE}    restart:\n      policy: on-failure\n      initial_delay_ms: 250\n      max_delay_seconds: 8\n      multiplier: 1.5\n      reset_after_seconds: 20\n      max_restarts: 4\n      window_seconds: 30\n    health_check: {{tcp: 80, restart_after_failures: 3}}\n"
    );
    let loaded = load(&text).unwrap();
    let spec = loaded.desired.services.values().next().unwrap();
    assert_eq!(spec.restart, deploy_code::model::RestartPolicy::OnFailure);
    assert_eq!(
        spec.restart_settings,
        Some(deploy_code::model::RestartSettings {
            initial_delay_ms: 250,
            max_delay_seconds: 8,
            multiplier: 1.5,
            reset_after_seconds: 20,
            max_restarts: 4,
            window_seconds: 30,
        })
    );
    assert_eq!(
        spec.health_check.as_ref().unwrap().restart_after_failures,
        Some(3)
    );
    let plain = load(&format!("{SERVICE}    restart: always\n")).unwrap();
    let spec = plain.desired.services.values().next().unwrap();
    assert_eq!(
        spec.restart_settings,
        Some(deploy_code::model::RestartSettings::default())
    );
    // Without a policy nothing is added: the spec (and its hash) stay as before.
    let none = load(SERVICE).unwrap();
    let spec = none.desired.services.values().next().unwrap();
    assert_eq!(spec.restart_settings, None);
    assert!(!spec.canonical().to_string().contains("restart_settings"));
}

/// The back-off of a restart policy takes the ranges docs/configuration.md
/// gives: a value outside them (the largest `u64` included) is one problem at
/// the value, naming the bound and the value as written, never a failure to
/// read the whole `restart` mapping.
#[test]
fn restart_backoff_out_of_its_range_is_refused_at_the_value() {
    let cases = [
        (
            "max_delay_seconds: 18446744073709551615",
            "18446744073709551615",
            "`services.api.restart.max_delay_seconds` must be at most 86400, found 18446744073709551615",
        ),
        (
            "max_delay_seconds: 9000000000000000000",
            "9000000000000000000",
            "`services.api.restart.max_delay_seconds` must be at most 86400, found 9000000000000000000",
        ),
        (
            "multiplier: 1e308",
            "1e308",
            "`services.api.restart.multiplier` must be at most 100",
        ),
        (
            "initial_delay_ms: 99999999999",
            "99999999999",
            "`services.api.restart.initial_delay_ms` must be at most 3600000, found 99999999999",
        ),
        (
            "reset_after_seconds: 18446744073709551615",
            "18446744073709551615",
            "`services.api.restart.reset_after_seconds` must be at most 31536000",
        ),
        (
            "window_seconds: 0",
            "0",
            "`services.api.restart.window_seconds` must be at least 1, found 0",
        ),
    ];
    for (setting, value, want) in cases {
        let text = format!("{SERVICE}    restart: {{policy: always, {setting}}}\n");
        let (code, message, help) = problem_at(&text, value);
        assert_eq!(code, "E002::invalid_value", "{text}");
        assert!(message.starts_with(want), "`{message}` for\n{text}");
        assert!(!message.contains("untagged"), "{message}");
        assert!(help.contains("use a value of at"), "{help}");
    }
    // The bounds themselves load.
    let text = format!(
        "{SERVICE}    restart: {{policy: always, initial_delay_ms: 3600000, max_delay_seconds: 86400, multiplier: 100, reset_after_seconds: 31536000, window_seconds: 31536000}}\n"
    );
    load(&text).expect("the largest back-off in range loads");
}

/// An empty `deployment.canary.steps` is reported at the empty list, on its
/// own line, not at the top of the file.
#[test]
fn empty_canary_steps_are_reported_at_the_list() {
    let text = "deployment:\n  strategy: Canary\n  canary:\n    steps: []\nservices:\n  api:\n    command: x\n    ports: [{container_port: 8080, host_port: 18080}]\n";
    let err = load(text).expect_err("empty steps are refused");
    let p = err
        .problems
        .iter()
        .find(|p| p.to_string().contains("`deployment.canary.steps` is empty"))
        .unwrap_or_else(|| panic!("{}", rendered(&err)));
    let label = p.labels().and_then(|mut l| l.next()).unwrap();
    assert_eq!(
        (label.offset(), label.len()),
        (text.find("[]").unwrap(), 2),
        "{}",
        rendered(&err)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-code.yaml");
    std::fs::write(&path, text).unwrap();
    let out = cargo_bin_cmd!("deploy-code")
        .env("NO_COLOR", "1")
        .arg("-c")
        .arg(&path)
        .args(["validate", "--format", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| {
            d["message"]
                .as_str()
                .unwrap_or("")
                .contains("steps` is empty")
        })
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(4), Some(12)),
        "{v}"
    );
}

/// A hook's retries and timeout have documented maxima, and together they
/// must fit the most a hook may take: a webhook that never answers can no
/// longer hold a run (and its lock) for ever.
#[test]
fn hook_bounds_are_refused_at_the_value() {
    let hook = |keys: &str| {
        format!("{SERVICE}hooks:\n  post_apply:\n    - {{url: \"http://127.0.0.1:9/\"{keys}}}\n")
    };
    let (code, message, help) = problem_at(&hook(", retries: 4294967295"), "4294967295");
    assert!(code.starts_with("E002"), "{code}");
    assert!(
        message.starts_with("`hooks.post_apply.0.retries` must be at most 10, found 4294967295"),
        "{message}"
    );
    assert!(help.contains("at most 10"), "{help}");
    let (_, message, _) = problem_at(&hook(", timeout_seconds: 301"), "301");
    assert!(
        message.starts_with("`hooks.post_apply.0.timeout_seconds` must be at most 300"),
        "{message}"
    );
    // Each in range, together too long: said at the hook, with the sum.
    let text = hook(", timeout_seconds: 60, retries: 10");
    let (code, message, help) = problem_at(
        &text,
        "{url: \"http://127.0.0.1:9/\", timeout_seconds: 60, retries: 10}",
    );
    assert!(code.starts_with("E002"), "{code}");
    assert!(
        message.contains("may take 697.5 s: 11 attempts of up to 60 s and 37.5 s of pauses")
            && message.contains("600 s"),
        "{message}"
    );
    assert!(
        help.contains("timeout_seconds") && help.contains("retries"),
        "{help}"
    );
    // The largest that fit load.
    assert!(load(&hook(", timeout_seconds: 50, retries: 10")).is_ok());
    assert!(load(&hook(", timeout_seconds: 300, retries: 0")).is_ok());
    let program = format!(
        "{SERVICE}hooks:\n  pre_apply:\n    - {{command: [\"true\"], timeout_seconds: 300}}\n"
    );
    assert!(load(&program).is_ok());
}

/// `inherit_env` (a service's, and `deployment`'s for all) lowers into the
/// spec sorted and once each; what is not a name or pattern, or names only
/// deploy-code's own variables, is refused at the entry.
#[test]
fn inherit_env_lowers_into_the_spec_and_refuses_what_it_cannot_pass() {
    let text = format!(
        "deployment:\n  inherit_env: [B_TOKEN, \"AWS_*\"]\n{SERVICE}    inherit_env: [\"AWS_*\", A]\n  other:\n    command: y\n"
    );
    let loaded = load(&text).expect("loads");
    let specs = &loaded.desired.services;
    let api = specs.values().find(|s| s.name.as_str() == "api").unwrap();
    let other = specs.values().find(|s| s.name.as_str() == "other").unwrap();
    assert_eq!(api.inherit_env, ["A", "AWS_*", "B_TOKEN"]);
    assert_eq!(other.inherit_env, ["AWS_*", "B_TOKEN"]);
    // A spec without the key keeps the hash it had before the key existed.
    let plain = load(SERVICE).unwrap();
    let spec = plain.desired.services.values().next().unwrap();
    assert!(!spec.canonical().to_string().contains("inherit_env"));
    assert_ne!(
        spec.spec_hash(),
        api.spec_hash(),
        "the list is part of the spec"
    );

    let (code, message, help) =
        problem_at(&format!("{SERVICE}    inherit_env: [AWS-KEY]\n"), "AWS-KEY");
    assert!(code.starts_with("E002"), "{code}");
    assert!(
        message.contains("`services.api.inherit_env[0]` `AWS-KEY` is not a variable name"),
        "{message}"
    );
    assert!(help.contains("AWS_*"), "{help}");
    let (_, message, _) = problem_at(
        &format!("deployment:\n  inherit_env: [PATH, DEPLOY_CODE_STATE_KEY]\n{SERVICE}"),
        "DEPLOY_CODE_STATE_KEY",
    );
    assert!(
        message.contains("`deployment.inherit_env[1]` `DEPLOY_CODE_STATE_KEY` has no effect"),
        "{message}"
    );
    let (_, message, _) = problem_at(&format!("{SERVICE}    inherit_env: [9LIVES]\n"), "9LIVES");
    assert!(message.contains("not a variable name"), "{message}");
}
