//! The registry of backend kinds: every fact about a kind that code outside
//! `backends/` needs, and the shape of its instances' handles.
//!
//! A kind is how the configuration selects a backend and how the state
//! records which backend runs an instance. What differs between kinds is
//! answered here, by a method of [`BackendKind`] (its name, how the
//! configuration selects it, where its instances bind their ports, its
//! defaults), or by the backend itself through `backends::Backend` (what it
//! can do); no module outside `backends/` and this one names a kind's
//! variant. A [`Handle`] is made and opened only by its backend; everyone
//! else describes, compares and stores it through the methods here.
//!
//! A leaf: it imports nothing of the crate. Adding a backend adds one variant
//! to each enum here, with its arms (see ARCHITECTURE.md, "Adding a backend").

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A local child process, detached into its own session (the embedded default).
    Process,
    /// A container on the local Docker engine.
    Docker,
    /// A Docker Swarm service.
    Swarm,
}

impl BackendKind {
    /// Every kind, in the order the registry lists them.
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Process,
        BackendKind::Docker,
        BackendKind::Swarm,
    ];

    /// What runs a service that names no image: a local process.
    pub const LOCAL: BackendKind = BackendKind::Process;

    /// What runs a service's image when no orchestrator is chosen: a
    /// container on the local engine.
    pub const CONTAINERS: BackendKind = BackendKind::Docker;

    /// The values of `infrastructure.orchestrator` that a backend answers
    /// to, with the kind that then runs the services that name an image
    /// (`None`: the default, [`BackendKind::CONTAINERS`] when a container
    /// runtime is set, else [`BackendKind::LOCAL`]). A value not listed is
    /// refused by `validate`.
    pub const ORCHESTRATORS: [(&'static str, Option<BackendKind>); 3] = [
        ("None", None),
        ("DockerCompose", None),
        ("Swarm", Some(BackendKind::Swarm)),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Docker => "docker",
            BackendKind::Swarm => "swarm",
        }
    }

    /// The kind that runs a service: one without an image runs locally; one
    /// with an image on `default` when that kind runs images, else as a
    /// container on the local engine.
    pub fn for_service(has_image: bool, default: BackendKind) -> BackendKind {
        match (has_image, default.runs_images()) {
            (false, _) => BackendKind::LOCAL,
            (true, true) => default,
            (true, false) => BackendKind::CONTAINERS,
        }
    }

    /// Whether it runs container images (else a command on this host).
    pub fn runs_images(self) -> bool {
        !matches!(self, BackendKind::Process)
    }

    /// Whether its instances run in this host's network namespace, where a
    /// port they listen on is a host port: always for a local process; for
    /// a container, only on the host network (`on_host_network`).
    pub fn binds_on_host(self, on_host_network: bool) -> bool {
        match self {
            BackendKind::Process => true,
            BackendKind::Docker => on_host_network,
            BackendKind::Swarm => false,
        }
    }

    /// Whether its instances join the project's network (`network.name`).
    pub fn joins_networks(self) -> bool {
        self.runs_images()
    }

    /// Whether it may run a container on the host network (`network.mode: host`).
    pub fn may_use_host_network(self) -> bool {
        matches!(self, BackendKind::Docker)
    }

    /// `resources.cpu_cores` of a service that declares none. A local
    /// process gets a tenth of a core, so that a handful of small services
    /// fits a 2-core CI runner (a process runs without a CPU limit: this is
    /// only what `plan` counts); a container half a core, which the engine
    /// applies as its limit.
    pub fn default_cpu_cores(self) -> f64 {
        match self {
            BackendKind::Process => 0.1,
            BackendKind::Docker | BackendKind::Swarm => 0.5,
        }
    }

    /// Whether an instance has a name fixed by its service (a Swarm
    /// service), so that a replace must remove the old one before the new
    /// one can be made.
    pub fn fixed_instance_name(self) -> bool {
        matches!(self, BackendKind::Swarm)
    }

    /// Whether the tool's own monitor supervises its instances (restart
    /// back-off, circuit breaker, health-driven restarts: `src/monitor/`),
    /// rather than an engine's restart policy.
    pub fn supervised_by_monitor(self) -> bool {
        matches!(self, BackendKind::Process)
    }

    /// Whether it rolls a service's replicas out and reschedules them itself
    /// (an orchestrator), so that the tool hands it the whole service.
    pub fn orchestrates(self) -> bool {
        matches!(self, BackendKind::Swarm)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

    #[test]
    fn a_service_without_an_image_runs_locally_and_an_image_on_its_orchestrator() {
        for default in BackendKind::ALL {
            assert_eq!(BackendKind::for_service(false, default), BackendKind::LOCAL);
            let with_image = BackendKind::for_service(true, default);
            assert!(with_image.runs_images());
            if default.runs_images() {
                assert_eq!(with_image, default);
            }
        }
        // Every orchestrator the registry lists runs images.
        for (_, kind) in BackendKind::ORCHESTRATORS {
            assert!(kind.is_none_or(BackendKind::runs_images));
        }
    }
}
