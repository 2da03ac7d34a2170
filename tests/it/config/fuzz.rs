//! The loader never panics and stays bounded on arbitrary and mutated input.

use proptest::prelude::*;

use super::*;

const BASE: &str = include_str!("../../../examples/quickstart/deploy-code.yaml");

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = load(&text);
    }

    #[test]
    fn mutated_yaml_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..6, any::<char>()), 1..12)
    ) {
        let mut text: Vec<char> = BASE.chars().collect();
        for (at, op, c) in edits {
            if text.is_empty() { break; }
            let i = at.index(text.len());
            let pick = ['{', '}', '[', ']', ':', '-', '\n', ' ', '"', '\'', '&', '*', '%', '#', '|', '>'];
            match op {
                0 => { text.remove(i); }
                1 => text.insert(i, c),
                2 => text.insert(i, pick[(c as usize) % pick.len()]),
                3 => text[i] = pick[(c as usize) % pick.len()],
                4 => { let end = (i + 8).min(text.len()); text.drain(i..end); }
                _ => { let dup: Vec<char> = text[i..(i + 20).min(text.len())].to_vec(); for (k, d) in dup.into_iter().enumerate() { text.insert(i + k, d); } }
            }
        }
        let s: String = text.into_iter().collect();
        let _ = load(&s);
    }
}

#[test]
fn deep_nesting_is_refused_not_crashed() {
    for doc in [
        "[".repeat(100_000),
        "a:\n b:\n".to_owned() + &"{x: ".repeat(50_000),
    ] {
        let err = load(&doc).unwrap_err();
        assert!(!err.codes().is_empty());
    }
}

#[test]
fn alias_bombs_are_refused() {
    let mut doc = String::from("x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n");
    let mut prev = 'a';
    for c in 'b'..='k' {
        doc.push_str(&format!("{c}{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        prev = c;
    }
    let err = load(&doc).unwrap_err();
    assert_eq!(err.codes(), vec!["E002::too_large"]);
}

#[test]
fn runaway_templates_are_stopped() {
    let doc = "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}x{% endfor %}{% endfor %}{% endfor %}";
    let err = load(doc).unwrap_err();
    assert_eq!(err.codes(), vec!["E002::too_large"]);
}

#[test]
fn a_huge_file_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-code.yaml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(100 * 1024 * 1024).unwrap();
    let err = config::load(&config::LoadOptions {
        path,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.codes(), vec!["E002::too_large"]);
}

#[test]
fn invalid_utf8_is_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-code.yaml");
    std::fs::write(&path, b"services:\n  a:\n    command: \xff\xfe\n").unwrap();
    let err = config::load(&config::LoadOptions {
        path,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.codes(), vec!["E002::yaml_syntax"]);
}

#[test]
fn thousands_of_problems_are_capped() {
    let mut doc = String::from("services:\n");
    for i in 0..5000 {
        doc.push_str(&format!("  s{i}:\n    comand: x\n"));
    }
    let err = load(&doc).unwrap_err();
    let codes = err.codes();
    assert_eq!(codes.len(), config::MAX_PROBLEMS + 1);
    assert_eq!(codes.last().unwrap(), "E002::too_many_problems");
    let json = deploy_code::render::diagnostics_json(&err);
    assert!(json.contains("4800 more problems"), "{json}");
}
