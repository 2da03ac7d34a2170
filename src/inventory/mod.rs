//! Host capacity: what the target can run.
//!
//! From a live probe of this host (sysinfo for CPUs, memory and disk; NVML for
//! GPUs, where an absent library or driver means zero GPUs; the host ports in
//! use), from a declared inventory file (`--inventory`, for pull-request checks
//! far from the target) or from a Swarm cluster's nodes.

mod file;
mod probe;

pub use file::{InventoryError, load_file, parse, to_yaml};
pub use probe::{NvmlAbsent, listening_ports, nvml_probe, probe};

use serde::{Deserialize, Serialize};

/// One GPU of a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// The device index (NVML order; `CUDA_VISIBLE_DEVICES` takes it).
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub model: String,
    pub memory_mb: u64,
    /// Free memory when probed; a declared inventory may leave it out (= all free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory_mb: Option<u64>,
}

/// One host's capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub cpu_cores: f64,
    pub memory_mb: u64,
    pub storage_gb: u64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// Host ports already taken by something this tool did not start.
    #[serde(default)]
    pub ports_in_use: Vec<u16>,
}

/// Where an inventory came from, for messages ("probed", "from host.yaml").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Source {
    Probe,
    File { path: String },
    Swarm,
}

/// How a Swarm service's published ports bind on the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    /// The routing mesh: the port answers on every node and balances over the
    /// tasks (needs IPVS in the node's kernel); one fixed host port serves any
    /// number of replicas.
    #[default]
    Ingress,
    /// Each task publishes on its own node: a fixed host port binds once per
    /// node, so a service can run at most one task per node with it. A port
    /// the config leaves out is picked by the engine per task, so replicas on
    /// one node do not clash.
    Host,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub source: Source,
    pub hosts: Vec<Host>,
    /// How Swarm services publish their ports here (`DEPLOY_CODE_SWARM_PUBLISH_MODE`
    /// for a Swarm inventory; the routing mesh otherwise).
    #[serde(default)]
    pub swarm_publish: PublishMode,
}
