//! The contract between the process backend and the monitor it starts
//! (`deploy-code __monitor`, run by the top-level `monitor` module): what
//! the monitor is handed on stdin ([`Launch`]) and the status file it keeps
//! beside the instance's log ([`MonitorStatus`]), which `status`, `metrics`
//! and refresh read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::instance::Handle;
use crate::model::{RestartPolicy, ServiceSpec};

/// The hidden subcommand that runs a monitor.
pub(crate) const ARG: &str = "__monitor";

/// Seconds between SIGTERM and SIGKILL when a monitor stops its child for
/// a health-driven restart or because it was stopped itself.
pub(crate) const GRACE_SECONDS: u64 = 10;

/// How many recent restarts a status file keeps.
pub(crate) const RECENT: usize = 20;

/// What a monitor runs, as the process backend hands it over on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Launch {
    pub program: String,
    pub args: Vec<String>,
    /// The child's environment besides the marks: the starting run's own and
    /// the service's (secrets included: this never touches a file, and the
    /// monitor's own environment holds only the marks).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub status_path: PathBuf,
    pub replica: u32,
    pub revision: u64,
    /// The canonical spec (sensitive values as digests): policy, back-off,
    /// health check and the ports the probes resolve against.
    pub spec: ServiceSpec,
    /// Seconds between SIGTERM and SIGKILL when the monitor stops its child.
    pub grace_seconds: u64,
    /// The container the monitor watches through the engine instead of
    /// running a child (a Docker container with health-driven restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerTarget>,
}

/// The container a monitor watches.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ContainerTarget {
    pub id: String,
    pub name: String,
}

/// The environment mark that names the container a monitor watches: how the
/// Docker backend finds the monitor again to stop it before the container.
pub(crate) const ENV_CONTAINER: &str = "DEPLOY_CODE_MONITORED_CONTAINER";

/// The project of the container a monitor watches (a mark of its own: the
/// monitor is no process instance of the project).
pub(crate) const ENV_CONTAINER_PROJECT: &str = "DEPLOY_CODE_MONITORED_PROJECT";

/// The log a container's monitor writes its own lines to (the container's
/// output stays with the engine): `<log_dir>/<container>.<id12>.monitor.log`
/// (the id, since a replacement takes the old container's name); its status
/// file is beside it ([`status_path`]).
pub(crate) fn container_log_path(log_dir: &Path, container: &str, id: &str) -> PathBuf {
    let short: String = id.chars().take(12).collect();
    log_dir.join(format!("{container}.{short}.monitor.log"))
}

/// Where the monitor of the instance logging to `log_path` keeps its status.
pub(crate) fn status_path(log_path: &Path) -> PathBuf {
    let mut name = log_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".monitor.json");
    log_path.with_file_name(name)
}

/// What a monitor is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorState {
    /// The child runs.
    Running,
    /// The child exited; it is started again after the back-off.
    BackingOff,
    /// Too many restarts within the window: nothing is restarted until the
    /// next apply or `deploy-code restart`.
    CircuitOpen,
    /// The child exited and the policy does not restart it.
    Exited,
    /// `deploy-code` stopped the instance.
    Stopped,
    /// The monitor is no longer running although its last status said it
    /// was watching (it was killed, or ended without a last word): never
    /// written by a monitor, only read in place of a status it left behind.
    Gone,
}

impl MonitorState {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorState::Running => "running",
            MonitorState::BackingOff => "backing-off",
            MonitorState::CircuitOpen => "circuit-open",
            MonitorState::Exited => "exited",
            MonitorState::Stopped => "stopped",
            MonitorState::Gone => "gone",
        }
    }
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `exited`, `killed`, `unhealthy` (a health-driven restart) or `spawn failed: ...`.
    pub reason: String,
}

impl ExitRecord {
    /// "exit 3", "signal 9", "unhealthy (signal 15)".
    pub(crate) fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => String::new(),
        };
        match self.reason.as_str() {
            "exited" | "killed" => how,
            r if how.is_empty() => r.to_owned(),
            r => format!("{r} ({how})"),
        }
    }
}

