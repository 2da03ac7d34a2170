//! Rollouts behind a traffic switch (`BlueGreen`, `RollingUpdate`) and
//! replica-by-replica replaces (`RollingUpdate`).
//!
//! `BlueGreen`: the complete new set starts beside the old one and passes
//! its gates; then every switch of the service sends new connections to the
//! new set at once; the old set's connections drain (at most
//! `deployment.drain_seconds`) and it stops.
//!
//! `RollingUpdate`: in steps of `max_surge + max_unavailable` replicas
//! (`deployment.rolling`; one by default): up to `max_unavailable` old
//! replicas of the step leave the switch, drain and stop first; the step's
//! new replicas start and pass their gate (held `min_healthy_seconds`), join
//! the switch's set in place of the old replicas of the same indexes, which
//! drain and stop; then the next step.
//!
//! Undo: a rollout records what it started and what it stopped as it goes;
//! the rollback restarts the old replicas it stopped, points the switches
//! back at the old set and only then stops the new instances, so that the
//! port keeps answering throughout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Action, Change, Exec, RollbackResult, StepError, StepResult, Undo};
use crate::apply::FailureKind;
use crate::error::Code;
use crate::model::{ServiceSpec, Strategy};
use serde::{Deserialize, Serialize};

use crate::backends::Registry;
use crate::state::{GpuRef, Handle, ServiceRecord, ServiceStatus, Snapshot, StateError, Store};
use crate::switch::SwitchClient;

/// What a rollout has done so far, for its undo.
#[derive(Clone, Debug)]
pub(super) struct RolloutUndo {
    /// The record it replaces (`None` for a create, or when the old
    /// instances were stopped first and are restored by their own undo).
    pub old: Option<ServiceRecord>,
    pub new_spec: ServiceSpec,
    /// New instances started.
    pub started: Vec<Handle>,
    /// Old instances stopped.
    pub stopped: Vec<Handle>,
}

fn replica_of(h: &Handle) -> u32 {
    h.replica()
}

pub(super) fn switch_error(e: crate::switch::SwitchError) -> StepError {
    StepError::new(FailureKind::Backend { code: Code::E010 }, e.to_string())
}

