//! The Prometheus exposition of what the state knows, and its publication to a
//! Pushgateway or a node-exporter textfile directory.
//!
//! Building the exposition is pure; [`publish`] is the only I/O here, and a
//! monitoring endpoint that is down is reported to the caller as a warning, never
//! as a failure of the deployment.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::MonitoringSettings;
use crate::state::{Deployment, Outcome, ServiceStatus, Snapshot};

/// Timings of one apply, stored under `timings` in the deployment's evidence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Wall time of the whole apply, seconds.
    pub duration_seconds: f64,
    /// Wall time of each phase, in phase order, seconds.
    #[serde(default)]
    pub phases: Vec<f64>,
    /// Per service: seconds from start until its health gate passed.
    #[serde(default)]
    pub gates: BTreeMap<String, f64>,
}

impl Timings {
    /// Reads the timings a deployment recorded (none for a run that never finished).
    pub fn of(deployment: &Deployment) -> Option<Timings> {
        deployment
            .evidence
            .get("timings")
            .and_then(|t| serde_json::from_value(t.clone()).ok())
    }
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Succeeded, "succeeded"),
    (Outcome::Failed, "failed"),
    (Outcome::RolledBack, "rolled_back"),
    (Outcome::RollbackFailed, "rollback_failed"),
    (Outcome::InProgress, "in_progress"),
];

fn outcome_label(outcome: Outcome) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, _)| *o == outcome)
        .map(|(_, l)| *l)
        .unwrap_or("unknown")
}

/// Escapes a label value per the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Writer {
    out: String,
    project: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut l = format!("project=\"{}\"", escape(&self.project));
        for (k, v) in labels {
            let _ = write!(l, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.out, "{name}{{{l}}} {}", fmt_value(value));
    }
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The status files of the monitors of a service's recorded instances
/// (a container's monitor keeps its file in `log_dir`).
fn monitor_statuses(
    r: &crate::state::ServiceRecord,
    log_dir: Option<&std::path::Path>,
) -> Vec<crate::backends::monitor_file::MonitorStatus> {
    r.handles
        .iter()
        .filter_map(|h| crate::backends::monitor_file::status_in(h, log_dir))
        .collect()
}

/// What one traffic switch said about itself when the exposition was made.
pub(crate) struct SwitchSample {
    pub service: String,
    pub port: u16,
    pub status: crate::switch::Status,
}

/// The exposition for one project: `history` is every deployment, newest first.
pub fn exposition(project: &str, snapshot: &Snapshot, history: &[Deployment]) -> String {
    exposition_in(project, snapshot, history, None, &Default::default(), &[])
}

