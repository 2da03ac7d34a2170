//! The local-process backend (the embedded default).
//!
//! A service's `command` and `args` run without a shell, each replica as its own
//! process, detached into its own session (`setsid`) so that it outlives
//! `deploy-code`. stdout and stderr are appended to `<log_dir>/<service>.log`
//! (`<service>-<replica>.log` when there are several replicas); stdin is null.
//! Sensitive values reach the process only through its environment or argv,
//! never a log line of ours.
//!
//! An instance is identified by its pid plus its start time (field 22 of
//! `/proc/<pid>/stat`), so a pid that the kernel gave to another process is never
//! signalled. Every process carries the mark variables of [`super::marks`], which
//! is how [`ProcessBackend::discover`] finds them again after a run was killed.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Backend, BackendError, Discovered, Liveness, ProbeOutcome, StartContext, marks};
use crate::model::{BackendKind, ServiceName, ServiceSpec, Text};
use crate::state::Handle;

/// Runs services as local processes. Keeps the children it started so that their
/// exit status is collected (no zombies) while this run lasts.
#[derive(Default)]
pub struct ProcessBackend {
    children: Mutex<HashMap<(u32, u64), Child>>,
}

impl ProcessBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// The log file of one replica.
    pub fn log_path(log_dir: &Path, service: &str, replica: u32, replicas: u32) -> PathBuf {
        if replicas > 1 {
            log_dir.join(format!("{service}-{replica}.log"))
        } else {
            log_dir.join(format!("{service}.log"))
        }
    }

    fn spawn_one(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        replica: u32,
    ) -> Result<Handle, BackendError> {
        let service = spec.name.to_string();
        let start_failed = |message: String| BackendError::StartFailed {
            service: service.clone(),
            message,
        };
        let command = spec
            .command
            .as_ref()
            .ok_or_else(|| start_failed("a process service needs a `command`".to_owned()))?;
        let program = expose(command, &service, "command")?;
        let mut argv = Vec::with_capacity(spec.args.len());
        for (i, a) in spec.args.iter().enumerate() {
            argv.push(expose(a, &service, &format!("args[{i}]"))?);
        }
        let cwd = match &spec.working_dir {
            Some(d) => ctx.base_dir.join(d),
            None => ctx.base_dir.clone(),
        };
        if !cwd.is_dir() {
            return Err(start_failed(format!(
                "working directory `{}` does not exist",
                cwd.display()
            )));
        }
        std::fs::create_dir_all(&ctx.log_dir).map_err(|e| {
            start_failed(format!(
                "log directory `{}` cannot be created: {e}",
                ctx.log_dir.display()
            ))
        })?;
        let log_path = Self::log_path(&ctx.log_dir, &service, replica, spec.replicas.max(1));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| start_failed(format!("log file `{}`: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| start_failed(format!("log file: {e}")))?;

        let mut cmd = Command::new(program);
        cmd.args(argv)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (k, v) in &spec.env {
            cmd.env(k, expose(v, &service, &format!("env.{k}"))?);
        }
        if !ctx.gpus.is_empty() {
            let ids: Vec<String> = ctx.gpus.iter().map(|g| g.index.to_string()).collect();
            cmd.env("CUDA_VISIBLE_DEVICES", ids.join(","));
        }
        cmd.env(marks::ENV_PROJECT, &ctx.project)
            .env(marks::ENV_SERVICE, &service)
            .env(marks::ENV_SPEC_HASH, spec.spec_hash())
            .env(marks::ENV_DEPLOYMENT, ctx.revision.to_string())
            .env(marks::ENV_LINEAGE, &ctx.lineage)
            .env(marks::ENV_REPLICA, replica.to_string());
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackendError::BinaryNotFound {
                    service: service.clone(),
                    command: program.to_owned(),
                }
            } else if e.kind() == std::io::ErrorKind::PermissionDenied {
                start_failed(format!("`{program}` is not executable: {e}"))
            } else {
                start_failed(format!("`{program}`: {e}"))
            }
        })?;
        let pid = child.id();
        let start_time = start_time(pid).unwrap_or(0);
        self.children
            .lock()
            .expect("children lock")
            .insert((pid, start_time), child);
        Ok(Handle::Process {
            replica,
            pid,
            start_time,
            log_path: log_path.to_string_lossy().into_owned(),
        })
    }

    /// Liveness without blocking: our own children are reaped, others read from /proc.
    pub fn liveness_now(&self, pid: u32, start: u64) -> Liveness {
        {
            let mut children = self.children.lock().expect("children lock");
            if let Some(child) = children.get_mut(&(pid, start)) {
                return match child.try_wait() {
                    Ok(Some(status)) => {
                        children.remove(&(pid, start));
                        Liveness::Exited(status.code())
                    }
                    Ok(None) => Liveness::Running,
                    Err(_) => Liveness::Missing,
                };
            }
        }
        match stat(pid) {
            Some((state, st)) if st == start => {
                if state == 'Z' || state == 'X' {
                    Liveness::Exited(None)
                } else {
                    Liveness::Running
                }
            }
            _ => Liveness::Missing,
        }
    }

    async fn stop_one(&self, pid: u32, start: u64, grace: Duration) {
        if self.liveness_now(pid, start) != Liveness::Running {
            // The leader is gone; members of its group may remain (the group id
            // cannot be reused while the group exists, so it is still ours).
            kill_group(pid, libc::SIGKILL, start, self);
            return;
        }
        kill_group(pid, libc::SIGTERM, start, self);
        let deadline = Instant::now() + grace;
        let mut wait = Duration::from_millis(5);
        while Instant::now() < deadline {
            if self.liveness_now(pid, start) != Liveness::Running {
                kill_group(pid, libc::SIGKILL, start, self);
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
        kill_group(pid, libc::SIGKILL, start, self);
        // Collect the exit status so that no zombie of ours is left.
        for _ in 0..100 {
            if self.liveness_now(pid, start) != Liveness::Running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Signals the process group led by `pid` when `pid` is still the process that
/// started at `start`, or when the leader is gone but its group remains.
fn kill_group(pid: u32, sig: i32, start: u64, b: &ProcessBackend) {
    let Ok(pgid) = i32::try_from(pid) else { return };
    match b.liveness_now(pid, start) {
        Liveness::Running => {}
        // The leader exited (and may be reaped): a group with that id can only be
        // the one it led, since the kernel does not reuse an id in use by a group.
        Liveness::Exited(_) | Liveness::Missing => {
            if let Some((_, st)) = stat(pid)
                && st != start
            {
                // The pid belongs to another process now: leave it alone.
                return;
            }
        }
    }
    // SAFETY: plain syscall; a negative pid addresses the process group.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

fn expose<'a>(t: &'a Text, service: &str, field: &str) -> Result<&'a str, BackendError> {
    t.expose().ok_or_else(|| BackendError::StartFailed {
        service: service.to_owned(),
        message: format!(
            "`{field}` is sensitive and its value is not known to this run (only its digest is recorded)"
        ),
    })
}

/// State letter and start time (clock ticks since boot) of a process.
pub fn stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The start time of a process (`/proc/<pid>/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, s)| s)
}

fn read_environ(pid: u32) -> Option<HashMap<String, String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut out = HashMap::new();
    for entry in bytes.split(|b| *b == 0) {
        let Ok(s) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some((k, v)) = s.split_once('=')
            && k.starts_with("DEPLOY_CODE_")
        {
            out.insert(k.to_owned(), v.to_owned());
        }
    }
    Some(out)
}

/// The last `lines` lines of a file (reads at most the last 256 KiB).
pub fn tail_file(path: &Path, lines: usize) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    all[skip..].iter().map(|s| (*s).to_owned()).collect()
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
    ) -> Result<Vec<Handle>, BackendError> {
        let mut handles = Vec::new();
        for replica in 0..spec.replicas.max(1) {
            match self.spawn_one(spec, ctx, replica) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Leave nothing half-started behind.
                    let _ = self.stop(&handles, Duration::from_secs(2)).await;
                    return Err(e);
                }
            }
        }
        Ok(handles)
    }

    async fn stop(&self, handles: &[Handle], grace: Duration) -> Result<(), BackendError> {
        let stops = handles.iter().filter_map(|h| match h {
            Handle::Process {
                pid, start_time, ..
            } => Some(self.stop_one(*pid, *start_time, grace)),
            _ => None,
        });
        futures_util::future::join_all(stops).await;
        Ok(())
    }

    async fn liveness(&self, handle: &Handle) -> Liveness {
        match handle {
            Handle::Process {
                pid, start_time, ..
            } => self.liveness_now(*pid, *start_time),
            _ => Liveness::Missing,
        }
    }

    async fn exec_probe(
        &self,
        _handle: &Handle,
        argv: &[String],
        timeout: Duration,
    ) -> ProbeOutcome {
        run_command_probe(argv, timeout).await
    }

    async fn logs(&self, handle: &Handle, lines: usize) -> Vec<String> {
        match handle {
            Handle::Process { log_path, .. } => tail_file(Path::new(log_path), lines),
            _ => Vec::new(),
        }
    }

    async fn discover(&self, project: &str) -> Result<Vec<Discovered>, BackendError> {
        let mut found = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Ok(found);
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(env) = read_environ(pid) else {
                continue;
            };
            if env.get(marks::ENV_PROJECT).map(String::as_str) != Some(project) {
                continue;
            }
            let Some(service) = env
                .get(marks::ENV_SERVICE)
                .and_then(|s| ServiceName::parse(s).ok())
            else {
                continue;
            };
            let Some((_, start)) = stat(pid) else {
                continue;
            };
            let log_path = std::fs::read_link(format!("/proc/{pid}/fd/1"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let replica = env
                .get(marks::ENV_REPLICA)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let handle = Handle::Process {
                replica,
                pid,
                start_time: start,
                log_path,
            };
            found.push(Discovered {
                service,
                liveness: self.liveness_now(pid, start),
                handle,
                spec_hash: env.get(marks::ENV_SPEC_HASH).cloned(),
                lineage: env.get(marks::ENV_LINEAGE).cloned(),
                replicas: None,
            });
        }
        found.sort_by_key(|d| (d.service.clone(), handle_key(&d.handle)));
        Ok(found)
    }
}

fn handle_key(h: &Handle) -> (u32, u32) {
    match h {
        Handle::Process { replica, pid, .. } => (*replica, *pid),
        _ => (0, 0),
    }
}

/// Runs an argv (no shell) with a timeout: healthy on exit 0.
pub async fn run_command_probe(argv: &[String], timeout: Duration) -> ProbeOutcome {
    let Some((program, args)) = argv.split_first() else {
        return ProbeOutcome {
            healthy: false,
            detail: "empty command".into(),
        };
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ProbeOutcome {
                healthy: false,
                detail: format!("`{program}` could not run: {e}"),
            };
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => ProbeOutcome {
            healthy: false,
            detail: format!("timed out after {} ms", timeout.as_millis()),
        },
        Ok(Err(e)) => ProbeOutcome {
            healthy: false,
            detail: format!("wait failed: {e}"),
        },
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(if out.stdout.is_empty() {
                &out.stderr
            } else {
                &out.stdout
            });
            let first: String = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            ProbeOutcome {
                healthy: out.status.success(),
                detail: match out.status.code() {
                    Some(c) if first.is_empty() => format!("exit {c}"),
                    Some(c) => format!("exit {c}: {first}"),
                    None => "killed by a signal".into(),
                },
            }
        }
    }
}