impl Exec<'_> {
    /// One switch per fixed TCP host port of a spec behind switches: the
    /// client, the address it listens on, and the container port it forwards
    /// to.
    pub(super) fn switches_of(&self, spec: &ServiceSpec) -> Vec<(SwitchClient, String, u16)> {
        if !spec.behind_switch {
            return Vec::new();
        }
        spec.ports
            .iter()
            .filter_map(|p| {
                let host = p.host_port?;
                let ip = p.host_ip.clone().unwrap_or_else(|| {
                    self.backends
                        .get(spec.backend)
                        .map_or("0.0.0.0", |b| b.default_host_ip())
                        .to_owned()
                });
                let listen = if ip.contains(':') {
                    format!("[{ip}]:{host}")
                } else {
                    format!("{ip}:{host}")
                };
                Some((
                    SwitchClient::new(&self.state_path, spec.name.as_str(), host),
                    listen,
                    p.container_port,
                ))
            })
            .collect()
    }

    /// Starts the switches of `spec` that do not run yet; those it starts
    /// are stopped again by a rollback when `undoable`.
    pub(super) async fn ensure_switches(
        &self,
        spec: &ServiceSpec,
        undoable: bool,
    ) -> Result<(), StepError> {
        for (client, listen, _) in self.switches_of(spec) {
            let log = self
                .ctx
                .log_dir
                .join(format!("{}-switch-{}.log", spec.name, client.port));
            let id = self.with_store(|s| {
                s.record_intent(
                    self.revision,
                    &spec.name,
                    crate::state::IntentAction::SwitchStart,
                    &serde_json::json!({ "listen": listen }),
                )
            })?;
            let tuning = crate::switch::Tuning::of(spec, client.port);
            let res = client
                .ensure(&listen, &self.ctx.project, &self.ctx.lineage, &log, &tuning)
                .await;
            let (outcome, detail) = match &res {
                Ok(started) => ("succeeded", serde_json::json!({ "started": started })),
                Err(e) => ("failed", serde_json::json!({ "error": e.to_string() })),
            };
            self.with_store(|s| s.close_intent(id, outcome, &detail))?;
            if res.map_err(switch_error)? && undoable {
                self.undo.lock().expect("undo").push(Undo::SwitchUp {
                    service: spec.name.clone(),
                    client: Box::new(client),
                });
            }
        }
        Ok(())
    }

    /// Stops the switches of `spec` (a destroyed service, or one no longer
    /// behind switches), or only those on ports `keep` does not hold.
    pub(super) async fn stop_switches(&self, spec: &ServiceSpec, keep: Option<&ServiceSpec>) {
        let kept: Vec<SwitchClient> = keep
            .map(|k| self.switches_of(k).into_iter().map(|s| s.0).collect())
            .unwrap_or_default();
        for (client, _, _) in self.switches_of(spec) {
            if !kept.contains(&client) {
                let _ = client.stop(&self.ctx.project, &self.ctx.lineage).await;
            }
        }
    }

    /// The addresses of `handles` for `container_port`, where a switch
    /// forwards to them.
    pub(super) async fn addresses(
        &self,
        spec: &ServiceSpec,
        handles: &[Handle],
        container_port: u16,
    ) -> Result<Vec<SocketAddr>, StepError> {
        let backend = self.backend(spec)?;
        let mut out = Vec::new();
        for h in handles {
            let addr = backend
                .own_address(h, container_port)
                .await
                .and_then(|(ip, port)| {
                    let ip = ip.trim_matches(|c| c == '[' || c == ']');
                    ip.parse::<std::net::IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, port))
                })
                .ok_or_else(|| {
                    StepError::new(
                        FailureKind::Backend { code: Code::E010 },
                        format!(
                            "no address of replica {} of `{}` for port {container_port}",
                            replica_of(h),
                            spec.name
                        ),
                    )
                })?;
            out.push(addr);
        }
        Ok(out)
    }

    /// Points every switch of `spec` at `live` (instances of `spec`) plus
    /// `others` (instances of `other_spec` still serving), then waits until
    /// the connections of `retiring` (instances of `other_spec`) have
    /// drained.
    pub(super) async fn point(
        &self,
        spec: &ServiceSpec,
        live: &[Handle],
        other_spec: Option<&ServiceSpec>,
        others: &[Handle],
        retiring: &[Handle],
    ) -> Result<(), StepError> {
        for (client, _, cp) in self.switches_of(spec) {
            let mut set = self.addresses(spec, live, cp).await?;
            let mut gone = Vec::new();
            if let Some(o) = other_spec.filter(|o| o.behind_switch) {
                set.extend(self.addresses(o, others, cp).await?);
                // An instance that is gone already has no address: nothing to drain.
                for h in retiring {
                    if let Ok(a) = self.addresses(o, std::slice::from_ref(h), cp).await {
                        gone.extend(a);
                    }
                }
            }
            let id = self.with_store(|s| {
                s.record_intent(
                    self.revision,
                    &spec.name,
                    crate::state::IntentAction::SwitchSet,
                    &serde_json::json!({ "port": client.port, "backends": set }),
                )
            })?;
            let tuning = crate::switch::Tuning::of(spec, client.port);
            let res = client.set(&set, self.drain, &tuning).await;
            let outcome = if res.is_ok() { "succeeded" } else { "failed" };
            self.with_store(|s| s.close_intent(id, outcome, &serde_json::json!({})))?;
            res.map_err(switch_error)?;
            if !gone.is_empty() {
                client.drained(&gone, self.drain).await;
            }
        }
        Ok(())
    }

    /// Points every switch of `spec` at `handles` alone.
    pub(super) async fn point_all(
        &self,
        spec: &ServiceSpec,
        handles: &[Handle],
    ) -> Result<(), StepError> {
        self.point(spec, handles, None, &[], &[]).await
    }

    /// Starts the replicas `only` of `spec` under an intent.
    pub(super) async fn start_some(
        &self,
        spec: &ServiceSpec,
        gpus: &[GpuRef],
        only: Option<std::ops::Range<u32>>,
        intent: crate::state::IntentAction,
    ) -> Result<Vec<Handle>, StepError> {
        let backend = self.backend(spec)?;
        let mut ctx = self.ctx.clone();
        ctx.gpus = gpus.to_vec();
        ctx.only_replicas = only;
        let handles = self
            .journalled(spec, gpus, intent, backend.start(spec, &ctx))
            .await?;
        self.emit(super::Event::InstanceStarted {
            service: spec.name.clone(),
            handles: handles.clone(),
        });
        Ok(handles)
    }

    /// Brings `after` up in place of `old` (if any): the whole new set then
    /// one switch (`BlueGreen`, and any create), or replica by replica
    /// (`RollingUpdate`).
    pub(super) async fn rollout(
        &self,
        change: &Change,
        after: &ServiceSpec,
        old: Option<ServiceRecord>,
    ) -> StepResult {
        let action = change.action;
        let fail = |e: StepError| self.fail(&change.service, action, e);
        self.ensure_switches(after, true).await.map_err(fail)?;
        let old = old.filter(|r| !r.handles.is_empty());
        let undo = Arc::new(Mutex::new(RolloutUndo {
            old: old.clone(),
            new_spec: after.clone(),
            started: Vec::new(),
            stopped: Vec::new(),
        }));
        self.undo
            .lock()
            .expect("undo")
            .push(Undo::Rollout(undo.clone()));
        let n = after.replicas.max(1);
        let rolling = self.strategy == Strategy::RollingUpdate && old.is_some();
        let (batches, unavailable): (Vec<std::ops::Range<u32>>, usize) = if rolling {
            (
                batches(n, self.rolling.max_surge, self.rolling.max_unavailable),
                self.rolling.max_unavailable as usize,
            )
        } else {
            (std::iter::once(0..n).collect(), 0)
        };
        let old_spec = old.as_ref().map(|r| r.spec.clone());
        let mut old_live: Vec<Handle> = old.as_ref().map(|r| r.handles.clone()).unwrap_or_default();
        old_live.sort_by_key(replica_of);
        let mut new_live: Vec<Handle> = Vec::new();
        // BlueGreen with `keep_seconds`: the old set leaves the switches but
        // keeps running, for a flip back (see `Kept`).
        let keeps = self.strategy == Strategy::BlueGreen
            && !self.keep.is_zero()
            && after.behind_switch
            && old_spec.as_ref().is_some_and(|o| o.behind_switch);
        let mut kept: Vec<Handle> = Vec::new();
        let last = batches.len().saturating_sub(1);
        for (i, batch) in batches.into_iter().enumerate() {
            // Up to `max_unavailable` old replicas of this batch's indexes
            // leave the switches, drain and stop before their successors
            // start.
            if let (Some(spec), true) = (&old_spec, unavailable > 0) {
                let (early, staying): (Vec<Handle>, Vec<Handle>) = {
                    let mut taken = 0;
                    old_live.iter().cloned().partition(|h| {
                        let take = taken < unavailable && batch.contains(&replica_of(h));
                        taken += usize::from(take);
                        take
                    })
                };
                if !early.is_empty() {
                    self.point(after, &new_live, Some(spec), &staying, &early)
                        .await
                        .map_err(fail)?;
                    self.stop(spec, &early, crate::state::IntentAction::Stop)
                        .await
                        .map_err(fail)?;
                    undo.lock()
                        .expect("rollout")
                        .stopped
                        .extend(early.iter().cloned());
                    old_live = staying;
                }
            }
            let handles = self
                .start_some(
                    after,
                    &change.gpus,
                    Some(batch.clone()),
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
            new_live.extend(handles);
            // The old replicas this batch takes over from: those of the same
            // indexes, and after the last batch every one left.
            let (retiring, staying): (Vec<Handle>, Vec<Handle>) = old_live
                .iter()
                .cloned()
                .partition(|h| i == last || batch.contains(&replica_of(h)));
            self.point(after, &new_live, old_spec.as_ref(), &staying, &retiring)
                .await
                .map_err(fail)?;
            if keeps {
                kept.extend(retiring);
            } else if let (Some(spec), false) = (&old_spec, retiring.is_empty()) {
                self.stop(spec, &retiring, crate::state::IntentAction::Stop)
                    .await
                    .map_err(fail)?;
                undo.lock()
                    .expect("rollout")
                    .stopped
                    .extend(retiring.iter().cloned());
            }
            old_live = staying;
        }
        if let Some(spec) = &old_spec {
            self.stop_switches(spec, Some(after)).await;
        }
        self.alive_prior
            .lock()
            .expect("alive")
            .remove(&change.service);
        let rec = self.record(after, new_live, ServiceStatus::Ready, &change.gpus);
        self.with_store(|s| s.put_service(&rec))
            .map_err(|e| fail(e.into()))?;
        if let (Some(old), false) = (&old, kept.is_empty()) {
            let mut record = old.clone();
            record.handles = kept;
            let k = Kept {
                record,
                until: unix_now() + self.keep.as_secs(),
                revision: self.revision,
            };
            self.with_store(|s| k.write(s, crate::state::EventOutcome::Kept))
                .map_err(|e| fail(e.into()))?;
        }
        Ok(())
    }

    /// Undoes a rollout: the old replicas it stopped start again and pass
    /// their gate, the switches point back at the old set, and only then do
    /// the new instances stop.
    pub(super) async fn undo_rollout(
        &self,
        undo: RolloutUndo,
        deadline: Instant,
    ) -> RollbackResult {
        let name = undo.new_spec.name.clone();
        let mut restored = Vec::new();
        let mut problems = Vec::new();
        if let Some(old) = &undo.old {
            let mut live: Vec<Handle> = old
                .handles
                .iter()
                .filter(|h| !undo.stopped.contains(h))
                .cloned()
                .collect();
            match self.with_plaintext(&old.spec) {
                Err(e) => problems.push(e.message),
                Ok(spec) => {
                    if spec.behind_switch
                        && let Err(e) = self.ensure_switches(&spec, false).await
                    {
                        problems.push(e.message);
                    }
                    if !undo.stopped.is_empty() {
                        let lo = undo.stopped.iter().map(replica_of).min().unwrap_or(0);
                        let hi = undo.stopped.iter().map(replica_of).max().unwrap_or(0);
                        match self
                            .start_some(
                                &spec,
                                &old.gpus,
                                Some(lo..hi + 1),
                                crate::state::IntentAction::RollbackStart,
                            )
                            .await
                        {
                            Ok(handles) => {
                                let g = self.gate(&spec, &handles, 2, deadline).await;
                                if !g.healthy {
                                    problems
                                        .push(format!("restarted but not healthy: {}", g.reason));
                                }
                                live.extend(handles);
                            }
                            Err(e) => problems.push(e.message),
                        }
                    }
                    if spec.behind_switch
                        && let Err(e) = self
                            .point(&spec, &live, Some(&undo.new_spec), &[], &undo.started)
                            .await
                    {
                        problems.push(e.message);
                    }
                }
            }
            live.sort_by_key(replica_of);
            restored = live;
        }
        let stopped_new = self
            .stop(
                &undo.new_spec,
                &undo.started,
                crate::state::IntentAction::RollbackStop,
            )
            .await;
        if let Err(e) = &stopped_new {
            problems.push(e.message.clone());
        }
        if undo.old.as_ref().is_none_or(|o| !o.spec.behind_switch) {
            self.stop_switches(&undo.new_spec, undo.old.as_ref().map(|o| &o.spec))
                .await;
        }
        let st = match &undo.old {
            Some(old) => {
                let mut r = old.clone();
                r.handles = restored;
                r.updated_at = super::now_rfc3339();
                r.status = if problems.is_empty() {
                    ServiceStatus::Ready
                } else {
                    ServiceStatus::Tainted
                };
                self.alive_prior
                    .lock()
                    .expect("alive")
                    .insert(name.clone(), r.clone());
                self.with_store(|s| s.put_service(&r))
            }
            None => self.with_store(|s| s.remove_service(&name)),
        };
        if let Err(e) = st {
            problems.push(e.to_string());
        }
        let detail = if problems.is_empty() {
            format!(
                "the old set serves again; stopped {} new instance(s)",
                undo.started.len()
            )
        } else {
            problems.join("; ")
        };
        self.report_step(
            &name,
            super::UndoStep::RestoreOldSet,
            problems.is_empty(),
            detail,
        )
    }
}

