//! What the Docker and Swarm backends share of the engine: the client (made
//! on first use, [`Engine`]), engine errors, an instance's labels,
//! environment, command line, mounts and GPU requests, host-port allocation,
//! the network lock, image pulls, log tails, and probes run in a container. `docker` and
//! `swarm` build on it; neither reaches into the other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{DeviceRequest, HealthStatusEnum, Mount, MountType};
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use super::{BackendError, ProbeOutcome, StartContext, marks};
use crate::instance::GpuRef;
use crate::model::{PortSpec, Protocol, ServiceSpec, Text};

/// The last `lines` lines of a log stream (container or Swarm service, without
/// `follow`), read for at most 5 s.
pub(crate) async fn log_tail(
    mut stream: impl futures_util::Stream<Item = Result<bollard::container::LogOutput, DockerError>>
    + Unpin,
    lines: usize,
) -> Vec<String> {
    let mut text = String::new();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    last_lines(&text, lines)
}

/// The last `lines` lines of a log's text. An engine that cannot read a
/// node's logs writes its error into the stream unframed: the stray frame
/// bytes a line may start with (control characters and undecodable bytes)
/// are dropped; an indenting tab and a colour's escape are kept.
fn last_lines(text: &str, lines: usize) -> Vec<String> {
    let stray = |c: char| c == '\u{fffd}' || (c.is_control() && c != '\t' && c != '\u{1b}');
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    all[skip..]
        .iter()
        .map(|l| l.trim_start_matches(stray).to_owned())
        .collect()
}

/// Connects to the local engine (`DOCKER_HOST` or the default socket) and
/// agrees on an API version both sides speak.
pub async fn connect() -> Result<Docker, BackendError> {
    let unavailable = |e: DockerError| BackendError::Unavailable {
        what: "the Docker engine".into(),
        message: e.to_string(),
    };
    let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
    let docker = docker.negotiate_version().await.map_err(unavailable)?;
    docker.ping().await.map_err(unavailable)?;
    Ok(docker)
}

/// What the Docker and Swarm backends need: an engine that answers.
pub(crate) const PREREQUISITE: super::Prerequisite = super::Prerequisite {
    name: "docker",
    needed_help: "start the Docker engine (dockerd) or set DOCKER_HOST; services with an image need it",
    optional_help: "only needed for services with an image; start dockerd to use them",
};

/// [`engine_info`] within 5 s, as `doctor` reports it.
pub(crate) async fn check_engine() -> Result<String, String> {
    tokio::time::timeout(std::time::Duration::from_secs(5), engine_info())
        .await
        .map_err(|_| "the Docker engine did not answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())
}

/// A one-line description of the engine: version, API version, Swarm state
/// (for `deploy-code doctor`).
pub async fn engine_info() -> Result<String, BackendError> {
    let docker = connect().await?;
    let unavailable = |e: DockerError| BackendError::Unavailable {
        what: "the Docker engine".into(),
        message: e.to_string(),
    };
    let version = docker.version().await.map_err(unavailable)?;
    let info = docker.info().await.map_err(unavailable)?;
    let swarm = info
        .swarm
        .and_then(|s| s.local_node_state)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into());
    Ok(format!(
        "Docker {} (API {}, negotiated {}), swarm {}",
        version.version.unwrap_or_default(),
        version.api_version.unwrap_or_default(),
        docker.client_version(),
        if swarm.is_empty() {
            "inactive".into()
        } else {
            swarm
        }
    ))
}

pub(crate) fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

pub(crate) fn is_conflict(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// The short message of an engine error, without the HTTP wrapping.
pub(crate) fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The labels that mark an instance of `spec` as this project's.
pub fn labels(
    spec: &ServiceSpec,
    ctx: &StartContext,
    replica: Option<u32>,
) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(marks::PROJECT.into(), ctx.project.clone());
    l.insert(marks::SERVICE.into(), spec.name.to_string());
    l.insert(marks::SPEC_HASH.into(), spec.spec_hash());
    l.insert(marks::DEPLOYMENT.into(), ctx.revision.to_string());
    l.insert(marks::LINEAGE.into(), ctx.lineage.clone());
    if let Some(r) = replica {
        l.insert(marks::REPLICA.into(), r.to_string());
    }
    l
}

/// `KEY=value` pairs with plaintext secrets, for the engine only.
pub(crate) fn env_list(spec: &ServiceSpec) -> Result<Vec<String>, BackendError> {
    // What `inherit_env` names of this run's environment (a container gets
    // no base set: its image has its own `PATH` and `HOME`), then `env`.
    let inherited = super::inherited_env(spec, false)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"));
    let own = spec.env.iter().map(|(k, v)| {
        v.expose()
            .map(|p| format!("{k}={p}"))
            .ok_or_else(|| missing_secret(spec, k))
    });
    inherited.map(Ok).chain(own).collect()
}

pub(crate) fn missing_secret(spec: &ServiceSpec, what: &str) -> BackendError {
    BackendError::StartFailed {
        service: spec.name.to_string(),
        message: format!(
            "the value of `{what}` is sensitive and its plaintext is not available; render the config again"
        ),
    }
}

