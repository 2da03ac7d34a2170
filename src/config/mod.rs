//! The configuration language: `deploy-code.yaml` is a minijinja template,
//! rendered (strict undefined), parsed as YAML with a location for every node,
//! checked against the schema (every problem at once, each with its span and a
//! help line) and lowered to [`crate::model::DesiredState`].

use std::path::{Path, PathBuf};

pub mod check;
mod de;
pub mod diag;
pub mod lower;
pub mod schema;
pub mod template;
pub mod yaml;

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::sync::Arc;

use diag::{Kind, Origin, Problem, ProblemReport};

/// The largest configuration file accepted, bytes. Larger files are refused
/// before they are read.
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The most problems reported for one file; the rest are counted.
pub const MAX_PROBLEMS: usize = 200;

use crate::model::DesiredState;

/// What loading needs from the command line and the environment.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub path: PathBuf,
    /// `--var KEY=VALUE`, highest precedence.
    pub vars: Vec<(String, String)>,
    /// `--var-file FILE`, YAML mappings; later files win.
    pub var_files: Vec<PathBuf>,
    /// Accept a configuration with no services (`--allow-empty`): an apply of
    /// it destroys everything the state records.
    pub allow_empty: bool,
}

/// A loaded, valid configuration.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// Absolute path of the config file.
    pub path: PathBuf,
    pub desired: DesiredState,
    /// The rendered YAML with every secret replaced by `(sensitive)`: safe to store
    /// in the state's history and to print.
    pub redacted_render: String,
    /// The rendered YAML as a template that renders it again, with each secret
    /// read anew by name (`secret('NAME')`) and the rest verbatim: what the
    /// history keeps for `rollback` to re-apply. It holds no plaintext.
    pub replay_render: String,
}

impl LoadedConfig {
    /// The directory relative paths in the config resolve against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// `sha256:` over the redacted rendering plus every secret's digest under the
    /// current key: changes whenever the rendered configuration or a secret changes.
    /// Call after `desired.rekey(..)` so digests use the state's key.
    pub fn config_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.redacted_render.as_bytes());
        for spec in self.desired.services.values() {
            h.update(spec.spec_hash().as_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// Every problem found in a configuration, each a diagnostic with its span.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.summary())]
pub struct ConfigError {
    pub problems: Vec<ProblemReport>,
}

impl ConfigError {
    fn summary(&self) -> String {
        match self.problems.len() {
            1 => "the configuration is invalid: 1 problem".to_owned(),
            n => format!("the configuration is invalid: {n} problems"),
        }
    }

    /// The codes of the problems (`E002::unknown_key`), in order.
    pub fn codes(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("{}::{}", p.kind().code(), p.kind().slug()))
            .collect()
    }
}

impl crate::error::Coded for ConfigError {
    /// The code of the problems when they share one (E001 for a missing
    /// file), else E002.
    fn error_code(&self) -> crate::error::Code {
        let codes: BTreeSet<crate::error::Code> =
            self.problems.iter().map(|p| p.kind().code()).collect();
        match (codes.len(), codes.first()) {
            (1, Some(c)) => *c,
            _ => crate::error::Code::E002,
        }
    }

    /// Each problem has its own.
    fn help_text(&self) -> Option<String> {
        None
    }
}

impl miette::Diagnostic for ConfigError {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(
            crate::error::Coded::error_code(self).diagnostic_code(),
        ))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        Some(Box::new(
            self.problems.iter().map(|r| r as &dyn miette::Diagnostic),
        ))
    }
}

