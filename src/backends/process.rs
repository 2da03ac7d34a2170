//! The local-process backend (the embedded default).
//!
//! A service's `command` and `args` run without a shell, each replica as its own
//! process, detached into its own session (`setsid`) so that it outlives
//! `deploy-code`. stdout and stderr are appended to `<log_dir>/<service>.log`
//! (`<service>-<replica>.log` when there are several replicas); stdin is null.
//! Sensitive values reach the process only through its environment or argv,
//! never a log line of ours. Its environment starts empty, as under systemd:
//! the service's `env`, the base set and what its `inherit_env` names (see
//! [`super::inherited_env`]), its ports and the marks; nothing else of the
//! environment `deploy-code` runs in.
//!
//! An instance is identified by its pid plus its start time (field 22 of
//! `/proc/<pid>/stat`), so a pid that the kernel gave to another process is never
//! signalled. Every process carries the mark variables of [`super::marks`], which
//! is how [`ProcessBackend::discover`] finds them again after a run was killed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Backend, BackendError, Discovered, Liveness, ProbeOutcome, StartContext, marks};
use crate::instance::Handle;
use crate::model::{BackendKind, ServiceName, ServiceSpec, Text};
use crate::procfs;

/// Runs services as local processes. Keeps the children it started so that their
/// exit status is collected (no zombies) while this run lasts.
/// A clone shares the children and log writers of the backend it came from
/// (a start runs on a blocking thread with one).
#[derive(Default, Clone)]
pub struct ProcessBackend {
    children: Arc<Mutex<HashMap<(u32, u64), Child>>>,
    /// Log writers started by this run, reaped when they exit.
    writers: Arc<Mutex<Vec<Child>>>,
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

