//! Declared inventory files (`--inventory FILE`) and their YAML form.
//!
//! One host at the top level, or `hosts:` a list of them:
//!
//! ```yaml
//! name: gpu-box
//! cpu_cores: 16
//! memory_mb: 65536
//! storage_gb: 500
//! gpus:
//!   - model: NVIDIA GeForce RTX 4090
//!     memory_mb: 24564
//! ports_in_use: [22, 5432]
//! ```
//!
//! A GPU's `index` defaults to its position in the list; `uuid` and
//! `free_memory_mb` are optional (a declared GPU is entirely free).

use std::collections::BTreeSet;
use std::path::Path;

use std::ops::Range;

use miette::{NamedSource, SourceSpan};
use serde::de::DeserializeOwned;

use crate::config::yaml::{self, Key, Node, Value};

use super::{Gpu, Host, Inventory, Source};

/// A problem with an inventory file, pointing into it where it can.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InventoryError {
    pub message: String,
    pub src: Option<NamedSource<String>>,
    pub span: Option<SourceSpan>,
    pub label: String,
    pub help: Option<String>,
}

impl crate::error::Coded for InventoryError {
    fn error_code(&self) -> crate::error::Code {
        crate::error::Code::E016
    }

    fn help_text(&self) -> Option<String> {
        self.help.clone()
    }
}

/// The code and help line from [`Coded`](crate::error::Coded), and the span in
/// the file when there is one.
impl miette::Diagnostic for InventoryError {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        use crate::error::Coded;
        Some(Box::new(self.error_code().diagnostic_code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display + 'a>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.src.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_with_span(Some(self.label.clone()), span),
        )))
    }
}

const HELP: &str = "an inventory file declares `name`, `cpu_cores`, `memory_mb`, `storage_gb`, \
optional `gpus: [{model, memory_mb}]` and `ports_in_use: [...]`, or `hosts:` a list of those; \
`deploy-code inventory > host.yaml` writes one for this host";

const HOST_KEYS: &[&str] = &[
    "name",
    "cpu_cores",
    "memory_mb",
    "storage_gb",
    "gpus",
    "ports_in_use",
];
const GPU_KEYS: &[&str] = &["index", "uuid", "model", "memory_mb", "free_memory_mb"];

