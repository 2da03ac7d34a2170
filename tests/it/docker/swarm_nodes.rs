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

use std::collections::{BTreeSet, HashMap};
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
        crate::support::skip(
            test,
            "DEPLOY_CODE_REQUIRE_DOCKER",
            &format!("{ENV} is not set (run `.ci/swarm-nodes.sh up` and export what it prints)"),
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
        crate::support::skip(test, "DEPLOY_CODE_REQUIRE_DOCKER", &why);
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
    /// Empty when the client cannot start: guards call this while a failed
    /// test unwinds, and must not panic.
    pub fn docker(&self, args: &[&str]) -> String {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
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

    /// Every task of `service` the manager knows, as the engine reports it.
    pub fn tasks(&self, service: &str) -> Vec<TaskView> {
        let ids = self.docker(&["service", "ps", "-q", "--no-trunc", service]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let nodes: HashMap<String, String> = {
            let out = self.docker(&["node", "ls", "--format", "{{.ID}} {{.Hostname}}"]);
            out.lines()
                .filter_map(|l| {
                    let (id, name) = l.split_once(' ')?;
                    Some((id.to_owned(), name.to_owned()))
                })
                .collect()
        };
        let mut args = vec![
            "inspect",
            "--format",
            "{{.NodeID}}|{{.Status.State}}|{{.DesiredState}}|{{.CreatedAt.UnixNano}}|{{.Status.Timestamp.UnixNano}}|{{json .Spec.ContainerSpec.Args}}",
        ];
        args.extend(ids);
        let mut v: Vec<TaskView> = self
            .docker(&args)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.splitn(6, '|').collect();
                (f.len() == 6).then(|| TaskView {
                    node: nodes.get(f[0]).cloned().unwrap_or_else(|| f[0].to_owned()),
                    state: f[1].to_owned(),
                    desired: f[2].to_owned(),
                    created_ns: f[3].parse().unwrap_or(0),
                    since_ns: f[4].parse().unwrap_or(0),
                    args: f[5].to_owned(),
                })
            })
            .collect();
        v.sort_by_key(|t| t.created_ns);
        v
    }

    /// `docker service inspect --format <format> <service>`, trimmed.
    pub fn inspect(&self, service: &str, format: &str) -> String {
        self.docker(&["service", "inspect", "--format", format, service])
            .trim()
            .to_owned()
    }

    /// The script that makes the cluster (`stop N`, `start N`).
    pub fn script(&self, args: &[&str]) {
        if let Err(e) = self.try_script(args) {
            panic!("{e}");
        }
    }

    /// [`Cluster::script`], telling a failure instead of panicking (for
    /// guards, which run while a failed test unwinds).
    fn try_script(&self, args: &[&str]) -> Result<(), String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/swarm-nodes.sh");
        let out = Command::new(script)
            .args(args)
            .output()
            .map_err(|e| format!("swarm-nodes.sh {args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "swarm-nodes.sh {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// One task of a service, from `docker inspect` on the manager.
#[derive(Clone, Debug)]
pub struct TaskView {
    /// The node's host name.
    pub node: String,
    /// `new` … `running`, `complete`, `shutdown`, `failed`, `rejected`, …
    pub state: String,
    pub desired: String,
    pub created_ns: i64,
    /// When it reached its current state.
    pub since_ns: i64,
    /// Its container's arguments, as JSON.
    pub args: String,
}

impl TaskView {
    pub fn runs(&self) -> bool {
        self.state == "running" && self.desired == "running"
    }

    /// Whether it runs `version=<v>` (see [`Project::write`]).
    pub fn version(&self, v: &str) -> bool {
        self.args.contains(&format!("version={v} "))
    }
}

/// A project on the cluster, driven through the CLI; destroyed (and its
/// Swarm services and networks removed, by label) when dropped.
pub struct Project<'a> {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub cluster: &'a Cluster,
    /// `DEPLOY_CODE_SWARM_PUBLISH_MODE` of its runs: `host` (as CI) unless
    /// a test says otherwise.
    pub publish: &'static str,
}

impl<'a> Project<'a> {
    pub fn new(cluster: &'a Cluster, test: &str) -> Self {
        Project {
            dir: tempfile::tempdir().unwrap(),
            name: super::common::project(test),
            cluster,
            publish: "host",
        }
    }

    /// `web`: busybox httpd answering `version=<version>` on 8080.
    pub fn write(&self, replicas: u32, version: &str, extra: &str) {
        self.write_with("", replicas, version, extra);
    }

    /// As [`Project::write`], with more `deployment` settings (`deployment`
    /// lines, indented by two).
    pub fn write_with(&self, deployment: &str, replicas: u32, version: &str, extra: &str) {
        let script =
            format!("echo version={version} > /www/index.html; exec httpd -f -p 8080 -h /www");
        self.write_script(deployment, replicas, &script, extra);
    }

    /// As [`Project::write_with`], with `web` running `sh -c <script>`.
    pub fn write_script(&self, deployment: &str, replicas: u32, script: &str, extra: &str) {
        let text = format!(
            "version: \"1.0.0\"\nproject: {}\nenvironment: test\ninfrastructure:\n  orchestrator: Swarm\ndeployment:\n  timeout_seconds: 120\n  stop_grace_seconds: 1\n{deployment}services:\n  web:\n    image: {IMAGE}\n    args: [sh, -c, \"{script}\"]\n    replicas: {replicas}\n{extra}",
            self.name
        );
        std::fs::write(self.dir.path().join("deploy-code.yaml"), text).unwrap();
    }

    pub fn run(&self, args: &[&str]) -> (i32, String) {
        self.run_in(self.publish, args)
    }

    /// A run with `DEPLOY_CODE_SWARM_PUBLISH_MODE=<publish>`.
    pub fn run_in(&self, publish: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
            .current_dir(self.dir.path())
            .args(args)
            .env("DOCKER_HOST", self.cluster.host())
            .env("DEPLOY_CODE_SWARM_PUBLISH_MODE", publish)
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

/// Small tasks (four fit on one node of this two-core host) that Swarm
/// runs again wherever it can (`restart: always`).
const SMALL: &str =
    "    restart: always\n    resources:\n      cpu_cores: 0.1\n      memory_mb: 32\n";

/// `RollingUpdate` with one new task at a time, each started before an old
/// one stops.
const ROLLING: &str =
    "  strategy: RollingUpdate\n  rolling:\n    max_surge: 1\n    max_unavailable: 0\n";

/// `RollingUpdate` that stops one old task before its successor starts.
const STOP_FIRST: &str =
    "  strategy: RollingUpdate\n  rolling:\n    max_surge: 0\n    max_unavailable: 1\n";

/// Watches `service`'s tasks while `run` runs; returns what `run` returned
/// and every observation (the tasks at one moment).
fn watching<T: Send>(
    c: &Cluster,
    service: &str,
    run: impl FnOnce() -> T + Send,
) -> (T, Vec<Vec<TaskView>>) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let seen = s.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(c.tasks(service));
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        let out = run();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, seen.join().unwrap())
    })
}

/// Applies `web` v1 with `replicas` under `deployment` and waits until its
/// tasks run v1 spread over both nodes.
fn deploy_v1_over_both_nodes(c: &Cluster, p: &Project, deployment: &str, replicas: u32) {
    let service = p.service();
    p.write_with(deployment, replicas, "v1", SMALL);
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(60), || running_version(
            &c.tasks(&service),
            "v1"
        ) == (
            both_nodes(),
            replicas as usize
        )),
        "{replicas} v1 tasks over both nodes: {:#?}",
        c.tasks(&service)
    );
}