    /// Where an instance's stdout and stderr go: its log file, or for an
    /// instance given secrets, a pipe to its redacting log writer (see
    /// [`super::logwriter`]), which appends to the same file.
    fn output(
        &self,
        spec: &ServiceSpec,
        log_path: &Path,
        log: std::fs::File,
    ) -> std::io::Result<(Stdio, Stdio)> {
        let secrets: Vec<&str> = spec
            .command
            .iter()
            .chain(spec.args.iter())
            .chain(spec.env.values())
            .filter(|t| t.is_sensitive())
            .filter_map(Text::expose)
            .collect();
        let writer = super::logwriter::program().filter(|_| !secrets.is_empty());
        let Some(program) = writer else {
            let err = log.try_clone()?;
            return Ok((Stdio::from(log), Stdio::from(err)));
        };
        drop(log);
        let mut cmd = Command::new(program);
        // The writer reads its secrets on stdin and needs nothing of this
        // run's environment.
        cmd.arg(super::logwriter::ARG)
            .env_clear()
            .env(procfs::SMALL_HEAP_ENV.0, procfs::SMALL_HEAP_ENV.1)
            .arg(log_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        detach(&mut cmd);
        let mut child = cmd.spawn()?;
        let mut pipe = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the log writer has no input"))?;
        let first = serde_json::to_string(&secrets).unwrap_or_else(|_| "[]".into());
        writeln!(pipe, "{first}")?;
        let out = std::os::fd::OwnedFd::from(pipe);
        let err = out.try_clone()?;
        let mut writers = self.writers.lock().expect("writers lock");
        writers.retain_mut(|w| matches!(w.try_wait(), Ok(None)));
        writers.push(child);
        Ok((Stdio::from(out), Stdio::from(err)))
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
        let cwd = working_dir(spec, &ctx.base_dir)?;
        crate::fsperm::private_dir(&ctx.log_dir).map_err(|e| {
            start_failed(format!(
                "log directory `{}` cannot be created: {e}",
                ctx.log_dir.display()
            ))
        })?;
        let log_path = Self::log_path(&ctx.log_dir, &service, replica, spec.replicas.max(1));
        let mut log = crate::fsperm::private_append(&log_path)
            .map_err(|e| start_failed(format!("log file `{}`: {e}", log_path.display())))?;
        // Each instance's lines start after a header of their own, so that
        // the evidence of a failure never mixes in an earlier instance's.
        let _ = writeln!(
            log,
            "{INSTANCE_HEADER} `{service}` replica {replica}, revision {}, at {}",
            ctx.revision,
            crate::clock::now_rfc3339()
        );
        let (out, err) = self
            .output(spec, &log_path, log)
            .map_err(|e| start_failed(format!("log file `{}`: {e}", log_path.display())))?;

        // The base set and what `inherit_env` names, then the service's own
        // `env`: nothing else of this run's environment.
        let mut env = super::inherited_env(spec, true);
        for (k, v) in &spec.env {
            env.push((
                k.clone(),
                expose(v, &service, &format!("env.{k}"))?.to_owned(),
            ));
        }
        if !ctx.gpus.is_empty() {
            let ids: Vec<String> = ctx.gpus.iter().map(|g| g.index.to_string()).collect();
            env.push(("CUDA_VISIBLE_DEVICES".into(), ids.join(",")));
        }
        let ports = port_env(spec).map_err(|e| start_failed(e.to_string()))?;
        env.extend(ports.iter().cloned());
        let shown = command.display();
        let monitored = spec.restart_settings.is_some();
        let mut cmd = if monitored {
            let monitor = super::logwriter::program().ok_or_else(|| {
                start_failed(
                    "the `deploy-code` binary that monitors the process was not found".into(),
                )
            })?;
            // The monitor's own environment is its marks alone: the child's
            // (the service's, secrets included) goes through its stdin with
            // the rest of its launch.
            let mut cmd = Command::new(monitor);
            cmd.arg(super::monitor_file::ARG)
                .env_clear()
                .env(procfs::SMALL_HEAP_ENV.0, procfs::SMALL_HEAP_ENV.1)
                .stdin(Stdio::piped());
            cmd
        } else {
            let mut cmd = Command::new(program);
            cmd.args(&argv)
                .stdin(Stdio::null())
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)));
            cmd
        };
        cmd.current_dir(&cwd).stdout(out).stderr(err);
        // The private ports are a mark too: found again on the instance's
        // own process (the monitor, when there is one).
        if let Some((k, v)) = ports.iter().find(|(k, _)| k == marks::ENV_PORTS) {
            cmd.env(k, v);
        }
        cmd.env(marks::ENV_PROJECT, &ctx.project)
            .env(marks::ENV_SERVICE, &service)
            .env(marks::ENV_SPEC_HASH, spec.spec_hash())
            .env(marks::ENV_DEPLOYMENT, ctx.revision.to_string())
            .env(marks::ENV_LINEAGE, &ctx.lineage)
            .env(marks::ENV_REPLICA, replica.to_string())
            .env(marks::ENV_LOG, &log_path);
        detach(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackendError::BinaryNotFound {
                    service: service.clone(),
                    command: shown.to_owned(),
                }
            } else if e.kind() == std::io::ErrorKind::PermissionDenied {
                start_failed(format!("`{shown}` is not executable"))
            } else {
                start_failed(format!("`{shown}` could not be started: {}", e.kind()))
            }
        })?;
        if monitored {
            // The monitor learns what to run through its stdin, so that the
            // secrets in it never touch a file or an argument list.
            let launch = super::monitor_file::Launch {
                program: program.to_owned(),
                args: argv.iter().map(|a| (*a).to_owned()).collect(),
                env,
                cwd: cwd.clone(),
                status_path: super::monitor_file::status_path(&log_path),
                replica,
                revision: ctx.revision,
                spec: spec.clone(),
                grace_seconds: super::monitor_file::GRACE_SECONDS,
                container: None,
            };
            let sent = child.stdin.take().map(|mut pipe| {
                let line = serde_json::to_string(&launch).map_err(std::io::Error::other)?;
                writeln!(pipe, "{line}")
            });
            if !matches!(sent, Some(Ok(()))) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(start_failed(
                    "the monitor could not be given its instance".into(),
                ));
            }
        }
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
    pub(crate) fn liveness_now(&self, pid: u32, start: u64) -> Liveness {
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
        match procfs::stat(pid) {
            Some(s) if s.start_time == start => {
                if s.is_dead() {
                    Liveness::Exited(None)
                } else {
                    Liveness::Running
                }
            }
            _ => Liveness::Missing,
        }
    }

    /// Stops one instance: the process that started at `start` with `pid`,
    /// its process group and every process of its tree (children that left
    /// the group included). SIGTERM first, SIGKILL after `grace`.
    async fn stop_one(&self, pid: u32, start: u64, grace: Duration) {
        self.signal_instance(pid, start, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        let mut wait = Duration::from_millis(5);
        while Instant::now() < deadline {
            if self.members(pid, start).is_empty() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
        self.signal_instance(pid, start, libc::SIGKILL);
        // Collect the exit status so that no zombie of ours is left.
        for _ in 0..200 {
            if self.members(pid, start).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The live processes of an instance: the process itself while it is
    /// the one that started at `start`, the members of its process group and
    /// its descendants. The group of a leader that is gone is still its own:
    /// the kernel reuses no id that a group still holds.
    fn members(&self, pid: u32, start: u64) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        let leader = self.liveness_now(pid, start) == Liveness::Running;
        let group = match procfs::stat(pid) {
            Some(s) if s.start_time == start => s.pgrp,
            // The pid is another process's now, so the old group is gone too:
            // the kernel reuses no id that a group still holds.
            Some(_) => return out,
            None => pid,
        };
        if leader {
            out.extend(procfs::tree(pid));
        }
        out.extend(group_members(group));
        out
    }

    /// Sends `sig` to every live process of an instance.
    fn signal_instance(&self, pid: u32, start: u64, sig: i32) {
        for member in self.members(pid, start) {
            if let Ok(p) = i32::try_from(member) {
                // SAFETY: plain syscall on a pid that is a member right now.
                unsafe {
                    libc::kill(p, sig);
                }
            }
        }
    }
}

/// The live processes of process group `pgrp`.
fn group_members(pgrp: u32) -> BTreeSet<u32> {
    procfs::pids()
        .into_iter()
        .filter(|p| procfs::stat(*p).is_some_and(|s| s.pgrp == pgrp && !s.is_dead()))
        .collect()
}

fn expose<'a>(t: &'a Text, service: &str, field: &str) -> Result<&'a str, BackendError> {
    t.expose().ok_or_else(|| BackendError::StartFailed {
        service: service.to_owned(),
        message: format!(
            "`{field}` is sensitive and its value is not known to this run (only its digest is recorded)"
        ),
    })
}

