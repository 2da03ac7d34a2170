//! The monitor of a process under a restart policy, tried through the real
//! binary: crashes (SIGKILL, exits) are restarted with the configured
//! back-off, the back-off resets after a healthy window, the circuit opens
//! after too many restarts and the next apply closes it, failing health
//! checks restart the instance, and killing the monitor stops the service.

use std::path::PathBuf;
use std::time::Duration;

use deploy_code::monitor::{MonitorState, MonitorStatus, read_status};

use super::common::*;
use super::verdict::{Site, server_script, serves, wait_until};

fn status_file(site: &Site) -> PathBuf {
    site.dir
        .path()
        .join(".deploy-code/logs/web.log.monitor.json")
}

/// The status the monitor of `web` writes, once it says `cond`.
fn wait_status(site: &Site, what: &str, cond: impl Fn(&MonitorStatus) -> bool) -> MonitorStatus {
    let path = status_file(site);
    let ok = wait_until(Duration::from_secs(30), || {
        read_status(&path).is_some_and(|s| cond(&s))
    });
    let now = read_status(&path);
    assert!(ok, "{what}: the monitor's status is {now:#?}");
    now.unwrap()
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: plain syscall on a pid this test started (through the tool).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// `web` serving its version on `port`, restarted as `restart` says.
fn web(site: &Site, port: u16, restart: &str, extra: &str) -> String {
    format!(
        "{}  web:\n    command: {}\n    args: [\"{}\", \"{port}\", \"v1\"]\n    ports: [{{container_port: {port}}}]\n{restart}{extra}",
        site.header(),
        python(),
        server_script(),
    )
}

/// The exact form of the configuration keys: a SIGKILLed service is back,
/// serving, after the configured pause; the pauses grow by the multiplier;
/// `status` shows the restarts and the last exit.
#[test]
fn a_killed_process_is_restarted_with_backoff() {
    let site = Site::new("mon-kill");
    let port = free_port();
    site.write(&web(
        &site,
        port,
        "    restart:\n      policy: always\n      initial_delay_ms: 100\n      max_delay_seconds: 30\n      multiplier: 2\n      reset_after_seconds: 60\n      max_restarts: 10\n      window_seconds: 60\n",
        "    health_check: {endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2}\n",
    ));
    site.apply_ok();
    site.assert_consistent("after apply");
    let first = wait_status(&site, "first start", |s| s.child_pid.is_some());
    let monitor = first.monitor_pid;
    assert_eq!(
        site.recorded()[0].1,
        monitor,
        "the state records the monitor"
    );
    let mut child = first.child_pid.unwrap();
    for n in 1..=3u32 {
        assert_eq!(serves(port).as_deref(), Some("version=v1"));
        kill(child, libc::SIGKILL);
        let s = wait_status(&site, "restart", |s| {
            s.restarts == n && s.child_pid.is_some_and(|p| p != child)
        });
        child = s.child_pid.unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || serves(port).is_some()),
            "restart {n} serves again"
        );
        let last = s.recent.last().unwrap();
        assert_eq!(last.delay_ms, 100 * 2u64.pow(n - 1), "{s:#?}");
        assert_eq!(last.after, "signal 9");
        assert_eq!(s.monitor_pid, monitor, "the same monitor restarts it");
    }
    site.assert_consistent("after the restarts");
    let (code, out) = site.run(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restarts 3"), "{out}");
    assert!(out.contains("last exit: signal 9"), "{out}");
    let (_, json) = site.run(&["status", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let m = &v["services"][0]["instances"][0]["monitor"];
    assert_eq!(m["restarts"], 3, "{json}");
    assert_eq!(m["circuit_open"], false, "{json}");
    let (code, out) = site.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(!alive(monitor) && !alive(child), "destroy stops both");
}

/// After the instance has been healthy for `reset_after_seconds`, the next
/// restart waits `initial_delay_ms` again (systemd's back-off never resets).
#[test]
fn the_backoff_resets_after_a_healthy_window() {
    let site = Site::new("mon-reset");
    let port = free_port();
    site.write(&web(
        &site,
        port,
        "    restart: {policy: on-failure, initial_delay_ms: 100, multiplier: 4, reset_after_seconds: 2, max_restarts: 10}\n",
        "    health_check: {endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2}\n",
    ));
    site.apply_ok();
    let mut child = wait_status(&site, "start", |s| s.child_pid.is_some())
        .child_pid
        .unwrap();
    // Two crashes in a row: 100 ms, then 400 ms.
    for n in 1..=2u32 {
        kill(child, libc::SIGKILL);
        child = wait_status(&site, "restart", |s| {
            s.restarts == n && s.child_pid.is_some_and(|p| p != child)
        })
        .child_pid
        .unwrap();
    }
    let s = wait_status(&site, "two restarts", |s| s.restarts == 2);
    assert_eq!(
        s.recent.iter().map(|r| r.delay_ms).collect::<Vec<_>>(),
        [100, 400]
    );
    assert_eq!(s.backoff_ms, 1600, "the next pause without a reset");
    // Healthy for 2 s: the pause is back at the start.
    let s = wait_status(&site, "reset", |s| s.backoff_ms == 100);
    assert_eq!(s.state, MonitorState::Running);
    kill(child, libc::SIGKILL);
    let s = wait_status(&site, "restart after the reset", |s| s.restarts == 3);
    assert_eq!(s.recent.last().unwrap().delay_ms, 100, "{s:#?}");
    site.teardown();
}

/// Too many restarts within the window open the circuit: nothing restarts
/// the service, `status` says `failed (circuit open)`, `plan` sees the drift
/// and the next apply starts it again with a closed circuit.
#[test]
fn the_circuit_opens_and_the_next_apply_closes_it() {
    let site = Site::new("mon-circuit");
    site.write(&format!(
        "{}  web:\n    command: /bin/busybox\n    args: [sh, -c, \"sleep 0.3; exit 3\"]\n    restart: {{policy: on-failure, initial_delay_ms: 50, multiplier: 2, max_restarts: 3, window_seconds: 60}}\n",
        site.header()
    ));
    site.apply_ok();
    let s = wait_status(&site, "circuit", |s| s.state == MonitorState::CircuitOpen);
    assert_eq!(s.restarts, 3);
    assert_eq!(
        s.recent.iter().map(|r| r.delay_ms).collect::<Vec<_>>(),
        [50, 100, 200]
    );
    assert_eq!(s.last_exit.as_ref().unwrap().code, Some(3));
    assert!(
        wait_until(Duration::from_secs(10), || !alive(s.monitor_pid)),
        "the monitor gives up"
    );
    let (_, out) = site.run(&["status"]);
    assert!(out.contains("failed (circuit open)"), "{out}");
    let (code, metrics) = site.run(&["metrics"]);
    assert_eq!(code, 0, "{metrics}");
    let sample = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("service=\"web\""))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(
        sample("deploy_code_service_restarts_total").as_deref(),
        Some("3"),
        "{metrics}"
    );
    assert_eq!(
        sample("deploy_code_service_circuit_open").as_deref(),
        Some("1"),
        "{metrics}"
    );
    let (code, events) = site.run(&["state", "show", "web"]);
    assert_eq!(code, 0, "{events}");
    for n in 1..=3 {
        assert!(
            events.contains(&format!("restart {n} after exit 3")),
            "{events}"
        );
    }
    assert!(events.contains("circuit open after exit 3"), "{events}");
    assert_eq!(site.plan_code(), 2, "plan sees the service down");
    let (_, plan) = site.run(&["plan"]);
    assert!(
        plan.contains("failed (circuit open), last exit: exit 3"),
        "{plan}"
    );
    site.apply_ok();
    let old = s.monitor_pid;
    // A new monitor with a closed circuit and a fresh back-off, which
    // opens again as configured.
    let again = wait_status(&site, "a new monitor", |n| {
        n.monitor_pid != old && n.state == MonitorState::CircuitOpen
    });
    assert_eq!(
        again.recent.iter().map(|r| r.delay_ms).collect::<Vec<_>>(),
        [50, 100, 200]
    );
    site.teardown();
}

/// `health_check.restart_after_failures`: a running instance whose probe
/// keeps failing is restarted by its monitor.
#[test]
fn failing_health_checks_restart_the_instance() {
    let site = Site::new("mon-health");
    let sick = site.dir.path().join("sick");
    let check = format!(
        "    health_check:\n      command: [/bin/busybox, sh, -c, \"test ! -e {}\"]\n      interval_seconds: 1\n      timeout_seconds: 1\n      retries: 2\n      restart_after_failures: 2\n",
        sick.display()
    );
    site.write(&format!(
        "{}  web:\n    command: /bin/busybox\n    args: [sleep, \"1000\"]\n    restart: on-failure\n{check}",
        site.header()
    ));
    site.apply_ok();
    let first = wait_status(&site, "start", |s| s.child_pid.is_some());
    std::fs::write(&sick, "").unwrap();
    let s = wait_status(&site, "health-driven restart", |s| s.restarts >= 1);
    let exit = s.last_exit.clone().unwrap();
    assert_eq!(exit.reason, "unhealthy", "{s:#?}");
    assert!(!alive(first.child_pid.unwrap()), "the sick child is gone");
    std::fs::remove_file(&sick).unwrap();
    let s = wait_status(&site, "healthy again", |s| {
        s.child_pid.is_some() && s.probe_failures == 0 && s.state == MonitorState::Running
    });
    assert!(alive(s.child_pid.unwrap()));
    site.teardown();
}

/// A hung instance (SIGSTOP: it still accepts connections, it answers
/// nothing) is seen by probes a tenth of a second apart and restarted: the
/// stopped child ends on its SIGTERM (it is continued), and a new one serves.
#[test]
fn a_hung_instance_is_restarted_after_sub_second_probes() {
    let site = Site::new("mon-hang");
    let port = free_port();
    std::fs::write(site.dir.path().join("index.html"), "ok\n").unwrap();
    site.write(&format!(
        "{}  web:\n    command: /bin/busybox\n    args: [httpd, -f, -p, \"127.0.0.1:{port}\", -h, \"{}\"]\n    ports: [{{container_port: {port}}}]\n    restart: {{policy: always, initial_delay_ms: 0, max_restarts: 10}}\n    health_check: {{endpoint: /, interval_seconds: 0.1, timeout_seconds: 0.5, retries: 3, start_period_seconds: 1, restart_after_failures: 2}}\n",
        site.header(),
        site.dir.path().display()
    ));
    site.apply_ok();
    let first = wait_status(&site, "start", |s| s.child_pid.is_some());
    let hung = first.child_pid.unwrap();
    kill(hung, libc::SIGSTOP);
    let s = wait_status(&site, "health-driven restart", |s| {
        s.restarts >= 1 && s.child_pid.is_some_and(|p| p != hung)
    });
    let exit = s.last_exit.clone().unwrap();
    assert_eq!(exit.reason, "unhealthy", "{s:#?}");
    assert_eq!(exit.signal, Some(libc::SIGTERM), "{s:#?}");
    assert_eq!(s.recent[0].delay_ms, 0, "{s:#?}");
    assert!(
        wait_until(Duration::from_secs(10), || !alive(hung)),
        "the hung child is gone"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut c| {
            use std::io::{Read, Write};
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 12];
            c.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
                && c.read_exact(&mut buf).is_ok()
                && &buf[9..12] == b"200"
        })
    }));
    site.teardown();
}

