//! The `deploy-code` binary end to end: saved plans, the lock, SIGKILL at any
//! point, SIGINT, secrets in output.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deploy_code::backends::Backend;
use deploy_code::backends::process::ProcessBackend;

use super::common::*;

struct Project {
    dir: tempfile::TempDir,
    name: String,
    ports: Vec<u16>,
}

impl Project {
    /// Three services in three phases: a -> b -> c, each an HTTP server that is
    /// ready after `delay_ms`.
    fn new(test: &str, delay_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = Self {
            name: project(test),
            dir,
            ports: vec![free_port(), free_port(), free_port()],
        };
        p.write(delay_ms, "v1", "");
        p
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("deploy-code.yaml")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join(".deploy-code/state.db")
    }

    fn write(&self, delay_ms: u64, version: &str, secret: &str) {
        let py = python();
        let mut s = format!(
            "version: \"1.0.0\"\nproject: {}\nenvironment: test\ndeployment:\n  max_parallel: 4\n  timeout_seconds: 60\n  stop_grace_seconds: 2\n  rollback_timeout_seconds: 30\nservices:\n",
            self.name
        );
        let names = ["a", "b", "c"];
        for (i, n) in names.iter().enumerate() {
            let port = self.ports[i];
            let script = format!(
                "import time,http.server\\ntime.sleep({})\\nhttp.server.ThreadingHTTPServer(('127.0.0.1',{port}),http.server.SimpleHTTPRequestHandler).serve_forever()",
                delay_ms as f64 / 1000.0
            );
            s.push_str(&format!(
                "  {n}:\n    command: {py}\n    args: [\"-c\", \"{script}\"]\n    env:\n      VERSION: \"{version}\"\n"
            ));
            if !secret.is_empty() {
                s.push_str("      API_TOKEN: \"{{ secret('API_TOKEN') }}\"\n");
            }
            if i > 0 {
                s.push_str(&format!("    dependencies: [{}]\n", names[i - 1]));
            }
            s.push_str(&format!(
                "    ports:\n      - container_port: {port}\n    health_check:\n      endpoint: /\n      interval_seconds: 1\n      timeout_seconds: 1\n      retries: 3\n"
            ));
        }
        std::fs::write(self.config(), s).unwrap();
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_deploy-code"));
        c.current_dir(self.dir.path())
            .arg("-c")
            .arg(self.config())
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG");
        c
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd().args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn processes(&self) -> Vec<(String, u32, Option<String>)> {
        let mut v: Vec<_> = ProcessBackend::new()
            .discover(&self.name)
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.liveness == deploy_code::backends::Liveness::Running)
            .map(|d| (d.service.to_string(), pid_of(&d.handle), d.spec_hash))
            .collect();
        v.sort();
        v
    }

    /// The processes on the host are exactly those the state records.
    async fn assert_host_matches_state(&self) {
        let snap = deploy_code::state::load_snapshot(&self.state()).unwrap();
        let mut expected = Vec::new();
        for r in snap.services.values() {
            for h in &r.handles {
                expected.push((r.name.to_string(), pid_of(h), Some(r.spec_hash.clone())));
            }
        }
        expected.sort();
        assert_eq!(self.processes().await, expected, "no orphan, no ghost");
    }

    async fn serving(&self) -> bool {
        for p in &self.ports {
            match deploy_code::net::get(format!("http://127.0.0.1:{p}/")).await {
                Ok(r) if r.status().is_success() => {}
                _ => return false,
            }
        }
        true
    }

    async fn kill_all(&self) {
        for d in ProcessBackend::new().discover(&self.name).await.unwrap() {
            unsafe {
                libc::kill(-(pid_of(&d.handle) as i32), libc::SIGKILL);
            }
        }
    }
}

impl Drop for Project {
    /// Stops what the test started, also when it failed half-way.
    fn drop(&mut self) {
        crate::support::kill_project(&self.name);
    }
}

#[tokio::test]
async fn apply_then_no_changes_then_destroy() {
    let p = Project::new("cli-basic", 0);
    let (code, out, err) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(p.serving().await);
    p.assert_host_matches_state().await;
    let (code, out, _) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("No changes") || out.contains("unchanged"),
        "{out}"
    );
    let (code, _, err) = p.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{err}");
    assert!(p.processes().await.is_empty());
    p.kill_all().await;
}

