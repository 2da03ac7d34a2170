//! The Docker Swarm backend: one Swarm service per service, through bollard.
//!
//! Naming: service `api` of project `shop` is the Swarm service `shop_api`
//! (the form `docker stack` uses), attached to the project's overlay network
//! `shop_net` under the alias `api`. The service and its tasks' containers
//! carry the labels of [`super::marks`]; a service has one [`Handle::SwarmService`].
//!
//! - Replicas: `replicas` in replicated mode. `update` changes a running
//!   service in place (a rolling update, one task at a time, `start-first`
//!   unless the service publishes a fixed host port, failure action
//!   `rollback`); re-applying the previous spec through `update` is the
//!   rollback of a failed change.
//! - Ports: published through the routing mesh; a host port left out is taken
//!   from `network.port_range`.
//! - Resources: `cpu_cores` and `memory_mb` are both the reservation (what the
//!   scheduler places by) and the limit; `gpu_count` is a reservation of the
//!   generic resource `NVIDIA-GPU` that nodes advertise (see [`nodes_inventory`]).
//! - Health: a service is live when as many tasks of its current spec run as it
//!   has replicas (see [`Backend::replicas`]), and down at once when one of
//!   them fails or the scheduler refuses to place it; a command check is the
//!   tasks' container health check, run by the engine of each task's node
//!   (see [`container_health_check`]), HTTP and TCP probes go through the
//!   published port.
//! - Network: `destroy` waits until the engine no longer lists the removed
//!   overlay network; `start` waits for one that is being removed and creates
//!   it again (see [`NETWORK_WAIT`]).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, GenericResourcesInner, GenericResourcesInnerDiscreteResourceSpec, HealthConfig,
    Limit, NetworkAttachmentConfig, NetworkCreateRequest, ResourceObject, Service,
    ServiceSpec as SwarmSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum,
    ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum, Task, TaskSpec,
    TaskSpecContainerSpec, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    InspectNetworkOptions, InspectServiceOptions, ListContainersOptionsBuilder,
    ListServicesOptionsBuilder, ListTasksOptions, ListTasksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, UpdateServiceOptionsBuilder,
};

use super::engine::{self, is_not_found, message};
use super::{
    Backend, BackendError, Discovered, Liveness, ProbeOutcome, Replicas, StartContext, marks,
};
use crate::instance::Handle;
use crate::inventory::{Gpu, Host, Inventory, Source};
use crate::model::{
    BackendKind, Probe, Protocol, RestartPolicy, ServiceName, ServiceSpec, SwarmUpdate, UpdateOrder,
};

/// The generic resource kind that GPU nodes advertise (dockerd
/// `--node-generic-resource NVIDIA-GPU=<uuid>` or `"node-generic-resources"`).
pub(crate) const GPU_RESOURCE: &str = "NVIDIA-GPU";

pub use crate::inventory::PublishMode;

impl PublishMode {
    /// `DEPLOY_CODE_SWARM_PUBLISH_MODE` (`ingress` or `host`), else ingress.
    pub(crate) fn from_env() -> Self {
        match std::env::var("DEPLOY_CODE_SWARM_PUBLISH_MODE").as_deref() {
            Ok("host") => PublishMode::Host,
            _ => PublishMode::Ingress,
        }
    }
}

/// The Swarm services labelled as `project`'s.
async fn project_services(
    docker: &Docker,
    project: &str,
) -> Result<Vec<bollard::models::Service>, BackendError> {
    let mut filters = HashMap::new();
    filters.insert("label", vec![format!("{}={project}", marks::PROJECT)]);
    docker
        .list_services(Some(
            ListServicesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| BackendError::Unavailable {
            what: "the Swarm manager".into(),
            message: message(&e),
        })
}

/// The Swarm service of one service: `<project>_<service>`.
pub fn service_name(project: &str, service: &str) -> String {
    format!("{project}_{service}")
}

/// The project's overlay network: `<project>_net`.
pub fn overlay_name(project: &str) -> String {
    format!("{project}_net")
}

/// The overlay network a service joins: the one its spec names
/// (`infrastructure.network.name`), else the project's.
fn joined_network(spec: &ServiceSpec, ctx: &StartContext) -> String {
    spec.network
        .clone()
        .unwrap_or_else(|| overlay_name(&ctx.project))
}

/// The Swarm service spec for `spec`; `published` gives the host port of every
/// entry of `spec.ports`.
pub(crate) fn service_spec(
    spec: &ServiceSpec,
    ctx: &StartContext,
    published: &[Option<u16>],
    mode: PublishMode,
) -> Result<SwarmSpec, BackendError> {
    let image = spec
        .image
        .clone()
        .ok_or_else(|| BackendError::StartFailed {
            service: spec.name.to_string(),
            message: "a Swarm service needs an `image`".into(),
        })?;
    let (command, args) = engine::command_line(spec)?;
    let labels = engine::labels(spec, ctx, None);
    let nano =
        (spec.resources.cpu_cores > 0.0).then(|| (spec.resources.cpu_cores * 1e9).round() as i64);
    let memory =
        (spec.resources.memory_mb > 0).then(|| spec.resources.memory_mb as i64 * 1024 * 1024);
    let generic = (spec.resources.gpu_count > 0).then(|| {
        vec![GenericResourcesInner {
            discrete_resource_spec: Some(GenericResourcesInnerDiscreteResourceSpec {
                kind: Some(GPU_RESOURCE.into()),
                value: Some(i64::from(spec.resources.gpu_count)),
            }),
            named_resource_spec: None,
        }]
    });
    let mounts = engine::mounts(spec, &ctx.project);
    let ports: Vec<EndpointPortConfig> = spec
        .ports
        .iter()
        .zip(published)
        .map(|(p, host)| EndpointPortConfig {
            protocol: Some(match p.protocol {
                Protocol::Tcp => EndpointPortConfigProtocolEnum::TCP,
                Protocol::Udp => EndpointPortConfigProtocolEnum::UDP,
            }),
            target_port: Some(i64::from(p.container_port)),
            published_port: host.map(i64::from),
            publish_mode: Some(match mode {
                PublishMode::Ingress => EndpointPortConfigPublishModeEnum::INGRESS,
                PublishMode::Host => EndpointPortConfigPublishModeEnum::HOST,
            }),
            name: None,
        })
        .collect();
    let update = update_policy(spec, mode);
    let order_start_first = update.order == UpdateOrder::StartFirst;
    let monitor = i64::try_from(update.monitor_seconds)
        .unwrap_or(i64::MAX / 1_000_000_000)
        .saturating_mul(1_000_000_000);
    let restart = match spec.restart {
        RestartPolicy::No => TaskSpecRestartPolicyConditionEnum::NONE,
        RestartPolicy::OnFailure => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => {
            TaskSpecRestartPolicyConditionEnum::ANY
        }
    };
    let health_check = container_health_check(spec);
    let mut task_labels = labels.clone();
    if let Some(test) = health_check.as_ref().and_then(|h| h.test.as_ref()) {
        task_labels.insert(
            HEALTH_TEST_LABEL.to_owned(),
            serde_json::to_string(test).unwrap_or_default(),
        );
    }
    Ok(SwarmSpec {
        name: Some(service_name(&ctx.project, spec.name.as_str())),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image),
                labels: Some(task_labels),
                command,
                args,
                env: Some(engine::env_list(spec)?),
                dir: spec.working_dir.clone(),
                mounts: (!mounts.is_empty()).then_some(mounts),
                health_check,
                stop_grace_period: Some(
                    i64::try_from(ctx.stop_grace.as_nanos()).unwrap_or(i64::MAX),
                ),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: nano,
                    memory_bytes: memory,
                    pids: None,
                }),
                reservations: Some(ResourceObject {
                    nano_cpus: nano,
                    memory_bytes: memory,
                    generic_resources: generic,
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(restart),
                delay: Some(1_000_000_000),
                max_attempts: None,
                window: None,
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(joined_network(spec, ctx)),
                aliases: Some(vec![spec.name.to_string()]),
                driver_opts: None,
            }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(spec.replicas)),
            }),
            ..Default::default()
        }),
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(i64::from(update.parallelism)),
            delay: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(monitor),
            max_failure_ratio: Some(0.0),
            order: Some(if order_start_first {
                ServiceSpecUpdateConfigOrderEnum::START_FIRST
            } else {
                ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
            }),
        }),
        rollback_config: Some(ServiceSpecRollbackConfig {
            parallelism: Some(i64::from(update.parallelism)),
            delay: Some(0),
            failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
            monitor: Some(monitor),
            max_failure_ratio: Some(0.0),
            order: Some(if order_start_first {
                ServiceSpecRollbackConfigOrderEnum::START_FIRST
            } else {
                ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
            }),
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: None,
            ports: (!ports.is_empty()).then_some(ports),
        }),
        ..Default::default()
    })
}

