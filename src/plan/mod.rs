//! The plan: desired state + state snapshot + observations + inventory -> an
//! ordered change set with reasons, field diffs, phases and feasibility.
//!
//! Planning is synchronous and does no I/O: the same inputs give the same plan,
//! byte for byte. Observations of what really runs (refresh) are gathered by the
//! caller and passed in. A reason explains a decision; it never drives one.

pub mod diff;
pub mod feasibility;
mod planner;
mod reason;
pub mod refresh;
pub mod saved;
mod spec_lines;

pub use planner::{PlanError, plan};
pub use reason::{Cause, Drift, DriftKind, Reason, Rollout};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::instance::{Capabilities, InstanceState};
use crate::model::{BackendKind, DesiredState, ServiceName, ServiceSpec};
use crate::state::{GpuRef, Handle, Snapshot};

/// The version of the plan document (`--format json` and saved plan files).
pub(crate) const FORMAT_VERSION: u32 = 1;

/// What happens to one service. The symbol is also the glyph in human output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing to do. `before` and `after` are equal.
    NoOp,
    /// Start a service the state does not have. `before` is `None`.
    Create,
    /// Change a running service in place (where its backend can, e.g. Swarm replicas).
    Update,
    /// Start the new spec and stop the old instances. Both `before` and `after` are set.
    Replace,
    /// Stop and forget a service. `after` is `None`.
    Destroy,
}

impl Action {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            Action::NoOp => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Destroy => "-",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::NoOp => "no-op",
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Destroy => "destroy",
        }
    }
}

/// One planned change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub service: ServiceName,
    pub action: Action,
    pub backend: BackendKind,
    /// Why (as data; `render::plan::reason` puts it into words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Canonical spec fields whose change forces a replace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forced_by: Vec<String>,
    /// The recorded spec (from the state); `None` for a create.
    pub before: Option<ServiceSpec>,
    /// The desired spec (shared with the configuration); `None` for a
    /// destroy.
    pub after: Option<std::sync::Arc<ServiceSpec>>,
    /// The instances the state records (what a replace or destroy stops).
    #[serde(default)]
    pub prior_handles: Vec<Handle>,
    /// The GPUs assigned to the new spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuRef>,
    /// How a create or replace rolls out under the deployment's strategy,
    /// and whether it costs downtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A capacity dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Cpu,
    Memory,
    Storage,
    Gpu,
    GpuMemory,
    Port,
}

impl Dimension {
    /// `cpu`, `memory`, `storage`, `gpu`, `gpu_memory`, `port`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Cpu => "cpu",
            Dimension::Memory => "memory",
            Dimension::Storage => "storage",
            Dimension::Gpu => "gpu",
            Dimension::GpuMemory => "gpu_memory",
            Dimension::Port => "port",
        }
    }
}

impl std::fmt::Display for Dimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Dimension {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One exhausted capacity dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub dimension: Dimension,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// e.g. "memory: need 42 GiB, 25.6 GiB usable (32 GiB - 20% reserve)".
    pub message: String,
    /// The services that contribute, in name order.
    #[serde(default)]
    pub services: Vec<ServiceName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usable: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
}

impl Problem {
    /// What an operator can change about it, naming the keys and defaults.
    pub(crate) fn remedy(&self) -> &'static str {
        match self.dimension {
            Dimension::Cpu => {
                "lower `resources.cpu_cores` of the services (default 0.1 for a local process, 0.5 for a container), or plan against a larger `--inventory`"
            }
            Dimension::Memory => {
                "lower `resources.memory_mb` of the services (default 256), or plan against a larger `--inventory`"
            }
            Dimension::Storage => "lower `resources.storage_gb` of the services (default 0)",
            Dimension::Gpu => "lower `resources.gpu_count`, or free a GPU",
            Dimension::GpuMemory => "lower `resources.gpu_memory_mb`, or free GPU memory",
            Dimension::Port => "choose another `host_port`, or stop what holds the port",
        }
    }
}

impl Feasibility {
    /// The remedies of the problems, each once, in the order first needed.
    pub(crate) fn remedies(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for r in self.problems.iter().map(Problem::remedy) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Feasibility {
    pub feasible: bool,
    pub problems: Vec<Problem>,
    pub gpu_assignments: BTreeMap<ServiceName, Vec<GpuRef>>,
    /// Where the capacity came from: "probe", a file path, "swarm".
    pub inventory_source: String,
    pub reserve_percent: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub destroy: usize,
    pub no_op: usize,
}

/// What a saved plan is bound to; `apply PLAN` refuses it when any differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The state's lineage; `None` when the state did not exist yet.
    pub lineage: Option<String>,
    pub serial: u64,
    /// `sha256:` of the rendered configuration (secrets as digests).
    pub config_hash: String,
    pub tool_version: String,
    /// The id of the secret-digest key the plan's digests were made with (the
    /// key itself never travels in a plan; see `state::key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub binding: Binding,
    /// Every service considered, in phase order, no-ops included.
    pub changes: Vec<Change>,
    /// Service names in apply order; only services with an action other than no-op.
    pub phases: Vec<Vec<ServiceName>>,
    pub drift: Vec<Drift>,
    pub feasibility: Feasibility,
    pub summary: Summary,
    /// `plan --destroy` / `destroy`.
    pub destroy_all: bool,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::NoOp)
    }

    pub fn change(&self, service: &str) -> Option<&Change> {
        self.changes.iter().find(|c| c.service.as_str() == service)
    }
}

/// What a process, container or Swarm service looks like right now (refresh).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub handle: Handle,
    pub state: InstanceState,
    /// The spec hash the instance carries (a container label), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// What the engine says beyond the state ("1/2 tasks running: task 2 is
    /// pending: no suitable node …").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Observations gathered by the caller before planning (`--refresh`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    pub services: BTreeMap<ServiceName, Vec<ObservedInstance>>,
    /// Instances labelled or marked as this project's that no state record names,
    /// with the service they claim to be, started by runs of this state.
    pub orphans: Vec<(ServiceName, Handle)>,
    /// The same, started by another state that shares the project name (with
    /// that state's lineage): never touched, only reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<(ServiceName, Handle, String)>,
}

/// Plan options from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub targets: Vec<String>,
    pub excludes: Vec<String>,
    pub replaces: Vec<String>,
    pub destroy_all: bool,
}

/// Everything planning reads.
pub struct Input<'a> {
    /// `None` only for `destroy_all` without a config.
    pub desired: Option<&'a DesiredState>,
    pub snapshot: &'a Snapshot,
    pub observations: Option<&'a Observations>,
    pub inventory: &'a crate::inventory::Inventory,
    pub config_hash: String,
    pub options: Options,
    /// What each backend can do (from `backends::Registry::capabilities`); a
    /// kind missing here updates nothing in place.
    pub capabilities: std::collections::BTreeMap<crate::model::BackendKind, Capabilities>,
}