#[tokio::test]
async fn unattended_apply_without_auto_approve_is_refused() {
    let p = Project::new("cli-unattended", 0);
    let (code, _, err) = p.run(&["apply"]);
    assert_eq!(code, 1);
    assert!(err.contains("--auto-approve"), "{err}");
    assert!(p.processes().await.is_empty(), "nothing started");
}

#[tokio::test]
async fn a_stale_saved_plan_is_refused() {
    let p = Project::new("cli-stale", 0);
    let plan = p.dir.path().join("release.plan");
    let (code, _, err) = p.run(&["plan", "--out", plan.to_str().unwrap()]);
    assert!(code == 0 || code == 2, "{err}");
    // Someone else applies first: the state moves on.
    let (code, _, err) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{err}");
    let pids = p.processes().await;
    let (code, _, err) = p.run(&["apply", plan.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E013") && err.contains("stale"), "{err}");
    assert_eq!(p.processes().await, pids, "nothing changed");
    p.kill_all().await;
}

#[tokio::test]
async fn a_fresh_saved_plan_is_applied() {
    let p = Project::new("cli-saved", 0);
    let plan = p.dir.path().join("release.plan");
    let (code, _, err) = p.run(&["plan", "--out", plan.to_str().unwrap()]);
    assert!(code == 0 || code == 2, "{err}");
    let (code, _, err) = p.run(&["apply", plan.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(p.serving().await);
    p.assert_host_matches_state().await;
    p.kill_all().await;
}

#[tokio::test]
async fn two_concurrent_applies_cannot_both_run() {
    let p = Project::new("cli-lock", 1500);
    let mut first = p
        .cmd()
        .args(["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first run holds the lock (its first process is up).
    let t = Instant::now();
    while p.processes().await.is_empty() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _, err) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E011"), "{err}");
    assert_eq!(first.wait().unwrap().code(), Some(0));
    p.assert_host_matches_state().await;
    p.kill_all().await;
}

async fn kill_at(p: &Project, after: Duration) {
    let mut child = p
        .cmd()
        .args(["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(after).await;
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

#[tokio::test]
async fn sigkill_at_any_point_leaves_a_state_the_next_apply_converges_from() {
    let p = Project::new("cli-sigkill", 300);
    for (i, ms) in [60u64, 250, 450, 700, 1000].into_iter().enumerate() {
        // Alternate between two versions so that later runs replace.
        p.write(300, if i % 2 == 0 { "v1" } else { "v2" }, "");
        kill_at(&p, Duration::from_millis(ms)).await;
        // The next apply accounts for every process and converges.
        let (code, out, err) = p.run(&["apply", "--auto-approve"]);
        assert_eq!(code, 0, "after SIGKILL at {ms} ms:\n{out}\n{err}");
        assert!(p.serving().await, "after SIGKILL at {ms} ms");
        p.assert_host_matches_state().await;
        let (code, out, _) = p.run(&["apply", "--auto-approve"]);
        assert_eq!(code, 0);
        assert!(
            out.contains("unchanged") || out.contains("No changes"),
            "{out}"
        );
    }
    p.kill_all().await;
}

#[tokio::test]
async fn sigint_rolls_back_and_exits_4() {
    let p = Project::new("cli-sigint", 0);
    assert_eq!(p.run(&["apply", "--auto-approve"]).0, 0);
    let before = p.processes().await;
    p.write(3000, "v2", "");
    let child = p
        .cmd()
        .args(["apply", "--auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Interrupt once the new `a` runs (it is ready only after 3 s), so that
    // there is a replacement to roll back.
    let old_hashes: Vec<_> = before.iter().map(|x| x.2.clone()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !p
        .processes()
        .await
        .iter()
        .any(|x| x.0 == "a" && !old_hashes.contains(&x.2))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new `a` never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(p.serving().await, "the previous deployment serves");
    p.assert_host_matches_state().await;
    let after = p.processes().await;
    assert_eq!(
        after.iter().map(|x| (&x.0, &x.2)).collect::<Vec<_>>(),
        before.iter().map(|x| (&x.0, &x.2)).collect::<Vec<_>>(),
        "the same specs run as before"
    );
    p.kill_all().await;
}

#[tokio::test]
async fn a_secret_canary_never_appears_in_output_or_state() {
    let p = Project::new("cli-canary", 0);
    let canary = format!("canary-{}-5e1f", std::process::id());
    p.write(0, "v1", "yes");
    let mut all = String::new();
    for args in [
        vec!["apply", "--auto-approve"],
        vec!["--format", "json", "apply", "--auto-approve"],
        vec!["status", "--detailed"],
        vec!["--format", "json", "status"],
        vec!["health"],
    ] {
        let out = p
            .cmd()
            .args(&args)
            .env("API_TOKEN", &canary)
            .output()
            .unwrap();
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // Change the secret: a replace whose output must not show either value.
    let out = p
        .cmd()
        .args(["apply", "--auto-approve"])
        .env("API_TOKEN", format!("{canary}-2"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    all.push_str(&String::from_utf8_lossy(&out.stdout));
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    all.push_str(&crate::support::text_outside_logs(p.dir.path()));
    assert!(!all.contains(&canary), "canary leaked");
    p.kill_all().await;
}

#[tokio::test]
async fn rollback_returns_to_the_previous_successful_revision() {
    let p = Project::new("cli-rollback", 0);
    let canary = format!("canary-{}-rb", std::process::id());
    p.write(0, "v1", "yes");
    let run = |args: &[&str]| {
        let out = p
            .cmd()
            .args(args)
            .env("API_TOKEN", &canary)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["apply", "-y"]).0, Some(0));
    let v1: Vec<_> = deploy_code::state::load_snapshot(&p.state())
        .unwrap()
        .services
        .values()
        .map(|r| r.spec_hash.clone())
        .collect();
    p.write(0, "v2", "yes");
    assert_eq!(run(&["apply", "-y"]).0, Some(0));
    let (code, err) = run(&["rollback", "-y"]);
    assert_eq!(code, Some(0), "{err}");
    let now: Vec<_> = deploy_code::state::load_snapshot(&p.state())
        .unwrap()
        .services
        .values()
        .map(|r| r.spec_hash.clone())
        .collect();
    assert_eq!(now, v1, "the specs of revision 1 run again");
    assert!(p.serving().await);
    p.assert_host_matches_state().await;
    // The secret came from the current configuration.
    let snap = deploy_code::state::load_snapshot(&p.state()).unwrap();
    let pid = pid_of(&snap.services["a"].handles[0]);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains(&canary));
    assert!(!err.contains(&canary));
    p.kill_all().await;
}

#[tokio::test]
async fn json_format_emits_one_event_per_line() {
    let p = Project::new("cli-json", 0);
    let (code, out, err) = p.run(&["--format", "json", "apply", "--auto-approve"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"plan"));
    assert_eq!(kinds.last(), Some(&"finished"));
    assert_eq!(events.last().unwrap()["outcome"], "succeeded");
    assert_eq!(kinds.iter().filter(|k| **k == "phase_finished").count(), 3);
    assert!(
        events
            .iter()
            .all(|e| e["at"].is_string() || e["event"] == "plan")
    );
    p.kill_all().await;
}

#[tokio::test]
async fn a_failing_apply_prints_its_evidence_and_exits_4() {
    let p = Project::new("cli-evidence", 0);
    assert_eq!(p.run(&["apply", "--auto-approve"]).0, 0);
    // Break c: its command exits at once after printing a reason.
    let text = std::fs::read_to_string(p.config()).unwrap();
    let broken = text.replacen("  c:\n", "  c:\n    working_dir: .\n", 1);
    let broken = broken.replace(
        &format!("('127.0.0.1',{})", p.ports[2]),
        &format!(
            "('127.0.0.1',{}) if False else print('fatal: bad config') or exit(3)",
            p.ports[2]
        ),
    );
    std::fs::write(p.config(), broken).unwrap();
    let (code, _, err) = p.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("E006"), "{err}");
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(
        err.contains("fatal: bad config"),
        "the log tail is shown: {err}"
    );
    let history = deploy_code::state::history(&p.state(), 10).unwrap();
    assert_eq!(history[0].outcome, deploy_code::state::Outcome::RolledBack);
    assert!(
        history[0]
            .evidence
            .to_string()
            .contains("fatal: bad config")
    );
    assert!(p.serving().await);
    p.assert_host_matches_state().await;
    p.kill_all().await;
}
