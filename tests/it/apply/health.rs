use std::time::{Duration, Instant};

use deploy_code::apply::Cancel;
use deploy_code::apply::health::gate;
use deploy_code::backends::Backend;
use deploy_code::backends::process::ProcessBackend;
use deploy_code::model::{HealthCheck, Probe, Seconds, Workload};

use super::common::*;

fn noop(_: &deploy_code::apply::health::ProbeRecord) {}

#[tokio::test]
async fn a_starting_service_is_probed_fast_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let port = free_port();
    let s = http_spec("web", port, 400);
    let handles = b
        .start(&s, &ctx(dir.path(), &project("ready")))
        .await
        .unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    let out = gate(&b, &s, &handles, &Cancel::new(), 1, None, &noop).await;
    assert!(out.healthy, "{out:?}");
    assert!(out.probes.last().unwrap().detail.contains("200"));
    // Detection: while the instance starts (it sleeps 400 ms first), probes
    // follow the fast back-off, not the configured 1 s interval: several fail
    // before the one that passes, each fewer than an interval after the one
    // before. (How fast, in figures: `cargo bench --bench apply`.)
    let [.., failing, passing] = &out.probes[..] else {
        panic!("a failing probe before the passing one: {out:?}")
    };
    assert!(!failing.healthy && passing.healthy, "{out:?}");
    assert!(
        out.probes.iter().filter(|p| !p.healthy).count() >= 2,
        "{out:?}"
    );
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn a_gate_that_never_passes_fails_with_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let port = free_port();
    let mut s = spec("deaf", &["sleep", "30"]);
    s.health_check = Some(http_check(port, 1, 2));
    let handles = b
        .start(&s, &ctx(dir.path(), &project("never")))
        .await
        .unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    let out = gate(&b, &s, &handles, &Cancel::new(), 1, None, &noop).await;
    assert!(!out.healthy);
    assert!(out.reason.contains("failed 2 times"), "{}", out.reason);
    // Two counted failures one interval (1 s) apart: the verdict's probe
    // comes at least an interval after the gate began, on the gate's clock.
    let last = out.probes.last().expect("probes are kept");
    assert!(last.at_ms >= 1000, "{out:?}");
    assert!(!out.probes.is_empty() && out.probes.len() <= 5);
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn a_process_that_exits_fails_its_gate_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let port = free_port();
    let mut s = spec("crasher", &["sh", "-c", "sleep 0.2; exit 7"]);
    let mut check = http_check(port, 5, 10);
    check.start_period_seconds = 30;
    s.health_check = Some(check);
    let handles = b
        .start(&s, &ctx(dir.path(), &project("crash")))
        .await
        .unwrap();
    // Judged on the exit, not on the probes: those would be counted only
    // after the 30 s start period, and would fail for another reason.
    let out = gate(&b, &s, &handles, &Cancel::new(), 1, None, &noop).await;
    assert!(!out.healthy);
    assert!(out.reason.contains("exited with code 7"), "{}", out.reason);
}

#[tokio::test]
async fn tasks_pass_by_exiting_zero_and_fail_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let mut ok = spec("migrate", &["sh", "-c", "sleep 0.1"]);
    ok.workload = Workload::Task;
    let h = b
        .start(&ok, &ctx(dir.path(), &project("task")))
        .await
        .unwrap();
    assert!(
        gate(&b, &ok, &h, &Cancel::new(), 1, None, &noop)
            .await
            .healthy
    );
    let mut bad = spec("migrate-bad", &["sh", "-c", "exit 2"]);
    bad.workload = Workload::Task;
    let h = b
        .start(&bad, &ctx(dir.path(), &project("task")))
        .await
        .unwrap();
    let out = gate(&b, &bad, &h, &Cancel::new(), 1, None, &noop).await;
    assert!(!out.healthy);
    assert!(out.reason.contains("code 2"), "{}", out.reason);
}

