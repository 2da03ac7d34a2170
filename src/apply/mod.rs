//! Executes a plan phase by phase: bounded concurrency within a phase, health
//! gates between phases (under `Parallel`, between an action and the actions
//! it depends on instead), an intent row before every side effect, and on
//! failure a rollback of every action of the run in reverse order.
//!
//! Every side effect is written to the state's intent journal before it happens
//! and closed after it, and the service record is written as soon as the result
//! is known, so that a run killed at any point leaves a state from which the next
//! plan (with the instances the backends discover by their marks) accounts for
//! every instance.
//!
//! Replace ordering: the new instance starts and passes its gate before the old
//! one stops, unless the new spec claims a host port the old one holds; then the
//! old one stops first (the order the ports allow).
//!
//! The engine prints nothing: it reports through an [`Event`] hook.

mod canary;
mod events;
pub mod health;
pub mod reconcile;
mod rollback;
pub(crate) mod rollout;
mod secrets;
mod steps;

pub use events::*;
use rollback::Undo;
use secrets::secret_map;
use steps::{StepError, StepResult};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;

use crate::backends::{Backend, BackendError, Registry, StartContext};
use crate::error::Code;
use crate::model::{DesiredState, SecretKey, ServiceName, ServiceSpec, Workload};
use crate::plan::{Action, Change, Plan};
use crate::state::{
    GpuRef, Handle, NewDeployment, Outcome, ServiceRecord, ServiceStatus, StateError, Store,
};
use health::{GateOutcome, ProbeRecord};