/// The label of a task's container that holds the test (as JSON) of the
/// container health check Swarm was given (see [`container_health_check`]):
/// the engine takes the check but reads it back under another name than
/// bollard's model, so the gate knows from this label that Swarm runs it.
const HEALTH_TEST_LABEL: &str = "io.deploy-code.health-test";

/// The container health check Swarm is given for a `command` check: its
/// argv (`CMD`, without a shell), interval, timeout, retries and start
/// period. The engine of the node a task runs on runs it in the task's
/// container, and Swarm reports the task running only once its container is
/// healthy, and fails it (`unhealthy container`) when it turns unhealthy.
/// HTTP and TCP checks are probed from here, through the published port.
pub(crate) fn container_health_check(spec: &ServiceSpec) -> Option<HealthConfig> {
    let check = spec.health_check.as_ref()?;
    let Probe::Command { argv } = &check.probe else {
        return None;
    };
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    Some(HealthConfig {
        test: Some(health_test(argv)),
        interval: Some(nanos(check.interval())),
        timeout: Some(nanos(check.timeout())),
        retries: Some(i64::from(check.retries.max(1))),
        start_period: Some(nanos(Duration::from_secs(check.start_period_seconds))),
        start_interval: None,
    })
}

/// A container health check's test for `argv`: `["CMD", argv…]`.
fn health_test(argv: &[String]) -> Vec<String> {
    std::iter::once("CMD".to_owned())
        .chain(argv.iter().cloned())
        .collect()
}

/// The update policy Swarm is given for `spec`: the one its strategy gave
/// it (`spec.swarm_update`, else `Hybrid`'s), except that a task publishing
/// a fixed host port in host mode holds that port on its node, so that a
/// new task cannot start beside it: stop-first there.
pub(crate) fn update_policy(spec: &ServiceSpec, mode: PublishMode) -> SwarmUpdate {
    let fixed = spec.ports.iter().any(|p| p.host_port.is_some());
    let mut update = spec
        .swarm_update
        .unwrap_or_else(|| SwarmUpdate::hybrid(fixed));
    if fixed && mode == PublishMode::Host {
        update.order = UpdateOrder::StopFirst;
    }
    update
}

/// The cluster's nodes as hosts: CPUs and memory from each node's description,
/// GPUs from its `NVIDIA-GPU` generic resources (named: one GPU per UUID;
/// discrete: that many GPUs without UUIDs).
pub async fn nodes_inventory() -> Result<Inventory, BackendError> {
    let docker = engine::connect().await?;
    nodes_inventory_with(&docker).await
}

pub(crate) async fn nodes_inventory_with(docker: &Docker) -> Result<Inventory, BackendError> {
    let nodes = docker
        .list_nodes(None)
        .await
        .map_err(|e| BackendError::Unavailable {
            what: "the Swarm manager".into(),
            message: message(&e),
        })?;
    let mut hosts = Vec::new();
    for n in nodes {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.state)
            .is_none_or(|s| s == bollard::models::NodeState::READY);
        let active = n
            .spec
            .as_ref()
            .and_then(|s| s.availability)
            .is_none_or(|a| a == bollard::models::NodeSpecAvailabilityEnum::ACTIVE);
        if !(ready && active) {
            continue;
        }
        let Some(desc) = n.description else { continue };
        let res = desc.resources.unwrap_or_default();
        hosts.push(Host {
            name: desc.hostname.unwrap_or_else(|| n.id.unwrap_or_default()),
            cpu_cores: res.nano_cpus.unwrap_or(0) as f64 / 1e9,
            memory_mb: (res.memory_bytes.unwrap_or(0).max(0) as u64) / (1024 * 1024),
            storage_gb: 0,
            gpus: gpus_of(res.generic_resources.as_deref().unwrap_or(&[])),
            ports_in_use: Vec::new(),
        });
    }
    Ok(Inventory {
        source: Source::Swarm,
        hosts,
        swarm_publish: PublishMode::from_env(),
    })
}

/// GPUs from a node's generic resources.
pub(crate) fn gpus_of(resources: &[GenericResourcesInner]) -> Vec<Gpu> {
    let mut gpus = Vec::new();
    for r in resources {
        if let Some(named) = &r.named_resource_spec
            && named.kind.as_deref() == Some(GPU_RESOURCE)
        {
            gpus.push(Gpu {
                index: gpus.len() as u32,
                uuid: named.value.clone(),
                model: GPU_RESOURCE.into(),
                memory_mb: 0,
                free_memory_mb: None,
            });
        }
        if let Some(d) = &r.discrete_resource_spec
            && d.kind.as_deref() == Some(GPU_RESOURCE)
        {
            for _ in 0..d.value.unwrap_or(0).max(0) {
                gpus.push(Gpu {
                    index: gpus.len() as u32,
                    uuid: None,
                    model: GPU_RESOURCE.into(),
                    memory_mb: 0,
                    free_memory_mb: None,
                });
            }
        }
    }
    gpus
}

/// How long removing the project network, or waiting for a removed one to be
/// gone before it is created again, may take.
pub(crate) const NETWORK_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// How long after a removal a refused task may still get its place.
const REMOVAL_SETTLE: Duration = Duration::from_secs(10);