/// One restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// When the replacement started.
    pub at: String,
    /// The restart's number since the monitor started (1 for the first).
    pub restart: u32,
    /// Why: the exit it followed.
    pub after: String,
    /// The pause before it, milliseconds.
    pub delay_ms: u64,
}

/// A monitor's status file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorStatus {
    pub service: String,
    pub replica: u32,
    pub revision: u64,
    pub monitor_pid: u32,
    pub monitor_start_time: u64,
    pub policy: RestartPolicy,
    pub state: MonitorState,
    /// The container the monitor watches, when it watches one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The running child's identity (pid and start time, as in `/proc/<pid>/stat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_start_time: Option<u64>,
    /// Restarts since the monitor started.
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitRecord>,
    /// The pause in force now (while backing off), or the one the next
    /// restart would wait, milliseconds.
    pub backoff_ms: u64,
    /// When the child is started again, while backing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_at: Option<String>,
    /// Consecutive failed probes of the running child.
    pub probe_failures: u32,
    /// The last restarts, oldest first (at most [`RECENT`]).
    #[serde(default)]
    pub recent: Vec<RestartRecord>,
    pub updated_at: String,
}

impl MonitorStatus {
    /// The one-word state `status` shows for it.
    pub fn summary(&self) -> String {
        match self.state {
            MonitorState::CircuitOpen => "failed (circuit open)".into(),
            MonitorState::BackingOff => format!("backing off {} ms", self.backoff_ms),
            s => s.as_str().to_owned(),
        }
    }
}

/// Reads a status file; `None` when there is none or it cannot be read. A
/// status that says its monitor watches (`running`, `backing-off`) is read as
/// `gone` once that monitor (its pid and start time) no longer runs: a
/// monitor killed or ended abruptly leaves its last word behind.
pub fn read_status(path: &Path) -> Option<MonitorStatus> {
    let bytes = std::fs::read(path).ok()?;
    let mut status: MonitorStatus = serde_json::from_slice(&bytes).ok()?;
    if matches!(
        status.state,
        MonitorState::Running | MonitorState::BackingOff
    ) && !monitor_runs(status.monitor_pid, status.monitor_start_time)
    {
        status.state = MonitorState::Gone;
        status.child_pid = None;
        status.child_start_time = None;
        status.next_start_at = None;
    }
    Some(status)
}

/// Whether the process `pid` started at `start_time` still runs.
fn monitor_runs(pid: u32, start_time: u64) -> bool {
    crate::procfs::stat(pid).is_some_and(|s| !s.is_dead() && s.start_time == start_time)
}

/// The monitor's status for an instance that logs to `log_path` and whose
/// recorded process is `pid` started at `start_time`: only the status file
/// written by that very monitor counts.
pub(crate) fn status_of(log_path: &Path, pid: u32, start_time: u64) -> Option<MonitorStatus> {
    read_status(&status_path(log_path))
        .filter(|s| s.monitor_pid == pid && s.monitor_start_time == start_time)
}

/// The status of the monitor of a recorded instance, when it is a monitored
/// process whose monitor wrote one.
pub(crate) fn status_of_handle(h: &Handle) -> Option<MonitorStatus> {
    status_in(h, None)
}

/// The status of the monitor of a recorded instance: a monitored process's
/// (beside its log), or a monitored container's (in `log_dir`, the
/// settings' `storage.log_dir`, when known): only the file written for that
/// very container counts.
pub(crate) fn status_in(h: &Handle, log_dir: Option<&Path>) -> Option<MonitorStatus> {
    match h {
        Handle::Process {
            pid,
            start_time,
            log_path,
            ..
        } => status_of(Path::new(log_path), *pid, *start_time),
        Handle::Container { id, name, .. } => {
            let path = status_path(&container_log_path(log_dir?, name, id));
            read_status(&path).filter(|s| s.container_id.as_deref() == Some(id.as_str()))
        }
        Handle::SwarmService { .. } => None,
    }
}