/// Interrupts of a run: level 1 (first SIGINT) stops launching and rolls back;
/// level 2 (second SIGINT) aborts at once.
#[derive(Clone)]
pub struct Cancel {
    tx: Arc<watch::Sender<u8>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl Cancel {
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(0).0),
        }
    }

    /// Raises the interrupt level by one.
    pub fn interrupt(&self) {
        self.tx.send_modify(|l| *l = l.saturating_add(1));
    }

    pub fn level(&self) -> u8 {
        *self.tx.borrow()
    }

    /// Resolves once the level is at least `level`.
    pub async fn reached(&self, level: u8) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|l| *l >= level).await;
    }
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--no-rollback` (or `deployment.rollback_on_failure: false`).
    pub no_rollback: bool,
    /// The command line, for the history.
    pub command: String,
    /// The redacted rendered configuration, for the history.
    pub config_snapshot: String,
    /// The configuration as `rollback` re-applies it (`LoadedConfig::replay_render`).
    pub config_replay: String,
    pub config_hash: String,
    /// Directory that relative working directories resolve against.
    pub base_dir: std::path::PathBuf,
}

struct Exec<'a> {
    store: Mutex<&'a mut Store>,
    backends: &'a Registry,
    ctx: StartContext,
    revision: u64,
    hook: Hook<'a>,
    cancel: &'a Cancel,
    key: Option<SecretKey>,
    secrets: HashMap<String, String>,
    prior: BTreeMap<ServiceName, ServiceRecord>,
    /// Recorded instances still alive (not stopped by this run), by service.
    alive_prior: Mutex<BTreeMap<ServiceName, ServiceRecord>>,
    undo: Mutex<Vec<Undo>>,
    completed: Mutex<Vec<ServiceName>>,
    grace: Duration,
    deadline: Instant,
    /// Phase and health-gate timings, stored with the deployment record.
    timings: Mutex<crate::metrics::Timings>,
    /// The state file: switches' control sockets live beside it.
    state_path: std::path::PathBuf,
    strategy: crate::model::Strategy,
    /// How long a switch lets old connections finish.
    drain: Duration,
    /// The steps and analysis of a `Canary` rollout.
    canary: crate::model::CanarySettings,
    /// `RollingUpdate`: replicas replaced at once.
    rolling: crate::model::RollingSettings,
    /// `BlueGreen`: how long an old set is kept after the flip.
    keep: Duration,
}

pub use crate::clock::now_rfc3339;

fn handles_json(h: &[Handle]) -> serde_json::Value {
    serde_json::to_value(h).unwrap_or_default()
}

/// Whether replacing `before` by `after` must stop the old instances first
/// (see [`ServiceSpec::stop_first_reason`]).
pub(crate) fn stops_first(before: &ServiceSpec, after: &ServiceSpec) -> bool {
    before.stop_first_reason(after).is_some()
}

/// Runs `plan` against the world, each action gated: phases in order, the
/// actions of a phase concurrently (at most `deployment.max_parallel`, one for
/// `Sequential`); under `Parallel` without phase barriers, each action as soon
/// as the actions it depends on have passed their gates. On failure everything
/// this run did is undone in reverse order.
pub async fn execute(
    plan: &Plan,
    desired: &DesiredState,
    store: &mut Store,
    backends: &Registry,
    opts: &Options,
    hook: Hook<'_>,
    cancel: &Cancel,
) -> Result<Report, ApplyError> {
    let began = Instant::now();
    let settings = &desired.settings;
    let dep = &settings.deployment;
    for c in &plan.changes {
        if c.action != Action::NoOp && backends.get(c.backend).is_none() {
            return Err(ApplyError::NoBackend {
                service: c.service.to_string(),
                backend: c.backend.to_string(),
            });
        }
    }
    let snap = store.snapshot()?;
    let revision = store.begin_deployment(&NewDeployment {
        command: opts.command.clone(),
        config_snapshot: opts.config_snapshot.clone(),
        config_replay: opts.config_replay.clone(),
        config_hash: opts.config_hash.clone(),
        plan_summary: serde_json::to_value(&plan.summary).unwrap_or_default(),
    })?;
    let snap_after = store.snapshot()?;
    let lineage = snap_after
        .lineage
        .clone()
        .or(snap.lineage.clone())
        .unwrap_or_default();
    let key = snap_after.secret_key.clone();
    let ctx = StartContext {
        project: settings.project.clone(),
        lineage,
        revision,
        log_dir: settings.log_dir.clone(),
        data_dir: settings.data_dir.clone(),
        base_dir: opts.base_dir.clone(),
        network: settings.network.clone(),
        gpus: Vec::new(),
        only_replicas: None,
        stop_grace: std::time::Duration::from_secs(dep.stop_grace_seconds),
    };
    let max_parallel = if dep.strategy == crate::model::Strategy::Sequential {
        1
    } else {
        dep.max_parallel.max(1) as usize
    };
    let state_path = store.path().to_path_buf();
    let exec = Exec {
        state_path,
        strategy: dep.strategy,
        drain: rollout::drain_of(dep.drain_seconds),
        canary: dep.canary.clone(),
        rolling: dep.rolling,
        keep: Duration::from_secs(dep.blue_green.keep_seconds),
        store: Mutex::new(store),
        backends,
        ctx,
        revision,
        hook,
        cancel,
        key,
        secrets: secret_map(desired),
        alive_prior: Mutex::new(snap.services.clone()),
        prior: snap.services.clone(),
        undo: Mutex::new(Vec::new()),
        completed: Mutex::new(Vec::new()),
        grace: Duration::from_secs(dep.stop_grace_seconds),
        deadline: began + Duration::from_secs(dep.timeout_seconds.max(1)),
        timings: Mutex::new(crate::metrics::Timings::default()),
    };
    let changes: BTreeMap<&ServiceName, &Change> =
        plan.changes.iter().map(|c| (&c.service, c)).collect();
    let actions: usize = plan.phases.iter().map(Vec::len).sum();
    exec.emit(Event::ApplyStarted {
        revision,
        phases: plan.phases.len(),
        actions,
    });

    let mut failures: Vec<FailureEvidence> = Vec::new();
    // What the run will start is made ready and checked first (images
    // pulled, commands and directories found), so that a missing piece fails
    // the run before anything has changed.
    let mut prepared = BTreeSet::new();
    for c in &plan.changes {
        let Some(spec) = c
            .after
            .as_deref()
            .filter(|_| matches!(c.action, Action::Create | Action::Replace | Action::Update))
        else {
            continue;
        };
        // An image is made ready once; everything else per service.
        let key = spec.image.clone().unwrap_or_else(|| spec.name.to_string());
        if !prepared.insert((spec.backend, key)) || cancel.level() > 0 {
            continue;
        }
        let Ok(backend) = exec.backend(spec) else {
            continue;
        };
        let spec = &exec.with_plaintext(spec).unwrap_or_else(|_| spec.clone());
        let service = spec.name.clone();
        let on_progress = |detail: String| {
            hook(&Event::Prepare {
                service: service.clone(),
                detail: crate::redact::text(&detail).into_owned(),
            })
        };
        if let Err(e) = backend.prepare(spec, &exec.ctx, &on_progress).await {
            let err = StepError::new(FailureKind::Prepare { code: e.code() }, e.to_string());
            exec.emit(Event::ActionFailed {
                service: spec.name.clone(),
                action: c.action,
                reason: err.message.clone(),
            });
            failures.push(exec.fail(&spec.name, c.action, err));
            break;
        }
    }
    if failures.is_empty() {
        if dep.strategy == crate::model::Strategy::Parallel {
            exec.run_unbarriered(plan, &changes, max_parallel, &mut failures)
                .await;
        } else {
            exec.run_phases(plan, &changes, max_parallel, &mut failures)
                .await;
        }
    }
    if failures.is_empty() && cancel.level() > 0 {
        failures.push(FailureEvidence {
            service: crate::model::Subject::Run,
            action: Action::NoOp,
            kind: FailureKind::Interrupted,
            reason: "the apply was interrupted".into(),
            probes: Vec::new(),
            log_tail: Vec::new(),
        });
    }

    let mut rollback = Vec::new();
    let mut left = Vec::new();
    let refused = !failures.is_empty()
        && failures
            .iter()
            .all(|f| matches!(f.kind, FailureKind::Prepare { .. }));
    let outcome = if failures.is_empty() {
        Outcome::Succeeded
    } else if refused {
        // Nothing was changed: there is nothing to roll back.
        Outcome::Failed
    } else if opts.no_rollback || !dep.rollback_on_failure {
        // Leave everything as it is; mark the failed services tainted.
        for f in &failures {
            if let Ok(snap) = exec.with_store(|s| s.snapshot())
                && let Some(mut r) = f
                    .service
                    .service()
                    .and_then(|n| snap.services.get(n))
                    .cloned()
            {
                r.status = ServiceStatus::Tainted;
                let _ = exec.with_store(|s| s.put_service(&r));
                left.push(format!(
                    "`{}` left in place and marked tainted ({} instance(s))",
                    f.service,
                    r.handles.len()
                ));
            }
        }
        Outcome::Failed
    } else {
        let deadline = Instant::now() + Duration::from_secs(dep.rollback_timeout_seconds.max(1));
        rollback = exec.roll_back(deadline).await;
        for r in rollback.iter().filter(|r| !r.ok) {
            left.push(format!(
                "`{}`: {} did not complete: {}",
                r.service, r.step, r.detail
            ));
        }
        if left.is_empty() {
            Outcome::RolledBack
        } else {
            Outcome::RollbackFailed
        }
    };
    let timings = {
        let mut t = exec.timings.lock().expect("timings").clone();
        t.duration_seconds = began.elapsed().as_secs_f64();
        t
    };
    let evidence = if failures.is_empty() {
        serde_json::json!({ "timings": timings })
    } else {
        serde_json::json!({
            "failures": failures,
            "rollback": rollback,
            "left": left,
            "timings": timings,
        })
    };
    let mut outcome = outcome;
    if let Err(e) = exec.with_store(|s| s.finish_deployment(revision, outcome, &evidence)) {
        if outcome == Outcome::Succeeded {
            return Err(e.into());
        }
        // A failed run that cannot record its end (a full disk) still says
        // what it left where: its rollback is not recorded as done, so it is
        // not one.
        outcome = Outcome::RollbackFailed;
        left.push(format!(
            "the state could not record how revision {revision} ended ({e}): it still shows revision {revision} as pending"
        ));
        let touched: Vec<ServiceName> = plan
            .changes
            .iter()
            .filter(|c| c.action != Action::NoOp)
            .map(|c| c.service.clone())
            .collect();
        left.extend(exec.what_is_left(&touched).await);
    }
    let elapsed_ms = began.elapsed().as_millis() as u64;
    exec.emit(Event::Finished {
        revision,
        outcome,
        elapsed_ms,
    });
    let completed = exec.completed.lock().expect("completed").clone();
    Ok(Report {
        revision,
        outcome,
        completed,
        failures,
        rollback,
        left,
        elapsed_ms,
    })
}

impl Exec<'_> {
    /// `Sequential`, `Hybrid` and the rollouts: phase after phase, a phase
    /// starting once every action of the one before passed its gate; within a
    /// phase at most `max_parallel` actions at once. Stops launching at the
    /// first failure or interrupt.
    async fn run_phases(
        &self,
        plan: &Plan,
        changes: &BTreeMap<&ServiceName, &Change>,
        max_parallel: usize,
        failures: &mut Vec<FailureEvidence>,
    ) {
        for (i, phase) in plan.phases.iter().enumerate() {
            let phase_began = Instant::now();
            self.emit(Event::PhaseStarted {
                phase: i + 1,
                services: phase.clone(),
            });
            let mut queue = phase
                .iter()
                .filter_map(|s| changes.get(s).copied())
                .filter(|c| c.action != Action::NoOp);
            let mut running = FuturesUnordered::new();
            let mut launching = true;
            loop {
                while launching && running.len() < max_parallel && self.cancel.level() == 0 {
                    match queue.next() {
                        Some(c) => running.push(self.run_change(c)),
                        None => break,
                    }
                }
                if running.is_empty() {
                    break;
                }
                tokio::select! {
                    Some(res) = running.next() => {
                        if let Err(f) = res {
                            failures.push(f);
                            launching = false;
                        }
                    }
                    _ = self.cancel.reached(1), if launching => {
                        launching = false;
                    }
                }
            }
            let ok = failures.is_empty() && self.cancel.level() == 0;
            self.emit(Event::PhaseFinished {
                phase: i + 1,
                ok,
                elapsed_ms: phase_began.elapsed().as_millis() as u64,
            });
            if !ok {
                return;
            }
        }
    }

    /// `Parallel`: no phase barrier. An action starts as soon as the actions
    /// it waits for (see [`waits_for`]) have passed their gates, at most
    /// `max_parallel` at once, the earliest phase first. A phase is reported
    /// started with its first action and finished with its last. Stops
    /// launching at the first failure or interrupt.
    async fn run_unbarriered(
        &self,
        plan: &Plan,
        changes: &BTreeMap<&ServiceName, &Change>,
        max_parallel: usize,
        failures: &mut Vec<FailureEvidence>,
    ) {
        let actions: Vec<(usize, &Change)> = plan
            .phases
            .iter()
            .enumerate()
            .flat_map(|(i, phase)| {
                phase
                    .iter()
                    .filter_map(|s| changes.get(s).copied())
                    .filter(|c| c.action != Action::NoOp)
                    .map(move |c| (i, c))
            })
            .collect();
        let waits = waits_for(&actions);
        let mut started = vec![false; actions.len()];
        let mut done = vec![false; actions.len()];
        let mut left: Vec<usize> = vec![0; plan.phases.len()];
        for (i, _) in &actions {
            left[*i] += 1;
        }
        let mut began: Vec<Option<Instant>> = vec![None; plan.phases.len()];
        let mut running = FuturesUnordered::new();
        let mut launching = true;
        loop {
            if launching && self.cancel.level() == 0 {
                for (j, (i, c)) in actions.iter().enumerate() {
                    if running.len() >= max_parallel {
                        break;
                    }
                    if started[j] || !waits[j].iter().all(|k| done[*k]) {
                        continue;
                    }
                    started[j] = true;
                    if began[*i].is_none() {
                        began[*i] = Some(Instant::now());
                        self.emit(Event::PhaseStarted {
                            phase: i + 1,
                            services: plan.phases[*i].clone(),
                        });
                    }
                    let run = self.run_change(c);
                    running.push(async move { (j, run.await) });
                }
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some((j, res)) = running.next() => {
                    let i = actions[j].0;
                    match res {
                        Ok(()) => done[j] = true,
                        Err(f) => {
                            failures.push(f);
                            launching = false;
                        }
                    }
                    left[i] -= 1;
                    if left[i] == 0 {
                        self.emit(Event::PhaseFinished {
                            phase: i + 1,
                            ok: failures.is_empty() && self.cancel.level() == 0,
                            elapsed_ms: began[i].map_or(0, |b| b.elapsed().as_millis() as u64),
                        });
                    }
                }
                _ = self.cancel.reached(1), if launching => {
                    launching = false;
                }
            }
        }
        // Phases that started but did not run all their actions.
        for (i, b) in began.iter().enumerate() {
            if let Some(b) = b
                && left[i] > 0
            {
                self.emit(Event::PhaseFinished {
                    phase: i + 1,
                    ok: false,
                    elapsed_ms: b.elapsed().as_millis() as u64,
                });
            }
        }
    }
}

/// For each of `actions` (phase index, change; in phase order), the indexes
/// of the actions it waits for under `Parallel`: a create, replace or update
/// waits for the actions of the dependencies its spec names and for every
/// destroy (which frees capacity and ports first); a destroy waits for the
/// destroys of the services whose recorded specs depend on it. Only actions
/// of earlier phases are waited for, so the waits follow the plan's order.
fn waits_for(actions: &[(usize, &Change)]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&ServiceName, usize> = actions
        .iter()
        .enumerate()
        .map(|(j, (_, c))| (&c.service, j))
        .collect();
    actions
        .iter()
        .map(|(phase, c)| {
            let mut waits: BTreeSet<usize> = BTreeSet::new();
            if c.action == Action::Destroy {
                for (k, (_, d)) in actions.iter().enumerate() {
                    if d.action == Action::Destroy
                        && d.before
                            .as_ref()
                            .is_some_and(|b| b.dependencies.contains(&c.service))
                    {
                        waits.insert(k);
                    }
                }
            } else {
                for (k, (_, d)) in actions.iter().enumerate() {
                    if d.action == Action::Destroy {
                        waits.insert(k);
                    }
                }
                if let Some(after) = &c.after {
                    waits.extend(after.dependencies.iter().filter_map(|d| index.get(d)));
                }
            }
            waits
                .into_iter()
                .filter(|k| actions[*k].0 < *phase)
                .collect()
        })
        .collect()
}