/// The nodes the running tasks of `version` run on, and how many run.
fn running_version(tasks: &[TaskView], version: &str) -> (BTreeSet<String>, usize) {
    let v: Vec<&TaskView> = tasks
        .iter()
        .filter(|t| t.runs() && t.version(version))
        .collect();
    (v.iter().map(|t| t.node.clone()).collect(), v.len())
}

fn both_nodes() -> BTreeSet<String> {
    ["deploy-code-node1", "deploy-code-node2"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// A rolling update across both nodes (routing-mesh publishing, where a
/// change of `args` updates the service in place): Swarm is given
/// `RollingUpdate`'s policy (parallelism 1, start-first), replaces the tasks
/// one at a time (each new task is created only once the one before it
/// runs, and at every observed moment at least `replicas - 1` tasks run),
/// and afterwards every task runs the new spec, on both nodes. With
/// host-mode publishing the same change is planned as a replace, and said
/// so.
#[test]
fn a_rolling_update_goes_task_by_task_across_both_nodes() {
    let test = "a_rolling_update_goes_task_by_task_across_both_nodes";
    let Some(c) = cluster(test) else { return };
    let mut p = Project::new(&c, "nodes-roll");
    p.publish = "ingress";
    let service = p.service();
    deploy_v1_over_both_nodes(&c, &p, ROLLING, 4);
    assert_eq!(
        c.inspect(
            &service,
            "{{.Spec.UpdateConfig.Parallelism}} {{.Spec.UpdateConfig.Order}} {{.Spec.UpdateConfig.FailureAction}}"
        ),
        "1 start-first rollback",
        "the strategy's policy"
    );

    p.write_with(ROLLING, 4, "v2", SMALL);
    let action = |publish: &str| {
        let (code, out) = p.run_in(publish, &["plan", "--format", "json"]);
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["changes"][0]["action"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(action("host"), "replace", "host-mode publishing replaces");
    assert_eq!(
        action("ingress"),
        "update",
        "the routing mesh updates in place"
    );

    let began = std::time::Instant::now();
    let ((code, out), seen) = watching(&c, &service, || p.run(&["apply", "--auto-approve"]));
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "rolling update of 4 tasks over 2 nodes: apply {:.1?}, {} observations",
        began.elapsed(),
        seen.len()
    );
    assert!(seen.len() > 5, "observed while it ran: {}", seen.len());
    for tasks in &seen {
        let running = tasks.iter().filter(|t| t.runs()).count();
        assert!(running >= 3, "at most one task down at once: {tasks:#?}");
        let starting = tasks
            .iter()
            .filter(|t| t.version("v2") && t.desired == "running" && t.state != "running")
            .count();
        assert!(starting <= 1, "one new task at a time: {tasks:#?}");
    }
    assert!(
        wait_until(Duration::from_secs(60), || {
            let tasks = c.tasks(&service);
            running_version(&tasks, "v2") == (both_nodes(), 4)
                && tasks.iter().filter(|t| t.runs()).count() == 4
        }),
        "every task runs v2, on both nodes: {:#?}",
        c.tasks(&service)
    );
    // Each new task was created after the one before it ran.
    let new: Vec<TaskView> = c
        .tasks(&service)
        .into_iter()
        .filter(|t| t.runs() && t.version("v2"))
        .collect();
    for w in new.windows(2) {
        assert!(w[1].created_ns >= w[0].since_ns, "task by task: {:#?}", new);
    }
    let (code, out) = p.run(&["status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["services"][0]["instances"][0]["tasks"]["running"], 4,
        "{out}"
    );
    let (code, out) = p.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(code, 0, "nothing to change: {out}");
}

/// An update whose gate fails (the new spec's command check never passes:
/// Swarm runs it as the new tasks' container health check, and fails the
/// first new task once its start period is over and its retries are spent,
/// which stops the update on the first node it reached) is rolled back:
/// `apply` exits 4, the service's spec is the previous one again, and its
/// tasks run it on both nodes.
/// Stop-first (`max_surge: 0`): each old task stops before its successor is
/// placed, so that Swarm's spread puts the successor on the node it left
/// (start-first, it may put both tasks on one node).
#[test]
fn a_failed_update_is_rolled_back_on_both_nodes() {
    let test = "a_failed_update_is_rolled_back_on_both_nodes";
    let Some(c) = cluster(test) else { return };
    let mut p = Project::new(&c, "nodes-back");
    p.publish = "ingress";
    let service = p.service();
    deploy_v1_over_both_nodes(&c, &p, STOP_FIRST, 2);
    let hash = "{{index .Spec.Labels \"io.deploy-code.spec-hash\"}}";
    let v1_hash = c.inspect(&service, hash);
    assert_eq!(
        c.inspect(
            &service,
            "{{.Spec.UpdateConfig.Parallelism}} {{.Spec.UpdateConfig.Order}} {{.Spec.RollbackConfig.Order}}"
        ),
        "1 stop-first stop-first"
    );
    assert!(!v1_hash.is_empty());

    let failing = format!(
        "{SMALL}    health_check:\n      command: [/bin/busybox, \"false\"]\n      interval_seconds: 1\n      timeout_seconds: 5\n      retries: 2\n      start_period_seconds: 5\n"
    );
    p.write_with(STOP_FIRST, 2, "v2", &failing);
    let began = std::time::Instant::now();
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 4, "failed and rolled back: {out}");
    eprintln!("failed update rolled back: apply {:.1?}", began.elapsed());

    let v2: Vec<TaskView> = c
        .tasks(&service)
        .into_iter()
        .filter(|t| t.version("v2"))
        .collect();
    assert!(!v2.is_empty(), "the update reached a node");
    assert!(
        v2.iter().all(|t| !t.runs()),
        "no task of the new spec runs: {v2:#?}"
    );
    assert!(
        wait_until(Duration::from_secs(90), || {
            let tasks = c.tasks(&service);
            c.inspect(&service, hash) == v1_hash
                && running_version(&tasks, "v1") == (both_nodes(), 2)
                && tasks.iter().filter(|t| t.runs()).count() == 2
        }),
        "the previous spec runs again on both nodes: {} {:#?}",
        c.inspect(&service, "{{json .Spec.TaskTemplate.ContainerSpec.Args}}"),
        c.tasks(&service)
    );
    assert!(
        c.inspect(&service, "{{json .Spec.TaskTemplate.ContainerSpec.Args}}")
            .contains("version=v1 "),
        "the service's spec"
    );
    let (code, out) = p.run(&["status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let i = &v["services"][0]["instances"][0];
    assert_eq!(i["state"], "running", "{out}");
    assert_eq!(i["tasks"]["running"], 2, "{out}");
    // The configuration still asks for v2: the plan says so.
    let (code, out) = p.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(code, 2, "the change is still to make: {out}");
}

/// What the running tasks of `service` serve, each asked from inside its
/// own container on its own node (`wget` of `127.0.0.1:8080`), sorted.
fn served(c: &Cluster, service: &str) -> Vec<String> {
    let running = c.docker(&[
        "service",
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        service,
    ]);
    let mut bodies = Vec::new();
    for task in running.split_whitespace() {
        let found = c.docker(&[
            "inspect",
            "--format",
            "{{.Status.State}} {{.Status.ContainerStatus.ContainerID}} {{.NodeID}}",
            task,
        ]);
        let f: Vec<&str> = found.split_whitespace().collect();
        let [state, container, node] = f[..] else {
            continue;
        };
        if state != "running" {
            continue;
        }
        let host = c.docker(&[
            "node",
            "inspect",
            "--format",
            "{{.Description.Hostname}}",
            node,
        ]);
        let n = host.trim().trim_start_matches("deploy-code-node");
        let out = Command::new("docker")
            .args(["-H", &format!("unix:///run/deploy-code-node{n}.sock")])
            .args([
                "exec",
                container,
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/",
            ])
            .output()
            .unwrap();
        bodies.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    bodies.sort();
    bodies
}

/// A Swarm update is done only when Swarm says so: it watches each new task
/// for `monitor` seconds (5 with no hold) and rolls the service back by
/// itself when one fails in that time. v2 serves, then exits 3 s after it
/// starts: after the no-check gate's own wait (1 s) but inside that window.
/// `apply` must not report v2 while Swarm puts v1 back behind its back: it
/// fails and rolls back, and v1 is what serves.
#[test]
fn a_task_failing_while_swarm_still_watches_the_update_fails_the_apply() {
    let test = "a_task_failing_while_swarm_still_watches_the_update_fails_the_apply";
    let Some(c) = cluster(test) else { return };
    let mut p = Project::new(&c, "nodes-watched");
    // Without a host port, a change of `args` is a rolling update in place.
    p.publish = "ingress";
    let service = p.service();
    p.write_with(ROLLING, 1, "v1", SMALL);
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || served(&c, &service)
            == ["version=v1"]),
        "v1 serves: {:?}",
        served(&c, &service)
    );

    p.write_script(
        ROLLING,
        1,
        "echo version=v2 > /www/index.html; (httpd -f -p 8080 -h /www &); sleep 3; exit 3",
        SMALL,
    );
    let began = std::time::Instant::now();
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    let took = began.elapsed();
    eprintln!("a task failing inside Swarm's window: apply exited {code} after {took:.1?}");
    assert_eq!(code, 4, "the update failed inside Swarm's window: {out}");
    assert!(
        wait_until(Duration::from_secs(60), || {
            let tasks = c.tasks(&service);
            running_version(&tasks, "v1").1 == 1
                && !tasks.iter().any(|t| t.runs() && t.version("v2"))
        }),
        "v1 runs again, alone: {:#?}",
        c.tasks(&service)
    );
    assert!(
        wait_until(Duration::from_secs(30), || served(&c, &service)
            == ["version=v1"]),
        "v1 serves again: {:?}",
        served(&c, &service)
    );
    let (code, out) = p.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(code, 2, "v2 is still to be applied: {out}");
}

/// Starts node2 again when dropped and waits until both nodes are ready, so
/// that the cluster is whole for the next test even when this one fails.
struct Restart<'a>(&'a Cluster);

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.try_script(&["start", "2"]) {
            eprintln!("{e}");
        }
        let ready = self.0.wait_ready(Duration::from_secs(120));
        // A second panic while the test unwinds would abort the whole
        // binary: then the failure is only told.
        if !ready && std::thread::panicking() {
            eprintln!("node2 is not back: {:?}", self.0.nodes());
        } else {
            assert!(ready, "node2 is back: {:?}", self.0.nodes());
        }
    }
}

/// Node2's engine stops while a rolling update is under way (the engine
/// shows the update begun and a task of the new spec created): the
/// verdict of `apply` is true to what runs. Either it converged on node1
/// (exit 0: every task runs the new spec there) or it failed and rolled
/// back (exit 4: every task runs the previous spec there); `status` counts
/// what runs and `plan --refresh` agrees with the verdict. The gate waits
/// for Swarm to finish the update, which it may not do while a node it
/// placed a new task on is lost: the gate then runs out of time and the
/// change rolls back. Once node2 is back the verdict's version still runs
/// (Swarm does not roll back an update that `apply` reported finished).
#[test]
fn a_node_lost_during_a_rolling_update_gets_a_true_verdict() {
    let test = "a_node_lost_during_a_rolling_update_gets_a_true_verdict";
    let Some(c) = cluster(test) else { return };
    let mut p = Project::new(&c, "nodes-midloss");
    p.publish = "ingress";
    let service = p.service();
    deploy_v1_over_both_nodes(&c, &p, ROLLING, 4);

    p.write_with(ROLLING, 4, "v2", SMALL);
    let restart = Restart(&c);
    let began = std::time::Instant::now();
    let (code, out) = std::thread::scope(|s| {
        let apply = s.spawn(|| p.run(&["apply", "--auto-approve"]));
        // Mid-flight: the update has begun and not finished (each of the
        // four tasks is watched for 5 s before the next is updated).
        let begun = wait_until(Duration::from_secs(60), || {
            c.inspect(&service, "{{.UpdateStatus.State}}") == "updating"
                && c.tasks(&service).iter().any(|t| t.version("v2"))
        });
        assert!(begun, "the update begins: {:#?}", c.tasks(&service));
        let new_running = running_version(&c.tasks(&service), "v2").1;
        assert!(
            new_running < 4,
            "still under way: {new_running} new tasks run"
        );
        let at = began.elapsed();
        c.script(&["stop", "2"]);
        let done = apply.join().unwrap();
        eprintln!(
            "node2 stopped {at:.1?} into the apply, {new_running} of 4 new tasks running; apply exited {} after {:.1?}",
            done.0,
            began.elapsed()
        );
        done
    });
    let (version, other) = match code {
        0 => ("v2", "v1"),
        4 => ("v1", "v2"),
        _ => panic!("the verdict is a success or a rollback: exit {code}: {out}"),
    };
    // While node2 is lost, Swarm may run one task more than the replicas:
    // a slot whose task on the lost node it cannot see stop gets a second
    // task on node1. What serves is still one version, on node1 alone.
    assert!(
        wait_until(Duration::from_secs(120), || {
            let tasks = c.tasks(&service);
            running_version(&tasks, version).1 >= 4
                && !tasks.iter().any(|t| t.runs() && t.version(other))
                && tasks
                    .iter()
                    .filter(|t| t.runs())
                    .all(|t| t.node == "deploy-code-node1")
        }),
        "exit {code}: four {version} tasks run on node1: {:#?}\n{out}",
        c.tasks(&service)
    );
    let (code_s, status) = p.run(&["status", "--format", "json"]);
    assert_eq!(code_s, 0, "{status}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let i = &v["services"][0]["instances"][0];
    assert_eq!(i["state"], "running", "{status}");
    assert!(
        i["tasks"]["running"].as_u64().is_some_and(|n| n >= 4),
        "{status}"
    );
    let (code_p, plan) = p.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(
        code_p,
        if code == 0 { 0 } else { 2 },
        "exit {code} then plan: {plan}"
    );
    drop(restart);
    // Node2 takes tasks again: a rebalance is Swarm's choice, but the
    // cluster is whole and the service still runs four tasks.
    assert!(
        wait_until(Duration::from_secs(60), || running_version(
            &c.tasks(&service),
            version
        )
        .1 == 4),
        "{:#?}",
        c.tasks(&service)
    );
}

/// `health_check.command` of a service whose two tasks run one per node:
/// `ON_NODE` is the node's host name (a Swarm template in the task's
/// environment), and the check passes only where it names `node`.
fn node_check(node: &str) -> String {
    format!(
        "{SMALL}    env:\n      ON_NODE: \"{{% raw %}}{{{{.Node.Hostname}}}}{{% endraw %}}\"\n    health_check:\n      command: [/bin/busybox, sh, -c, \"env | grep -qx ON_NODE={node}\"]\n      interval_seconds: 1\n      timeout_seconds: 5\n      retries: 2\n"
    )
}

/// A command check runs on the node of each task (Swarm's container health
/// check, run by that node's engine): a service of two tasks, one per node,
/// whose check passes on both passes its gate; Swarm reports each task
/// running, the check is in the service's spec, and `status` shows the
/// service healthy from both nodes.
#[test]
fn a_command_check_passes_on_both_nodes() {
    let test = "a_command_check_passes_on_both_nodes";
    let Some(c) = cluster(test) else { return };
    let p = Project::new(&c, "nodes-cmd-ok");
    let service = p.service();
    let check = format!(
        "{SMALL}    health_check:\n      command: [/bin/busybox, \"true\"]\n      interval_seconds: 1\n      timeout_seconds: 5\n      retries: 2\n"
    );
    p.write(2, "v1", &check);
    let began = std::time::Instant::now();
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "command check passing on both nodes: apply {:.1?}",
        began.elapsed()
    );
    assert_eq!(
        running_version(&c.tasks(&service), "v1"),
        (both_nodes(), 2),
        "one healthy task per node when the gate passed: {:#?}",
        c.tasks(&service)
    );
    assert_eq!(
        c.inspect(
            &service,
            "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck.Test}} {{.Spec.TaskTemplate.ContainerSpec.Healthcheck.Retries}}"
        ),
        "[\"CMD\",\"/bin/busybox\",\"true\"] 2"
    );
    let (code, out) = p.run(&["status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let health = &v["services"][0]["health"];
    assert_eq!(health["healthy"], true, "{out}");
    let detail = health["detail"].as_str().unwrap_or_default();
    for node in both_nodes() {
        assert!(detail.contains(&node), "{out}");
    }
    let (code, out) = p.run(&["health"]);
    assert_eq!(code, 0, "{out}");

    // A change to a check that passes on node1 only: the task on node2
    // never turns healthy, Swarm fails it, the change is rolled back and the
    // previous service is healthy on both nodes again.
    p.write(2, "v1", &node_check("deploy-code-node1"));
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(
        code, 4,
        "the change fails its gate and is rolled back: {out}"
    );
    assert!(out.contains("unhealthy container"), "{out}");
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (code, out) = p.run(&["status", "--format", "json"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            code == 0
                && v["services"][0]["health"]["healthy"] == true
                && v["services"][0]["instances"][0]["tasks"]["running"] == 2
        }),
        "healthy again: {}",
        p.run(&["status", "--format", "json"]).1
    );
}

/// A check that passes on node1's task and fails on node2's fails the gate,
/// however long node1's passes: Swarm fails node2's task (`unhealthy
/// container`), `apply` exits 4 and rolls the new service back (it is
/// removed).
#[test]
fn a_command_check_failing_on_node2_only_fails_the_gate() {
    let test = "a_command_check_failing_on_node2_only_fails_the_gate";
    let Some(c) = cluster(test) else { return };
    let p = Project::new(&c, "nodes-cmd-bad");
    let service = p.service();
    p.write(2, "v1", &node_check("deploy-code-node1"));
    let began = std::time::Instant::now();
    let ((code, out), seen) = watching(&c, &service, || p.run(&["apply", "--auto-approve"]));
    assert_eq!(code, 4, "failed and rolled back: {out}");
    eprintln!(
        "command check failing on node2 only: apply exit 4 after {:.1?}",
        began.elapsed()
    );
    assert!(out.contains("unhealthy container"), "{out}");
    assert!(
        seen.iter()
            .flatten()
            .any(|t| t.node == "deploy-code-node1" && t.runs()),
        "node1's task passed its check and ran: {:#?}",
        seen.last()
    );
    // Swarm fails node2's task and deploy-code removes the service within
    // milliseconds, often too fast for the task list to show it failed: then
    // the gate's evidence names node2's task, which never passed its check.
    assert!(
        seen.iter()
            .flatten()
            .any(|t| t.node == "deploy-code-node2" && t.state == "failed")
            || out.contains("on deploy-code-node2: its health check has not passed yet"),
        "node2's task failed its check: {out}\n{:#?}",
        seen.last()
    );
    assert!(
        seen.iter()
            .flatten()
            .all(|t| !(t.node == "deploy-code-node2" && t.runs())),
        "node2's task never ran: {:#?}",
        seen.last()
    );
    assert!(
        wait_until(Duration::from_secs(30), || c
            .docker(&[
                "service",
                "ls",
                "-q",
                "--filter",
                &format!("name={service}")
            ])
            .trim()
            .is_empty()),
        "the new service was removed"
    );
    let (code, out) = p.run(&["status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["services"].as_array().is_none_or(|s| s.is_empty()),
        "nothing recorded: {out}"
    );

    // The same check passing on node2 only fails the gate as well.
    p.write(2, "v1", &node_check("deploy-code-node2"));
    let (code, out) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 4, "failed and rolled back: {out}");
    assert!(out.contains("unhealthy container"), "{out}");
}
