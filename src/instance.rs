//! What an instance is, outside the backend that runs it: a [`Handle`] that is
//! described, compared and stored, its [`Liveness`], and what discovery finds
//! ([`Discovered`]). A leaf: it imports nothing of the crate but `model`.
//!
//! Only the backend that made a handle looks inside it (`backends/`); every
//! other module goes through the methods here. The serialized form is the
//! state's (the `handles` column): it must not change.

use serde::{Deserialize, Serialize};

use crate::model::{BackendKind, ServiceName};

/// How to find a running instance again. Processes are identified by pid plus
/// process start time (clock ticks since boot, `/proc/<pid>/stat` field 22),
/// never by pid alone.
///
/// Outside `backends/` a handle is opaque: use its methods, never its variants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Handle {
    Process {
        replica: u32,
        pid: u32,
        start_time: u64,
        /// The file its stdout and stderr go to.
        log_path: String,
    },
    Container {
        replica: u32,
        id: String,
        name: String,
    },
    SwarmService {
        id: String,
        name: String,
    },
}

impl Handle {
    /// The backend that runs the instance.
    pub fn backend(&self) -> BackendKind {
        match self {
            Handle::Process { .. } => BackendKind::Process,
            Handle::Container { .. } => BackendKind::Docker,
            Handle::SwarmService { .. } => BackendKind::Swarm,
        }
    }

    /// The replica index (0 for a handle that stands for every replica).
    pub fn replica(&self) -> u32 {
        match self {
            Handle::Process { replica, .. } | Handle::Container { replica, .. } => *replica,
            Handle::SwarmService { .. } => 0,
        }
    }

    /// A key naming the instance itself, equal for two handles of the same
    /// instance: pid and start time, container or service id.
    pub fn identity(&self) -> String {
        match self {
            Handle::Container { id, .. } => format!("c:{id}"),
            Handle::SwarmService { id, .. } => format!("s:{id}"),
            Handle::Process {
                pid, start_time, ..
            } => format!("p:{pid}:{start_time}"),
        }
    }

    /// The same instance: same pid and start time, same container or service id.
    pub(crate) fn same_instance(&self, other: &Handle) -> bool {
        self.identity() == other.identity()
    }

    /// `process 42 (replica 0)`, ``container `web-0` ``, ``swarm service `web` ``.
    pub(crate) fn describe(&self) -> String {
        match self {
            Handle::Process { pid, replica, .. } => format!("process {pid} (replica {replica})"),
            Handle::Container { name, .. } => format!("container `{name}`"),
            Handle::SwarmService { name, .. } => format!("swarm service `{name}`"),
        }
    }

    /// The instance as one replica of its service: `replica 0 (pid 42)`,
    /// ``replica 0 (container `web-0`)``, ``swarm service `web` ``.
    pub(crate) fn describe_replica(&self) -> String {
        match self {
            Handle::Process { replica, pid, .. } => format!("replica {replica} (pid {pid})"),
            Handle::Container { replica, name, .. } => {
                format!("replica {replica} (container `{name}`)")
            }
            Handle::SwarmService { name, .. } => format!("swarm service `{name}`"),
        }
    }

    /// A short id for a table: `pid 42`, `container web-0`, `service web`.
    pub(crate) fn short_id(&self) -> String {
        match self {
            Handle::Process { pid, .. } => format!("pid {pid}"),
            Handle::Container { name, .. } => format!("container {name}"),
            Handle::SwarmService { name, .. } => format!("service {name}"),
        }
    }

    /// The file the instance's output goes to, when the tool writes one (a
    /// local process).
    pub fn log_path(&self) -> Option<&str> {
        match self {
            Handle::Process { log_path, .. } => Some(log_path),
            _ => None,
        }
    }
}

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
}

impl Replicas {
    /// Every wanted replica runs.
    pub fn complete(&self) -> bool {
        self.running >= self.wanted
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} tasks running", self.running, self.wanted)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serialized_form_is_the_states() {
        let h = Handle::Process {
            replica: 1,
            pid: 42,
            start_time: 7,
            log_path: "/l".into(),
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"kind":"process","replica":1,"pid":42,"start_time":7,"log_path":"/l"}"#
        );
        let s = Handle::SwarmService {
            id: "i".into(),
            name: "n".into(),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"kind":"swarm_service","id":"i","name":"n"}"#
        );
    }

    #[test]
    fn the_same_instance_is_the_same_pid_and_start_or_id() {
        let p = |pid, start_time, replica| Handle::Process {
            replica,
            pid,
            start_time,
            log_path: String::new(),
        };
        assert!(p(1, 2, 0).same_instance(&p(1, 2, 3)));
        assert!(!p(1, 2, 0).same_instance(&p(1, 3, 0)));
        let c = Handle::Container {
            replica: 0,
            id: "1".into(),
            name: "a".into(),
        };
        let s = Handle::SwarmService {
            id: "1".into(),
            name: "a".into(),
        };
        assert!(!c.same_instance(&s));
    }
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
