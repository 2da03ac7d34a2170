//! Rendering the configuration as a minijinja template.
//!
//! Strict undefined: a variable that no source defines is an error pointing into
//! the template. Variables, lowest precedence first: the config's own
//! `variables:` mapping, `--var-file` files (later wins), environment variables
//! `DEPLOY_CODE_VAR_<NAME>` (name lowercased), `--var KEY=VALUE`.
//!
//! `secret("NAME")` never puts the plaintext into the rendered text: it returns
//! an opaque token (`__DC_SECRET_<n>__`) and the plaintext stays in the
//! [`Secrets`] table. After parsing, a string holding a token becomes a
//! sensitive value; `redacted_render` shows `(sensitive)` in its place.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value as JValue};

use super::diag::{Kind, Origin, Problem};
use super::yaml::{self, Node, Value};

/// Fuel for one rendering (about one unit per template instruction): bounds the
/// time a runaway loop can take.
pub(crate) const FUEL: u64 = 20_000_000;
/// The largest rendered text accepted, bytes.
pub(crate) const MAX_RENDERED_BYTES: usize = 64 * 1024 * 1024;

const TOKEN_PREFIX: &str = "__DC_SECRET_";
const TOKEN_SUFFIX: &str = "__";

/// Plaintexts of the secrets a rendering used, by token index.
#[derive(Clone, Default)]
pub struct Secrets {
    inner: Arc<Mutex<SecretsInner>>,
}