/// `(entrypoint, cmd)`: `None` keeps the image's own.
pub(crate) type CommandLine = (Option<Vec<String>>, Option<Vec<String>>);

/// `(entrypoint, cmd)` as the module documentation describes.
pub(crate) fn command_line(spec: &ServiceSpec) -> Result<CommandLine, BackendError> {
    let expose = |t: &Text, what: &str| {
        t.expose()
            .map(str::to_owned)
            .ok_or_else(|| missing_secret(spec, what))
    };
    let args: Vec<String> = spec
        .args
        .iter()
        .map(|a| expose(a, "args"))
        .collect::<Result<_, _>>()?;
    match &spec.command {
        Some(c) => Ok((Some(vec![expose(c, "command")?]), Some(args))),
        None if args.is_empty() => Ok((None, None)),
        None => Ok((None, Some(args))),
    }
}

/// The device request that gives a container exactly the GPUs the plan assigned
/// (by UUID where known, else by index). `None` when it was given none.
pub fn device_requests(gpus: &[GpuRef]) -> Option<Vec<DeviceRequest>> {
    if gpus.is_empty() {
        return None;
    }
    Some(vec![DeviceRequest {
        driver: Some("nvidia".into()),
        device_ids: Some(
            gpus.iter()
                .map(|g| g.uuid.clone().unwrap_or_else(|| g.index.to_string()))
                .collect(),
        ),
        capabilities: Some(vec![vec!["gpu".into()]]),
        ..Default::default()
    }])
}

pub(crate) fn port_key(p: &PortSpec) -> String {
    format!("{}/{}", p.container_port, p.protocol.as_str())
}

/// Named volumes and bind mounts.
pub(crate) fn mounts(spec: &ServiceSpec, project: &str) -> Vec<Mount> {
    spec.volumes
        .iter()
        .map(|v| match &v.host_path {
            Some(host) => Mount {
                target: Some(v.mount_path.clone()),
                source: Some(host.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(v.read_only),
                ..Default::default()
            },
            None => Mount {
                target: Some(v.mount_path.clone()),
                source: Some(volume_name(project, &v.name)),
                typ: Some(MountType::VOLUME),
                read_only: Some(v.read_only),
                ..Default::default()
            },
        })
        .collect()
}

/// A named volume of the project: `<project>-<name>`.
pub fn volume_name(project: &str, name: &str) -> String {
    format!("{project}-{name}")
}

/// Host ports handed out by this process and not yet seen bound, so that
/// concurrent starts do not pick the same one.
fn handed_out() -> &'static Mutex<BTreeSet<u16>> {
    static PORTS: OnceLock<Mutex<BTreeSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// A host port from `range` that nothing on this host listens on (TCP or UDP
/// as asked), skipping `taken`. The search starts at a random offset so that
/// concurrent runs rarely race for the same port.
pub fn free_port(range: (u16, u16), protocol: Protocol, taken: &BTreeSet<u16>) -> Option<u16> {
    let (lo, hi) = (range.0.min(range.1), range.0.max(range.1));
    let span = u32::from(hi - lo) + 1;
    let start = rand::random::<u32>() % span;
    let mut guard = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        if port == 0 || taken.contains(&port) || guard.contains(&port) {
            continue;
        }
        let free = match protocol {
            Protocol::Tcp => std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            Protocol::Udp => std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok(),
        };
        if free {
            guard.insert(port);
            return Some(port);
        }
    }
    None
}

pub(crate) fn release_ports(ports: &[u16]) {
    let mut guard = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    for p in ports {
        guard.remove(p);
    }
}

/// Serializes network creation within this process.
pub(crate) static NETWORK_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A connection to the engine that is made (and its API version agreed) on
/// first use, so that a build can offer the Docker backends without an
/// engine until a service needs one. A failed attempt is retried next time.
#[derive(Clone, Debug, Default)]
pub struct Engine {
    cell: std::sync::Arc<tokio::sync::OnceCell<Docker>>,
}

impl Engine {
    /// Connects on first use.
    pub(crate) fn lazy() -> Self {
        Self::default()
    }

    /// Connects now (see [`connect`]).
    pub async fn connect() -> Result<Self, BackendError> {
        let e = Self::lazy();
        e.get().await?;
        Ok(e)
    }

    /// The negotiated client.
    pub async fn get(&self) -> Result<&Docker, BackendError> {
        self.cell.get_or_try_init(connect).await
    }
}