/// Renders, parses, validates and lowers the configuration. Sensitive values are
/// digested under a provisional key; `desired.rekey(state_key)` re-digests them.
pub fn load(opts: &LoadOptions) -> Result<LoadedConfig, ConfigError> {
    let name = opts.path.display().to_string();
    let failed = |kind: Kind, what: String, help: &str| ConfigError {
        problems: vec![ProblemReport::new(
            Problem::new(kind, what).help(help).origin(Origin::None),
            None,
        )],
    };
    let not_found = |what: String, help: &str| failed(Kind::NotFound, what, help);
    let unreadable = |what: String, help: &str| failed(Kind::Unreadable, what, help);
    let meta = match std::fs::metadata(&opts.path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_found(
                format!("the configuration file `{name}` does not exist"),
                "create it (see examples/quickstart/deploy-code.yaml), or name another file with `-c FILE` or `DEPLOY_CODE_CONFIG`",
            ));
        }
        Err(e) => {
            return Err(unreadable(
                format!("cannot read the configuration file `{name}`: {e}"),
                "check the file's permissions",
            ));
        }
    };
    if meta.is_dir() {
        return Err(unreadable(
            format!("`{name}` is a directory, not a configuration file"),
            "name the YAML file itself with `-c FILE`",
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ConfigError {
            problems: vec![ProblemReport::new(
                Problem::new(
                    Kind::TooLarge,
                    format!(
                        "the configuration file `{name}` has {} bytes, more than the limit of {} MiB",
                        meta.len(),
                        MAX_FILE_BYTES / (1024 * 1024)
                    ),
                )
                .help("generate repeated services with a template loop, or split the deployment into several configurations")
                .origin(Origin::None),
                None,
            )],
        });
    }
    let bytes = std::fs::read(&opts.path).map_err(|e| {
        unreadable(
            format!("cannot read the configuration file `{name}`: {e}"),
            "check the file's permissions",
        )
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let at = shown
                .char_indices()
                .map(|(i, _)| i)
                .find(|i| *i >= at)
                .unwrap_or(shown.len().saturating_sub(1));
            let problem = Problem::new(Kind::YamlSyntax, "the file is not valid UTF-8 text")
                .label(at..at, "invalid byte here")
                .help("save the file as UTF-8")
                .origin(Origin::Template);
            return Err(finish(vec![problem], &name, &shown, &shown));
        }
    };
    let inputs = template::Inputs::from_process(opts.vars.clone(), opts.var_files.clone());
    load_text_with(&text, &opts.path, &inputs, opts.allow_empty)
}

/// Loads a configuration from text, as if read from `path` (used for names in
/// diagnostics and to resolve relative paths). Reads the process environment.
pub fn load_from_str(
    text: &str,
    path: &Path,
    opts: &LoadOptions,
) -> Result<LoadedConfig, ConfigError> {
    let inputs = template::Inputs::from_process(opts.vars.clone(), opts.var_files.clone());
    load_text_with(text, path, &inputs, opts.allow_empty)
}

/// Loads a configuration from text with explicit inputs (no process environment).
/// A configuration with no services is refused.
pub fn load_text(
    text: &str,
    path: &Path,
    inputs: &template::Inputs,
) -> Result<LoadedConfig, ConfigError> {
    load_text_with(text, path, inputs, false)
}

