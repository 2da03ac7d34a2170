//! Requests against a published port during consecutive updates, per
//! strategy and backend: failed requests and p50/p99 latency, against the
//! steady state of the same service.
//!
//! `cargo bench --bench rollout` (loopback only; it stops by itself).
//! `DEPLOY_CODE_BENCH_UPDATES` (default 20) sets the number of updates,
//! `DEPLOY_CODE_BENCH_RATE` (default 500) the requests per second,
//! `DEPLOY_CODE_BENCH_ONLY` measures only the rows whose label contains it,
//! `DEPLOY_CODE_BENCH_MIN_REQUESTS` (default 10,000) the fewest requests a
//! row counts: when the updates end sooner, the loop goes on at the same
//! rate against the updated service until it has sent that many.
//! `Canary` goes through two short steps (20 % then 60 % of new
//! connections, 1 s each, judged every second). `Hybrid` is the comparison point: the replace stops the old instance
//! first because it holds the port. Containers are measured when a Docker
//! engine answers; `docker-compose up -d` recreating the same container is
//! the outside comparison point, when `docker-compose` is installed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The integration tests' shared support (free ports, the busybox image).
#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::free_port;

use support::image::IMAGE;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn get(port: u16) -> bool {
    let addr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: b\r\n\r\n").is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace().nth(1) == Some("200")
}

