//! The views of `status` and `health`: one document each, with
//! `format_version`, the same in JSON and YAML; and their human tables.

use serde::Serialize;

/// `status --format json|yaml`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StatusDoc {
    pub format_version: u32,
    pub services: Vec<ServiceView>,
}

impl StatusDoc {
    pub fn new(services: Vec<ServiceView>) -> Self {
        Self {
            format_version: 1,
            services,
        }
    }
}

/// `health --format json|yaml`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HealthDoc {
    pub format_version: u32,
    /// Every service is healthy.
    pub healthy: bool,
    pub services: Vec<HealthRow>,
}

/// One service's health.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HealthRow {
    pub service: String,
    pub healthy: bool,
    pub detail: String,
}

impl HealthDoc {
    /// Each service's verdict: running (or a completed task) and, with a
    /// check, passing it.
    pub fn of(views: &[ServiceView]) -> Self {
        let services: Vec<HealthRow> = views
            .iter()
            .map(|s| {
                let task_done = s.workload_task && s.status == "ready";
                let running = task_done
                    || (s.instances.iter().all(|i| i.state == "running")
                        && !s.instances.is_empty());
                let healthy = match &s.health {
                    Some(h) => h.healthy && running,
                    None => running,
                };
                HealthRow {
                    service: s.service.clone(),
                    healthy,
                    detail: s
                        .health
                        .as_ref()
                        .map(|h| h.detail.clone())
                        .unwrap_or_else(|| {
                            if task_done {
                                "task completed".into()
                            } else if running {
                                "running (no health check)".into()
                            } else {
                                "not running".into()
                            }
                        }),
                }
            })
            .collect();
        Self {
            format_version: 1,
            healthy: services.iter().all(|r| r.healthy),
            services,
        }
    }

