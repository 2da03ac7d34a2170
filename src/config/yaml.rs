//! YAML with a byte span for every node and every key.
//!
//! Built on `saphyr-parser`'s event stream (each event carries a span), so that
//! every diagnostic can point at the exact value in the user's file. Anchors and
//! aliases are expanded under a node budget (no "billion laughs"), nesting depth is
//! capped, duplicate keys are reported, and nothing here panics on any input.

use std::collections::HashMap;
use std::ops::Range;

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::diag::{Kind, Problem};

/// Mappings of at most this many keys find a duplicate by scanning their
/// entries; larger ones keep an index.
const SCAN_KEYS: usize = 16;

/// The deepest nesting accepted (mappings and sequences).
pub(crate) const MAX_DEPTH: usize = 64;
/// The most nodes a document may expand to, aliases included (100,000
/// services of about twenty values each fit).
pub(crate) const MAX_NODES: usize = 4_000_000;

/// A YAML value with the byte range it came from.
#[derive(Clone, Debug)]
pub struct Node {
    pub span: Range<usize>,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key (always a scalar, kept as text) with its span.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub span: Range<usize>,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    pub fn entry(&self, key: &str) -> Option<(&Key, &Node)> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The JSON form without the values a problem points at (`bad` spans): what
    /// is left of a definition with errors, to check the rest of it.
    #[cfg(test)]
    pub(crate) fn to_json_pruned(
        &self,
        bad: &std::collections::HashSet<Range<usize>>,
    ) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Seq(items) => J::Array(
                items
                    .iter()
                    .filter(|n| !bad.contains(&n.span))
                    .map(|n| n.to_json_pruned(bad))
                    .collect(),
            ),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .filter(|(k, v)| !bad.contains(&k.span) && !bad.contains(&v.span))
                    .map(|(k, v)| (k.name.clone(), v.to_json_pruned(bad)))
                    .collect(),
            ),
            _ => self.to_json(),
        }
    }

    /// The plain JSON form of this node (for typed deserialization).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Converts saphyr's character indices into byte offsets without a table the
/// size of the input: a checkpoint every 1024 characters.
struct Offsets {
    ascii: bool,
    checkpoints: Vec<usize>,
    len: usize,
}

impl Offsets {
    const STEP: usize = 1024;

    fn new(text: &str) -> Self {
        let ascii = text.is_ascii();
        let mut checkpoints = Vec::new();
        if !ascii {
            for (i, (b, _)) in text.char_indices().enumerate() {
                if i % Self::STEP == 0 {
                    checkpoints.push(b);
                }
            }
        }
        Self {
            ascii,
            checkpoints,
            len: text.len(),
        }
    }

    fn byte(&self, text: &str, char_index: usize) -> usize {
        if self.ascii {
            return char_index.min(self.len);
        }
        let cp = char_index / Self::STEP;
        let Some(&start) = self.checkpoints.get(cp) else {
            return self.len;
        };
        let rest = char_index - cp * Self::STEP;
        text[start..]
            .char_indices()
            .nth(rest)
            .map_or(self.len, |(b, _)| start + b)
    }
}

/// A collection being read. Its items or entries so far are the tail of
/// [`Open`]'s lists, from `from` on: each finished collection then takes one
/// allocation of exactly its size, instead of growing its own list.
enum Frame {
    Seq {
        start: usize,
        anchor: usize,
        from: usize,
    },
    Map {
        start: usize,
        anchor: usize,
        from: usize,
        /// The index (from `from`) of each key seen, once the mapping has
        /// more than [`SCAN_KEYS`] of them, so that a duplicate is found in
        /// constant time (a config has thousands of services); a smaller
        /// mapping is scanned.
        seen: std::collections::HashMap<String, usize>,
        pending: Option<Key>,
    },
}

/// The items and entries of the collections being read, innermost last.
#[derive(Default)]
struct Open {
    items: Vec<Node>,
    entries: Vec<(Key, Node)>,
}

