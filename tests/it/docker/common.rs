//! Fixtures: the engine (or a skip), a tiny busybox image, unique names and a
//! guard that removes what a test created, by id, even when it fails.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use deploy_code::backends::StartContext;
use deploy_code::backends::docker::DockerBackend;
use deploy_code::model::{NetworkSettings, PortSpec, Protocol, ServiceSpec, Text};

use crate::support::Spec;

pub use crate::support::free_port;
pub use crate::support::image::{IMAGE, IMAGE_WITH_HEALTHCHECK, build as build_image};

/// The engine, or `None` after printing why the test is skipped.
/// With `DEPLOY_CODE_REQUIRE_DOCKER=1` an unreachable engine fails the test.
pub async fn engine(test: &str) -> Option<DockerBackend> {
    match DockerBackend::connect().await {
        Ok(b) => {
            build_image();
            Some(b)
        }
        Err(e) => {
            crate::support::skip(test, "DEPLOY_CODE_REQUIRE_DOCKER", &e.to_string());
            None
        }
    }
}

/// True when this engine is a Swarm manager (else the Swarm test skips or fails).
pub fn swarm_active(test: &str) -> bool {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.Swarm.ControlAvailable}}"])
        .output();
    let active = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true");
    if !active {
        crate::support::skip(
            test,
            "DEPLOY_CODE_REQUIRE_DOCKER",
            "this engine is not a Swarm manager (run `docker swarm init`)",
        );
    }
    active
}

/// A project name no other test or run uses.
pub fn project(test: &str) -> String {
    format!("dct-{test}-{}", std::process::id())
}

pub fn ctx(project: &str) -> StartContext {
    StartContext {
        project: project.into(),
        lineage: format!("lineage-{project}"),
        revision: 1,
        log_dir: PathBuf::from("/tmp"),
        data_dir: PathBuf::from("/tmp"),
        base_dir: PathBuf::from("/tmp"),
        network: NetworkSettings {
            port_range: (42000, 48999),
            ..Default::default()
        },
        gpus: vec![],
        only_replicas: None,
        stop_grace: std::time::Duration::from_secs(10),
    }
}

/// busybox httpd serving /www on container port 8080, host port allocated.
pub fn web(name: &str) -> ServiceSpec {
    Spec::docker(name, IMAGE, &["httpd", "-f", "-p", "8080", "-h", "/www"])
        .port(PortSpec {
            container_port: 8080,
            host_port: None,
            host_ip: None,
            protocol: Protocol::Tcp,
        })
        .build()
}

/// A service whose container runs `sh -c script`.
pub fn shell(name: &str, script: &str) -> ServiceSpec {
    let mut s = web(name);
    s.args = ["sh", "-c", script].into_iter().map(Text::plain).collect();
    s.ports.clear();
    s
}

/// `GET path` on `host:port`; the status code.
pub fn http_status(host: &str, port: u16, path: &str) -> Option<u16> {
    let addr = format!("{host}:{port}");
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `f` every 100 ms until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Removes, on drop, every container labelled with the project, the project's
/// network and volumes, and the Swarm services it names, all by id.
pub struct Cleanup {
    pub project: String,
    pub volumes: Vec<String>,
}

impl Cleanup {
    pub fn new(project: &str) -> Self {
        Self {
            project: project.into(),
            volumes: vec![],
        }
    }
}

fn ids(args: &[&str]) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=io.deploy-code.project={}", self.project);
        let services = ids(&["service", "ls", "-q", "--filter", &label]);
        if !services.is_empty() {
            let _ = Command::new("docker")
                .args(["service", "rm"])
                .args(&services)
                .output();
        }
        let containers = ids(&["ps", "-aq", "--filter", &label]);
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&containers)
                .output();
        }
        let networks = ids(&["network", "ls", "-q", "--filter", &label]);
        for n in networks {
            let _ = Command::new("docker").args(["network", "rm", &n]).output();
        }
        for v in &self.volumes {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}
