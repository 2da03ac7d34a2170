//! A real two-node Swarm: two dockerds in network namespaces of their own
//! (`.ci/swarm-nodes.sh up`), node1 the manager. deploy-code is pointed at
//! node1's engine (`DOCKER_HOST`) as a user would: tasks spread over both
//! nodes, feasibility is judged per node (a fixed host port binds once per
//! node, a GPU only node2 declares), and a lost node's tasks run again on
//! node1, with `status` and `plan --refresh` telling the truth.
//!
//! Runs when `DEPLOY_CODE_SWARM_NODES` names node1's socket (`.ci/run`
//! exports it after `up`); skipped with a message otherwise. With the
//! variable set and `DEPLOY_CODE_REQUIRE_DOCKER=1`, a cluster that does not
//! answer fails the test.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::common::{IMAGE, build_image, free_port};
use super::health_restart::{body, wait_until};

/// The environment variable that names node1's socket.
pub const ENV: &str = "DEPLOY_CODE_SWARM_NODES";

/// The two-node cluster, one test at a time (one of them stops a node).
pub struct Cluster {
    pub socket: String,
    _turn: MutexGuard<'static, ()>,
}

fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cluster, or `None` after printing why the test is skipped.
pub fn cluster(test: &str) -> Option<Cluster> {
    let Ok(socket) = std::env::var(ENV) else {
        eprintln!(
            "SKIP {test}: {ENV} is not set (run `.ci/swarm-nodes.sh up` and export what it prints)"
        );
        return None;
    };
    let c = Cluster {
        socket,
        _turn: turn(),
    };
    let ready = c.wait_ready(Duration::from_secs(60));
    if !ready {
        let why = format!(
            "{ENV}={} but its Swarm does not have 2 ready nodes: {}",
            c.socket,
            c.docker(&["node", "ls"])
        );
        if std::env::var("DEPLOY_CODE_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("{why}");
        }
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    build_image();
    c.load_image();
    Some(c)
}

impl Cluster {
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket)
    }

    /// `docker -H <node1> args`: its standard output.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Node name -> (state, address).
    pub fn nodes(&self) -> Vec<(String, String, String)> {
        let ids = self.docker(&["node", "ls", "-q"]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec![
            "node",
            "inspect",
            "--format",
            "{{.Description.Hostname}} {{.Status.State}} {{.Status.Addr}}",
        ];
        args.extend(ids);
        let mut v: Vec<(String, String, String)> = self
            .docker(&args)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.into(), w.next()?.into(), w.next()?.into()))
            })
            .collect();
        v.sort();
        v
    }

    pub fn wait_ready(&self, limit: Duration) -> bool {
        wait_until(limit, || {
            let n = self.nodes();
            n.len() == 2 && n.iter().all(|(_, s, _)| s == "ready")
        })
    }

    /// The address of node `name`.
    pub fn addr(&self, name: &str) -> String {
        self.nodes()
            .into_iter()
            .find(|n| n.0 == name)
            .map(|n| n.2)
            .unwrap_or_default()
    }

    /// The test image on both nodes (`docker save | docker load`; the
    /// nodes reach no registry).
    fn load_image(&self) {
        static LOADED: OnceLock<()> = OnceLock::new();
        LOADED.get_or_init(|| {
            for n in ["1", "2"] {
                let socket = self.socket.replace("node1", &format!("node{n}"));
                let mut save = Command::new("docker")
                    .args(["save", IMAGE])
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let out = Command::new("docker")
                    .args(["-H", &format!("unix://{socket}"), "load", "-q"])
                    .stdin(save.stdout.take().unwrap())
                    .output()
                    .unwrap();
                let _ = save.wait();
                assert!(
                    out.status.success(),
                    "loading {IMAGE} on node{n}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        });
    }

    /// The node of each running task of `service`, sorted.
    pub fn running_on(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .docker(&[
                "service",
                "ps",
                service,
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}} {{.CurrentState}}",
            ])
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("Running"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        v.sort();
        v
    }

    /// The script that makes the cluster (`stop N`, `start N`).
    pub fn script(&self, args: &[&str]) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/swarm-nodes.sh");
        let out = Command::new(script).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "swarm-nodes.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A project on the cluster, driven through the CLI; destroyed (and its
/// Swarm services and networks removed, by label) when dropped.
pub struct Project<'a> {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub cluster: &'a Cluster,
}

impl<'a> Project<'a> {
    pub fn new(cluster: &'a Cluster, test: &str) -> Self {
        Project {
            dir: tempfile::tempdir().unwrap(),
            name: super::common::project(test),
            cluster,
        }
    }

    /// `web`: busybox httpd answering `version=<version>` on 8080.
    pub fn write(&self, replicas: u32, version: &str, extra: &str) {
        let text = format!(
            "version: \"1.0.0\"\nproject: {}\nenvironment: test\ninfrastructure:\n  orchestrator: Swarm\ndeployment:\n  timeout_seconds: 120\n  stop_grace_seconds: 1\nservices:\n  web:\n    image: {IMAGE}\n    args: [sh, -c, \"echo version={version} > /www/index.html; exec httpd -f -p 8080 -h /www\"]\n    replicas: {replicas}\n{extra}",
            self.name
        );
        std::fs::write(self.dir.path().join("deploy-code.yaml"), text).unwrap();
    }

    pub fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
            .current_dir(self.dir.path())
            .args(args)
            .env("DOCKER_HOST", self.cluster.host())
            .env("DEPLOY_CODE_SWARM_PUBLISH_MODE", "host")
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn service(&self) -> String {
        format!("{}_web", self.name)
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--auto-approve"]);
        let label = format!("label=io.deploy-code.project={}", self.name);
        for kind in ["service", "network"] {
            let ids = self.cluster.docker(&[kind, "ls", "-q", "--filter", &label]);
            for id in ids.split_whitespace() {
                self.cluster.docker(&[kind, "rm", id]);
            }
        }
    }
}

/// Two replicas with a fixed host port land one per node, each serving on
/// its node's address; a third cannot bind the port anywhere, and `plan`
/// says so in terms of nodes.
#[test]
fn tasks_spread_over_both_nodes_and_a_fixed_port_binds_once_per_node() {
    let test = "tasks_spread_over_both_nodes_and_a_fixed_port_binds_once_per_node";
    let Some(c) = cluster(test) else { return };
    let p = Project::new(&c, "nodes-spread");
    let port = free_port();
    let ports = format!("    ports:\n      - container_port: 8080\n        host_port: {port}\n");
    p.write(2, "v1", &ports);
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(60), || c.running_on(&p.service())
            == ["deploy-code-node1", "deploy-code-node2"]),
        "one task per node: {:?}",
        c.running_on(&p.service())
    );
    for node in ["deploy-code-node1", "deploy-code-node2"] {
        let addr = c.addr(node);
        let served = wait_until(Duration::from_secs(30), || {
            body_at(&addr, port).as_deref() == Some("version=v1")
        });
        assert!(served, "{node} ({addr}:{port}) serves v1");
    }
    let (code, out) = p.run(&["status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["services"][0]["instances"][0]["tasks"]["running"], 2,
        "{out}"
    );

    p.write(3, "v1", &ports);
    let (code, out) = p.run(&["plan"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "port {port}: 3 replicas of `web` need it, 2 nodes can bind it"
        )),
        "{out}"
    );
}

