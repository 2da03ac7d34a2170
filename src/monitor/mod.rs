//! The per-instance monitor of a local process under a restart policy (the
//! pattern of podman's `conmon`: one small monitor per instance).
//!
//! `deploy-code __monitor` is started by the process backend in a session of
//! its own and is the instance's recorded process (its pid and start time are
//! the handle in the state); it reads what to run as one JSON line on stdin
//! (so that secrets never touch a file), starts the service as its child and
//! outlives the CLI. The child stays in the monitor's process group and gets
//! `SIGKILL` when the monitor dies (`PR_SET_PDEATHSIG`), so that killing the
//! monitor stops the service; a stopped monitor (`SIGTERM`) stops the child
//! and restarts nothing. The child's exit is seen at once (`SIGCHLD` and
//! `waitpid`, through tokio), not at a poll.
//!
//! On an exit the policy decides (`on-failure`: a non-zero exit, a signal or
//! a health-driven kill; `always` and `unless-stopped`: every exit; nothing
//! restarts an instance that `deploy-code` stopped). The pause before a
//! restart is `initial_delay_ms × multiplier^n`, capped at
//! `max_delay_seconds`, where `n` counts the restarts since the instance was
//! last healthy for `reset_after_seconds` (running, and passing its health
//! check when it has one). A restart that would be the `max_restarts + 1`-th
//! within `window_seconds` opens the circuit: the monitor exits as its child
//! did, the status says `circuit-open`, and the instance is started again only
//! by the next apply or `deploy-code restart` (which see it exited).
//!
//! With `health_check.restart_after_failures`, the monitor probes the running
//! child every `interval_seconds` (after `start_period_seconds`) with the
//! gate's probes and their listener attribution, and restarts it (SIGTERM,
//! SIGKILL after the grace) after that many consecutive failures.
//!
//! Everything `status`, `metrics` and `plan --refresh` show of it is in the
//! status file beside the instance's log (`<log>.monitor.json`, see
//! [`status_path`]), replaced atomically (write, then rename) at every change.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::model::{RestartPolicy, RestartSettings};

pub use crate::backends::monitor_file::*;

mod container;

/// The restarts the monitors of a service's recorded instances made (and
/// an opened circuit), as events of kind `restart` keyed for their import
/// into the state (`crate::state::restarts`): they live in the monitors'
/// status files, since a monitor never writes the state while an apply may
/// hold it. A container's monitor keeps its file in `log_dir`.
pub(crate) fn restart_rows(
    r: &crate::state::ServiceRecord,
    log_dir: Option<&Path>,
) -> Vec<crate::state::restarts::RestartRow> {
    use crate::state::restarts::RestartRow;
    let mut out = Vec::new();
    for h in &r.handles {
        let replica = h.replica();
        let Some(status) = status_in(h, log_dir) else {
            continue;
        };
        let instance = format!(
            "{}@{}:{}",
            h.identity(),
            status.monitor_pid,
            status.monitor_start_time
        );
        let event =
            |at: &str, outcome: crate::state::EventOutcome, message: String| crate::state::Event {
                id: 0,
                revision: status.revision,
                at: at.to_owned(),
                service: Some(r.name.clone()),
                kind: crate::state::EventKind::Restart,
                outcome,
                message,
            };
        for rec in &status.recent {
            out.push(RestartRow {
                instance: instance.clone(),
                restart: rec.restart,
                event: event(
                    &rec.at,
                    crate::state::EventOutcome::Succeeded,
                    format!(
                        "replica {replica}: restart {} after {}, {} ms back-off",
                        rec.restart, rec.after, rec.delay_ms
                    ),
                ),
            });
        }
        if status.state == MonitorState::CircuitOpen
            && let Some(exit) = &status.last_exit
        {
            let settings = r.spec.restart_settings.as_ref();
            out.push(RestartRow {
                instance,
                restart: 0,
                event: event(
                    &exit.at,
                    crate::state::EventOutcome::Failed,
                    format!(
                        "replica {replica}: circuit open after {}: more than {} restarts within {} s",
                        exit.describe(),
                        settings.map_or(0, |s| s.max_restarts),
                        settings.map_or(0, |s| s.window_seconds)
                    ),
                ),
            });
        }
    }
    out
}

