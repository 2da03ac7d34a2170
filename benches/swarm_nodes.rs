//! Node loss on a real two-node Swarm (`.ci/swarm-nodes.sh up`): a service
//! of 4 replicas is deployed with `deploy-code apply` (spread over both
//! nodes), node2 crashes (SIGKILL to everything in its namespace; or its
//! engine is stopped, `DEPLOY_CODE_SWARM_LOSS=stop`), and the time until every task runs
//! again (on node1) is measured, next to Swarm's own figures: when the
//! manager marks node2 down (its heartbeat period is printed beside), and
//! how long the rescheduling itself takes after that. The time until
//! `deploy-code status` counts every replica running again is measured too.
//!
//! ```text
//! eval "$(.ci/swarm-nodes.sh up)"
//! cargo bench --bench swarm_nodes       # DEPLOY_CODE_SWARM_ROUNDS=3, DEPLOY_CODE_SWARM_LOSS=kill
//! .ci/swarm-nodes.sh down
//! ```
//!
//! Without `DEPLOY_CODE_SWARM_NODES` it prints why and measures nothing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The integration tests' shared support (free ports, the busybox image).
#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

const BIN: &str = env!("CARGO_BIN_EXE_deploy-code");
const REPLICAS: usize = 4;

struct Cluster {
    host: String,
    node2_socket: String,
}

impl Cluster {
    fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .output()
            .expect("docker CLI");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn node_state(&self, name: &str) -> String {
        self.docker(&["node", "inspect", name, "--format", "{{.Status.State}}"])
            .trim()
            .to_owned()
    }

    /// The node of each running task of `service`.
    fn running_on(&self, service: &str) -> Vec<String> {
        self.docker(&[
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
        .collect()
    }

    fn script(&self, args: &[&str]) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/swarm-nodes.sh");
        let ok = Command::new(script)
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "swarm-nodes.sh {args:?}");
    }
}

fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

struct Round {
    stop: Duration,
    down: Option<Duration>,
    all: Option<Duration>,
    status: Option<Duration>,
}

fn main() {
    let Ok(socket) = std::env::var("DEPLOY_CODE_SWARM_NODES") else {
        println!(
            "swarm_nodes: DEPLOY_CODE_SWARM_NODES is not set; run `eval \"$(.ci/swarm-nodes.sh up)\"` first"
        );
        return;
    };
    let cluster = Cluster {
        host: format!("unix://{socket}"),
        node2_socket: socket.replace("node1", "node2"),
    };
    support::image::build();
    let rounds: usize = std::env::var("DEPLOY_CODE_SWARM_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    // `kill` (default): a crash, seen by missed heartbeats; `stop`: the
    // engine shuts down (its tasks stop first).
    let loss = std::env::var("DEPLOY_CODE_SWARM_LOSS").unwrap_or_else(|_| "kill".into());
    assert!(
        loss == "kill" || loss == "stop",
        "DEPLOY_CODE_SWARM_LOSS: kill or stop"
    );
    let heartbeat = cluster
        .docker(&[
            "info",
            "--format",
            "{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}",
        ])
        .trim()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let project = format!("bench-nodes-{}", std::process::id());
    std::fs::write(
        dir.path().join("deploy-code.yaml"),
        format!(
            "version: \"1.0.0\"\nproject: {project}\nenvironment: bench\ninfrastructure:\n  orchestrator: Swarm\ndeployment:\n  timeout_seconds: 120\n  stop_grace_seconds: 1\nservices:\n  web:\n    image: {}\n    args: [httpd, -f, -p, \"8080\", -h, /www]\n    replicas: {REPLICAS}\n    restart: always\n    resources: {{cpu_cores: 0.1, memory_mb: 32}}\n",
            support::image::IMAGE
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .current_dir(dir.path())
            .args(args)
            .env("DOCKER_HOST", &cluster.host)
            .env("DEPLOY_CODE_SWARM_PUBLISH_MODE", "host")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let status_running = || {
        let out = cli(&["status", "--format", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["services"][0]["instances"][0]["tasks"]["running"].as_u64())
            .unwrap_or(0)
    };
    let service = format!("{project}_web");
    let mut results = Vec::new();
    for round in 1..=rounds {
        // Both nodes up, the image on both, the service spread afresh.
        cluster.script(&["start", "2"]);
        wait(Duration::from_secs(120), || {
            cluster.node_state("deploy-code-node2") == "ready"
        })
        .expect("node2 is ready");
        for s in [&socket, &cluster.node2_socket] {
            let mut save = Command::new("docker")
                .args(["save", support::image::IMAGE])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            Command::new("docker")
                .args(["-H", &format!("unix://{s}"), "load", "-q"])
                .stdin(save.stdout.take().unwrap())
                .output()
                .unwrap();
            let _ = save.wait();
        }
        cli(&["destroy", "--auto-approve"]);
        let out = cli(&["apply", "--auto-approve"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait(Duration::from_secs(60), || {
            let on = cluster.running_on(&service);
            on.len() == REPLICAS && on.iter().any(|n| n == "deploy-code-node2")
        })
        .expect("the tasks spread over both nodes");
        let on_node2 = cluster
            .running_on(&service)
            .iter()
            .filter(|n| *n == "deploy-code-node2")
            .count();

        let t0 = Instant::now();
        cluster.script(&[&loss, "2"]);
        let stop = t0.elapsed();
        let mut down = None;
        let mut all = None;
        let mut status = None;
        let limit = Duration::from_secs(180);
        while t0.elapsed() < limit && (down.is_none() || all.is_none() || status.is_none()) {
            if down.is_none() && cluster.node_state("deploy-code-node2") == "down" {
                down = Some(t0.elapsed());
            }
            if all.is_none() {
                let on = cluster.running_on(&service);
                if on.len() == REPLICAS && on.iter().all(|n| n == "deploy-code-node1") {
                    all = Some(t0.elapsed());
                }
            }
            if all.is_some() && status.is_none() && status_running() == REPLICAS as u64 {
                status = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "round {round} ({loss}): {on_node2} of {REPLICAS} tasks on node2; `{loss}` took {:.1} s; node2 down after {}; every task running on node1 after {} (rescheduling {} after down); deploy-code status counts {REPLICAS} running after {}",
            stop.as_secs_f64(),
            secs(down),
            secs(all),
            secs(all.zip(down).map(|(a, d)| a.saturating_sub(d))),
            secs(status),
        );
        results.push(Round {
            stop,
            down,
            all,
            status,
        });
    }
    cli(&["destroy", "--auto-approve"]);
    cluster.script(&["start", "2"]);
    let med = |f: &dyn Fn(&Round) -> Option<Duration>| {
        let mut v: Vec<f64> = results
            .iter()
            .filter_map(f)
            .map(|d| d.as_secs_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2)
            .map_or("-".into(), |m| format!("{m:.1} s"))
    };
    println!(
        "swarm_nodes: {rounds} rounds, median: `{loss}` took {}, node2 down {} (node loss by `{loss}`; Swarm's heartbeat period {heartbeat}), every task running again {}, status agrees {}",
        med(&|r| Some(r.stop)),
        med(&|r| r.down),
        med(&|r| r.all),
        med(&|r| r.status),
    );
}
