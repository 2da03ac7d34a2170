//! The monitor of a Docker container with health-driven restarts.
//!
//! Started by the Docker backend after the container (`deploy-code
//! __monitor`, its [`Launch`] naming the container), it runs nothing itself:
//! it waits on the container through the engine (its end is seen at once,
//! by the engine's wait), probes it every `interval_seconds` (after
//! `start_period_seconds`) at its address with the gate's probes, stops it
//! through the engine after `restart_after_failures` consecutive failures,
//! and starts it again under the same policy, back-off and circuit breaker
//! as a process's monitor (the engine's own restart policy is `no` for such
//! a container). It writes the same status file (with the container's id),
//! stops when told to (`SIGTERM`, leaving the container alone: the backend
//! stops it next) and ends on its own when the container is gone.

use std::time::{Duration, Instant};

use super::{
    ContainerTarget, End, ExitRecord, Launch, Monitor, MonitorState, Next, after_exit, backoff,
    count_restart, note, stamp, stopped,
};
use crate::backends::docker::{ContainerEnd, DockerBackend, container_handle};

/// How one run of the container ended.
enum RunEnd {
    Exited(ExitRecord),
    /// The monitor was told to stop.
    Stopped,
    /// The container was removed.
    Gone,
}

fn exit_of(end: &ContainerEnd, reason: &str) -> Option<ExitRecord> {
    match end {
        ContainerEnd::Gone => None,
        ContainerEnd::Exited { code, oom } => Some(ExitRecord {
            at: stamp(Duration::ZERO),
            code: code.and_then(|c| i32::try_from(c).ok()),
            signal: None,
            reason: if *oom && reason == "exited" {
                "out of memory".into()
            } else {
                reason.into()
            },
        }),
    }
}

pub(super) async fn watch(launch: Launch, target: ContainerTarget) -> End {
    use tokio::signal::unix::{SignalKind, signal};
    let mut m = Monitor::new(launch, Some(target.id.clone()));
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return End::Code(2);
    };
    let backend = DockerBackend::lazy();
    let grace = Duration::from_secs(m.launch.grace_seconds);
    // The backend started the container; every later start is ours.
    let mut started = true;
    loop {
        let end = if started {
            run(&mut m, &backend, &target, &mut term, &mut int, grace).await
        } else {
            match backend.start_again(&target.id).await {
                Ok(()) => run(&mut m, &backend, &target, &mut term, &mut int, grace).await,
                Err(e) => RunEnd::Exited(ExitRecord {
                    at: stamp(Duration::ZERO),
                    code: None,
                    signal: None,
                    reason: format!("start failed: {e}"),
                }),
            }
        };
        started = false;
        let exit = match end {
            RunEnd::Stopped => return stopped(&mut m),
            RunEnd::Gone => {
                note(&format!(
                    "--- deploy-code: `{}` replica {}: container `{}` is gone; its monitor ends",
                    m.status.service, m.status.replica, target.name
                ));
                return stopped(&mut m);
            }
            RunEnd::Exited(exit) => exit,
        };
        let (delay, after) = match after_exit(&mut m, exit) {
            Next::End(end) => return end,
            Next::Restart { delay, after } => (delay, after),
        };
        tokio::select! {
            biased;
            _ = term.recv() => return stopped(&mut m),
            _ = int.recv() => return stopped(&mut m),
            () = tokio::time::sleep(delay) => {}
        }
        count_restart(&mut m, &after, delay);
        note(&format!(
            "--- deploy-code: `{}` replica {}: container `{}` started again at {} (restart {} after {after})",
            m.status.service,
            m.status.replica,
            target.name,
            stamp(Duration::ZERO),
            m.status.restarts
        ));
    }
}

/// Watches the running container until it ends: probes it, resets the
/// back-off after a healthy window, stops it after too many failed probes.
async fn run(
    m: &mut Monitor,
    backend: &DockerBackend,
    target: &ContainerTarget,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    grace: Duration,
) -> RunEnd {
    let started = Instant::now();
    m.status.state = MonitorState::Running;
    m.status.probe_failures = 0;
    m.status.backoff_ms = backoff(&m.settings, m.streak).as_millis() as u64;
    m.save();
    let handle = container_handle(m.launch.replica, &target.id, &target.name);
    let check = m.launch.spec.health_check.clone();
    let after_failures = check.as_ref().and_then(|h| h.restart_after_failures);
    let mut healthy_since = check.is_none().then_some(started);
    let reset_after = Duration::from_secs(m.settings.reset_after_seconds);
    let far = || Instant::now() + super::LONGEST_BACKOFF;
    let later = |t: Instant, d: Duration| t.checked_add(d).unwrap_or_else(far);
    let mut next_probe = check
        .as_ref()
        .map(|h| later(started, Duration::from_secs(h.start_period_seconds)));
    let wait = backend.wait_end(&target.id);
    tokio::pin!(wait);
    loop {
        let reset_at = match healthy_since {
            Some(t) if m.streak > 0 => later(t, reset_after),
            _ => far(),
        };
        let probe_at = next_probe.unwrap_or_else(far);
        tokio::select! {
            biased;
            _ = term.recv() => return RunEnd::Stopped,
            _ = int.recv() => return RunEnd::Stopped,
            end = &mut wait => {
                if healthy_since.is_some_and(|t| t.elapsed() >= reset_after) {
                    m.streak = 0;
                }
                return match exit_of(&end, "exited") {
                    Some(exit) => RunEnd::Exited(exit),
                    None => RunEnd::Gone,
                };
            }
            () = tokio::time::sleep_until(reset_at.into()) => {
                m.streak = 0;
                m.status.backoff_ms = backoff(&m.settings, 0).as_millis() as u64;
                m.save();
            }
            () = tokio::time::sleep_until(probe_at.into()) => {
                let Some(h) = check.as_ref() else { continue };
                next_probe = Some(later(Instant::now(), h.interval()));
                let out = crate::apply::health::probe_once(
                    backend,
                    &m.launch.spec,
                    &handle,
                    &h.probe,
                    h.timeout(),
                )
                .await;
                let failures = m.record_probe(out.healthy, &mut healthy_since);
                if out.healthy {
                    continue;
                }
                if let Some(n) = after_failures
                    && failures >= n
                {
                    note(&format!(
                        "--- deploy-code: `{}` replica {}: {n} failed probes in a row (last: {}); restarting container `{}`",
                        m.status.service, m.status.replica, out.detail, target.name
                    ));
                    let end = backend.stop_for_restart(&target.id, grace).await;
                    return match exit_of(&end, "unhealthy") {
                        Some(exit) => RunEnd::Exited(exit),
                        None => RunEnd::Gone,
                    };
                }
            }
        }
    }
}
