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
        seen: foldhash::HashMap<String, usize>,
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
///
/// A large document is read in two parts at once where that gives the same
/// tree (see [`parts`]); any other document, and any document whose parts
/// find a problem, is read whole.
pub fn parse(text: &str) -> (Option<Node>, Vec<Problem>) {
    if text.len() >= parts::MIN_BYTES
        && let Some(root) = parts::parse(text)
    {
        return (Some(root), Vec::new());
    }
    let read = parse_at(text, 0, 0);
    (read.root, read.problems)
}

/// What [`parse_at`] read.
struct Read {
    root: Option<Node>,
    problems: Vec<Problem>,
    /// The nodes read, aliases expanded.
    nodes: usize,
}

/// Parses `text`, which starts at byte `base` of the document and is nested
/// `depth` levels deep in it: every span is a byte range of the document.
fn parse_at(text: &str, base: usize, depth: usize) -> Read {
    let offsets = Offsets::new(text);
    let mut problems = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut open = Open::default();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let mut documents = 0usize;
    let parser = Parser::new_from_str(text);
    let done = |root, problems, nodes| Read {
        root,
        problems,
        nodes,
    };

    for event in parser {
        let (event, span) = match event {
            Ok(e) => e,
            Err(err) => {
                let at = offsets.byte(text, err.marker().index());
                let end = next_char_end(text, at);
                let (at, end) = (base + at, base + end);
                problems.push(
                    Problem::new(Kind::YamlSyntax, format!("the YAML is malformed: {}", err.info()))
                        .label(at..end, "here")
                        .help("fix the YAML syntax at this point (indentation, a missing `:` or an unclosed quote or bracket)"),
                );
                return done(None, problems, nodes);
            }
        };
        let span_b = base + offsets.byte(text, span.start.index())
            ..base + offsets.byte(text, span.end.index());
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
                    return done(root, problems, nodes);
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
                        return done(None, problems, nodes);
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
                if depth + stack.len() >= MAX_DEPTH {
                    problems.push(
                        Problem::new(
                            Kind::TooDeep,
                            format!("the document nests deeper than {MAX_DEPTH} levels"),
                        )
                        .label(span_b.clone(), "too deep here")
                        .help("flatten the structure; no configuration key nests this deep"),
                    );
                    return done(None, problems, nodes);
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
                        seen: foldhash::HashMap::default(),
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
            return done(None, problems, nodes);
        }
        if let Some(node) = node {
            push(&mut stack, &mut open, &mut root, node, &mut problems);
        }
    }
    done(root, problems, nodes)
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

/// Reading a large document in two parts at once.
///
/// A deployment of thousands of services is one long block mapping under
/// `services:`, one entry after another at the same indentation. Each entry
/// begins on a line of its own, and YAML ends every multi-line construct (a
/// block scalar, a quoted or plain scalar, a flow collection) before a line
/// that is not indented beyond the entry's keys. So the document is cut at
/// the start of an entry near its middle and at the end of the `services:`
/// block: the first part (from the start) is read on this thread while the
/// second (the remaining entries) is read on another; what follows the block
/// is read after the first part.
///
/// The parts are joined into the tree the whole document gives. Where the
/// cut could not give that tree, the parts are not used: any problem in a
/// part (a construct cut in two reads as malformed, an alias of an anchor in
/// another part as unknown), a key defined in two parts, a directive or a
/// second document, or more than [`MAX_NODES`] nodes in all. The whole
/// document is then read as one, and its problems are reported as always.
mod parts {
    use super::{MAX_NODES, Node, Read, Value, parse_at};

    /// Documents smaller than this are read whole.
    pub(super) const MIN_BYTES: usize = 64 * 1024;

    /// Where the document is cut: the first part is `..middle`, the second
    /// `middle..end` (entries of `services`), the rest `end..`.
    #[derive(Debug)]
    struct Cut {
        middle: usize,
        end: usize,
    }

    /// The lines of `text` with the byte offset each starts at.
    fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
        let mut at = 0;
        text.split_inclusive('\n').map(move |line| {
            let start = at;
            at += line.len();
            (start, line.trim_end_matches(['\n', '\r']))
        })
    }

    /// The line's indentation in spaces, and what follows it; `None` for a
    /// line that is blank or only a comment.
    fn content(line: &str) -> Option<(usize, &str)> {
        let rest = line.trim_start_matches(' ');
        (!rest.is_empty() && !rest.starts_with('#')).then(|| (line.len() - rest.len(), rest))
    }

    /// Whether a line's content can only begin a plain or quoted mapping key
    /// (not an indicator: a sequence entry, a flow collection, a tag, an
    /// anchor or alias, a block scalar, a tab).
    fn begins_key(rest: &str) -> bool {
        rest.bytes()
            .next()
            .is_some_and(|b| !b"-?:,[]{}#&*!|>%@`\t".contains(&b) && !b.is_ascii_whitespace())
    }

    /// Whether a line ends the document or begins another.
    fn another_document(line: &str) -> bool {
        line.starts_with("---") || line.starts_with("...") || line.starts_with('%')
    }

    fn find(text: &str) -> Option<Cut> {
        let mut lines = lines(text);
        // The top-level `services:` key, its value on the lines below.
        for (_, line) in lines.by_ref() {
            if line.starts_with('%') {
                return None; // a directive
            }
            if let Some(after) = line.strip_prefix("services:") {
                let after = after.trim_start_matches(' ');
                if after.is_empty() || after.starts_with('#') {
                    break;
                }
                return None;
            }
        }
        let mut indent = None;
        let mut starts = Vec::new();
        let mut end = text.len();
        for (at, line) in lines.by_ref() {
            let Some((n, rest)) = content(line) else {
                continue;
            };
            let k = *indent.get_or_insert(n);
            if k == 0 || (n == k && !begins_key(rest)) {
                return None;
            }
            if n == k {
                starts.push(at);
            } else if n < k {
                if n > 0 || another_document(line) {
                    return None;
                }
                end = at;
                break;
            }
        }
        // What follows must be more keys of the same document.
        if lines.any(|(_, line)| another_document(line)) {
            return None;
        }
        let half = end / 2;
        let middle = *starts.iter().skip(1).min_by_key(|at| at.abs_diff(half))?;
        Some(Cut { middle, end })
    }

    /// The tree of `text`, read in parts; `None` where the parts would not
    /// give the tree of the whole (then the document is read whole).
    pub(super) fn parse(text: &str) -> Option<Node> {
        let cut = find(text)?;
        // The second part's entries sit two levels deep: in the root mapping,
        // then in `services`.
        let (first, second) = std::thread::scope(|scope| {
            // Without a second thread the document is read whole.
            let second = std::thread::Builder::new()
                .spawn_scoped(scope, || {
                    parse_at(&text[cut.middle..cut.end], cut.middle, 2)
                })
                .ok()?;
            let first = parse_at(&text[..cut.middle], 0, 0);
            match second.join() {
                Ok(second) => Some((first, second)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })?;
        let rest = parse_at(&text[cut.end..], cut.end, 0);
        join(first, second, rest)
    }

    fn join(first: Read, second: Read, rest: Read) -> Option<Node> {
        let parts = [&first, &second, &rest];
        if parts.iter().any(|p| !p.problems.is_empty())
            || parts.iter().map(|p| p.nodes).sum::<usize>() > MAX_NODES
        {
            return None;
        }
        let mut root = first.root?;
        let Value::Map(top) = &mut root.value else {
            return None;
        };
        let (key, services) = top.last_mut()?;
        if key.name != "services" {
            return None;
        }
        let Value::Map(entries) = &mut services.value else {
            return None;
        };
        let Node {
            span,
            value: Value::Map(more),
        } = second.root?
        else {
            return None;
        };
        entries.extend(more);
        services.span.end = span.end;
        root.span.end = span.end;
        let mut names =
            foldhash::HashSet::with_capacity_and_hasher(entries.len(), Default::default());
        if !entries.iter().all(|(k, _)| names.insert(k.name.as_str())) {
            return None;
        }
        if let Some(rest) = rest.root {
            let Value::Map(more) = rest.value else {
                return None;
            };
            if more
                .iter()
                .any(|(k, _)| top.iter().any(|(t, _)| t.name == k.name))
            {
                return None;
            }
            top.extend(more);
            root.span.end = rest.span.end;
        }
        Some(root)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Documents as users write them, and the ones a cut must not change,
        /// each with whether it is read in parts (else it must be read whole).
        fn documents() -> Vec<(bool, String)> {
            let entry = |i: usize| {
                format!(
                    "  s{i}:\n    command: server\n    args: [--port, \"{p}\"]\n    env:\n      MODE: prod # mode\n    ports:\n      - container_port: {p}\n",
                    p = 20000 + i
                )
            };
            let many = |n: usize| (0..n).map(entry).collect::<String>();
            let more = |n: usize| (n..2 * n).map(entry).collect::<String>();
            let head =
                "# a deployment\nversion: \"1.0.0\"\nproject: big\nservices:  # all of them\n";
            // Every construct that spans lines, valid, in every entry.
            let spanning = (0..400)
                .map(|i| {
                    format!(
                        "  t{i}:\n    command: |\n      echo one\n      t{i}x: not a key\n    description: \"a long\n      quoted line\"\n    note: plain\n      continued\n    args: [a,\n      b]\n# a comment at the margin\n\n  \"q{i}\": ~\n  r{i}:   \n"
                    )
                })
                .collect::<String>();
            vec![
                (true, format!("{head}{spanning}")),
                (true, format!("{head}{}", many(600))),
                (
                    true,
                    format!("---\n{head}{}settings:\n  data_dir: /tmp\n", many(600)),
                ),
                (true, format!("{head}{}\n# the end\n", many(600))),
                (true, format!("{head}{}{}", many(450), more(450))),
                (
                    true,
                    format!(
                        "{head}{}  s9999: {{name: \"héllo wörld\"}}\n{}",
                        many(300),
                        more(300)
                    ),
                ),
                (
                    true,
                    format!("{head}{}\r\n", many(600).replace('\n', "\r\n")),
                ),
                // A key in two parts.
                (
                    false,
                    format!("{head}{}secrets: [A]\nproject: again\n", many(600)),
                ),
                (false, format!("{head}{}{}", many(450), many(450))),
                // A second document, a directive.
                (false, format!("{head}{}---\nother: doc\n", many(600))),
                (false, format!("%YAML 1.2\n---\n{head}{}", many(600))),
                // An alias of an anchor in the other part.
                (
                    false,
                    format!("x: &x {{a: 1}}\n{head}{}  last: *x\n", many(600)),
                ),
                // Malformed: what a cut must never make valid.
                (
                    false,
                    format!(
                        "{head}{}  block: |\n    line one\n  two\n{}",
                        many(300),
                        more(300)
                    ),
                ),
                (
                    false,
                    format!(
                        "{head}{}  q: \"open\n  s: closed\"\n{}",
                        many(300),
                        more(300)
                    ),
                ),
                (
                    false,
                    format!("{head}{}  f: {{a: 1,\n  b: 2}}\n{}", many(300), more(300)),
                ),
                (
                    false,
                    format!("{head}{}", many(600).replace("  s1", "\ts1")),
                ),
                (false, format!("{head}{}  - item\n", many(600))),
                (false, format!("{head}{}  bad: [\n", many(600))),
            ]
        }

        #[test]
        fn parts_give_the_tree_the_whole_gives() {
            for (expected, doc) in documents() {
                assert!(doc.len() >= MIN_BYTES, "{}", doc.len());
                let whole = parse_at(&doc, 0, 0);
                let read = parse(&doc);
                assert_eq!(read.is_some(), expected, "read in parts: {}", &doc[..200]);
                match read {
                    Some(tree) => {
                        assert!(whole.problems.is_empty(), "{:?}", whole.problems);
                        assert_eq!(
                            format!("{tree:?}"),
                            format!("{:?}", whole.root.expect("a tree")),
                            "{}",
                            &doc[..200]
                        );
                    }
                    None => {
                        // Read whole, as a document with a problem or one
                        // that does not cut cleanly must be.
                        let (tree, problems) = super::super::parse(&doc);
                        assert_eq!(format!("{tree:?}"), format!("{:?}", whole.root));
                        assert_eq!(format!("{problems:?}"), format!("{:?}", whole.problems));
                    }
                }
            }
        }

        #[test]
        fn the_cut_falls_between_entries_near_the_middle() {
            let doc = "services:\n  a: 1\n  b: 2\n  c: 3\n  d: 4\nnext: 5\n";
            let cut = find(doc).expect("a cut");
            assert_eq!(&doc[cut.end..], "next: 5\n");
            assert!(doc[cut.middle..].starts_with("  b: 2"), "{cut:?}");
        }
    }
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
