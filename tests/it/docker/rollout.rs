//! Containers behind a traffic switch: busybox `httpd` on container port
//! 8080, the fixed host port 18302 (a free one for `Canary`), updated under
//! a request loop.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::common::*;

const PORT: u16 = 18302;

/// `GET /` on the port: status and body.
fn get(port: u16) -> Option<(u16, String)> {
    let addr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())?;
    Some((status, body))
}

fn serves(port: u16) -> Option<String> {
    get(port).filter(|(s, _)| *s == 200).map(|(_, b)| b)
}

fn config(project: &str, strategy: &str, replicas: u32, port: u16) -> String {
    format!(
        r#"version: "1.0.0"
project: {project}
infrastructure: {{container_runtime: Docker}}
deployment: {{strategy: {strategy}, stop_grace_seconds: 1}}
services:
  web:
    image: {IMAGE}
    replicas: {replicas}
    args: ["sh", "-c", "mkdir -p /tmp/w && echo {{{{ env('SITE') }}}} > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]
    ports: [{{container_port: 8080, host_port: {port}}}]
    health_check: {{endpoint: /}}
"#
    )
}

fn run(dir: &Path, site: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir)
        .arg("-c")
        .arg(dir.join("deploy-code.yaml"))
        .args(args)
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .env("SITE", site)
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

/// Removes the project's containers and the site's switches, by id.
struct Cleanup<'a> {
    dir: &'a Path,
    project: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = run(self.dir, "gone", &["destroy", "--auto-approve"]);
        for pid in deploy_code::procfs::pids() {
            let mine = deploy_code::procfs::environ(pid, "DEPLOY_CODE_SWITCH_")
                .and_then(|e| e.get(deploy_code::switch::marks::ENV_SOCKET).cloned())
                .is_some_and(|s| Path::new(&s).starts_with(self.dir));
            if mine {
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
        // Cleanup never panics: a guard runs while a failed test unwinds.
        let Ok(out) = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.deploy-code.project={}", self.project),
            ])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

/// Two updates of `web` under a request loop against `port`: each one
/// succeeds with no failed request and ends serving its version; `check`
/// looks at each update's output.
fn case(test: &str, strategy: &str, replicas: u32, port: u16, check: &dyn Fn(&str)) {
    let dir = tempfile::tempdir().unwrap();
    let kind = strategy.split(',').next().unwrap_or(strategy);
    let project = format!("{}-{}", project(test), kind.to_lowercase());
    let _cleanup = Cleanup {
        dir: dir.path(),
        project: project.clone(),
    };
    std::fs::write(
        dir.path().join("deploy-code.yaml"),
        config(&project, strategy, replicas, port),
    )
    .unwrap();
    let (code, out) = run(dir.path(), "v1", &["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("v1"), "{out}");
    for version in ["v2", "v3"] {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let requests = std::thread::spawn(move || {
            let (mut ok, mut failed, mut seen) = (0u64, 0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match get(port) {
                    Some((200, _)) => ok += 1,
                    other => {
                        failed += 1;
                        if seen.len() < 5 {
                            seen.push(format!("{other:?}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed, seen)
        });
        let (code, out) = run(dir.path(), version, &["apply", "--auto-approve"]);
        stop.store(true, Ordering::Relaxed);
        let (ok, failed, seen) = requests.join().unwrap();
        assert_eq!(code, 0, "{out}");
        assert_eq!(failed, 0, "{kind}: failed requests: {seen:?}");
        assert!(ok >= 10, "{kind}: the loop ran ({ok} answered)");
        assert_eq!(serves(port).as_deref(), Some(version), "{out}");
        check(&out);
    }
    let (code, out) = run(dir.path(), "v3", &["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(get(port).is_none(), "the port is free after destroy");
}

/// Both strategies on the one fixed port, one after the other.
#[tokio::test(flavor = "multi_thread")]
async fn containers_keep_the_fixed_port_answering_under_blue_green_and_rolling_update() {
    let Some(_b) = engine("containers_keep_the_fixed_port_answering").await else {
        return;
    };
    tokio::task::spawn_blocking(|| {
        case("sw", "BlueGreen", 1, PORT, &|_| {});
        case("sw", "RollingUpdate", 3, PORT, &|_| {});
    })
    .await
    .unwrap();
}

/// `Canary` for a container: the switch sends each step's share of new
/// connections to the new container's address on its network; both steps
/// pass with requests counted for the new set, and the update ends serving
/// the new version alone, with no failed request.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_canary_passes_its_steps_and_serves_the_new_version() {
    let Some(_b) = engine("a_container_canary_passes_its_steps").await else {
        return;
    };
    tokio::task::spawn_blocking(|| {
        let canary = "Canary, canary: {steps: [{weight: 30, pause_seconds: 2}, {weight: 70, pause_seconds: 2}], analysis: {interval_seconds: 1, max_error_rate: 0.01, max_failed_connections: 0.01}}";
        case("cn", canary, 1, free_port(), &|out| {
            for step in ["step 1/2 (30 %) pass", "step 2/2 (70 %) pass"] {
                let line = out
                    .lines()
                    .find(|l| l.contains(step))
                    .unwrap_or_else(|| panic!("no `{step}` in:\n{out}"));
                let counted: u64 = line
                    .split("pass: ")
                    .nth(1)
                    .and_then(|w| w.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no connection count in `{line}`"));
                assert!(counted > 0, "the new container got no connection: {line}");
                assert!(line.contains(" 0 5xx"), "{line}");
            }
            assert!(
                out.contains("web: 1 instance(s) stopped"),
                "the old container stopped: {out}"
            );
        });
    })
    .await
    .unwrap();
}
