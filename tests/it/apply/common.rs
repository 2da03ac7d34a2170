use std::path::{Path, PathBuf};

use deploy_code::backends::StartContext;
use deploy_code::model::{HealthCheck, NetworkSettings, Probe, Seconds, ServiceSpec};
use deploy_code::state::Handle;

use crate::support::Spec;

pub use crate::support::{alive, free_port, name, python};

/// A local process running `argv`.
pub fn spec(service: &str, argv: &[&str]) -> ServiceSpec {
    Spec::process(service, argv).build()
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
    s.ports = vec![crate::support::port(port)];
    s
}

pub fn http_check(port: u16, interval: u64, retries: u32) -> HealthCheck {
    HealthCheck {
        probe: Probe::Http {
            url: format!("http://127.0.0.1:{port}/"),
        },
        interval_seconds: Seconds::whole(interval),
        timeout_seconds: Seconds::whole(1),
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
        stop_grace: std::time::Duration::from_secs(10),
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