/// Replaces `path` with `status` atomically: a reader sees the old file or
/// the new one, never a part.
fn write_status(path: &Path, status: &MonitorStatus) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("monitor"),
        std::process::id()
    ));
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        std::fs::rename(&tmp, path)
    })();
    // A part written to a full disk is not left behind; the last whole
    // status stays in place.
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// UTC now plus `after` (now when that is past what a date can hold), RFC
/// 3339 with milliseconds.
fn stamp(after: Duration) -> String {
    let now = time::OffsetDateTime::now_utc();
    let t = now
        .checked_add(after.try_into().unwrap_or(time::Duration::ZERO))
        .unwrap_or(now);
    let ms = t.millisecond();
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .map(|s| match s.strip_suffix('Z') {
            Some(base) => format!("{base}.{ms:03}Z"),
            None => s,
        })
        .unwrap_or_default()
}

/// The longest pause a monitor waits, whatever its settings say: a state
/// written before `validate` bounded the back-off may hold larger ones, and
/// every time computed from a pause (the next start's date, a deadline)
/// stays far inside what a date and the clock can hold.
const LONGEST_BACKOFF: Duration = Duration::from_secs(86_400 * 366);

/// The pause before restart number `n + 1` since the last reset.
pub fn backoff(settings: &RestartSettings, n: u32) -> Duration {
    let cap = settings.max_delay_seconds.saturating_mul(1000) as f64;
    let ms =
        (settings.initial_delay_ms as f64) * settings.multiplier.max(1.0).powi(n.min(1000) as i32);
    // `as` saturates: an infinite or NaN product is a `u64` at its bounds.
    Duration::from_millis(ms.min(cap).max(0.0) as u64).min(LONGEST_BACKOFF)
}

/// Whether `policy` restarts a child that ended as `exit` (a health-driven
/// kill counts as a failure).
pub fn restarts(policy: RestartPolicy, exit: &ExitRecord) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => exit.code != Some(0) || exit.reason != "exited",
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
    }
}

/// Runs a monitor (the `__monitor` subcommand): reads its [`Launch`] from
/// stdin and returns only when it gives up or is stopped.
pub fn run() -> u8 {
    crate::heap::for_long_lived();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return 2;
    }
    let launch: Launch = match serde_json::from_str(&line) {
        Ok(l) => l,
        Err(e) => {
            note(&format!("deploy-code monitor: unreadable launch: {e}"));
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            note(&format!("deploy-code monitor: {e}"));
            return 2;
        }
    };
    let end = rt.block_on(async move {
        match launch.container.clone() {
            Some(target) => container::watch(launch, target).await,
            None => supervise(launch).await,
        }
    });
    drop(rt);
    match end {
        End::Code(c) => u8::try_from(c & 0xff).unwrap_or(1),
        End::Signal(s) => {
            // Die as the child died, so that whoever waits for the monitor
            // sees the same end.
            // SAFETY: resetting a disposition and raising a signal at ourselves.
            unsafe {
                libc::signal(s, libc::SIG_DFL);
                libc::raise(s);
            }
            u8::try_from((128 + s) & 0xff).unwrap_or(1)
        }
    }
}

enum End {
    Code(i32),
    Signal(i32),
}

fn end_of(exit: Option<&ExitRecord>) -> End {
    match exit {
        Some(ExitRecord {
            code: Some(c),
            reason,
            ..
        }) if reason == "exited" => End::Code(*c),
        Some(ExitRecord {
            signal: Some(s), ..
        }) => End::Signal(*s),
        Some(_) => End::Code(1),
        None => End::Code(0),
    }
}

struct Monitor {
    launch: Launch,
    settings: RestartSettings,
    status: MonitorStatus,
    /// When each restart within the window happened.
    window: VecDeque<Instant>,
    /// Restarts since the instance was last healthy for `reset_after_seconds`.
    streak: u32,
}

