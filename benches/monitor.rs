//! The process monitor, measured through the real binary:
//!
//! - crash to healthy: SIGKILL of a service (busybox httpd), until its
//!   replacement answers the health check's request with 200; against the
//!   service's own start time (the same server spawned directly);
//! - the back-off schedule: the pauses between an exit and the next start,
//!   seen from outside (the monitor's children in `/proc`, polled every
//!   millisecond), against the configured ones;
//! - a soak: 20 services, one of them SIGKILLed or hung (SIGSTOP) every
//!   10 s, each probed every 100 ms: availability per service, circuits
//!   opened, each monitor's resident memory.
//!
//! `cargo bench --bench monitor`; the soak lasts 60 s unless
//! `DEPLOY_CODE_SOAK_SECONDS` says otherwise (600 for the full ten minutes);
//! `MONITOR_BENCH=soak` runs the soak alone.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deploy_code::monitor::{MonitorState, MonitorStatus, read_status};

/// The integration tests' shared support (free ports, the busybox image).
#[allow(dead_code)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_deploy-code");

struct Site {
    dir: tempfile::TempDir,
    project: String,
}

impl Site {
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "ok\n").unwrap();
        Site {
            dir,
            project: format!("bench-{name}-{}", std::process::id()),
        }
    }

    fn write(&self, services: &str) {
        let text = format!(
            "version: \"1.0.0\"\nproject: {}\ndeployment:\n  stop_grace_seconds: 2\n  max_parallel: 20\nservices:\n{services}",
            self.project
        );
        std::fs::write(self.dir.path().join("deploy-code.yaml"), text).unwrap();
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(BIN)
            .current_dir(self.dir.path())
            .args(args)
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn status(&self, service: &str) -> Option<MonitorStatus> {
        read_status(
            &self
                .dir
                .path()
                .join(format!(".deploy-code/logs/{service}.log.monitor.json")),
        )
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .current_dir(self.dir.path())
            .args(["destroy", "--auto-approve"])
            .output();
    }
}

fn ok(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200"
}

/// A busybox httpd service with `check` as its health check.
fn httpd(name: &str, port: u16, dir: &Path, check: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    command: /bin/busybox\n    args: [httpd, -f, -p, \"127.0.0.1:{port}\", -h, \"{}\"]\n    ports: [{{container_port: {port}}}]\n    resources: {{cpu_cores: 0.05, memory_mb: 16}}\n    health_check: {check}\n{extra}",
        dir.display()
    )
}

/// The health check of the crash and back-off measures: a hang is seen
/// after two failed probes a second apart.
const CHECK: &str =
    "{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2, restart_after_failures: 2}";

/// The soak's health check, as an operator who wants 99.9% per service would
/// write it: probes every 100 ms that may take 250 ms (a local server answers
/// in a few), a restart after the first failed one; failures count for the
/// gate only after a start period of 1 s.
const SOAK_CHECK: &str = "{endpoint: /, interval_seconds: 0.1, timeout_seconds: 0.25, retries: 3, start_period_seconds: 1, restart_after_failures: 1}";

/// The soak's restart policy: at once after a crash, and a circuit that a
/// burst of restarts (one fault every 10 s among 20 services) cannot open.
const SOAK_RESTART: &str = "    restart: {policy: always, initial_delay_ms: 0, max_restarts: 10, window_seconds: 60, reset_after_seconds: 5}\n";

fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn crash_to_healthy() {
    let site = Site::new("crash");
    let port = free_port();
    site.write(&httpd(
        "web",
        port,
        site.dir.path(),
        CHECK,
        "    restart: {policy: always, initial_delay_ms: 0, max_restarts: 1000, window_seconds: 1}\n",
    ));
    site.run(&["apply", "--auto-approve"]);
    let mut samples = Vec::new();
    for _ in 0..40 {
        let child = site.status("web").and_then(|s| s.child_pid).unwrap();
        assert!(wait(Duration::from_secs(5), || ok(port)));
        let t0 = Instant::now();
        unsafe {
            libc::kill(child as i32, libc::SIGKILL);
        }
        assert!(wait(Duration::from_secs(10), || {
            site.status("web")
                .is_some_and(|s| s.child_pid.is_some_and(|p| p != child))
                && ok(port)
        }));
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    // The service's own start time: the same server spawned directly.
    let mut own = Vec::new();
    for _ in 0..40 {
        let port = free_port();
        let t0 = Instant::now();
        let mut c = Command::new("/bin/busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(site.dir.path())
            .spawn()
            .unwrap();
        assert!(wait(Duration::from_secs(5), || ok(port)));
        own.push(t0.elapsed().as_secs_f64() * 1000.0);
        let _ = c.kill();
        let _ = c.wait();
    }
    samples.sort_by(f64::total_cmp);
    own.sort_by(f64::total_cmp);
    println!(
        "crash to healthy (SIGKILL -> replacement answers 200, initial_delay_ms 0, {} runs): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        samples.len(),
        pct(&samples, 0.5),
        pct(&samples, 0.95),
        samples[samples.len() - 1]
    );
    println!(
        "  the service's own start (spawn -> 200): p50 {:.1} ms, p95 {:.1} ms; monitor's share at p95: {:.1} ms",
        pct(&own, 0.5),
        pct(&own, 0.95),
        pct(&samples, 0.95) - pct(&own, 0.95)
    );
}

/// The monitor's children right now.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn backoff_schedule() {
    let site = Site::new("backoff");
    site.write(
        "  web:\n    command: /bin/busybox\n    args: [sh, -c, \"sleep 0.05; exit 3\"]\n    restart: {policy: on-failure, initial_delay_ms: 100, multiplier: 2, max_delay_seconds: 4, max_restarts: 8, window_seconds: 120}\n",
    );
    // Watch from the first start on, while `apply` still runs.
    let mut apply = Command::new(BIN)
        .current_dir(site.dir.path())
        .args(["apply", "--auto-approve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut monitor = 0;
    assert!(wait(Duration::from_secs(30), || {
        monitor = site.status("web").map_or(0, |s| s.monitor_pid);
        monitor != 0
    }));
    // (pid, first seen, last seen) of each child, polled every millisecond.
    let mut seen: Vec<(u32, Instant, Instant)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let now = Instant::now();
        for c in children(monitor) {
            match seen.iter_mut().find(|(p, _, _)| *p == c) {
                Some(e) => e.2 = now,
                None => seen.push((c, now, now)),
            }
        }
        if site
            .status("web")
            .is_some_and(|s| s.state == MonitorState::CircuitOpen)
            && children(monitor).is_empty()
        {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let _ = apply.wait();
    let status = site.status("web").unwrap();
    let configured: Vec<u64> = status.recent.iter().map(|r| r.delay_ms).collect();
    // Should the first child be missed, pair the gaps seen with the last
    // configured pauses.
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].2).as_secs_f64() * 1000.0)
        .collect();
    let skip = configured.len().saturating_sub(gaps.len());
    let mut worst: f64 = 0.0;
    let mut rows = Vec::new();
    for (want, gap) in configured[skip..].iter().zip(&gaps) {
        let err = (gap - *want as f64) / *want as f64 * 100.0;
        worst = worst.max(err.abs());
        rows.push(format!("{want}->{gap:.1}"));
    }
    println!(
        "back-off schedule (configured ms -> measured ms, exit to next start): {}; worst error {worst:.1}%; circuit open: {}",
        rows.join(", "),
        status.state == MonitorState::CircuitOpen
    );
}

/// A field of `/proc/<pid>/<file>` in kB (`VmRSS`, `RssAnon`, `Pss`).
fn kb(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn soak() {
    let seconds: u64 = std::env::var("DEPLOY_CODE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let site = Site::new("soak");
    let names: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
    let ports: BTreeMap<String, u16> = names.iter().map(|n| (n.clone(), free_port())).collect();
    let mut text = String::new();
    for n in &names {
        text.push_str(&httpd(
            n,
            ports[n],
            site.dir.path(),
            SOAK_CHECK,
            SOAK_RESTART,
        ));
    }
    site.write(&text);
    site.run(&["apply", "--auto-approve"]);
    let mut up: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let start = Instant::now();
    let mut next_fault = start + Duration::from_secs(10);
    let mut faults = 0usize;
    // Resident memory of each monitor: all of it (the binary's pages are
    // shared by every monitor), its own (anonymous) pages, and its
    // proportional share.
    let (mut rss, mut anon, mut pss) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(seconds) {
        let round = Instant::now();
        if round >= next_fault {
            let victim = &names[faults % names.len()];
            if let Some(child) = site.status(victim).and_then(|s| s.child_pid) {
                let sig = if faults.is_multiple_of(2) {
                    libc::SIGKILL
                } else {
                    libc::SIGSTOP
                };
                unsafe {
                    libc::kill(child as i32, sig);
                }
            }
            faults += 1;
            next_fault += Duration::from_secs(10);
        }
        for n in &names {
            let e = up.entry(n.clone()).or_default();
            e.1 += 1;
            if ok(ports[n]) {
                e.0 += 1;
            }
            if let Some(s) = site.status(n) {
                rss = rss.max(kb(s.monitor_pid, "status", "VmRSS:"));
                anon = anon.max(kb(s.monitor_pid, "status", "RssAnon:"));
                pss = pss.max(kb(s.monitor_pid, "smaps_rollup", "Pss:"));
            }
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(round.elapsed()));
    }
    let statuses: Vec<MonitorStatus> = names.iter().filter_map(|n| site.status(n)).collect();
    let open = statuses
        .iter()
        .filter(|s| s.state == MonitorState::CircuitOpen)
        .count();
    let restarts: u32 = statuses.iter().map(|s| s.restarts).sum();
    // Of those, the ones a failed health check made (a hang, or a false
    // alarm when a probe ran out of time on a loaded machine).
    let unhealthy = statuses
        .iter()
        .flat_map(|s| &s.recent)
        .filter(|r| r.after.starts_with("unhealthy"))
        .count();
    let worst = up
        .iter()
        .map(|(n, (good, all))| (n.clone(), *good as f64 / *all as f64 * 100.0))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let faulted: Vec<f64> = up
        .iter()
        .map(|(_, (good, all))| *good as f64 / *all as f64 * 100.0)
        .collect();
    let mean = faulted.iter().sum::<f64>() / faulted.len() as f64;
    println!(
        "soak ({seconds} s, 20 services, {faults} faults alternating SIGKILL/SIGSTOP every 10 s, probes every 100 ms): \
         availability worst {:.2}% ({}), mean {mean:.3}%; restarts {restarts} ({unhealthy} after failed probes); circuits opened {open}; \
         per monitor, peak: RSS {:.1} MB, anonymous {:.1} MB, PSS {:.1} MB",
        worst.1,
        worst.0,
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        pss as f64 / 1024.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs nothing here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `MONITOR_BENCH=soak` runs the soak alone.
    if std::env::var("MONITOR_BENCH").as_deref() != Ok("soak") {
        crash_to_healthy();
        backoff_schedule();
    }
    soak();
}