/// The event kind under which the state records a kept old set: its
/// message is the [`Kept`] as JSON, its outcome `kept`, then `released`
/// (stopped at the end of its window) or `flipped-back` (by `rollback`).
pub(crate) const KEPT: crate::state::EventKind = crate::state::EventKind::KeptOldSet;

/// An old set that a `BlueGreen` rollout with `blue_green.keep_seconds`
/// keeps running after the flip, out of the switches' sets. No service
/// record names its instances: `rollback` in the window flips back to it,
/// `apply` stops it when the window closes, and whatever recovers the state
/// first (`apply`, `destroy`, `cleanup`) stops it as an unrecorded instance
/// if the waiting `apply` was killed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Kept {
    /// The old record, with the kept instances as its handles.
    pub record: ServiceRecord,
    /// Unix seconds when the window closes.
    pub until: u64,
    /// The revision that flipped away from it.
    pub revision: u64,
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Kept {
    fn write(
        &self,
        store: &mut Store,
        outcome: crate::state::EventOutcome,
    ) -> Result<(), StateError> {
        let message = serde_json::to_string(self).unwrap_or_default();
        store.event(
            self.revision,
            Some(&self.record.name),
            KEPT,
            outcome,
            &message,
        )
    }

    /// Seconds left in the window.
    pub fn left(&self) -> u64 {
        self.until.saturating_sub(unix_now())
    }
}

