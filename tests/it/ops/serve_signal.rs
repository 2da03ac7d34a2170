//! SIGTERM to `deploy-code serve` while a run it started is under way: the
//! run is interrupted and rolled back, and `WatchEvents` delivers the
//! rollback's events before the stream ends.

use std::time::Duration;

use deploy_code::serve::pb::{self, deploy_code_client::DeployCodeClient};

use super::serve::Server;
use crate::support::{free_port, kill_project};

/// The server (stopped by its pid when dropped) and what its runs started
/// (by the project's marks), whatever the test's outcome.
struct Served {
    server: Server,
    project: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        kill_project(&self.project);
    }
}

#[test]
fn a_sigterm_to_serve_delivers_the_rollback_of_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let project = format!("t-serve-term-{}", std::process::id());
    let port = free_port();
    // `slow` never listens: its gate waits (up to 100 probes) until the
    // signal interrupts the run.
    let config = format!(
        "project: {project}\ndeployment:\n  stop_grace_seconds: 2\nservices:\n  slow:\n    command: /bin/busybox\n    args: [\"sleep\", \"600\"]\n    ports: [{{container_port: {port}}}]\n    health_check: {{tcp: {port}, interval_seconds: 1, timeout_seconds: 1, retries: 100}}\n"
    );
    let served = Served {
        server: Server::start(dir, &config),
        project,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (kinds, applied) = rt.block_on(async {
        let mut client = DeployCodeClient::connect(format!("http://{}", served.server.addr))
            .await
            .unwrap();
        let plan = client
            .plan(pb::PlanRequest::default())
            .await
            .unwrap()
            .into_inner();
        // The headers come once the subscription is in place.
        let mut events = client
            .watch_events(pb::WatchRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut applying = client.clone();
        let apply = tokio::spawn(async move {
            applying
                .apply(pb::ApplyRequest {
                    plan: plan.plan,
                    ..Default::default()
                })
                .await
        });
        let mut kinds = Vec::new();
        // Everything below is bounded so that a stream that never ends
        // fails the test instead of hanging it.
        let read = async {
            while let Some(e) = events.message().await.unwrap_or(None) {
                kinds.push(e.kind.clone());
                if e.kind == "probe" && kinds.iter().filter(|k| *k == "probe").count() == 1 {
                    // The gate waits: stop the server.
                    // SAFETY: plain syscall on the server this test started.
                    unsafe {
                        libc::kill(served.server.pid() as i32, libc::SIGTERM);
                    }
                }
            }
        };
        let ended = tokio::time::timeout(Duration::from_secs(120), read).await;
        assert!(ended.is_ok(), "the event stream did not end: {kinds:?}");
        let applied = tokio::time::timeout(Duration::from_secs(60), apply)
            .await
            .expect("the Apply call answered")
            .unwrap();
        (kinds, applied)
    });
    assert!(kinds.iter().any(|k| k == "probe"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "rollback_started"),
        "the rollback's events are delivered: {kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k == "rollback_step"),
        "the rollback's steps are delivered: {kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("finished"),
        "{kinds:?}"
    );
    let status = applied.expect_err("an interrupted run is a failed call");
    let exit = status
        .metadata()
        .get("deploy-code-exit")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(exit.as_deref(), Some("4"), "{status:?}");
    drop(served);
}