/// [`exposition`], with the monitors of containers read from `log_dir`
/// (the settings' `storage.log_dir`) and `recorded`, the restarts the
/// state's events hold per service.
pub(crate) fn exposition_in(
    project: &str,
    snapshot: &Snapshot,
    history: &[Deployment],
    log_dir: Option<&std::path::Path>,
    recorded: &std::collections::BTreeMap<String, u64>,
    switches: &[SwitchSample],
) -> String {
    let mut w = Writer {
        out: String::new(),
        project: project.to_owned(),
    };

    w.family(
        "deploy_code_services",
        "gauge",
        "Services in the state, by status.",
    );
    for (status, label) in [
        (ServiceStatus::Ready, "ready"),
        (ServiceStatus::Tainted, "tainted"),
        (ServiceStatus::Pending, "pending"),
    ] {
        let n = snapshot
            .services
            .values()
            .filter(|s| s.status == status)
            .count();
        w.sample("deploy_code_services", &[("status", label)], n as f64);
    }

    w.family(
        "deploy_code_service_ready",
        "gauge",
        "1 when the service is deployed and passed its health gate, else 0.",
    );
    for (name, rec) in &snapshot.services {
        let ready = if rec.status == ServiceStatus::Ready {
            1.0
        } else {
            0.0
        };
        w.sample(
            "deploy_code_service_ready",
            &[
                ("service", name.as_str()),
                ("backend", rec.backend.as_str()),
            ],
            ready,
        );
    }

    // Processes under a restart policy: what their monitors report.
    let monitored: Vec<_> = snapshot
        .services
        .iter()
        .filter(|(_, r)| r.spec.restart_settings.is_some())
        .map(|(name, r)| (name, r, monitor_statuses(r, log_dir)))
        .collect();
    if !monitored.is_empty() {
        w.family(
            "deploy_code_service_restarts_total",
            "counter",
            "Restarts of a process or container service by its monitors since the running monitors started (every replica).",
        );
        for (name, _, statuses) in &monitored {
            let n: u64 = statuses.iter().map(|m| u64::from(m.restarts)).sum();
            w.sample(
                "deploy_code_service_restarts_total",
                &[("service", name.as_str())],
                n as f64,
            );
        }
        w.family(
            "deploy_code_service_restarts_recorded_total",
            "counter",
            "Restarts of a service by its monitors recorded in the state's events (every replica and monitor, across applies).",
        );
        for (name, _, _) in &monitored {
            w.sample(
                "deploy_code_service_restarts_recorded_total",
                &[("service", name.as_str())],
                recorded.get(name.as_str()).copied().unwrap_or(0) as f64,
            );
        }
        w.family(
            "deploy_code_service_circuit_open",
            "gauge",
            "1 when a replica's circuit breaker is open (not restarted until the next apply), else 0.",
        );
        for (name, _, statuses) in &monitored {
            let open = statuses
                .iter()
                .any(|m| m.state == crate::backends::monitor_file::MonitorState::CircuitOpen);
            w.sample(
                "deploy_code_service_circuit_open",
                &[("service", name.as_str())],
                if open { 1.0 } else { 0.0 },
            );
        }
    }

    w.family(
        "deploy_code_revision",
        "gauge",
        "The newest deployment revision.",
    );
    w.sample("deploy_code_revision", &[], snapshot.revision as f64);
    w.family(
        "deploy_code_state_serial",
        "gauge",
        "The state's serial: it grows with every committed change.",
    );
    w.sample("deploy_code_state_serial", &[], snapshot.serial as f64);

    w.family(
        "deploy_code_deployments_total",
        "counter",
        "Deployments recorded in the state, by outcome.",
    );
    for (outcome, label) in OUTCOMES {
        let n = history.iter().filter(|d| d.outcome == outcome).count();
        w.sample(
            "deploy_code_deployments_total",
            &[("outcome", label)],
            n as f64,
        );
    }
    w.family(
        "deploy_code_rollbacks_total",
        "counter",
        "Deployments that failed and were rolled back (cleanly or not).",
    );
    let rollbacks = history
        .iter()
        .filter(|d| matches!(d.outcome, Outcome::RolledBack | Outcome::RollbackFailed))
        .count();
    w.sample("deploy_code_rollbacks_total", &[], rollbacks as f64);

    let last = history.iter().find(|d| d.outcome != Outcome::InProgress);
    switch_families(&mut w, switches);
    if let Some(last) = last {
        w.family(
            "deploy_code_last_apply_info",
            "gauge",
            "The last finished apply: its revision and outcome.",
        );
        w.sample(
            "deploy_code_last_apply_info",
            &[
                ("revision", &last.revision.to_string()),
                ("outcome", outcome_label(last.outcome)),
            ],
            1.0,
        );
        if let Some(t) = Timings::of(last) {
            w.family(
                "deploy_code_last_apply_duration_seconds",
                "gauge",
                "Wall time of the last finished apply.",
            );
            w.sample(
                "deploy_code_last_apply_duration_seconds",
                &[],
                t.duration_seconds,
            );
            w.family(
                "deploy_code_last_apply_phase_duration_seconds",
                "gauge",
                "Wall time of each phase of the last finished apply.",
            );
            for (i, secs) in t.phases.iter().enumerate() {
                w.sample(
                    "deploy_code_last_apply_phase_duration_seconds",
                    &[("phase", &(i + 1).to_string())],
                    *secs,
                );
            }
            w.family(
                "deploy_code_last_apply_health_gate_seconds",
                "gauge",
                "Seconds from start until the health gate passed, per service, in the last finished apply.",
            );
            for (service, secs) in &t.gates {
                w.sample(
                    "deploy_code_last_apply_health_gate_seconds",
                    &[("service", service)],
                    *secs,
                );
            }
        }
    }
    w.out
}

