use deploy_code::render::plan as view;

use super::common::*;

const CANARY: &str = "canary-plaintext-4f1d";

/// A plan with every action, a changed secret, a GPU and a capacity problem.
fn sample() -> deploy_code::plan::Plan {
    let mut state: Vec<_> = platform().into_iter().map(record).collect();
    state.push(record(spec("legacy", &["redis"])));
    let auth_before = with_secret(
        spec("auth_service", &["postgresql", "redis"]),
        "API_KEY",
        "old-secret",
    );
    state[2] = record(with_port(auth_before, 8001));
    let mut specs = platform();
    specs[2] = with_port(
        with_secret(
            spec("auth_service", &["postgresql", "redis"]),
            "API_KEY",
            CANARY,
        ),
        8001,
    );
    specs[3].resources.gpu_count = 1;
    specs[3].resources.gpu_memory_mb = Some(10240);
    specs[5].replicas = 2;
    specs.push(spec("search", &["postgresql"]));
    let d = desired(specs);
    let mut h = host(4.0, 4096, 100);
    h.gpus = vec![gpu(0, "NVIDIA L4", 24 * 1024)];
    ok(&d, &snapshot(state), &inventory(vec![h]))
}

#[test]
fn human_view() {
    let p = sample();
    let text = view::human(&p, false);
    assert!(text.starts_with("Plan: 1 to create, 3 to replace, 0 to update, 1 to destroy."));
    assert!(!text.contains('\u{1b}'), "no colour");
    insta::assert_snapshot!(text);
}

#[test]
fn markdown_view() {
    insta::assert_snapshot!(view::markdown(&sample()));
}

#[test]
fn json_view() {
    insta::assert_snapshot!(view::json(&sample()));
}

#[test]
fn secrets_never_show_neither_plaintext_nor_digest() {
    let p = sample();
    for text in [view::human(&p, true), view::markdown(&p), view::json(&p)] {
        assert!(!text.contains(CANARY));
        assert!(!text.contains("old-secret"));
        assert!(!text.contains("hmac-sha256"), "{text}");
        assert!(text.contains("(sensitive, changed)"));
    }
}

#[test]
fn the_json_document_validates_against_the_committed_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/plan.schema.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = view::json_schema();
    if committed != generated {
        if std::env::var_os("DEPLOY_CODE_WRITE_SCHEMAS").is_some() {
            std::fs::write(path, &generated).unwrap();
        } else {
            panic!("schemas/plan.schema.json is out of date: run with DEPLOY_CODE_WRITE_SCHEMAS=1");
        }
    }
    let schema: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for p in [sample(), ok(&desired(vec![]), &snapshot(vec![]), &big())] {
        let doc: serde_json::Value = serde_json::from_str(&view::json(&p)).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
    // And a document that breaks it is caught.
    let bad = serde_json::json!({"format_version": "one"});
    assert!(!validator.is_valid(&bad));
}
