//! Canary rollouts under a bounded request loop: failed requests, p50/p99
//! latency, the share of requests the new version answered at each step
//! against the configured weight, and, for a new version that answers 5 %
//! of its requests with a 500, the time from the first step to the abort
//! (the failing judgement) and to the full restore (the run's end: the old
//! set serves alone, the new one is stopped). The same loop first measures
//! the steady state (no update in progress) for comparison.
//!
//! `cargo bench --bench canary` (a local process on a free loopback port;
//! it stops by itself). `DEPLOY_CODE_BENCH_ROUNDS` (default 3) sets the
//! number of passing and of failing updates, `DEPLOY_CODE_BENCH_RATE`
//! (default 400) the requests per second, `DEPLOY_CODE_BENCH_PAUSE` (default
//! 5) each step's `pause_seconds`, `DEPLOY_CODE_BENCH_INTERVAL` (default 1)
//! `analysis.interval_seconds` and `DEPLOY_CODE_BENCH_STEADY` (default 5)
//! the seconds of steady state measured before the updates.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The integration tests' shared support (free ports).
#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::free_port;

const WEIGHTS: [u64; 2] = [10, 50];

const SERVER: &str = r#"import itertools, os, threading, http.server as h
version = os.environ['VERSION']
every = int(os.environ.get('FAIL_EVERY', '0'))
count = itertools.count(1)
lock = threading.Lock()
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        with lock:
            i = next(count)
        code = 500 if every and self.path != '/health' and i % every == 0 else 200
        body = (version + '\n').encode()
        self.send_response(code)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One request of the loop: when it was sent, its status (0: failed), the
/// version that answered, its latency.
#[derive(Clone)]
struct Sample {
    at: Instant,
    status: u16,
    version: String,
    micros: u64,
}

fn get(port: u16) -> (u16, String) {
    let addr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: b\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Requests at a fixed rate until stopped.
fn request_loop(port: u16, rate: u64, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let period = Duration::from_micros(1_000_000 / rate.max(1));
    let mut next = Instant::now();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let (status, version) = get(port);
        out.push(Sample {
            at,
            status,
            version,
            micros: at.elapsed().as_micros() as u64,
        });
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    out
}

fn config(dir: &Path, project: &str, port: u16, version: &str, fail_every: u32) -> String {
    let script = dir.join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let pause = env_or("DEPLOY_CODE_BENCH_PAUSE", 5);
    let interval = env_or("DEPLOY_CODE_BENCH_INTERVAL", 1);
    let steps = WEIGHTS
        .iter()
        .map(|w| format!("{{weight: {w}, pause_seconds: {pause}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"version: "1.0.0"
project: {project}
deployment:
  strategy: Canary
  stop_grace_seconds: 2
  drain_seconds: 1
  canary: {{steps: [{steps}], analysis: {{interval_seconds: {interval}, max_error_rate: 0.01, max_failed_connections: 0.01}}}}
services:
  web:
    command: python3
    args: ["{script}"]
    env: {{VERSION: "{version}", FAIL_EVERY: "{fail_every}"}}
    ports: [{{container_port: 8080, host_port: {port}}}]
    health_check: {{endpoint: /health, interval_seconds: 1, timeout_seconds: 1, retries: 2, start_period_seconds: 10}}
"#,
        script = script.display()
    )
}

/// Runs `apply --format json`: its exit code, when it ended, and each
/// canary event with the moment its line arrived.
fn apply(dir: &Path) -> Applied {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir)
        .args(["-c", "deploy-code.yaml", "apply", "--auto-approve"])
        .args(["--format", "json"])
        .env_remove("DEPLOY_CODE_STATE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("deploy-code runs");
    // Its error output, kept for a failure's report (read aside, so that
    // neither pipe fills).
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let mut events = Vec::new();
    let mut failures = Vec::new();
    let mut started_at = None;
    let mut startup = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["event"] == "canary" {
                events.push((Instant::now(), v));
            } else if v["event"] == "instance_started" && started_at.is_none() {
                started_at = seconds_of_day(&v["at"]);
            } else if v["event"] == "probe" && v["healthy"] == true && startup.is_none() {
                startup = started_at
                    .zip(seconds_of_day(&v["at"]))
                    .map(|(a, b)| Duration::from_secs_f64((b - a).rem_euclid(86400.0)));
            } else if v["event"] == "action_failed" || v["event"] == "rollback_step" {
                eprintln!("{line}");
                failures.push(line);
            } else if v["event"].is_null() {
                // A document that is not an event: the run's error.
                failures.push(line);
            }
        }
    }
    let code = child.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1);
    let errors = errors.join().unwrap_or_default();
    if code != 0 {
        failures.extend(
            errors
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    Applied {
        code,
        ended: Instant::now(),
        ended_at: now_of_day(),
        events,
        failures,
        startup,
    }
}

/// The seconds since midnight of an event's RFC 3339 `at`
/// (`2026-12-01T10:11:44.768905414Z`).
fn seconds_of_day(at: &serde_json::Value) -> Option<f64> {
    let time = at.as_str()?.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The seconds since midnight (UTC) now.
fn now_of_day() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64().rem_euclid(86400.0))
}