/// A service create that names a network the engine still lists but the Swarm
/// has already removed.
fn network_vanished(e: &bollard::errors::Error) -> bool {
    let m = message(e);
    m.contains("network") && m.contains("not found")
}

/// The Swarm backend (the engine must be a Swarm manager).
#[derive(Clone, Debug)]
pub struct SwarmBackend {
    engine: engine::Engine,
    publish: PublishMode,
    /// When this backend last removed a service (see `recently_removed`).
    removed_at: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

/// The tasks of a service, as counted for health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub replicas: u32,
    /// Tasks of the current spec that run.
    pub running: u32,
    /// Tasks of the current spec that failed (exit code of the newest).
    pub failed: u32,
    pub last_exit: Option<i32>,
    /// The spec hash the service carries now.
    pub spec_hash: Option<String>,
    /// The last change failed: the Swarm paused it or rolled it back.
    pub update_failed: Option<String>,
    /// A task of the current spec that the scheduler will not place (its
    /// error), while no task in the cluster is on its way out to make room:
    /// it stays pending for good.
    pub refused: Option<String>,
    /// Why the newest task of the current spec that does not run stopped or
    /// waits, in the engine's words.
    pub detail: Option<String>,
    /// Tasks of an older spec that run and are still wanted: the update has
    /// not replaced them (yet).
    pub stale: u32,
    /// The Swarm is still carrying out or watching the last update
    /// (`UpdateStatus` is `updating`): within the monitor window a failing
    /// task still makes it roll the service back by itself.
    pub updating: bool,
}

impl TaskCounts {
    /// Down: the last change failed, a task of the current spec failed while
    /// fewer than asked run, or one cannot be placed.
    fn down(&self) -> bool {
        self.update_failed.is_some()
            || (self.running < self.replicas && (self.failed > 0 || self.refused.is_some()))
    }
}

/// "task 2 is pending: no suitable node (…)", "task 1 failed: task: non-zero
/// exit (7)": a task that does not run, with the engine's error.
fn task_error(t: &Task) -> Option<String> {
    let status = t.status.as_ref()?;
    let err = status.err.as_deref().filter(|e| !e.is_empty())?;
    let state = status.state?;
    let what = if state <= TaskState::RUNNING {
        format!("is {state}")
    } else {
        state.to_string()
    };
    Some(match t.slot {
        Some(slot) => format!("task {slot} {what}: {err}"),
        None => format!("a task {what}: {err}"),
    })
}

impl SwarmBackend {
    /// Connects to the local engine now.
    pub async fn connect() -> Result<Self, BackendError> {
        Ok(Self::with_engine(engine::Engine::connect().await?))
    }

    /// A backend that connects on first use.
    pub(crate) fn lazy() -> Self {
        Self::with_engine(engine::Engine::lazy())
    }

    pub(crate) fn with_engine(engine: engine::Engine) -> Self {
        Self {
            engine,
            publish: PublishMode::from_env(),
            removed_at: Default::default(),
        }
    }

    pub fn with_publish_mode(mut self, mode: PublishMode) -> Self {
        self.publish = mode;
        self
    }

    pub fn publish_mode(&self) -> PublishMode {
        self.publish
    }

    async fn api(&self) -> Result<&Docker, BackendError> {
        self.engine.get().await
    }