impl Monitor {
    /// The monitor of `launch` before its first start (a container's: before
    /// its first watch): running, no restart yet, the first back-off in force.
    fn new(launch: Launch, container_id: Option<String>) -> Monitor {
        let me = std::process::id();
        let settings = launch.spec.restart_settings.clone().unwrap_or_default();
        let status = MonitorStatus {
            service: launch.spec.name.to_string(),
            replica: launch.replica,
            revision: launch.revision,
            monitor_pid: me,
            monitor_start_time: crate::procfs::start_time(me).unwrap_or(0),
            policy: launch.spec.restart,
            state: MonitorState::Running,
            container_id,
            child_pid: None,
            child_start_time: None,
            restarts: 0,
            last_exit: None,
            backoff_ms: backoff(&settings, 0).as_millis() as u64,
            next_start_at: None,
            probe_failures: 0,
            recent: Vec::new(),
            updated_at: String::new(),
        };
        Monitor {
            launch,
            settings,
            status,
            window: VecDeque::new(),
            streak: 0,
        }
    }
}

impl Monitor {
    /// Counts a probe's outcome: a pass starts (or keeps) the healthy
    /// window and clears the failures, a failure ends the window. Returns
    /// the failures in a row.
    fn record_probe(&mut self, healthy: bool, healthy_since: &mut Option<Instant>) -> u32 {
        if healthy {
            healthy_since.get_or_insert_with(Instant::now);
            if self.status.probe_failures != 0 {
                self.status.probe_failures = 0;
                self.save();
            }
        } else {
            *healthy_since = None;
            self.status.probe_failures += 1;
            self.save();
        }
        self.status.probe_failures
    }

    fn save(&mut self) {
        self.status.updated_at = stamp(Duration::ZERO);
        if let Err(e) = write_status(&self.launch.status_path, &self.status) {
            note(&format!(
                "deploy-code monitor: status file `{}`: {e}",
                self.launch.status_path.display()
            ));
        }
    }

    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.launch.program);
        cmd.args(&self.launch.args)
            .current_dir(&self.launch.cwd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false)
            // The monitor's own allocator setting is not the service's.
            .env_remove(crate::procfs::SMALL_HEAP_ENV.0);
        for (k, v) in &self.launch.env {
            cmd.env(k, v);
        }
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory
        // of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // Transparent huge pages as the host has them, not as the
                // monitor's allocator chose for itself (see
                // `procfs::SMALL_HEAP_ENV`).
                libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0);
                // The monitor died between fork and prctl.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        cmd.spawn()
    }

    fn header(&self, restart: u32, after: &str) {
        note(&format!(
            "{} `{}` replica {}, revision {}, at {} (restart {restart} after {after})",
            crate::backends::process::INSTANCE_HEADER,
            self.launch.spec.name,
            self.launch.replica,
            self.launch.revision,
            stamp(Duration::ZERO)
        ));
    }
}

/// Appends a line to the instance's log: the monitor's standard output is
/// the log file (or the pipe to its redacting writer), as its child's is.
fn note(line: &str) {
    use std::os::fd::FromRawFd;
    // SAFETY: a duplicate of our own descriptor 1, owned (and closed) by the File.
    let fd = unsafe { libc::dup(1) };
    if fd < 0 {
        return;
    }
    let mut log = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = writeln!(log, "{}", crate::redact::text(line));
}

/// Signals the child and every process of its tree.
fn signal_tree(pid: u32, sig: i32) {
    let mut members = crate::procfs::tree(pid);
    members.insert(pid);
    for m in members {
        if let Ok(p) = i32::try_from(m) {
            // SAFETY: plain syscall on a process of the child's tree.
            unsafe {
                libc::kill(p, sig);
            }
        }
    }
}

/// Stops the child: SIGTERM to its tree, SIGKILL after `grace`; returns its
/// exit status.
async fn stop_child(
    child: &mut tokio::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    let Some(pid) = child.id() else {
        return child.try_wait().ok().flatten();
    };
    signal_tree(pid, libc::SIGTERM);
    // A stopped (hung) process acts on SIGTERM only once continued.
    signal_tree(pid, libc::SIGCONT);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(r) => r.ok(),
        Err(_) => {
            signal_tree(pid, libc::SIGKILL);
            child.wait().await.ok()
        }
    }
}

fn exit_record(status: Option<std::process::ExitStatus>, reason: &str) -> ExitRecord {
    use std::os::unix::process::ExitStatusExt;
    let code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    ExitRecord {
        at: stamp(Duration::ZERO),
        code,
        signal,
        reason: if reason == "exited" && signal.is_some() {
            "killed".into()
        } else {
            reason.into()
        },
    }
}

/// How one run of the child ended.
enum RunEnd {
    Exited(ExitRecord),
    /// The monitor was told to stop.
    Stopped(ExitRecord),
}

