//! Where services run. The [`Backend`] trait is the only way `apply`, `status`,
//! refresh and `cleanup` touch the world; bollard stays inside `docker` and
//! `swarm`.
//!
//! Every instance a backend starts is marked as this project's: containers and
//! Swarm services by labels, processes by environment variables read back from
//! `/proc/<pid>/environ`. That mark is how a run that was killed is reconciled:
//! its instances are adopted or removed, never duplicated.

pub mod docker;
pub(crate) mod engine;
pub mod logwriter;
pub mod monitor_file;
pub mod process;
pub mod swarm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use crate::instance::{Capabilities, Discovered, GpuRef, Handle, Liveness, Replicas};
use crate::model::{BackendKind, NetworkSettings, ServiceSpec};

/// Labels (containers, Swarm services) and environment variables (processes)
/// that mark an instance as this tool's.
pub mod marks {
    pub(crate) const PROJECT: &str = "io.deploy-code.project";
    pub const SERVICE: &str = "io.deploy-code.service";
    pub(crate) const SPEC_HASH: &str = "io.deploy-code.spec-hash";
    pub(crate) const DEPLOYMENT: &str = "io.deploy-code.deployment";
    pub(crate) const LINEAGE: &str = "io.deploy-code.lineage";
    pub(crate) const REPLICA: &str = "io.deploy-code.replica";
    /// Environment variables given to processes, same meaning.
    pub(crate) const ENV_PROJECT: &str = "DEPLOY_CODE_PROJECT";
    pub(crate) const ENV_SERVICE: &str = "DEPLOY_CODE_SERVICE";
    pub(crate) const ENV_SPEC_HASH: &str = "DEPLOY_CODE_SPEC_HASH";
    pub(crate) const ENV_DEPLOYMENT: &str = "DEPLOY_CODE_DEPLOYMENT";
    pub(crate) const ENV_LINEAGE: &str = "DEPLOY_CODE_LINEAGE";
    pub(crate) const ENV_REPLICA: &str = "DEPLOY_CODE_REPLICA";
    /// The log file of a process (its output may reach it through a pipe).
    pub(crate) const ENV_LOG: &str = "DEPLOY_CODE_LOG_FILE";
    /// The private ports of a process behind a traffic switch:
    /// `<container_port>=<private_port>,…`.
    pub(crate) const ENV_PORTS: &str = "DEPLOY_CODE_PORTS";
}

/// The variables of the environment `deploy-code` runs in that an instance
/// of `spec` is given besides its `env` (which wins over them): those its
/// `inherit_env` names and, for a local process (`base`), the base set
/// ([`crate::model::BASE_ENV`]). Nothing else of this environment reaches an
/// instance: the operator's credentials and keys stay here, as systemd,
/// Nomad and Compose keep them. Read at each start, so that a new value
/// reaches the next instance; a value that is not UTF-8 is left out.
pub(crate) fn inherited_env(spec: &ServiceSpec, base: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| spec.inherits(k, base) && !spec.env.contains_key(k))
        .collect();
    out.sort();
    out
}

/// What a backend needs to know about the run that starts an instance.
#[derive(Clone, Debug)]
pub struct StartContext {
    pub project: String,
    pub lineage: String,
    /// The deployment revision doing the start.
    pub revision: u64,
    pub log_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Directory of the config file: relative `working_dir`s resolve against it.
    pub base_dir: PathBuf,
    pub network: NetworkSettings,
    /// GPUs the plan assigned (CUDA_VISIBLE_DEVICES / device requests).
    pub gpus: Vec<GpuRef>,
    /// The replicas to start, when not all of them (a rolling update starts
    /// one at a time).
    pub only_replicas: Option<std::ops::Range<u32>>,
    /// `deployment.stop_grace_seconds`: what an orchestrator that stops
    /// instances itself (a Swarm task's stop grace period) waits between
    /// SIGTERM and SIGKILL.
    pub stop_grace: std::time::Duration,
}

impl StartContext {
    /// The replica indexes a start of `spec` brings up.
    pub fn replicas(&self, spec: &ServiceSpec) -> std::ops::Range<u32> {
        let all = 0..spec.replicas.max(1);
        match &self.only_replicas {
            Some(r) => r.start.max(all.start)..r.end.min(all.end),
            None => all,
        }
    }
}

/// The result of one health probe run by a backend (a command in a container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub healthy: bool,
    /// Short evidence: status code, exit code, the first lines of output.
    pub detail: String,
}