/// What one `apply` did.
struct Applied {
    code: i32,
    ended: Instant,
    /// The same, as seconds since midnight (UTC), to compare with the
    /// events' times.
    ended_at: f64,
    events: Vec<(Instant, serde_json::Value)>,
    /// Its `action_failed` and `rollback_step` event lines, and when it
    /// failed, its error output.
    failures: Vec<String>,
    /// From the new set's start to its first passing probe (by the events'
    /// own times).
    startup: Option<Duration>,
}

/// p50 and p99 (ms) of the answered samples sent in `[from, to)`, and how
/// many there were.
fn latencies(samples: &[Sample], from: Instant, to: Instant) -> (usize, f64, f64) {
    let mut lat: Vec<u64> = samples
        .iter()
        .filter(|s| s.status != 0 && s.at >= from && s.at < to)
        .map(|s| s.micros)
        .collect();
    lat.sort_unstable();
    (lat.len(), quantile(&lat, 0.5), quantile(&lat, 0.99))
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it as a test: nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = env_or("DEPLOY_CODE_BENCH_ROUNDS", 3);
    let rate = env_or("DEPLOY_CODE_BENCH_RATE", 400);
    let steady = Duration::from_secs(env_or("DEPLOY_CODE_BENCH_STEADY", 5));
    let interval = env_or("DEPLOY_CODE_BENCH_INTERVAL", 1);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let project = format!("bench-canary-{}", std::process::id());
    let write = |version: &str, fail_every: u32| {
        std::fs::write(
            dir.path().join("deploy-code.yaml"),
            config(dir.path(), &project, port, version, fail_every),
        )
        .unwrap();
    };
    write("v0", 0);
    let first = apply(dir.path());
    if first.code != 0 {
        eprintln!("the first apply failed: {:?}", first.failures);
        return;
    }
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let (stop, samples) = (stop.clone(), samples.clone());
        std::thread::spawn(move || {
            let s = request_loop(port, rate, stop);
            samples.lock().unwrap().extend(s);
        })
    };
    // The steady state: the loop against the service with no update in
    // progress.
    let steady_from = Instant::now();
    std::thread::sleep(steady);
    let steady_to = Instant::now();
    let mut shares: Vec<Vec<f64>> = vec![Vec::new(); WEIGHTS.len()];
    let mut passing = Vec::new();
    let mut aborts = Vec::new();
    let mut version = 0;
    let mut windows = Vec::new();
    let mut startups: Vec<Duration> = Vec::new();
    for round in 0..rounds * 2 {
        let failing = round % 2 == 1;
        version += 1;
        let new = format!("v{version}");
        write(&new, if failing { 20 } else { 0 });
        let Applied {
            code,
            ended,
            ended_at,
            events,
            failures,
            startup,
        } = apply(dir.path());
        startups.extend(startup);
        if !failing && code != 0 {
            eprintln!(
                "passing update {new} failed (exit {code}) after {} canary event(s): {failures:?}",
                events.len()
            );
        }
        let started: Vec<Instant> = events
            .iter()
            .filter(|(_, e)| e["verdict"] == "started")
            .map(|(t, _)| *t)
            .collect();
        // The last step ends with its last judgement: then the switches
        // move every connection to the new set.
        let last = events.last().map_or(ended, |(t, _)| *t);
        windows.push((new.clone(), failing, code, started.clone(), last));
        if failing {
            // By the events' own times: the first step's start, the
            // failing judgement; the restore ends when the run exits.
            let at = |verdict: &str| {
                events
                    .iter()
                    .find(|(_, e)| e["verdict"] == verdict)
                    .and_then(|(_, e)| seconds_of_day(&e["at"]))
            };
            if let (Some(first), Some(fail)) = (at("started"), at("fail")) {
                aborts.push((fail - first, ended_at - first));
            }
            // The old version serves again: write it back as it runs.
            version -= 1;
            write(&format!("v{version}"), 0);
        } else {
            passing.push(code);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    looping.join().unwrap();
    let samples = samples.lock().unwrap().clone();
    for (new, failing, _, started, last) in &windows {
        if *failing {
            continue;
        }
        for (i, from) in started.iter().enumerate() {
            let to = started.get(i + 1).copied().unwrap_or(*last);
            let in_step: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.at >= *from && s.at < to && s.status == 200)
                .collect();
            if !in_step.is_empty() {
                let n = in_step.iter().filter(|s| &s.version == new).count();
                shares[i].push(n as f64 * 100.0 / in_step.len() as f64);
            }
        }
    }
    // The updates' requests: from the end of the steady state on.
    let updating: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= steady_to)
        .cloned()
        .collect();
    let failed = updating.iter().filter(|s| s.status == 0).count();
    let errors = updating.iter().filter(|s| s.status >= 500).count();
    let far = Instant::now() + Duration::from_secs(3600);
    let (_, p50, p99) = latencies(&updating, steady_to, far);
    let (steady_n, steady_p50, steady_p99) = latencies(&samples, steady_from, steady_to);
    let steady_failed = samples
        .iter()
        .filter(|s| s.at >= steady_from && s.at < steady_to && s.status == 0)
        .count();
    println!(
        "{rounds} passing and {rounds} failing canary updates (steps {WEIGHTS:?} %, analysis every {interval} s), {rate} requests/s on the loopback, after {} s of steady state\n",
        steady.as_secs()
    );
    println!(
        "| requests | failed (refused/cut) | 500s (from the failing versions) | p50 ms | p99 ms | steady requests | steady failed | steady p50 ms | steady p99 ms | passing updates ok |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {failed} | {errors} | {p50:.2} | {p99:.2} | {steady_n} | {steady_failed} | {steady_p50:.2} | {steady_p99:.2} | {}/{} |",
        updating.len(),
        passing.iter().filter(|c| **c == 0).count(),
        passing.len()
    );
    println!(
        "\np99 during the updates minus steady p99: {:.2} ms (goal: at most 20 ms)",
        p99 - steady_p99
    );
    startups.sort_unstable();
    println!(
        "new set's start to its first passing probe: median {:.0} ms, longest {:.0} ms ({} updates)",
        startups
            .get(startups.len() / 2)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        startups
            .last()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        startups.len()
    );
    println!(
        "\n| step | weight % | new version's share of answers, per update % | within 2 points |"
    );
    println!("|---|---|---|---|");
    for (i, w) in WEIGHTS.iter().enumerate() {
        println!(
            "| {} | {w} | {} | {} |",
            i + 1,
            shares[i]
                .iter()
                .map(|s| format!("{s:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            if shares[i].iter().all(|s| (s - *w as f64).abs() <= 2.0) {
                "yes"
            } else {
                "no"
            }
        );
    }
    println!("\n| failing update | abort after s | full restore after s | within two intervals |");
    println!("|---|---|---|---|");
    for (i, (abort, restore)) in aborts.iter().enumerate() {
        println!(
            "| {} | {abort:.2} | {restore:.2} | {} |",
            i + 1,
            if *abort <= 2.0 * interval as f64 {
                "yes"
            } else {
                "no"
            }
        );
    }
    let _ = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir.path())
        .args(["-c", "deploy-code.yaml", "destroy", "--auto-approve"])
        .env_remove("DEPLOY_CODE_STATE")
        .output();
}
