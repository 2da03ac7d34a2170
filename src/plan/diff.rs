//! Field-level diffs of two specs, with every secret hidden.
//!
//! A spec is shown as its canonical form rendered as YAML, one field per line,
//! and the two renderings are diffed line by line with `similar`. Before that,
//! every sensitive value (a `{"sensitive": "hmac-sha256:…"}` object) is replaced:
//! by `(sensitive)` where it is unchanged or new, and on the new side by
//! `(sensitive, changed)` where its digest differs from the old one. Neither the
//! plaintext nor the digest ever reaches the output.

use serde_json::{Map, Value};
use similar::{ChangeTag, TextDiff};

use crate::model::ServiceSpec;

/// How a hidden value is shown.
pub(crate) const SENSITIVE: &str = "(sensitive)";
/// How a hidden value whose digest changed is shown on the new side.
pub(crate) const SENSITIVE_CHANGED: &str = "(sensitive, changed)";

/// True for the wire form of a sensitive value: `{"sensitive": "<digest>"}`.
pub(crate) fn is_sensitive_map(m: &Map<String, Value>) -> bool {
    m.len() == 1 && m.get("sensitive").is_some_and(Value::is_string)
}

/// The canonical form of a spec with every sensitive value shown as `(sensitive)`.
pub fn redacted(spec: &ServiceSpec) -> Value {
    redact(&spec.canonical(), None, false)
}

/// Both canonical forms, redacted; a secret whose digest differs is marked
/// `(sensitive, changed)` on the new side.
pub(crate) fn redacted_pair(before: &ServiceSpec, after: &ServiceSpec) -> (Value, Value) {
    let (b, a) = (before.canonical(), after.canonical());
    (redact(&b, None, false), redact(&a, Some(&b), true))
}

fn redact(v: &Value, other: Option<&Value>, mark_changes: bool) -> Value {
    match v {
        Value::Object(m) if is_sensitive_map(m) => {
            let changed = mark_changes && other.is_some_and(|o| o != v);
            Value::String(
                if changed {
                    SENSITIVE_CHANGED
                } else {
                    SENSITIVE
                }
                .to_owned(),
            )
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let o = other.and_then(|o| o.get(k));
                    (k.clone(), redact(x, o, mark_changes && other.is_some()))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let o = other.and_then(|o| o.get(i));
                    redact(x, o, mark_changes && other.is_some())
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// One line of a field diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiffLine {
    /// `+` added, `-` removed, ` ` context, `…` skipped unchanged lines.
    pub tag: char,
    pub text: String,
}

/// Empty lists and maps say nothing to a reader; they are left out of the view.
fn prune(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| match x {
                    Value::Object(o) => !o.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    _ => true,
                })
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn yaml_lines(v: &Value) -> String {
    let pruned = prune(v);
    if let Some(s) = fast_yaml(&pruned) {
        return s;
    }
    let mut s = serde_yaml::to_string(&pruned).unwrap_or_default();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The block YAML `serde_yaml` writes for a spec, written directly: plans of
/// thousands of services render every created spec, and the emitter of
/// `serde_yaml` dominated their time. Only the shapes a spec has (maps of
/// scalars, lists and maps, lists of scalars and maps) and scalars whose
/// style is certain are written here; anything else returns `None`, and the
/// caller uses `serde_yaml`. A test holds the two to the same bytes.
fn fast_yaml(v: &Value) -> Option<String> {
    let Value::Object(m) = v else {
        return None;
    };
    let mut out = String::with_capacity(256);
    if m.is_empty() {
        return None;
    }
    fast_map(m, 0, false, &mut out)?;
    Some(out)
}

/// [`yaml_lines`] of a spec's canonical form that holds no sensitive value
/// (so that redacting changes nothing), pruned while it is written instead
/// of through copies; `None` where the direct emitter declines.
fn fast_yaml_pruned(v: &Value) -> Option<String> {
    let Value::Object(m) = v else {
        return None;
    };
    let mut out = String::with_capacity(256);
    fast_map(m, 0, true, &mut out)?;
    (!out.is_empty()).then_some(out)
}

/// `prune`: leave out the entries whose value is an empty list or map.
fn fast_map(m: &Map<String, Value>, indent: usize, prune: bool, out: &mut String) -> Option<()> {
    let mut written = 0;
    for (k, x) in m {
        if prune
            && match x {
                Value::Object(o) => o.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            }
        {
            continue;
        }
        written += 1;
        if written > 1 {
            out.extend(std::iter::repeat_n(' ', indent));
        }
        fast_scalar_str(k, out)?;
        out.push(':');
        match x {
            Value::Object(o) if o.is_empty() => out.push_str(" {}\n"),
            Value::Array(a) if a.is_empty() => out.push_str(" []\n"),
            Value::Object(o) => {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', indent + 2));
                fast_map(o, indent + 2, false, out)?;
            }
            Value::Array(a) => {
                out.push('\n');
                fast_seq(a, indent, out)?;
            }
            scalar => {
                out.push(' ');
                fast_scalar(scalar, out)?;
                out.push('\n');
            }
        }
    }
    Some(())
}

fn fast_seq(a: &[Value], indent: usize, out: &mut String) -> Option<()> {
    for x in a {
        out.extend(std::iter::repeat_n(' ', indent));
        out.push_str("- ");
        match x {
            Value::Object(o) if !o.is_empty() => fast_map(o, indent + 2, false, out)?,
            Value::Object(_) | Value::Array(_) => return None,
            scalar => {
                fast_scalar(scalar, out)?;
                out.push('\n');
            }
        }
    }
    Some(())
}

fn fast_scalar(v: &Value, out: &mut String) -> Option<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) if n.is_f64() => {
            // `serde_yaml` writes exponents without `+`: 2.5e20, 1e-7.
            let text = n.to_string();
            out.push_str(&text.replace("e+", "e"));
        }
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => fast_scalar_str(s, out)?,
        _ => return None,
    }
    Some(())
}