/// Parses one YAML document. Returns the root (`None` for an empty document or a
/// syntax error) and every problem found.
pub fn parse(text: &str) -> (Option<Node>, Vec<Problem>) {
    let offsets = Offsets::new(text);
    let mut problems = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut open = Open::default();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let mut documents = 0usize;
    let parser = Parser::new_from_str(text);

    for event in parser {
        let (event, span) = match event {
            Ok(e) => e,
            Err(err) => {
                let at = offsets.byte(text, err.marker().index());
                let end = next_char_end(text, at);
                problems.push(
                    Problem::new(Kind::YamlSyntax, format!("the YAML is malformed: {}", err.info()))
                        .label(at..end, "here")
                        .help("fix the YAML syntax at this point (indentation, a missing `:` or an unclosed quote or bracket)"),
                );
                return (None, problems);
            }
        };
        let span_b = offsets.byte(text, span.start.index())..offsets.byte(text, span.end.index());
        let node = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => None,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    problems.push(
                        Problem::new(Kind::YamlSyntax, "the file holds more than one YAML document")
                            .label(span_b.clone(), "a second document starts here")
                            .help("keep one document per configuration file: remove this `---` and what follows, or merge it into the first document"),
                    );
                    return (root, problems);
                }
                None
            }
            Event::Scalar(value, style, anchor, tag) => {
                nodes += 1;
                let explicit_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if style == ScalarStyle::Plain && !explicit_str {
                    resolve_plain(&value)
                } else {
                    Value::Str(value.into_owned())
                };
                let node = Node {
                    span: span_b.clone(),
                    value,
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(target) => {
                    let size = count_nodes(target);
                    nodes = nodes.saturating_add(size);
                    if nodes > MAX_NODES {
                        problems.push(
                            Problem::new(Kind::TooLarge, format!("the document expands to more than {MAX_NODES} nodes through its aliases"))
                                .label(span_b.clone(), "this alias passes the limit")
                                .help("use fewer or smaller aliases (`*name`); a configuration this large is refused to keep loading bounded"),
                        );
                        return (None, problems);
                    }
                    let mut n = target.clone();
                    n.span = span_b.clone();
                    Some(n)
                }
                None => {
                    problems.push(
                        Problem::new(Kind::YamlSyntax, "an alias names an unknown anchor")
                            .label(span_b.clone(), "no anchor defined before this")
                            .help("define the anchor (`&name`) before the alias (`*name`)"),
                    );
                    Some(Node {
                        span: span_b.clone(),
                        value: Value::Null,
                    })
                }
            },
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes += 1;
                if stack.len() >= MAX_DEPTH {
                    problems.push(
                        Problem::new(
                            Kind::TooDeep,
                            format!("the document nests deeper than {MAX_DEPTH} levels"),
                        )
                        .label(span_b.clone(), "too deep here")
                        .help("flatten the structure; no configuration key nests this deep"),
                    );
                    return (None, problems);
                }
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq {
                        start: span_b.start,
                        anchor,
                        from: open.items.len(),
                    });
                } else {
                    stack.push(Frame::Map {
                        start: span_b.start,
                        anchor,
                        from: open.entries.len(),
                        seen: std::collections::HashMap::new(),
                        pending: None,
                    });
                }
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let end = span_b.end.max(span_b.start);
                match stack.pop() {
                    Some(Frame::Seq {
                        start,
                        anchor,
                        from,
                    }) => {
                        let items: Vec<Node> = open.items.drain(from..).collect();
                        let end = if span_b.end > span_b.start {
                            span_b.end
                        } else {
                            items.last().map_or(end, |n| n.span.end)
                        };
                        let node = Node {
                            span: start..end.max(start),
                            value: Value::Seq(items),
                        };
                        if anchor > 0 {
                            anchors.insert(anchor, node.clone());
                        }
                        Some(node)
                    }
                    Some(Frame::Map {
                        start,
                        anchor,
                        from,
                        ..
                    }) => {
                        let entries: Vec<(Key, Node)> = open.entries.drain(from..).collect();
                        let end = if span_b.end > span_b.start {
                            span_b.end
                        } else {
                            entries.last().map_or(end, |(_, n)| n.span.end)
                        };
                        let node = Node {
                            span: start..end.max(start),
                            value: Value::Map(entries),
                        };
                        if anchor > 0 {
                            anchors.insert(anchor, node.clone());
                        }
                        Some(node)
                    }
                    None => None,
                }
            }
        };
        if nodes > MAX_NODES {
            problems.push(
                Problem::new(
                    Kind::TooLarge,
                    format!("the document has more than {MAX_NODES} nodes"),
                )
                .label(span_b.clone(), "the limit is passed here")
                .help("split the deployment into several configurations"),
            );
            return (None, problems);
        }
        if let Some(node) = node {
            push(&mut stack, &mut open, &mut root, node, &mut problems);
        }
    }
    (root, problems)
}

