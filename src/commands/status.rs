//! `status` commands: status, health, logs.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use serde::Serialize;

use crate::apply::health::probe_once;
use crate::backends::{Liveness, Registry};
use crate::cli::*;
use crate::commands::apply::{registry_for, runtime};
use crate::error::{Code, Failure, Plain, exit};
use crate::state::{Handle, ServiceRecord, Snapshot};

fn snapshot(ctx: &Context) -> Result<Snapshot, Failure> {
    Ok(crate::state::load_snapshot(&super::reader_state_path(ctx))?)
}

#[derive(Serialize)]
struct InstanceView {
    replica: u32,
    id: String,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_path: Option<String>,
    /// For an instance that stands for several replicas (a Swarm service):
    /// its tasks of the current spec that run, against the recorded replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<TasksView>,
    /// Why replicas do not run, in the engine's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// For a process under a restart policy: what its monitor reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    monitor: Option<MonitorView>,
}

/// What a process's monitor reports (see `crate::monitor`).
#[derive(Serialize)]
struct MonitorView {
    /// running, backing-off, circuit-open, exited or stopped.
    state: String,
    restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_exit: Option<crate::monitor::ExitRecord>,
    /// The back-off in force (while backing off) or that the next restart waits.
    backoff_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_start_at: Option<String>,
    circuit_open: bool,
    /// The service process the monitor runs now, and its start time.
    #[serde(skip_serializing_if = "Option::is_none")]
    child_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    child_start_time: Option<u64>,
}

impl MonitorView {
    fn of(m: &crate::monitor::MonitorStatus) -> Self {
        MonitorView {
            state: m.state.as_str().to_owned(),
            restarts: m.restarts,
            last_exit: m.last_exit.clone(),
            backoff_ms: m.backoff_ms,
            next_start_at: m.next_start_at.clone(),
            circuit_open: m.state == crate::monitor::MonitorState::CircuitOpen,
            child_pid: m.child_pid,
            child_start_time: m.child_start_time,
        }
    }

    /// One line for the human view.
    fn line(&self) -> String {
        let mut parts = vec![format!("restarts {}", self.restarts)];
        if let Some(e) = &self.last_exit {
            parts.push(format!("last exit: {} at {}", e.describe(), e.at));
        }
        match self.state.as_str() {
            "backing-off" => parts.push(format!(
                "backing off {} ms{}",
                self.backoff_ms,
                self.next_start_at
                    .as_ref()
                    .map(|t| format!(" (until {t})"))
                    .unwrap_or_default()
            )),
            "circuit-open" => parts
                .push("circuit open: restarted by the next apply or `deploy-code restart`".into()),
            _ => parts.push(format!("next back-off {} ms", self.backoff_ms)),
        }
        parts.join(", ")
    }
}

#[derive(Serialize)]
struct TasksView {
    running: u32,
    replicas: u32,
}

#[derive(Serialize)]
struct ServiceView {
    service: String,
    backend: String,
    /// Published ports: `host->container`, or one number where both are one.
    ports: Vec<String>,
    status: String,
    revision: u64,
    spec_hash: String,
    instances: Vec<InstanceView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthView>,
    /// The traffic switches that hold its host ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    switches: Vec<SwitchView>,
    #[serde(skip)]
    workload_task: bool,
}

/// A traffic switch as it reports itself.
#[derive(Serialize)]
struct SwitchView {
    port: u16,
    /// `running`, or why it does not answer.
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    /// Where new connections go.
    live: Vec<String>,
    /// Open connections.
    active: u64,
    /// Connections forwarded, and those no instance took, since it started.
    forwarded: u64,
    failed: u64,
}

async fn switches_of(state_path: &std::path::Path, r: &ServiceRecord) -> Vec<SwitchView> {
    let mut out = Vec::new();
    if !r.spec.behind_switch {
        return out;
    }
    for (port, _) in r.spec.host_ports() {
        let client = crate::switch::SwitchClient::new(state_path, r.name.as_str(), port);
        out.push(match client.status().await {
            Ok(s) => SwitchView {
                port,
                state: "running".into(),
                pid: Some(s.pid),
                live: s.backends.iter().map(ToString::to_string).collect(),
                active: s.active.values().sum(),
                forwarded: s.forwarded.values().sum(),
                failed: s.failed,
            },
            Err(e) => SwitchView {
                port,
                state: e.to_string(),
                pid: None,
                live: Vec::new(),
                active: 0,
                forwarded: 0,
                failed: 0,
            },
        });
    }
    out
}