#[derive(Default)]
struct SecretsInner {
    values: Vec<(String, String)>,
    missing: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    /// Registers a plaintext and returns its token (one token per name).
    pub fn token(&self, name: &str, plaintext: String) -> String {
        crate::redact::register(&plaintext);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let idx = match inner.values.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                inner.values.push((name.to_owned(), plaintext));
                inner.values.len() - 1
            }
        };
        format!("{TOKEN_PREFIX}{idx}{TOKEN_SUFFIX}")
    }

    fn missing(&self, name: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.missing.push(name.to_owned());
    }

    fn take_missing(&self) -> Vec<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut inner.missing)
    }

    pub fn is_empty(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values
            .is_empty()
    }

    /// `s` as a template that renders it again: the text verbatim (in
    /// `{% raw %}` blocks) and each token as the `secret('NAME')` call that
    /// made it, so that rendering it reads each secret anew by name and
    /// yields a sensitive value where the token stood.
    pub(crate) fn replayable(&self, s: &str) -> String {
        // A literal `endraw` would close the raw block: it is written as an
        // expression instead.
        let raw = |text: &str| text.replace("endraw", "end{% endraw %}{{ \"raw\" }}{% raw %}");
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(s.len() + 32);
        out.push_str("{% raw %}");
        let mut rest = s;
        while let Some(at) = rest.find(TOKEN_PREFIX) {
            out.push_str(&raw(&rest[..at]));
            let after = &rest[at + TOKEN_PREFIX.len()..];
            let named = token(after, &inner.values);
            match named {
                Some(((name, _), len)) => {
                    let quoted = serde_json::to_string(name).expect("a string");
                    out.push_str(&format!(
                        "{{% endraw %}}{{{{ secret({quoted}) }}}}{{% raw %}}"
                    ));
                    rest = &after[len..];
                }
                None => {
                    out.push_str(TOKEN_PREFIX);
                    rest = after;
                }
            }
        }
        out.push_str(&raw(rest));
        out.push_str("{% endraw %}");
        out
    }

    /// The names of the secrets whose tokens `s` holds, in order (a secret
    /// of `${VAR}` is named `$VAR`): what a diagnostic about a secret's
    /// value may say instead of the value.
    pub(crate) fn names(&self, s: &str) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut names = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find(TOKEN_PREFIX) {
            let after = &rest[at + TOKEN_PREFIX.len()..];
            let named = token(after, &inner.values);
            match named {
                Some(((name, _), len)) => {
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                    rest = &after[len..];
                }
                None => rest = after,
            }
        }
        names
    }

    /// Replaces every token in `s`: with the plaintext (`reveal`) or `(sensitive)`.
    /// Returns the new text and whether any token was found.
    pub(crate) fn substitute(&self, s: &str, reveal: bool) -> (String, bool) {
        if !s.contains(TOKEN_PREFIX) {
            return (s.to_owned(), false);
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        let mut found = false;
        while let Some(at) = rest.find(TOKEN_PREFIX) {
            out.push_str(&rest[..at]);
            let after = &rest[at + TOKEN_PREFIX.len()..];
            let value = token(after, &inner.values);
            match value {
                Some(((_, plain), len)) => {
                    found = true;
                    out.push_str(if reveal { plain } else { "(sensitive)" });
                    rest = &after[len..];
                }
                None => {
                    out.push_str(TOKEN_PREFIX);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        (out, found)
    }
}

/// The secret named by the token whose prefix `after` follows, and the
/// length of the rest of that token (its index and suffix); `None` when
/// `after` does not continue a token.
fn token<'v>(after: &str, values: &'v [(String, String)]) -> Option<(&'v (String, String), usize)> {
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    let index = after[..digits].parse::<usize>().ok()?;
    if !after[digits..].starts_with(TOKEN_SUFFIX) {
        return None;
    }
    Some((values.get(index)?, digits + TOKEN_SUFFIX.len()))
}

/// Inputs to a rendering besides the template.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub vars: Vec<(String, String)>,
    pub var_files: Vec<PathBuf>,
    /// `DEPLOY_CODE_VAR_*` and every variable `env()`/`secret()` read.
    pub env: BTreeMap<String, String>,
}

impl Inputs {
    pub fn from_process(vars: Vec<(String, String)>, var_files: Vec<PathBuf>) -> Self {
        Self {
            vars,
            var_files,
            env: std::env::vars().collect(),
        }
    }
}

/// Whether the text uses template syntax at all.
pub(crate) fn is_template(source: &str) -> bool {
    source.contains("{{") || source.contains("{%") || source.contains("{#")
}

/// Renders `source`. On failure, the problems point into the template source.
pub fn render(
    source: &str,
    name: &str,
    inputs: &Inputs,
    secrets: &Secrets,
) -> Result<String, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut ctx: BTreeMap<String, JValue> = BTreeMap::new();

    // 1. the config's own `variables:` (a lenient first rendering).
    if source.contains("variables") {
        for (k, v) in declared_variables(source, name, inputs) {
            ctx.insert(k, v);
        }
    }
    // 2. var files.
    for file in &inputs.var_files {
        match std::fs::read_to_string(file) {
            Ok(text) => match yaml::parse(&text) {
                (
                    Some(Node {
                        value: Value::Map(entries),
                        ..
                    }),
                    p,
                ) if p.is_empty() => {
                    for (k, v) in entries {
                        ctx.insert(k.name, to_jinja(&v));
                    }
                }
                (None, p) if p.is_empty() => {}
                (root, p) => {
                    // The spans point into the var file itself.
                    let (span, why) = match p.first() {
                        Some(first) => (
                            first.labels.first().map_or(0..0, |(s, _)| s.clone()),
                            format!(": {}", first.message),
                        ),
                        None => {
                            let start = root.map_or(0, |r| r.span.start).min(text.len());
                            let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
                            (start..end, String::new())
                        }
                    };
                    let at = span.start.min(text.len());
                    let line = text[..at].matches('\n').count() + 1;
                    problems.push(
                        Problem::new(
                            Kind::VarFile,
                            format!(
                                "the variable file `{}` is not a YAML mapping (line {line}){why}",
                                file.display()
                            ),
                        )
                        .label(span, "here")
                        .origin(Origin::File {
                            name: file.display().to_string(),
                            text: std::sync::Arc::new(text.clone()),
                        })
                        .help("write the variables as `name: value` lines"),
                    );
                }
            },
            Err(e) => problems.push(
                Problem::new(
                    Kind::VarFile,
                    format!("cannot read the variable file `{}`: {e}", file.display()),
                )
                .origin(Origin::None)
                .help("check the path given to `--var-file`"),
            ),
        }
    }
    // 3. DEPLOY_CODE_VAR_<NAME>.
    for (k, v) in &inputs.env {
        if let Some(name) = k.strip_prefix("DEPLOY_CODE_VAR_")
            && !name.is_empty()
        {
            ctx.insert(name.to_lowercase(), scalar(v));
        }
    }
    // 4. --var.
    for (k, v) in &inputs.vars {
        ctx.insert(k.clone(), scalar(v));
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let env = environment(inputs, secrets, UndefinedBehavior::Strict);
    let result = env
        .template_from_named_str(name, source)
        .and_then(|t| t.render(JValue::from(ctx)));
    match result {
        Ok(text) if text.len() > MAX_RENDERED_BYTES => Err(vec![
            Problem::new(
                Kind::TooLarge,
                format!(
                    "the rendered configuration is larger than {} MiB",
                    MAX_RENDERED_BYTES / (1024 * 1024)
                ),
            )
            .origin(Origin::Template)
            .help("generate fewer services, or split the deployment into several configurations"),
        ]),
        Ok(mut text) => {
            // minijinja drops the final newline; keep the file's.
            if source.ends_with('\n') && !text.ends_with('\n') {
                text.push('\n');
            }
            Ok(text)
        }
        Err(err) => Err(vec![template_problem(&err, source, secrets)]),
    }
}

fn environment<'s>(
    inputs: &Inputs,
    secrets: &Secrets,
    undefined: UndefinedBehavior,
) -> Environment<'s> {
    let mut env = Environment::new();
    env.set_undefined_behavior(undefined);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(64);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    let vars = inputs.env.clone();
    env.add_function(
        "env",
        move |name: String, default: Option<JValue>| -> Result<JValue, Error> {
            if super::lower::looks_secret(&name) {
                warn_env_secret(&name);
            }
            match vars.get(&name) {
                Some(v) => Ok(JValue::from(v.clone())),
                None => default.ok_or_else(|| {
                    Error::new(
                        ErrorKind::UndefinedError,
                        format!("environment variable `{name}` is not set"),
                    )
                }),
            }
        },
    );
    let vars = inputs.env.clone();
    let table = secrets.clone();
    let lenient = undefined != UndefinedBehavior::Strict;
    env.add_function("secret", move |name: String| -> Result<JValue, Error> {
        match read_secret(&name, &vars) {
            Some(plain) => Ok(JValue::from(table.token(&name, plain))),
            None if lenient => Ok(JValue::from(String::new())),
            None => {
                table.missing(&name);
                Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("the secret `{name}` is not set"),
                ))
            }
        }
    });
    env
}

