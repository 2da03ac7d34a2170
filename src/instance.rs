//! What an instance is, outside the backend that runs it: a [`Handle`] (made
//! in [`crate::registry`]) that is described, compared and stored, its
//! [`Liveness`], and what discovery finds ([`Discovered`]). It imports nothing
//! of the crate but `model` and `registry`.

use serde::{Deserialize, Serialize};

use crate::model::ServiceName;
pub use crate::registry::Handle;

/// A GPU given to a service by the plan (and honoured by apply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRef {
    pub host: String,
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub model: String,
}

/// Whether an instance still runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Exited with this code (`None`: killed by a signal or unknown).
    Exited(Option<i32>),
    /// Gone, or the pid now belongs to another process.
    Missing,
}

/// The replicas behind a handle that stands for several of them (a Swarm
/// service and its tasks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Replicas of the current spec that run.
    pub running: u32,
    /// Replicas the instance asks for now (what the engine holds, which
    /// `docker service scale` may have changed behind the tool's back).
    pub wanted: u32,
    /// Why a replica does not run, in the engine's words (a task's scheduler
    /// or runtime error), when it says.
    pub detail: Option<String>,
    /// Replicas of an older spec that still run and are still wanted (an
    /// update that has not replaced them yet).
    pub stale: u32,
    /// The engine is still watching the last update (Swarm's monitor window)
    /// and may yet roll it back by itself.
    pub updating: bool,
}

impl Replicas {
    /// Every wanted replica runs the current spec, no older one is left and
    /// the engine has finished the update.
    pub fn complete(&self) -> bool {
        self.running >= self.wanted && self.stale == 0 && !self.updating
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} tasks running", self.running, self.wanted)?;
        if self.stale > 0 {
            write!(f, " ({} of an older spec still running)", self.stale)?;
        } else if self.updating && self.running >= self.wanted {
            f.write_str(" (the engine has not finished the update yet)")?;
        }
        match &self.detail {
            Some(d) => write!(f, ": {d}"),
            None => Ok(()),
        }
    }
}

/// An instance found by its marks.
#[derive(Clone, Debug, PartialEq)]
pub struct Discovered {
    pub service: ServiceName,
    pub handle: Handle,
    pub spec_hash: Option<String>,
    pub lineage: Option<String>,
    pub liveness: Liveness,
    /// For a handle that stands for several replicas: how many run.
    pub replicas: Option<Replicas>,
}

/// What a backend can do, as plain data: the planner receives it (one per
/// backend kind) and never asks a backend. Each field is what the backend's
/// trait method of the same name says (see `backends::Backend`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Top-level fields of a spec (canonical JSON keys) that change on a
    /// running instance without a restart; any other change replaces it.
    pub updatable_in_place: Vec<String>,
    /// The engine has its own health verdict (Docker HEALTHCHECK).
    pub native_health: bool,
    /// It reports the capacity of the hosts it places on (Swarm nodes).
    pub capacity: bool,
    /// It makes a network of the project's that `destroy` tears down.
    pub network_teardown: bool,
    /// It follows an instance's output itself (else its log file is read).
    pub log_following: bool,
    /// It spreads replicas over nodes: a fixed host port binds once per node
    /// (Swarm), not once for all replicas.
    pub places_on_nodes: bool,
}

/// Whether an observed instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Running,
    Exited,
    /// Gone, or its pid now belongs to another process.
    Missing,
    /// A Swarm service that runs fewer tasks than the state records replicas.
    Degraded,
}

impl InstanceState {
    /// `running`, `exited`, `missing`, `degraded`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Running => "running",
            InstanceState::Exited => "exited",
            InstanceState::Missing => "missing",
            InstanceState::Degraded => "degraded",
        }
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for InstanceState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