/// Killing the monitor stops the service: nothing is left behind.
#[test]
fn killing_the_monitor_stops_the_service() {
    let site = Site::new("mon-orphan");
    let port = free_port();
    site.write(&web(&site, port, "    restart: always\n", ""));
    site.apply_ok();
    let s = wait_status(&site, "start", |s| s.child_pid.is_some());
    let child = s.child_pid.unwrap();
    assert!(wait_until(Duration::from_secs(10), || serves(port).is_some()));
    kill(s.monitor_pid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(child)),
        "the service outlived its monitor"
    );
    assert!(site.marked().is_empty(), "{:?}", site.marked());
    assert_eq!(site.plan_code(), 2, "plan sees the service gone");
    site.teardown();
}

/// The monitor keeps its own allocator off transparent huge pages; the
/// service it starts keeps the host's setting and never sees the variable
/// that asked for it.
#[test]
fn the_monitors_allocator_setting_is_not_the_services() {
    let site = Site::new("mon-thp");
    let port = free_port();
    site.write(&web(&site, port, "    restart: always\n", ""));
    site.apply_ok();
    let s = wait_status(&site, "start", |s| s.child_pid.is_some());
    let child = s.child_pid.unwrap();
    let thp = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_owned()))
    };
    let (var, _) = deploy_code::procfs::SMALL_HEAP_ENV;
    let environ = |pid: u32| std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let names = |pid: u32| {
        environ(pid)
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(format!("{var}=").as_bytes()))
    };
    assert!(names(s.monitor_pid), "the monitor is started with {var}");
    assert!(!names(child), "the service's environment holds {var}");
    // Kernels without the field (before 6.x) say nothing either way.
    if let (Some(monitor), Some(service)) = (thp(s.monitor_pid), thp(child)) {
        assert_eq!(monitor, "0", "the monitor's allocator asked for no THP");
        assert_eq!(
            service, "1",
            "the service inherited the monitor's THP setting"
        );
    }
    site.teardown();
}

