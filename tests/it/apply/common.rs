use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deploy_code::backends::StartContext;
use deploy_code::model::{
    BackendKind, HealthCheck, NetworkSettings, PortSpec, Probe, Protocol, Resources, RestartPolicy,
    ServiceName, ServiceSpec, Text, Workload,
};
use deploy_code::state::Handle;

/// The real python3 binary (not a version-manager shim).
pub fn python() -> String {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .clone()
}

/// A free TCP port on the loopback.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

pub fn spec(service: &str, argv: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: name(service),
        backend: BackendKind::Process,
        workload: Workload::Service,
        replicas: 1,
        image: None,
        command: Some(Text::plain(argv[0])),
        args: argv[1..].iter().map(|a| Text::plain(*a)).collect(),
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
    }
}

/// An HTTP server on `port` that becomes ready after `delay_ms` and serves `dir`.
pub fn http_spec(service: &str, port: u16, delay_ms: u64) -> ServiceSpec {
    let script = format!(
        "import time,http.server,functools\n\
         time.sleep({d})\n\
         h=functools.partial(http.server.SimpleHTTPRequestHandler)\n\
         h.log_message=lambda *a: None\n\
         http.server.ThreadingHTTPServer(('127.0.0.1',{port}),h).serve_forever()",
        d = delay_ms as f64 / 1000.0
    );
    let py = python();
    let mut s = spec(service, &[&py, "-c", &script]);
    s.health_check = Some(http_check(port, 1, 3));
    s.ports = vec![PortSpec {
        container_port: port,
        host_port: Some(port),
        host_ip: None,
        protocol: Protocol::Tcp,
    }];
    s
}

pub fn http_check(port: u16, interval: u64, retries: u32) -> HealthCheck {
    HealthCheck {
        probe: Probe::Http {
            url: format!("http://127.0.0.1:{port}/"),
        },
        interval_seconds: interval,
        timeout_seconds: 1,
        retries,
        start_period_seconds: 0,
        min_healthy_seconds: 0,
        restart_after_failures: None,
    }
}

pub fn ctx(dir: &Path, project: &str) -> StartContext {
    StartContext {
        project: project.to_owned(),
        lineage: "test-lineage".into(),
        revision: 1,
        log_dir: dir.join("logs"),
        data_dir: dir.join("data"),
        base_dir: dir.to_path_buf(),
        network: NetworkSettings::default(),
        gpus: Vec::new(),
        only_replicas: None,
    }
}

/// A project name no other test uses.
pub fn project(test: &str) -> String {
    format!("t-{test}-{}", std::process::id())
}

pub fn pid_of(h: &Handle) -> u32 {
    match h {
        Handle::Process { pid, .. } => *pid,
        _ => panic!("not a process"),
    }
}

pub fn log_of(h: &Handle) -> PathBuf {
    match h {
        Handle::Process { log_path, .. } => PathBuf::from(log_path),
        _ => panic!("not a process"),
    }
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

/// Kills what a test started, by pid, whatever happened to the test.
pub struct Reaper(pub Vec<u32>);
impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            unsafe {
                libc::kill(-(*pid as i32), libc::SIGKILL);
            }
        }
    }
}