#[derive(Clone, Serialize)]
struct HealthView {
    healthy: bool,
    detail: String,
}

fn handle_view(h: &Handle, l: &Liveness) -> InstanceView {
    let state = match l {
        Liveness::Running => "running".to_owned(),
        Liveness::Exited(Some(c)) => format!("exited ({c})"),
        Liveness::Exited(None) => "exited".to_owned(),
        Liveness::Missing => "missing".to_owned(),
    };
    let monitor = crate::monitor::status_of_handle(h);
    let state = match monitor.as_ref().map(|m| m.state) {
        Some(crate::monitor::MonitorState::CircuitOpen) => "failed (circuit open)".into(),
        Some(crate::monitor::MonitorState::BackingOff) if *l == Liveness::Running => {
            "backing-off".into()
        }
        _ => state,
    };
    InstanceView {
        replica: h.replica(),
        id: h.short_id(),
        uptime_seconds: None,
        state,
        log_path: h.log_path().map(str::to_owned),
        tasks: None,
        detail: None,
        monitor: monitor.as_ref().map(MonitorView::of),
    }
}

async fn health_of(backends: &Registry, r: &ServiceRecord) -> Option<HealthView> {
    let check = r.spec.health_check.as_ref()?;
    let b = backends.get(r.backend)?;
    let h = r.handles.first()?;
    let out = probe_once(
        b.as_ref(),
        &r.spec,
        h,
        &check.probe,
        Duration::from_secs(check.timeout_seconds.max(1)),
    )
    .await;
    Some(HealthView {
        healthy: out.healthy,
        detail: out.detail,
    })
}

async fn views(
    backends: &Registry,
    snap: &Snapshot,
    probe: bool,
    state_path: &std::path::Path,
) -> Vec<ServiceView> {
    let mut out = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in snap.services.values() {
        let mut instances = Vec::new();
        let mut ports = Vec::new();
        if let Some(b) = backends.get(r.backend) {
            ports = published(b.as_ref(), r).await;
            for h in &r.handles {
                let l = b.liveness(h).await;
                let mut view = handle_view(h, &l);
                view.uptime_seconds = b.started_at(h).await.map(|t| now.saturating_sub(t));
                // A monitored process is up since its child's last start.
                if let Some(m) = &view.monitor {
                    view.uptime_seconds = match (l == Liveness::Running, m.child_start_time) {
                        (true, Some(t)) => {
                            crate::procfs::started_at_epoch(t).map(|t| now.saturating_sub(t))
                        }
                        _ => None,
                    };
                }
                if let Some(tasks) = b.replicas(h).await {
                    let replicas = r.spec.replicas;
                    if l == Liveness::Running && tasks.running < replicas {
                        view.state = "degraded".into();
                    }
                    view.detail = tasks.detail;
                    view.tasks = Some(TasksView {
                        running: tasks.running,
                        replicas,
                    });
                }
                instances.push(view);
            }
        }
        // An instance that is not running makes the service unhealthy,
        // whatever a probe of its address says.
        let down = instances
            .iter()
            .find(|i| i.state != "running")
            .filter(|_| r.spec.workload != crate::model::Workload::Task);
        let health = match down {
            Some(i) => Some(HealthView {
                healthy: false,
                detail: format!("replica {} {}", i.replica, i.state),
            }),
            None if probe => health_of(backends, r).await,
            None => None,
        };
        let recorded = serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        out.push(ServiceView {
            service: r.name.to_string(),
            backend: r.backend.to_string(),
            ports,
            // A service with an instance that is not running is not ready,
            // whatever the state recorded when it was.
            status: match down {
                Some(_) if recorded == "ready" => "degraded".to_owned(),
                _ => recorded,
            },
            revision: r.revision,
            spec_hash: r.spec_hash.clone(),
            instances,
            health,
            switches: switches_of(state_path, r).await,
            workload_task: r.spec.workload == crate::model::Workload::Task,
        });
    }
    out
}

/// The ports a service publishes, as `host->container` (one number where
/// they are the same); a host port the engine allocated is looked up.
async fn published(b: &dyn crate::backends::Backend, r: &ServiceRecord) -> Vec<String> {
    let mut out = Vec::new();
    for p in &r.spec.ports {
        let host = match (p.host_port, r.handles.first()) {
            (Some(h), _) => Some(h),
            (None, Some(h)) => match b.probe_address(h, p.container_port).await {
                (ip, port) if ip.starts_with("127.") || ip == "::1" => Some(port),
                _ => None,
            },
            (None, None) => None,
        };
        out.push(match host {
            Some(h) if h == p.container_port => h.to_string(),
            Some(h) => format!("{h}->{}", p.container_port),
            None => p.container_port.to_string(),
        });
    }
    out
}

