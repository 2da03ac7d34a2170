//! The Docker backend: one container per replica on the local engine, through
//! bollard.
//!
//! Naming: replica 0 of service `api` in project `shop` is the container
//! `shop-api`; replica `n > 0` is `shop-api-<n>`. The project's network is the
//! user-defined bridge `shop-net`. When a new container must take a name that
//! an older container of the same service still holds (the new one starts
//! before the old one stops), the older one is renamed to `<name>-<id12>` first;
//! handles carry the container id, so nothing loses track of it.
//!
//! Every container carries the labels of [`super::marks`]: project, service,
//! spec hash, deployment revision, lineage and replica. [`DockerBackend::discover`]
//! finds them by the project label; the top-level `refresh` turns that into
//! the observations that `plan` reads.
//!
//! What it shares with `swarm` (the client, labels, environment, command
//! line, mounts, host ports, log tails, probes in a container) is in
//! `engine`.
//!
//! `command` and `args`: `command` (when given) replaces the image's
//! ENTRYPOINT and `args` replace its CMD; `args` alone replace only the CMD,
//! keeping the image's ENTRYPOINT; neither keeps both image defaults.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy as DockerRestart,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectNetworkOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

pub use super::engine::{
    Engine, connect, device_requests, engine_info, free_port, labels, volume_name,
};
use super::engine::{
    NETWORK_LOCK, command_line, container_health, env_list, exec_probe, is_conflict, is_not_found,
    log_tail, message, mounts, port_key, release_ports,
};
use super::{Backend, BackendError, Discovered, Liveness, ProbeOutcome, StartContext, marks};
use crate::instance::Handle;
use crate::model::{BackendKind, RestartPolicy, ServiceName, ServiceSpec};

/// The container name of one replica: `<project>-<service>`, `-<replica>` for replicas after the first.
pub(crate) fn container_name(project: &str, service: &str, replica: u32) -> String {
    if replica == 0 {
        format!("{project}-{service}")
    } else {
        format!("{project}-{service}-{replica}")
    }
}

/// The project's user-defined bridge network.
pub fn network_name(project: &str) -> String {
    format!("{project}-net")
}

/// Where a container's network comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attachment {
    /// The project network, created when missing and removed when empty.
    Project(String),
    /// An existing network named in the config, joined as it is.
    Existing(String),
    /// The host's network stack: no namespace, no published ports.
    Host,
}

impl Attachment {
    /// The network `spec` names (see [`ServiceSpec::network`]), else the
    /// project's.
    pub fn of(spec: &ServiceSpec, ctx: &StartContext) -> Self {
        match spec.network.as_deref() {
            Some("host") => Attachment::Host,
            Some(name) => Attachment::Existing(name.to_owned()),
            None => Attachment::Project(network_name(&ctx.project)),
        }
    }

    /// The `network_mode` of the container.
    fn mode(&self) -> &str {
        match self {
            Attachment::Project(n) | Attachment::Existing(n) => n,
            Attachment::Host => "host",
        }
    }

    /// Docker's default `bridge` knows no aliases (no name resolution).
    fn takes_aliases(&self) -> bool {
        match self {
            Attachment::Project(_) => true,
            Attachment::Existing(n) => n != "bridge",
            Attachment::Host => false,
        }
    }
}

fn restart_policy(r: RestartPolicy) -> DockerRestart {
    let name = match r {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
    };
    DockerRestart {
        name: Some(name),
        maximum_retry_count: None,
    }
}

/// Whether a container runs under a monitor of its own (`deploy-code
/// __monitor`): it restarts after `health_check.restart_after_failures`
/// failed probes, with a back-off and a circuit breaker (lowered into
/// `restart_settings` only then).
pub(crate) fn monitored(spec: &ServiceSpec) -> bool {
    spec.restart_settings.is_some()
        && spec.restart != RestartPolicy::No
        && spec
            .health_check
            .as_ref()
            .is_some_and(|h| h.restart_after_failures.is_some())
}

/// The handle of container `id` (named `name`) as replica `replica`: what a
/// container's monitor probes and restarts.
pub(crate) fn container_handle(replica: u32, id: &str, name: &str) -> Handle {
    Handle::Container {
        replica,
        id: id.to_owned(),
        name: name.to_owned(),
    }
}

/// The live monitors (pids) that watch container `id`, found by their mark.
fn monitors_of(id: &str) -> Vec<u32> {
    let me = std::process::id();
    crate::procfs::pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter(|p| {
            crate::procfs::environ(*p, super::monitor_file::ENV_CONTAINER).is_some_and(|env| {
                env.get(super::monitor_file::ENV_CONTAINER)
                    .map(String::as_str)
                    == Some(id)
            })
        })
        .filter(|p| crate::procfs::stat(*p).is_some_and(|s| !s.is_dead()))
        .collect()
}

