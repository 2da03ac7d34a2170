//! Health-driven restarts of a Docker container: its monitor (`deploy-code
//! __monitor`, watching the container through the engine) restarts it after
//! `restart_after_failures` failed probes, with the back-off, and opens the
//! circuit after `max_restarts`; `status` says so, `destroy` leaves neither
//! monitor nor container.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use deploy_code::monitor::{MonitorState, MonitorStatus, read_status};

use super::common::*;

pub(super) struct Site {
    pub dir: tempfile::TempDir,
    pub project: String,
}

impl Site {
    pub fn new(test: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            project: project(test),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("deploy-code.yaml")
    }

    pub fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
            .current_dir(self.dir.path())
            .arg("-c")
            .arg(self.config())
            .args(args)
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

    /// The project's container ids (running or not).
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                &format!("label=io.deploy-code.project={}", self.project),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Where the monitor of container `id` (replica 0 of `service`) keeps its status.
    pub fn status_file(&self, service: &str, id: &str) -> PathBuf {
        self.dir.path().join(format!(
            ".deploy-code/logs/{}-{service}.{}.monitor.log.monitor.json",
            self.project,
            &id[..12]
        ))
    }
}

/// The live monitors of the project's containers, found by their marks.
pub(super) fn monitors(project: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mark = format!("DEPLOY_CODE_MONITORED_PROJECT={project}");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && env.split(|b| *b == 0).any(|kv| kv == mark.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Stops what the test started, by its marks and labels, even when it fails.
pub(super) struct Stop(pub String);

impl Drop for Stop {
    fn drop(&mut self) {
        for pid in monitors(&self.0) {
            // SAFETY: a monitor of this test's project.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        drop(Cleanup::new(&self.0));
    }
}

/// The body `GET /` answers on `port`.
pub(super) fn body(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.trim().to_owned())
        .or_else(|| {
            head.starts_with("HTTP/1.1 200")
                .then(|| body.trim().to_owned())
        })
}

pub(super) fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

fn wait_status(path: &Path, what: &str, cond: impl Fn(&MonitorStatus) -> bool) -> MonitorStatus {
    let ok = wait_until(Duration::from_secs(90), || {
        read_status(path).is_some_and(|s| cond(&s))
    });
    let now = read_status(path);
    assert!(ok, "{what}: the monitor's status is {now:#?}");
    now.unwrap()
}

/// A busybox httpd whose `/health` is written at every start of the
/// container (so that a restart heals it) and removed by the test; `GET /`
/// names the version. `sh` is PID 1 and ends on SIGTERM at once.
pub(super) fn config(project: &str, port: u16, restart: &str) -> String {
    format!(
        "version: \"1.0.0\"\nproject: {project}\nenvironment: test\ninfrastructure:\n  container_runtime: Docker\ndeployment:\n  timeout_seconds: 60\n  stop_grace_seconds: 1\nservices:\n  web:\n    image: {IMAGE}\n    args:\n      - sh\n      - -c\n      - |\n        echo ok > /www/health\n        echo version=v1 > /www/index.html\n        trap 'exit 143' TERM\n        httpd -f -p 8080 -h /www &\n        wait\n    ports:\n      - container_port: 8080\n        host_port: {port}\n{restart}    health_check:\n      endpoint: /health\n      interval_seconds: 1\n      timeout_seconds: 1\n      retries: 2\n      restart_after_failures: 2\n"
    )
}

/// The `restart` events of `web` in the state, newest first: id, outcome,
/// message.
pub(super) fn restart_events(site: &Site) -> Vec<(i64, String, String)> {
    let (code, json) = site.run(&["state", "show", "web", "--format", "json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "restart")
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub(super) fn break_health(id: &str) {
    let out = Command::new("docker")
        .args(["exec", id, "/bin/busybox", "rm", "-f", "/www/health"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_failing_its_probes_is_restarted_until_the_circuit_opens() {
    let test = "a_container_failing_its_probes_is_restarted_until_the_circuit_opens";
    let Some(_engine) = engine(test).await else {
        return;
    };
    let site = Site::new("hrestart");
    let _stop = Stop(site.project.clone());
    let port = free_port();
    std::fs::write(
        site.config(),
        config(
            &site.project,
            port,
            "    restart:\n      policy: on-failure\n      initial_delay_ms: 200\n      multiplier: 2\n      max_restarts: 2\n      window_seconds: 600\n",
        ),
    )
    .unwrap();
    let (code, out) = site.run(&["validate"]);
    assert_eq!(code, 0, "a container takes health-driven restarts: {out}");
    let (code, out) = site.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let ids = site.containers();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids[0].clone();
    let file = site.status_file("web", &id);
    let first = wait_status(&file, "the monitor runs", |s| {
        s.state == MonitorState::Running
    });
    assert_eq!(first.container_id.as_deref(), Some(id.as_str()));
    assert_eq!(monitors(&site.project), vec![first.monitor_pid]);
    assert_eq!(body(port).as_deref(), Some("version=v1"));

    // Two failed probes in a row: stopped and started again, healthy.
    for n in 1..=2u32 {
        break_health(&id);
        let s = wait_status(&file, "a health-driven restart", |s| {
            s.restarts == n && s.state == MonitorState::Running
        });
        let exit = s.last_exit.clone().unwrap();
        assert_eq!(exit.reason, "unhealthy", "{s:#?}");
        assert_eq!(exit.code, Some(143), "{s:#?}");
        assert_eq!(s.recent.last().unwrap().delay_ms, 200 * 2u64.pow(n - 1));
        assert_eq!(s.monitor_pid, first.monitor_pid, "the same monitor");
        assert!(
            wait_until(Duration::from_secs(30), || body(port).as_deref()
                == Some("version=v1")),
            "restart {n} serves again"
        );
        assert_eq!(site.containers(), vec![id.clone()], "the same container");
        let (code, out) = site.run(&["status"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("restarts {n}")), "{out}");
        assert!(out.contains("last exit: unhealthy (exit 143)"), "{out}");
    }

    // The third within the window opens the circuit: the container stays
    // stopped and the monitor ends.
    break_health(&id);
    let s = wait_status(&file, "the circuit opens", |s| {
        s.state == MonitorState::CircuitOpen
    });
    assert_eq!(s.restarts, 2, "{s:#?}");
    assert!(
        wait_until(Duration::from_secs(10), || monitors(&site.project)
            .is_empty()),
        "the monitor ends with an open circuit"
    );
    assert!(body(port).is_none(), "the container is stopped");
    let (_, out) = site.run(&["status"]);
    assert!(out.contains("failed (circuit open)"), "{out}");
    let (_, json) = site.run(&["status", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let m = &v["services"][0]["instances"][0]["monitor"];
    assert_eq!(m["circuit_open"], true, "{json}");
    assert_eq!(m["restarts"], 2, "{json}");
    let (_, metrics) = site.run(&["metrics"]);
    assert!(
        metrics.contains(&format!(
            "deploy_code_service_circuit_open{{project=\"{}\",service=\"web\"}} 1",
            site.project
        )) && metrics.contains(&format!(
            "deploy_code_service_restarts_total{{project=\"{}\",service=\"web\"}} 2",
            site.project
        )),
        "{metrics}"
    );

    // The restarts and the open circuit are events of the state.
    let events = restart_events(&site);
    assert_eq!(
        events.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        ["failed", "succeeded", "succeeded"],
        "{events:?}"
    );
    assert!(
        events[0]
            .2
            .contains("circuit open after unhealthy (exit 143)"),
        "{events:?}"
    );
    assert!(
        events[1].2.contains("restart 2 after unhealthy (exit 143)"),
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.0 > 0), "{events:?}");

    // The next apply replaces the exited container, with a new monitor.
    let (code, out) = site.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || body(port).as_deref()
            == Some("version=v1")),
        "the next apply serves again"
    );
    let ids = site.containers();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(ids[0], id, "a new container");
    assert!(
        wait_until(Duration::from_secs(10), || monitors(&site.project).len()
            == 1),
        "one monitor, of the new container"
    );

    assert_eq!(restart_events(&site), events, "recorded once, kept");

    let (code, out) = site.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        monitors(&site.project).is_empty(),
        "destroy stops the monitor"
    );
    assert!(
        site.containers().is_empty(),
        "destroy removes the container"
    );
}

/// A run killed after it started a monitored container, its monitor killed
/// with it (a kill of the run's whole control group, as a cancelled CI job
/// or `systemctl kill` does; the monitor runs in a session of its own, so a
/// kill of `deploy-code` alone leaves it running): the next run's
/// reconciliation adopts the container and starts its monitor again, which
/// restarts it when its health fails; the next `apply` replaces the
/// adopted (pending) container and leaves one monitor, the new container's.
#[tokio::test(flavor = "multi_thread")]
async fn an_adopted_container_gets_its_monitor_again() {
    let test = "an_adopted_container_gets_its_monitor_again";
    let Some(_engine) = engine(test).await else {
        return;
    };
    let site = Site::new("hadopt");
    let _stop = Stop(site.project.clone());
    let port = free_port();
    std::fs::write(
        site.config(),
        config(
            &site.project,
            port,
            "    restart:\n      policy: on-failure\n      initial_delay_ms: 200\n      max_restarts: 5\n      window_seconds: 600\n",
        ),
    )
    .unwrap();
    let (code, out) = site.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let first = site.containers();
    assert_eq!(first.len(), 1, "{first:?}");

    // A replace (stop-first: a fixed host port) killed once the new
    // container runs, before the state records it.
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(site.dir.path())
        .arg("-c")
        .arg(site.config())
        .args(["apply", "--auto-approve", "--replace", "web"])
        .env("DEPLOY_CODE_FAILPOINT", "after-start")
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "killed at the failpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = site
        .containers()
        .into_iter()
        .filter(|c| !first.contains(c))
        .collect();
    assert_eq!(left.len(), 1, "the new container: {left:?}");
    let adopted = left[0].clone();
    let lost = monitors(&site.project);
    assert_eq!(lost.len(), 1, "the new container's monitor: {lost:?}");
    for pid in &lost {
        // SAFETY: the monitor of this test's container.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), || monitors(&site.project)
            .is_empty()),
        "the monitor is gone"
    );

    // The next run's reconciliation (here `cleanup`) adopts the container
    // and watches it again.
    let (code, out) = site.run(&["cleanup", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("adopted"), "{out}");
    assert!(
        site.containers().contains(&adopted),
        "the adopted container runs on"
    );
    let file = site.status_file("web", &adopted);
    let watched = wait_status(&file, "the adopted container's monitor runs", |s| {
        s.state == MonitorState::Running && !lost.contains(&s.monitor_pid)
    });
    assert_eq!(watched.container_id.as_deref(), Some(adopted.as_str()));
    assert_eq!(monitors(&site.project), vec![watched.monitor_pid]);
    assert!(
        wait_until(Duration::from_secs(30), || body(port).as_deref()
            == Some("version=v1")),
        "the adopted container serves"
    );
    break_health(&adopted);
    let s = wait_status(&file, "a health-driven restart", |s| {
        s.restarts == 1 && s.state == MonitorState::Running
    });
    assert_eq!(s.last_exit.unwrap().reason, "unhealthy");
    assert_eq!(s.monitor_pid, watched.monitor_pid);
    assert!(
        wait_until(Duration::from_secs(30), || body(port).as_deref()
            == Some("version=v1")),
        "it serves again after the restart"
    );

    // The adopted container is pending: the next apply replaces it, its
    // monitor stopped with it, and the new container has one of its own.
    let (code, out) = site.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let now = site.containers();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], adopted, "replaced");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = monitors(&site.project);
            m.len() == 1 && m[0] != watched.monitor_pid
        }),
        "one monitor, of the new container: {:?}",
        monitors(&site.project)
    );
    let (code, out) = site.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(monitors(&site.project).is_empty(), "{out}");
}