/// A string `serde_yaml` writes plain (a letter, `_`, `/`, `-` and a letter,
/// or `--` first, then letters, digits and `_ . / -`), or one it quotes
/// because it would read back as an integer, a boolean or null; `None` for
/// anything else.
pub(super) fn fast_scalar_str(s: &str, out: &mut String) -> Option<()> {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-');
    // What `serde_yaml` would read back as a number, a boolean or null, it quotes.
    let reads_as_other = (!b.is_empty() && b.iter().all(u8::is_ascii_digit))
        || matches!(
            s,
            "true" | "True" | "TRUE" | "false" | "False" | "FALSE" | "null" | "Null" | "NULL"
        );
    if reads_as_other {
        out.push('\'');
        out.push_str(s);
        out.push('\'');
        return Some(());
    }
    // `--flag` and `-f` are plain; `-`, `-1` and `-.5` are not.
    let first = match b {
        [b'-', b'-', ..] => true,
        [b'-', c, ..] => c.is_ascii_alphabetic(),
        [c, ..] => c.is_ascii_alphabetic() || *c == b'_' || *c == b'/',
        [] => false,
    };
    let plain = first && b.iter().all(|c| word(*c));
    if !plain {
        return None;
    }
    out.push_str(s);
    Some(())
}

/// The lines of one spec, as [`yaml_lines`] of [`redacted`] writes them; a
/// spec without secrets is written from the spec directly (plans of
/// thousands of services show every created spec), else from its canonical
/// form.
pub(crate) fn spec_text(spec: &ServiceSpec) -> String {
    if let Some(s) = super::spec_lines::lines(spec) {
        return s;
    }
    let canonical = spec.canonical();
    if !contains_sensitive(&canonical)
        && let Some(s) = fast_yaml_pruned(&canonical)
    {
        return s;
    }
    yaml_lines(&redact(&canonical, None, false))
}

fn contains_sensitive(v: &Value) -> bool {
    match v {
        Value::Object(m) => is_sensitive_map(m) || m.values().any(contains_sensitive),
        Value::Array(a) => a.iter().any(contains_sensitive),
        _ => false,
    }
}