pub use crate::procfs::start_time;

/// The handle of a monitor's own process (`pid` started at `start_time`),
/// through which it probes the child it runs as its instance.
pub(crate) fn own_handle(replica: u32, pid: u32, start_time: u64) -> Handle {
    Handle::Process {
        replica,
        pid,
        start_time,
        log_path: String::new(),
    }
}

/// Starts the command in a session of its own (`setsid`), so that it
/// outlives `deploy-code` and leads a process group of its own.
fn detach(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The port variables of a process: `PORT` (its first port) and
/// `PORT_<container_port>` for each port. Behind a traffic switch each
/// port is a private one allocated here (recorded in the
/// [`marks::ENV_PORTS`] mark); otherwise it is the port itself.
fn port_env(spec: &ServiceSpec) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut private = Vec::new();
    for p in &spec.ports {
        let port = if spec.behind_switch && p.host_port.is_some() {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
                .local_addr()?
                .port();
            private.push(format!("{}={port}", p.container_port));
            port
        } else {
            p.host_port.unwrap_or(p.container_port)
        };
        if out.is_empty() {
            out.push(("PORT".to_owned(), port.to_string()));
        }
        out.push((format!("PORT_{}", p.container_port), port.to_string()));
    }
    if !private.is_empty() {
        out.push((marks::ENV_PORTS.to_owned(), private.join(",")));
    }
    Ok(out)
}

/// The private port a process behind a traffic switch listens on for
/// `container_port`, read from its marks.
fn private_port(pid: u32, container_port: u16) -> Option<u16> {
    let env = read_environ(pid)?;
    env.get(marks::ENV_PORTS)?.split(',').find_map(|pair| {
        let (c, p) = pair.split_once('=')?;
        (c.parse::<u16>().ok()? == container_port)
            .then(|| p.parse().ok())
            .flatten()
    })
}

