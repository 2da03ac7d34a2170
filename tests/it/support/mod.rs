//! What the areas share: free ports, service specs from one builder, the
//! busybox test image, programs on PATH, and guards that stop what a test
//! started. (The non-Rust files tests run, such as `versioned_server.py`, are
//! in `tests/support/`.)

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use deploy_code::model::{
    BackendKind, PortSpec, Protocol, Resources, RestartPolicy, ServiceName, ServiceSpec, Text,
    Workload,
};

pub mod image;

/// A port that is free on every address right now and that no other test of
/// this process has been given.
///
/// Ports come from 20000–32767, below the kernel's ephemeral range
/// (32768–60999), so that no outgoing connection (a probe, a client) can hold
/// one between the test choosing it and a service binding it. Each test
/// process starts at its own offset and walks the range, so two tests never
/// share a port, even when one releases it before the other binds.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// `count` consecutive ports, each free on every address right now and none
/// given to another test of this process: the first is returned. (A
/// configuration such as the quickstart's numbers its ports from one base.)
pub fn free_ports(count: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_768;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7919) % COUNT));
    let free = |port: u32| {
        // One address at a time: a listener still held would make the next
        // bind fail.
        let Ok(port) = u16::try_from(port) else {
            return false;
        };
        TcpListener::bind(("0.0.0.0", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
    };
    for _ in 0..COUNT {
        let first = FIRST + next.fetch_add(u32::from(count), Ordering::Relaxed) % COUNT;
        if (first..first + u32::from(count)).all(free) && first + u32::from(count) <= FIRST + COUNT
        {
            return first as u16;
        }
    }
    panic!("no {count} free ports in {FIRST}–{}", FIRST + COUNT - 1)
}

/// Whether a program is on PATH; tests that need it fail when CI demands it
/// (`DEPLOY_CODE_REQUIRE_TOOLS`), and are counted as skipped otherwise.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip(
            std::thread::current().name().unwrap_or("a test"),
            "DEPLOY_CODE_REQUIRE_TOOLS",
            &format!("`{program}` is not installed"),
        );
    }
    found
}

/// The test `test` cannot run here: with `strict` set in the environment
/// (CI sets it), that fails the test; otherwise the test is counted as
/// skipped, says so, and returns. The run's last line names every skip and
/// why, so that nothing passes by doing nothing unseen.
pub fn skip(test: &str, strict: &str, why: &str) {
    use std::sync::{Mutex, PoisonError};
    static SKIPS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    extern "C" fn report() {
        let skips = SKIPS.lock().unwrap_or_else(PoisonError::into_inner);
        eprintln!(
            "\nskipped {} test{}: {}",
            skips.len(),
            if skips.len() == 1 { "" } else { "s" },
            skips.join("; ")
        );
    }
    if std::env::var_os(strict).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{why}, and {strict} demands it (.ci/run installs and starts what the tests need)");
    }
    eprintln!("SKIP {test}: {why}");
    let mut skips = SKIPS.lock().unwrap_or_else(PoisonError::into_inner);
    if skips.is_empty() {
        // libtest ends the process through `exit`, which runs these.
        // SAFETY: `report` is a plain function that only locks and prints.
        unsafe { libc::atexit(report) };
    }
    skips.push(format!("{test} ({why})"));
}

/// The real python3 binary (not a version-manager shim).
pub fn python() -> String {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .clone()
}

/// A child process killed (by its own pid) when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` on 127.0.0.1 accepts connections.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listened on port {port} within {timeout:?}");
}

/// Whether a pid exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let rest = &s[s.rfind(')').unwrap() + 1..];
            !matches!(rest.split_whitespace().next(), Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

pub fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

/// A TCP port published on the same host port.
pub fn port(port: u16) -> PortSpec {
    PortSpec {
        container_port: port,
        host_port: Some(port),
        host_ip: None,
        protocol: Protocol::Tcp,
    }
}

/// Builds a [`ServiceSpec`]: one replica of a service, no resources, ports,
/// health check or restarts unless asked for.
pub struct Spec(ServiceSpec);

impl Spec {
    /// A local process running `argv`.
    pub fn process(service: &str, argv: &[&str]) -> Self {
        Spec(ServiceSpec {
            name: name(service),
            backend: BackendKind::Process,
            workload: Workload::Service,
            replicas: 1,
            image: None,
            command: argv.first().map(|c| Text::plain(*c)),
            args: argv.iter().skip(1).map(|a| Text::plain(*a)).collect(),
            working_dir: None,
            env: BTreeMap::new(),
            dependencies: Vec::new(),
            resources: Resources::default(),
            health_check: None,
            ports: Vec::new(),
            volumes: Vec::new(),
            restart: RestartPolicy::No,
            restart_settings: None,
            labels: BTreeMap::new(),
            network: None,
            behind_switch: false,
            switch: None,
            swarm_update: None,
            inherit_env: Vec::new(),
        })
    }

    /// A container of `image` with `args` (its entrypoint's arguments).
    pub fn docker(service: &str, image: &str, args: &[&str]) -> Self {
        let mut s = Self::process(service, &[]);
        s.0.backend = BackendKind::Docker;
        s.0.image = Some(image.into());
        s.0.args = args.iter().map(|a| Text::plain(*a)).collect();
        s
    }

    pub fn deps(mut self, deps: &[&str]) -> Self {
        self.0.dependencies = deps.iter().map(|d| name(d)).collect();
        self
    }

    pub fn resources(mut self, cpu_cores: f64, memory_mb: u64, storage_gb: u64) -> Self {
        self.0.resources = Resources {
            cpu_cores,
            memory_mb,
            storage_gb,
            gpu_count: 0,
            gpu_memory_mb: None,
        };
        self
    }

    pub fn env(mut self, var: &str, value: Text) -> Self {
        self.0.env.insert(var.to_owned(), value);
        self
    }

    pub fn port(mut self, port: PortSpec) -> Self {
        self.0.ports.push(port);
        self
    }

    pub fn build(self) -> ServiceSpec {
        self.0
    }
}

/// Kills the process group of every local process marked as `project`'s,
/// from any context (a `Drop` inside a runtime included): what a test's
/// world started is stopped even when the test fails half-way.
pub fn kill_project(project: &str) {
    use deploy_code::backends::Backend;
    let project = project.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let found = rt
            .block_on(deploy_code::backends::process::ProcessBackend::new().discover(&project))
            .unwrap_or_default();
        for d in found {
            if let deploy_code::state::Handle::Process { pid, .. } = d.handle {
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
        }
    })
    .join();
}

/// What every file under `dir` holds, as text, except the services' own
/// output (`*.log`): the state, plans, our own logs, where a leaked secret
/// would show.
pub fn text_outside_logs(dir: &std::path::Path) -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_none_or(|e| e != "log") {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = String::new();
    walk(dir, &mut out);
    out
}