/// The line diff between two specs: changed lines with `context` lines of
/// unchanged fields around them. A create shows every line of the new spec, a
/// destroy every line of the old one.
pub(crate) fn spec_diff(
    before: Option<&ServiceSpec>,
    after: Option<&ServiceSpec>,
    context: usize,
) -> Vec<DiffLine> {
    let one_side = |tag: char, text: String| {
        text.lines()
            .map(|l| DiffLine {
                tag,
                text: l.to_owned(),
            })
            .collect()
    };
    let (old, new) = match (before, after) {
        (Some(b), Some(a)) => {
            let (b, a) = redacted_pair(b, a);
            (yaml_lines(&b), yaml_lines(&a))
        }
        (None, Some(a)) => return one_side('+', spec_text(a)),
        (Some(b), None) => return one_side('-', spec_text(b)),
        (None, None) => return Vec::new(),
    };
    let diff = TextDiff::from_lines(&old, &new);
    let mut out = Vec::new();
    for (i, group) in diff.grouped_ops(context).iter().enumerate() {
        if i > 0 {
            out.push(DiffLine {
                tag: '…',
                text: String::new(),
            });
        }
        for op in group {
            for change in diff.iter_changes(op) {
                let tag = match change.tag() {
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                    ChangeTag::Equal => ' ',
                };
                out.push(DiffLine {
                    tag,
                    text: change.value().trim_end_matches('\n').to_owned(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The direct emitter writes exactly what `serde_yaml` writes, or declines.
    #[test]
    fn the_fast_emitter_matches_serde_yaml_or_declines() {
        let strings = [
            "server",
            "--port",
            "20000",
            "0123",
            "0",
            "true",
            "True",
            "yes",
            "No",
            "null",
            "~",
            "1.5",
            "1e3",
            "0x10",
            ".inf",
            "a b",
            "a: b",
            "#x",
            "-",
            "- a",
            "",
            "/usr/bin/x",
            "x.y-z_1",
            "café",
            "line\nbreak",
            "'q'",
            "\"d\"",
            "a#b",
            "-1",
            "+1",
            "Y",
            "on",
            "production",
            "_x",
            "http://x:1/",
            "8080/tcp",
            "12345678901234567890123",
            "--",
            "-p",
            "-x-",
            "-.5",
            "--port=1",
            "-1e3",
            "no",
            "off",
            "y",
            "NO",
            "nan",
            "Inf",
            "tRUE",
            "FALSE",
            "Null",
            "NULL",
            "nULL",
            "False",
        ];
        let mut docs = Vec::new();
        for s in strings {
            docs.push(json!({ "command": s, "args": [s, "x"], "env": { "K": s } }));
            docs.push(json!({ s: 1 }));
        }
        docs.push(json!({
            "name": "svc-1", "replicas": 3, "cpu": 0.25, "neg": -4, "on": true, "n": null,
            "ports": [{ "container_port": 8080, "host_port": 18080, "protocol": "tcp" }],
            "health": { "endpoint": "/health", "interval": { "secs": 30 }, "none": {}, "list": [] },
            "nested": [[1, 2]], "deep": { "a": { "b": ["c", { "d": "e" }] } }
        }));
        let spec_like = json!({
            "name": "svc-1", "replicas": 3, "cpu_cores": 0.001, "memory_mb": 256,
            "floats": [0.001, 1.0, 1e-7, 2.5e20, 0.1, -3.5, 1e300, 123456789.125],
            "args": ["--port", "20000"], "env": { "MODE": "production" },
            "ports": [{ "container_port": 8080, "host_port": 18080, "protocol": "tcp" }],
            "restart": "no"
        });
        assert!(
            fast_yaml(&spec_like).is_some(),
            "a typical spec takes the fast path"
        );
        docs.push(spec_like);
        let mut fast = 0;
        let mut streamed = 0;
        for d in &docs {
            // Written from the value as it serializes, the same bytes or a
            // decline; it declines only where the canonical emitter does.
            let direct = super::super::spec_lines::lines(d);
            assert_eq!(direct.is_some(), fast_yaml_pruned(d).is_some(), "for {d}");
            if let Some(l) = direct {
                streamed += 1;
                assert_eq!(Some(l), fast_yaml_pruned(d), "for {d}");
            }
            let slow = serde_yaml::to_string(d).unwrap();
            if let Some(f) = fast_yaml(d) {
                fast += 1;
                assert_eq!(f, slow, "for {d}");
            }
        }
        assert!(fast >= 20, "the fast path took only {fast} documents");
        assert!(
            streamed >= 20,
            "the direct path took only {streamed} documents"
        );
    }

    /// Pruning while writing gives the bytes of pruning first.
    #[test]
    fn the_pruning_emitter_matches_prune_then_emit() {
        let docs = [
            json!({ "name": "a", "env": {}, "args": [], "ports": [{ "container_port": 80 }] }),
            json!({ "env": {}, "args": [], "name": "a", "labels": { "x": {} } }),
            json!({ "env": {}, "args": [] }),
            json!({ "name": "a", "nested": { "empty": [], "none": {} } }),
        ];
        for d in &docs {
            assert_eq!(fast_yaml_pruned(d), fast_yaml(&prune(d)), "for {d}");
            assert_eq!(
                super::super::spec_lines::lines(d),
                fast_yaml_pruned(d),
                "for {d}"
            );
        }
        let secret = json!({ "env": { "K": { "sensitive": "hmac-sha256:00" } } });
        assert!(contains_sensitive(&secret));
        assert_eq!(super::super::spec_lines::lines(&secret), None);
        assert!(!contains_sensitive(&docs[0]));
    }
}