/// [`load_text`], accepting a configuration with no services when `allow_empty`
/// (see [`LoadOptions::allow_empty`]).
pub fn load_text_with(
    text: &str,
    path: &Path,
    inputs: &template::Inputs,
    allow_empty: bool,
) -> Result<LoadedConfig, ConfigError> {
    let name = path.display().to_string();
    let base = std::env::current_dir().unwrap_or_default();
    let abs_path = lower::absolute(&base, path);
    let base_dir = abs_path.parent().map(Path::to_path_buf).unwrap_or(base);
    if text.len() as u64 > MAX_FILE_BYTES {
        let p = Problem::new(
            Kind::TooLarge,
            format!(
                "the configuration is larger than the limit of {} MiB",
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        )
        .help("generate repeated services with a template loop, or split the deployment")
        .origin(Origin::None);
        return Err(finish(vec![p], &name, "", ""));
    }
    let secrets = template::Secrets::default();
    let rendered = if template::is_template(text) {
        match template::render(text, &name, inputs, &secrets) {
            Ok(r) => r,
            Err(problems) => return Err(finish(problems, &name, text, text)),
        }
    } else {
        text.to_owned()
    };

    let mut problems = Vec::new();
    let (root, yaml_problems) = yaml::parse(&rendered);
    let mut root = root.unwrap_or(yaml::Node {
        span: 0..0,
        value: yaml::Value::Map(Vec::new()),
    });
    if matches!(root.value, yaml::Value::Null) {
        root.value = yaml::Value::Map(Vec::new());
    }
    problems.extend(yaml_problems);
    check::classify(&mut problems);
    if problems
        .iter()
        .any(|p| matches!(p.kind, Kind::YamlSyntax | Kind::TooLarge | Kind::TooDeep))
    {
        return Err(finish(problems, &name, text, &rendered));
    }

    // ${VAR} interpolation, then the schema.
    let declared: BTreeSet<String> = match root.get("secrets").map(|n| &n.value) {
        Some(yaml::Value::Seq(items)) => items
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect(),
        _ => BTreeSet::new(),
    };
    lower::interpolate(&mut root, &inputs.env, &declared, &secrets, &mut problems);
    lower::check_secret_places(&root, &mut problems);
    let beside = rendered.len() >= CHECK_BESIDE_READ_BYTES;
    let (schema_found, read) = check_and_read(&root, allow_empty, &rendered, beside);
    problems.extend(schema_found);
    let Read {
        file,
        services,
        problems: read_problems,
    } = read;
    problems.extend(read_problems);
    let lowering = lower::Lowering {
        root: &root,
        file,
        services,
        base_dir,
        secrets: &secrets,
        key: crate::model::SecretKey::random(),
    };
    let desired = lowering.lower(&mut problems);
    match desired {
        Some(desired) if problems.is_empty() => {
            let (redacted_render, _) = secrets.substitute(&rendered, false);
            Ok(LoadedConfig {
                path: abs_path,
                desired,
                redacted_render,
                replay_render: secrets.replayable(&rendered),
            })
        }
        _ => Err(finish(problems, &name, text, &rendered)),
    }
}

/// The typed definitions of a document: its settings and each service.
struct Read<'a> {
    file: schema::ConfigFile,
    services: Vec<lower::Entry<'a>>,
    /// What reading them found, besides what the schema check reported.
    problems: Vec<Problem>,
}

/// A configuration at least this large keeps a second core busy while it
/// loads: it is checked against the schema on a second thread while this one
/// reads its typed definitions (and `plan` reads its local processes then).
pub(crate) const LARGE_BYTES: usize = 64 * 1024;

/// Documents at least this large are checked against the schema on a second
/// thread while this one reads their typed definitions.
const CHECK_BESIDE_READ_BYTES: usize = LARGE_BYTES;

/// The schema check of `root` (its problems), and its typed definitions,
/// read around what the check reported.
///
/// Reading depends on the check only where the check reported something.
/// With `beside` both run at once, reading as if the check found nothing, and
/// where it did find something the definitions are read again around its
/// problems. The result is the same either way.
fn check_and_read<'a>(
    root: &'a yaml::Node,
    allow_empty: bool,
    rendered: &str,
    beside: bool,
) -> (Vec<Problem>, Read<'a>) {
    let check = || {
        let mut found = Vec::new();
        check::check_document(root, rendered, &mut found);
        found
    };
    let (found, read) = if beside {
        std::thread::scope(|scope| {
            let checking = scope.spawn(check);
            let read = read_typed(root, &[], allow_empty, rendered);
            let found = match checking.join() {
                Ok(found) => found,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            (found, Some(read))
        })
    } else {
        (check(), None)
    };
    let read = match read {
        Some(read) if found.is_empty() => read,
        _ => read_typed(root, &found, allow_empty, rendered),
    };
    (found, read)
}

/// The typed definitions of `root`, less the values the schema check's
/// problems (`schema_found`) point at.
fn read_typed<'a>(
    root: &'a yaml::Node,
    schema_found: &[Problem],
    allow_empty: bool,
    rendered: &str,
) -> Read<'a> {
    let mut problems = Vec::new();
    let schema_problems: HashSet<Range<usize>> = schema_found
        .iter()
        .filter_map(|p| p.labels.first().map(|(s, _)| s.clone()))
        .collect();
    let problem_starts: BTreeSet<usize> = schema_problems.iter().map(|s| s.start).collect();
    let reported_in = |span: &Range<usize>| problem_starts.range(span.clone()).next().is_some();

    // Typed settings (without the services), then each service.
    let services_node = root.get("services");
    let mut skip = schema_problems.clone();
    skip.extend(services_node.map(|n| n.span.clone()));
    let settings_reported = problem_starts
        .iter()
        .any(|at| !services_node.is_some_and(|n| n.span.contains(at)));
    let file: schema::ConfigFile = typed(
        root,
        &skip,
        settings_reported,
        &mut Vec::new(),
        &mut problems,
    )
    .unwrap_or_default();
    let mut services = Vec::new();
    match services_node.map(|n| &n.value) {
        Some(yaml::Value::Map(entries)) if !entries.is_empty() => {
            for (key, node) in entries {
                let dirty = reported_in(&node.span) || schema_problems.contains(&key.span);
                let def = if matches!(node.value, yaml::Value::Null) {
                    Some(schema::Service::default())
                } else {
                    let mut path = vec!["services".to_owned(), key.name.clone()];
                    typed(node, &schema_problems, dirty, &mut path, &mut problems)
                };
                services.push(lower::Entry {
                    key,
                    node,
                    def,
                    dirty,
                });
            }
        }
        None | Some(yaml::Value::Null | yaml::Value::Map(_))
            if !allow_empty && matches!(root.value, yaml::Value::Map(_)) =>
        {
            problems.push(no_services(services_node, rendered));
        }
        _ => {}
    }
    Read {
        file,
        services,
        problems,
    }
}