/// Runs `argv` in container `id` as a health probe: healthy on exit 0,
/// with the exit code and the first lines of output as evidence.
pub(crate) async fn exec_probe(
    docker: &Docker,
    id: &str,
    argv: &[String],
    timeout: Duration,
) -> ProbeOutcome {
    let run = async {
        let exec = docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| message(&e))?;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(|e| message(&e))?
        {
            while let Some(chunk) = out.next().await {
                if let Ok(c) = chunk
                    && output.len() < 4096
                {
                    output.push_str(&c.to_string());
                }
            }
        }
        let inspect = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| message(&e))?;
        Ok::<_, String>((inspect.exit_code, output))
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => ProbeOutcome {
            healthy: false,
            detail: format!("timed out after {}s", timeout.as_secs_f32()),
        },
        Ok(Err(e)) => ProbeOutcome {
            healthy: false,
            detail: e,
        },
        Ok(Ok((code, out))) => {
            let first: Vec<&str> = out.lines().take(3).collect();
            ProbeOutcome {
                healthy: code == Some(0),
                detail: match code {
                    Some(c) => format!(
                        "exit {c}{}",
                        if first.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", first.join(" | "))
                        }
                    ),
                    None => "no exit code".into(),
                },
            }
        }
    }
}

/// The verdict of container `id`'s HEALTHCHECK: `Some(true)` healthy,
/// `Some(false)` unhealthy, `None` none or starting.
pub(crate) async fn container_health(docker: &Docker, id: &str) -> Option<bool> {
    let c = docker.inspect_container(id, None).await.ok()?;
    match c.state?.health?.status? {
        HealthStatusEnum::HEALTHY => Some(true),
        HealthStatusEnum::UNHEALTHY => Some(false),
        _ => None,
    }
}

/// Makes sure `image` is present on the engine, pulling it when missing, with
/// a line to `progress` when a pull starts, at most every half second while it
/// runs (layers done, bytes downloaded) and when it ends.
pub(crate) async fn ensure_image(
    docker: &Docker,
    image: &str,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<(), BackendError> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            return Err(BackendError::Unavailable {
                what: "the Docker engine".into(),
                message: message(&e),
            });
        }
    }
    let (name, tag) = split_image(image);
    tracing::info!(image, "pulling image");
    progress(format!("pulling image `{image}`"));
    let began = std::time::Instant::now();
    let mut last_report = began;
    // Per layer: (bytes downloaded, bytes in all, done).
    let mut layers: BTreeMap<String, (i64, i64, bool)> = BTreeMap::new();
    let options = CreateImageOptionsBuilder::default()
        .from_image(name)
        .tag(tag)
        .build();
    let mut stream = docker.create_image(Some(options), None, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(err) = info.error_detail.as_ref().and_then(|d| d.message.clone()) {
                    return Err(BackendError::ImageUnavailable {
                        image: image.into(),
                        message: err,
                    });
                }
                if let Some(id) = &info.id {
                    let entry = layers.entry(id.clone()).or_default();
                    let status = info.status.as_deref().unwrap_or("");
                    if let Some(d) = &info.progress_detail
                        && status == "Downloading"
                    {
                        entry.0 = d.current.unwrap_or(entry.0);
                        entry.1 = d.total.unwrap_or(entry.1);
                    }
                    if matches!(status, "Pull complete" | "Already exists") {
                        entry.2 = true;
                    }
                }
                if last_report.elapsed() >= Duration::from_millis(500) && !layers.is_empty() {
                    last_report = std::time::Instant::now();
                    let done = layers.values().filter(|l| l.2).count();
                    let (got, all) = layers
                        .values()
                        .fold((0i64, 0i64), |(g, a), l| (g + l.0, a + l.1));
                    progress(format!(
                        "pulling image `{image}`: {done}/{} layers, {:.1}/{:.1} MB",
                        layers.len(),
                        got as f64 / 1e6,
                        all as f64 / 1e6
                    ));
                }
                tracing::info!(
                    image,
                    status = info.status.as_deref().unwrap_or(""),
                    current = info
                        .progress_detail
                        .as_ref()
                        .and_then(|d| d.current)
                        .unwrap_or(0),
                    total = info
                        .progress_detail
                        .as_ref()
                        .and_then(|d| d.total)
                        .unwrap_or(0),
                    "pull"
                );
            }
            Err(e) => {
                return Err(BackendError::ImageUnavailable {
                    image: image.into(),
                    message: message(&e),
                });
            }
        }
    }
    match docker.inspect_image(image).await {
        Ok(_) => {
            progress(format!(
                "pulled image `{image}` in {:.1} s",
                began.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Err(e) => Err(BackendError::ImageUnavailable {
            image: image.into(),
            message: message(&e),
        }),
    }
}

/// `(name, tag)` of an image reference (`latest` when it names none; a
/// digest reference is pulled whole).
pub(crate) fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's unframed error loses its stray bytes; a tab, a colour's
    /// escape and the line's own text stay; only the last lines are kept.
    #[test]
    fn a_log_tail_drops_stray_frame_bytes_only() {
        let text = "first\n\u{1}\u{0}\u{0}\u{fffd}Error grabbing logs: node is not available\n\tat main\n\u{1b}[32mok\u{1b}[0m\n";
        assert_eq!(
            last_lines(text, 3),
            [
                "Error grabbing logs: node is not available",
                "\tat main",
                "\u{1b}[32mok\u{1b}[0m"
            ]
        );
        assert_eq!(last_lines(text, 10).len(), 4);
    }
}
