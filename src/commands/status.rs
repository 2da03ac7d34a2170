//! `status` commands: status, health, logs.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use super::{CommandOutcome, Format, Invocation};
use crate::apply::health::probe_once;
use crate::backends::{Liveness, Registry};
use crate::error::{Code, Failure, Plain};
use crate::render::status::{
    CanaryCounters, CanaryView, HealthDoc, HealthView, InstanceView, MonitorView, ServiceView,
    StatusDoc, SwitchView, TasksView,
};
use crate::state::{Handle, ServiceRecord, Snapshot};

/// What `status` is asked.
#[derive(Clone, Debug, Default)]
pub struct StatusRequest {
    /// Also the spec hash, revision and each replica.
    pub detailed: bool,
    /// Refresh every `interval` until interrupted.
    pub watch: bool,
    pub interval: Duration,
}

/// What `logs` is asked.
#[derive(Clone, Debug, Default)]
pub struct LogsRequest {
    pub service: String,
    /// How many lines from the end.
    pub lines: usize,
    /// Keep printing new lines.
    pub follow: bool,
}

fn snapshot(inv: &Invocation) -> Result<Snapshot, Failure> {
    Ok(crate::state::load_snapshot(inv.state_path())?)
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
                // Shedding connections at its cap: some clients are turned away.
                state: if s.shedding { "degraded" } else { "running" }.into(),
                pid: Some(s.pid),
                live: s.backends.iter().map(ToString::to_string).collect(),
                active: s.active.values().sum(),
                forwarded: s.forwarded.values().sum(),
                failed: s.failed,
                open: s.open,
                max_connections: s.max_connections,
                shed: s.shed,
                timed_out: s.timed_out,
                canary: canary_view(&s),
            },
            Err(e) => SwitchView {
                port,
                state: e.to_string(),
                pid: None,
                live: Vec::new(),
                active: 0,
                forwarded: 0,
                failed: 0,
                open: 0,
                max_connections: 0,
                shed: 0,
                timed_out: 0,
                canary: None,
            },
        });
    }
    out
}

/// What the switches of the state's services say about themselves (those
/// that answer), for `metrics`.
pub(crate) async fn switch_samples(
    state_path: &std::path::Path,
    snapshot: &Snapshot,
) -> Vec<crate::metrics::SwitchSample> {
    let mut out = Vec::new();
    for r in snapshot.services.values().filter(|r| r.spec.behind_switch) {
        for (port, _) in r.spec.host_ports() {
            let client = crate::switch::SwitchClient::new(state_path, r.name.as_str(), port);
            if let Ok(status) = client.status().await {
                out.push(crate::metrics::SwitchSample {
                    service: r.name.as_str().to_owned(),
                    port,
                    status,
                });
            }
        }
    }
    out
}

/// The canary in progress on a switch, when it holds a canary group.
fn canary_view(s: &crate::switch::Status) -> Option<CanaryView> {
    if s.canary.is_empty() {
        return None;
    }
    let c = &s.groups.canary;
    Some(CanaryView {
        instances: s.canary.iter().map(ToString::to_string).collect(),
        weight: s.weight,
        step: s.step.map(|x| x.n),
        steps: s.step.map(|x| x.of),
        awaiting_decision: s.step.is_some_and(|x| x.awaiting_decision),
        decision: s.decision.map(|d| {
            match d {
                crate::switch::Decision::Promote => "promote",
                crate::switch::Decision::Abort => "abort",
            }
            .to_owned()
        }),
        counters: CanaryCounters {
            connections: c.connections,
            failed_connects: c.failed_connects,
            http: s.http,
            http_2xx: c.http_2xx,
            http_3xx: c.http_3xx,
            http_4xx: c.http_4xx,
            http_5xx: c.http_5xx,
            latency_p99_ms: c.latency_quantile_ms(0.99).filter(|ms| *ms != u64::MAX),
        },
    })
}

fn handle_view(h: &Handle, l: &Liveness, log_dir: Option<&std::path::Path>) -> InstanceView {
    let state = match l {
        Liveness::Running => "running".to_owned(),
        Liveness::Exited(Some(c)) => format!("exited ({c})"),
        Liveness::Exited(None) => "exited".to_owned(),
        Liveness::Missing => "missing".to_owned(),
    };
    let monitor = crate::monitor::status_in(h, log_dir);
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
    let out = probe_once(b.as_ref(), &r.spec, h, &check.probe, check.timeout()).await;
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
    log_dir: Option<&std::path::Path>,
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
                let mut view = handle_view(h, &l, log_dir);
                view.uptime_seconds = b.started_at(h).await.map(|t| now.saturating_sub(t));
                // A monitored process is up since its child's last start (a
                // monitored container since its own, as the engine says).
                if let Some(m) = view.monitor.as_ref().filter(|_| !r.backend.runs_images()) {
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

/// Where the monitors of containers keep their status files: the
/// configuration's `storage.log_dir`, when the configuration loads.
pub(crate) fn log_dir(inv: &Invocation) -> Option<std::path::PathBuf> {
    inv.config_for_reading()
        .map(|l| l.desired.settings.log_dir.clone())
}

/// Imports into the state's events the restarts that the monitors of its
/// services keep in their status files (each once, see
/// `crate::state::restarts`). False, after a warning, when the state could
/// not take them (a read-only copy): the caller then shows the status files'
/// own.
pub(crate) fn import_restarts(inv: &Invocation, snap: &Snapshot) -> bool {
    let log_dir = log_dir(inv);
    let rows: Vec<_> = snap
        .services
        .values()
        .filter(|r| r.spec.restart_settings.is_some())
        .flat_map(|r| crate::monitor::restart_rows(r, log_dir.as_deref()))
        .collect();
    match crate::state::restarts::import(inv.state_path(), &rows) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("the monitors' restarts were not recorded in the state: {e}");
            false
        }
    }
}