/// Warns, once per name and process, that `env('NAME')` of a variable named
/// like a secret goes in as plain text.
fn warn_env_secret(name: &str) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.iter().any(|n| n == name) {
        return;
    }
    warned.push(name.to_owned());
    tracing::warn!(
        "`env('{name}')` looks like a secret but is used as plain text: its value would be stored, shown and diffed as is; use `secret('{name}')` to keep it as a digest and redact it everywhere"
    );
}

/// A secret's plaintext: env var `NAME`, else the file named by `NAME_FILE`, else
/// `$DEPLOY_CODE_SECRETS_DIR/NAME`. A trailing newline of a file is dropped.
pub(crate) fn read_secret(name: &str, env: &BTreeMap<String, String>) -> Option<String> {
    if let Some(v) = env.get(name) {
        return Some(v.clone());
    }
    let from_file = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.strip_suffix('\n').map(str::to_owned).unwrap_or(s))
    };
    if let Some(path) = env.get(&format!("{name}_FILE"))
        && let Some(v) = from_file(PathBuf::from(path))
    {
        return Some(v);
    }
    if let Some(dir) = env.get("DEPLOY_CODE_SECRETS_DIR")
        && !name.contains('/')
        && !name.contains("..")
    {
        return from_file(PathBuf::from(dir).join(name));
    }
    None
}