fn push(
    stack: &mut [Frame],
    open: &mut Open,
    root: &mut Option<Node>,
    node: Node,
    problems: &mut Vec<Problem>,
) {
    let mut duplicate = None;
    match stack.last_mut() {
        None => *root = Some(node),
        Some(Frame::Seq { .. }) => open.items.push(node),
        Some(Frame::Map {
            from,
            seen,
            pending,
            ..
        }) => match pending.take() {
            None => {
                let name = match node.value {
                    Value::Str(s) => s,
                    Value::Null => "null".to_owned(),
                    Value::Bool(b) => b.to_string(),
                    Value::Int(i) => i.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Seq(_) | Value::Map(_) => {
                        problems.push(
                            Problem::new(Kind::WrongType, "a mapping key must be a scalar")
                                .label(node.span.clone(), "this key is a collection")
                                .help("use a plain string as the key"),
                        );
                        String::new()
                    }
                };
                *pending = Some(Key {
                    name,
                    span: node.span,
                });
            }
            Some(key) => {
                let entries = &open.entries[*from..];
                let first = if entries.len() <= SCAN_KEYS {
                    entries.iter().position(|(k, _)| k.name == key.name)
                } else {
                    if seen.is_empty() {
                        seen.extend(
                            entries
                                .iter()
                                .enumerate()
                                .map(|(i, (k, _))| (k.name.clone(), i)),
                        );
                    }
                    seen.get(&key.name).copied()
                };
                if let Some((first, _)) = first.map(|i| &entries[i]) {
                    duplicate = Some((key, first.span.clone()));
                } else {
                    if !seen.is_empty() {
                        seen.insert(key.name.clone(), entries.len());
                    }
                    open.entries.push((key, node));
                }
            }
        },
    }
    if let Some((key, first)) = duplicate {
        let mut path = path_of(&stack[..stack.len() - 1], open);
        path.push(key.name.clone());
        problems.push(
            Problem::new(
                Kind::DuplicateKey,
                format!("the key `{}` is defined twice", key.name),
            )
            .label(key.span, "defined again here")
            .label(first, "first defined here")
            .help("remove one of the two definitions or rename one of them")
            .path(path),
        );
    }
}

/// The path from the root to the value the innermost of `frames` is reading:
/// each mapping's key, each sequence's index.
fn path_of(frames: &[Frame], open: &Open) -> Vec<String> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| match f {
            // Its items end where the next sequence inside it begins.
            Frame::Seq { from, .. } => {
                let end = frames[i + 1..]
                    .iter()
                    .find_map(|f| match f {
                        Frame::Seq { from, .. } => Some(*from),
                        Frame::Map { .. } => None,
                    })
                    .unwrap_or(open.items.len());
                (end - from).to_string()
            }
            Frame::Map { pending, .. } => {
                pending.as_ref().map_or(String::new(), |k| k.name.clone())
            }
        })
        .collect()
}

fn count_nodes(n: &Node) -> usize {
    match &n.value {
        Value::Seq(items) => 1usize.saturating_add(
            items
                .iter()
                .map(count_nodes)
                .fold(0usize, usize::saturating_add),
        ),
        Value::Map(entries) => 1usize.saturating_add(
            entries
                .iter()
                .map(|(_, v)| count_nodes(v).saturating_add(1))
                .fold(0usize, usize::saturating_add),
        ),
        _ => 1,
    }
}

fn next_char_end(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text[at..].chars().next().map_or(at, |c| at + c.len_utf8())
}

/// Resolves a plain scalar by the YAML 1.2 core schema, with exactly the rule
/// `serde_yaml` applies when it reads a file (a test feeds both the same
/// scalars): `null`/`Null`/`NULL`/`~`/empty are null; `true`/`True`/`TRUE` and
/// the `false` forms are booleans (`yes`, `no`, `on`, `off` are strings);
/// integers are decimal, `0x`, `0o` or `0b` with an optional sign; a leading
/// zero followed by digits (`0123`) is a string; floats are what Rust reads as
/// a finite `f64`, plus `.inf`, `-.inf` and `.nan` in their three cases. One
/// difference: a float too large for `f64` is infinite here, a string there.
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(i) = resolve_int(s) {
        // Integers beyond `i64` stay numbers, as they do in `serde_yaml`.
        return i64::try_from(i).map_or(Value::Float(i as f64), Value::Int);
    }
    if !digits_but_not_number(s)
        && let Some(f) = resolve_float(s)
    {
        return Value::Float(f);
    }
    Value::Str(s.to_owned())
}