/// `node` (less the values at `skip`) as a `T`. Where the schema check already
/// reported a problem inside `node` (`reported`), a failure is expected and
/// not repeated; any other failure is a problem at the value `T` refuses.
fn typed<T: serde::de::DeserializeOwned>(
    node: &yaml::Node,
    skip: &HashSet<Range<usize>>,
    reported: bool,
    path: &mut Vec<String>,
    out: &mut Vec<Problem>,
) -> Option<T> {
    let read = |skip: &HashSet<Range<usize>>| de::from_node::<T>(node, skip);
    let error = match read(skip) {
        Ok(v) => return Some(v),
        Err(_) if reported => return None,
        Err(e) => e,
    };
    // The value to blame: the deepest one whose removal lets the rest read, or
    // changes the failure (to a required key missing, say).
    let error = error.to_string();
    let mut at = node;
    'descend: loop {
        let children: Vec<(String, &yaml::Node)> = match &at.value {
            yaml::Value::Map(entries) => entries.iter().map(|(k, v)| (k.name.clone(), v)).collect(),
            yaml::Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => Vec::new(),
        };
        for (name, child) in children {
            if skip.contains(&child.span) {
                continue;
            }
            let mut without = skip.clone();
            without.insert(child.span.clone());
            if read(&without).err().is_none_or(|e| e.to_string() != error) {
                path.push(name);
                at = child;
                continue 'descend;
            }
        }
        break;
    }
    let place = if path.is_empty() {
        "the document".to_owned()
    } else {
        format!("`{}`", path.join("."))
    };
    out.push(
        Problem::new(
            Kind::InvalidValue,
            format!("{place} cannot be used: {error}"),
        )
        .label(at.span.clone(), "this value")
        .help("see the key's type and range in docs/configuration.md"),
    );
    None
}

/// The problem of a configuration with no services.
fn no_services(services: Option<&yaml::Node>, rendered: &str) -> Problem {
    let problem = Problem::new(Kind::NoServices, "the configuration defines no services").help(
        "add services under `services:`; to mean no services (an apply then destroys everything the state records), pass `--allow-empty`",
    );
    match services {
        Some(node) => problem.label(node.span.clone(), "no services here"),
        None if rendered.trim().is_empty() => problem.origin(Origin::None),
        None => problem.label(0..0, "no `services:` in this file"),
    }
}