#[tokio::test]
async fn tcp_and_command_probes() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let port = free_port();
    let mut s = http_spec("tcp", port, 0);
    s.health_check = Some(HealthCheck {
        probe: Probe::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        interval_seconds: Seconds::whole(1),
        timeout_seconds: Seconds::whole(1),
        retries: 3,
        start_period_seconds: 0,
        min_healthy_seconds: 0,
        restart_after_failures: None,
    });
    let handles = b
        .start(&s, &ctx(dir.path(), &project("tcp")))
        .await
        .unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    assert!(
        gate(&b, &s, &handles, &Cancel::new(), 1, None, &noop)
            .await
            .healthy
    );
    let ok = b
        .exec_probe(&handles[0], &["true".into()], Duration::from_secs(1))
        .await;
    assert!(ok.healthy);
    let bad = b
        .exec_probe(
            &handles[0],
            &["sh".into(), "-c".into(), "echo nope; exit 1".into()],
            Duration::from_secs(1),
        )
        .await;
    assert!(!bad.healthy);
    assert_eq!(bad.detail, "exit 1: nope");
    let slow = b
        .exec_probe(
            &handles[0],
            &["sleep".into(), "5".into()],
            Duration::from_millis(100),
        )
        .await;
    assert!(!slow.healthy && slow.detail.contains("timed out"));
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn an_interrupt_stops_a_gate() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let mut s = spec("waiting", &["sleep", "30"]);
    s.health_check = Some(http_check(free_port(), 30, 10));
    let handles = b
        .start(&s, &ctx(dir.path(), &project("interrupt")))
        .await
        .unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    let cancel = Cancel::new();
    // Interrupted while it waits, once it has probed.
    let interrupt = |_: &deploy_code::apply::health::ProbeRecord| {
        if cancel.level() == 0 {
            cancel.interrupt();
        }
    };
    let out = gate(&b, &s, &handles, &cancel, 1, None, &interrupt).await;
    assert!(!out.healthy);
    assert_eq!(out.reason, "interrupted");
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
}

/// A gate that runs out of time says what it was still waiting for: the
/// last probe's answer follows the reason.
#[tokio::test]
async fn a_gate_out_of_time_names_what_it_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let port = free_port();
    let mut s = spec("silent", &["sleep", "30"]);
    s.health_check = Some(http_check(port, 30, 10));
    let handles = b
        .start(&s, &ctx(dir.path(), &project("deadline")))
        .await
        .unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    let deadline = Instant::now() + Duration::from_millis(600);
    let out = gate(&b, &s, &handles, &Cancel::new(), 1, Some(deadline), &|_| {}).await;
    assert!(!out.healthy);
    assert!(
        out.reason.starts_with("ran out of time (last: ") && out.reason.contains(&port.to_string()),
        "{}",
        out.reason
    );
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
}

/// Behind a traffic switch a service's host port is the switch's: a probe of
/// an instance whose own (private) port cannot be read yet fails, and never
/// goes to the switch's port, where another instance would answer.
#[tokio::test]
async fn an_instance_behind_a_switch_is_never_probed_through_the_switch() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    // What stands on the public port: it answers 200 and counts requests.
    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = public.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        for mut conn in public.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    // An instance whose environment names no private port (started here,
    // not by the backend).
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id();
    let handle = deploy_code::state::Handle::Process {
        replica: 0,
        pid,
        start_time: deploy_code::procfs::start_time(pid).unwrap(),
        log_path: String::new(),
    };
    let mut s = deploy_code::model::ServiceSpec {
        behind_switch: true,
        ..crate::support::Spec::process("switched", &["sleep", "30"])
            .port(deploy_code::model::PortSpec {
                container_port: 8080,
                host_port: Some(port),
                host_ip: None,
                protocol: deploy_code::model::Protocol::Tcp,
            })
            .build()
    };
    s.health_check = Some(http_check(port, 1, 2));
    let b = ProcessBackend::new();
    let out = gate(&b, &s, &[handle], &Cancel::new(), 1, None, &noop).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(!out.healthy, "{out:?}");
    assert!(
        out.probes
            .iter()
            .all(|p| p.detail.contains("not known yet")),
        "{out:?}"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "the switch's port was probed"
    );
}
