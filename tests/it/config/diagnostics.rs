//! One snapshot per kind of problem: the rendered diagnostic, colour off.

use super::*;

fn snap(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => rendered(&e),
    }
}

#[test]
fn yaml_syntax_error() {
    insta::assert_snapshot!(snap(
        "services:\n  api:\n    command: \"python3\n    args: [1, 2\n"
    ));
}

#[test]
fn wrong_type() {
    insta::assert_snapshot!(snap(
        "services:\n  api:\n    command: python3\n    replicas: \"3\"\n"
    ));
}

#[test]
fn unknown_key_with_suggestion() {
    insta::assert_snapshot!(snap("services:\n  api:\n    comand: python3\n"));
}

#[test]
fn unknown_dependency_with_suggestion() {
    insta::assert_snapshot!(snap(
        "services:\n  database:\n    command: postgres\n  api:\n    command: python3\n    dependencies: [databse]\n"
    ));
}

#[test]
fn dependency_cycle_names_the_whole_cycle() {
    let text = "services:\n  a:\n    command: x\n    dependencies: [b]\n  b:\n    command: x\n    dependencies: [c]\n  c:\n    command: x\n    dependencies: [a]\n";
    let out = snap(text);
    assert!(out.contains("a -> b -> c -> a"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn dependency_on_a_disabled_service() {
    insta::assert_snapshot!(snap(
        "services:\n  db:\n    enabled: false\n    command: postgres\n  api:\n    command: x\n    dependencies: [db]\n"
    ));
}

#[test]
fn host_port_claimed_twice() {
    insta::assert_snapshot!(snap(
        "services:\n  a:\n    command: x\n    ports:\n      - container_port: 8080\n  b:\n    command: y\n    ports:\n      - container_port: 9000\n        host_port: 8080\n"
    ));
}

#[test]
fn zero_and_negative_resources() {
    insta::assert_snapshot!(snap(
        "services:\n  a:\n    command: x\n    resources:\n      cpu_cores: 0\n      memory_mb: -512\n"
    ));
}

#[test]
fn health_check_without_a_probe() {
    insta::assert_snapshot!(snap(
        "services:\n  a:\n    command: x\n    health_check:\n      interval_seconds: 5\n"
    ));
}

#[test]
fn invalid_service_name() {
    insta::assert_snapshot!(snap("services:\n  Api Server:\n    command: x\n"));
}

#[test]
fn duplicate_service() {
    insta::assert_snapshot!(snap(
        "services:\n  api:\n    command: x\n  api:\n    command: y\n"
    ));
}

#[test]
fn undefined_template_variable_points_into_the_template() {
    insta::assert_snapshot!(snap(
        "services:\n  api:\n    command: x\n    replicas: {{ replicas }}\n"
    ));
}

#[test]
fn template_syntax_error() {
    insta::assert_snapshot!(snap(
        "services:\n{% for i in range(3) %}\n  s{{ i }}:\n    command: x\n"
    ));
}

#[test]
fn problems_in_the_rendered_text_say_so() {
    let out =
        snap("{% set n = 2 %}\nservices:\n  api:\n    command: x\n    replicas: \"{{ n }}\"\n");
    assert!(out.contains("deploy-code.yaml (rendered)"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn missing_config_file_is_e001() {
    let err = config::load(&config::LoadOptions {
        path: "/nonexistent/deploy-code.yaml".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.codes(), vec!["E001::not_found"]);
    use miette::Diagnostic;
    assert_eq!(err.code().unwrap().to_string(), "deploy_code::E001");
    insta::assert_snapshot!(rendered(&err));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "\
deployment:
  strategy: Sequental
services:
  api:
    command: x
    imgae: foo
    dependencies: [web, nope]
    ports: [{container_port: 8080}]
  web:
    command: y
    dependencies: [api]
    ports: [{container_port: 8080}]
    resources: {memory_mb: 0}
";
    let codes = codes(text);
    for want in [
        "E002::invalid_value",
        "E002::unknown_key",
        "E007::unknown_dependency",
        "E002::dependency_cycle",
        "S004::port_conflict",
        "S003::non_positive_resource",
    ] {
        assert!(
            codes.iter().any(|c| c == want),
            "{want} missing from {codes:?}"
        );
    }
}

#[test]
fn the_invalid_config_is_e002() {
    use miette::Diagnostic;
    let err = load("services:\n  a:\n    comand: x\n").unwrap_err();
    assert_eq!(err.code().unwrap().to_string(), "deploy_code::E002");
}

#[test]
fn a_directory_is_unreadable_not_missing() {
    let dir = tempfile::tempdir().unwrap();
    let err = config::load(&config::LoadOptions {
        path: dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.codes(), vec!["E001::unreadable"]);
}

#[test]
fn a_host_network_container_cannot_move_its_port() {
    insta::assert_snapshot!(snap(
        "infrastructure:\n  container_runtime: Docker\n  network:\n    mode: Host\nservices:\n  web:\n    image: nginx:1\n    ports:\n      - container_port: 80\n        host_port: 8080\n"
    ));
}

#[test]
fn network_keys_that_contradict_each_other() {
    let cases = [
        // Overlay needs Swarm.
        (
            "container_runtime: Docker\n  network:\n    mode: Overlay\n",
            "`infrastructure.network.mode: Overlay` is not supported",
        ),
        // Swarm services live on the overlay network.
        (
            "orchestrator: Swarm\n  network:\n    mode: Host\n",
            "`infrastructure.network.mode: Host` is not supported",
        ),
        // The host network has no subnet, name or resolver of its own.
        (
            "container_runtime: Docker\n  network:\n    mode: Host\n    cidr: 10.9.0.0/24\n",
            "`infrastructure.network.cidr` has no meaning with `mode: Host`",
        ),
        (
            "container_runtime: Docker\n  network:\n    mode: Host\n    name: shared\n",
            "`infrastructure.network.name` has no meaning with `mode: Host`",
        ),
        (
            "container_runtime: Docker\n  network:\n    mode: Host\n    dns_servers: [1.1.1.1]\n",
            "`infrastructure.network.dns_servers` has no meaning with `mode: Host`",
        ),
        // An existing network keeps its own subnet.
        (
            "container_runtime: Docker\n  network:\n    name: shared\n    cidr: 10.9.0.0/24\n",
            "cannot be set for the existing network `shared`",
        ),
        (
            "container_runtime: Docker\n  network:\n    name: host\n",
            "`host` cannot be used as `infrastructure.network.name`",
        ),
    ];
    for (infra, want) in cases {
        let text = format!("infrastructure:\n  {infra}services:\n  web:\n    image: nginx:1\n");
        let out = snap(&text);
        assert!(out.contains(want), "{want}\nnot in\n{out}");
        assert!(out.contains("E002::invalid_value"), "{out}");
    }
    // Two containers on the host network cannot both take port 80.
    let text = "infrastructure:\n  container_runtime: Docker\n  network:\n    mode: Host\nservices:\n  a:\n    image: nginx:1\n    ports: [{container_port: 80}]\n  b:\n    image: nginx:1\n    ports: [{container_port: 80}]\n";
    assert!(codes(text).iter().any(|c| c == "S004::port_conflict"));
    // The same on bridge networks is fine: the host ports are allocated.
    let text = text.replace("    mode: Host\n", "    name: shared\n");
    let loaded = load(&text).expect("valid");
    assert_eq!(
        loaded.desired.settings.network.name.as_deref(),
        Some("shared")
    );
    assert!(
        loaded
            .desired
            .services
            .values()
            .all(|s| s.ports[0].host_port.is_none())
    );
}

/// `security:` is read by `serve`: what would change nothing is refused,
/// each with its span.
#[test]
fn security_keys_without_effect_are_refused() {
    let text = "security:\n  cert_path: server.crt\n  auth:\n    method: OAuth2\n    token_expiry_seconds: 60\n  rbac:\n    enabled: true\n    roles:\n      - name: deployer\n        permissions: [deploy, stauts]\n      - superuser\nservices:\n  api:\n    command: x\n";
    let out = snap(text);
    for want in [
        "`security.cert_path` has no effect: `tls_enabled` is not true",
        "`security.auth.method: OAuth2` is not supported",
        "`security.auth.token_expiry_seconds` has no effect: `auth.enabled` is not true",
        "`security.rbac` is enabled but `security.auth` is not",
        "`stauts` is not a permission (role `deployer`)",
        "did you mean `status`?",
        "`superuser` is not a default role",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    insta::assert_snapshot!(out);
}

#[test]
fn a_jwt_secret_in_plain_text_is_refused() {
    let out = snap(
        "security:\n  auth: {enabled: true, method: JWT, jwt_secret: hunter2-hunter2}\nservices:\n  api:\n    command: x\n",
    );
    assert!(out.contains("written in plain text"), "{out}");
    assert!(out.contains("secret('JWT_SECRET')"), "{out}");
}

#[test]
fn the_exact_security_of_the_remote_control_loads() {
    let l = load_with(
        "security: {auth: {enabled: true, method: JWT, jwt_secret: \"{{ secret('JWT_SECRET') }}\"}, rbac: {enabled: true}}\nservices:\n  api:\n    command: x\n",
        &inputs(&[("JWT_SECRET", "jwt-canary-0123456789abcdef0123456789")]),
    )
    .unwrap();
    let sec = &l.desired.settings.security;
    let auth = sec.auth.as_ref().unwrap();
    match auth.key.as_ref().unwrap() {
        deploy_code::model::JwtKey::Hs256(t) => {
            assert!(t.is_sensitive());
            assert_eq!(t.expose(), Some("jwt-canary-0123456789abcdef0123456789"));
        }
        other => panic!("{other:?}"),
    }
    let roles = sec.rbac.as_ref().unwrap();
    assert_eq!(
        roles.keys().collect::<Vec<_>>(),
        ["admin", "operator", "viewer"]
    );
    assert!(roles["operator"].contains("apply"));
    assert!(!roles["viewer"].contains("apply"));
    assert!(
        !l.redacted_render.contains("jwt-canary"),
        "{}",
        l.redacted_render
    );
}

#[test]
fn hooks_are_a_program_or_a_webhook() {
    let out = snap(
        "hooks:\n  pre_apply:\n    - command: [./check.sh]\n      retries: 3\n  post_apply:\n    - url: ftp://example.com/x\n    - {}\n    - {command: [a], url: \"http://x/\"}\nservices:\n  api:\n    command: x\n",
    );
    for want in [
        "`hooks.pre_apply[0].retries` has no effect on a command",
        "`hooks.post_apply[0].url` `ftp://example.com/x` is not an http(s) URL",
        "`hooks.post_apply[1]` has neither a `command` nor a `url`",
        "`hooks.post_apply[2]` has both `command` and `url`",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}