async fn supervise(launch: Launch) -> End {
    use tokio::signal::unix::{SignalKind, signal};
    let mut m = Monitor::new(launch, None);
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return End::Code(2);
    };
    let grace = Duration::from_secs(m.launch.grace_seconds);
    loop {
        let end = match m.spawn() {
            Ok(child) => run_child(&mut m, child, &mut term, &mut int, grace).await,
            Err(e) => RunEnd::Exited(ExitRecord {
                at: stamp(Duration::ZERO),
                code: None,
                signal: None,
                reason: format!("spawn failed: {}", e.kind()),
            }),
        };
        m.status.child_pid = None;
        m.status.child_start_time = None;
        let exit = match end {
            RunEnd::Stopped(exit) => {
                m.status.last_exit = Some(exit);
                m.status.state = MonitorState::Stopped;
                m.save();
                return End::Code(0);
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
        m.header(m.status.restarts, &after);
    }
}

/// What follows an exit.
enum Next {
    /// The monitor ends (the policy does not restart, or the circuit opened).
    End(End),
    /// The instance is started again after `delay`.
    Restart { delay: Duration, after: String },
}

/// Records an exit and decides on it: the policy, the window and the
/// circuit, the back-off (saved in the status while it runs).
fn after_exit(m: &mut Monitor, exit: ExitRecord) -> Next {
    let policy = m.launch.spec.restart;
    {
        let after = exit.describe();
        note(&format!(
            "--- deploy-code: `{}` replica {} ended: {after}",
            m.status.service, m.status.replica
        ));
        m.status.last_exit = Some(exit.clone());
        if !restarts(policy, &exit) {
            m.status.state = MonitorState::Exited;
            m.save();
            return Next::End(end_of(Some(&exit)));
        }
        let now = Instant::now();
        let window = Duration::from_secs(m.settings.window_seconds);
        while m
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            m.window.pop_front();
        }
        if m.window.len() >= m.settings.max_restarts as usize {
            note(&format!(
                "--- deploy-code: `{}` replica {}: circuit open after {} restarts within {} s; restarted by the next apply or `deploy-code restart`",
                m.status.service,
                m.status.replica,
                m.window.len(),
                m.settings.window_seconds
            ));
            m.status.state = MonitorState::CircuitOpen;
            m.status.next_start_at = None;
            m.save();
            return Next::End(end_of(Some(&exit)));
        }
        let delay = backoff(&m.settings, m.streak);
        m.status.state = MonitorState::BackingOff;
        m.status.backoff_ms = delay.as_millis() as u64;
        m.status.next_start_at = Some(stamp(delay));
        m.save();
        Next::Restart { delay, after }
    }
}

/// Counts a restart (after its back-off): the window, the streak, the
/// restart count and its record.
fn count_restart(m: &mut Monitor, after: &str, delay: Duration) {
    m.window.push_back(Instant::now());
    m.streak = m.streak.saturating_add(1);
    m.status.restarts += 1;
    m.status.next_start_at = None;
    let record = RestartRecord {
        at: stamp(Duration::ZERO),
        restart: m.status.restarts,
        after: after.to_owned(),
        delay_ms: delay.as_millis() as u64,
    };
    m.status.recent.push(record);
    let extra = m.status.recent.len().saturating_sub(RECENT);
    m.status.recent.drain(..extra);
}

fn stopped(m: &mut Monitor) -> End {
    m.status.state = MonitorState::Stopped;
    m.status.next_start_at = None;
    m.save();
    End::Code(0)
}

