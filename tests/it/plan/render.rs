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

/// The plan of a replace of `web` (4 replicas behind the traffic switch on
/// port 18400) under `deployment`.
fn replaced_behind_switch(
    deployment: deploy_code::model::DeploymentSettings,
) -> deploy_code::plan::Plan {
    let mut before = with_port(spec("web", &[]), 18400);
    before.behind_switch = true;
    before.replicas = 4;
    let mut after = before.clone();
    after.env.insert(
        "VERSION".into(),
        deploy_code::model::Text::plain("v2".to_owned()),
    );
    let mut d = desired(vec![after]);
    d.settings.deployment = deployment;
    let p = ok(&d, &snapshot(vec![record(before)]), &big());
    assert_eq!(action(&p, "web"), "replace", "{}", view::human(&p, false));
    p
}

/// The rollout words of `web` in the human, JSON and Markdown views, each
/// checked to hold `words`.
fn says_everywhere(p: &deploy_code::plan::Plan, words: &str) {
    let human = view::human(p, false);
    let line = |text: &str, head: &str| -> String {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(head).map(str::to_owned))
            .unwrap_or_default()
    };
    assert!(line(&human, "rollout: ").contains(words), "{human}");
    let doc: serde_json::Value = serde_json::from_str(&view::json(p)).unwrap();
    let rollout = doc["changes"][0]["rollout"].as_str().unwrap_or_default();
    assert!(rollout.contains(words), "{doc:#}");
    assert_eq!(line(&human, "rollout: "), rollout, "the same words");
    let md = view::markdown(p);
    assert!(line(&md, "- `web`: ").contains(words), "{md}");
}

#[test]
fn the_rollout_words_name_the_surge_the_unavailable_and_the_keep_window() {
    use deploy_code::model::{BlueGreenSettings, DeploymentSettings, RollingSettings, Strategy};
    let rolling = |max_surge, max_unavailable| DeploymentSettings {
        strategy: Strategy::RollingUpdate,
        rolling: RollingSettings {
            max_surge,
            max_unavailable,
        },
        ..DeploymentSettings::default()
    };
    // The defaults are said too.
    says_everywhere(
        &replaced_behind_switch(rolling(1, 0)),
        "rolling update, 4 replicas, at most 1 extra and 0 unavailable at a time, behind the traffic switch on port 18400",
    );
    let p = replaced_behind_switch(rolling(2, 1));
    says_everywhere(
        &p,
        "rolling update, 4 replicas, at most 2 extra and 1 unavailable at a time",
    );
    says_everywhere(&p, "at least 3 of 4 serving throughout");
    assert!(!view::human(&p, false).contains("no downtime"));
    // Every replica unavailable at once: the plan says downtime.
    says_everywhere(
        &replaced_behind_switch(rolling(0, 4)),
        "at most 0 extra and 4 unavailable at a time, behind the traffic switch on port 18400: up to 4 old one(s) drain and stop before their successors start, the others once theirs pass their gates; downtime while the new instances start",
    );

    let blue_green = |keep_seconds| DeploymentSettings {
        strategy: Strategy::BlueGreen,
        blue_green: BlueGreenSettings { keep_seconds },
        ..DeploymentSettings::default()
    };
    says_everywhere(
        &replaced_behind_switch(blue_green(60)),
        "moves every new connection to them; no downtime; old set kept 60 s for rollback",
    );
    let p = replaced_behind_switch(blue_green(0));
    says_everywhere(&p, "blue-green: 4 new instance(s)");
    assert!(!view::human(&p, false).contains("kept"));
}
