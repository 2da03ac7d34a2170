//! The checked-in JSON Schema is generated from the Rust types.

use deploy_code::config::schema::{json_schema, json_schema_text};

const PATH: &str = "schemas/deploy-code.schema.json";

#[test]
fn the_checked_in_schema_is_up_to_date() {
    let want = json_schema_text();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(PATH, &want).unwrap();
    }
    let have = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(
        have == want,
        "{PATH} is out of date: run `UPDATE_SCHEMAS=1 cargo test --test config schema`"
    );
}

#[test]
fn the_examples_satisfy_the_schema_as_a_standard_validator_reads_it() {
    let schema = json_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for path in [
        "tests/fixtures/seeds/full_format.yaml",
        "tests/fixtures/seeds/service_definition.yaml",
    ] {
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{path}: {errors:?}");
    }
    let bad: serde_json::Value = serde_json::json!({"services": {"a": {"comand": "x"}}});
    assert!(!validator.is_valid(&bad));
}