/// A service that asks for a GPU fits on node2 alone (it declares one
/// `NVIDIA-GPU` generic resource, `NVIDIA-GPU=1`): the plan places its GPU
/// there; two GPUs fit nowhere. (It is not applied: Swarm 20.10's
/// constraint enforcer rejects a task that reserves a generic resource
/// together with CPUs and memory, "assigned node no longer meets
/// constraints", and deploy-code always reserves both.)
#[test]
fn a_service_that_needs_a_gpu_fits_on_the_node_that_has_one() {
    let test = "a_service_that_needs_a_gpu_fits_on_the_node_that_has_one";
    let Some(c) = cluster(test) else { return };
    let p = Project::new(&c, "nodes-gpu");
    p.write(1, "v1", "    resources:\n      gpu_count: 2\n");
    let (code, out) = p.run(&["plan"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("needs 2 GPUs"), "{out}");
    p.write(1, "v1", "    resources:\n      gpu_count: 1\n");
    let (code, out) = p.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("gpus: deploy-code-node2 #0 (NVIDIA-GPU)"),
        "{out}"
    );
    p.write(2, "v1", "    resources:\n      gpu_count: 1\n");
    let (code, out) = p.run(&["plan"]);
    assert_ne!(code, 0, "two replicas need two GPUs: {out}");
}

/// Node2's engine stops after a deploy: Swarm runs its tasks again on
/// node1, `status` counts them running and `plan --refresh` finds nothing
/// to do. Node2 is started again afterwards.
#[test]
fn a_lost_node_s_tasks_run_again_on_the_other() {
    let test = "a_lost_node_s_tasks_run_again_on_the_other";
    let Some(c) = cluster(test) else { return };
    struct Restart<'a>(&'a Cluster);
    impl Drop for Restart<'_> {
        fn drop(&mut self) {
            self.0.script(&["start", "2"]);
            assert!(
                self.0.wait_ready(Duration::from_secs(120)),
                "node2 is back: {:?}",
                self.0.nodes()
            );
        }
    }
    let p = Project::new(&c, "nodes-loss");
    // Small tasks: four fit on one node of this two-core host. A restart
    // policy: with `no` (Swarm's `none`) Swarm replaces no task, not even
    // one whose node is gone.
    p.write(
        4,
        "v1",
        "    restart: always\n    resources:\n      cpu_cores: 0.1\n      memory_mb: 32\n",
    );
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(60), || {
            let on = c.running_on(&p.service());
            on.len() == 4 && on.iter().any(|n| n == "deploy-code-node2")
        }),
        "four tasks over both nodes: {:?}",
        c.running_on(&p.service())
    );

    let _restart = Restart(&c);
    c.script(&["stop", "2"]);
    assert!(
        wait_until(Duration::from_secs(120), || c
            .nodes()
            .iter()
            .any(|(n, s, _)| n == "deploy-code-node2" && s == "down")),
        "the manager sees node2 down: {:?}",
        c.nodes()
    );
    assert!(
        wait_until(Duration::from_secs(120), || c.running_on(&p.service())
            == ["deploy-code-node1"; 4]),
        "every task runs on node1: {}",
        c.docker(&["service", "ps", &p.service(), "--no-trunc"])
    );
    let (code, out) = p.run(&["status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let i = &v["services"][0]["instances"][0];
    assert_eq!(i["state"], "running", "{out}");
    assert_eq!(i["tasks"]["running"], 4, "{out}");
    assert_eq!(i["tasks"]["replicas"], 4, "{out}");
    let (code, out) = p.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(code, 0, "nothing to change: {out}");
}

/// The body `GET /` answers on `addr:port`.
fn body_at(addr: &str, port: u16) -> Option<String> {
    if addr == "127.0.0.1" {
        return body(port);
    }
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{addr}:{port}").parse().ok()?,
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.trim().to_owned())
}