/// The top-level `variables:` block of the source, read before the rest is
/// rendered: its lines are rendered alone (so `env()` works, other variables do
/// not) and parsed as YAML.
fn declared_variables(source: &str, name: &str, inputs: &Inputs) -> Vec<(String, JValue)> {
    let mut block = String::new();
    let mut inside = false;
    for line in source.lines() {
        if inside {
            let top_level = !line.is_empty() && !line.starts_with([' ', '\t', '#']);
            if top_level {
                break;
            }
            block.push_str(line);
            block.push('\n');
        } else if line.trim_end() == "variables:" || line.starts_with("variables: ") {
            inside = true;
            block.push_str(line);
            block.push('\n');
        }
    }
    if block.is_empty() {
        return Vec::new();
    }
    let throwaway = Secrets::default();
    let env = environment(inputs, &throwaway, UndefinedBehavior::Chainable);
    let Ok(text) = env
        .template_from_named_str(name, &block)
        .and_then(|t| t.render(()))
    else {
        return Vec::new();
    };
    let (Some(root), _) = yaml::parse(&text) else {
        return Vec::new();
    };
    match root.get("variables").map(|v| &v.value) {
        Some(Value::Map(entries)) => entries
            .iter()
            .map(|(k, v)| (k.name.clone(), to_jinja(v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// A `--var` or environment value, read as a YAML scalar (`3` is a number).
fn scalar(s: &str) -> JValue {
    match yaml::parse(s) {
        (Some(n), p) if p.is_empty() && !matches!(n.value, Value::Map(_) | Value::Seq(_)) => {
            to_jinja(&n)
        }
        _ => JValue::from(s.to_owned()),
    }
}

fn to_jinja(n: &Node) -> JValue {
    match &n.value {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Int(i) => JValue::from(*i),
        Value::Float(f) => JValue::from(*f),
        Value::Str(s) => JValue::from(s.clone()),
        Value::Seq(items) => items.iter().map(to_jinja).collect(),
        Value::Map(entries) => JValue::from(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), to_jinja(v)))
                .collect::<BTreeMap<String, JValue>>(),
        ),
    }
}

fn template_problem(err: &Error, source: &str, secrets: &Secrets) -> Problem {
    let span = err
        .range()
        .filter(|r| {
            r.end <= source.len()
                && source.is_char_boundary(r.start)
                && source.is_char_boundary(r.end)
        })
        .or_else(|| err.line().map(|l| line_span(source, l)));
    let detail = err.detail().unwrap_or("").to_owned();
    let snippet = span
        .as_ref()
        .map(|s| source[s.clone()].trim().to_owned())
        .unwrap_or_default();
    let missing = secrets.take_missing();
    let (kind, message, label, help) = match err.kind() {
        ErrorKind::SyntaxError => (
            Kind::TemplateSyntax,
            format!("template syntax error: {}", if detail.is_empty() { "invalid syntax".to_owned() } else { detail.clone() }),
            "here".to_owned(),
            "fix the template tag; `{{ ... }}` prints a value and `{% ... %}` is a statement such as `for` or `if`, closed by `endfor`/`endif`".to_owned(),
        ),
        ErrorKind::UndefinedError if detail.starts_with("environment variable") => (
            Kind::UnsetVariable,
            detail.clone(),
            "used here".to_owned(),
            "set the environment variable, or give `env()` a default: `env(\"NAME\", \"value\")`".to_owned(),
        ),
        _ if err.kind() == ErrorKind::UndefinedError || detail.contains("is undefined") => {
            let var = detail
                .split('`')
                .nth(1)
                .filter(|_| detail.contains("is undefined"))
                .map(str::to_owned)
                .unwrap_or_else(|| undefined_name(&snippet));
            (
                Kind::UndefinedVariable,
                format!("undefined template variable `{var}`"),
                "not defined".to_owned(),
                format!(
                    "pass it with `--var {var}=VALUE`, a `--var-file`, or `DEPLOY_CODE_VAR_{}`, or declare a default under `variables:`",
                    var.to_uppercase()
                ),
            )
        }
        _ if !missing.is_empty() => (
            Kind::MissingSecret,
            format!("the secret `{}` is not set", missing[0]),
            "read here".to_owned(),
            format!(
                "set the environment variable `{0}`, point `{0}_FILE` at a file holding it, or put it in `$DEPLOY_CODE_SECRETS_DIR/{0}`",
                missing[0]
            ),
        ),
        ErrorKind::OutOfFuel => (
            Kind::TooLarge,
            "the template runs for too long".to_owned(),
            "inside this".to_owned(),
            "make the loops smaller; rendering is bounded to keep loading fast".to_owned(),
        ),
        _ => (
            Kind::TemplateError,
            format!("the template cannot be rendered: {}", if detail.is_empty() { err.kind().to_string() } else { detail.clone() }),
            "here".to_owned(),
            "fix the expression at this point".to_owned(),
        ),
    };
    let mut p = Problem::new(kind, message)
        .help(help)
        .origin(Origin::Template);
    if let Some(span) = span {
        p = p.label(span, label);
    }
    p
}

/// The identifier an undefined-value error is about: the first name in the
/// expression (`foo` of `foo.bar | upper`).
fn undefined_name(snippet: &str) -> String {
    let s = snippet
        .trim_start_matches("{{")
        .trim_start_matches("{%")
        .trim();
    let name: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    if name.is_empty() {
        snippet.to_owned()
    } else {
        name
    }
}

fn line_span(source: &str, line: usize) -> Range<usize> {
    let mut start = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return start..start + l.trim_end_matches('\n').len();
        }
        start += l.len();
    }
    source.len()..source.len()
}