/// A monitored service given a secret: the monitor passes it to every
/// restart of its child, its own arguments, environment and status file
/// never hold it, and what the child prints of it is redacted in the log.
#[test]
fn the_monitor_keeps_secrets_out_of_its_files() {
    const CANARY: &str = "canary-monitor-8c1f-plugh";
    let site = Site::new("mon-secret");
    site.write(&format!(
        "{}  web:\n    command: /bin/busybox\n    args: [sh, -c, \"echo the token is $TOKEN; sleep 0.8; exit 3\"]\n    env: {{TOKEN: \"{{{{ secret('API_TOKEN') }}}}\"}}\n    restart: {{policy: on-failure, initial_delay_ms: 50, max_restarts: 2}}\n",
        site.header()
    ));
    let (code, out) = site.run_with(&["apply", "--auto-approve"], &[("API_TOKEN", CANARY)]);
    assert_eq!(code, 0, "{out}");
    let running = wait_status(&site, "running", |s| s.child_pid.is_some());
    let proc_text = |pid: u32, file: &str| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default())
            .into_owned()
    };
    for file in ["cmdline", "environ"] {
        assert!(
            !proc_text(running.monitor_pid, file).contains(CANARY),
            "the monitor's {file} holds the secret"
        );
    }
    let s = wait_status(&site, "circuit", |s| s.state == MonitorState::CircuitOpen);
    assert_eq!(s.restarts, 2);
    let log = std::fs::read_to_string(site.dir.path().join(".deploy-code/logs/web.log")).unwrap();
    assert_eq!(
        log.matches("the token is (sensitive)").count(),
        3,
        "every run got the secret, redacted in the log:\n{log}"
    );
    let dir = site.dir.path().join(".deploy-code");
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
                assert!(!text.contains(CANARY), "{} holds the secret", p.display());
            }
        }
    }
    for args in [
        vec!["status", "--format", "json"],
        vec!["state", "show", "web"],
    ] {
        let (_, out) = site.run_with(&args, &[("API_TOKEN", CANARY)]);
        assert!(!out.contains(CANARY), "{args:?}: {out}");
    }
    site.teardown();
}