/// What a backend could not do. Its code and help line follow from the
/// variant ([`Coded`](crate::error::Coded)).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("`{service}` could not be started: {message}")]
    StartFailed { service: String, message: String },
    #[error("command `{command}` of `{service}` was not found")]
    BinaryNotFound { service: String, command: String },
    #[error("image `{image}` is not present and could not be pulled: {message}")]
    ImageUnavailable { image: String, message: String },
    #[error("{what} is not reachable: {message}")]
    Unavailable { what: String, message: String },
    #[error("network error: {message}")]
    Network { message: String },
    #[error("volume `{volume}` could not be mounted: {message}")]
    Volume { volume: String, message: String },
    #[error("`{service}` could not be stopped: {message}")]
    StopFailed { service: String, message: String },
    #[error("the {backend} backend cannot update `{service}` in place")]
    Unsupported {
        backend: BackendKind,
        service: String,
    },
}

impl BackendError {
    /// The error code this failure reports.
    pub fn code(&self) -> crate::error::Code {
        use crate::error::Code;
        match self {
            BackendError::StartFailed { .. }
            | BackendError::StopFailed { .. }
            | BackendError::Unsupported { .. } => Code::E005,
            BackendError::BinaryNotFound { .. } => Code::E003,
            BackendError::ImageUnavailable { .. } => Code::E015,
            BackendError::Unavailable { .. } => Code::E014,
            BackendError::Network { .. } => Code::E010,
            BackendError::Volume { .. } => Code::S005,
        }
    }
}

impl crate::error::Coded for BackendError {
    fn error_code(&self) -> crate::error::Code {
        self.code()
    }

    fn help_text(&self) -> Option<String> {
        let help = match self {
            BackendError::BinaryNotFound { .. } => {
                "install it, give its full path, or fix `command` in the config"
            }
            BackendError::ImageUnavailable { .. } => {
                "build or load the image on this host (docker build / docker load), or make its registry reachable"
            }
            BackendError::Unavailable { .. } => {
                "start the Docker engine (dockerd) or set DOCKER_HOST; `deploy-code doctor` checks it"
            }
            _ => return None,
        };
        Some(help.to_owned())
    }
}

crate::error::coded_diagnostic!(BackendError);

