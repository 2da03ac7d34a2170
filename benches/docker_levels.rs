//! Time until every container of a 4-level dependency graph (5 busybox httpd
//! containers per level, each with an HTTP health check) is healthy, on the
//! local Docker engine, measured four ways:
//!
//! - `floor`: each level's containers started in parallel with the docker
//!   CLI, then polled over HTTP every 20 ms, level after level (on the default
//!   bridge, and again on a user-defined network as the backend uses);
//! - `deploy-code apply`: the binary on a generated config of the same graph
//!   (its whole run: config, plan, state, gates), on its project network and
//!   again on Docker's default bridge (`infrastructure.network.name: bridge`),
//!   the floor's network;
//! - `backend`: the same through the Docker backend (`Backend::start` for a
//!   level's services at once, `probe_address` + HTTP polled every 20 ms);
//! - `compose-1s`: `docker-compose up -d` on a generated compose file whose
//!   health checks run every second, `depends_on: condition: service_healthy`
//!   between levels, until Docker reports every container healthy;
//! - `compose-default` (only with `--compose-defaults`, about two minutes):
//!   the same with Compose's default health-check timing (30 s).
//!
//! Run: `cargo bench --bench docker_levels -- [--runs N] [--compose-defaults]`
//! (needs dockerd, /bin/busybox from busybox-static and Debian's docker-compose).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use deploy_code::backends::docker::DockerBackend;
use deploy_code::backends::{Backend, StartContext};
use deploy_code::model::{
    BackendKind, NetworkSettings, PortSpec, Protocol, Resources, RestartPolicy, ServiceName,
    ServiceSpec, Text, Workload,
};

/// The integration tests' shared support (free ports, the busybox image).
#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::free_port;

