//! Validation of the parsed YAML against the JSON Schema generated from
//! [`super::schema`], with spans: every mismatch is one [`Problem`].

use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::OnceLock;

use serde_json::Value as J;

use super::diag::{Kind, Problem, did_you_mean};
use super::yaml::{Node, Value};

/// The schema, generated once per process.
pub fn schema() -> &'static J {
    static SCHEMA: OnceLock<J> = OnceLock::new();
    SCHEMA.get_or_init(super::schema::json_schema)
}

/// Checks `node` against the whole document schema; `text` is what its spans
/// point into.
pub(crate) fn check_document(node: &Node, text: &str, out: &mut Vec<Problem>) {
    let root = schema();
    let walk = Walk::new(root, text);
    let mut path = Vec::new();
    walk.check(node, root, &mut path, out);
}

/// What the walk reads of one schema (after its `$ref`s): read from the
/// JSON Schema once per document instead of once per value checked (a
/// configuration has thousands of values of the same few schemas).
struct Facts<'a> {
    /// The schema, its `$ref`s followed.
    schema: &'a J,
    /// `true`: anything goes.
    anything: bool,
    /// `anyOf`, else `oneOf`.
    alternatives: Option<&'a [J]>,
    /// Whether it has an `anyOf` or a `oneOf` key at all.
    has_alternatives: bool,
    types: Vec<&'a str>,
    /// [`accepted_types`]: with those of the alternatives.
    accepted: Vec<&'a str>,
    /// [`choices`]: the string constants, with those of the alternatives.
    choices: Vec<&'a str>,
    format_range: Option<(i128, i128)>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    properties: Option<&'a serde_json::Map<String, J>>,
    additional: Option<&'a J>,
    required: Vec<&'a str>,
    items: Option<&'a J>,
}

impl<'a> Facts<'a> {
    fn of(schema: &'a J, root: &'a J) -> Self {
        let schema = resolve(schema, root);
        let mut accepted = Vec::new();
        accepted_types(schema, root, &mut accepted);
        let mut allowed = Vec::new();
        choices(schema, root, &mut allowed);
        Facts {
            schema,
            anything: schema == &J::Bool(true),
            alternatives: schema
                .get("anyOf")
                .or_else(|| schema.get("oneOf"))
                .and_then(J::as_array)
                .map(Vec::as_slice),
            has_alternatives: schema.get("anyOf").is_some() || schema.get("oneOf").is_some(),
            types: types_of(schema),
            accepted,
            choices: allowed,
            format_range: schema
                .get("format")
                .and_then(J::as_str)
                .and_then(format_range),
            minimum: schema.get("minimum").and_then(J::as_f64),
            maximum: schema.get("maximum").and_then(J::as_f64),
            properties: schema.get("properties").and_then(J::as_object),
            additional: schema.get("additionalProperties"),
            required: match schema.get("required") {
                Some(J::Array(required)) => required.iter().filter_map(J::as_str).collect(),
                _ => Vec::new(),
            },
            items: schema.get("items"),
        }
    }
}

/// The facts of every schema reachable from the root, by address.
struct Walk<'a> {
    root: &'a J,
    /// The document's text, to show an integer too large to read as written.
    text: &'a str,
    facts: std::collections::HashMap<*const J, Facts<'a>, BuildHasherDefault<AddrHasher>>,
}

/// Hashes the schema addresses the facts are kept by with one multiply (the
/// walk looks up the facts of every value it checks; SipHash made those
/// lookups cost more than the checks). The high bits are folded into the
/// low ones, which an aligned address leaves zero.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_usize(&mut self, n: usize) {
        let x = (self.0 ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
}

impl<'a> Walk<'a> {
    fn new(root: &'a J, text: &'a str) -> Self {
        let mut walk = Walk {
            root,
            text,
            facts: std::collections::HashMap::default(),
        };
        walk.learn(root);
        walk
    }

    fn learn(&mut self, schema: &'a J) {
        let key: *const J = schema;
        if self.facts.contains_key(&key) {
            return;
        }
        let facts = Facts::of(schema, self.root);
        let resolved = facts.schema;
        let mut next: Vec<&'a J> = vec![resolved];
        next.extend(facts.alternatives.into_iter().flatten());
        next.extend(facts.properties.into_iter().flat_map(|p| p.values()));
        next.extend(facts.additional);
        next.extend(facts.items);
        self.facts.insert(key, facts);
        for s in next {
            self.learn(s);
        }
    }

