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

use miette::{NamedSource, SourceSpan};
use serde::{Deserialize, Serialize};

use super::{Gpu, Host, Inventory, Source};

/// A problem with an inventory file, pointing into it where it can.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
#[diagnostic(code("deploy_code::E016"))]
pub struct InventoryError {
    pub message: String,
    #[source_code]
    pub src: Option<NamedSource<String>>,
    #[label("{label}")]
    pub span: Option<SourceSpan>,
    pub label: String,
    #[help]
    pub help: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileGpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uuid: Option<String>,
    model: String,
    memory_mb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    free_memory_mb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHost {
    name: String,
    cpu_cores: f64,
    memory_mb: u64,
    storage_gb: u64,
    #[serde(default)]
    gpus: Vec<FileGpu>,
    #[serde(default)]
    ports_in_use: Vec<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHosts {
    hosts: Vec<FileHost>,
}

const HELP: &str = "an inventory file declares `name`, `cpu_cores`, `memory_mb`, `storage_gb`, \
optional `gpus: [{model, memory_mb}]` and `ports_in_use: [...]`, or `hosts:` a list of those; \
`deploy-code inventory > host.yaml` writes one for this host";

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
#[allow(clippy::result_large_err)] // built once per run, on the error path
pub fn parse(text: &str, name: &str) -> Result<Inventory, InventoryError> {
    let src = || Some(NamedSource::new(name, text.to_owned()));
    let yaml_err = |e: serde_yaml::Error| {
        let span = e.location().map(|l| {
            let end = text[l.index()..]
                .find('\n')
                .map_or(text.len(), |n| l.index() + n);
            SourceSpan::from(l.index()..end.max(l.index() + 1).min(text.len().max(1)))
        });
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        InventoryError {
            message: format!("invalid inventory file: {msg}"),
            src: src(),
            span,
            label: "here".into(),
            help: Some(HELP.into()),
        }
    };
    let head: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_err)?;
    let hosts = if head.get("hosts").is_some() {
        serde_yaml::from_str::<FileHosts>(text)
            .map_err(yaml_err)?
            .hosts
    } else if head.is_mapping() {
        vec![serde_yaml::from_str::<FileHost>(text).map_err(yaml_err)?]
    } else {
        return Err(InventoryError {
            message: "invalid inventory file: expected a mapping".into(),
            src: src(),
            span: Some((0..text.len().clamp(1, 1)).into()),
            label: "not a mapping".into(),
            help: Some(HELP.into()),
        });
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for h in hosts {
        let at = |needle: &str| {
            text.find(needle)
                .map(|i| SourceSpan::from(i..i + needle.len()))
        };
        if !seen.insert(h.name.clone()) {
            return Err(InventoryError {
                message: format!("host `{}` is declared twice", h.name),
                src: src(),
                span: text
                    .rfind(h.name.as_str())
                    .map(|i| (i..i + h.name.len()).into()),
                label: "second declaration".into(),
                help: Some("give every host a unique `name`".into()),
            });
        }
        if !(h.cpu_cores.is_finite() && h.cpu_cores >= 0.0) {
            return Err(InventoryError {
                message: format!("host `{}`: `cpu_cores` must be a number >= 0", h.name),
                src: src(),
                span: at("cpu_cores"),
                label: "here".into(),
                help: Some(HELP.into()),
            });
        }
        let mut gpus = Vec::new();
        let mut indexes = BTreeSet::new();
        for (pos, g) in h.gpus.into_iter().enumerate() {
            let index = g.index.unwrap_or(pos as u32);
            if !indexes.insert(index) {
                return Err(InventoryError {
                    message: format!("host `{}`: GPU index {index} is declared twice", h.name),
                    src: src(),
                    span: at("gpus"),
                    label: "in this list".into(),
                    help: Some("give each GPU a distinct `index`, or leave `index` out".into()),
                });
            }
            gpus.push(Gpu {
                index,
                uuid: g.uuid,
                model: g.model,
                memory_mb: g.memory_mb,
                free_memory_mb: g.free_memory_mb,
            });
        }
        let mut ports = h.ports_in_use;
        ports.sort_unstable();
        ports.dedup();
        out.push(Host {
            name: h.name,
            cpu_cores: h.cpu_cores,
            memory_mb: h.memory_mb,
            storage_gb: h.storage_gb,
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

/// The inventory as an inventory file: one host at the top level, or `hosts:`.
pub fn to_yaml(inv: &Inventory) -> String {
    if inv.hosts.len() == 1 {
        serde_yaml::to_string(&inv.hosts[0]).expect("a host always serializes")
    } else {
        serde_yaml::to_string(&serde_json::json!({ "hosts": inv.hosts }))
            .expect("hosts always serialize")
    }
}