/// The traffic switches' connection counters, open connections and whether
/// each sheds connections at its cap.
fn switch_families(w: &mut Writer, switches: &[SwitchSample]) {
    w.family(
        "deploy_code_switch_connections_total",
        "counter",
        "Connections a traffic switch accepted since it started, by what became of them: forwarded, failed (no instance took it), shed (beyond its cap), timed_out (idle, or no whole request head in time).",
    );
    for sw in switches {
        let port = sw.port.to_string();
        let s = &sw.status;
        for (outcome, n) in [
            ("forwarded", s.forwarded.values().sum::<u64>()),
            ("failed", s.failed),
            ("shed", s.shed),
            ("timed_out", s.timed_out),
        ] {
            w.sample(
                "deploy_code_switch_connections_total",
                &[
                    ("service", &sw.service),
                    ("port", &port),
                    ("outcome", outcome),
                ],
                n as f64,
            );
        }
    }
    w.family(
        "deploy_code_switch_open_connections",
        "gauge",
        "Client connections a traffic switch holds open now.",
    );
    for sw in switches {
        w.sample(
            "deploy_code_switch_open_connections",
            &[("service", &sw.service), ("port", &sw.port.to_string())],
            sw.status.open as f64,
        );
    }
    w.family(
        "deploy_code_switch_max_connections",
        "gauge",
        "The most client connections a traffic switch keeps open: its configured cap, or fewer where its open-file limit allows fewer.",
    );
    for sw in switches {
        w.sample(
            "deploy_code_switch_max_connections",
            &[("service", &sw.service), ("port", &sw.port.to_string())],
            sw.status.max_connections as f64,
        );
    }
    w.family(
        "deploy_code_switch_degraded",
        "gauge",
        "1 while a traffic switch sheds connections beyond its cap (it shed one in the last few seconds).",
    );
    for sw in switches {
        w.sample(
            "deploy_code_switch_degraded",
            &[("service", &sw.service), ("port", &sw.port.to_string())],
            if sw.status.shedding { 1.0 } else { 0.0 },
        );
    }
}

/// Publishes the exposition where `monitoring` says: a Pushgateway
/// (`PUT <url>/metrics/job/deploy-code/project/<project>`) and/or a textfile
/// directory (`deploy_code_<project>.prom`, written atomically). Returns one
/// warning per target that failed; an empty list when all went well.
pub async fn publish(monitoring: &MonitoringSettings, project: &str, text: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(url) = &monitoring.pushgateway {
        let target = format!(
            "{}/metrics/job/deploy-code/project/{}",
            url.trim_end_matches('/'),
            project
        );
        let client = crate::net::client_builder()
            .timeout(std::time::Duration::from_secs(5))
            .build();
        let result = match client {
            Ok(c) => c
                .put(&target)
                .header("Content-Type", "text/plain; version=0.0.4")
                .body(text.to_owned())
                .send()
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("HTTP {}", r.status()))
                    }
                }),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            warnings.push(format!("metrics were not pushed to {target}: {e}"));
        }
    }
    if let Some(dir) = &monitoring.textfile_dir
        && let Err(e) = write_textfile(Path::new(dir), project, text)
    {
        warnings.push(format!("metrics were not written to {dir}: {e}"));
    }
    warnings
}

fn write_textfile(dir: &Path, project: &str, text: &str) -> std::io::Result<()> {
    let name = format!(
        "deploy_code_{}.prom",
        project.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn an_empty_state_still_exposes_every_family_with_zeroes() {
        let text = exposition("demo", &Snapshot::default(), &[]);
        assert!(text.contains("deploy_code_services{project=\"demo\",status=\"ready\"} 0"));
        assert!(
            text.contains(
                "deploy_code_deployments_total{project=\"demo\",outcome=\"rolled_back\"} 0"
            )
        );
        assert!(text.contains("# TYPE deploy_code_rollbacks_total counter"));
        assert!(!text.contains("last_apply"), "no apply yet: {text}");
    }
}