pub fn status(inv: &Invocation, req: &StatusRequest) -> Result<CommandOutcome, Failure> {
    let rt = inv.runtime()?;
    loop {
        let snap = snapshot(inv)?;
        import_restarts(inv, &snap);
        let backends = inv.backends(None, Some(&snap));
        let v = rt.block_on(views(
            &backends,
            &snap,
            true,
            inv.state_path(),
            log_dir(inv).as_deref(),
        ));
        let text = match inv.format() {
            Format::Json => {
                serde_json::to_string_pretty(&StatusDoc::new(v)).unwrap_or_default() + "\n"
            }
            Format::Yaml => serde_yaml::to_string(&StatusDoc::new(v)).unwrap_or_default(),
            _ => crate::render::status::human(&v, req.detailed),
        };
        if req.watch {
            inv.out.data(&format!("\x1b[2J\x1b[H{text}"))?;
            std::thread::sleep(req.interval.max(Duration::from_secs(1)));
        } else {
            inv.out.data(&text)?;
            return Ok(CommandOutcome::Done);
        }
    }
}

pub fn health(inv: &Invocation) -> Result<CommandOutcome, Failure> {
    let rt = inv.runtime()?;
    let snap = snapshot(inv)?;
    let backends = inv.backends(None, Some(&snap));
    let v = rt.block_on(views(
        &backends,
        &snap,
        true,
        inv.state_path(),
        log_dir(inv).as_deref(),
    ));
    let doc = HealthDoc::of(&v);
    match inv.format() {
        Format::Json => inv.out.data(&format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        ))?,
        Format::Yaml => inv
            .out
            .data(&serde_yaml::to_string(&doc).unwrap_or_default())?,
        _ => inv.out.data(&doc.human())?,
    }
    Ok(if doc.healthy {
        CommandOutcome::Done
    } else {
        CommandOutcome::Problems
    })
}

pub fn logs(inv: &Invocation, req: &LogsRequest) -> Result<CommandOutcome, Failure> {
    let snap = snapshot(inv)?;
    let Some(r) = snap.services.get(req.service.as_str()) else {
        return Err(Plain::new(
            Code::S001,
            format!("no service `{}` in the state", req.service),
        )
        .help("`deploy-code status` lists the deployed services")
        .into());
    };
    let rt = inv.runtime()?;
    let backends = inv.backends(None, Some(&snap));
    let Some(b) = backends.get(r.backend) else {
        return Err(Plain::new(
            Code::E014,
            format!("no {} backend in this build", r.backend),
        )
        .into());
    };
    let several = r.handles.len() > 1;
    for h in &r.handles {
        for l in rt.block_on(b.logs(h, req.lines)) {
            if several {
                inv.out.data(&format!("[{}] {l}\n", replica_of(h)))?;
            } else {
                inv.out.data(&format!("{l}\n"))?;
            }
        }
    }
    // A finished one-shot task keeps no instance; its backend may keep its output.
    if r.handles.is_empty()
        && let Some(l) = inv.config_for_reading()
    {
        for line in b.finished_task_log(
            &l.desired.settings.log_dir,
            r.name.as_str(),
            r.spec.replicas,
            req.lines,
        ) {
            inv.out.data(&format!("{line}\n"))?;
        }
    }
    if req.follow && b.follows_logs() {
        // A backend with a log stream of its own (the Docker engine's): all
        // replicas at once.
        let print = |text: String| inv.out.data_lossy(&text);
        rt.block_on(futures_util::future::join_all(
            r.handles.iter().map(|h| b.follow(h, &print)),
        ));
        return Ok(CommandOutcome::Done);
    }
    if req.follow {
        let paths: Vec<String> = r
            .handles
            .iter()
            .filter_map(|h| h.log_path().map(str::to_owned))
            .collect();
        if paths.is_empty() {
            inv.out.status(&format!(
                "the {} backend cannot follow the output of `{}`: this is its tail",
                r.backend, r.name
            ));
            return Ok(CommandOutcome::Done);
        }
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
                        inv.out.data(&buf)?;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(CommandOutcome::Done)
}

fn replica_of(h: &Handle) -> u32 {
    h.replica()
}
