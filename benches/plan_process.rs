//! `deploy-code plan` as a whole process, against `terraform plan` in the
//! same run.
//!
//! Generated deployments of N services (about two dependencies each, an
//! environment variable, declared resources, and a port for the first 40,000), planned from an empty
//! state against a declared inventory: the release binary is run `RUNS` times
//! per size and the median wall time and the peak resident memory of the
//! child are reported, with the time per service (the growth curve). Then
//! `terraform plan -refresh=false` of 2,000 built-in `terraform_data`
//! resources is timed the same way, when `terraform` is installed (the
//! comparison is skipped with a message otherwise).
//!
//! Run: `cargo bench --bench plan_process`. `PLAN_BENCH_SIZES=1000,2000,10000`
//! picks the sizes (default 1,000, 2,000, 10,000, 20,000 and 50,000; add
//! 100000 for the end of the curve), `PLAN_BENCH_RUNS` the runs per size
//! (default 5).
//!
//! The goals printed at the end: 2,000 services in at most 23 ms and 50 times
//! faster than Terraform's 2,000 resources; 10,000 services in at most 300 ms
//! and 100 MB; time per service within a factor 1.5 from the smallest size to
//! the largest (linear growth).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_deploy-code");

fn config_text(n: usize) -> String {
    // One flow-style line per service keeps 100,000 services under the
    // 16 MiB limit of a configuration file.
    let mut s = String::with_capacity(n * 140);
    s.push_str("version: \"1.0.0\"\nproject: bench\nservices:\n");
    for i in 0..n {
        let mut deps: Vec<usize> = [i.checked_sub(1), (i > 1).then(|| i / 2 - 1)]
            .into_iter()
            .flatten()
            .collect();
        deps.sort_unstable();
        deps.dedup();
        let p = 20000 + i % 40000;
        let names: Vec<String> = deps.iter().map(|d| format!("s{d}")).collect();
        s.push_str(&format!(
            "  s{i}: {{command: server, args: [--port, \"{p}\"], dependencies: [{}], env: {{MODE: prod}}, resources: {{cpu_cores: 0.001, memory_mb: 1}}",
            names.join(", ")
        ));
        // One host has 40,000 ports to give: the services beyond have none.
        if i < 40000 {
            s.push_str(&format!(", ports: [{{container_port: {p}}}]"));
        }
        s.push_str("}\n");
    }
    s
}

const INVENTORY: &str =
    "name: bench\ncpu_cores: 4096\nmemory_mb: 104857600\nstorage_gb: 100000\nports_in_use: []\n";

/// Runs `cmd` to completion with its output discarded; wall time and the
/// child's peak resident set (from `wait4`).
fn measure(cmd: &mut Command) -> (Duration, u64) {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the command starts");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is plain data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, whose pid we hold; `child` is not waited on elsewhere.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(rc, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed: status {status}"
    );
    std::mem::forget(child);
    (wall, usage.ru_maxrss as u64 * 1024)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

struct Row {
    n: usize,
    time: Duration,
    peak: u64,
}

fn bench_deploy_code(dir: &Path, n: usize, runs: usize) -> Row {
    let case = dir.join(format!("dc-{n}"));
    std::fs::create_dir_all(&case).unwrap();
    std::fs::write(case.join("deploy-code.yaml"), config_text(n)).unwrap();
    std::fs::write(case.join("host.yaml"), INVENTORY).unwrap();
    let run = || {
        measure(
            Command::new(BIN)
                .current_dir(&case)
                .env("NO_COLOR", "1")
                .env_remove("DEPLOY_CODE_STATE")
                .env_remove("DEPLOY_CODE_CONFIG")
                .args(["plan", "--inventory", "host.yaml"]),
        )
    };
    run(); // warm the page cache
    let mut times = Vec::new();
    let mut peak = 0;
    for _ in 0..runs {
        let (t, p) = run();
        times.push(t);
        peak = peak.max(p);
    }
    Row {
        n,
        time: median(times),
        peak,
    }
}

fn bench_terraform(dir: &Path, n: usize, runs: usize) -> Option<Duration> {
    let found = Command::new("terraform")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("terraform: not installed; the comparison is skipped");
        return None;
    }
    let case = dir.join(format!("tf-{n}"));
    std::fs::create_dir_all(&case).unwrap();
    let mut tf = String::with_capacity(n * 80);
    for i in 0..n {
        tf.push_str(&format!(
            "resource \"terraform_data\" \"r{i}\" {{\n  input = \"value-{i}\"\n}}\n"
        ));
    }
    std::fs::write(case.join("main.tf"), tf).unwrap();
    let init = Command::new("terraform")
        .current_dir(&case)
        .args(["init", "-input=false", "-no-color"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !init {
        println!("terraform: `terraform init` failed; the comparison is skipped");
        return None;
    }
    let run = || {
        measure(Command::new("terraform").current_dir(&case).args([
            "plan",
            "-refresh=false",
            "-input=false",
            "-no-color",
            "-lock=false",
        ]))
        .0
    };
    run();
    Some(median((0..runs).map(|_| run()).collect()))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let sizes = env_list("PLAN_BENCH_SIZES", &[1000, 2000, 10000, 20000, 50000]);
    let runs = env_list("PLAN_BENCH_RUNS", &[5])[0].max(1);
    let dir = tempfile::tempdir().unwrap();
    println!("deploy-code plan, whole process, median of {runs} (binary {BIN})");
    println!(
        "{:>8}  {:>10}  {:>12}  {:>10}",
        "services", "time", "per service", "peak RSS"
    );
    let mut rows = Vec::new();
    for &n in &sizes {
        let r = bench_deploy_code(dir.path(), n, runs);
        println!(
            "{:>8}  {:>8.1} ms  {:>9.2} µs  {:>7.1} MB",
            r.n,
            ms(r.time),
            ms(r.time) * 1000.0 / r.n as f64,
            r.peak as f64 / 1e6
        );
        rows.push(r);
    }
    let tf = bench_terraform(dir.path(), 2000, runs);
    if let Some(t) = tf {
        println!(
            "terraform plan -refresh=false, 2000 terraform_data: {:.1} ms",
            ms(t)
        );
    }

    println!("\ngoals:");
    let at = |n: usize| rows.iter().find(|r| r.n == n);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    match at(2000) {
        Some(r) => {
            println!(
                "  2,000 services <= 23 ms: {:.1} ms, {}",
                ms(r.time),
                verdict(ms(r.time) <= 23.0)
            );
            if let Some(t) = tf {
                let x = t.as_secs_f64() / r.time.as_secs_f64();
                println!(
                    "  50x terraform at 2,000: {x:.1}x faster, {}",
                    verdict(x >= 50.0)
                );
            }
        }
        None => println!("  2,000 services: not measured (add 2000 to PLAN_BENCH_SIZES)"),
    }
    match at(10000) {
        Some(r) => println!(
            "  10,000 services <= 300 ms and <= 100 MB: {:.1} ms, {:.1} MB, {}",
            ms(r.time),
            r.peak as f64 / 1e6,
            verdict(ms(r.time) <= 300.0 && r.peak <= 100_000_000)
        ),
        None => println!("  10,000 services: not measured (add 10000 to PLAN_BENCH_SIZES)"),
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last())
        && last.n > first.n
    {
        let per = |r: &Row| r.time.as_secs_f64() / r.n as f64;
        let growth = per(last) / per(first);
        println!(
            "  linear growth {} -> {}: time per service x{growth:.2}, {}",
            first.n,
            last.n,
            verdict(growth <= 1.5)
        );
    }
}
