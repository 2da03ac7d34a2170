//! Containers behind a traffic switch: busybox `httpd` on container port
//! 8080, the fixed host port 18302, updated under a request loop.

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

fn config(project: &str, strategy: &str, replicas: u32) -> String {
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
    ports: [{{container_port: 8080, host_port: {PORT}}}]
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
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.deploy-code.project={}", self.project),
            ])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

fn case(test: &str, strategy: &str, replicas: u32) {
    let dir = tempfile::tempdir().unwrap();
    let project = format!("{}-{}", project(test), strategy.to_lowercase());
    let _cleanup = Cleanup {
        dir: dir.path(),
        project: project.clone(),
    };
    std::fs::write(
        dir.path().join("deploy-code.yaml"),
        config(&project, strategy, replicas),
    )
    .unwrap();
    let (code, out) = run(dir.path(), "v1", &["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(PORT).as_deref(), Some("v1"), "{out}");
    for version in ["v2", "v3"] {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let requests = std::thread::spawn(move || {
            let (mut ok, mut failed, mut seen) = (0u64, 0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match get(PORT) {
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
        assert_eq!(failed, 0, "{strategy}: failed requests: {seen:?}");
        assert!(ok >= 10, "{strategy}: the loop ran ({ok} answered)");
        assert_eq!(serves(PORT).as_deref(), Some(version), "{out}");
    }
    let (code, out) = run(dir.path(), "v3", &["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(get(PORT).is_none(), "the port is free after destroy");
}

/// Both strategies on the one fixed port, one after the other.
#[tokio::test(flavor = "multi_thread")]
async fn containers_keep_the_fixed_port_answering_under_blue_green_and_rolling_update() {
    let Some(_b) = engine("containers_keep_the_fixed_port_answering").await else {
        return;
    };
    tokio::task::spawn_blocking(|| {
        case("sw", "BlueGreen", 1);
        case("sw", "RollingUpdate", 3);
    })
    .await
    .unwrap();
}