    /// The facts of `schema`: learned, or read now for one the walk from the
    /// root did not reach.
    fn facts(&self, schema: &'a J) -> std::borrow::Cow<'_, Facts<'a>> {
        match self.facts.get(&(schema as *const J)) {
            Some(f) => std::borrow::Cow::Borrowed(f),
            None => std::borrow::Cow::Owned(Facts::of(schema, self.root)),
        }
    }
}

impl Clone for Facts<'_> {
    fn clone(&self) -> Self {
        Facts {
            schema: self.schema,
            anything: self.anything,
            alternatives: self.alternatives,
            has_alternatives: self.has_alternatives,
            types: self.types.clone(),
            accepted: self.accepted.clone(),
            choices: self.choices.clone(),
            format_range: self.format_range,
            minimum: self.minimum,
            maximum: self.maximum,
            properties: self.properties,
            additional: self.additional,
            required: self.required.clone(),
            items: self.items,
        }
    }
}

/// What the schema makes of the reader's problems: a key defined twice
/// directly under `services` is a service defined twice (S002).
pub(crate) fn classify(problems: &mut [Problem]) {
    for p in problems.iter_mut() {
        if let (Kind::DuplicateKey, [top, service]) = (p.kind, p.path.as_slice())
            && top == "services"
        {
            p.kind = Kind::DuplicateService;
            p.message = format!("the service `{service}` is defined twice");
        }
    }
}

fn resolve<'a>(schema: &'a J, root: &'a J) -> &'a J {
    let mut s = schema;
    for _ in 0..16 {
        match s.get("$ref").and_then(J::as_str) {
            Some(r) => match r
                .strip_prefix("#/$defs/")
                .and_then(|n| root.get("$defs")?.get(n))
            {
                Some(t) => s = t,
                None => return s,
            },
            None => return s,
        }
    }
    s
}

fn type_matches(t: &str, v: &Value) -> bool {
    match (t, v) {
        ("integer", Value::Float(f)) => is_big_integer(*f),
        _ => matches!(
            (t, v),
            ("null", Value::Null)
                | ("boolean", Value::Bool(_))
                | ("integer", Value::Int(_))
                | ("number", Value::Int(_) | Value::Float(_))
                | ("string", Value::Str(_))
                | ("array", Value::Seq(_))
                | ("object", Value::Map(_))
        ),
    }
}

/// An integer written in the file that is too large for `i64` (YAML reads it as
/// a float): still an integer, to be reported as out of range.
fn is_big_integer(f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0 && f.abs() >= i64::MAX as f64
}