/// `on-failure` leaves a clean exit alone: the monitor ends as its child
/// did, and says so.
#[test]
fn on_failure_leaves_a_clean_exit_alone() {
    let site = Site::new("mon-clean");
    site.write(&format!(
        "{}  web:\n    command: /bin/busybox\n    args: [sh, -c, \"sleep 1.5; exit 0\"]\n    restart: on-failure\n",
        site.header()
    ));
    site.apply_ok();
    let s = wait_status(&site, "exited", |s| s.state == MonitorState::Exited);
    assert_eq!(s.restarts, 0);
    assert_eq!(s.last_exit.as_ref().and_then(|e| e.code), Some(0));
    assert!(
        wait_until(Duration::from_secs(10), || !alive(s.monitor_pid)),
        "the monitor ends with its child"
    );
    site.teardown();
}

/// The `restart` events of `web` in the state (`state show web`), newest
/// first: id, outcome, message.
fn restart_events(site: &Site) -> Vec<(i64, String, String)> {
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

/// Restarts become events of the state: `status`, `state show`, `metrics`
/// and `apply` import them from the monitors' status files, each once, and
/// they stay after the instance is replaced by a new monitor.
#[test]
fn restarts_are_recorded_as_state_events_once() {
    let site = Site::new("mon-events");
    let port = free_port();
    let config = |max: u32| {
        web(
            &site,
            port,
            &format!("    restart: {{policy: always, initial_delay_ms: 0, max_restarts: {max}}}\n"),
            "",
        )
    };
    site.write(&config(10));
    site.apply_ok();
    let mut child = wait_status(&site, "start", |s| s.child_pid.is_some())
        .child_pid
        .unwrap();
    for n in 1..=2u32 {
        kill(child, libc::SIGKILL);
        child = wait_status(&site, "restart", |s| {
            s.restarts == n && s.child_pid.is_some_and(|p| p != child)
        })
        .child_pid
        .unwrap();
    }
    let (code, out) = site.run(&["status"]);
    assert_eq!(code, 0, "{out}");
    let events = restart_events(&site);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|(id, outcome, _)| *id > 0 && outcome == "succeeded")
    );
    assert_ne!(events[0].0, events[1].0);
    assert!(
        events[0].2.contains("restart 2 after signal 9"),
        "{events:?}"
    );
    assert!(
        events[1].2.contains("restart 1 after signal 9"),
        "{events:?}"
    );
    // Asked again: nothing is imported twice.
    site.run(&["status"]);
    let (_, metrics) = site.run(&["metrics"]);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("deploy_code_service_restarts_recorded_total{") && l.ends_with("} 2")
        ),
        "{metrics}"
    );
    assert_eq!(restart_events(&site), events);

    // A change replaces the instance: a new monitor counts from 1 again,
    // and the old restarts stay recorded.
    site.write(&config(11));
    site.apply_ok();
    let monitor = wait_status(&site, "a new monitor", |s| {
        s.child_pid.is_some() && s.restarts == 0
    });
    kill(monitor.child_pid.unwrap(), libc::SIGKILL);
    wait_status(&site, "restart", |s| {
        s.restarts == 1 && s.monitor_pid == monitor.monitor_pid
    });
    let (code, out) = site.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let after = restart_events(&site);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after[0].2.contains("restart 1 after signal 9"), "{after:?}");
    assert_eq!(&after[1..], &events[..]);
    let (_, metrics) = site.run(&["metrics"]);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("deploy_code_service_restarts_recorded_total{") && l.ends_with("} 3")
        ),
        "{metrics}"
    );
    site.teardown();
}

