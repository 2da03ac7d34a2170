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
pub const SENSITIVE: &str = "(sensitive)";
/// How a hidden value whose digest changed is shown on the new side.
pub const SENSITIVE_CHANGED: &str = "(sensitive, changed)";

/// True for the wire form of a sensitive value: `{"sensitive": "<digest>"}`.
pub fn is_sensitive_map(m: &Map<String, Value>) -> bool {
    m.len() == 1 && m.get("sensitive").is_some_and(Value::is_string)
}

/// The canonical form of a spec with every sensitive value shown as `(sensitive)`.
pub fn redacted(spec: &ServiceSpec) -> Value {
    redact(&spec.canonical(), None, false)
}

/// Both canonical forms, redacted; a secret whose digest differs is marked
/// `(sensitive, changed)` on the new side.
pub fn redacted_pair(before: &ServiceSpec, after: &ServiceSpec) -> (Value, Value) {
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
pub struct DiffLine {
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
    let mut s = serde_yaml::to_string(&prune(v)).unwrap_or_default();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The line diff between two specs: changed lines with `context` lines of
/// unchanged fields around them. A create shows every line of the new spec, a
/// destroy every line of the old one.
pub fn spec_diff(
    before: Option<&ServiceSpec>,
    after: Option<&ServiceSpec>,
    context: usize,
) -> Vec<DiffLine> {
    let (old, new) = match (before, after) {
        (Some(b), Some(a)) => {
            let (b, a) = redacted_pair(b, a);
            (yaml_lines(&b), yaml_lines(&a))
        }
        (None, Some(a)) => (String::new(), yaml_lines(&redacted(a))),
        (Some(b), None) => (yaml_lines(&redacted(b)), String::new()),
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