/// What a backend needs of the machine, as `doctor` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prerequisite {
    /// The check's name (`docker`).
    pub name: &'static str,
    /// The remedy when a service of the configuration needs it.
    pub needed_help: &'static str,
    /// The note when no service of the configuration needs it.
    pub optional_help: &'static str,
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Top-level fields of a [`ServiceSpec`] (its canonical JSON keys) that
    /// [`Backend::update`] changes on a running instance without a restart. A
    /// change to any other field replaces it. None by default.
    fn updatable_in_place(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether [`Backend::native_health`] can give a verdict of the engine's.
    fn has_native_health(&self) -> bool {
        false
    }

    /// Whether [`Backend::capacity`] reports the hosts it places on.
    fn reports_capacity(&self) -> bool {
        false
    }

    /// Whether [`Backend::teardown_network`] removes a network of the project's.
    fn tears_down_network(&self) -> bool {
        false
    }

    /// Whether [`Backend::follow`] follows an instance's output.
    fn follows_logs(&self) -> bool {
        false
    }

    /// Whether it spreads replicas over nodes (a fixed host port then binds
    /// once per node), rather than running them all on one host.
    fn places_on_nodes(&self) -> bool {
        false
    }

    /// Makes sure what watches a running instance of `spec` runs beside it
    /// (a container's health-driven restart monitor), when the instance was
    /// not started by this run but adopted from one that was killed: the
    /// monitor may have died with it. Nothing by default.
    async fn supervise(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        handles: &[Handle],
    ) -> Result<(), BackendError> {
        let _ = (spec, ctx, handles);
        Ok(())
    }

    /// Whether [`Backend::recorded_state`] reads recorded instances directly.
    fn reads_recorded(&self) -> bool {
        false
    }

    /// What it reads of a recorded instance directly, without discovery (a
    /// process by its pid and start time): its state and, when it is not
    /// running, why. `None` when it learns of instances only by discovering
    /// them (containers, Swarm services).
    fn recorded_state(
        &self,
        handle: &Handle,
    ) -> Option<(crate::instance::InstanceState, Option<String>)> {
        let _ = handle;
        None
    }

    /// The address a published port listens on when the configuration names
    /// none (`host_ip`): the address its instances are reached at.
    fn default_host_ip(&self) -> &'static str {
        "0.0.0.0"
    }

    /// What it needs of the machine before it can run anything (an engine
    /// that answers), as `doctor` checks it; `None` when it needs nothing.
    /// Backends that share one prerequisite give it the same name.
    fn prerequisite(&self) -> Option<Prerequisite> {
        None
    }

    /// The output of a finished one-shot task whose instance is gone, when
    /// the backend keeps it (a local process's log file): its last `lines`
    /// lines. Empty by default.
    fn finished_task_log(
        &self,
        log_dir: &std::path::Path,
        service: &str,
        replicas: u32,
        lines: usize,
    ) -> Vec<String> {
        let _ = (log_dir, service, replicas, lines);
        Vec::new()
    }

    /// Every capability above, as the data the planner receives.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            updatable_in_place: self
                .updatable_in_place()
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            native_health: self.has_native_health(),
            capacity: self.reports_capacity(),
            network_teardown: self.tears_down_network(),
            log_following: self.follows_logs(),
            places_on_nodes: self.places_on_nodes(),
        }
    }

    /// The capacity of the hosts this backend places on (a Swarm's nodes),
    /// when it has its own; `None` by default (the caller probes this host).
    async fn capacity(&self) -> Result<Option<crate::inventory::Inventory>, BackendError> {
        Ok(None)
    }

    /// Checks its [`Backend::prerequisite`]: a line saying what answered, or
    /// why nothing did.
    async fn check_prerequisite(&self) -> Result<String, String> {
        Ok(String::new())
    }

    /// Removes the project's network once no instance uses it: `Ok(true)`
    /// when it was removed. Nothing to do by default.
    async fn teardown_network(&self, project: &str) -> Result<bool, BackendError> {
        let _ = project;
        Ok(false)
    }

    /// Makes ready what `spec` needs before any instance of the run starts (for
    /// a container, its image, pulled when missing), reporting steps worth a
    /// line through `progress`. `apply` calls it for every service it will
    /// start before the first phase, so that a missing image fails the run
    /// before anything has changed. Nothing to do by default.
    async fn prepare(
        &self,
        _spec: &ServiceSpec,
        _ctx: &StartContext,
        _progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), BackendError> {
        Ok(())
    }

    /// Starts every replica of `spec` (plaintext secrets exposed to the instance
    /// only) and returns their handles at once, without waiting for health.
    async fn start(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
    ) -> Result<Vec<Handle>, BackendError>;

    /// Stops and removes these instances: graceful first, forced after `grace`.
    /// Instances that are already gone are not an error.
    async fn stop(&self, handles: &[Handle], grace: Duration) -> Result<(), BackendError>;

    /// Changes running instances in place (only the fields that
    /// [`Backend::updatable_in_place`] names) and returns the new handles.
    async fn update(
        &self,
        spec: &ServiceSpec,
        handles: &[Handle],
        ctx: &StartContext,
    ) -> Result<Vec<Handle>, BackendError> {
        let _ = (handles, ctx);
        Err(BackendError::Unsupported {
            backend: self.kind(),
            service: spec.name.to_string(),
        })
    }

    /// Whether an instance still runs. A Swarm service is `Running` while its
    /// tasks run or are still being placed, and down (`Exited`) as soon as a
    /// task of its current spec fails or the scheduler refuses to place one.
    async fn liveness(&self, handle: &Handle) -> Liveness;

    /// For a handle that stands for several replicas (a Swarm service), how
    /// many of them run and why the others do not; `None` for a handle that
    /// is one replica. The health gate passes only once they all run.
    async fn replicas(&self, handle: &Handle) -> Option<Replicas> {
        let _ = handle;
        None
    }

    /// Runs a command health probe for an instance (in the container for Docker).
    async fn exec_probe(&self, handle: &Handle, argv: &[String], timeout: Duration)
    -> ProbeOutcome;

    /// The engine's own health verdict when it has one (Docker HEALTHCHECK):
    /// `Some(true)` healthy, `Some(false)` unhealthy, `None` none or starting.
    async fn native_health(&self, handle: &Handle) -> Option<bool> {
        let _ = handle;
        None
    }

    /// The address at which HTTP and TCP probes reach `port` of an instance:
    /// `(host, port)`. Processes: the loopback and the port itself.
    async fn probe_address(&self, handle: &Handle, port: u16) -> (String, u16) {
        let _ = handle;
        ("127.0.0.1".to_owned(), port)
    }

    /// The instance's own address for its `port` (a container's address on
    /// its network), where a TCP probe reaches the instance itself rather than
    /// a proxy that accepts connections for it (Docker's `docker-proxy`
    /// accepts on a published port whether the container listens or not).
    /// `None`: the instance has no address of its own to reach.
    async fn own_address(&self, handle: &Handle, port: u16) -> Option<(String, u16)> {
        let _ = (handle, port);
        None
    }

    /// Whether the socket listening on loopback `port` belongs to this
    /// instance (its process tree): `Some(false)` when another process holds
    /// it, `None` when the backend cannot tell (the address it probes is the
    /// instance's own, as a container's is). A gate passes an HTTP or TCP
    /// probe only on evidence the instance produced itself.
    async fn listener_is_own(&self, handle: &Handle, port: u16) -> Option<bool> {
        let _ = (handle, port);
        None
    }

    /// When an instance started, in seconds since the epoch (for uptimes).
    async fn started_at(&self, handle: &Handle) -> Option<u64> {
        let _ = handle;
        None
    }

    /// Puts instances that a failed change left running back as they were
    /// before it (a container renamed out of the way gets its name back).
    async fn restore(&self, handles: &[Handle]) {
        let _ = handles;
    }

    /// Follows an instance's output from now on, handing each new chunk to
    /// `on_output`, until the instance's output ends. `false` when the
    /// backend cannot follow (the caller follows its log file).
    async fn follow(&self, handle: &Handle, on_output: &(dyn Fn(String) + Send + Sync)) -> bool {
        let _ = (handle, on_output);
        false
    }

    /// The last `lines` lines of an instance's output.
    async fn logs(&self, handle: &Handle, lines: usize) -> Vec<String>;

    /// Every instance marked as this project's, running or not.
    async fn discover(&self, project: &str) -> Result<Vec<Discovered>, BackendError>;
}