/// Binds problems to their sources and sorts them by position.
fn finish(mut problems: Vec<Problem>, name: &str, source: &str, rendered: &str) -> ConfigError {
    problems.sort_by_key(|p| (p.origin != Origin::None, p.position()));
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(
            Problem::new(
                Kind::TooManyProblems,
                format!("{more} more problems are not shown"),
            )
            .help("fix the problems above and validate again")
            .origin(Origin::None),
        );
    }
    let template_src =
        miette::NamedSource::new(name, Arc::new(source.to_owned())).with_language("yaml");
    let rendered_src = if rendered == source {
        template_src.clone()
    } else {
        miette::NamedSource::new(format!("{name} (rendered)"), Arc::new(rendered.to_owned()))
            .with_language("yaml")
    };
    ConfigError {
        problems: problems
            .into_iter()
            .map(|p| {
                let src = match &p.origin {
                    Origin::None => None,
                    Origin::Template => Some(template_src.clone()),
                    Origin::Rendered => Some(rendered_src.clone()),
                    Origin::File { name, text } => Some(
                        miette::NamedSource::new(name.clone(), text.clone()).with_language("yaml"),
                    ),
                };
                let src = if p.labels.is_empty() { None } else { src };
                ProblemReport::new(p, src)
            })
            .collect(),
    }
}

/// The state file: `--state`/`DEPLOY_CODE_STATE`, else `state.path` from the
/// config, else `.deploy-code/state.db` beside the config.
pub fn state_path(
    explicit: Option<&Path>,
    loaded: Option<&LoadedConfig>,
    config_path: &Path,
) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = loaded.and_then(|l| l.desired.settings.state_path.clone()) {
        return p;
    }
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(".deploy-code").join("state.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value the schema walk let through but the type refuses is reported at
    /// that value, never dropped.
    #[test]
    fn a_value_the_type_refuses_is_a_problem_at_that_value() {
        let text = "name: x\nports:\n  - container_port: 80\n  - container_port: 70000\n";
        let (root, _) = yaml::parse(text);
        let root = root.unwrap();
        let ports = root.get("ports").unwrap();
        let mut out = Vec::new();
        let mut path = vec!["ports".to_owned()];
        let read: Option<Vec<schema::PortDef>> =
            typed(ports, &HashSet::new(), false, &mut path, &mut out);
        assert!(read.is_none());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].kind, Kind::InvalidValue);
        assert!(
            out[0]
                .message
                .starts_with("`ports.1.container_port` cannot be used: "),
            "{}",
            out[0].message
        );
        assert_eq!(&text[out[0].labels[0].0.clone()], "70000");
        assert!(!out[0].help.is_empty());

        // Already reported by the schema walk: not repeated.
        let mut out = Vec::new();
        let read: Option<Vec<schema::PortDef>> =
            typed(ports, &HashSet::new(), true, &mut Vec::new(), &mut out);
        assert!(read.is_none() && out.is_empty());
    }

    /// Checking beside reading (as a large document is) finds exactly what
    /// checking first finds, on valid and broken documents alike.
    #[test]
    fn checking_beside_reading_finds_what_checking_first_finds() {
        let docs = [
            "version: \"1.0.0\"\nproject: p\nservices:\n  a: {command: x, ports: [{container_port: 80}]}\n",
            "version: \"1.0.0\"\nproject: p\nservices:\n  a: {command: x, replicas: many}\n  b: {command: y}\n",
            "version: \"1.0.0\"\nproject: p\nservices:\n  a: {command: x, ports: [{container_port: 70000}]}\n",
            "version: \"1.0.0\"\nproject: p\nservices:\n  a: {comand: x}\n  b: {command: y, health_check: {path: 3}}\n",
            "version: 2\nproject: [p]\nservices:\n  a: {command: x}\n",
            "version: \"1.0.0\"\nproject: p\nservices: {}\n",
            "version: \"1.0.0\"\nproject: p\n",
        ];
        let summary = |found: &[Problem], read: &Read| {
            let all: Vec<String> = found
                .iter()
                .chain(&read.problems)
                .map(|p| format!("{:?} {} {:?}", p.kind, p.message, p.labels))
                .collect();
            let services: Vec<(String, bool, bool)> = read
                .services
                .iter()
                .map(|e| (e.key.name.clone(), e.def.is_some(), e.dirty))
                .collect();
            (all, services, format!("{:?}", read.file))
        };
        for doc in docs {
            let (root, problems) = yaml::parse(doc);
            assert!(problems.is_empty(), "{doc}: {problems:?}");
            let root = root.unwrap();
            let (found, read) = check_and_read(&root, false, doc, false);
            let first = summary(&found, &read);
            let (found, read) = check_and_read(&root, false, doc, true);
            assert_eq!(summary(&found, &read), first, "{doc}");
        }
    }
}