/// Reads and checks an inventory file.
#[allow(clippy::result_large_err)] // built once per run, on the error path
pub fn load_file(path: &Path) -> Result<Inventory, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|e| InventoryError {
        message: format!("cannot read the inventory file `{}`: {e}", path.display()),
        src: None,
        span: None,
        label: String::new(),
        help: Some("check the path given to `--inventory`".into()),
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses inventory YAML; `name` is the file name used in messages.
///
/// The file is read by the configuration's span-keeping loader (one YAML
/// dialect), so that every problem points at the node it is about, not at the
/// first place its text happens to appear.
#[allow(clippy::result_large_err)] // built once per run, on the error path
pub fn parse(text: &str, name: &str) -> Result<Inventory, InventoryError> {
    let file = File { text, name };
    let (root, problems) = yaml::parse(text);
    if let Some(p) = problems.first() {
        let (span, label) = p
            .labels
            .first()
            .map_or((0..0, "here"), |(s, l)| (s.clone(), l.as_str()));
        return Err(file.fail(
            span,
            label,
            format!("invalid inventory file: {}", p.message),
        ));
    }
    let Some(root) = root else {
        return Err(file.fail(
            0..0,
            "not a mapping",
            "invalid inventory file: expected a mapping",
        ));
    };
    let hosts: Vec<&Node> = match root.get("hosts") {
        Some(list) => {
            file.entries(&root, "the inventory", &["hosts"])?;
            match &list.value {
                Value::Seq(items) => items.iter().collect(),
                _ => {
                    return Err(file.fail(
                        list.span.clone(),
                        "not a list",
                        "invalid inventory file: `hosts` must be a list of hosts",
                    ));
                }
            }
        }
        None => vec![&root],
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for node in hosts {
        let entries = file.entries(node, "a host", HOST_KEYS)?;
        let name_node = file.required(node, entries, "name")?;
        let name: String = file.value(name_node, "name")?;
        if !seen.insert(name.clone()) {
            return Err(InventoryError {
                message: format!("host `{name}` is declared twice"),
                help: Some("give every host a unique `name`".into()),
                ..file.fail(name_node.span.clone(), "second declaration", "")
            });
        }
        let cores = file.required(node, entries, "cpu_cores")?;
        let cpu_cores = match cores.value {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            _ => f64::NAN,
        };
        if !(cpu_cores.is_finite() && cpu_cores >= 0.0) {
            return Err(file.fail(
                cores.span.clone(),
                "here",
                format!("host `{name}`: `cpu_cores` must be a number >= 0"),
            ));
        }
        let memory_mb = file.value(file.required(node, entries, "memory_mb")?, "memory_mb")?;
        let storage_gb = file.value(file.required(node, entries, "storage_gb")?, "storage_gb")?;
        let mut gpus = Vec::new();
        let mut indexes = BTreeSet::new();
        for (pos, g) in file.items(node.get("gpus"), "gpus")?.iter().enumerate() {
            let fields = file.entries(g, "a GPU", GPU_KEYS)?;
            let index = match g.get("index") {
                Some(i) => file.value(i, "index")?,
                None => pos as u32,
            };
            if !indexes.insert(index) {
                return Err(InventoryError {
                    message: format!("host `{name}`: GPU index {index} is declared twice"),
                    help: Some("give each GPU a distinct `index`, or leave `index` out".into()),
                    ..file.fail(
                        g.get("index").unwrap_or(g).span.clone(),
                        "declared again here",
                        "",
                    )
                });
            }
            gpus.push(Gpu {
                index,
                uuid: g
                    .get("uuid")
                    .map(|u| file.value(u, "uuid"))
                    .transpose()?
                    .flatten(),
                model: file.value(file.required(g, fields, "model")?, "model")?,
                memory_mb: file.value(file.required(g, fields, "memory_mb")?, "memory_mb")?,
                free_memory_mb: g
                    .get("free_memory_mb")
                    .map(|f| file.value(f, "free_memory_mb"))
                    .transpose()?
                    .flatten(),
            });
        }
        let mut ports = file
            .items(node.get("ports_in_use"), "ports_in_use")?
            .iter()
            .map(|p| file.value::<u16>(p, "ports_in_use"))
            .collect::<Result<Vec<_>, _>>()?;
        ports.sort_unstable();
        ports.dedup();
        out.push(Host {
            name,
            cpu_cores,
            memory_mb,
            storage_gb,
            gpus,
            ports_in_use: ports,
        });
    }
    Ok(Inventory {
        source: Source::File {
            path: name.to_owned(),
        },
        hosts: out,
        swarm_publish: Default::default(),
    })
}

/// The inventory file being read, to build errors that point into it.
struct File<'a> {
    text: &'a str,
    name: &'a str,
}

impl File<'_> {
    fn fail(&self, span: Range<usize>, label: &str, message: impl Into<String>) -> InventoryError {
        // A label needs at least one character to show.
        let start = span.start.min(self.text.len());
        let end = span.end.max(start + 1).min(self.text.len().max(1));
        InventoryError {
            message: message.into(),
            src: Some(NamedSource::new(self.name, self.text.to_owned())),
            span: Some(SourceSpan::from(start.min(end)..end)),
            label: label.into(),
            help: Some(HELP.into()),
        }
    }

    /// The entries of a mapping whose keys are all `known`.
    #[allow(clippy::result_large_err)]
    fn entries<'n>(
        &self,
        node: &'n Node,
        what: &str,
        known: &[&str],
    ) -> Result<&'n [(Key, Node)], InventoryError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.fail(
                node.span.clone(),
                "not a mapping",
                format!("invalid inventory file: {what} must be a mapping"),
            ));
        };
        if let Some((k, _)) = entries
            .iter()
            .find(|(k, _)| !known.contains(&k.name.as_str()))
        {
            return Err(self.fail(
                k.span.clone(),
                "unknown key",
                format!(
                    "invalid inventory file: unknown field `{}`, expected one of {}",
                    k.name,
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(entries)
    }

    /// The value of a key a mapping must have.
    #[allow(clippy::result_large_err)]
    fn required<'n>(
        &self,
        node: &'n Node,
        entries: &'n [(Key, Node)],
        key: &str,
    ) -> Result<&'n Node, InventoryError> {
        entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                let start = node.span.start;
                let line_end = self.text[start.min(self.text.len())..]
                    .find('\n')
                    .map_or(self.text.len(), |n| start + n);
                self.fail(
                    start..line_end.min(node.span.end.max(start + 1)),
                    "in this mapping",
                    format!("invalid inventory file: missing field `{key}`"),
                )
            })
    }

    /// A typed value, its error pointing at it.
    #[allow(clippy::result_large_err)]
    fn value<T: DeserializeOwned>(&self, node: &Node, key: &str) -> Result<T, InventoryError> {
        serde_json::from_value(node.to_json()).map_err(|e| {
            self.fail(
                node.span.clone(),
                "here",
                format!("invalid inventory file: `{key}`: {e}"),
            )
        })
    }

    /// The items of an optional list.
    #[allow(clippy::result_large_err)]
    fn items<'n>(&self, node: Option<&'n Node>, key: &str) -> Result<&'n [Node], InventoryError> {
        match node.map(|n| (n, &n.value)) {
            None => Ok(&[]),
            Some((_, Value::Seq(items))) => Ok(items),
            Some((n, _)) => Err(self.fail(
                n.span.clone(),
                "not a list",
                format!("invalid inventory file: `{key}` must be a list"),
            )),
        }
    }
}