/// The backends a run can use, by kind. `apply`, `status` and `cleanup` pick the
/// backend of each service through it, so any backend registered here plugs in.
#[derive(Clone, Default)]
pub struct Registry {
    backends: BTreeMap<BackendKind, Arc<dyn Backend>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the local-process backend.
    pub fn with_process() -> Self {
        let mut r = Self::new();
        r.register(Arc::new(process::ProcessBackend::new()));
        r
    }

    /// The process backend plus the Docker and Swarm backends when `kinds` names
    /// them (they connect to the engine on first use).
    pub(crate) fn for_kinds(kinds: impl IntoIterator<Item = BackendKind>) -> Self {
        let mut r = Self::with_process();
        for k in kinds {
            if r.get(k).is_some() {
                continue;
            }
            match k {
                BackendKind::Docker => r.register(Arc::new(docker::DockerBackend::lazy())),
                BackendKind::Swarm => r.register(Arc::new(swarm::SwarmBackend::lazy())),
                BackendKind::Process => {}
            }
        }
        r
    }

    /// The local-process backend, Docker and Swarm. The last two connect to
    /// the engine on first use, so a run without containers needs no engine.
    pub fn with_all() -> Self {
        let mut r = Self::with_process();
        r.register(Arc::new(docker::DockerBackend::lazy()));
        r.register(Arc::new(swarm::SwarmBackend::lazy()));
        r
    }

    pub(crate) fn register(&mut self, backend: Arc<dyn Backend>) {
        self.backends.insert(backend.kind(), backend);
    }

    pub fn get(&self, kind: BackendKind) -> Option<Arc<dyn Backend>> {
        self.backends.get(&kind).cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.backends.values()
    }

    /// The capacity the backend of `kind` reports (see [`Backend::capacity`]);
    /// `None` when it reports none or does not answer (said in a warning):
    /// the caller probes this host instead.
    pub(crate) async fn capacity(&self, kind: BackendKind) -> Option<crate::inventory::Inventory> {
        let b = self.get(kind).filter(|b| b.reports_capacity())?;
        match b.capacity().await {
            Ok(inv) => inv,
            Err(e) => {
                tracing::warn!(error = %e, "the {kind} backend reports no capacity; probing this host instead");
                None
            }
        }
    }

    /// What each registered backend can do, for the planner.
    pub fn capabilities(&self) -> BTreeMap<BackendKind, Capabilities> {
        self.backends
            .iter()
            .map(|(k, b)| (*k, b.capabilities()))
            .collect()
    }
}