fn fmt_uptime(s: u64) -> String {
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn human(views: &[ServiceView], detailed: bool) -> String {
    if views.is_empty() {
        return "No services are deployed.\n".to_owned();
    }
    let mut rows = Vec::new();
    // Lines under a service's row: pending errors, and with --detailed its
    // spec and instances.
    let mut notes: Vec<Vec<String>> = Vec::new();
    for v in views {
        // Replicas: a Swarm service counts its tasks, any other instance one.
        let (running, total) = v.instances.iter().fold((0, 0), |(r, t), i| match &i.tasks {
            Some(x) => (r + x.running, t + x.replicas),
            None => (r + u32::from(i.state == "running"), t + 1),
        });
        let ids: Vec<&str> = v.instances.iter().map(|i| i.id.as_str()).collect();
        let inst = if v.instances.is_empty() {
            "-".to_owned()
        } else {
            format!("{running}/{total} {}", ids.join(","))
        };
        let up = v
            .instances
            .iter()
            .filter_map(|i| i.uptime_seconds)
            .min()
            .map(fmt_uptime)
            .unwrap_or_else(|| "-".into());
        let health = match &v.health {
            Some(h) if h.healthy => "healthy".to_owned(),
            Some(h) => format!("unhealthy ({})", h.detail),
            None if v.workload_task && v.status == "ready" => "completed".to_owned(),
            None => "-".to_owned(),
        };
        let ports = if v.ports.is_empty() {
            "-".to_owned()
        } else {
            v.ports.join(",")
        };
        rows.push(vec![
            v.service.clone(),
            v.backend.clone(),
            v.status.clone(),
            inst,
            ports,
            up,
            health,
        ]);
        let mut lines = Vec::new();
        for i in &v.instances {
            if let Some(d) = &i.detail {
                lines.push(format!("    {}: {d}", i.id));
            }
            if let Some(m) = &i.monitor
                && (m.restarts > 0 || m.state != "running")
            {
                lines.push(format!("    {}: {}", i.id, m.line()));
            }
        }
        for sw in &v.switches {
            lines.push(match sw.pid {
                Some(pid) => format!(
                    "    switch :{} (pid {pid}) -> {}  ({} open, {} forwarded, {} failed)",
                    sw.port,
                    if sw.live.is_empty() {
                        "-".to_owned()
                    } else {
                        sw.live.join(", ")
                    },
                    sw.active,
                    sw.forwarded,
                    sw.failed
                ),
                None => format!("    switch :{} {}", sw.port, sw.state),
            });
        }
        if detailed {
            lines.push(format!("    spec {}  revision {}", v.spec_hash, v.revision));
            for i in &v.instances {
                lines.push(format!(
                    "    replica {} {} {}{}",
                    i.replica,
                    i.id,
                    i.state,
                    i.log_path
                        .as_ref()
                        .map(|p| format!("  log {p}"))
                        .unwrap_or_default()
                ));
            }
        }
        notes.push(lines);
    }
    let table = crate::render::state::table(
        &[
            "SERVICE",
            "BACKEND",
            "STATUS",
            "INSTANCES",
            "PORTS",
            "UPTIME",
            "HEALTH",
        ],
        &rows,
        &|_, _, cell| cell.to_owned(),
        false,
    );
    // The table's first line is its header; each row is one line after it.
    let mut out = String::new();
    for (i, line) in table.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        if i > 0
            && let Some(lines) = notes.get(i - 1)
        {
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

pub fn status(ctx: &Context, args: &StatusArgs) -> Result<u8, Failure> {
    let rt = runtime()?;
    loop {
        let snap = snapshot(ctx)?;
        let backends = registry_for(None, Some(&snap));
        let state_path = super::reader_state_path(ctx);
        let v = rt.block_on(views(&backends, &snap, true, &state_path));
        let text = match ctx.global.format {
            Format::Json => {
                serde_json::to_string_pretty(&serde_json::json!({
                    "format_version": 1,
                    "services": v,
                }))
                .unwrap_or_default()
                    + "\n"
            }
            Format::Yaml => serde_yaml::to_string(&v).unwrap_or_default(),
            _ => human(&v, args.detailed),
        };
        if args.watch {
            super::print(&format!("\x1b[2J\x1b[H{text}"))?;
            std::thread::sleep(Duration::from_secs(args.interval.max(1)));
        } else {
            super::print(&text)?;
            return Ok(exit::OK);
        }
    }
}

pub fn health(ctx: &Context, _args: &HealthArgs) -> Result<u8, Failure> {
    let rt = runtime()?;
    let snap = snapshot(ctx)?;
    let backends = registry_for(None, Some(&snap));
    let v = rt.block_on(views(
        &backends,
        &snap,
        true,
        &super::reader_state_path(ctx),
    ));
    let rows: Vec<serde_json::Value> = v
        .iter()
        .map(|s| {
            let task_done = s.workload_task && s.status == "ready";
            let running = task_done
                || (s.instances.iter().all(|i| i.state == "running") && !s.instances.is_empty());
            let healthy = match &s.health {
                Some(h) => h.healthy && running,
                None => running,
            };
            serde_json::json!({
                "service": s.service,
                "healthy": healthy,
                "detail": s.health.as_ref().map(|h| h.detail.clone()).unwrap_or_else(|| {
                    if task_done {
                        "task completed".into()
                    } else if running {
                        "running (no health check)".into()
                    } else {
                        "not running".into()
                    }
                }),
            })
        })
        .collect();
    let all_ok = rows.iter().all(|r| r["healthy"] == true);
    match ctx.global.format {
        Format::Json => super::print(&format!(
            "{}\n",
            serde_json::to_string_pretty(
                &serde_json::json!({"format_version": 1, "healthy": all_ok, "services": rows})
            )
            .unwrap_or_default()
        ))?,
        Format::Yaml => super::print(
            &serde_yaml::to_string(&serde_json::json!({"healthy": all_ok, "services": rows}))
                .unwrap_or_default(),
        )?,
        _ => {
            for r in &rows {
                super::print(&format!(
                    "{:<20} {:<10} {}\n",
                    r["service"].as_str().unwrap_or(""),
                    if r["healthy"] == true {
                        "healthy"
                    } else {
                        "UNHEALTHY"
                    },
                    r["detail"].as_str().unwrap_or("")
                ))?;
            }
        }
    }
    Ok(if all_ok { exit::OK } else { exit::ERROR })
}

pub fn logs(ctx: &Context, args: &LogsArgs) -> Result<u8, Failure> {
    let snap = snapshot(ctx)?;
    let Some(r) = snap.services.get(args.service.as_str()) else {
        return Err(Plain::new(
            Code::S001,
            format!("no service `{}` in the state", args.service),
        )
        .help("`deploy-code status` lists the deployed services")
        .into());
    };
    let rt = runtime()?;
    let backends = registry_for(None, Some(&snap));
    let Some(b) = backends.get(r.backend) else {
        return Err(Plain::new(
            Code::E014,
            format!("no {} backend in this build", r.backend),
        )
        .into());
    };
    let several = r.handles.len() > 1;
    for h in &r.handles {
        for l in rt.block_on(b.logs(h, args.lines)) {
            if several {
                super::print(&format!("[{}] {l}\n", replica_of(h)))?;
            } else {
                super::print(&format!("{l}\n"))?;
            }
        }
    }
    // A finished one-shot task keeps no instance: its log file remains.
    if r.handles.is_empty()
        && r.backend == crate::model::BackendKind::Process
        && let Some(l) = super::config_for_reading(ctx)
    {
        let file = crate::backends::process::ProcessBackend::log_path(
            &l.desired.settings.log_dir,
            r.name.as_str(),
            0,
            r.spec.replicas.max(1),
        );
        for line in crate::backends::process::instance_tail(&file, args.lines) {
            super::print(&format!("{line}\n"))?;
        }
    }
    if args.follow && r.backend != crate::model::BackendKind::Process {
        // Containers and services: the engine's own stream, replicas at once.
        let print = |text: String| super::out(&text);
        rt.block_on(futures_util::future::join_all(
            r.handles.iter().map(|h| b.follow(h, &print)),
        ));
        return Ok(exit::OK);
    }
    if args.follow {
        let paths: Vec<String> = r
            .handles
            .iter()
            .filter_map(|h| h.log_path().map(str::to_owned))
            .collect();
        let mut offsets: Vec<u64> = paths
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .collect();
        loop {
            for (i, p) in paths.iter().enumerate() {
                if let Ok(mut f) = std::fs::File::open(p) {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    if len > offsets[i] && f.seek(SeekFrom::Start(offsets[i])).is_ok() {
                        let mut buf = String::new();
                        let _ = f.read_to_string(&mut buf);
                        offsets[i] = len;
                        super::print(&buf)?;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(exit::OK)
}

fn replica_of(h: &Handle) -> u32 {
    h.replica()
}