/// The inventory as an inventory file: one host at the top level, or `hosts:`.
pub fn to_yaml(inv: &Inventory) -> String {
    if inv.hosts.len() == 1 {
        serde_yaml::to_string(&inv.hosts[0]).expect("a host always serializes")
    } else {
        serde_yaml::to_string(&serde_json::json!({ "hosts": inv.hosts }))
            .expect("hosts always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(text: &str, err: &InventoryError) -> usize {
        let at = err.span.expect("a span").offset();
        text[..at].matches('\n').count() + 1
    }

    /// An error is reported on the line of the node it is about, even when the
    /// same text appears earlier in the file.
    #[test]
    fn errors_point_at_their_node_not_at_the_first_textual_match() {
        let text = "hosts:\n  - name: cpu_cores\n    cpu_cores: 2\n    memory_mb: 1\n    storage_gb: 1\n  - name: b\n    cpu_cores: -1\n    memory_mb: 1\n    storage_gb: 1\n";
        let err = parse(text, "x.yaml").unwrap_err();
        assert!(err.message.contains("cpu_cores"), "{}", err.message);
        assert_eq!(line_of(text, &err), 7);
        assert_eq!(&text[err.span.unwrap().offset()..][..2], "-1");

        let text = "hosts:\n  - {name: a, cpu_cores: 1, memory_mb: 1, storage_gb: 1}\n  - {name: ab, cpu_cores: 1, memory_mb: 1, storage_gb: 1}\n  - {name: a, cpu_cores: 1, memory_mb: 1, storage_gb: 1}\n  - {name: c, cpu_cores: 1, memory_mb: 1, storage_gb: 1}\n";
        let err = parse(text, "x.yaml").unwrap_err();
        assert_eq!(err.message, "host `a` is declared twice");
        assert_eq!(line_of(text, &err), 4);

        let text = "name: a\ncpu_cores: 1\nmemory_mb: 1\nstorage_gb: 1\ngpus:\n  - {model: m, memory_mb: 1}\n  - {model: m, memory_mb: 1, index: 0}\n";
        let err = parse(text, "x.yaml").unwrap_err();
        assert!(err.message.contains("GPU index 0"), "{}", err.message);
        assert_eq!(line_of(text, &err), 7);

        let text = "name: memory_mb\ncpu_cores: 1\nstorage_gb: 1\nmemory_mb: lots\n";
        let err = parse(text, "x.yaml").unwrap_err();
        assert!(err.message.contains("memory_mb"), "{}", err.message);
        assert_eq!(line_of(text, &err), 4);

        let text =
            "name: a\ncpu_cores: 1\nmemory_mb: 1\nstorage_gb: 1\nports_in_use: [22, 70000]\n";
        let err = parse(text, "x.yaml").unwrap_err();
        assert_eq!(&text[err.span.unwrap().offset()..][..5], "70000");

        let text = "name: a\ncpu_cores: 1\nmemory_mb: 1\nstorage_gb: 1\ncolour: red\n";
        let err = parse(text, "x.yaml").unwrap_err();
        assert!(
            err.message.contains("unknown field `colour`"),
            "{}",
            err.message
        );
        assert_eq!(line_of(text, &err), 5);
    }

    #[test]
    fn a_written_inventory_reads_back() {
        let inv = parse(
            "hosts:\n  - name: a\n    cpu_cores: 2.5\n    memory_mb: 1024\n    storage_gb: 10\n    gpus: [{model: m, memory_mb: 8, uuid: GPU-1}]\n    ports_in_use: [443, 22, 22]\n  - {name: b, cpu_cores: 1, memory_mb: 1, storage_gb: 1}\n",
            "x.yaml",
        )
        .unwrap();
        assert_eq!(inv.hosts[0].ports_in_use, vec![22, 443]);
        assert_eq!(inv.hosts[0].gpus[0].uuid.as_deref(), Some("GPU-1"));
        let back = parse(&to_yaml(&inv), "y.yaml").unwrap();
        assert_eq!(back.hosts, inv.hosts);
    }
}
