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
        "{PATH} is out of date: run `UPDATE_SCHEMAS=1 cargo test --test it config::schema`"
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

const DOC: &str = "docs/configuration.md";
const BEGIN: &str = "<!-- BEGIN GENERATED REFERENCE -->\n";
const END: &str = "<!-- END GENERATED REFERENCE -->";

#[test]
fn the_key_reference_in_the_docs_is_up_to_date() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("{DOC} lacks the generated-reference markers");
    };
    let want = deploy_code::config::schema::reference_markdown();
    let have = &doc[b + BEGIN.len()..e];
    if std::env::var_os("UPDATE_SCHEMAS").is_some() && have != want {
        let new = format!("{}{BEGIN}{want}{}", &doc[..b], &doc[e..]);
        std::fs::write(DOC, new).unwrap();
        return;
    }
    assert!(
        have == want,
        "the reference in {DOC} is out of date: run `UPDATE_SCHEMAS=1 cargo test --test it config::schema`"
    );
}

#[test]
fn every_error_code_is_documented() {
    let doc = std::fs::read_to_string("docs/errors.md").unwrap();
    for code in deploy_code::error::Code::ALL {
        let heading = format!("## {} {}", code.as_str(), code.name());
        assert!(doc.contains(&heading), "docs/errors.md lacks `{heading}`");
    }
    for kind in deploy_code::config::diag::Kind::ALL {
        let slug = format!("{}::{}", kind.code(), kind.slug());
        assert!(doc.contains(&slug), "docs/errors.md lacks `{slug}`");
    }
}

/// An environment value reads as serde's untagged derive reads it: the same
/// variant for every kind of value, the same message for what none accepts.
#[test]
fn an_env_value_reads_as_the_untagged_derive_reads_it() {
    use deploy_code::config::schema::EnvValue;

    // The same name, for the same message.
    mod derived {
        #[derive(Debug, serde::Deserialize)]
        #[serde(untagged)]
        pub enum EnvValue {
            Bool(bool),
            Int(i64),
            Float(f64),
            Str(String),
        }
    }
    use derived::EnvValue as Derived;

    fn same(a: &EnvValue, b: &Derived) -> bool {
        match (a, b) {
            (EnvValue::Bool(x), Derived::Bool(y)) => x == y,
            (EnvValue::Int(x), Derived::Int(y)) => x == y,
            (EnvValue::Float(x), Derived::Float(y)) => x.to_bits() == y.to_bits(),
            (EnvValue::Str(x), Derived::Str(y)) => x == y,
            _ => false,
        }
    }

    let values = [
        "true",
        "false",
        "0",
        "-1",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "-9223372036854775808",
        "1.5",
        "-0.0",
        "1e300",
        "\"prod\"",
        "\"true\"",
        "\"1\"",
        "\"\"",
        "null",
        "[]",
        "[1]",
        "{}",
        "{\"a\": 1}",
    ];
    for text in values {
        let ours = serde_json::from_str::<EnvValue>(text);
        let derived = serde_json::from_str::<Derived>(text);
        match (&ours, &derived) {
            (Ok(a), Ok(b)) => assert!(same(a, b), "{text}: {a:?} against {b:?}"),
            // Where the text is read decides the position in the message.
            (Err(a), Err(b)) => assert_eq!(
                a.to_string().split(" at line").next(),
                b.to_string().split(" at line").next(),
                "{text}"
            ),
            _ => panic!("{text}: {ours:?} against {derived:?}"),
        }
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let ours = serde_json::from_value::<EnvValue>(value.clone());
        let derived = serde_json::from_value::<Derived>(value);
        match (&ours, &derived) {
            (Ok(a), Ok(b)) => assert!(same(a, b), "{text}: {a:?} against {b:?}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
            _ => panic!("{text}: {ours:?} against {derived:?}"),
        }
    }
}