/// Runs the child until it ends: probes it when it has health-driven
/// restarts, resets the back-off after a healthy window.
async fn run_child(
    m: &mut Monitor,
    mut child: tokio::process::Child,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    grace: Duration,
) -> RunEnd {
    let started = Instant::now();
    let pid = child.id().unwrap_or(0);
    m.status.child_pid = Some(pid);
    m.status.child_start_time = crate::procfs::start_time(pid);
    m.status.state = MonitorState::Running;
    m.status.probe_failures = 0;
    m.status.backoff_ms = backoff(&m.settings, m.streak).as_millis() as u64;
    m.save();

    let check = m.launch.spec.health_check.clone();
    let probe_after = check
        .as_ref()
        .and_then(|h| h.restart_after_failures.map(|n| (h, n)));
    // Without a health check, running is healthy.
    let mut healthy_since = check.is_none().then_some(started);
    let reset_after = Duration::from_secs(m.settings.reset_after_seconds);
    let far = || Instant::now() + LONGEST_BACKOFF;
    let later = |t: Instant, d: Duration| t.checked_add(d).unwrap_or_else(far);
    let mut next_probe = check
        .as_ref()
        .map(|h| later(started, Duration::from_secs(h.start_period_seconds)));
    let backend = crate::backends::process::ProcessBackend::new();
    let me = std::process::id();
    let handle =
        crate::backends::process::own_handle(m.launch.replica, me, m.status.monitor_start_time);
    loop {
        let reset_at = match healthy_since {
            Some(t) if m.streak > 0 => later(t, reset_after),
            _ => far(),
        };
        let probe_at = next_probe.unwrap_or_else(far);
        tokio::select! {
            biased;
            _ = term.recv() => {
                let st = stop_child(&mut child, grace).await;
                return RunEnd::Stopped(exit_record(st, "stopped"));
            }
            _ = int.recv() => {
                let st = stop_child(&mut child, grace).await;
                return RunEnd::Stopped(exit_record(st, "stopped"));
            }
            st = child.wait() => {
                if healthy_since.is_some_and(|t| t.elapsed() >= reset_after) {
                    m.streak = 0;
                }
                return RunEnd::Exited(exit_record(st.ok(), "exited"));
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
                    &backend,
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
                if let Some((_, n)) = probe_after
                    && failures >= n
                {
                    note(&format!(
                        "--- deploy-code: `{}` replica {}: {n} failed probes in a row (last: {}); restarting it",
                        m.status.service, m.status.replica, out.detail
                    ));
                    let st = stop_child(&mut child, grace).await;
                    return RunEnd::Exited(exit_record(st, "unhealthy"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_grows_by_the_multiplier_up_to_the_cap() {
        let s = RestartSettings {
            initial_delay_ms: 100,
            max_delay_seconds: 1,
            multiplier: 2.0,
            ..RestartSettings::default()
        };
        let ms: Vec<u128> = (0..6).map(|n| backoff(&s, n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        let flat = RestartSettings {
            multiplier: 1.0,
            ..s
        };
        assert_eq!(backoff(&flat, 50).as_millis(), 100);
    }

    /// Settings a state may hold from before `validate` bounded them: the
    /// pause and the next start's date are computed without overflowing.
    #[test]
    fn a_backoff_past_any_clock_is_bounded() {
        let s = RestartSettings {
            initial_delay_ms: u64::MAX,
            max_delay_seconds: 9_000_000_000_000_000_000,
            multiplier: 1e308,
            ..RestartSettings::default()
        };
        for n in [0, 1, 5, u32::MAX] {
            let d = backoff(&s, n);
            assert_eq!(d, LONGEST_BACKOFF, "restart {n}");
            assert!(!stamp(d).is_empty());
        }
        assert!(!stamp(Duration::MAX).is_empty());
    }

    #[test]
    fn policies_decide_on_the_exit() {
        let exit = |code: Option<i32>, signal: Option<i32>, reason: &str| ExitRecord {
            at: String::new(),
            code,
            signal,
            reason: reason.into(),
        };
        let clean = exit(Some(0), None, "exited");
        let failed = exit(Some(3), None, "exited");
        let killed = exit(None, Some(9), "killed");
        let unhealthy = exit(Some(0), None, "unhealthy");
        assert!(!restarts(RestartPolicy::No, &failed));
        assert!(!restarts(RestartPolicy::OnFailure, &clean));
        for e in [&failed, &killed, &unhealthy] {
            assert!(restarts(RestartPolicy::OnFailure, e));
        }
        assert!(restarts(RestartPolicy::Always, &clean));
        assert!(restarts(RestartPolicy::UnlessStopped, &clean));
        assert_eq!(killed.describe(), "signal 9");
        assert_eq!(failed.describe(), "exit 3");
        assert_eq!(unhealthy.describe(), "unhealthy (exit 0)");
    }

    #[test]
    fn the_status_file_sits_beside_the_log() {
        assert_eq!(
            status_path(Path::new("/x/logs/web-1.log")),
            Path::new("/x/logs/web-1.log.monitor.json")
        );
    }
}