    async fn ensure_overlay(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
    ) -> Result<(), BackendError> {
        let docker = self.api().await?;
        let _serial = engine::NETWORK_LOCK.lock().await;
        let name = joined_network(spec, ctx);
        match docker
            .inspect_network(&name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) && spec.network.is_some() => {
                return Err(BackendError::Network {
                    message: format!(
                        "the network `{name}` (`infrastructure.network.name`) does not exist; \
                         create it (`docker network create --driver overlay --attachable {name}`) \
                         or remove `name` to use the project network"
                    ),
                });
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(BackendError::Network {
                    message: message(&e),
                });
            }
        }
        let labels = HashMap::from([(marks::PROJECT.to_owned(), ctx.project.clone())]);
        let req = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("overlay".into()),
            attachable: Some(true),
            ipam: ctx.network.cidr.as_ref().map(|cidr| bollard::models::Ipam {
                driver: Some("default".into()),
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(cidr.clone()),
                    ..Default::default()
                }]),
                options: None,
            }),
            labels: Some(labels),
            ..Default::default()
        };
        match docker.create_network(req).await {
            Ok(_) => Ok(()),
            Err(e) if message(&e).contains("already exists") => Ok(()),
            Err(e) => Err(BackendError::Network {
                message: format!("creating `{name}`: {}", message(&e)),
            }),
        }
    }

    /// Removes the project's overlay network when no service uses it and
    /// waits until the engine no longer lists it, [`NETWORK_WAIT`] at most:
    /// the endpoints of tasks that are shutting down hold it for a moment,
    /// and the engine lists a removed overlay network for some seconds more.
    /// `Ok(false)`: a service still uses it, or it was not there; an error
    /// says what was left and why.
    pub async fn remove_network_if_empty(&self, project: &str) -> Result<bool, BackendError> {
        let docker = self.api().await?;
        let name = overlay_name(project);
        let start = Instant::now();
        let removed = loop {
            let services = project_services(docker, project).await?;
            if !services.is_empty() {
                return Ok(false);
            }
            let in_use = match docker.remove_network(&name).await {
                Ok(()) => break true,
                // Already removed, but possibly still listed.
                Err(e) if is_not_found(&e) => break false,
                Err(e)
                    if message(&e).contains("in use")
                        || message(&e).contains("active endpoints") =>
                {
                    message(&e)
                }
                Err(e) => {
                    return Err(BackendError::Network {
                        message: message(&e),
                    });
                }
            };
            if start.elapsed() >= NETWORK_WAIT {
                return Err(BackendError::Network {
                    message: format!(
                        "`{name}` was left behind: still in use after {} s ({in_use})",
                        NETWORK_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        };
        if self
            .wait_network_gone(&name, NETWORK_WAIT.saturating_sub(start.elapsed()))
            .await
        {
            Ok(removed)
        } else {
            Err(BackendError::Network {
                message: format!(
                    "`{name}` was removed, but the engine still lists it after {} s",
                    NETWORK_WAIT.as_secs()
                ),
            })
        }
    }

    /// Waits until the engine no longer lists the network `name`, `limit` at
    /// most; true when it is gone.
    async fn wait_network_gone(&self, name: &str, limit: Duration) -> bool {
        let Ok(docker) = self.api().await else {
            return false;
        };
        let start = Instant::now();
        loop {
            match docker
                .inspect_network(name, None::<InspectNetworkOptions>)
                .await
            {
                Err(e) if is_not_found(&e) => return true,
                _ if start.elapsed() >= limit => return false,
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Host ports for `spec`: the configured ones, or (for an existing
    /// service) the ones it publishes now, or fresh ones from the range.
    fn published_ports(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        current: Option<&Service>,
    ) -> Result<Vec<Option<u16>>, BackendError> {
        if self.publish == PublishMode::Host {
            return Ok(spec.ports.iter().map(|p| p.host_port).collect());
        }
        let existing: Vec<EndpointPortConfig> = current
            .and_then(|s| s.endpoint.as_ref())
            .and_then(|e| e.ports.clone())
            .unwrap_or_default();
        let mut taken = BTreeSet::new();
        let mut out = Vec::new();
        for p in &spec.ports {
            let port = match p.host_port {
                Some(h) => h,
                None => {
                    let again = existing.iter().find_map(|e| {
                        (e.target_port == Some(i64::from(p.container_port)))
                            .then_some(e.published_port)
                            .flatten()
                            .map(|x| x as u16)
                    });
                    match again {
                        Some(x) => x,
                        None => engine::free_port(ctx.network.port_range, p.protocol, &taken)
                            .ok_or_else(|| BackendError::Network {
                                message: format!(
                                    "no free host port left in {}-{} for `{}`",
                                    ctx.network.port_range.0, ctx.network.port_range.1, spec.name
                                ),
                            })?,
                    }
                }
            };
            taken.insert(port);
            out.push(Some(port));
        }
        Ok(out)
    }

    async fn inspect_service(&self, id: &str) -> Result<Option<Service>, BackendError> {
        let docker = self.api().await?;
        match docker
            .inspect_service(id, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(BackendError::Unavailable {
                what: "the Swarm manager".into(),
                message: message(&e),
            }),
        }
    }

    async fn tasks(&self, service_id: &str) -> Vec<Task> {
        let Ok(docker) = self.api().await else {
            return Vec::new();
        };
        let mut filters = HashMap::new();
        filters.insert("service", vec![service_id.to_owned()]);
        docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .unwrap_or_default()
    }

    /// Counts the tasks of the service's current spec (by the spec-hash label
    /// its containers carry).
    pub async fn task_counts(&self, handle: &Handle) -> Option<TaskCounts> {
        let Handle::SwarmService { id, .. } = handle else {
            return None;
        };
        let service = self.inspect_service(id).await.ok()??;
        let spec = service.spec.as_ref()?;
        let hash = spec
            .labels
            .as_ref()
            .and_then(|l| l.get(marks::SPEC_HASH))
            .cloned();
        let replicas = spec
            .mode
            .as_ref()
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas)
            .unwrap_or(1) as u32;
        use bollard::models::ServiceUpdateStatusStateEnum as U;
        let update_failed = service.update_status.as_ref().and_then(|u| {
            matches!(
                u.state,
                Some(U::PAUSED | U::ROLLBACK_STARTED | U::ROLLBACK_PAUSED | U::ROLLBACK_COMPLETED)
            )
            .then(|| {
                u.message
                    .clone()
                    .unwrap_or_else(|| "the update failed".into())
            })
        });
        let updating = service
            .update_status
            .as_ref()
            .is_some_and(|u| u.state == Some(U::UPDATING));
        let mut counts = TaskCounts {
            replicas,
            spec_hash: hash.clone(),
            update_failed,
            updating,
            ..Default::default()
        };
        let mut tasks = self.tasks(id).await;
        tasks.sort_by_key(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or(0));
        let lost = self.nodes_not_ready().await;
        for t in &tasks {
            if counts.update_failed.is_some()
                && let Some(code) = t
                    .status
                    .as_ref()
                    .filter(|s| s.state == Some(TaskState::FAILED))
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.exit_code)
            {
                counts.last_exit = Some(code as i32);
            }
            let task_hash = task_spec_hash(t);
            let state = t.status.as_ref().and_then(|s| s.state);
            let wanted = t.desired_state == Some(TaskState::RUNNING);
            let on_lost_node = t.node_id.as_ref().and_then(|n| lost.get(n));
            if task_hash != hash.as_ref() {
                if state == Some(TaskState::RUNNING) && wanted && on_lost_node.is_none() {
                    counts.stale += 1;
                }
                continue;
            }
            if state != Some(TaskState::RUNNING)
                && let Some(e) = task_error(t)
            {
                if wanted && state.is_some_and(|s| s < TaskState::RUNNING) {
                    counts.refused = Some(e.clone());
                }
                counts.detail = Some(e);
            }
            // The manager keeps the last state a lost node reported: a task
            // there counts as running only once the node answers again.
            let node_lost = on_lost_node.filter(|_| state == Some(TaskState::RUNNING) && wanted);
            if let Some(node) = node_lost {
                counts.detail = Some(match t.slot {
                    Some(slot) => format!("task {slot} is on node {node}, which is not ready"),
                    None => format!("a task is on node {node}, which is not ready"),
                });
                continue;
            }
            match state {
                Some(TaskState::RUNNING) if wanted => counts.running += 1,
                Some(TaskState::FAILED) | Some(TaskState::REJECTED) => {
                    counts.failed += 1;
                    counts.last_exit = t
                        .status
                        .as_ref()
                        .and_then(|s| s.container_status.as_ref())
                        .and_then(|c| c.exit_code)
                        .map(|c| c as i32);
                }
                Some(TaskState::COMPLETE) if t.desired_state != Some(TaskState::SHUTDOWN) => {
                    counts.failed += 1;
                    counts.last_exit = Some(0);
                }
                _ => {}
            }
        }
        // A task told to stop that still holds its place (a port, resources),
        // of this service or another (one just replaced or rolled back), may
        // free room for the pending one: not refused yet.
        if counts.refused.is_some() && (self.recently_removed() || self.a_task_is_draining().await)
        {
            counts.refused = None;
        }
        Some(counts)
    }

    /// Every node of the cluster: id -> its host name (its id where it has
    /// none) and whether the manager sees it ready (a node whose state is
    /// not reported counts as ready). Empty when the nodes cannot be listed.
    async fn nodes(&self) -> HashMap<String, (String, bool)> {
        use bollard::models::NodeState;
        let Ok(docker) = self.api().await else {
            return HashMap::new();
        };
        docker
            .list_nodes(None)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| {
                let id = n.id?;
                let name = n
                    .description
                    .as_ref()
                    .and_then(|d| d.hostname.clone())
                    .unwrap_or_else(|| id.clone());
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .is_none_or(|s| s == NodeState::READY);
                Some((id, (name, ready)))
            })
            .collect()
    }

    /// The nodes the manager does not see ready (down, unknown,
    /// disconnected): id -> host name. Empty when the nodes cannot be listed.
    async fn nodes_not_ready(&self) -> HashMap<String, String> {
        self.nodes()
            .await
            .into_iter()
            .filter(|(_, (_, ready))| !ready)
            .map(|(id, (name, _))| (id, name))
            .collect()
    }

    /// Whether this backend removed a service a moment ago: the managers free
    /// what its tasks held (a host port) a little after their containers are
    /// gone, so a task refused meanwhile may still get its place.
    fn recently_removed(&self) -> bool {
        self.removed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < REMOVAL_SETTLE)
    }

    /// Whether a task anywhere in the cluster is told to stop but still runs
    /// (or has not got that far), so still holds what it was given.
    async fn a_task_is_draining(&self) -> bool {
        let Ok(docker) = self.api().await else {
            return false;
        };
        let Ok(tasks) = docker.list_tasks(None::<ListTasksOptions>).await else {
            return false;
        };
        tasks.iter().any(|t| {
            t.desired_state.is_some_and(|d| d > TaskState::RUNNING)
                && t.status
                    .as_ref()
                    .and_then(|s| s.state)
                    .is_some_and(|s| s <= TaskState::RUNNING)
        })
    }

    /// Applies `swarm_spec` to the service `id` (the engine needs the version
    /// it was read at).
    async fn apply_spec(
        &self,
        id: &str,
        swarm_spec: SwarmSpec,
        service: &str,
    ) -> Result<(), BackendError> {
        let docker = self.api().await?;
        let mut tries = 0;
        loop {
            tries += 1;
            let current =
                self.inspect_service(id)
                    .await?
                    .ok_or_else(|| BackendError::StartFailed {
                        service: service.into(),
                        message: "the Swarm service is gone".into(),
                    })?;
            let version = current.version.and_then(|v| v.index).unwrap_or(0);
            let options = UpdateServiceOptionsBuilder::default()
                .version(version as i32)
                .build();
            match docker
                .update_service(id, swarm_spec.clone(), options, None)
                .await
            {
                Ok(_) => return Ok(()),
                // Out of sequence: someone (the Swarm's own rollback) updated it meanwhile.
                Err(e) if tries < 5 && message(&e).contains("out of sequence") => continue,
                Err(e) => {
                    return Err(BackendError::StartFailed {
                        service: service.into(),
                        message: message(&e),
                    });
                }
            }
        }
    }

    /// Waits until no task of the service `id` is left (after removal).
    async fn wait_gone(&self, id: &str, grace: Duration) {
        // The engine forgets a removed service's tasks at once, while their
        // containers still stop (and hold their host ports): wait for the
        // containers on this node, and stop those that outlive the grace.
        let Ok(docker) = self.api().await else {
            return;
        };
        let mut filters = HashMap::new();
        filters.insert("label", vec![format!("com.docker.swarm.service.id={id}")]);
        let list = || {
            docker.list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
        };
        let start = Instant::now();
        while start.elapsed() < grace {
            match list().await {
                Ok(running) if !running.is_empty() => tokio::time::sleep(POLL).await,
                _ => return,
            }
        }
        for c in list().await.unwrap_or_default() {
            if let Some(cid) = c.id {
                let _ = docker
                    .remove_container(
                        &cid,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
            }
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            match list().await {
                Ok(running) if !running.is_empty() => tokio::time::sleep(POLL).await,
                _ => return,
            }
        }
    }

    /// Swarm's verdict of a command check that service `id` carries as its
    /// container health check with the test `argv`; `None` when it carries
    /// another or none.
    async fn reported_health(&self, id: &str, argv: &[String]) -> Option<ProbeOutcome> {
        let spec = self.inspect_service(id).await.ok()??.spec?;
        let given = spec
            .task_template
            .as_ref()?
            .container_spec
            .as_ref()?
            .labels
            .as_ref()?
            .get(HEALTH_TEST_LABEL)?;
        if *given != serde_json::to_string(&health_test(argv)).ok()? {
            return None;
        }
        let hash = spec.labels.and_then(|mut l| l.remove(marks::SPEC_HASH));
        let nodes = self.nodes().await;
        let mut tasks = self.tasks(id).await;
        tasks.sort_by_key(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or(0));
        let mut passed = Vec::new();
        let mut waiting = None;
        for t in &tasks {
            let task_hash = task_spec_hash(t);
            if hash.is_some() && task_hash != hash.as_ref() {
                continue;
            }
            let state = t.status.as_ref().and_then(|s| s.state);
            let node = t.node_id.clone().unwrap_or_default();
            let (name, ready) = nodes.get(&node).cloned().unwrap_or((node.clone(), true));
            let wanted = t.desired_state == Some(TaskState::RUNNING);
            if state == Some(TaskState::RUNNING) && wanted && ready {
                passed.push(name);
                continue;
            }
            if let Some(e) = task_error(t) {
                waiting = Some(format!("{e} (on {name})"));
            } else if wanted && let Some(state) = state.filter(|s| *s < TaskState::RUNNING) {
                let task = t
                    .slot
                    .map_or_else(|| "a task".to_owned(), |s| format!("task {s}"));
                waiting = Some(format!(
                    "{task} is {state} on {name}: its health check has not passed yet"
                ));
            }
        }
        if passed.is_empty() {
            return Some(ProbeOutcome {
                healthy: false,
                detail: waiting.unwrap_or_else(|| "no task of the current spec runs".into()),
            });
        }
        passed.sort();
        let mut detail = format!(
            "Swarm reports the check passed on its node for {} task(s): {}",
            passed.len(),
            passed.join(", ")
        );
        if let Some(w) = waiting {
            detail.push_str("; ");
            detail.push_str(&w);
        }
        Some(ProbeOutcome {
            healthy: true,
            detail,
        })
    }

    /// The containers of the running tasks of the service's current spec
    /// (every running task when the spec carries no hash), for exec probes.
    async fn running_containers(&self, handle: &Handle) -> Vec<String> {
        let Handle::SwarmService { id, .. } = handle else {
            return Vec::new();
        };
        let hash = match self.inspect_service(id).await {
            Ok(Some(s)) => s.spec.and_then(|s| s.labels?.remove(marks::SPEC_HASH)),
            _ => None,
        };
        self.tasks(id)
            .await
            .into_iter()
            .filter(|t| hash.is_none() || task_spec_hash(t) == hash.as_ref())
            .filter_map(|t| {
                let s = t.status?;
                (s.state == Some(TaskState::RUNNING))
                    .then_some(s.container_status?.container_id)
                    .flatten()
            })
            .collect()
    }
}

#[async_trait]
impl Backend for SwarmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Swarm
    }

    fn prerequisite(&self) -> Option<super::Prerequisite> {
        Some(super::engine::PREREQUISITE)
    }

    async fn check_prerequisite(&self) -> Result<String, String> {
        super::engine::check_engine().await
    }

    fn updatable_in_place(&self) -> &'static [&'static str] {
        // Swarm rolls these out itself, by the service's update policy
        // (`swarm_update`, from the strategy), and rolls back on failure.
        // A task publishing in host mode holds its port on its node until it
        // is gone, which a rolling task update runs into: there a change to
        // the task's container replaces the service instead.
        if self.publish == PublishMode::Host {
            return &["replicas", "health_check", "swarm_update"];
        }
        &[
            "replicas",
            "image",
            "command",
            "args",
            "working_dir",
            "env",
            "labels",
            "health_check",
            "swarm_update",
        ]
    }

    fn has_native_health(&self) -> bool {
        true
    }

    fn reports_capacity(&self) -> bool {
        true
    }

    fn places_on_nodes(&self) -> bool {
        true
    }

    fn tears_down_network(&self) -> bool {
        true
    }

    /// The cluster's nodes; `None` when it has no node to place on.
    async fn capacity(&self) -> Result<Option<Inventory>, BackendError> {
        let inv = nodes_inventory_with(self.api().await?).await?;
        Ok((!inv.hosts.is_empty()).then_some(inv))
    }

    async fn teardown_network(&self, project: &str) -> Result<bool, BackendError> {
        self.remove_network_if_empty(project).await
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
    ) -> Result<Vec<Handle>, BackendError> {
        let docker = self.api().await?;
        self.ensure_overlay(spec, ctx).await?;
        let name = service_name(&ctx.project, spec.name.as_str());
        // A service left by a run that was killed: adopt it with this spec.
        if let Some(existing) = self.inspect_service(&name).await? {
            let labels = existing
                .spec
                .as_ref()
                .and_then(|s| s.labels.clone())
                .unwrap_or_default();
            if labels.get(marks::PROJECT) != Some(&ctx.project) {
                return Err(BackendError::StartFailed {
                    service: spec.name.to_string(),
                    message: format!(
                        "the Swarm service name `{name}` is taken by a service that project `{}` did not create",
                        ctx.project
                    ),
                });
            }
            let id = existing.id.clone().unwrap_or_default();
            let handle = Handle::SwarmService { id, name };
            return self.update(spec, std::slice::from_ref(&handle), ctx).await;
        }
        let published = self.published_ports(spec, ctx, None)?;
        let swarm_spec = service_spec(spec, ctx, &published, self.publish)?;
        // The engine lists the project network for some seconds after the
        // Swarm removed it (a destroy just before), and a service cannot join
        // it then: wait for the removal, create the network afresh under its
        // name and try again, for NETWORK_WAIT at most.
        let begun = Instant::now();
        let created = loop {
            match docker.create_service(swarm_spec.clone(), None).await {
                Err(e) if network_vanished(&e) && begun.elapsed() < NETWORK_WAIT => {
                    tokio::time::sleep(POLL).await;
                    self.ensure_overlay(spec, ctx).await?;
                }
                other => break other,
            }
        }
        .map_err(|e| BackendError::StartFailed {
            service: spec.name.to_string(),
            message: message(&e),
        })?;
        Ok(vec![Handle::SwarmService {
            id: created.id.unwrap_or_else(|| name.clone()),
            name,
        }])
    }

    async fn update(
        &self,
        spec: &ServiceSpec,
        handles: &[Handle],
        ctx: &StartContext,
    ) -> Result<Vec<Handle>, BackendError> {
        let Some(Handle::SwarmService { id, name }) = handles.first() else {
            return self.start(spec, ctx).await;
        };
        let current = self.inspect_service(id).await?;
        let Some(current) = current else {
            return self.start(spec, ctx).await;
        };
        let published = self.published_ports(spec, ctx, Some(&current))?;
        let mut swarm_spec = service_spec(spec, ctx, &published, self.publish)?;
        // The Swarm may already have rolled back to this very spec; an update
        // to an identical spec would leave the failed update's status in place,
        // so force a fresh rollout of it.
        use bollard::models::ServiceUpdateStatusStateEnum as U;
        let rolled_back = current.update_status.as_ref().is_some_and(|u| {
            matches!(
                u.state,
                Some(U::PAUSED | U::ROLLBACK_STARTED | U::ROLLBACK_PAUSED | U::ROLLBACK_COMPLETED)
            )
        });
        if rolled_back && let Some(t) = swarm_spec.task_template.as_mut() {
            let previous = current
                .spec
                .as_ref()
                .and_then(|s| s.task_template.as_ref())
                .and_then(|t| t.force_update)
                .unwrap_or(0);
            t.force_update = Some(previous + 1);
        }
        self.apply_spec(id, swarm_spec, spec.name.as_str()).await?;
        Ok(vec![Handle::SwarmService {
            id: id.clone(),
            name: name.clone(),
        }])
    }

    async fn stop(&self, handles: &[Handle], grace: Duration) -> Result<(), BackendError> {
        let docker = self.api().await?;
        for h in handles {
            let Handle::SwarmService { id, name } = h else {
                continue;
            };
            match docker.delete_service(id).await {
                Ok(()) => {
                    self.wait_gone(id, grace).await;
                    *self.removed_at.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now());
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(BackendError::StopFailed {
                        service: name.clone(),
                        message: message(&e),
                    });
                }
            }
        }
        Ok(())
    }

    /// Running when as many tasks of the current spec run as there are
    /// replicas (or still converging); `Exited` when tasks of the current spec
    /// fail and fewer than asked run, when one is refused a place (see
    /// [`TaskCounts::refused`]), or when the Swarm paused or rolled back the
    /// last change; `Missing` when the service is gone.
    async fn liveness(&self, handle: &Handle) -> Liveness {
        let Handle::SwarmService { id, .. } = handle else {
            return Liveness::Missing;
        };
        match self.inspect_service(id).await {
            Ok(None) => return Liveness::Missing,
            Err(_) => return Liveness::Running,
            Ok(Some(_)) => {}
        }
        match self.task_counts(handle).await {
            Some(c) if c.down() => Liveness::Exited(c.last_exit),
            Some(_) => Liveness::Running,
            None => Liveness::Missing,
        }
    }

    /// Tasks of the current spec that run against the replicas the service
    /// asks for; the detail is why the last change failed, else (while some
    /// are missing) why the newest task that does not run stopped or waits.
    async fn replicas(&self, handle: &Handle) -> Option<Replicas> {
        let c = self.task_counts(handle).await?;
        let detail = match c.update_failed {
            Some(u) => Some(u),
            None if c.running < c.replicas => c.refused.or(c.detail),
            None => None,
        };
        Some(Replicas {
            running: c.running,
            wanted: c.replicas,
            detail,
            stale: c.stale,
            updating: c.updating,
        })
    }

    /// A command check the service carries as its tasks' container health
    /// check (see [`container_health_check`]) is judged from what Swarm
    /// reports, whichever node a task runs on: healthy when tasks of the
    /// current spec run (Swarm reports a task running only once its check
    /// passed on its node) on nodes that answer; a task whose check fails is
    /// failed by Swarm, which the gate reads as the service being down.
    /// Otherwise (a service created without it) the command runs in every
    /// running task of the current spec through the manager's engine;
    /// healthy when it passes in all of them.
    async fn exec_probe(
        &self,
        handle: &Handle,
        argv: &[String],
        timeout: Duration,
    ) -> ProbeOutcome {
        if let Handle::SwarmService { id, .. } = handle
            && let Some(out) = self.reported_health(id, argv).await
        {
            return out;
        }
        let containers = self.running_containers(handle).await;
        let mut last = ProbeOutcome {
            healthy: false,
            detail: "no running task".into(),
        };
        let docker = match self.api().await {
            Ok(d) => d,
            Err(e) if !containers.is_empty() => {
                return ProbeOutcome {
                    healthy: false,
                    detail: e.to_string(),
                };
            }
            Err(_) => return last,
        };
        for container in containers {
            last = engine::exec_probe(docker, &container, argv, timeout).await;
            if !last.healthy {
                break;
            }
        }
        last
    }

    /// `Some(true)` when every replica of the current spec runs (and those
    /// with a HEALTHCHECK are healthy) and no task of an older spec is left
    /// running, `Some(false)` when tasks of the
    /// current spec fail, `None` while converging.
    async fn native_health(&self, handle: &Handle) -> Option<bool> {
        let c = self.task_counts(handle).await?;
        if c.update_failed.is_some() {
            return Some(false);
        }
        if c.running >= c.replicas {
            if c.stale > 0 || c.updating {
                return None;
            }
            let Handle::SwarmService { id, .. } = handle else {
                return None;
            };
            let docker = self.api().await.ok()?;
            for t in self.tasks(id).await {
                let Some(s) = t.status else { continue };
                if s.state != Some(TaskState::RUNNING) {
                    continue;
                }
                let Some(cid) = s.container_status.and_then(|c| c.container_id) else {
                    continue;
                };
                if engine::container_health(docker, &cid).await == Some(false) {
                    return Some(false);
                }
            }
            Some(true)
        } else if c.failed > 0 {
            Some(false)
        } else {
            None
        }
    }

    async fn probe_address(&self, handle: &Handle, port: u16) -> (String, u16) {
        let fallback = ("127.0.0.1".to_owned(), port);
        let Handle::SwarmService { id, .. } = handle else {
            return fallback;
        };
        if self.publish == PublishMode::Host {
            // A running task's own published port.
            let mut tasks = self.tasks(id).await;
            tasks.sort_by_key(|t| {
                std::cmp::Reverse(t.version.as_ref().and_then(|v| v.index).unwrap_or(0))
            });
            return tasks
                .into_iter()
                .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
                .find_map(|t| {
                    t.status?.port_status?.ports?.into_iter().find_map(|p| {
                        (p.target_port == Some(i64::from(port)))
                            .then_some(p.published_port)
                            .flatten()
                    })
                })
                .map(|p| ("127.0.0.1".to_owned(), p as u16))
                .unwrap_or(fallback);
        }
        let Ok(Some(service)) = self.inspect_service(id).await else {
            return fallback;
        };
        service
            .endpoint
            .and_then(|e| e.ports)
            .and_then(|ports| {
                ports.into_iter().find_map(|p| {
                    (p.target_port == Some(i64::from(port)))
                        .then_some(p.published_port)
                        .flatten()
                })
            })
            .map(|p| ("127.0.0.1".to_owned(), p as u16))
            .unwrap_or(fallback)
    }

    async fn logs(&self, handle: &Handle, lines: usize) -> Vec<String> {
        let Ok(docker) = self.api().await else {
            return Vec::new();
        };
        let Handle::SwarmService { id, .. } = handle else {
            return Vec::new();
        };
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        engine::log_tail(docker.service_logs(id, Some(options)), lines).await
    }

    async fn discover(&self, project: &str) -> Result<Vec<Discovered>, BackendError> {
        let docker = self.api().await?;
        let services = project_services(docker, project).await?;
        let mut found = Vec::new();
        for s in services {
            let spec = s.spec.unwrap_or_default();
            let labels = spec.labels.unwrap_or_default();
            let Some(service) = labels
                .get(marks::SERVICE)
                .and_then(|n| ServiceName::parse(n).ok())
            else {
                continue;
            };
            let handle = Handle::SwarmService {
                id: s.id.unwrap_or_default(),
                name: spec.name.unwrap_or_default(),
            };
            let liveness = self.liveness(&handle).await;
            let replicas = self.replicas(&handle).await;
            found.push(Discovered {
                service,
                handle,
                spec_hash: labels.get(marks::SPEC_HASH).cloned(),
                lineage: labels.get(marks::LINEAGE).cloned(),
                liveness,
                replicas,
            });
        }
        found.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(found)
    }
}