/// Requests at a fixed rate until stopped and at least `min` were sent:
/// (latencies of answered ones in µs, failed).
fn request_loop(port: u16, rate: u64, min: u64, stop: Arc<AtomicBool>) -> (Vec<u64>, u64) {
    let period = Duration::from_micros(1_000_000 / rate.max(1));
    let mut next = Instant::now();
    let (mut lat, mut failed) = (Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) || (lat.len() as u64 + failed) < min {
        let began = Instant::now();
        if get(port) {
            lat.push(began.elapsed().as_micros() as u64);
        } else {
            failed += 1;
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    (lat, failed)
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// One measured setting: the strategy, what `deployment` adds to it, and
/// the service's replicas.
#[derive(Clone, Copy)]
struct Setting {
    strategy: &'static str,
    label: &'static str,
    deployment: &'static str,
    replicas: u32,
}

/// Two short steps, judged every second from the switch's counters of the
/// new set: any 5xx share or failed connect above 1 % aborts the update.
const CANARY: &str = ", canary: {steps: [{weight: 20, pause_seconds: 1}, {weight: 60, pause_seconds: 1}], analysis: {interval_seconds: 1, max_error_rate: 0.01, max_failed_connections: 0.01}}";

const SETTINGS: &[Setting] = &[
    Setting {
        strategy: "BlueGreen",
        label: "BlueGreen",
        deployment: "",
        replicas: 1,
    },
    Setting {
        strategy: "RollingUpdate",
        label: "RollingUpdate",
        deployment: "",
        replicas: 1,
    },
    Setting {
        strategy: "RollingUpdate",
        label: "RollingUpdate, 3 replicas, max_surge 1",
        deployment: "",
        replicas: 3,
    },
    Setting {
        strategy: "RollingUpdate",
        label: "RollingUpdate, 3 replicas, max_surge 2",
        deployment: ", rolling: {max_surge: 2}",
        replicas: 3,
    },
    Setting {
        strategy: "Canary",
        label: "Canary, 20 % then 60 %",
        deployment: CANARY,
        replicas: 1,
    },
    Setting {
        strategy: "Hybrid",
        label: "Hybrid (stop-first)",
        deployment: "",
        replicas: 1,
    },
];

fn config(project: &str, setting: Setting, port: u16, docker: bool) -> String {
    let strategy = format!("{}{}", setting.strategy, setting.deployment);
    let replicas = setting.replicas;
    let service = if docker {
        format!(
            "    image: {IMAGE}\n    args: [\"sh\", \"-c\", \"mkdir -p /tmp/w && echo {{{{ env('SITE') }}}} > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w\"]\n"
        )
    } else {
        "    command: python3\n    args: [\"-c\", \"import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()\"]\n".to_owned()
    };
    let (port_line, runtime) = if docker {
        (
            format!("    ports: [{{container_port: 8080, host_port: {port}}}]\n"),
            "infrastructure: {container_runtime: Docker}\n",
        )
    } else {
        (
            format!("    ports: [{{container_port: {port}, host_port: {port}}}]\n"),
            "",
        )
    };
    format!(
        "version: \"1.0.0\"\nproject: {project}\n{runtime}deployment: {{strategy: {strategy}, stop_grace_seconds: 2}}\nservices:\n  web:\n    replicas: {replicas}\n{service}    env: {{SITE: \"{{{{ env('SITE') }}}}\"}}\n{port_line}    health_check: {{endpoint: /}}\n"
    )
}

fn deploy_code(dir: &Path, site: &str, args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir)
        .args(["-c", "deploy-code.yaml"])
        .args(args)
        .env("SITE", site)
        .env_remove("DEPLOY_CODE_STATE")
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Row {
    backend: &'static str,
    strategy: String,
    requests: u64,
    failed: u64,
    p50: f64,
    p99: f64,
    steady_p50: f64,
    steady_p99: f64,
}

fn case(backend: &'static str, setting: Setting, updates: u64, rate: u64, min: u64) -> Option<Row> {
    let dir = tempfile::tempdir().ok()?;
    let port = free_port();
    let project = format!(
        "bench-rollout-{}-{}-{}",
        std::process::id(),
        setting.strategy.to_lowercase(),
        setting.replicas
    );
    let strategy = setting.label;
    let docker = backend == "docker";
    let site = |n: u64| {
        let d = dir.path().join(format!("v{n}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("index.html"), format!("v{n}\n")).unwrap();
        if docker {
            format!("v{n}")
        } else {
            d.to_string_lossy().into_owned()
        }
    };
    std::fs::write(
        dir.path().join("deploy-code.yaml"),
        config(&project, setting, port, docker),
    )
    .ok()?;
    if !deploy_code(dir.path(), &site(0), &["apply", "--auto-approve"]) {
        eprintln!("{backend} {strategy}: the first apply failed");
        return None;
    }
    let (steady, _) = measure(port, rate, 0, &|| {
        std::thread::sleep(Duration::from_secs(3))
    });
    let took = std::cell::Cell::new(Duration::ZERO);
    let refused = std::cell::Cell::new(0);
    let (lat, failed) = measure(port, rate, min, &|| {
        let began = Instant::now();
        for n in 1..=updates {
            if !deploy_code(dir.path(), &site(n), &["apply", "--auto-approve"]) {
                refused.set(refused.get() + 1);
            }
        }
        took.set(began.elapsed());
    });
    let serves = body(port);
    eprintln!(
        "{backend} {strategy}: {updates} updates in {:.1} s, {} failed; serving {}",
        took.get().as_secs_f64(),
        refused.get(),
        serves.as_deref().unwrap_or("nothing")
    );
    deploy_code(dir.path(), &site(updates), &["destroy", "--auto-approve"]);
    Some(Row {
        backend,
        strategy: strategy.to_owned(),
        requests: lat.len() as u64 + failed,
        failed,
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        steady_p50: quantile(&steady, 0.5),
        steady_p99: quantile(&steady, 0.99),
    })
}

/// Runs the request loop against `port` while `run` runs, and on until it
/// has sent `min` requests: the sorted latencies of the answered requests
/// (µs) and the failed ones.
fn measure(port: u16, rate: u64, min: u64, run: &dyn Fn()) -> (Vec<u64>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || request_loop(port, rate, min, flag));
    run();
    stop.store(true, Ordering::Relaxed);
    let (mut lat, failed) = t.join().unwrap();
    lat.sort_unstable();
    (lat, failed)
}

/// `docker-compose` (the Debian package, Compose v1) when it is installed.
fn compose_ready() -> bool {
    Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The comparison point: the same busybox `httpd` container as a Compose
/// service on the same host port, recreated by `docker-compose up -d` with a
/// changed `SITE` (Compose stops the old container, then starts the new one),
/// each update followed by waiting until the new version answers (30 s at
/// most), as a deploy script would.
fn compose_case(updates: u64, rate: u64, min: u64) -> Option<Row> {
    let dir = tempfile::tempdir().ok()?;
    let port = free_port();
    let project = format!("benchcompose{}", std::process::id());
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        format!(
            "version: \"2.4\"\nservices:\n  web:\n    image: {IMAGE}\n    command: [\"sh\", \"-c\", \"mkdir -p /tmp/w && echo $$SITE > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w\"]\n    environment:\n      SITE: \"${{SITE}}\"\n    ports: [\"{port}:8080\"]\n    stop_grace_period: 2s\n"
        ),
    )
    .ok()?;
    let compose = |site: &str, args: &[&str]| {
        Command::new("docker-compose")
            .current_dir(dir.path())
            .args(["-p", &project])
            .args(args)
            .env("SITE", site)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let serves = |site: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if body(port).is_some_and(|b| b == site) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    if !(compose("v0", &["up", "-d"]) && serves("v0")) {
        eprintln!("docker-compose: the first `up -d` failed");
        compose("v0", &["down", "-t", "2"]);
        return None;
    }
    let (steady, _) = measure(port, rate, 0, &|| {
        std::thread::sleep(Duration::from_secs(3))
    });
    let (lat, failed) = measure(port, rate, min, &|| {
        for n in 1..=updates {
            let site = format!("v{n}");
            compose(&site, &["up", "-d"]);
            serves(&site);
        }
    });
    compose(&format!("v{updates}"), &["down", "-t", "2"]);
    Some(Row {
        backend: "docker",
        strategy: "docker-compose up -d (recreate)".to_owned(),
        requests: lat.len() as u64 + failed,
        failed,
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        steady_p50: quantile(&steady, 0.5),
        steady_p99: quantile(&steady, 0.99),
    })
}

/// The body of `GET /` on `port`, trimmed, when it answers 200.
fn body(port: u16) -> Option<String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(b"GET / HTTP/1.0\r\nHost: b\r\n\r\n").ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    if text.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
}

fn docker_ready() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok || !Path::new("/bin/busybox").exists() {
        return false;
    }
    support::image::build();
    true
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it as a test: nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let updates = env_or("DEPLOY_CODE_BENCH_UPDATES", 20);
    let rate = env_or("DEPLOY_CODE_BENCH_RATE", 500);
    let min = env_or("DEPLOY_CODE_BENCH_MIN_REQUESTS", 10_000);
    let mut backends = vec!["process"];
    if docker_ready() {
        backends.push("docker");
    } else {
        eprintln!("containers skipped: no Docker engine or no /bin/busybox");
    }
    println!(
        "{updates} consecutive updates, {rate} requests/s on the loopback, at least {min} requests a row\n\n| backend | strategy | requests | failed | p50 ms | p99 ms | steady p50 ms | steady p99 ms |\n|---|---|---|---|---|---|---|---|"
    );
    let only: Option<String> = std::env::var("DEPLOY_CODE_BENCH_ONLY").ok();
    let wanted = |label: &str| only.as_deref().is_none_or(|o| label.contains(o));
    let show = |r: &Row| {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.backend, r.strategy, r.requests, r.failed, r.p50, r.p99, r.steady_p50, r.steady_p99
        );
    };
    let docker = backends.contains(&"docker");
    for backend in backends {
        for setting in SETTINGS.iter().filter(|s| wanted(s.label)) {
            if let Some(r) = case(backend, *setting, updates, rate, min) {
                show(&r);
            }
        }
    }
    if !docker || !wanted("docker-compose") {
        return;
    }
    if compose_ready() {
        if let Some(r) = compose_case(updates, rate, min) {
            show(&r);
        }
    } else {
        eprintln!(
            "the docker-compose comparison skipped: `docker-compose` is not installed (apt-get install docker-compose)"
        );
    }
}