/// The first words of the line that opens each instance's part of a log file.
pub(crate) const INSTANCE_HEADER: &str = "--- deploy-code: started";

/// The directory a service runs in; it must exist.
fn working_dir(spec: &ServiceSpec, base_dir: &Path) -> Result<PathBuf, BackendError> {
    let cwd = match &spec.working_dir {
        Some(d) => base_dir.join(d),
        None => base_dir.to_path_buf(),
    };
    if cwd.is_dir() {
        Ok(cwd)
    } else {
        Err(BackendError::StartFailed {
            service: spec.name.to_string(),
            message: format!("working directory `{}` does not exist", cwd.display()),
        })
    }
}

/// Where `program` would be executed from: a path (relative ones against
/// `cwd`, as the child resolves them) or the first executable match on
/// `path` (the `PATH` the child gets).
pub(crate) fn resolve_program(program: &str, cwd: &Path, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path?)
        .map(|dir| cwd.join(dir).join(program))
        .find(|p| executable(p))
}

/// Checks before anything changes that a process of `spec` can start: its
/// command resolves to an executable, its working directory exists.
fn check_startable(spec: &ServiceSpec, ctx_base: &Path) -> Result<(), BackendError> {
    let service = spec.name.to_string();
    let cwd = working_dir(spec, ctx_base)?;
    let Some(command) = &spec.command else {
        return Err(BackendError::StartFailed {
            service,
            message: "a process service needs a `command`".into(),
        });
    };
    // A secret known only by its digest is checked when it is started.
    let Some(program) = command.expose() else {
        return Ok(());
    };
    let path = match spec.env.get("PATH") {
        Some(p) => p.expose().map(str::to_owned),
        None => std::env::var("PATH").ok(),
    };
    if resolve_program(program, &cwd, path.as_deref()).is_some() {
        return Ok(());
    }
    let shown = command.display();
    let exists = program.contains('/') && cwd.join(program).exists();
    Err(if exists {
        BackendError::StartFailed {
            service,
            message: format!("`{shown}` is not an executable file"),
        }
    } else {
        BackendError::BinaryNotFound {
            service,
            command: shown.to_owned(),
        }
    })
}

fn read_environ(pid: u32) -> Option<HashMap<String, String>> {
    procfs::environ(pid, "DEPLOY_CODE_")
}

/// Processes that carry deploy-code's marks, by pid: their `DEPLOY_CODE_*`
/// variables and their `stat`.
type Marked = BTreeMap<u32, (HashMap<String, String>, procfs::Stat)>;

/// The processes whose marks name `project` (`None`: any project), read
/// from `/proc` now.
fn read_marked(project: Option<&str>) -> Marked {
    procfs::pids()
        .into_iter()
        .filter_map(|pid| {
            let env = read_environ(pid)?;
            let theirs = env.get(marks::ENV_PROJECT)?;
            // Only the project's own processes are worth a second read.
            if project.is_some_and(|p| p != theirs) {
                return None;
            }
            Some((pid, (env, procfs::stat(pid)?)))
        })
        .collect()
}

/// A read of every marked process begun by [`read_marks_early`], and when.
static EARLY: Mutex<Option<(Instant, std::thread::JoinHandle<Marked>)>> = Mutex::new(None);

/// How old a read begun early may be and still stand for a read now.
const EARLY_FRESH: Duration = Duration::from_secs(1);

/// Begins reading `/proc` for marked processes on a thread of its own, for
/// the next discovery of this process (within [`EARLY_FRESH`]) to use: a
/// one-shot command such as `plan` reads them while its configuration
/// loads, on the other core. Discovery reads afresh when nothing was begun,
/// the thread could not start or the read is older than that.
pub(crate) fn read_marks_early() {
    let began = Instant::now();
    if let Ok(handle) = std::thread::Builder::new()
        .name("read-marks".into())
        .spawn(|| read_marked(None))
    {
        *EARLY.lock().unwrap_or_else(|e| e.into_inner()) = Some((began, handle));
    }
}

