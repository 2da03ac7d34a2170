//! The `Canary` rollout: the complete new set starts beside the old one and
//! passes its gates; then, step by step, every switch of the service sends
//! the step's share of new connections to the new set (the canary group),
//! the rest to the old one (the stable group). Each step lasts its
//! `pause_seconds` (or until `deploy-code promote` / `abort` when it has
//! none) and is judged every `analysis.interval_seconds` from the switches'
//! counters of the new set since the step began (HTTP 5xx share, failed
//! connects, a latency quantile) and an optional Prometheus query. A failing
//! judgement (or `abort`) sends every connection back to the old set at
//! once and fails the action, so that the whole change set rolls back (the
//! undo of [`super::rollout`]: switches back to the old set, the new set
//! stopped). After the last step (or `promote`) the new set takes every
//! connection, and the old set drains and stops.
//!
//! A create, or a replace whose old instances were stopped first, has no
//! old set to compare with: it rolls out as `BlueGreen` does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rollout::{RolloutUndo, switch_error};
use super::{CanaryVerdict, Change, Event, Exec, FailureKind, StepError, StepResult, Undo};
use crate::model::{CanaryAnalysis, CanaryStep, Probe, ServiceName, ServiceSpec};
use crate::state::{ServiceRecord, ServiceStatus};
use crate::switch::{CanaryStep as CanaryStepAt, Counters, Decision, SwitchClient};

/// How often a step looks for a decision given over a switch's socket.
const POLL: Duration = Duration::from_millis(100);
/// How long the Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One switch of the service: its stable and canary groups.
struct Groups {
    client: SwitchClient,
    stable: Vec<SocketAddr>,
    canary: Vec<SocketAddr>,
    /// Its port speaks HTTP (the switch reads request heads and counts
    /// responses there).
    http: bool,
}

/// How a step ended, when it did not fail.
enum StepEnd {
    /// Its pause is over.
    Done,
    /// `deploy-code promote`: no further step.
    Promoted,
}

/// Whether the switches count the service's responses as HTTP: its health
/// check speaks plain HTTP.
fn speaks_http(spec: &ServiceSpec) -> bool {
    spec.health_check
        .as_ref()
        .is_some_and(|h| matches!(&h.probe, Probe::Http { url } if url.starts_with("http://")))
}

/// Judges what the switches counted for the new set since a step began:
/// `Ok` with the figures in words, or `Err` with the first limit exceeded.
pub(super) fn judge(a: &CanaryAnalysis, c: &Counters, http: bool) -> Result<String, String> {
    let attempts = c.connections + c.failed_connects;
    let share = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let failed = share(c.failed_connects, attempts);
    let mut words = format!(
        "{} connection(s), {} failed connect(s)",
        c.connections, c.failed_connects
    );
    let (errors, error_words) = if http {
        words.push_str(&format!(
            ", {} response(s), {} 5xx",
            c.responses(),
            c.http_5xx
        ));
        (share(c.http_5xx, c.responses()), "HTTP 5xx responses")
    } else {
        (failed, "failed connections")
    };
    if let Some(max) = a.max_error_rate
        && errors > max
    {
        return Err(format!(
            "error rate {:.2} % ({error_words}) above the limit of {:.2} % ({words})",
            errors * 100.0,
            max * 100.0
        ));
    }
    if let Some(max) = a.max_failed_connections
        && failed > max
    {
        return Err(format!(
            "{:.2} % of connections to the new set failed, above the limit of {:.2} % ({words})",
            failed * 100.0,
            max * 100.0
        ));
    }
    if http && let Some(q) = c.latency_quantile_ms(0.99) {
        words.push_str(&format!(", p99 <= {q} ms"));
    }
    if let Some(l) = &a.max_latency_ms
        && http
        && let Some(ms) = c.latency_quantile_ms(l.quantile)
        && ms > l.value
    {
        return Err(format!(
            "latency quantile {} above {} ms: the bucket up to {} ms ({words})",
            l.quantile,
            l.value,
            if ms == u64::MAX {
                "∞".to_owned()
            } else {
                ms.to_string()
            }
        ));
    }
    Ok(words)
}

/// The value of the first sample of a Prometheus instant query.
async fn prometheus_value(url: &str, query: &str) -> Result<f64, String> {
    let client = crate::net::client_builder()
        .timeout(QUERY_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let target = reqwest::Url::parse_with_params(&endpoint, &[("query", query)])
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let resp = client
        .get(target)
        .send()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| format!("{endpoint}: {e}"))?;
    if !status.is_success() || body["status"] != "success" {
        return Err(format!(
            "{endpoint} answered {status}: {}",
            body["error"].as_str().unwrap_or("no result")
        ));
    }
    let sample = &body["data"]["result"];
    let value = match body["data"]["resultType"].as_str() {
        Some("scalar") => &sample[1],
        _ => &sample[0]["value"][1],
    };
    value
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("the query `{query}` returned no sample"))
}