/// An integer in decimal, hex (`0x`), octal (`0o`) or binary (`0b`), with an
/// optional sign (`+0x10`, `-0x10`); never a sign after the prefix.
fn resolve_int(s: &str) -> Option<i128> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unsigned.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(i) = u128::from_str_radix(rest, radix) {
                return signed(negative, i);
            }
        }
    }
    if unsigned.starts_with(['+', '-']) || digits_but_not_number(s) {
        return None;
    }
    unsigned
        .parse::<u128>()
        .ok()
        .and_then(|i| signed(negative, i))
}

fn signed(negative: bool, i: u128) -> Option<i128> {
    let i = i128::try_from(i).ok()?;
    Some(if negative { -i } else { i })
}

/// Leading zeros followed by digits (`0123`, `-00`) are a string in YAML 1.2.
fn digits_but_not_number(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    s.len() > 1 && s.starts_with('0') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

fn resolve_float(s: &str) -> Option<f64> {
    let unsigned = match s.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return None,
        Some(rest) => rest,
        None => s,
    };
    match (unsigned, s) {
        (".inf" | ".Inf" | ".INF", _) => return Some(f64::INFINITY),
        (_, "-.inf" | "-.Inf" | "-.INF") => return Some(f64::NEG_INFINITY),
        (_, ".nan" | ".NaN" | ".NAN") => return Some(f64::NAN),
        _ => {}
    }
    let f = unsigned.parse::<f64>().ok()?;
    if f.is_finite() {
        return Some(f);
    }
    // Rust also reads `inf`, `nan` and `infinity`, which YAML does not. A
    // float too large for `f64` (`1e400`) stays a number, infinite, so that a
    // configuration is told its value is out of range, not of the wrong type:
    // here alone `serde_yaml` reads a string.
    let digits = unsigned.strip_prefix('-').unwrap_or(unsigned);
    digits
        .starts_with(|c: char| c.is_ascii_digit() || c == '.')
        .then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_byte_offsets_even_after_multibyte_text() {
        let text = "# héllo wörld\na: 1\nb: \"é\"\n";
        let (root, problems) = parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        let root = root.unwrap();
        let (k, v) = root.entry("b").unwrap();
        assert_eq!(&text[k.span.clone()], "b");
        assert_eq!(&text[v.span.clone()], "\"é\"");
    }

    #[test]
    fn scalars_resolve_like_yaml_1_2() {
        let (root, _) = parse("a: 1\nb: 1.5\nc: true\nd: ~\ne: '1'\nf: x\ng: -3\n");
        let root = root.unwrap();
        assert!(matches!(root.get("a").unwrap().value, Value::Int(1)));
        assert!(matches!(root.get("b").unwrap().value, Value::Float(_)));
        assert!(matches!(root.get("c").unwrap().value, Value::Bool(true)));
        assert!(matches!(root.get("d").unwrap().value, Value::Null));
        assert!(matches!(root.get("e").unwrap().value, Value::Str(_)));
        assert!(matches!(root.get("f").unwrap().value, Value::Str(_)));
        assert!(matches!(root.get("g").unwrap().value, Value::Int(-3)));
    }

    /// A scalar as both readers resolve it, to compare them.
    #[derive(Debug, PartialEq)]
    enum Resolved {
        Null,
        Bool(bool),
        Int(i128),
        /// The bits, so that NaN equals NaN.
        Float(u64),
        Str(String),
    }

    fn float(f: f64) -> Resolved {
        Resolved::Float(if f.is_nan() {
            f64::NAN.to_bits()
        } else {
            f.to_bits()
        })
    }

    fn by_loader(scalar: &str) -> Resolved {
        let (root, problems) = parse(&format!("v: {scalar}\n"));
        assert!(problems.is_empty(), "{scalar}: {problems:?}");
        match root.unwrap().get("v").unwrap().value.clone() {
            Value::Null => Resolved::Null,
            Value::Bool(b) => Resolved::Bool(b),
            Value::Int(i) => Resolved::Int(i.into()),
            Value::Float(f) => float(f),
            Value::Str(s) => Resolved::Str(s),
            other => panic!("{scalar}: {other:?}"),
        }
    }

    fn by_serde_yaml(scalar: &str) -> Resolved {
        let doc: serde_yaml::Mapping = serde_yaml::from_str(&format!("v: {scalar}\n")).unwrap();
        match doc.get("v").unwrap().clone() {
            serde_yaml::Value::Null => Resolved::Null,
            serde_yaml::Value::Bool(b) => Resolved::Bool(b),
            serde_yaml::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Resolved::Int(i.into()),
                (_, Some(u), _) => Resolved::Int(u.into()),
                (_, _, Some(f)) => float(f),
                _ => unreachable!(),
            },
            serde_yaml::Value::String(s) => Resolved::Str(s),
            other => panic!("{scalar}: {other:?}"),
        }
    }

    /// One dialect: the span-keeping loader resolves every plain and quoted
    /// scalar exactly as `serde_yaml` does (YAML 1.2 core).
    #[test]
    fn scalars_resolve_as_serde_yaml_resolves_them() {
        let scalars = [
            // integers
            "0",
            "1",
            "-3",
            "+7",
            "-0",
            "42",
            "9223372036854775807",
            "-9223372036854775808",
            "0123",
            "-0123",
            "+0123",
            "00",
            "007",
            "1_000",
            // hex, octal, binary
            "0x10",
            "0xff",
            "0xFF",
            "+0x10",
            "-0x10",
            "0x-1",
            "0x+1",
            "0x",
            "0xg",
            "0o17",
            "-0o17",
            "0o8",
            "017",
            "0b101",
            "-0b11",
            "0b2",
            // floats
            "1.5",
            "-1.5",
            "+1.5",
            ".5",
            "5.",
            "1e3",
            "1E3",
            "1e-7",
            "-2.5e20",
            "0.5",
            "00.5",
            "1.5.3",
            "1,5",
            // infinities and NaN
            ".inf",
            ".Inf",
            ".INF",
            "+.inf",
            "-.inf",
            "-.Inf",
            "-.INF",
            ".nan",
            ".NaN",
            ".NAN",
            "+.nan",
            "-.nan",
            "inf",
            "nan",
            "NaN",
            "infinity",
            // booleans in every case
            "true",
            "True",
            "TRUE",
            "tRUE",
            "false",
            "False",
            "FALSE",
            "fAlse",
            "yes",
            "no",
            "Yes",
            "NO",
            "on",
            "off",
            "y",
            "n",
            // null
            "~",
            "null",
            "Null",
            "NULL",
            "nULL",
            "",
            "none",
            // quoted
            "'1'",
            "\"1\"",
            "'true'",
            "\"True\"",
            "'~'",
            "'null'",
            "'0x10'",
            "\".nan\"",
            "''",
            // strings
            "x",
            "-x",
            "+",
            "1.2.3.4",
            "10:30",
            "0.0.0.0",
            "v1",
            "1e",
            "e1",
        ];
        for scalar in scalars {
            assert_eq!(
                by_loader(scalar),
                by_serde_yaml(scalar),
                "the scalar `{scalar}`"
            );
        }
        // The one difference: a float beyond `f64` is a number (infinite), so
        // that a configuration hears it is out of range.
        for (scalar, inf) in [("1e400", f64::INFINITY), ("-1e400", f64::NEG_INFINITY)] {
            assert_eq!(by_loader(scalar), float(inf), "{scalar}");
            assert_eq!(
                by_serde_yaml(scalar),
                Resolved::Str(scalar.into()),
                "{scalar}"
            );
        }
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = (b'a' + (i - 1) as u8) as char;
            let cur = (b'a' + i as u8) as char;
            doc.push_str(&format!(
                "{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let (root, problems) = parse(&doc);
        assert!(root.is_none());
        assert_eq!(problems[0].kind, Kind::TooLarge);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = "[".repeat(10_000);
        let (_, problems) = parse(&doc);
        assert!(!problems.is_empty());
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let (_, problems) = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].kind, Kind::DuplicateKey);
        assert_eq!(problems[0].labels[0].0, 10..11);
        assert_eq!(problems[0].labels[1].0, 0..1);
    }

    #[test]
    fn a_duplicate_key_carries_its_path() {
        let (_, problems) = parse("services:\n  api: {}\n  api: {}\nlist:\n  - {x: 1, x: 2}\n");
        let paths: Vec<_> = problems.iter().map(|p| p.path.join(".")).collect();
        assert_eq!(paths, ["services.api", "list.0.x"]);
        assert!(problems.iter().all(|p| p.kind == Kind::DuplicateKey));
    }
}