/// Stops the monitors of container `id` (SIGTERM, SIGKILL after `grace`), so
/// that none restarts the container while it is stopped, or outlives it.
async fn stop_monitors(id: &str, grace: Duration) {
    let pids: Vec<(u32, u64)> = monitors_of(id)
        .into_iter()
        .filter_map(|p| Some((p, crate::procfs::start_time(p)?)))
        .collect();
    if pids.is_empty() {
        return;
    }
    let alive = |(p, t): &(u32, u64)| {
        crate::procfs::stat(*p).is_some_and(|s| s.start_time == *t && !s.is_dead())
    };
    let signal = |sig: i32| {
        for (p, t) in &pids {
            if alive(&(*p, *t))
                && let Ok(p) = i32::try_from(*p)
            {
                // SAFETY: plain syscall on a monitor found by its mark just now.
                unsafe {
                    libc::kill(p, sig);
                }
            }
        }
    };
    signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + grace + Duration::from_secs(2);
    let mut wait = Duration::from_millis(5);
    while std::time::Instant::now() < deadline {
        if !pids.iter().any(alive) {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
    signal(libc::SIGKILL);
    for _ in 0..100 {
        if !pids.iter().any(alive) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How a watched container's run ended, as its monitor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ContainerEnd {
    /// It stopped with this exit code (and was killed by the engine for
    /// memory when `oom`).
    Exited { code: Option<i64>, oom: bool },
    /// It is gone (removed) or the engine does not know it.
    Gone,
}

/// The container's create body. `host_ports` gives the host port of every
/// entry of `spec.ports` (already allocated where the config named none).
pub(crate) fn container_body(
    spec: &ServiceSpec,
    ctx: &StartContext,
    replica: u32,
    host_ports: &[u16],
) -> Result<ContainerCreateBody, BackendError> {
    let image = spec
        .image
        .clone()
        .ok_or_else(|| BackendError::StartFailed {
            service: spec.name.to_string(),
            message: "a container needs an `image`".into(),
        })?;
    let (entrypoint, cmd) = command_line(spec)?;
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for (p, host) in spec.ports.iter().zip(host_ports) {
        bindings
            .entry(port_key(p))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(host.to_string()),
            });
    }
    let attachment = Attachment::of(spec, ctx);
    let host_net = attachment == Attachment::Host;
    if host_net {
        // The container's ports are bound on the host directly.
        bindings.clear();
    }
    let mounts = mounts(spec, &ctx.project);
    let host_config = HostConfig {
        nano_cpus: (spec.resources.cpu_cores > 0.0)
            .then(|| (spec.resources.cpu_cores * 1e9).round() as i64),
        memory: (spec.resources.memory_mb > 0)
            .then(|| spec.resources.memory_mb as i64 * 1024 * 1024),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        // A monitored container is restarted by its monitor alone (with the
        // back-off and the circuit breaker), never by the engine as well.
        restart_policy: Some(restart_policy(if monitored(spec) {
            RestartPolicy::No
        } else {
            spec.restart
        })),
        device_requests: device_requests(&ctx.gpus),
        network_mode: Some(attachment.mode().to_owned()),
        dns: (!host_net && !ctx.network.dns_servers.is_empty())
            .then(|| ctx.network.dns_servers.clone()),
        ..Default::default()
    };
    let mut endpoints = HashMap::new();
    if !host_net {
        endpoints.insert(
            attachment.mode().to_owned(),
            EndpointSettings {
                aliases: attachment
                    .takes_aliases()
                    .then(|| vec![spec.name.to_string()]),
                ..Default::default()
            },
        );
    }
    Ok(ContainerCreateBody {
        image: Some(image),
        env: Some(env_list(spec)?),
        entrypoint,
        cmd,
        working_dir: spec.working_dir.clone(),
        labels: Some(labels(spec, ctx, Some(replica))),
        exposed_ports: (!host_net && !spec.ports.is_empty())
            .then(|| spec.ports.iter().map(port_key).collect()),
        host_config: Some(host_config),
        networking_config: (!host_net).then_some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        stop_timeout: None,
        ..Default::default()
    })
}

/// The Docker backend.
#[derive(Clone, Debug)]
pub struct DockerBackend {
    engine: Engine,
    prepared: Prepared,
    /// `(container id, container port)` -> the published address, which stays
    /// the same for the container's life: a health gate probing every 20 ms
    /// need not inspect the container for it each time.
    published: std::sync::Arc<Mutex<HashMap<(String, u16), Address>>>,
}

/// A host and port to probe.
type Address = (String, u16);

/// Images and networks already known to be present.
#[derive(Clone, Debug, Default)]
struct Prepared(std::sync::Arc<Mutex<BTreeSet<String>>>);

impl Prepared {
    fn known(&self, key: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }
    fn remember(&self, key: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
    }
    fn forget(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl DockerBackend {
    /// Connects to the local engine now (see [`connect`]).
    pub async fn connect() -> Result<Self, BackendError> {
        Ok(Self::with_engine(Engine::connect().await?))
    }

    /// A backend that connects on first use.
    pub(crate) fn lazy() -> Self {
        Self::with_engine(Engine::lazy())
    }

    pub(crate) fn with_engine(engine: Engine) -> Self {
        Self {
            engine,
            prepared: Prepared::default(),
            published: Default::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    async fn api(&self) -> Result<&Docker, BackendError> {
        self.engine.get().await
    }

    /// Makes the network the containers join ready: the project's bridge
    /// network (with the configured CIDR) is created when it does not exist;
    /// an existing network named in the config must exist; the host network
    /// needs nothing. Returns the network mode containers get.
    pub(crate) async fn ensure_network(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
    ) -> Result<String, BackendError> {
        let name = match Attachment::of(spec, ctx) {
            Attachment::Host => return Ok("host".into()),
            Attachment::Existing(name) => {
                let docker = self.api().await?;
                return match docker
                    .inspect_network(&name, None::<InspectNetworkOptions>)
                    .await
                {
                    Ok(_) => Ok(name),
                    Err(e) if is_not_found(&e) => Err(BackendError::Network {
                        message: format!(
                            "the network `{name}` (`infrastructure.network.name`) does not exist; \
                             create it (`docker network create {name}`) or remove `name` to use the project network"
                        ),
                    }),
                    Err(e) => Err(BackendError::Network {
                        message: message(&e),
                    }),
                };
            }
            Attachment::Project(name) => name,
        };
        let docker = self.api().await?;
        // The engine does not refuse a second network of the same name, so
        // concurrent starts of one project must not race to create it.
        let _serial = NETWORK_LOCK.lock().await;
        match docker
            .inspect_network(&name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(_) => return Ok(name),
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(BackendError::Network {
                    message: message(&e),
                });
            }
        }
        let mut labels = HashMap::new();
        labels.insert(marks::PROJECT.to_owned(), ctx.project.clone());
        labels.insert(marks::LINEAGE.to_owned(), ctx.lineage.clone());
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            ipam: ctx.network.cidr.as_ref().map(|cidr| Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(cidr.clone()),
                    ..Default::default()
                }]),
                options: None,
            }),
            labels: Some(labels),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => Ok(name),
            // Created meanwhile by a concurrent start.
            Err(e) if is_conflict(&e) => Ok(name),
            Err(e) => Err(BackendError::Network {
                message: format!("creating `{name}`: {}", message(&e)),
            }),
        }
    }

    /// Removes the project's network when no container is attached to it.
    /// Returns whether it was removed (false: absent or still in use).
    pub async fn remove_network_if_empty(&self, project: &str) -> Result<bool, BackendError> {
        let docker = self.api().await?;
        let name = network_name(project);
        let net = match docker
            .inspect_network(&name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => n,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => {
                return Err(BackendError::Network {
                    message: message(&e),
                });
            }
        };
        if net.containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Ok(false);
        }
        self.prepared.forget();
        match docker.remove_network(&name).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            // Something joined it meanwhile.
            Err(e) if is_conflict(&e) || message(&e).contains("active endpoints") => Ok(false),
            Err(e) => Err(BackendError::Network {
                message: format!("removing `{name}`: {}", message(&e)),
            }),
        }
    }

    /// Makes `image` present: used as is when local, else pulled (progress is
    /// traced), else [`BackendError::ImageUnavailable`].
    pub(crate) async fn ensure_image(&self, image: &str) -> Result<(), BackendError> {
        self.ensure_image_reporting(image, &|_| {}).await
    }

    /// [`Self::ensure_image`], with a line to `progress` when a pull starts,
    /// at most every half second while it runs (layers done, bytes
    /// downloaded) and when it ends.
    pub(crate) async fn ensure_image_reporting(
        &self,
        image: &str,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), BackendError> {
        super::engine::ensure_image(self.api().await?, image, progress).await
    }

    async fn ensure_volumes(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
    ) -> Result<(), BackendError> {
        let docker = self.api().await?;
        for v in spec.volumes.iter().filter(|v| v.host_path.is_none()) {
            let name = volume_name(&ctx.project, &v.name);
            let mut labels = HashMap::new();
            labels.insert(marks::PROJECT.to_owned(), ctx.project.clone());
            let req = bollard::models::VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            };
            docker
                .create_volume(req)
                .await
                .map_err(|e| BackendError::Volume {
                    volume: name,
                    message: message(&e),
                })?;
        }
        Ok(())
    }

    /// Starts one replica; `Err` carries whether a port clash caused it.
    async fn start_replica(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        replica: u32,
    ) -> Result<Handle, BackendError> {
        let name = container_name(&ctx.project, spec.name.as_str(), replica);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut chosen = Vec::new();
            let mut taken = BTreeSet::new();
            let mut allocated = Vec::new();
            // Behind a traffic switch the switch holds the host ports: the
            // container publishes none and is reached on its network.
            let published: &[crate::model::PortSpec] =
                if spec.behind_switch { &[] } else { &spec.ports };
            for p in published {
                let port = match p.host_port {
                    Some(h) => h,
                    None if Attachment::of(spec, ctx) == Attachment::Host => p.container_port,
                    None => {
                        let port = free_port(ctx.network.port_range, p.protocol, &taken)
                            .ok_or_else(|| BackendError::Network {
                                message: format!(
                                    "no free host port left in {}-{} for `{}`",
                                    ctx.network.port_range.0, ctx.network.port_range.1, spec.name
                                ),
                            })?;
                        allocated.push(port);
                        port
                    }
                };
                taken.insert(port);
                chosen.push(port);
            }
            let result = self
                .create_and_start(spec, ctx, replica, &name, &chosen)
                .await;
            release_ports(&allocated);
            match result {
                Err(Clash::Port(msg)) if !allocated.is_empty() && attempts < 5 => {
                    tracing::debug!(service = %spec.name, msg, "host port taken meanwhile, retrying");
                }
                Err(Clash::Port(msg)) | Err(Clash::Other(msg)) => {
                    return Err(BackendError::StartFailed {
                        service: spec.name.to_string(),
                        message: msg,
                    });
                }
                Err(Clash::Backend(e)) => return Err(e),
                Ok(handle) => return Ok(handle),
            }
        }
    }

    async fn create_and_start(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        replica: u32,
        name: &str,
        host_ports: &[u16],
    ) -> Result<Handle, Clash> {
        let docker = self.api().await.map_err(Clash::Backend)?;
        let body = container_body(spec, ctx, replica, host_ports).map_err(Clash::Backend)?;
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = match docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(c) => c,
            Err(e) if is_conflict(&e) => {
                if let Some(adopted) = self.make_room(spec, ctx, replica, name).await? {
                    return Ok(adopted);
                }
                docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(|e| Clash::Other(message(&e)))?
            }
            Err(e) => return Err(Clash::Other(message(&e))),
        };
        let id = created.id;
        if let Err(e) = docker.start_container(&id, None).await {
            let msg = message(&e);
            let _ = docker
                .remove_container(
                    &id,
                    Some(
                        RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .v(false)
                            .build(),
                    ),
                )
                .await;
            if msg.contains("port is already allocated") || msg.contains("address already in use") {
                return Err(Clash::Port(msg));
            }
            return Err(Clash::Other(msg));
        }
        Ok(Handle::Container {
            replica,
            id,
            name: name.to_owned(),
        })
    }

    /// `name` is taken. A running container of the same service with the same
    /// spec (left by a run that was killed) is adopted; another container of
    /// this project is renamed out of the way; anything else is an error.
    async fn make_room(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        replica: u32,
        name: &str,
    ) -> Result<Option<Handle>, Clash> {
        let docker = self.api().await.map_err(Clash::Backend)?;
        let existing = docker
            .inspect_container(name, None)
            .await
            .map_err(|e| Clash::Other(message(&e)))?;
        let labels = existing
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let id = existing.id.clone().unwrap_or_default();
        if labels.get(marks::PROJECT) != Some(&ctx.project)
            || labels.get(marks::SERVICE).map(String::as_str) != Some(spec.name.as_str())
        {
            return Err(Clash::Other(format!(
                "the container name `{name}` is taken by a container that project `{}` did not create",
                ctx.project
            )));
        }
        let running = existing
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        if running
            && labels.get(marks::SPEC_HASH) == Some(&spec.spec_hash())
            && labels.get(marks::LINEAGE) == Some(&ctx.lineage)
        {
            tracing::info!(
                container = name,
                "adopting a running container with the same spec"
            );
            return Ok(Some(Handle::Container {
                replica,
                id,
                name: name.to_owned(),
            }));
        }
        let short: String = id.chars().take(12).collect();
        let new_name = format!("{name}-{short}");
        docker
            .rename_container(
                &id,
                RenameContainerOptionsBuilder::default()
                    .name(&new_name)
                    .build(),
            )
            .await
            .map_err(|e| Clash::Other(message(&e)))?;
        Ok(None)
    }

    /// Starts the monitor of a container that restarts on failed probes: a
    /// `deploy-code __monitor` in a session of its own, marked with the
    /// container's id, its own lines in `<log_dir>/<container>.<id12>.monitor.log`.
    /// A container that already has a live monitor keeps it.
    fn ensure_monitor(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        handle: &Handle,
    ) -> Result<(), BackendError> {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        let Handle::Container { replica, id, name } = handle else {
            return Ok(());
        };
        if !monitored(spec) || !monitors_of(id).is_empty() {
            return Ok(());
        }
        let failed = |message: String| BackendError::StartFailed {
            service: spec.name.to_string(),
            message,
        };
        let program = super::logwriter::program().ok_or_else(|| {
            failed("the `deploy-code` binary that monitors the container was not found".into())
        })?;
        crate::fsperm::private_dir(&ctx.log_dir).map_err(|e| {
            failed(format!(
                "log directory `{}` cannot be created: {e}",
                ctx.log_dir.display()
            ))
        })?;
        let log_path = super::monitor_file::container_log_path(&ctx.log_dir, name, id);
        let log = crate::fsperm::private_append(&log_path)
            .map_err(|e| failed(format!("log file `{}`: {e}", log_path.display())))?;
        let err = log
            .try_clone()
            .map_err(|e| failed(format!("log file `{}`: {e}", log_path.display())))?;
        let mut cmd = std::process::Command::new(program);
        cmd.arg(super::monitor_file::ARG)
            .env_clear()
            .env(
                crate::procfs::SMALL_HEAP_ENV.0,
                crate::procfs::SMALL_HEAP_ENV.1,
            )
            .stdin(std::process::Stdio::piped())
            .stdout(log)
            .stderr(err)
            .current_dir(&ctx.log_dir);
        // The engine it talks to is this run's.
        for (k, v) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("DOCKER_")) {
                cmd.env(k, v);
            }
        }
        // Marks of its own, not an instance's: the process backend's
        // discovery must not take it for a process of the project.
        cmd.env(super::monitor_file::ENV_CONTAINER, id)
            .env(super::monitor_file::ENV_CONTAINER_PROJECT, &ctx.project);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(format!("its monitor could not be started: {e}")))?;
        let launch = super::monitor_file::Launch {
            program: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: ctx.log_dir.clone(),
            status_path: super::monitor_file::status_path(&log_path),
            replica: *replica,
            revision: ctx.revision,
            spec: spec.clone(),
            grace_seconds: super::monitor_file::GRACE_SECONDS,
            container: Some(super::monitor_file::ContainerTarget {
                id: id.clone(),
                name: name.clone(),
            }),
        };
        let sent = child.stdin.take().map(|mut pipe| {
            let line = serde_json::to_string(&launch).map_err(std::io::Error::other)?;
            writeln!(pipe, "{line}")
        });
        if !matches!(sent, Some(Ok(()))) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(
                "its monitor could not be given its container".into(),
            ));
        }
        // Reap it whenever it ends, so that a long-lived caller (`serve`)
        // keeps no zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(())
    }

    /// Stops container `id` for a restart (the engine's stop: SIGTERM,
    /// SIGKILL after `grace`) and keeps it; returns how it ended.
    pub(crate) async fn stop_for_restart(&self, id: &str, grace: Duration) -> ContainerEnd {
        let Ok(docker) = self.api().await else {
            return ContainerEnd::Exited {
                code: None,
                oom: false,
            };
        };
        let t = grace.as_secs().min(i32::MAX as u64) as i32;
        match docker
            .stop_container(
                id,
                Some(StopContainerOptionsBuilder::default().t(t).build()),
            )
            .await
        {
            Err(e) if is_not_found(&e) => return ContainerEnd::Gone,
            _ => {}
        }
        self.ended(id).await.unwrap_or(ContainerEnd::Exited {
            code: None,
            oom: false,
        })
    }

    /// Starts the stopped container `id` again.
    pub(crate) async fn start_again(&self, id: &str) -> Result<(), String> {
        let docker = self.api().await.map_err(|e| e.to_string())?;
        match docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            // 304: it runs already.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(message(&e)),
        }
    }

    /// How container `id` ended, once it has: `None` while it runs.
    async fn ended(&self, id: &str) -> Option<ContainerEnd> {
        let docker = self.api().await.ok()?;
        match docker.inspect_container(id, None).await {
            Ok(c) => {
                let state = c.state?;
                if state.running == Some(true) || state.restarting == Some(true) {
                    return None;
                }
                Some(ContainerEnd::Exited {
                    code: state.exit_code,
                    oom: state.oom_killed == Some(true),
                })
            }
            Err(e) if is_not_found(&e) => Some(ContainerEnd::Gone),
            Err(_) => None,
        }
    }

    /// Waits until container `id` stops (the engine's wait, not a poll) and
    /// says how it ended.
    pub(crate) async fn wait_end(&self, id: &str) -> ContainerEnd {
        loop {
            if let Ok(docker) = self.api().await {
                let options = bollard::query_parameters::WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build();
                let mut stream = docker.wait_container(id, Some(options));
                while let Some(r) = stream.next().await {
                    if let Err(e) = r
                        && is_not_found(&e)
                    {
                        return ContainerEnd::Gone;
                    }
                }
            }
            if let Some(end) = self.ended(id).await {
                return end;
            }
            // The engine did not answer, or the wait ended early: look again.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn inspect(&self, handle: &Handle) -> Option<bollard::models::ContainerInspectResponse> {
        let docker = self.api().await.ok()?;
        let Handle::Container { id, .. } = handle else {
            return None;
        };
        docker.inspect_container(id, None).await.ok()
    }

    /// Every container labelled with `project`, with its labels.
    async fn list_project(
        &self,
        project: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, BackendError> {
        let docker = self.api().await?;
        let mut filters = HashMap::new();
        filters.insert("label", vec![format!("{}={project}", marks::PROJECT)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        docker
            .list_containers(Some(options))
            .await
            .map_err(|e| BackendError::Unavailable {
                what: "the Docker engine".into(),
                message: message(&e),
            })
    }
}

enum Clash {
    Port(String),
    Other(String),
    Backend(BackendError),
}

fn container_liveness(state: Option<&bollard::models::ContainerState>) -> Liveness {
    let Some(state) = state else {
        return Liveness::Missing;
    };
    match state.status {
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            Liveness::Exited(state.exit_code.map(|c| c as i32))
        }
        Some(ContainerStateStatusEnum::REMOVING) => Liveness::Missing,
        _ => Liveness::Running,
    }
}

fn summary_liveness(
    state: Option<&bollard::models::ContainerSummaryStateEnum>,
    status: &str,
) -> Liveness {
    use bollard::models::ContainerSummaryStateEnum as S;
    match state {
        Some(S::EXITED) | Some(S::DEAD) => {
            // "Exited (3) 2 seconds ago"
            let code = status
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .and_then(|(n, _)| n.trim().parse().ok());
            Liveness::Exited(code)
        }
        Some(S::REMOVING) => Liveness::Missing,
        _ => Liveness::Running,
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn prerequisite(&self) -> Option<super::Prerequisite> {
        Some(super::engine::PREREQUISITE)
    }

    async fn check_prerequisite(&self) -> Result<String, String> {
        super::engine::check_engine().await
    }

    fn has_native_health(&self) -> bool {
        true
    }

    fn tears_down_network(&self) -> bool {
        true
    }

    fn follows_logs(&self) -> bool {
        true
    }

    async fn teardown_network(&self, project: &str) -> Result<bool, BackendError> {
        self.remove_network_if_empty(project).await
    }

    async fn prepare(
        &self,
        spec: &ServiceSpec,
        _ctx: &StartContext,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), BackendError> {
        let Some(image) = spec.image.as_deref() else {
            return Ok(());
        };
        let key = format!("image:{image}");
        if !self.prepared.known(&key) {
            self.ensure_image_reporting(image, progress).await?;
            self.prepared.remember(key);
        }
        Ok(())
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
    ) -> Result<Vec<Handle>, BackendError> {
        let image = spec
            .image
            .as_deref()
            .ok_or_else(|| BackendError::StartFailed {
                service: spec.name.to_string(),
                message: "a container needs an `image`".into(),
            })?;
        // The image and the network are checked once per backend; should
        // either vanish meanwhile, the start fails, both are checked again
        // and the start is tried once more.
        for attempt in 0..2 {
            let image_key = format!("image:{image}");
            if !self.prepared.known(&image_key) {
                self.ensure_image(image).await?;
                self.prepared.remember(image_key);
            }
            let net_key = format!("net:{}:{:?}", ctx.project, Attachment::of(spec, ctx));
            if !self.prepared.known(&net_key) {
                self.ensure_network(spec, ctx).await?;
                self.prepared.remember(net_key);
            }
            self.ensure_volumes(spec, ctx).await?;
            let results = futures_util::future::join_all(
                ctx.replicas(spec).map(|r| self.start_replica(spec, ctx, r)),
            )
            .await;
            let mut handles = Vec::new();
            let mut first_error = None;
            for r in results {
                match r {
                    Ok(h) => handles.push(h),
                    Err(e) if first_error.is_none() => first_error = Some(e),
                    Err(_) => {}
                }
            }
            if first_error.is_none() {
                for h in &handles {
                    if let Err(e) = self.ensure_monitor(spec, ctx, h) {
                        first_error = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = first_error else {
                return Ok(handles);
            };
            // Leave nothing half-started behind.
            let _ = self.stop(&handles, Duration::from_secs(1)).await;
            let stale = matches!(&e, BackendError::StartFailed { message, .. }
                if message.contains("No such image") || (message.contains("network") && message.contains("not found")));
            if attempt == 0 && stale {
                self.prepared.forget();
                continue;
            }
            return Err(e);
        }
        unreachable!("the loop returns")
    }

    /// An adopted container that restarts on failed probes gets its monitor
    /// again when none watches it (one that survived keeps watching).
    async fn supervise(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        handles: &[Handle],
    ) -> Result<(), BackendError> {
        for h in handles {
            self.ensure_monitor(spec, ctx, h)?;
        }
        Ok(())
    }

    async fn stop(&self, handles: &[Handle], grace: Duration) -> Result<(), BackendError> {
        let docker = self.api().await?;
        let results = futures_util::future::join_all(handles.iter().map(|h| async move {
            let Handle::Container { id, name, .. } = h else {
                return Ok(());
            };
            // Its monitor first, so that nothing restarts it meanwhile.
            stop_monitors(id, Duration::from_secs(super::monitor_file::GRACE_SECONDS)).await;
            let t = grace.as_secs().min(i32::MAX as u64) as i32;
            match docker
                .stop_container(id, Some(StopContainerOptionsBuilder::default().t(t).build()))
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                // 304: already stopped.
                Err(DockerError::DockerResponseServerError { status_code: 304, .. }) => {}
                Err(e) => tracing::debug!(container = %name, error = %message(&e), "stop failed, forcing removal"),
            }
            match docker
                .remove_container(id, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) if message(&e).contains("already in progress") => Ok(()),
                Err(e) => Err(BackendError::StopFailed {
                    service: name.clone(),
                    message: message(&e),
                }),
            }
        }))
        .await;
        results.into_iter().collect()
    }

    async fn liveness(&self, handle: &Handle) -> Liveness {
        let Ok(docker) = self.api().await else {
            return Liveness::Running;
        };
        let Handle::Container { id, .. } = handle else {
            return Liveness::Missing;
        };
        match docker.inspect_container(id, None).await {
            Ok(c) => container_liveness(c.state.as_ref()),
            Err(e) if is_not_found(&e) => Liveness::Missing,
            // The engine did not answer: say nothing stronger than "running".
            Err(_) => Liveness::Running,
        }
    }

    async fn exec_probe(
        &self,
        handle: &Handle,
        argv: &[String],
        timeout: Duration,
    ) -> ProbeOutcome {
        let docker = match self.api().await {
            Ok(d) => d,
            Err(e) => {
                return ProbeOutcome {
                    healthy: false,
                    detail: e.to_string(),
                };
            }
        };
        let Handle::Container { id, .. } = handle else {
            return ProbeOutcome {
                healthy: false,
                detail: "not a container".into(),
            };
        };
        exec_probe(docker, id, argv, timeout).await
    }

    async fn native_health(&self, handle: &Handle) -> Option<bool> {
        let docker = self.api().await.ok()?;
        let Handle::Container { id, .. } = handle else {
            return None;
        };
        container_health(docker, id).await
    }

    async fn probe_address(&self, handle: &Handle, port: u16) -> (String, u16) {
        let fallback = ("127.0.0.1".to_owned(), port);
        let key = match handle {
            Handle::Container { id, .. } => (id.clone(), port),
            _ => return fallback,
        };
        if let Some(addr) = self.published.lock().expect("published").get(&key) {
            return addr.clone();
        }
        let Some(c) = self.inspect(handle).await else {
            return fallback;
        };
        let Some(net) = c.network_settings else {
            return fallback;
        };
        let published = net.ports.as_ref().and_then(|ports| {
            ["tcp", "udp"].iter().find_map(|proto| {
                ports
                    .get(&format!("{port}/{proto}"))?
                    .as_ref()?
                    .iter()
                    .find_map(|b| {
                        let hp: u16 = b.host_port.as_deref()?.parse().ok()?;
                        let ip = match b.host_ip.as_deref() {
                            None | Some("") | Some("0.0.0.0") => "127.0.0.1".to_owned(),
                            Some("::") => "::1".to_owned(),
                            Some(ip) => ip.to_owned(),
                        };
                        Some((ip, hp))
                    })
            })
        });
        if let Some(addr) = published {
            self.published
                .lock()
                .expect("published")
                .insert(key, addr.clone());
            return addr;
        }
        net.networks
            .as_ref()
            .and_then(|n| {
                n.values()
                    .find_map(|e| e.ip_address.clone().filter(|ip| !ip.is_empty()))
            })
            .map(|ip| (ip, port))
            .unwrap_or(fallback)
    }

    async fn follow(&self, handle: &Handle, on_output: &(dyn Fn(String) + Send + Sync)) -> bool {
        let (Ok(docker), Handle::Container { id, .. }) = (self.api().await, handle) else {
            return false;
        };
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .tail("0")
            .build();
        let mut stream = docker.logs(id, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            on_output(chunk.to_string());
        }
        true
    }

    async fn started_at(&self, handle: &Handle) -> Option<u64> {
        let state = self.inspect(handle).await?.state?;
        if state.running != Some(true) {
            return None;
        }
        let at = time::OffsetDateTime::parse(
            state.started_at.as_deref()?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        u64::try_from(at.unix_timestamp()).ok()
    }

    async fn own_address(&self, handle: &Handle, port: u16) -> Option<(String, u16)> {
        let c = self.inspect(handle).await?;
        let ip = c
            .network_settings?
            .networks?
            .into_values()
            .find_map(|e| e.ip_address.filter(|ip| !ip.is_empty()))?;
        Some((ip, port))
    }

    async fn restore(&self, handles: &[Handle]) {
        let Ok(docker) = self.api().await else {
            return;
        };
        for h in handles {
            let Handle::Container { id, name, .. } = h else {
                continue;
            };
            let Ok(c) = docker.inspect_container(id, None).await else {
                continue;
            };
            if c.name.as_deref().map(|n| n.trim_start_matches('/')) == Some(name.as_str()) {
                continue;
            }
            let renamed = docker
                .rename_container(
                    id,
                    RenameContainerOptionsBuilder::default().name(name).build(),
                )
                .await;
            if let Err(e) = renamed {
                tracing::warn!(container = %name, error = %message(&e), "could not take its name back");
            }
        }
    }

    async fn logs(&self, handle: &Handle, lines: usize) -> Vec<String> {
        let Ok(docker) = self.api().await else {
            return Vec::new();
        };
        let Handle::Container { id, .. } = handle else {
            return Vec::new();
        };
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        log_tail(docker.logs(id, Some(options)), lines).await
    }

    async fn discover(&self, project: &str) -> Result<Vec<Discovered>, BackendError> {
        let mut found = Vec::new();
        for c in self.list_project(project).await? {
            let labels = c.labels.clone().unwrap_or_default();
            let Some(service) = labels
                .get(marks::SERVICE)
                .and_then(|s| ServiceName::parse(s).ok())
            else {
                continue;
            };
            let replica = labels
                .get(marks::REPLICA)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default();
            found.push(Discovered {
                service,
                handle: Handle::Container {
                    replica,
                    id: c.id.clone().unwrap_or_default(),
                    name,
                },
                spec_hash: labels.get(marks::SPEC_HASH).cloned(),
                lineage: labels.get(marks::LINEAGE).cloned(),
                liveness: summary_liveness(c.state.as_ref(), c.status.as_deref().unwrap_or("")),
                replicas: None,
            });
        }
        found.sort_by(|a, b| {
            (&a.service, format!("{:?}", a.handle)).cmp(&(&b.service, format!("{:?}", b.handle)))
        });
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::engine::split_image;
    use crate::instance::GpuRef;
    use crate::model::{PortSpec, Protocol, Resources, Text, VolumeSpec, Workload};
    use bollard::models::MountType;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn ctx(gpus: Vec<GpuRef>) -> StartContext {
        StartContext {
            project: "shop".into(),
            lineage: "lin-1".into(),
            revision: 7,
            log_dir: PathBuf::from("/tmp"),
            data_dir: PathBuf::from("/tmp"),
            base_dir: PathBuf::from("/tmp"),
            network: Default::default(),
            gpus,
            only_replicas: None,
            stop_grace: std::time::Duration::from_secs(10),
        }
    }

    fn spec() -> ServiceSpec {
        let key = crate::model::SecretKey::new([3; 32]);
        let mut env = BTreeMap::new();
        env.insert("MODE".into(), Text::plain("prod"));
        env.insert(
            "TOKEN".into(),
            Text::Sensitive(crate::model::Sensitive::new(&key, "s3cret".into())),
        );
        ServiceSpec {
            name: ServiceName::parse("api").unwrap(),
            backend: BackendKind::Docker,
            workload: Workload::Service,
            replicas: 1,
            image: Some("example/api:1.2".into()),
            command: Some(Text::plain("/bin/server")),
            args: vec![Text::plain("--port"), Text::plain("8080")],
            working_dir: Some("/srv".into()),
            env,
            dependencies: vec![],
            resources: Resources {
                cpu_cores: 1.5,
                memory_mb: 256,
                ..Default::default()
            },
            health_check: None,
            ports: vec![PortSpec {
                container_port: 8080,
                host_port: None,
                host_ip: Some("127.0.0.1".into()),
                protocol: Protocol::Tcp,
            }],
            volumes: vec![
                VolumeSpec {
                    name: "data".into(),
                    host_path: None,
                    mount_path: "/data".into(),
                    read_only: false,
                },
                VolumeSpec {
                    name: "conf".into(),
                    host_path: Some("/etc/shop".into()),
                    mount_path: "/conf".into(),
                    read_only: true,
                },
            ],
            restart: RestartPolicy::OnFailure,
            restart_settings: None,
            labels: BTreeMap::new(),
            network: None,
            behind_switch: false,
            switch: None,
            swarm_update: None,
            inherit_env: Vec::new(),
        }
    }

    #[test]
    fn names_follow_the_documented_scheme() {
        assert_eq!(container_name("shop", "api", 0), "shop-api");
        assert_eq!(container_name("shop", "api", 2), "shop-api-2");
        assert_eq!(network_name("shop"), "shop-net");
    }

    #[test]
    fn the_create_body_honours_the_spec() {
        let b = container_body(&spec(), &ctx(vec![]), 0, &[31000]).unwrap();
        assert_eq!(b.entrypoint, Some(vec!["/bin/server".to_owned()]));
        assert_eq!(b.cmd, Some(vec!["--port".to_owned(), "8080".to_owned()]));
        assert_eq!(b.working_dir.as_deref(), Some("/srv"));
        let env = b.env.unwrap();
        assert!(env.contains(&"MODE=prod".to_owned()));
        assert!(
            env.contains(&"TOKEN=s3cret".to_owned()),
            "the engine gets the plaintext"
        );
        let labels = b.labels.unwrap();
        assert_eq!(labels[marks::PROJECT], "shop");
        assert_eq!(labels[marks::DEPLOYMENT], "7");
        assert_eq!(labels[marks::SPEC_HASH], spec().spec_hash());
        assert!(!labels.values().any(|v| v.contains("s3cret")));
        let hc = b.host_config.unwrap();
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.memory, Some(256 * 1024 * 1024));
        assert_eq!(hc.network_mode.as_deref(), Some("shop-net"));
        let binding = &hc.port_bindings.unwrap()["8080/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_port.as_deref(), Some("31000"));
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        let mounts = hc.mounts.unwrap();
        assert_eq!(mounts[0].source.as_deref(), Some("shop-data"));
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[1].typ, Some(MountType::BIND));
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::ON_FAILURE)
        );
        assert_eq!(hc.device_requests, None);
    }

    #[test]
    fn the_network_follows_the_settings() {
        let aliases = |b: &ContainerCreateBody, net: &str| {
            b.networking_config
                .as_ref()
                .unwrap()
                .endpoints_config
                .as_ref()
                .unwrap()[net]
                .aliases
                .clone()
        };
        // An existing user-defined network: joined, with the service's alias.
        let c = ctx(vec![]);
        let mut s = spec();
        s.network = Some("edge".into());
        let b = container_body(&s, &c, 0, &[31000]).unwrap();
        let hc = b.host_config.as_ref().unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("edge"));
        assert_eq!(aliases(&b, "edge"), Some(vec!["api".to_owned()]));
        assert_eq!(Attachment::of(&s, &c), Attachment::Existing("edge".into()));
        // Docker's default bridge takes no aliases.
        s.network = Some("bridge".into());
        let b = container_body(&s, &c, 0, &[31000]).unwrap();
        assert_eq!(aliases(&b, "bridge"), None);
        assert!(b.host_config.unwrap().port_bindings.is_some());
        // The host network: nothing published, no endpoint, no DNS override.
        let mut c = ctx(vec![]);
        c.network.dns_servers = vec!["1.1.1.1".into()];
        s.network = Some("host".into());
        s.ports[0].host_port = Some(8080);
        let b = container_body(&s, &c, 0, &[8080]).unwrap();
        let hc = b.host_config.as_ref().unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert!(hc.port_bindings.is_none());
        assert!(hc.dns.is_none());
        assert!(b.exposed_ports.is_none());
        assert!(b.networking_config.is_none());
    }

    #[test]
    fn args_alone_keep_the_image_entrypoint() {
        let mut s = spec();
        s.command = None;
        let (ep, cmd) = command_line(&s).unwrap();
        assert_eq!(ep, None);
        assert_eq!(cmd.unwrap(), vec!["--port", "8080"]);
        s.args.clear();
        assert_eq!(command_line(&s).unwrap(), (None, None));
    }

    #[test]
    fn a_secret_without_plaintext_is_refused() {
        let mut s = spec();
        s.env.insert(
            "K".into(),
            Text::Sensitive(crate::model::Sensitive::from_digest(
                "hmac-sha256:00".into(),
            )),
        );
        let err = container_body(&s, &ctx(vec![]), 0, &[1]).unwrap_err();
        assert!(err.to_string().contains("`K`"), "{err}");
    }

    #[test]
    fn assigned_gpus_become_one_nvidia_device_request() {
        let gpus = vec![
            GpuRef {
                host: "h".into(),
                index: 0,
                uuid: Some("GPU-aaaa".into()),
                model: "H100".into(),
            },
            GpuRef {
                host: "h".into(),
                index: 3,
                uuid: None,
                model: "H100".into(),
            },
        ];
        let b = container_body(&spec(), &ctx(gpus), 0, &[31000]).unwrap();
        let req = b.host_config.unwrap().device_requests.unwrap();
        assert_eq!(req.len(), 1);
        assert_eq!(req[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(
            req[0].device_ids.as_deref(),
            Some(&["GPU-aaaa".to_owned(), "3".to_owned()][..])
        );
        assert_eq!(req[0].capabilities, Some(vec![vec!["gpu".to_owned()]]));
        assert_eq!(device_requests(&[]), None);
    }

    #[test]
    fn free_ports_come_from_the_range_and_are_not_handed_out_twice() {
        let taken = BTreeSet::new();
        let a = free_port((41000, 41001), Protocol::Tcp, &taken).unwrap();
        let b = free_port((41000, 41001), Protocol::Tcp, &taken).unwrap();
        assert_ne!(a, b);
        assert!((41000..=41001).contains(&a) && (41000..=41001).contains(&b));
        assert_eq!(free_port((41000, 41001), Protocol::Tcp, &taken), None);
        release_ports(&[a, b]);
    }

    #[test]
    fn images_split_into_name_and_tag() {
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(split_image("reg:5000/app:2"), ("reg:5000/app", "2"));
        assert_eq!(split_image("reg:5000/app"), ("reg:5000/app", "latest"));
    }

    #[test]
    fn exit_codes_are_read_from_the_summary_status() {
        use bollard::models::ContainerSummaryStateEnum as S;
        assert_eq!(
            summary_liveness(Some(&S::EXITED), "Exited (3) 2 seconds ago"),
            Liveness::Exited(Some(3))
        );
        assert_eq!(
            summary_liveness(Some(&S::RUNNING), "Up 2 seconds"),
            Liveness::Running
        );
    }
}