/// The range of the Rust integer type schemars names in `format`.
fn format_range(format: &str) -> Option<(i128, i128)> {
    Some(match format {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" | "uint" => (0, u64::MAX.into()),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" | "int" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

/// A bound on a number: the schema's, or the value's type's.
#[derive(Clone, Copy)]
enum Bound {
    Stated(f64),
    Typed(i128),
}

impl Bound {
    fn value(self) -> f64 {
        match self {
            Bound::Stated(s) => s,
            Bound::Typed(t) => t as f64,
        }
    }

    /// As messages show it; written only for a value out of bounds.
    fn text(self) -> String {
        match self {
            Bound::Stated(s) => fmt_num(s),
            Bound::Typed(t) => t.to_string(),
        }
    }
}

/// The tighter of a bound the schema states and the bound of the value's type.
fn tighter(stated: Option<f64>, typed: Option<i128>, min: bool) -> Option<Bound> {
    match (stated.map(Bound::Stated), typed.map(Bound::Typed)) {
        (Some(s), Some(t)) => Some(if (s.value() >= t.value()) == min {
            s
        } else {
            t
        }),
        (s, t) => s.or(t),
    }
}

fn types_of(schema: &J) -> Vec<&str> {
    match schema.get("type") {
        Some(J::String(s)) => vec![s.as_str()],
        Some(J::Array(a)) => a.iter().filter_map(J::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Every type a schema (with its alternatives) accepts.
fn accepted_types<'a>(schema: &'a J, root: &'a J, out: &mut Vec<&'a str>) {
    let schema = resolve(schema, root);
    for t in types_of(schema) {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(J::Array(branches)) = schema.get(key) {
            for b in branches {
                accepted_types(b, root, out);
            }
        }
    }
}

/// Every string constant a schema (with its alternatives) allows.
fn choices<'a>(schema: &'a J, root: &'a J, out: &mut Vec<&'a str>) {
    let schema = resolve(schema, root);
    if let Some(c) = schema.get("const").and_then(J::as_str) {
        out.push(c);
    }
    if let Some(J::Array(e)) = schema.get("enum") {
        out.extend(e.iter().filter_map(J::as_str));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(J::Array(branches)) = schema.get(key) {
            for b in branches {
                choices(b, root, out);
            }
        }
    }
}

fn describe(types: &[&str]) -> String {
    let words: Vec<String> = types
        .iter()
        .filter(|t| **t != "null")
        .map(|t| match *t {
            "integer" => "an integer".to_owned(),
            "array" => "a list".to_owned(),
            "object" => "a mapping".to_owned(),
            other => format!("a {other}"),
        })
        .collect();
    match words.len() {
        0 => "nothing".to_owned(),
        1 => words[0].clone(),
        _ => format!(
            "{} or {}",
            words[..words.len() - 1].join(", "),
            words[words.len() - 1]
        ),
    }
}

fn found(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Int(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Str(_) => "a string",
        Value::Seq(_) => "a list",
        Value::Map(_) => "a mapping",
    }
}

fn where_(path: &[String]) -> String {
    if path.is_empty() {
        "the document".to_owned()
    } else {
        format!("`{}`", path.join("."))
    }
}

impl<'a> Walk<'a> {
    /// The integer as written at `span` (a value too large for `i64` is read
    /// as a float, which cannot show it digit for digit).
    fn written_integer(&self, span: &Range<usize>) -> Option<String> {
        let written = self.text.get(span.clone())?.trim();
        let digits = written.trim_start_matches(['+', '-']);
        (!digits.is_empty()
            && digits.len() <= 64
            && digits
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| written.to_owned())
    }

    fn check(&self, node: &Node, schema: &'a J, path: &mut Vec<String>, out: &mut Vec<Problem>) {
        let facts = self.facts(schema);
        if facts.anything {
            return;
        }
        if let Some(branches) = facts.alternatives {
            let mut best: Option<Vec<Problem>> = None;
            for b in branches {
                let bf = self.facts(b);
                // A plain branch of other types would only report the wrong type,
                // and could not be the best match: skip it without building that
                // problem (an `env` value tries four branches).
                if !bf.has_alternatives && !bf.anything {
                    let ts = &bf.types;
                    if !ts.is_empty() && !ts.iter().any(|t| type_matches(t, &node.value)) {
                        continue;
                    }
                }
                let mut tmp = Vec::new();
                self.check(node, bf.schema, path, &mut tmp);
                if tmp.is_empty() {
                    return;
                }
                if bf.accepted.iter().any(|t| type_matches(t, &node.value))
                    && best.as_ref().is_none_or(|p| tmp.len() < p.len())
                {
                    best = Some(tmp);
                }
            }
            let allowed = &facts.choices;
            if let (Value::Str(s), false) = (&node.value, allowed.is_empty()) {
                out.push(invalid_choice(node, s, allowed, path));
                return;
            }
            match best {
                Some(p) => out.extend(p),
                None => out.push(wrong_type(node, &facts.accepted, path)),
            }
            return;
        }
        let types = &facts.types;
        if !types.is_empty() && !types.iter().any(|t| type_matches(t, &node.value)) {
            out.push(wrong_type(node, types, path));
            return;
        }
        if let Value::Str(s) = &node.value {
            let allowed = &facts.choices;
            if !allowed.is_empty() && !allowed.contains(&s.as_str()) {
                out.push(invalid_choice(node, s, allowed, path));
            }
        }
        let number = match node.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        };
        // The value as messages show it; written only for a problem.
        let shown = || match node.value {
            Value::Int(i) => i.to_string(),
            Value::Float(f) if is_big_integer(f) => self
                .written_integer(&node.span)
                .unwrap_or_else(|| "an integer beyond 64 bits".to_owned()),
            Value::Float(f) => fmt_num(f),
            _ => String::new(),
        };
        let in_resources = path.iter().any(|p| p == "resources");
        if number.is_some_and(|n| !n.is_finite()) {
            let (message, help) = if in_resources {
                (
                    "must be a finite number above 0",
                    "give a positive amount such as 0.5, or leave the key out for the default",
                )
            } else {
                (
                    "must be a finite number",
                    "write a finite number, or quote the value to use it as text",
                )
            };
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    format!("{} {message}, found {}", where_(path), shown()),
                )
                .label(node.span.clone(), "not a finite number")
                .help(help),
            );
        } else if let Some(n) = number {
            let range = facts.format_range;
            let min = tighter(facts.minimum, range.map(|r| r.0), true);
            let max = tighter(facts.maximum, range.map(|r| r.1), false);
            if let Some(min) = min.filter(|m| n < m.value()).map(Bound::text) {
                let kind = if in_resources {
                    Kind::NonPositiveResource
                } else {
                    Kind::InvalidValue
                };
                let help = if in_resources {
                    "resources are positive amounts: give a value above 0, or leave the key out for the default".to_owned()
                } else if path.last().is_some_and(|k| k == "replicas") {
                    format!(
                        "run at least {min} replica; to stop a service, remove it or set `enabled: false`"
                    )
                } else {
                    format!("use a value of at least {min}")
                };
                let message = if in_resources {
                    format!("{} must be positive, found {}", where_(path), shown())
                } else {
                    format!("{} must be at least {min}, found {}", where_(path), shown())
                };
                out.push(
                    Problem::new(kind, message)
                        .label(node.span.clone(), "too small")
                        .help(help),
                );
            } else if let Some(max) = max.filter(|m| n > m.value()).map(Bound::text) {
                out.push(
                    Problem::new(
                        Kind::InvalidValue,
                        format!("{} must be at most {max}, found {}", where_(path), shown()),
                    )
                    .label(node.span.clone(), "too large")
                    .help(format!("use a value of at most {max}")),
                );
            }
        }
        match &node.value {
            Value::Map(entries) => {
                let props = facts.properties;
                let additional = facts.additional;
                for (key, value) in entries {
                    let sub = props.and_then(|p| p.get(&key.name));
                    path.push(key.name.clone());
                    match (sub, additional) {
                        (Some(s), _) => self.check(value, s, path, out),
                        (None, Some(J::Bool(false))) => {
                            path.pop();
                            let names: Vec<&str> = props
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            let help = match did_you_mean(&key.name, names.iter().copied()) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => format!(
                                    "remove it; the keys allowed here are: {}",
                                    names.join(", ")
                                ),
                            };
                            out.push(
                                Problem::new(
                                    Kind::UnknownKey,
                                    format!("unknown key `{}` in {}", key.name, where_(path)),
                                )
                                .label(key.span.clone(), "not a known key")
                                .help(help),
                            );
                            continue;
                        }
                        (None, Some(s)) => self.check(value, s, path, out),
                        (None, None) => {}
                    }
                    path.pop();
                }
                {
                    for &r in &facts.required {
                        if !entries.iter().any(|(k, _)| k.name == r) {
                            out.push(
                                Problem::new(
                                    Kind::MissingKey,
                                    format!("{} needs the key `{r}`", where_(path)),
                                )
                                .label(first_line(node), format!("`{r}` is missing here"))
                                .help(format!("add `{r}: ...` to this mapping")),
                            );
                        }
                    }
                }
            }
            Value::Seq(items) => {
                if let Some(item_schema) = facts.items {
                    for (i, item) in items.iter().enumerate() {
                        path.push(i.to_string());
                        self.check(item, item_schema, path, out);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
    }
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn first_line(node: &Node) -> std::ops::Range<usize> {
    node.span.start..node.span.start
}

fn wrong_type(node: &Node, types: &[&str], path: &[String]) -> Problem {
    let expected = describe(types);
    let help = match (
        &node.value,
        types.contains(&"integer") || types.contains(&"number"),
    ) {
        (Value::Str(s), true) if s.trim().parse::<f64>().is_ok() => {
            "remove the quotes: this value is a number".to_owned()
        }
        (Value::Str(s), _)
            if types.contains(&"boolean") && matches!(s.as_str(), "yes" | "no" | "on" | "off") =>
        {
            "write `true` or `false`".to_owned()
        }
        _ => format!("write {expected} here"),
    };
    Problem::new(
        Kind::WrongType,
        format!(
            "{} should be {expected}, found {}",
            where_(path),
            found(&node.value)
        ),
    )
    .label(node.span.clone(), format!("expected {expected}"))
    .help(help)
}

fn invalid_choice(node: &Node, s: &str, allowed: &[&str], path: &[String]) -> Problem {
    let help = match did_you_mean(s, allowed.iter().copied()) {
        Some(c) => format!(
            "did you mean `{c}`? The values allowed are: {}",
            allowed.join(", ")
        ),
        None => format!("use one of: {}", allowed.join(", ")),
    };
    Problem::new(
        Kind::InvalidValue,
        format!("`{s}` is not a valid value for {}", where_(path)),
    )
    .label(node.span.clone(), "not allowed here")
    .help(help)
}
