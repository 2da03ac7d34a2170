//! Apply overhead on real processes, HTTP-gated.
//!
//! 1. 200 process services in 10 phases (20 per phase, each depending on one of
//!    the previous phase), each a `busybox httpd` started after its own delay
//!    (`sleep 0.0x`), gated by an HTTP check. The baseline of a run is the sum over
//!    phases of the slowest service's own readiness (its delay); the overhead per
//!    phase is (apply time - baseline) / 10. Reported: median and p95 over runs.
//! 2. Detection latency: one service that becomes ready after 300 ms; the time
//!    between it accepting connections (seen by a 1 ms poller) and its gate
//!    passing.
//!
//! Run: `cargo bench --bench apply` (needs `busybox` on PATH).
//! `APPLY_BENCH_RUNS` sets the number of runs of (1) (default 5).
//!
//! Under load: `APPLY_BENCH_LOAD=2 nice -n 5 cargo bench --bench apply` starts,
//! for the runs of (1) only, that many CPU-bound busy loops plus one writer
//! that writes and `fsync`s 64 MiB at a time in the bench's temporary
//! directory (the disk the state is on), and stops them after the runs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deploy_code::apply::{self, Cancel, Event, Options};
use deploy_code::backends::process::ProcessBackend;
use deploy_code::backends::{Backend, Registry, StartContext};
use deploy_code::model::*;
use deploy_code::plan::{self, Observations};
use deploy_code::state::{Holder, Store};

/// The integration tests' shared support (free ports, the busybox image).
#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::free_port;

