//! Every example and every configuration from the design documents validates.

use super::*;

fn platform_env() -> Inputs {
    inputs(&[
        ("POSTGRES_PASSWORD", "pg-canary-3141"),
        ("JWT_SECRET", "jwt-canary-2718-0123456789abcdef0123"),
        ("OPENAI_API_KEY", "sk-openai-canary"),
        ("ANTHROPIC_API_KEY", "sk-anthropic-canary"),
        ("GOOGLE_API_KEY", "google-canary"),
        ("DATABASE_URL", "postgres://localhost/db"),
        ("API_KEY", "api-key-canary"),
    ])
}

fn load_file(path: &Path, inputs: &Inputs) -> LoadedConfig {
    load_file_with(path, inputs, false)
}

fn load_file_with(path: &Path, inputs: &Inputs, allow_empty: bool) -> LoadedConfig {
    let text = std::fs::read_to_string(path).unwrap();
    match config::load_text_with(&text, path, inputs, allow_empty) {
        Ok(l) => l,
        Err(e) => panic!("{} does not validate:\n{}", path.display(), rendered(&e)),
    }
}

#[test]
fn every_example_validates() {
    let mut seen = 0;
    for dir in std::fs::read_dir("examples").unwrap() {
        let path = dir.unwrap().path().join("deploy-code.yaml");
        if path.exists() {
            load_file(&path, &platform_env());
            seen += 1;
        }
    }
    assert!(seen >= 2, "examples missing");
}

/// A spec's hash is the SHA-256 of its canonical JSON (streamed, not built
/// as a value first): the hashes recorded by earlier versions stay valid.
#[test]
fn spec_hashes_are_the_digest_of_the_canonical_json() {
    use sha2::{Digest, Sha256};
    let loaded = load_file(
        Path::new("examples/platform/deploy-code.yaml"),
        &platform_env(),
    );
    assert!(loaded.desired.services.len() > 5);
    for spec in loaded.desired.services.values() {
        let bytes = serde_json::to_vec(&spec.canonical()).unwrap();
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        assert_eq!(spec.spec_hash(), expected, "{}", spec.name);
    }
}

#[test]
fn every_seed_configuration_validates() {
    let mut seen = 0;
    for entry in std::fs::read_dir("tests/fixtures/seeds").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            // Some sections of the design documents have settings only.
            load_file_with(&path, &platform_env(), true);
            seen += 1;
        }
    }
    assert!(seen >= 10, "only {seen} seed files");
}

#[test]
fn the_quickstart_runs_three_phases_and_a_task() {
    let l = load_file(
        Path::new("examples/quickstart/deploy-code.yaml"),
        &inputs(&[]),
    );
    let s = &l.desired.services;
    assert_eq!(s.len(), 4);
    assert_eq!(s["migrate"].workload, deploy_code::model::Workload::Task);
    assert_eq!(s["web"].dependencies.len(), 1);
    let api = &s["api"];
    assert_eq!(api.backend, deploy_code::model::BackendKind::Process);
    assert_eq!(
        api.dependencies
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>(),
        ["cache", "migrate"]
    );
    match &api.health_check.as_ref().unwrap().probe {
        deploy_code::model::Probe::Http { url } => assert_eq!(url, "http://127.0.0.1:18082/"),
        other => panic!("{other:?}"),
    }
    assert_eq!(api.ports[0].host_port, Some(18082));
}

#[test]
fn the_platform_has_the_seed_services_and_a_gpu() {
    let l = load_file(
        Path::new("examples/platform/deploy-code.yaml"),
        &platform_env(),
    );
    let s = &l.desired.services;
    for name in [
        "postgresql",
        "redis",
        "auth_service",
        "circle_of_experts",
        "api_gateway",
    ] {
        assert!(s.contains_key(name), "{name} missing");
    }
    let coe = &s["circle_of_experts"];
    assert_eq!(coe.resources.gpu_count, 1);
    assert_eq!(coe.resources.gpu_memory_mb, Some(16384));
    assert_eq!(coe.backend, deploy_code::model::BackendKind::Docker);
    assert_eq!(
        s.keys().filter(|k| k.as_str().starts_with("mcp_")).count(),
        27
    );
    assert!(coe.env["OPENAI_API_KEY"].is_sensitive());
    assert!(
        s["auth_service"].env["DATABASE_URL"].is_sensitive(),
        "a URL holding a secret is sensitive"
    );
}