/// The kept sets of the state at `path` (`snap` its snapshot): per service,
/// the newest kept-set event when it says `kept` and no record names its
/// instances (a run undone after it kept them took them back).
pub(crate) fn kept_sets(path: &std::path::Path, snap: &Snapshot) -> Vec<Kept> {
    let Ok(events) = crate::state::events(path, None, 1000) else {
        return Vec::new();
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for e in events.into_iter().filter(|e| e.kind == KEPT) {
        let Some(service) = e.service.clone() else {
            continue;
        };
        if !seen.insert(service) || e.outcome != crate::state::EventOutcome::Kept {
            continue;
        }
        let Ok(k) = serde_json::from_str::<Kept>(&e.message) else {
            continue;
        };
        let recorded = snap
            .services
            .values()
            .flat_map(|r| r.handles.iter())
            .any(|h| k.record.handles.iter().any(|k| k.same_instance(h)));
        if !recorded {
            out.push(k);
        }
    }
    out
}

/// Stops a kept set whose window closed (journalled), and records it
/// released.
pub(crate) async fn release(
    store: &mut Store,
    backends: &Registry,
    kept: &Kept,
    grace: Duration,
) -> Result<(), String> {
    let name = &kept.record.name;
    let backend = backends
        .get(kept.record.backend)
        .ok_or_else(|| format!("no `{}` backend", kept.record.backend))?;
    let id = store
        .record_intent(
            kept.revision,
            name,
            crate::state::IntentAction::StopKept,
            &serde_json::json!({ "handles": kept.record.handles }),
        )
        .map_err(|e| e.to_string())?;
    let res = backend.stop(&kept.record.handles, grace).await;
    let outcome = if res.is_ok() { "succeeded" } else { "failed" };
    store
        .close_intent(id, outcome, &serde_json::json!({}))
        .map_err(|e| e.to_string())?;
    res.map_err(|e| e.to_string())?;
    kept.write(store, crate::state::EventOutcome::Released)
        .map_err(|e| e.to_string())
}

/// Flips the switches of each kept set's service back to it (its instances
/// still run: no restart), stops the service's current instances and
/// records the kept set as the service again, as revision `revision`
/// (opened by the caller). Every kept set is checked to run before any
/// switch moves.
pub(crate) async fn flip_back(
    store: &mut Store,
    backends: &Registry,
    kept: &[Kept],
    revision: u64,
    drain: Duration,
    grace: Duration,
) -> Result<Vec<String>, String> {
    let snap = store.snapshot().map_err(|e| e.to_string())?;
    for k in kept {
        let backend = backends
            .get(k.record.backend)
            .ok_or_else(|| format!("no `{}` backend", k.record.backend))?;
        for h in &k.record.handles {
            if backend.liveness(h).await != crate::instance::Liveness::Running {
                return Err(format!(
                    "replica {} of the kept set of `{}` no longer runs",
                    h.replica(),
                    k.record.name
                ));
            }
        }
    }
    let state_path = store.path().to_path_buf();
    let mut done = Vec::new();
    for k in kept {
        let spec = &k.record.spec;
        let name = &k.record.name;
        let backend = backends
            .get(k.record.backend)
            .ok_or_else(|| format!("no `{}` backend", k.record.backend))?;
        let current = snap.services.get(name).cloned();
        for p in spec.ports.iter().filter(|_| spec.behind_switch) {
            let Some(host) = p.host_port else { continue };
            let client = SwitchClient::new(&state_path, name.as_str(), host);
            let mut set = Vec::new();
            for h in &k.record.handles {
                let addr = backend
                    .own_address(h, p.container_port)
                    .await
                    .and_then(|(ip, port)| {
                        let ip = ip.trim_matches(|c| c == '[' || c == ']');
                        ip.parse::<std::net::IpAddr>()
                            .ok()
                            .map(|ip| SocketAddr::new(ip, port))
                    })
                    .ok_or_else(|| format!("no address of replica {} of `{name}`", h.replica()))?;
                set.push(addr);
            }
            let id = store
                .record_intent(
                    revision,
                    name,
                    crate::state::IntentAction::SwitchSet,
                    &serde_json::json!({ "port": host, "backends": set, "flip_back": true }),
                )
                .map_err(|e| e.to_string())?;
            let res = client
                .set(&set, drain, &crate::switch::Tuning::of(spec, host))
                .await;
            let outcome = if res.is_ok() { "succeeded" } else { "failed" };
            store
                .close_intent(id, outcome, &serde_json::json!({}))
                .map_err(|e| e.to_string())?;
            res.map_err(|e| e.to_string())?;
        }
        let mut stopped = 0;
        if let Some(cur) = current.filter(|c| !c.handles.is_empty())
            && let Some(b) = backends.get(cur.backend)
        {
            // Connections already open to the new set may finish.
            for p in cur.spec.ports.iter().filter(|_| cur.spec.behind_switch) {
                let Some(host) = p.host_port else { continue };
                let client = SwitchClient::new(&state_path, name.as_str(), host);
                let mut gone = Vec::new();
                for h in &cur.handles {
                    if let Some((ip, port)) = b.own_address(h, p.container_port).await
                        && let Ok(ip) = ip
                            .trim_matches(|c| c == '[' || c == ']')
                            .parse::<std::net::IpAddr>()
                    {
                        gone.push(SocketAddr::new(ip, port));
                    }
                }
                client.drained(&gone, drain).await;
            }
            let id = store
                .record_intent(
                    revision,
                    name,
                    crate::state::IntentAction::RollbackStop,
                    &serde_json::json!({ "handles": cur.handles }),
                )
                .map_err(|e| e.to_string())?;
            let res = b.stop(&cur.handles, grace).await;
            let outcome = if res.is_ok() { "succeeded" } else { "failed" };
            store
                .close_intent(id, outcome, &serde_json::json!({}))
                .map_err(|e| e.to_string())?;
            res.map_err(|e| e.to_string())?;
            stopped = cur.handles.len();
        }
        let mut record = k.record.clone();
        record.revision = revision;
        record.status = ServiceStatus::Ready;
        record.updated_at = super::now_rfc3339();
        store.put_service(&record).map_err(|e| e.to_string())?;
        k.write(store, crate::state::EventOutcome::FlippedBack)
            .map_err(|e| e.to_string())?;
        done.push(format!(
            "`{name}`: the switch serves the kept set again ({} instance(s), no restart); stopped {stopped} new instance(s)",
            k.record.handles.len()
        ));
    }
    Ok(done)
}

/// The replica indexes a rolling update of `n` replicas starts at a time:
/// `max_surge + max_unavailable` each (at least one), so that with the
/// `max_unavailable` old replicas stopped first and the rest after their
/// successors passed their gates, between `n - max_unavailable` and
/// `n + max_surge` instances run throughout.
pub(crate) fn batches(n: u32, max_surge: u32, max_unavailable: u32) -> Vec<std::ops::Range<u32>> {
    let step = max_surge.saturating_add(max_unavailable).max(1);
    (0..n)
        .step_by(step as usize)
        .map(|i| i..i.saturating_add(step).min(n))
        .collect()
}

/// How long the switches let old connections finish.
pub(super) fn drain_of(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// Whether a change runs as a rollout (behind switches, or replica by
/// replica) rather than as a plain replace.
pub(super) fn is_rollout(strategy: Strategy, change: &Change, after: &ServiceSpec) -> bool {
    match change.action {
        Action::Create => after.behind_switch,
        Action::Replace => {
            after.behind_switch
                || (strategy == Strategy::RollingUpdate
                    && after.workload == crate::model::Workload::Service
                    && !change
                        .before
                        .as_ref()
                        .is_some_and(|b| super::stops_first(b, after)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::batches;

    #[test]
    fn steps_of_surge_plus_unavailable() {
        assert_eq!(batches(3, 1, 0), vec![0..1, 1..2, 2..3]);
        assert_eq!(batches(4, 2, 0), vec![0..2, 2..4]);
        assert_eq!(batches(5, 2, 1), vec![0..3, 3..5]);
        assert_eq!(batches(2, 0, 1), vec![0..1, 1..2]);
        assert_eq!(batches(1, 5, 5), vec![0..1]);
    }
}