impl Exec<'_> {
    /// Replaces `old` by `after` step by step (see the module's text).
    pub(super) async fn canary(
        &self,
        change: &Change,
        after: &ServiceSpec,
        old: Option<ServiceRecord>,
    ) -> StepResult {
        let Some(old) = old
            .clone()
            .filter(|r| !r.handles.is_empty() && r.spec.behind_switch)
        else {
            return self.rollout(change, after, old).await;
        };
        let action = change.action;
        let fail = |e: StepError| self.fail(&change.service, action, e);
        self.ensure_switches(after, true).await.map_err(fail)?;
        let undo = Arc::new(Mutex::new(RolloutUndo {
            old: Some(old.clone()),
            new_spec: after.clone(),
            started: Vec::new(),
            stopped: Vec::new(),
        }));
        self.undo
            .lock()
            .expect("undo")
            .push(Undo::Rollout(undo.clone()));
        let n = after.replicas.max(1);
        let handles = self
            .start_some(
                after,
                &change.gpus,
                Some(0..n),
                crate::state::IntentAction::Start,
            )
            .await
            .map_err(fail)?;
        undo.lock()
            .expect("rollout")
            .started
            .extend(handles.iter().cloned());
        let g = self.gate(after, &handles, 1, self.deadline).await;
        if !g.healthy {
            return Err(self.evidence(after, &handles, action, g).await);
        }
        let mut groups = Vec::new();
        for (client, _, cp) in self.switches_of(after) {
            let stable = self
                .addresses(&old.spec, &old.handles, cp)
                .await
                .map_err(fail)?;
            let canary = self.addresses(after, &handles, cp).await.map_err(fail)?;
            let http = crate::switch::Tuning::of(after, client.port).http;
            groups.push(Groups {
                client,
                stable,
                canary,
                http,
            });
        }
        let http = speaks_http(after);
        let steps = self.canary.steps.clone();
        for (i, step) in steps.iter().enumerate() {
            match self
                .canary_step(&change.service, i + 1, steps.len(), step, &groups, http)
                .await
            {
                Ok(StepEnd::Done) => {}
                Ok(StepEnd::Promoted) => break,
                Err(e) => {
                    // Every new connection to the old set at once; the
                    // rollback then stops the new set.
                    for g in &groups {
                        let _ = g
                            .client
                            .set_canary(&g.stable, &g.canary, 0, g.http, None)
                            .await;
                    }
                    return Err(fail(e));
                }
            }
        }
        // Weight 100: the new set is the stable set; the old one drains and stops.
        self.point(after, &handles, Some(&old.spec), &[], &old.handles)
            .await
            .map_err(fail)?;
        self.stop(&old.spec, &old.handles, crate::state::IntentAction::Stop)
            .await
            .map_err(fail)?;
        undo.lock()
            .expect("rollout")
            .stopped
            .extend(old.handles.iter().cloned());
        self.stop_switches(&old.spec, Some(after)).await;
        self.alive_prior
            .lock()
            .expect("alive")
            .remove(&change.service);
        let rec = self.record(after, handles, ServiceStatus::Ready, &change.gpus);
        self.with_store(|s| s.put_service(&rec))
            .map_err(|e| fail(e.into()))
    }

    /// One step: the weight set on every switch, then judged every interval
    /// until its pause is over, a decision comes, or a judgement fails.
    async fn canary_step(
        &self,
        service: &ServiceName,
        n: usize,
        total: usize,
        step: &CanaryStep,
        groups: &[Groups],
        http: bool,
    ) -> Result<StepEnd, StepError> {
        let analysis = &self.canary.analysis;
        let emit = |verdict: CanaryVerdict, detail: String, counters: Counters| {
            let _ = self.with_store(|s| {
                s.event(
                    self.revision,
                    Some(service),
                    crate::state::EventKind::Canary,
                    match verdict {
                        CanaryVerdict::Fail | CanaryVerdict::Aborted => {
                            crate::state::EventOutcome::Failed
                        }
                        _ => crate::state::EventOutcome::Succeeded,
                    },
                    &format!("step {n}/{total} at {} %: {detail}", step.weight),
                )
            });
            self.emit(Event::Canary {
                service: service.clone(),
                step: n,
                steps: total,
                weight: step.weight,
                verdict,
                detail,
                counters,
            });
        };
        let mut base = Vec::new();
        for g in groups {
            let id = self.with_store(|s| {
                s.record_intent(
                    self.revision,
                    service,
                    crate::state::IntentAction::SwitchSet,
                    &serde_json::json!({
                        "port": g.client.port,
                        "backends": g.stable,
                        "canary": g.canary,
                        "weight": step.weight,
                    }),
                )
            })?;
            let at = CanaryStepAt {
                n: u32::try_from(n).unwrap_or(u32::MAX),
                of: u32::try_from(total).unwrap_or(u32::MAX),
                awaiting_decision: step.pause_seconds.is_none(),
            };
            let res = g
                .client
                .set_canary(&g.stable, &g.canary, step.weight, g.http, Some(at))
                .await;
            let outcome = if res.is_ok() { "succeeded" } else { "failed" };
            self.with_store(|s| s.close_intent(id, outcome, &serde_json::json!({})))?;
            res.map_err(switch_error)?;
            let status = g.client.status().await.map_err(switch_error)?;
            base.push(status.sum(&g.canary));
        }
        let until = match step.pause_seconds {
            Some(s) => format!("for {s} s"),
            None => "until `deploy-code promote` or `deploy-code abort`".to_owned(),
        };
        emit(
            CanaryVerdict::Started,
            format!(
                "{} % of new connections to the new set, {until}",
                step.weight
            ),
            Counters::default(),
        );
        let began = Instant::now();
        let interval = Duration::from_secs(analysis.interval_seconds.max(1));
        let end = step.pause_seconds.map(|s| began + Duration::from_secs(s));
        let mut next_judgement = began + interval;
        loop {
            let mut counted = Counters::default();
            let mut decision = None;
            for (g, b) in groups.iter().zip(&base) {
                let status = g.client.status().await.map_err(switch_error)?;
                counted.add(&status.sum(&g.canary).since(b));
                decision = decision.or(status.decision);
            }
            match decision {
                Some(Decision::Promote) => {
                    emit(
                        CanaryVerdict::Promoted,
                        "promoted: the new set takes every connection".into(),
                        counted,
                    );
                    return Ok(StepEnd::Promoted);
                }
                Some(Decision::Abort) => {
                    let why = "aborted by `deploy-code abort`".to_owned();
                    emit(CanaryVerdict::Aborted, why.clone(), counted);
                    return Err(StepError::new(
                        FailureKind::Gate,
                        format!("canary step {n}/{total} ({} %): {why}", step.weight),
                    ));
                }
                None => {}
            }
            let now = Instant::now();
            let over = end.is_some_and(|e| now >= e);
            if now >= next_judgement || over {
                let mut verdict = judge(analysis, &counted, http);
                if verdict.is_ok()
                    && let Some(p) = &analysis.prometheus
                {
                    verdict = match prometheus_value(&p.url, &p.query).await {
                        Ok(v) if v > p.max => Err(format!(
                            "the Prometheus query `{}` gave {v}, above {}",
                            p.query, p.max
                        )),
                        Ok(v) => verdict.map(|w| format!("{w}; Prometheus {v}")),
                        Err(e) => Err(format!("the Prometheus query failed: {e}")),
                    };
                }
                match verdict {
                    Ok(words) => emit(CanaryVerdict::Pass, words, counted),
                    Err(why) => {
                        emit(CanaryVerdict::Fail, why.clone(), counted);
                        return Err(StepError::new(
                            FailureKind::Gate,
                            format!(
                                "canary step {n}/{total} ({} %) failed its analysis: {why}",
                                step.weight
                            ),
                        ));
                    }
                }
                next_judgement = Instant::now() + interval;
            }
            if over {
                return Ok(StepEnd::Done);
            }
            if self.cancel.level() >= 1 {
                return Err(StepError::new(
                    FailureKind::Interrupted,
                    format!("canary step {n}/{total} interrupted"),
                ));
            }
            if Instant::now() >= self.deadline {
                return Err(StepError::new(
                    FailureKind::Gate,
                    format!(
                        "canary step {n}/{total} ({} %): `deployment.timeout_seconds` ran out while it waited",
                        step.weight
                    ),
                ));
            }
            let mut wake = (Instant::now() + POLL).min(next_judgement);
            if let Some(e) = end {
                wake = wake.min(e);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = self.cancel.reached(1) => {}
            }
        }
    }
}