    /// One line per service.
    pub fn human(&self) -> String {
        self.services
            .iter()
            .map(|r| {
                format!(
                    "{:<20} {:<10} {}\n",
                    r.service,
                    if r.healthy { "healthy" } else { "UNHEALTHY" },
                    r.detail
                )
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceView {
    pub replica: u32,
    pub id: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// For an instance that stands for several replicas (a Swarm service):
    /// its tasks of the current spec that run, against the recorded replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TasksView>,
    /// Why replicas do not run, in the engine's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a process under a restart policy: what its monitor reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<MonitorView>,
}

/// What a process's monitor reports (see `crate::monitor`).
#[derive(Clone, Debug, Serialize)]
pub struct MonitorView {
    /// running, backing-off, circuit-open, exited, stopped, or gone (the
    /// monitor no longer runs, its last status said it watched).
    pub state: String,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<crate::backends::monitor_file::ExitRecord>,
    /// The back-off in force (while backing off) or that the next restart waits.
    pub backoff_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_start_at: Option<String>,
    pub circuit_open: bool,
    /// The service process the monitor runs now, and its start time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_start_time: Option<u64>,
}

impl MonitorView {
    pub fn of(m: &crate::backends::monitor_file::MonitorStatus) -> Self {
        MonitorView {
            state: m.state.as_str().to_owned(),
            restarts: m.restarts,
            last_exit: m.last_exit.clone(),
            backoff_ms: m.backoff_ms,
            next_start_at: m.next_start_at.clone(),
            circuit_open: m.state == crate::backends::monitor_file::MonitorState::CircuitOpen,
            child_pid: m.child_pid,
            child_start_time: m.child_start_time,
        }
    }

    /// One line for the human view.
    pub fn line(&self) -> String {
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
            "gone" => parts.push(
                "monitor gone (it ended without a last status): the next apply starts the instance again"
                    .into(),
            ),
            _ => parts.push(format!("next back-off {} ms", self.backoff_ms)),
        }
        parts.join(", ")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TasksView {
    pub running: u32,
    pub replicas: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    pub service: String,
    pub backend: String,
    /// Published ports: `host->container`, or one number where both are one.
    pub ports: Vec<String>,
    pub status: String,
    pub revision: u64,
    pub spec_hash: String,
    pub instances: Vec<InstanceView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthView>,
    /// The traffic switches that hold its host ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub switches: Vec<SwitchView>,
    #[serde(skip)]
    pub workload_task: bool,
}

/// A traffic switch as it reports itself.
#[derive(Clone, Debug, Serialize)]
pub struct SwitchView {
    pub port: u16,
    /// `running`; `degraded` while it sheds connections beyond its cap; or
    /// why it does not answer.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Where new connections go.
    pub live: Vec<String>,
    /// Open connections.
    pub active: u64,
    /// Connections forwarded, and those no instance took, since it started.
    pub forwarded: u64,
    pub failed: u64,
    /// Client connections open (forwarded, or still sending their request
    /// head), and the most it keeps open.
    pub open: u64,
    pub max_connections: u64,
    /// Connections shed at the cap, and those closed as idle or for a
    /// request head not sent in time, since it started.
    pub shed: u64,
    pub timed_out: u64,
    /// The canary in progress on this switch, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryView>,
}

/// A canary in progress on a switch: the new set's group, its share and
/// what the switch counted for it.
#[derive(Clone, Debug, Serialize)]
pub struct CanaryView {
    /// The canary group: the new set's addresses.
    pub instances: Vec<String>,
    /// The share of new connections it gets now, percent.
    pub weight: u8,
    /// The step the weight belongs to, and the number of steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// The step waits for `deploy-code promote` or `deploy-code abort`.
    pub awaiting_decision: bool,
    /// A decision given and not yet acted on: `promote` or `abort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// What the switch counted for the canary group since it was set.
    pub counters: CanaryCounters,
}

/// The canary group's counters.
#[derive(Clone, Debug, Serialize)]
pub struct CanaryCounters {
    pub connections: u64,
    pub failed_connects: u64,
    /// HTTP responses by class (when the port speaks HTTP).
    pub http: bool,
    pub http_2xx: u64,
    pub http_3xx: u64,
    pub http_4xx: u64,
    pub http_5xx: u64,
    /// The upper bound (ms) of the latency bucket holding the 99th
    /// percentile of the timed responses; absent when none was timed or it
    /// lies beyond the last bound (30 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<u64>,
}

impl CanaryView {
    /// `canary 10% → 127.0.0.1:41234, step 1/2, paused: …`, then the counters.
    pub fn lines(&self) -> Vec<String> {
        let mut head = format!(
            "canary {}% \u{2192} {}",
            self.weight,
            if self.instances.is_empty() {
                "-".to_owned()
            } else {
                self.instances.join(", ")
            }
        );
        if let (Some(n), Some(of)) = (self.step, self.steps) {
            head.push_str(&format!(", step {n}/{of}"));
        }
        match self.decision.as_deref() {
            Some(d) => head.push_str(&format!(", `{d}` given")),
            None if self.awaiting_decision => {
                head.push_str(", paused: awaiting `deploy-code promote` or `deploy-code abort`")
            }
            None => {}
        }
        let c = &self.counters;
        let mut counts = format!(
            "canary counters: {} connection(s), {} failed connect(s)",
            c.connections, c.failed_connects
        );
        if c.http {
            counts.push_str(&format!(
                ", responses 2xx {} 3xx {} 4xx {} 5xx {}",
                c.http_2xx, c.http_3xx, c.http_4xx, c.http_5xx
            ));
            if let Some(ms) = c.latency_p99_ms {
                counts.push_str(&format!(", p99 <= {ms} ms"));
            }
        }
        vec![head, counts]
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct HealthView {
    pub healthy: bool,
    pub detail: String,
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

pub fn human(views: &[ServiceView], detailed: bool) -> String {
    if views.is_empty() {
        return "No services are deployed.\n".to_owned();
    }
    let mut rows = Vec::new();
    // Lines under a service's row: pending errors, and with --detailed its
    // spec and instances.
    let mut notes: Vec<Vec<String>> = Vec::new();
    for v in views {
        // Replicas: a Swarm service counts its tasks, any other instance one.
        let (running, total) = v
            .instances
            .iter()
            .fold((0u32, 0u32), |(r, t), i| match &i.tasks {
                Some(x) => (r.saturating_add(x.running), t.saturating_add(x.replicas)),
                None => (
                    r.saturating_add(u32::from(i.state == "running")),
                    t.saturating_add(1),
                ),
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
                    "    switch :{} (pid {pid}){} -> {}  ({} open, {} forwarded, {} failed{})",
                    sw.port,
                    if sw.state == "running" {
                        String::new()
                    } else {
                        format!(" {}", sw.state)
                    },
                    if sw.live.is_empty() {
                        "-".to_owned()
                    } else {
                        sw.live.join(", ")
                    },
                    sw.active,
                    sw.forwarded,
                    sw.failed,
                    if sw.shed > 0 {
                        format!(
                            ", {} shed at its cap of {} connections",
                            sw.shed, sw.max_connections
                        )
                    } else {
                        String::new()
                    }
                ),
                None => format!("    switch :{} {}", sw.port, sw.state),
            });
            if let Some(c) = &sw.canary {
                lines.extend(c.lines().into_iter().map(|l| format!("      {l}")));
            }
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