/// The spec hash a task was created with (its container's label), which
/// tells a task of the current spec from one of an older.
fn task_spec_hash(t: &Task) -> Option<&String> {
    t.spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(marks::SPEC_HASH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthCheck, PortSpec, Resources, Seconds, Text, Workload};
    use crate::state::GpuRef;
    use bollard::models::GenericResourcesInnerNamedResourceSpec;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: ServiceName::parse("infer").unwrap(),
            backend: BackendKind::Swarm,
            workload: Workload::Service,
            replicas: 3,
            image: Some("example/infer:2".into()),
            command: None,
            args: vec![Text::plain("serve")],
            working_dir: None,
            env: BTreeMap::from([("A".to_owned(), Text::plain("1"))]),
            dependencies: vec![],
            resources: Resources {
                cpu_cores: 2.0,
                memory_mb: 1024,
                gpu_count: 2,
                ..Default::default()
            },
            health_check: None,
            ports: vec![PortSpec {
                container_port: 8000,
                host_port: None,
                host_ip: None,
                protocol: Protocol::Tcp,
            }],
            volumes: vec![],
            restart: RestartPolicy::Always,
            restart_settings: None,
            labels: BTreeMap::new(),
            network: None,
            behind_switch: false,
            switch: None,
            swarm_update: None,
            inherit_env: Vec::new(),
        }
    }

    fn ctx() -> StartContext {
        StartContext {
            project: "lab".into(),
            lineage: "l".into(),
            revision: 4,
            log_dir: PathBuf::new(),
            data_dir: PathBuf::new(),
            base_dir: PathBuf::new(),
            network: Default::default(),
            gpus: vec![GpuRef {
                host: "n1".into(),
                index: 0,
                uuid: None,
                model: "H100".into(),
            }],
            only_replicas: None,
            stop_grace: std::time::Duration::from_secs(10),
        }
    }

    #[test]
    fn the_service_spec_carries_replicas_resources_gpus_and_update_policy() {
        let s = service_spec(
            &spec(),
            &StartContext {
                stop_grace: std::time::Duration::from_secs(3),
                ..ctx()
            },
            &[Some(31001)],
            PublishMode::Ingress,
        )
        .unwrap();
        assert_eq!(s.name.as_deref(), Some("lab_infer"));
        assert_eq!(s.mode.unwrap().replicated.unwrap().replicas, Some(3));
        let task = s.task_template.unwrap();
        // Swarm stops a task as `deployment.stop_grace_seconds` says.
        assert_eq!(
            task.container_spec.as_ref().unwrap().stop_grace_period,
            Some(3_000_000_000)
        );
        let res = task.resources.unwrap();
        assert_eq!(res.limits.unwrap().nano_cpus, Some(2_000_000_000));
        let reservation = res.reservations.unwrap();
        assert_eq!(reservation.memory_bytes, Some(1024 * 1024 * 1024));
        let gpu = reservation.generic_resources.unwrap()[0]
            .discrete_resource_spec
            .clone()
            .unwrap();
        assert_eq!(gpu.kind.as_deref(), Some("NVIDIA-GPU"));
        assert_eq!(gpu.value, Some(2));
        let update = s.update_config.unwrap();
        assert_eq!(update.parallelism, Some(1));
        assert_eq!(
            update.failure_action,
            Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
        );
        assert_eq!(
            update.order,
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        let port = &s.endpoint_spec.unwrap().ports.unwrap()[0];
        assert_eq!(
            (port.target_port, port.published_port),
            (Some(8000), Some(31001))
        );
        let c = task.container_spec.unwrap();
        assert_eq!(c.args, Some(vec!["serve".to_owned()]));
        assert_eq!(c.labels.unwrap()[marks::SPEC_HASH], spec().spec_hash());
        assert_eq!(c.health_check, None, "no check, no container health check");
    }

    #[test]
    fn a_command_check_is_the_tasks_container_health_check_and_an_http_check_is_not() {
        let mut s = spec();
        s.health_check = Some(HealthCheck {
            probe: Probe::Command {
                argv: vec!["/bin/busybox".into(), "true".into()],
            },
            interval_seconds: Seconds::from_millis(1500),
            timeout_seconds: Seconds::whole(4),
            retries: 3,
            start_period_seconds: 7,
            min_healthy_seconds: 0,
            restart_after_failures: None,
        });
        let made = service_spec(&s, &ctx(), &[Some(31001)], PublishMode::Host).unwrap();
        let c = made.task_template.unwrap().container_spec.unwrap();
        let hc = c.health_check.clone().unwrap();
        assert_eq!(
            hc.test,
            Some(vec!["CMD".into(), "/bin/busybox".into(), "true".into()])
        );
        assert_eq!(hc.interval, Some(1_500_000_000));
        assert_eq!(hc.timeout, Some(4_000_000_000));
        assert_eq!(hc.retries, Some(3));
        assert_eq!(hc.start_period, Some(7_000_000_000));
        assert_eq!(
            c.labels.unwrap()[HEALTH_TEST_LABEL],
            r#"["CMD","/bin/busybox","true"]"#
        );

        s.health_check.as_mut().unwrap().probe = Probe::Http {
            url: "http://127.0.0.1:8000/health".into(),
        };
        let made = service_spec(&s, &ctx(), &[Some(31001)], PublishMode::Host).unwrap();
        assert_eq!(
            made.task_template
                .unwrap()
                .container_spec
                .unwrap()
                .health_check,
            None,
            "an HTTP check is probed through the published port"
        );
    }

    #[test]
    fn a_fixed_host_port_updates_stop_first() {
        let mut sp = spec();
        sp.ports[0].host_port = Some(8000);
        let s = service_spec(&sp, &ctx(), &[Some(8000)], PublishMode::Host).unwrap();
        assert_eq!(
            s.update_config.unwrap().order,
            Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST)
        );
    }

    /// The table of `docs/strategies.md`: what each strategy gives Swarm.
    #[test]
    fn the_update_policy_follows_the_strategy() {
        use crate::model::{RollingSettings, Strategy};
        let r = RollingSettings::default();
        let table = [
            (
                Strategy::Sequential,
                r,
                0,
                false,
                (1, UpdateOrder::StartFirst, 5),
            ),
            (
                Strategy::Sequential,
                r,
                0,
                true,
                (1, UpdateOrder::StopFirst, 5),
            ),
            (
                Strategy::Hybrid,
                r,
                0,
                false,
                (1, UpdateOrder::StartFirst, 5),
            ),
            (Strategy::Hybrid, r, 3, true, (1, UpdateOrder::StopFirst, 3)),
            (
                Strategy::Parallel,
                r,
                0,
                false,
                (0, UpdateOrder::StartFirst, 5),
            ),
            (
                Strategy::Parallel,
                r,
                0,
                true,
                (0, UpdateOrder::StopFirst, 5),
            ),
            (
                Strategy::BlueGreen,
                r,
                0,
                true,
                (0, UpdateOrder::StartFirst, 5),
            ),
            (
                Strategy::RollingUpdate,
                r,
                2,
                true,
                (1, UpdateOrder::StartFirst, 2),
            ),
            (
                Strategy::RollingUpdate,
                RollingSettings {
                    max_surge: 3,
                    max_unavailable: 0,
                },
                0,
                false,
                (3, UpdateOrder::StartFirst, 5),
            ),
            (
                Strategy::RollingUpdate,
                RollingSettings {
                    max_surge: 0,
                    max_unavailable: 2,
                },
                0,
                false,
                (2, UpdateOrder::StopFirst, 5),
            ),
        ];
        for (strategy, rolling, min_healthy, fixed, (parallelism, order, monitor)) in table {
            let u = SwarmUpdate::for_strategy(strategy, rolling, min_healthy, fixed);
            assert_eq!(
                (u.parallelism, u.order, u.monitor_seconds),
                (parallelism, order, monitor),
                "{strategy:?} {rolling:?} min_healthy {min_healthy} fixed port {fixed}"
            );
        }
        assert_eq!(SwarmUpdate::hybrid(true).order, UpdateOrder::StopFirst);
    }

    #[test]
    fn the_service_spec_takes_the_policy_and_host_mode_forces_stop_first() {
        let mut sp = spec();
        sp.swarm_update = Some(SwarmUpdate {
            parallelism: 0,
            order: UpdateOrder::StartFirst,
            monitor_seconds: 7,
        });
        let s = service_spec(&sp, &ctx(), &[Some(31001)], PublishMode::Ingress).unwrap();
        let u = s.update_config.unwrap();
        assert_eq!(
            (u.parallelism, u.order, u.monitor, u.failure_action),
            (
                Some(0),
                Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
                Some(7_000_000_000),
                Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
            )
        );
        // Through the routing mesh a fixed port allows start-first; a task
        // publishing it on its node does not.
        sp.ports[0].host_port = Some(8000);
        let mesh = service_spec(&sp, &ctx(), &[Some(8000)], PublishMode::Ingress).unwrap();
        assert_eq!(
            mesh.update_config.unwrap().order,
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        let host = service_spec(&sp, &ctx(), &[Some(8000)], PublishMode::Host).unwrap();
        let u = host.update_config.unwrap();
        assert_eq!(
            (u.parallelism, u.order),
            (Some(0), Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST))
        );
    }

    #[test]
    fn node_gpus_come_from_generic_resources() {
        let res = vec![
            GenericResourcesInner {
                named_resource_spec: Some(GenericResourcesInnerNamedResourceSpec {
                    kind: Some("NVIDIA-GPU".into()),
                    value: Some("GPU-1".into()),
                }),
                discrete_resource_spec: None,
            },
            GenericResourcesInner {
                named_resource_spec: None,
                discrete_resource_spec: Some(GenericResourcesInnerDiscreteResourceSpec {
                    kind: Some("NVIDIA-GPU".into()),
                    value: Some(2),
                }),
            },
            GenericResourcesInner {
                named_resource_spec: None,
                discrete_resource_spec: Some(GenericResourcesInnerDiscreteResourceSpec {
                    kind: Some("SSD".into()),
                    value: Some(5),
                }),
            },
        ];
        let gpus = gpus_of(&res);
        assert_eq!(gpus.len(), 3);
        assert_eq!(gpus[0].uuid.as_deref(), Some("GPU-1"));
        assert_eq!(gpus[2].index, 2);
    }
}