fn service(name: &str, port: u16, delay_ms: u64, deps: Vec<ServiceName>, www: &str) -> ServiceSpec {
    ServiceSpec {
        name: ServiceName::parse(name).unwrap(),
        backend: BackendKind::Process,
        workload: Workload::Service,
        replicas: 1,
        image: None,
        command: Some(Text::plain("sh")),
        args: vec![
            Text::plain("-c"),
            Text::plain(format!(
                "sleep {}; exec busybox httpd -f -p 127.0.0.1:{port} -h {www}",
                delay_ms as f64 / 1000.0
            )),
        ],
        working_dir: None,
        env: BTreeMap::new(),
        dependencies: deps,
        resources: Resources::default(),
        health_check: Some(HealthCheck {
            probe: Probe::Http {
                url: format!("http://127.0.0.1:{port}/"),
            },
            interval_seconds: Seconds::whole(1),
            timeout_seconds: Seconds::whole(1),
            retries: 5,
            start_period_seconds: 0,
            min_healthy_seconds: 0,
            restart_after_failures: None,
        }),
        ports: vec![PortSpec {
            container_port: port,
            host_port: Some(port),
            host_ip: None,
            protocol: Protocol::Tcp,
        }],
        volumes: Vec::new(),
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

fn settings(dir: &std::path::Path, project: &str) -> Settings {
    let mut deployment = DeploymentSettings {
        max_parallel: 20,
        ..Default::default()
    };
    deployment.stop_grace_seconds = 2;
    Settings {
        project: project.into(),
        environment: "bench".into(),
        default_backend: BackendKind::Process,
        deployment,
        network: NetworkSettings::default(),
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
        reserve_percent: 20,
        monitoring: MonitoringSettings::default(),
        state_path: None,
        security: Default::default(),
        hooks: Default::default(),
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Where a phase's time goes, per phase, in ms: the last action's launch
/// (phase start to its `action_started`), the slowest start (`action_started`
/// to `instance_started`: the intent, its sync and the spawn), the largest
/// readiness excess (`instance_started` to `action_succeeded`, less the
/// service's own delay) and the tail (the last pass to `phase_finished`).
#[derive(Clone, Copy, Default)]
struct Parts {
    launch: f64,
    start: f64,
    gate_excess: f64,
    tail: f64,
}

/// When an action started, its instance started and its gate passed.
type Marks = (Option<Instant>, Option<Instant>, Option<Instant>);

#[derive(Default)]
struct Seen {
    phase_began: Option<Instant>,
    last_pass: Option<Instant>,
    /// Per service: action started, instance started, action succeeded.
    actions: BTreeMap<String, Marks>,
    parts: Vec<Parts>,
    /// With `APPLY_BENCH_PROBES`: each service's probes (ms since its phase
    /// began), printed for the slowest gate of each phase.
    probes: BTreeMap<String, Vec<String>>,
}

impl Seen {
    fn close_phase(&mut self, now: Instant, delays: &BTreeMap<String, f64>) {
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
        let began = self.phase_began.unwrap_or(now);
        let mut parts = Parts::default();
        let mut worst = (f64::MIN, String::new());
        for (name, (a, i, s)) in std::mem::take(&mut self.actions) {
            let (Some(a), Some(i), Some(s)) = (a, i, s) else {
                continue;
            };
            parts.launch = parts.launch.max(ms(began, a));
            parts.start = parts.start.max(ms(a, i));
            let excess = ms(i, s) - delays.get(&name).copied().unwrap_or(0.0);
            if excess > worst.0 {
                worst = (excess, name.clone());
            }
            parts.gate_excess = parts.gate_excess.max(excess);
        }
        let probes = std::mem::take(&mut self.probes);
        if let Some(p) = probes.get(&worst.1) {
            println!(
                "  slowest gate {} (own delay {} ms, excess {:.0} ms): {}",
                worst.1,
                delays.get(&worst.1).copied().unwrap_or(0.0),
                worst.0,
                p.join("; ")
            );
        }
        parts.tail = ms(self.last_pass.unwrap_or(now), now);
        self.parts.push(parts);
    }
}

async fn run_once(
    run: usize,
    rt_samples: &mut Vec<f64>,
    totals: &mut Vec<(f64, f64)>,
    breakdown: &mut Vec<Vec<Parts>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok").unwrap();
    let project = format!("bench-apply-{}-{run}", std::process::id());
    // Hold every listener until all ports are chosen, so that no port is given twice.
    let listeners: Vec<_> = (0..200)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut ports = listeners.iter().map(|l| l.local_addr().unwrap().port());
    let mut services = BTreeMap::new();
    let mut phase_max = Vec::new();
    let mut delays: BTreeMap<String, f64> = BTreeMap::new();
    for p in 0..10u64 {
        let mut max = 0;
        for i in 0..20u64 {
            // Delays of 10..=200 ms, different in every phase.
            let delay = 10 + ((p * 37 + i * 53) % 20) * 10;
            max = max.max(delay);
            delays.insert(format!("s{p}-{i}"), delay as f64);
            let deps = if p == 0 {
                Vec::new()
            } else {
                vec![ServiceName::parse(&format!("s{}-{}", p - 1, i)).unwrap()]
            };
            let s = service(
                &format!("s{p}-{i}"),
                ports.next().unwrap(),
                delay,
                deps,
                www.to_str().unwrap(),
            );
            services.insert(s.name.clone(), std::sync::Arc::new(s));
        }
        phase_max.push(max as f64);
    }
    drop(listeners);
    let desired = DesiredState {
        settings: settings(dir.path(), &project),
        services,
        disabled: Vec::new(),
    };
    let state = dir.path().join("state.db");
    let mut store = Store::open(&state, &Holder::current("bench"), None).unwrap();
    store.ensure_identity(None).unwrap();
    let snap = store.snapshot().unwrap();
    let inventory = deploy_code::inventory::probe(dir.path());
    let p = plan::plan(&plan::Input {
        desired: Some(&desired),
        snapshot: &snap,
        observations: Some(&Observations::default()),
        inventory: &inventory,
        config_hash: "sha256:bench".into(),
        options: plan::Options::default(),
        capabilities: deploy_code::backends::Registry::with_all().capabilities(),
    })
    .unwrap();
    assert_eq!(p.phases.len(), 10, "10 phases");
    let phase_times = Mutex::new(Vec::new());
    // When each event of each action was seen, for the breakdown.
    let seen = Mutex::new(Seen::default());
    let hook = |e: &Event| {
        let now = Instant::now();
        let mut seen = seen.lock().unwrap();
        match e {
            Event::PhaseStarted { .. } => seen.phase_began = Some(now),
            Event::ActionStarted { service, .. } => {
                seen.actions.entry(service.to_string()).or_default().0 = Some(now);
            }
            Event::InstanceStarted { service, .. } => {
                seen.actions.entry(service.to_string()).or_default().1 = Some(now);
            }
            Event::Probe {
                service, detail, ..
            } if std::env::var_os("APPLY_BENCH_PROBES").is_some() => {
                let began = seen.phase_began.unwrap_or(now);
                let at = now.saturating_duration_since(began).as_millis();
                seen.probes
                    .entry(service.to_string())
                    .or_default()
                    .push(format!("{at} ms: {detail}"));
            }
            Event::ActionSucceeded { service, .. } => {
                seen.actions.entry(service.to_string()).or_default().2 = Some(now);
                seen.last_pass = Some(now);
            }
            Event::PhaseFinished { elapsed_ms, .. } => {
                phase_times.lock().unwrap().push(*elapsed_ms as f64);
                seen.close_phase(now, &delays);
            }
            _ => {}
        }
    };
    let opts = Options {
        base_dir: dir.path().to_path_buf(),
        command: "bench".into(),
        ..Default::default()
    };
    let t = Instant::now();
    let report = apply::execute(
        &p,
        &desired,
        &mut store,
        &Registry::with_process(),
        &opts,
        &hook,
        &Cancel::new(),
    )
    .await
    .unwrap();
    let total = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(
        report.outcome,
        deploy_code::state::Outcome::Succeeded,
        "{:?}",
        report.failures
    );
    let baseline: f64 = phase_max.iter().sum();
    for (pt, max) in phase_times.lock().unwrap().iter().zip(&phase_max) {
        rt_samples.push(pt - max);
    }
    totals.push((total, baseline));
    breakdown.push(seen.into_inner().unwrap().parts);
    // Clean up by the handles this run started.
    let b = ProcessBackend::new();
    let snap = store.snapshot().unwrap();
    let handles: Vec<_> = snap
        .services
        .values()
        .flat_map(|r| r.handles.clone())
        .collect();
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
}

async fn detection(samples: &mut Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok").unwrap();
    let port = free_port();
    let s = service("late", port, 300, Vec::new(), www.to_str().unwrap());
    let b = ProcessBackend::new();
    let ctx = StartContext {
        project: format!("bench-detect-{}", std::process::id()),
        lineage: "bench".into(),
        revision: 1,
        log_dir: dir.path().join("logs"),
        data_dir: dir.path().join("data"),
        base_dir: dir.path().to_path_buf(),
        network: NetworkSettings::default(),
        gpus: Vec::new(),
        only_replicas: None,
        stop_grace: std::time::Duration::from_secs(10),
    };
    let handles = b.start(&s, &ctx).await.unwrap();
    let poller = std::thread::spawn(move || {
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let noop = |_: &apply::health::ProbeRecord| {};
    let out = apply::health::gate(&b, &s, &handles, &Cancel::new(), 1, None, &noop).await;
    let passed = Instant::now();
    let listening = poller.join().unwrap();
    assert!(out.healthy);
    samples.push(passed.saturating_duration_since(listening).as_secs_f64() * 1000.0);
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
}

/// Busy loops and an `fsync`ing writer that run until `stop` is set; see the
/// top of this file.
fn start_load(
    loops: usize,
    dir: &std::path::Path,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let mut threads = Vec::new();
    for _ in 0..loops {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..100_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
            }
        }));
    }
    let stop = stop.clone();
    let path = dir.join("load.bin");
    threads.push(std::thread::spawn(move || {
        let chunk = vec![0x5au8; 1 << 20];
        while !stop.load(Ordering::Relaxed) {
            let mut f = std::fs::File::create(&path).unwrap();
            for _ in 0..64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                f.write_all(&chunk).unwrap();
            }
            f.sync_all().unwrap();
        }
        let _ = std::fs::remove_file(&path);
    }));
    threads
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let load: usize = std::env::var("APPLY_BENCH_LOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let runs: usize = std::env::var("APPLY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut per_phase = Vec::new();
        let mut totals = Vec::new();
        let mut breakdown = Vec::new();
        let load_dir = tempfile::tempdir().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load_threads = if load > 0 {
            println!("load: {load} busy loops and a writer fsyncing 64 MiB at a time");
            start_load(load, load_dir.path(), &stop)
        } else {
            Vec::new()
        };
        for run in 0..runs {
            run_once(run, &mut per_phase, &mut totals, &mut breakdown).await;
            // The machine's load as the run ended (1, 5 and 15 minutes).
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let load: Vec<&str> = load.split_whitespace().take(3).collect();
            println!("run {run}: load average {}", load.join(" "));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in load_threads {
            t.join().unwrap();
        }
        for (i, (t, b)) in totals.iter().enumerate() {
            println!(
                "apply 200 services / 10 phases run {i}: {t:.0} ms, baseline (sum of slowest readiness per phase) {b:.0} ms, overhead {:.0} ms ({:.1} ms/phase)",
                t - b,
                (t - b) / 10.0
            );
        }
        let med = pct(&mut per_phase.clone(), 0.5);
        let p95 = pct(&mut per_phase, 0.95);
        println!(
            "per-phase overhead over {} phases: median {med:.1} ms, p95 {p95:.1} ms (goal < 250 ms)",
            runs * 10
        );
        let parts: Vec<Parts> = breakdown.into_iter().flatten().collect();
        let part = |f: fn(&Parts) -> f64| {
            let mut v: Vec<f64> = parts.iter().map(f).collect();
            (pct(&mut v.clone(), 0.5), pct(&mut v, 0.95))
        };
        for (name, (m, p)) in [
            ("last launch (phase start -> action started)", part(|p| p.launch)),
            ("slowest start (intent, its sync, spawn)", part(|p| p.start)),
            ("largest readiness excess (started -> gate passed, less own delay)", part(|p| p.gate_excess)),
            ("tail (last gate passed -> phase finished)", part(|p| p.tail)),
        ] {
            println!("  per phase, {name}: median {m:.1} ms, p95 {p:.1} ms");
        }
        let mut det = Vec::new();
        for _ in 0..20 {
            detection(&mut det).await;
        }
        let med = pct(&mut det.clone(), 0.5);
        let p95 = pct(&mut det, 0.95);
        println!("ready-detection latency over 20 runs: median {med:.1} ms, p95 {p95:.1} ms");
    });
}