/// The processes of `project`: from the read begun early when it is fresh
/// (taken once), else read now.
fn marked_processes(project: &str) -> Marked {
    let early = EARLY.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((began, handle)) = early
        && began.elapsed() < EARLY_FRESH
        && let Ok(all) = handle.join()
    {
        return all
            .into_iter()
            .filter(|(_, (env, _))| {
                env.get(marks::ENV_PROJECT).map(String::as_str) == Some(project)
            })
            .collect();
    }
    read_marked(Some(project))
}

/// The last `lines` lines of a file (reads at most the last 256 KiB).
pub(crate) fn tail_file(path: &Path, lines: usize) -> Vec<String> {
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

/// Waits (at most 300 ms) until a log file stops growing: a log writer may
/// still be appending what an instance printed just before it exited.
async fn settle(path: &Path) {
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut last = size();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

/// The last `lines` lines that the current instance wrote to a log file: those
/// after the last instance header.
pub(crate) fn instance_tail(path: &Path, lines: usize) -> Vec<String> {
    let all = tail_file(path, 10_000);
    let from = all
        .iter()
        .rposition(|l| l.starts_with(INSTANCE_HEADER))
        .map_or(0, |i| i + 1);
    let own = &all[from..];
    own[own.len().saturating_sub(lines)..].to_vec()
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    fn finished_task_log(
        &self,
        log_dir: &Path,
        service: &str,
        replicas: u32,
        lines: usize,
    ) -> Vec<String> {
        // A one-shot task's instance is gone once it exited: its log file
        // (replica 0's) remains.
        instance_tail(&Self::log_path(log_dir, service, 0, replicas.max(1)), lines)
    }

    fn reads_recorded(&self) -> bool {
        true
    }

    fn recorded_state(
        &self,
        handle: &Handle,
    ) -> Option<(crate::instance::InstanceState, Option<String>)> {
        recorded_state(handle)
    }

    /// A local process is reached on loopback unless `host_ip` says otherwise.
    fn default_host_ip(&self) -> &'static str {
        "127.0.0.1"
    }

    async fn prepare(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
        _progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), BackendError> {
        check_startable(spec, &ctx.base_dir)
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        ctx: &StartContext,
    ) -> Result<Vec<Handle>, BackendError> {
        let mut handles = Vec::new();
        for replica in ctx.replicas(spec) {
            // A fork and exec (and a monitor's launch) block: they run on a
            // blocking thread, so that the instances of other actions start
            // meanwhile and their gates keep probing.
            let (me, spec_, ctx_) = (self.clone(), spec.clone(), ctx.clone());
            let spawned =
                tokio::task::spawn_blocking(move || me.spawn_one(&spec_, &ctx_, replica)).await;
            let spawned = spawned.unwrap_or_else(|e| {
                Err(BackendError::StartFailed {
                    service: spec.name.to_string(),
                    message: format!("the start did not complete: {e}"),
                })
            });
            match spawned {
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
            Handle::Process { log_path, .. } => {
                let path = Path::new(log_path);
                settle(path).await;
                instance_tail(path, lines)
            }
            _ => Vec::new(),
        }
    }

    async fn discover(&self, project: &str) -> Result<Vec<Discovered>, BackendError> {
        let mut found = Vec::new();
        let marked = marked_processes(project);
        for (&pid, (env, stat)) in &marked {
            // A child of an instance inherits its marks; it is part of that
            // instance while the process that leads its group or session runs.
            let member_of = |leader: u32| {
                leader != pid && marked.get(&leader).is_some_and(|(_, s)| !s.is_dead())
            };
            if member_of(stat.pgrp) || member_of(stat.session) {
                continue;
            }
            let Some(service) = env
                .get(marks::ENV_SERVICE)
                .and_then(|s| ServiceName::parse(s).ok())
            else {
                continue;
            };
            let log_path = env.get(marks::ENV_LOG).cloned().unwrap_or_else(|| {
                procfs::fd_target(pid, 1)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let replica = env
                .get(marks::ENV_REPLICA)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let handle = Handle::Process {
                replica,
                pid,
                start_time: stat.start_time,
                log_path,
            };
            found.push(Discovered {
                service,
                liveness: self.liveness_now(pid, stat.start_time),
                handle,
                spec_hash: env.get(marks::ENV_SPEC_HASH).cloned(),
                lineage: env.get(marks::ENV_LINEAGE).cloned(),
                replicas: None,
            });
        }
        found.sort_by_key(|d| (d.service.clone(), handle_key(&d.handle)));
        Ok(found)
    }

    async fn started_at(&self, handle: &Handle) -> Option<u64> {
        let Handle::Process {
            pid, start_time, ..
        } = handle
        else {
            return None;
        };
        (self.liveness_now(*pid, *start_time) == Liveness::Running)
            .then(|| procfs::started_at_epoch(*start_time))
            .flatten()
    }

    async fn own_address(&self, handle: &Handle, port: u16) -> Option<(String, u16)> {
        let Handle::Process { pid, .. } = handle else {
            return None;
        };
        private_port(*pid, port).map(|p| ("127.0.0.1".to_owned(), p))
    }

    async fn listener_is_own(&self, handle: &Handle, port: u16) -> Option<bool> {
        let Handle::Process {
            pid, start_time, ..
        } = handle
        else {
            return None;
        };
        if self.liveness_now(*pid, *start_time) != Liveness::Running {
            return Some(false);
        }
        procfs::tree_listens(*pid, port)
    }
}

fn handle_key(h: &Handle) -> (u32, u32) {
    match h {
        Handle::Process { replica, pid, .. } => (*replica, *pid),
        _ => (0, 0),
    }
}

/// Runs an argv (no shell) with a timeout: healthy on exit 0.
pub(crate) async fn run_command_probe(argv: &[String], timeout: Duration) -> ProbeOutcome {
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

/// What `/proc` says of a recorded process instance: `running` when the pid
/// is alive with the recorded start time, `exited` when it is gone or a
/// zombie, `missing` when the pid now belongs to another process; with why,
/// when its monitor gave up. `None` for a handle that is not a process.
pub(crate) fn recorded_state(
    h: &Handle,
) -> Option<(crate::instance::InstanceState, Option<String>)> {
    let Handle::Process {
        pid, start_time, ..
    } = h
    else {
        return None;
    };
    use crate::instance::InstanceState;
    let state = match procfs::stat(*pid) {
        Some(s) if s.is_dead() => InstanceState::Exited,
        Some(s) if s.start_time == *start_time => InstanceState::Running,
        Some(_) => InstanceState::Missing,
        None => InstanceState::Exited,
    };
    // A monitor that gave up says why.
    let detail = (state != InstanceState::Running)
        .then(|| super::monitor_file::status_of_handle(h))
        .flatten()
        .map(|m| match &m.last_exit {
            Some(e) => format!("{}, last exit: {}", m.summary(), e.describe()),
            None => m.summary(),
        });
    Some((state, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read begun early finds what a read now finds: the project's marked
    /// processes and none of another project's; it is taken once, and the
    /// next discovery reads afresh.
    #[test]
    fn a_read_begun_early_stands_for_a_read_now() {
        let project = format!("early-read-{}", std::process::id());
        let start = |p: &str| {
            Command::new("sleep")
                .arg("30")
                .env(marks::ENV_PROJECT, p)
                .env(marks::ENV_SERVICE, "web")
                .spawn()
                .unwrap()
        };
        let mut ours = start(&project);
        let mut theirs = start(&format!("{project}-other"));
        let (pid, other) = (ours.id(), theirs.id());
        // The child's environment is readable once it has exec'd.
        let seen = |m: &Marked| m.contains_key(&pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !seen(&read_marked(Some(&project))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let now = read_marked(Some(&project));
        read_marks_early();
        let early = marked_processes(&project);
        assert!(seen(&early), "{early:?}");
        assert!(!early.contains_key(&other));
        assert_eq!(
            early.keys().collect::<Vec<_>>(),
            now.keys().collect::<Vec<_>>()
        );
        assert!(EARLY.lock().unwrap().is_none(), "taken once");
        let _ = ours.kill();
        let _ = theirs.kill();
        let _ = ours.wait();
        let _ = theirs.wait();
        assert!(!seen(&marked_processes(&project)), "read afresh");
    }
}
