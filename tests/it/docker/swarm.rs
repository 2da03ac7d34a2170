use std::time::Duration;

use deploy_code::backends::swarm::{self, SwarmBackend};
use deploy_code::backends::{Backend, Liveness};
use deploy_code::model::{BackendKind, Text};
use deploy_code::state::Handle;

use super::common::*;

async fn swarm_engine(test: &str) -> Option<SwarmBackend> {
    engine(test).await?;
    if !swarm_active(test) {
        return None;
    }
    // Without IPVS in the kernel the routing mesh cannot forward; publish
    // on the node itself then.
    let mode = if std::path::Path::new("/proc/sys/net/ipv4/vs").exists() {
        swarm::PublishMode::Ingress
    } else {
        swarm::PublishMode::Host
    };
    Some(
        SwarmBackend::connect()
            .await
            .unwrap()
            .with_publish_mode(mode),
    )
}

fn swarm_web(name: &str) -> deploy_code::model::ServiceSpec {
    let mut s = web(name);
    s.backend = BackendKind::Swarm;
    s
}

async fn converged(b: &SwarmBackend, h: &Handle, replicas: u32, limit: Duration) -> bool {
    eventually(limit, || async {
        b.task_counts(h)
            .await
            .is_some_and(|c| c.replicas == replicas && c.running == replicas)
            && b.native_health(h).await == Some(true)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swarm_service_scales_from_one_to_three_in_place() {
    let Some(b) = swarm_engine("a_swarm_service_scales_from_one_to_three_in_place").await else {
        return;
    };
    let project = project("scale");
    let _guard = Cleanup::new(&project);
    let ctx = ctx(&project);
    let spec = swarm_web("web");
    let h = b.start(&spec, &ctx).await.unwrap();
    let Handle::SwarmService { name, .. } = &h[0] else {
        panic!("{h:?}")
    };
    assert_eq!(name, &format!("{project}_web"));
    assert!(
        converged(&b, &h[0], 1, Duration::from_secs(60)).await,
        "{:?}",
        b.task_counts(&h[0]).await
    );
    assert_eq!(b.liveness(&h[0]).await, Liveness::Running);

    // HTTP health through the published port (routing mesh).
    let (host, port) = b.probe_address(&h[0], 8080).await;
    if b.publish_mode() == swarm::PublishMode::Ingress {
        assert!((42000..=48999).contains(&port));
    }
    let ok = eventually(Duration::from_secs(30), || {
        let host = host.clone();
        async move { http_status(&host, port, "/health") == Some(200) }
    })
    .await;
    assert!(ok, "http://{host}:{port}/health");
    let exec = b
        .exec_probe(
            &h[0],
            &["/bin/busybox".into(), "true".into()],
            Duration::from_secs(5),
        )
        .await;
    assert!(exec.healthy, "{exec:?}");

    // Scale 1 -> 3 in place: same service id, same published port.
    assert!(b.updatable_in_place().contains(&"replicas"));
    let mut three = spec.clone();
    three.replicas = 3;
    let h2 = b.update(&three, &h, &ctx).await.unwrap();
    assert_eq!(h2, h, "updated in place");
    assert!(
        converged(&b, &h2[0], 3, Duration::from_secs(60)).await,
        "{:?}",
        b.task_counts(&h2[0]).await
    );
    if b.publish_mode() == swarm::PublishMode::Ingress {
        assert_eq!(b.probe_address(&h2[0], 8080).await.1, port);
    }
    // Every replica answers on the address the gate probes.
    let (host, port) = b.probe_address(&h2[0], 8080).await;
    assert_eq!(http_status(&host, port, "/health"), Some(200));

    let found = b.discover(&project).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].spec_hash.as_deref(),
        Some(three.spec_hash().as_str())
    );
    assert_eq!(found[0].liveness, Liveness::Running);

    let inv = swarm::nodes_inventory().await.unwrap();
    assert!(!inv.hosts.is_empty());
    assert!(
        inv.hosts[0].cpu_cores >= 1.0 && inv.hosts[0].memory_mb > 0,
        "{inv:?}"
    );

    b.stop(&h2, Duration::from_secs(2)).await.unwrap();
    assert_eq!(b.liveness(&h2[0]).await, Liveness::Missing);
    assert!(b.discover(&project).await.unwrap().is_empty());
    assert!(b.remove_network_if_empty(&project).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_swarm_update_is_rolled_back_to_the_previous_spec() {
    let Some(b) = swarm_engine("a_failing_swarm_update_is_rolled_back_to_the_previous_spec").await
    else {
        return;
    };
    let project = project("rollback");
    let _guard = Cleanup::new(&project);
    let ctx = ctx(&project);
    let good = swarm_web("api");
    let h = b.start(&good, &ctx).await.unwrap();
    assert!(converged(&b, &h[0], 1, Duration::from_secs(60)).await);

    // The new spec's tasks exit at once.
    let mut bad = good.clone();
    bad.args = ["sh", "-c", "echo cannot bind; exit 7"]
        .into_iter()
        .map(Text::plain)
        .collect();
    b.update(&bad, &h, &ctx).await.unwrap();
    // The gate sees the new spec's tasks fail (exit 7) while the Swarm's own
    // failure action may already be putting the old spec back.
    let seen = std::sync::Mutex::new(None);
    let failed = eventually(Duration::from_secs(60), || async {
        let l = b.liveness(&h[0]).await;
        if let Liveness::Exited(code) = l {
            *seen.lock().unwrap() = Some(code);
            return true;
        }
        false
    })
    .await;
    assert!(failed, "{:?}", b.task_counts(&h[0]).await);
    assert_eq!(
        *seen.lock().unwrap(),
        Some(Some(7)),
        "the failing tasks' exit code"
    );
    assert_eq!(b.native_health(&h[0]).await, Some(false));
    let logs = b.logs(&h[0], 50).await;
    assert!(logs.iter().any(|l| l.contains("cannot bind")), "{logs:?}");

    // Rollback: re-apply the previous spec.
    let back = b.update(&good, &h, &ctx).await.unwrap();
    assert_eq!(back, h);
    assert!(
        converged(&b, &h[0], 1, Duration::from_secs(60)).await,
        "{:?}",
        b.task_counts(&h[0]).await
    );
    let counts = b.task_counts(&h[0]).await.unwrap();
    assert_eq!(counts.spec_hash, Some(good.spec_hash()));
    let (host, port) = b.probe_address(&h[0], 8080).await;
    let ok = eventually(Duration::from_secs(30), || {
        let host = host.clone();
        async move { http_status(&host, port, "/health") == Some(200) }
    })
    .await;
    assert!(ok);
    b.stop(&h, Duration::from_secs(2)).await.unwrap();
}

/// A Swarm deployment driven through the CLI. It publishes in host mode:
/// the routing mesh needs IPVS, and host mode is where a fixed host port
/// binds once per node.
struct SwarmCli {
    dir: tempfile::TempDir,
    project: String,
}

impl SwarmCli {
    fn new(test: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            project: project(test),
        }
    }

    /// `web`: busybox httpd with `replicas` replicas behind a command check,
    /// its port 8080 published on `host_port` (else on a port the engine picks).
    fn write(&self, replicas: u32, host_port: Option<u16>) {
        self.write_with(replicas, host_port, "", "");
    }

    /// As `write`, with `deployment` lines (indented by two) and
    /// `health_check` lines (indented by six) added.
    fn write_with(&self, replicas: u32, host_port: Option<u16>, deployment: &str, health: &str) {
        let host = host_port.map_or_else(String::new, |p| format!(", host_port: {p}"));
        std::fs::write(
            self.dir.path().join("deploy-code.yaml"),
            format!(
                "version: \"1.0.0\"\nproject: {}\nenvironment: test\ninfrastructure:\n  orchestrator: Swarm\ndeployment:\n  timeout_seconds: 60\n  stop_grace_seconds: 1\n{deployment}services:\n  web:\n    image: {IMAGE}\n    args: [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n    replicas: {replicas}\n    resources: {{cpu_cores: 0.05, memory_mb: 16}}\n    ports: [{{container_port: 8080{host}}}]\n    health_check:\n      command: [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/health\"]\n      interval_seconds: 1\n{health}",
                self.project
            ),
        )
        .unwrap();
    }

    /// The engine's `UpdateConfig` of the project's `web`, as
    /// `docker service inspect` shows it.
    fn update_config(&self) -> serde_json::Value {
        let service = swarm::service_name(&self.project, "web");
        let out = self.docker(&[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.UpdateConfig}}",
            &service,
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_deploy-code"))
            .current_dir(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("deploy-code.yaml"))
            .args(args)
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

    fn docker(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The ids of the project's Swarm services.
    fn services(&self) -> String {
        let label = format!("label=io.deploy-code.project={}", self.project);
        self.docker(&["service", "ls", "-q", "--filter", &label])
    }

    /// Whether the engine lists the project network.
    fn network_listed(&self) -> bool {
        let name = swarm::overlay_name(&self.project);
        self.docker(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .any(|n| n == name)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn more_replicas_than_nodes_for_one_host_port_are_refused_and_fail_at_once_when_forced() {
    let test =
        "more_replicas_than_nodes_for_one_host_port_are_refused_and_fail_at_once_when_forced";
    if swarm_engine(test).await.is_none() {
        return;
    }
    let d = SwarmCli::new("swport");
    let _guard = Cleanup::new(&d.project);
    let nodes = d.docker(&["node", "ls", "-q"]).lines().count() as u32;
    let port = free_port();
    d.write(nodes + 1, Some(port));

    let expected = format!(
        "port {port}: {} replicas of `web` need it, {nodes} node{} can bind it",
        nodes + 1,
        if nodes == 1 { "" } else { "s" }
    );
    let (code, out) = d.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(&expected), "{out}");
    let (code, out) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 3, "{out}");
    assert!(d.services().is_empty(), "nothing started");

    // Forced: the task that cannot be placed fails the gate at once (not
    // after the 60 s timeout) with the scheduler's words, and rolls back.
    let (code, out) = d.run(&["apply", "--auto-approve", "--force"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("pending") && out.contains("no suitable node"),
        "{out}"
    );
    assert!(d.services().is_empty(), "rolled back: {}", d.services());
}

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_tasks_and_a_service_scaled_down_behind_the_tools_back_is_drift() {
    let test = "status_counts_tasks_and_a_service_scaled_down_behind_the_tools_back_is_drift";
    if swarm_engine(test).await.is_none() {
        return;
    }
    let d = SwarmCli::new("swdrift");
    let _guard = Cleanup::new(&d.project);
    d.write(2, None);
    let (code, out) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = d.run(&["status"]);
    assert!(out.contains("2/2 service"), "{out}");

    let service = swarm::service_name(&d.project, "web");
    d.docker(&["service", "scale", "--detach", &format!("{service}=1")]);
    let status = || d.run(&["status", "--format", "json"]).1;
    let short = eventually(Duration::from_secs(30), || async {
        let v: serde_json::Value = serde_json::from_str(&status()).unwrap_or_default();
        let i = &v["services"][0]["instances"][0];
        i["tasks"] == serde_json::json!({"running": 1, "replicas": 2}) && i["state"] == "degraded"
    })
    .await;
    assert!(short, "{}", status());
    let (_, out) = d.run(&["status"]);
    assert!(out.contains("1/2 service"), "{out}");

    let (code, out) = d.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("web degraded"), "{out}");
    assert!(out.contains("1/2 tasks running"), "{out}");
    assert!(out.contains("repairs drift"), "{out}");

    let (code, out) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = d.run(&["status"]);
    assert!(out.contains("2/2 service"), "{out}");
    let (code, out) = d.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_apply_destroy_rounds_in_a_row_leave_nothing_behind() {
    let test = "three_apply_destroy_rounds_in_a_row_leave_nothing_behind";
    if swarm_engine(test).await.is_none() {
        return;
    }
    let d = SwarmCli::new("swrounds");
    let _guard = Cleanup::new(&d.project);
    d.write(2, None);
    for round in 1..=3 {
        let (code, out) = d.run(&["apply", "--auto-approve"]);
        assert_eq!(code, 0, "round {round}: {out}");
        let (code, out) = d.run(&["destroy", "--auto-approve"]);
        assert_eq!(code, 0, "round {round}: {out}");
        assert!(d.services().is_empty(), "round {round}: {}", d.services());
        assert!(!d.network_listed(), "round {round}: the network is left");
    }
}

/// The strategy sets the Swarm service's update policy on the engine: a
/// BlueGreen service updates all its tasks at once, start-first; changing to
/// RollingUpdate with `max_surge: 2` and a 2 s hold updates the service in
/// place to two tasks at a time, start-first, watched 2 s each; with
/// `max_surge: 0` it stops first, `max_unavailable` at a time.
#[tokio::test(flavor = "multi_thread")]
async fn the_strategy_sets_the_swarm_update_config_on_the_engine() {
    let test = "the_strategy_sets_the_swarm_update_config_on_the_engine";
    if swarm_engine(test).await.is_none() {
        return;
    }
    let d = SwarmCli::new("swupdcfg");
    let _guard = Cleanup::new(&d.project);
    let id = |d: &SwarmCli| {
        d.docker(&[
            "service",
            "inspect",
            "--format",
            "{{.ID}}",
            &swarm::service_name(&d.project, "web"),
        ])
    };

    d.write_with(2, None, "  strategy: BlueGreen\n", "");
    let (code, out) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let u = d.update_config();
    assert_eq!(u["Parallelism"], 0, "{u}");
    assert_eq!(u["Order"], "start-first", "{u}");
    assert_eq!(u["FailureAction"], "rollback", "{u}");
    assert_eq!(u["Monitor"], 5_000_000_000_i64, "{u}");
    let first = id(&d);

    d.write_with(
        2,
        None,
        "  strategy: RollingUpdate\n  rolling: {max_surge: 2}\n",
        "      min_healthy_seconds: 2\n",
    );
    let (code, out) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("update"), "updated in place: {out}");
    let u = d.update_config();
    assert_eq!(u["Parallelism"], 2, "{u}");
    assert_eq!(u["Order"], "start-first", "{u}");
    assert_eq!(u["Monitor"], 2_000_000_000_i64, "{u}");
    assert_eq!(id(&d), first, "the same Swarm service, updated in place");

    d.write_with(
        2,
        None,
        "  strategy: RollingUpdate\n  rolling: {max_surge: 0, max_unavailable: 1}\n",
        "",
    );
    let (code, out) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let u = d.update_config();
    assert_eq!(u["Parallelism"], 1, "{u}");
    assert_eq!(u["Order"], "stop-first", "{u}");
    // Every replica answers after the stop-first update.
    let (_, out) = d.run(&["status"]);
    assert!(out.contains("2/2 service"), "{out}");

    let (code, out) = d.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(d.services().is_empty(), "{}", d.services());
}