use support::image::IMAGE;
const LEVELS: usize = 4;
const PER_LEVEL: usize = 5;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command runs");
    if !out.status.success() {
        panic!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn http_ok(host: &str, port: u16) -> bool {
    let Ok(addr) = format!("{host}:{port}").parse() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if write!(s, "GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn poll_all(addrs: &[(String, u16)]) {
    let mut pending: Vec<_> = addrs.to_vec();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "never healthy: {pending:?}");
        pending.retain(|(h, p)| !http_ok(h, *p));
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn remove_project(label: &str) {
    let ids = sh(&["docker", "ps", "-aq", "--filter", &format!("label={label}")]);
    let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
    if !ids.is_empty() {
        let mut args = vec!["docker", "rm", "-f"];
        args.extend(ids);
        sh(&args);
    }
}

/// Level after level: `docker run -d` for the level's containers at once
/// (one thread each), then HTTP polls every 20 ms.
/// With `network`, the containers join a user-defined bridge network created
/// first (as the backend's and Compose's do); otherwise the default bridge.
fn floor(run: usize, network: bool) -> Duration {
    let label = format!("bench-floor-{}-{run}-{network}", std::process::id());
    let start = Instant::now();
    let net = if network {
        sh(&["docker", "network", "create", "--label", &label, &label]);
        label.clone()
    } else {
        "bridge".to_owned()
    };
    for level in 0..LEVELS {
        let addrs: Vec<(String, u16)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..PER_LEVEL)
                .map(|i| {
                    let label = label.clone();
                    let net = net.clone();
                    s.spawn(move || {
                        let port = free_port();
                        sh(&[
                            "docker",
                            "run",
                            "-d",
                            "--name",
                            &format!("{label}-l{level}-{i}"),
                            "--label",
                            &label,
                            "--network",
                            &net,
                            "-p",
                            &format!("127.0.0.1:{port}:8080"),
                            IMAGE,
                            "httpd",
                            "-f",
                            "-p",
                            "8080",
                            "-h",
                            "/www",
                        ]);
                        ("127.0.0.1".to_owned(), port)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        poll_all(&addrs);
    }
    let took = start.elapsed();
    remove_project(&label);
    if network {
        // The endpoints of removed containers go away asynchronously.
        let removed = (0..300).any(|_| {
            let ok = Command::new("docker")
                .args(["network", "rm", &label])
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        if !removed {
            eprintln!("warning: could not remove the network {label}; `docker network rm {label}`");
        }
    }
    took
}

fn spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: ServiceName::parse(name).unwrap(),
        backend: BackendKind::Docker,
        workload: Workload::Service,
        replicas: 1,
        image: Some(IMAGE.into()),
        command: None,
        args: ["httpd", "-f", "-p", "8080", "-h", "/www"]
            .into_iter()
            .map(Text::plain)
            .collect(),
        working_dir: None,
        env: BTreeMap::new(),
        dependencies: vec![],
        resources: Resources::default(),
        health_check: None,
        ports: vec![PortSpec {
            container_port: 8080,
            host_port: None,
            host_ip: Some("127.0.0.1".into()),
            protocol: Protocol::Tcp,
        }],
        volumes: vec![],
        restart: RestartPolicy::No,
        restart_settings: None,
        labels: BTreeMap::new(),
        network: None,
        behind_switch: false,
        switch: None,
        swarm_update: None,
        inherit_env: Vec::new(),
    }
}

/// The Docker backend: a level's services started at once, then polled.
fn backend(rt: &tokio::runtime::Runtime, b: &DockerBackend, run: usize) -> Duration {
    let project = format!("bench-be-{}-{run}", std::process::id());
    let ctx = StartContext {
        project: project.clone(),
        lineage: "bench".into(),
        revision: 1,
        log_dir: PathBuf::from("/tmp"),
        data_dir: PathBuf::from("/tmp"),
        base_dir: PathBuf::from("/tmp"),
        network: NetworkSettings {
            port_range: (43000, 47999),
            ..Default::default()
        },
        gpus: vec![],
        only_replicas: None,
        stop_grace: std::time::Duration::from_secs(10),
    };
    let start = Instant::now();
    rt.block_on(async {
        for level in 0..LEVELS {
            let specs: Vec<_> = (0..PER_LEVEL)
                .map(|i| spec(&format!("l{level}-s{i}")))
                .collect();
            let started =
                futures_util::future::join_all(specs.iter().map(|s| b.start(s, &ctx))).await;
            let mut addrs = Vec::new();
            for h in started {
                let h = h.expect("start");
                addrs.push(b.probe_address(&h[0], 8080).await);
            }
            tokio::task::spawn_blocking(move || poll_all(&addrs))
                .await
                .unwrap();
        }
    });
    let took = start.elapsed();
    remove_project(&format!("io.deploy-code.project={project}"));
    let _ = rt.block_on(b.remove_network_if_empty(&project));
    took
}

/// `deploy-code apply --auto-approve` on a generated config with the same
/// graph (each level depends on every service of the level before), HTTP
/// health checks on `/health`.
///
/// The services keep the default requests (0.5 cores, 256 MB each, which the
/// Docker backend applies as limits), and feasibility is checked against a
/// declared 16-core host: 20 × 0.5 cores do not fit this machine's probe.
/// Squeezing the requests down to fit instead (0.05 cores) would throttle
/// every container's own start-up under its CPU quota (about 1.5 s more here).
fn deploy_code_apply(dir: &Path, run: usize, network: Option<&str>) -> Duration {
    let project = format!(
        "bench-dc-{}-{run}{}",
        std::process::id(),
        network.map_or(String::new(), |n| format!("-{n}"))
    );
    let name = network.map_or(String::new(), |n| format!("    name: {n}\n"));
    let work = dir.join(&project);
    std::fs::create_dir_all(&work).unwrap();
    let mut y = format!(
        "version: \"1.0.0\"\nproject: {project}\nenvironment: bench\ninfrastructure:\n  container_runtime: Docker\n  network:\n{name}    port_range:\n      start: 43000\n      end: 47999\ndeployment:\n  max_parallel: {PER_LEVEL}\n  timeout_seconds: 300\n  stop_grace_seconds: 1\nservices:\n"
    );
    for level in 0..LEVELS {
        for i in 0..PER_LEVEL {
            y.push_str(&format!(
                "  l{level}-s{i}:\n    image: {IMAGE}\n    args: [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n    ports:\n      - container_port: 8080\n    health_check:\n      endpoint: /health\n      interval_seconds: 1\n      timeout_seconds: 1\n      retries: 3\n"
            ));
            if level > 0 {
                let deps: Vec<String> = (0..PER_LEVEL)
                    .map(|j| format!("l{}-s{j}", level - 1))
                    .collect();
                y.push_str(&format!("    dependencies: [{}]\n", deps.join(", ")));
            }
        }
    }
    let config = work.join("deploy-code.yaml");
    std::fs::write(&config, y).unwrap();
    let inventory = work.join("inventory.yaml");
    std::fs::write(
        &inventory,
        "name: bench\ncpu_cores: 16.0\nmemory_mb: 32768\nstorage_gb: 100\ngpus: []\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_deploy-code");
    let start = Instant::now();
    let out = Command::new(bin)
        .current_dir(&work)
        .args(["-c", config.to_str().unwrap(), "apply", "--auto-approve"])
        .arg("--inventory")
        .arg(&inventory)
        .env_remove("DEPLOY_CODE_STATE")
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "deploy-code apply failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new(bin)
        .current_dir(&work)
        .args(["-c", config.to_str().unwrap(), "destroy", "--auto-approve"])
        .output();
    remove_project(&format!("io.deploy-code.project={project}"));
    took
}

fn compose_file(interval: Option<&str>) -> String {
    let mut y = String::from("services:\n");
    for level in 0..LEVELS {
        for i in 0..PER_LEVEL {
            y.push_str(&format!(
                "  l{level}-s{i}:\n    image: {IMAGE}\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n    healthcheck:\n      test: [\"CMD\", \"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/health\"]\n"
            ));
            if let Some(iv) = interval {
                y.push_str(&format!("      interval: {iv}\n      timeout: 1s\n"));
            }
            if level > 0 {
                y.push_str("    depends_on:\n");
                for j in 0..PER_LEVEL {
                    y.push_str(&format!(
                        "      l{}-s{j}:\n        condition: service_healthy\n",
                        level - 1
                    ));
                }
            }
        }
    }
    y
}

/// `docker-compose up -d`, then until Docker reports every container healthy.
fn compose(dir: &Path, interval: Option<&str>, run: usize) -> Duration {
    let name = format!("benchc{}x{run}", std::process::id());
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, compose_file(interval)).unwrap();
    let f = file.to_str().unwrap();
    let start = Instant::now();
    sh(&[
        "docker-compose",
        "-p",
        &name,
        "-f",
        f,
        "up",
        "-d",
        "--quiet-pull",
    ]);
    let label = format!("com.docker.compose.project={name}");
    loop {
        let ids = sh(&["docker", "ps", "-aq", "--filter", &format!("label={label}")]);
        let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
        let mut args = vec!["docker", "inspect", "-f", "{{.State.Health.Status}}"];
        args.extend(ids.iter().copied());
        let statuses = sh(&args);
        if ids.len() == LEVELS * PER_LEVEL && statuses.lines().all(|s| s == "healthy") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "compose never healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    sh(&["docker-compose", "-p", &name, "-f", f, "down", "-t", "1"]);
    took
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(3usize);
    let compose_defaults = args.iter().any(|a| a == "--compose-defaults");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = match rt.block_on(DockerBackend::connect()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: the Docker engine is not reachable ({e})");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    support::image::build();
    println!(
        "{LEVELS} levels x {PER_LEVEL} containers, HTTP health; {runs} run(s) each, median shown"
    );
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    // Interleaved, so that a change of load on the machine hits every way alike.
    let (mut fs, mut fns, mut bes, mut dcs, mut dbs, mut cs) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for r in 0..runs {
        fs.push(floor(r, false));
        fns.push(floor(r, true));
        bes.push(backend(&rt, &b, r));
        dcs.push(deploy_code_apply(dir.path(), r, None));
        dbs.push(deploy_code_apply(dir.path(), r, Some("bridge")));
        cs.push(compose(dir.path(), Some("1s"), r));
        println!(
            "run {r}: floor {:.2} s, floor+network {:.2} s, backend {:.2} s, deploy-code apply {:.2} s, on the default bridge {:.2} s, compose-1s {:.2} s",
            fs[r].as_secs_f64(),
            fns[r].as_secs_f64(),
            bes[r].as_secs_f64(),
            dcs[r].as_secs_f64(),
            dbs[r].as_secs_f64(),
            cs[r].as_secs_f64()
        );
    }
    let mut results: Vec<(&str, Duration)> = Vec::new();
    let f = median(fs);
    results.push(("floor (docker CLI, 20 ms polls)", f));
    results.push(("floor on a project network", median(fns)));
    results.push(("Docker backend", median(bes)));
    results.push(("deploy-code apply (whole command)", median(dcs)));
    results.push(("deploy-code apply, default bridge", median(dbs)));
    results.push(("docker-compose, 1 s health interval", median(cs)));
    if compose_defaults {
        results.push((
            "docker-compose, default health timing",
            compose(dir.path(), None, 0),
        ));
    }
    for (what, d) in &results {
        println!(
            "{what:<40} {:>8.2} s   {:>5.2}x floor",
            d.as_secs_f64(),
            d.as_secs_f64() / f.as_secs_f64()
        );
    }
}