/// A back-off past what a clock can add (a multiplier of 1e308, a cap of
/// 9e18 s) is refused by `validate` at the value; a monitor that is gone
/// (killed, so it wrote no last word) is not shown as `running` by its last
/// status file.
#[test]
fn an_overflowing_backoff_is_refused_and_a_gone_monitor_is_not_running() {
    let site = Site::new("mon-gone");
    let port = free_port();
    site.write(&web(
        &site,
        port,
        "    restart: {policy: always, multiplier: 1e308, max_delay_seconds: 9000000000000000000}\n",
        "",
    ));
    let (code, out) = site.run(&["validate"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("`services.web.restart.multiplier` must be at most 100"),
        "{out}"
    );
    assert!(
        out.contains("must be at most 86400, found 9000000000000000000"),
        "{out}"
    );
    site.write(&web(&site, port, "    restart: always\n", ""));
    site.apply_ok();
    let s = wait_status(&site, "start", |s| s.child_pid.is_some());
    let (_, json) = site.run(&["status", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["services"][0]["instances"][0]["monitor"]["state"], "running",
        "{json}"
    );
    kill(s.monitor_pid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(s.monitor_pid)),
        "the monitor is gone"
    );
    // Its status file still says `running`: it had no time to say more.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(status_file(&site)).unwrap()).unwrap();
    assert_eq!(written["state"], "running");
    let (_, json) = site.run(&["status", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let instance = &v["services"][0]["instances"][0];
    assert_eq!(instance["monitor"]["state"], "gone", "{json}");
    assert!(instance["monitor"]["child_pid"].is_null(), "{json}");
    assert_ne!(instance["state"], "running", "{json}");
    let (_, text) = site.run(&["status"]);
    assert!(text.contains("monitor gone"), "{text}");
    site.teardown();
}
