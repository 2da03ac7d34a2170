//! Host capacity: what the target can run.
//!
//! From a live probe of this host (sysinfo for CPUs, memory and disk; NVML for
//! GPUs, where an absent library or driver means zero GPUs; the host ports in
//! use), from a declared inventory file (`--inventory`, for pull-request checks
//! far from the target) or from a Swarm cluster's nodes.

mod file;
mod probe;

pub use file::{InventoryError, load_file, parse, to_yaml};
pub use probe::{listening_ports, parse_proc_net_tcp, probe};

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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub source: Source,
    pub hosts: Vec<Host>,
}
