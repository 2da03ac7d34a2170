//! Executes a plan phase by phase: bounded concurrency within a phase, health
//! gates between phases, an intent row before every side effect, and on failure a
//! rollback of every action of the run in reverse order.
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

pub mod health;
pub mod reconcile;
mod rollout;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backends::{Backend, BackendError, Registry, StartContext};
use crate::error::Code;
use crate::model::{DesiredState, SecretKey, Sensitive, ServiceName, ServiceSpec, Text, Workload};
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

/// What the engine reports while it runs (rendered by the command).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ApplyStarted {
        revision: u64,
        phases: usize,
        actions: usize,
    },
    /// A step of getting a service ready before the first phase (an image
    /// pull, say).
    Prepare {
        service: ServiceName,
        detail: String,
    },
    PhaseStarted {
        phase: usize,
        services: Vec<ServiceName>,
    },
    ActionStarted {
        service: ServiceName,
        action: Action,
    },
    InstanceStarted {
        service: ServiceName,
        handles: Vec<Handle>,
    },
    Probe {
        service: ServiceName,
        healthy: bool,
        detail: String,
    },
    InstanceStopped {
        service: ServiceName,
        handles: Vec<Handle>,
    },
    ActionSucceeded {
        service: ServiceName,
        action: Action,
        elapsed_ms: u64,
    },
    ActionFailed {
        service: ServiceName,
        action: Action,
        reason: String,
    },
    PhaseFinished {
        phase: usize,
        ok: bool,
        elapsed_ms: u64,
    },
    RollbackStarted {
        steps: usize,
    },
    RollbackStep {
        service: ServiceName,
        step: String,
        ok: bool,
        detail: String,
    },
    Finished {
        revision: u64,
        outcome: Outcome,
        elapsed_ms: u64,
    },
}

/// The hook the engine reports through.
pub type Hook<'a> = &'a (dyn Fn(&Event) + Send + Sync);

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--no-rollback` (or `deployment.rollback_on_failure: false`).
    pub no_rollback: bool,
    /// The command line, for the history.
    pub command: String,
    /// The redacted rendered configuration, for the history.
    pub config_snapshot: String,
    pub config_hash: String,
    /// Directory that relative working directories resolve against.
    pub base_dir: std::path::PathBuf,
}

/// What kind of failure stopped a run. The error code and the exit code
/// follow from it; nothing reads the reason's words to decide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureKind {
    /// Getting ready before the first phase failed (an image, a command, a
    /// directory): nothing was changed.
    Prepare { code: Code },
    /// The backend could not start, stop or change an instance.
    Backend { code: Code },
    /// The health gate failed.
    #[default]
    Gate,
    /// The state could not be written.
    State,
    /// The plaintext of a secret is not known to this run.
    SecretUnavailable,
    /// The run was interrupted (SIGINT, SIGTERM).
    Interrupted,
}

impl FailureKind {
    /// The error code this failure reports.
    pub fn code(self) -> Code {
        match self {
            FailureKind::Prepare { code } | FailureKind::Backend { code } => code,
            FailureKind::Gate => Code::E006,
            FailureKind::State => Code::E012,
            FailureKind::SecretUnavailable => Code::E016,
            FailureKind::Interrupted => Code::E008,
        }
    }
}

/// Why a service failed, with the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureEvidence {
    pub service: ServiceName,
    pub action: Action,
    #[serde(flatten, default)]
    pub kind: FailureKind,
    pub reason: String,
    /// The last probe results.
    pub probes: Vec<ProbeRecord>,
    /// The last lines of the service's log.
    pub log_tail: Vec<String>,
}

impl FailureEvidence {
    /// The evidence with every secret of the run redacted: log tails and
    /// engine messages may carry what a service printed.
    pub fn redacted(self) -> Self {
        crate::redact::value(&self).unwrap_or(self)
    }
}

/// One step of the rollback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackResult {
    pub service: ServiceName,
    /// `stop-new`, `restart-old`, `revert-update`.
    pub step: String,
    pub ok: bool,
    pub detail: String,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub revision: u64,
    pub outcome: Outcome,
    /// Services whose action completed (before any rollback), in completion order.
    pub completed: Vec<ServiceName>,
    pub failures: Vec<FailureEvidence>,
    pub rollback: Vec<RollbackResult>,
    /// What is left where after a failure that was not fully undone.
    pub left: Vec<String>,
    pub elapsed_ms: u64,
}

impl Report {
    /// The exit code: 0 succeeded, 4 rolled back cleanly, 5 anything else.
    /// The exit code: 0 succeeded, 1 refused before any change, 4 rolled
    /// back cleanly, 5 anything else.
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::Succeeded => 0,
            _ if self.refused() => 1,
            Outcome::RolledBack => 4,
            _ => 5,
        }
    }

    /// Whether the run was refused before it changed anything (a missing
    /// image or command, say).
    pub fn refused(&self) -> bool {
        !self.failures.is_empty()
            && self
                .failures
                .iter()
                .all(|f| matches!(f.kind, FailureKind::Prepare { .. }))
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ApplyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),
    #[error("no backend is available for `{service}` ({backend})")]
    #[diagnostic(
        code("deploy_code::E014"),
        help("check that the backend of this service is reachable with `deploy-code doctor`")
    )]
    NoBackend { service: String, backend: String },
}

/// A step to undo, recorded as the run goes.
#[derive(Clone, Debug)]
enum Undo {
    /// New instances were started: stop them.
    Started {
        service: ServiceName,
        spec: Box<ServiceSpec>,
        handles: Vec<Handle>,
    },
    /// The recorded instances were stopped: start the recorded spec again.
    Stopped { record: Box<ServiceRecord> },
    /// The service was changed in place: change it back.
    Updated {
        record: Box<ServiceRecord>,
        spec: Box<ServiceSpec>,
    },
    /// A traffic switch was started: stop it.
    SwitchUp {
        service: ServiceName,
        client: Box<crate::switch::SwitchClient>,
    },
    /// A rollout (see [`rollout`]): restore the old set, then stop the new.
    Rollout(Arc<Mutex<rollout::RolloutUndo>>),
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
}

pub use crate::clock::now_rfc3339;

fn handles_json(h: &[Handle]) -> serde_json::Value {
    serde_json::to_value(h).unwrap_or_default()
}

/// Plaintext of every sensitive value of the desired state, by digest.
fn secret_map(desired: &DesiredState) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for spec in desired.services.values() {
        let texts = spec
            .command
            .iter()
            .chain(spec.args.iter())
            .chain(spec.env.values());
        for t in texts {
            if let Text::Sensitive(s) = t
                && let Some(p) = s.expose()
            {
                m.insert(s.digest().to_owned(), p.to_owned());
            }
        }
    }
    m
}

type StepResult = Result<(), FailureEvidence>;

/// Why a step of a run failed: its kind (from which the codes follow) and
/// its message.
#[derive(Clone, Debug)]
struct StepError {
    kind: FailureKind,
    message: String,
}

impl StepError {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StateError> for StepError {
    fn from(e: StateError) -> Self {
        Self::new(FailureKind::State, e.to_string())
    }
}

impl From<BackendError> for StepError {
    fn from(e: BackendError) -> Self {
        Self::new(FailureKind::Backend { code: e.code() }, e.to_string())
    }
}

impl Exec<'_> {
    fn emit(&self, e: Event) {
        let e = crate::redact::value(&e).unwrap_or(e);
        match &e {
            Event::ActionSucceeded {
                service,
                action: Action::Create | Action::Replace | Action::Update,
                elapsed_ms,
            } => {
                let mut t = self.timings.lock().expect("timings");
                t.gates
                    .insert(service.to_string(), *elapsed_ms as f64 / 1000.0);
            }
            Event::PhaseFinished { elapsed_ms, .. } => {
                let mut t = self.timings.lock().expect("timings");
                t.phases.push(*elapsed_ms as f64 / 1000.0);
            }
            _ => {}
        }
        (self.hook)(&e);
    }

    fn with_store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut guard = self.store.lock().expect("store lock");
        f(&mut guard)
    }

    fn backend(&self, spec: &ServiceSpec) -> Result<Arc<dyn Backend>, StepError> {
        self.backends.get(spec.backend).ok_or_else(|| {
            StepError::new(
                FailureKind::Backend { code: Code::E014 },
                format!("no {} backend is available", spec.backend),
            )
        })
    }

    fn record(
        &self,
        spec: &ServiceSpec,
        handles: Vec<Handle>,
        status: ServiceStatus,
        gpus: &[GpuRef],
    ) -> ServiceRecord {
        let now = now_rfc3339();
        let created_at = self
            .prior
            .get(&spec.name)
            .map(|r| r.created_at.clone())
            .unwrap_or_else(|| now.clone());
        ServiceRecord {
            name: spec.name.clone(),
            spec: spec.clone(),
            spec_hash: spec.spec_hash(),
            backend: spec.backend,
            handles,
            status,
            gpus: gpus.to_vec(),
            revision: self.revision,
            created_at,
            updated_at: now,
        }
    }

    fn fail(&self, service: &ServiceName, action: Action, err: StepError) -> FailureEvidence {
        FailureEvidence {
            service: service.clone(),
            action,
            kind: err.kind,
            reason: crate::redact::text(&err.message).into_owned(),
            probes: Vec::new(),
            log_tail: Vec::new(),
        }
        .redacted()
    }

    /// Runs `act` (a start or an in-place update of `spec`) under an intent; on
    /// success the service is recorded `Pending` with the handles `act`
    /// returned. `act` is a future: nothing of it runs before the intent is
    /// written.
    async fn journalled(
        &self,
        spec: &ServiceSpec,
        gpus: &[GpuRef],
        intent: &str,
        act: impl std::future::Future<Output = Result<Vec<Handle>, BackendError>>,
    ) -> Result<Vec<Handle>, StepError> {
        let id = self.with_store(|s| {
            s.record_intent(
                self.revision,
                &spec.name,
                intent,
                &serde_json::json!({ "spec_hash": spec.spec_hash() }),
            )
        })?;
        crate::failpoint::hit("after-intent");
        match act.await {
            Ok(handles) => {
                crate::failpoint::hit("after-start");
                let rec = self.record(spec, handles.clone(), ServiceStatus::Pending, gpus);
                self.with_store(|s| {
                    s.put_service(&rec)?;
                    s.close_intent(
                        id,
                        "succeeded",
                        &serde_json::json!({ "handles": handles_json(&handles) }),
                    )
                })?;
                Ok(handles)
            }
            Err(e) => {
                let err = StepError::from(e);
                let _ = self.with_store(|s| {
                    s.close_intent(id, "failed", &serde_json::json!({ "error": err.message }))
                });
                Err(err)
            }
        }
    }

    /// Starts `spec` under an intent and records it `Pending`; returns the handles.
    async fn start(
        &self,
        spec: &ServiceSpec,
        gpus: &[GpuRef],
        intent: &str,
    ) -> Result<Vec<Handle>, StepError> {
        let backend = self.backend(spec)?;
        let mut ctx = self.ctx.clone();
        ctx.gpus = gpus.to_vec();
        let handles = self
            .journalled(spec, gpus, intent, backend.start(spec, &ctx))
            .await?;
        self.emit(Event::InstanceStarted {
            service: spec.name.clone(),
            handles: handles.clone(),
        });
        Ok(handles)
    }

    /// Stops instances under an intent.
    async fn stop(
        &self,
        spec: &ServiceSpec,
        handles: &[Handle],
        intent: &str,
    ) -> Result<(), StepError> {
        let backend = self.backend(spec)?;
        let id = self.with_store(|s| {
            s.record_intent(
                self.revision,
                &spec.name,
                intent,
                &serde_json::json!({ "handles": handles_json(handles) }),
            )
        })?;
        let res = backend.stop(handles, self.grace).await;
        crate::failpoint::hit("after-stop");
        let (outcome, detail) = match &res {
            Ok(()) => ("succeeded", serde_json::json!({})),
            Err(e) => ("failed", serde_json::json!({ "error": error_text(e) })),
        };
        self.with_store(|s| s.close_intent(id, outcome, &detail))?;
        self.emit(Event::InstanceStopped {
            service: spec.name.clone(),
            handles: handles.to_vec(),
        });
        res.map_err(StepError::from)
    }

    async fn gate(
        &self,
        spec: &ServiceSpec,
        handles: &[Handle],
        stop_at: u8,
        deadline: Instant,
    ) -> GateOutcome {
        let Ok(backend) = self.backend(spec) else {
            return GateOutcome {
                healthy: false,
                reason: "no backend".into(),
                elapsed_ms: 0,
                probes: Vec::new(),
            };
        };
        crate::failpoint::hit("during-gate");
        let name = spec.name.clone();
        let hook = self.hook;
        let on_probe = move |p: &ProbeRecord| {
            hook(&Event::Probe {
                service: name.clone(),
                healthy: p.healthy,
                detail: crate::redact::text(&p.detail).into_owned(),
            })
        };
        health::gate(
            backend.as_ref(),
            spec,
            handles,
            self.cancel,
            stop_at,
            Some(deadline),
            &on_probe,
        )
        .await
    }

    async fn evidence(
        &self,
        spec: &ServiceSpec,
        handles: &[Handle],
        action: Action,
        gate: GateOutcome,
    ) -> FailureEvidence {
        let mut log_tail = Vec::new();
        if let Ok(b) = self.backend(spec)
            && let Some(h) = handles.first()
        {
            log_tail = b.logs(h, 20).await;
        }
        FailureEvidence {
            service: spec.name.clone(),
            action,
            kind: FailureKind::Gate,
            reason: gate.reason,
            probes: gate.probes,
            log_tail,
        }
        .redacted()
    }

    /// Creates (or, after the old instances stopped, re-creates) a service and gates it.
    async fn bring_up(&self, spec: &ServiceSpec, gpus: &[GpuRef], action: Action) -> StepResult {
        let handles = self
            .start(spec, gpus, "start")
            .await
            .map_err(|e| self.fail(&spec.name, action, e))?;
        self.undo.lock().expect("undo").push(Undo::Started {
            service: spec.name.clone(),
            spec: Box::new(spec.clone()),
            handles: handles.clone(),
        });
        let g = self.gate(spec, &handles, 1, self.deadline).await;
        if !g.healthy {
            return Err(self.evidence(spec, &handles, action, g).await);
        }
        // A task that exited 0 has nothing left running: it keeps no handles.
        let kept = if spec.workload == Workload::Task {
            Vec::new()
        } else {
            handles
        };
        let rec = self.record(spec, kept, ServiceStatus::Ready, gpus);
        self.with_store(|s| s.put_service(&rec))
            .map_err(|e| self.fail(&spec.name, action, e.into()))
    }

    /// Stops the instances the state recorded for this change's service (if
    /// any) and remembers how to undo that; returns the record it stopped.
    async fn stop_prior(&self, change: &Change) -> Result<Option<ServiceRecord>, FailureEvidence> {
        let Some(record) = self.prior.get(&change.service).cloned() else {
            return Ok(None);
        };
        self.stop(&record.spec, &record.handles, "stop")
            .await
            .map_err(|e| self.fail(&change.service, change.action, e))?;
        self.alive_prior
            .lock()
            .expect("alive")
            .remove(&change.service);
        self.undo.lock().expect("undo").push(Undo::Stopped {
            record: Box::new(record.clone()),
        });
        Ok(Some(record))
    }

    /// Stops the recorded instances of a service; the record stays (for a
    /// replace) or goes (for a destroy).
    async fn take_down(&self, change: &Change, remove: bool) -> StepResult {
        let Some(record) = self.stop_prior(change).await? else {
            if remove {
                let _ = self.with_store(|s| s.remove_service(&change.service));
            }
            return Ok(());
        };
        // The switches go with the service, or when it leaves them.
        let after = change.after.as_ref().filter(|_| !remove);
        if record.spec.behind_switch {
            self.stop_switches(&record.spec, after.filter(|a| a.behind_switch))
                .await;
        }
        self.with_store(|s| {
            if remove {
                s.remove_service(&change.service)
            } else {
                let mut r = record.clone();
                r.handles.clear();
                r.status = ServiceStatus::Pending;
                s.put_service(&r)
            }
        })
        .map_err(|e| self.fail(&change.service, change.action, e.into()))
    }

    async fn run_change(&self, change: &Change) -> StepResult {
        let started = Instant::now();
        self.emit(Event::ActionStarted {
            service: change.service.clone(),
            action: change.action,
        });
        // A saved plan carries secrets as digests only: give the new spec the
        // plaintext this run rendered (the binding guarantees the same digests).
        let resolved;
        let change = match &change.after {
            Some(after) if after.has_sensitive() => match self.with_plaintext(after) {
                Ok(spec) => {
                    resolved = Change {
                        after: Some(spec),
                        ..change.clone()
                    };
                    &resolved
                }
                Err(e) => return Err(self.fail(&change.service, change.action, e)),
            },
            _ => change,
        };
        let res = match change.action {
            Action::NoOp => Ok(()),
            Action::Create => match &change.after {
                Some(spec) if rollout::is_rollout(self.strategy, change, spec) => {
                    self.rollout(change, spec, None).await
                }
                Some(spec) => self.bring_up(spec, &change.gpus, Action::Create).await,
                None => Err(self.fail(&change.service, change.action, no_spec())),
            },
            Action::Replace => self.replace(change).await,
            Action::Destroy => self.take_down(change, true).await,
            Action::Update => self.update(change).await,
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // The audit trail: every action, with its outcome.
        let (outcome, detail) = match &res {
            Ok(()) => ("succeeded", format!("done in {elapsed_ms} ms")),
            Err(f) => ("failed", f.reason.clone()),
        };
        let _ = self.with_store(|s| {
            s.event(
                self.revision,
                Some(&change.service),
                change.action.as_str(),
                outcome,
                &detail,
            )
        });
        match &res {
            Ok(()) => {
                self.completed
                    .lock()
                    .expect("completed")
                    .push(change.service.clone());
                self.emit(Event::ActionSucceeded {
                    service: change.service.clone(),
                    action: change.action,
                    elapsed_ms,
                });
            }
            Err(f) => self.emit(Event::ActionFailed {
                service: change.service.clone(),
                action: change.action,
                reason: f.reason.clone(),
            }),
        }
        res
    }

    async fn replace(&self, change: &Change) -> StepResult {
        let Some(after) = &change.after else {
            return Err(self.fail(&change.service, change.action, no_spec()));
        };
        let stop_first = change
            .before
            .as_ref()
            .is_some_and(|b| stops_first(b, after));
        if rollout::is_rollout(self.strategy, change, after) {
            // Behind switches, or replica by replica. Old instances that
            // hold the port a switch takes over stop first.
            let old = if stop_first {
                self.take_down(change, false).await?;
                None
            } else {
                self.prior.get(&change.service).cloned()
            };
            return self.rollout(change, after, old).await;
        }
        // Stop-first when old and new would hold or be probed at the same
        // host address: the new instance could not bind it, and a probe
        // there could be answered by the old one.
        if stop_first {
            self.take_down(change, false).await?;
            self.bring_up(after, &change.gpus, Action::Replace).await
        } else {
            self.bring_up(after, &change.gpus, Action::Replace).await?;
            self.stop_prior(change).await.map(|_| ())
        }
    }

    async fn update(&self, change: &Change) -> StepResult {
        let (Some(after), Some(record)) = (&change.after, self.prior.get(&change.service).cloned())
        else {
            return Err(self.fail(&change.service, change.action, no_spec()));
        };
        let backend = self
            .backend(after)
            .map_err(|e| self.fail(&change.service, change.action, e))?;
        let handles = self
            .journalled(
                after,
                &change.gpus,
                "update",
                backend.update(after, &record.handles, &self.ctx),
            )
            .await
            .map_err(|e| self.fail(&change.service, change.action, e))?;
        self.undo.lock().expect("undo").push(Undo::Updated {
            record: Box::new(record),
            spec: Box::new(after.clone()),
        });
        let g = self.gate(after, &handles, 1, self.deadline).await;
        if !g.healthy {
            return Err(self.evidence(after, &handles, change.action, g).await);
        }
        let rec = self.record(after, handles, ServiceStatus::Ready, &change.gpus);
        self.with_store(|s| s.put_service(&rec))
            .map_err(|e| self.fail(&change.service, change.action, e.into()))
    }

    /// The recorded spec with the plaintext of its secrets, where this run knows it.
    fn with_plaintext(&self, spec: &ServiceSpec) -> Result<ServiceSpec, StepError> {
        let mut spec = spec.clone();
        let mut missing = Vec::new();
        let fix = |t: &mut Text, field: String, missing: &mut Vec<String>| {
            if let Text::Sensitive(s) = t
                && s.expose().is_none()
            {
                match (self.secrets.get(s.digest()), &self.key) {
                    (Some(p), Some(k)) => *t = Text::Sensitive(Sensitive::new(k, p.clone())),
                    _ => missing.push(field),
                }
            }
        };
        if let Some(c) = &mut spec.command {
            fix(c, "command".into(), &mut missing);
        }
        for (i, a) in spec.args.iter_mut().enumerate() {
            fix(a, format!("args[{i}]"), &mut missing);
        }
        for (k, v) in spec.env.iter_mut() {
            fix(v, format!("env.{k}"), &mut missing);
        }
        if missing.is_empty() {
            Ok(spec)
        } else {
            Err(StepError::new(
                FailureKind::SecretUnavailable,
                format!(
                    "the previous value of sensitive `{}` is not known (only its digest is recorded)",
                    missing.join("`, `")
                ),
            ))
        }
    }

    /// Undoes every recorded step, newest first.
    async fn roll_back(&self, deadline: Instant) -> Vec<RollbackResult> {
        let steps: Vec<Undo> = std::mem::take(&mut *self.undo.lock().expect("undo"));
        if steps.is_empty() {
            // Nothing had changed yet (a failed preparation, say).
            return Vec::new();
        }
        self.emit(Event::RollbackStarted { steps: steps.len() });
        let mut out = Vec::new();
        for step in steps.into_iter().rev() {
            crate::failpoint::hit("during-rollback");
            if self.cancel.level() >= 2 {
                out.push(self.report_step(
                    &step_service(&step),
                    "aborted",
                    false,
                    "aborted by a second interrupt".into(),
                ));
                continue;
            }
            if Instant::now() >= deadline {
                out.push(self.report_step(
                    &step_service(&step),
                    "timed-out",
                    false,
                    "the rollback ran out of time (`deployment.rollback_timeout_seconds`)".into(),
                ));
                continue;
            }
            let r = match step {
                Undo::Started {
                    service,
                    spec,
                    handles,
                } => {
                    let res = self.stop(&spec, &handles, "rollback-stop").await;
                    let alive = self
                        .alive_prior
                        .lock()
                        .expect("alive")
                        .get(&service)
                        .cloned();
                    if let (Some(rec), Ok(b)) = (&alive, self.backend(&spec)) {
                        b.restore(&rec.handles).await;
                    }
                    let st = self.with_store(|s| match &alive {
                        Some(rec) => s.put_service(rec),
                        None => s.remove_service(&service),
                    });
                    let ok = res.is_ok() && st.is_ok();
                    let detail = match (res, st) {
                        (Err(e), _) => e.message,
                        (_, Err(e)) => e.to_string(),
                        _ => format!("stopped {} instance(s)", handles.len()),
                    };
                    self.report_step(&service, "stop-new", ok, detail)
                }
                Undo::Stopped { record } => self.restart_old(*record, deadline).await,
                Undo::SwitchUp { service, client } => {
                    let res = client.stop(&self.ctx.project, &self.ctx.lineage).await;
                    self.report_step(
                        &service,
                        "stop-switch",
                        res.is_ok(),
                        match res {
                            Ok(()) => format!("port {} released", client.port),
                            Err(e) => e.to_string(),
                        },
                    )
                }
                Undo::Rollout(u) => {
                    let u = u.lock().expect("rollout").clone();
                    self.undo_rollout(u, deadline).await
                }
                Undo::Updated { record, spec } => {
                    let current = self
                        .with_store(|s| s.snapshot())
                        .ok()
                        .and_then(|snap| snap.services.get(&spec.name).map(|r| r.handles.clone()))
                        .unwrap_or_default();
                    let res = match (
                        self.backend(&record.spec),
                        self.with_plaintext(&record.spec),
                    ) {
                        (Ok(b), Ok(old)) => b
                            .update(&old, &current, &self.ctx)
                            .await
                            .map_err(StepError::from),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    };
                    match res {
                        Ok(handles) => {
                            let mut rec = record.clone();
                            rec.handles = handles;
                            let _ = self.with_store(|s| s.put_service(&rec));
                            self.report_step(&record.name, "revert-update", true, "reverted".into())
                        }
                        Err(e) => {
                            self.report_step(&record.name, "revert-update", false, e.to_string())
                        }
                    }
                }
            };
            out.push(r);
        }
        out
    }

    async fn restart_old(&self, record: ServiceRecord, deadline: Instant) -> RollbackResult {
        let name = record.name.clone();
        let spec = match self.with_plaintext(&record.spec) {
            Ok(s) => s,
            Err(e) => {
                let mut r = record.clone();
                r.handles.clear();
                r.status = ServiceStatus::Tainted;
                let _ = self.with_store(|s| s.put_service(&r));
                return self.report_step(&name, "restart-old", false, e.message);
            }
        };
        if spec.behind_switch
            && let Err(e) = self.ensure_switches(&spec, false).await
        {
            return self.report_step(&name, "restart-old", false, e.message);
        }
        let handles = match self.start(&spec, &record.gpus, "rollback-start").await {
            Ok(h) => h,
            Err(e) => {
                let mut r = record.clone();
                r.handles.clear();
                r.status = ServiceStatus::Tainted;
                let _ = self.with_store(|s| s.put_service(&r));
                return self.report_step(&name, "restart-old", false, e.message);
            }
        };
        let mut g = self.gate(&spec, &handles, 2, deadline).await;
        if g.healthy
            && spec.behind_switch
            && let Err(e) = self.point_all(&spec, &handles).await
        {
            g.healthy = false;
            g.reason = e.message;
        }
        let mut r = record.clone();
        r.handles = handles;
        r.updated_at = now_rfc3339();
        r.status = if g.healthy {
            ServiceStatus::Ready
        } else {
            ServiceStatus::Tainted
        };
        let _ = self.with_store(|s| s.put_service(&r));
        if g.healthy {
            self.alive_prior
                .lock()
                .expect("alive")
                .insert(name.clone(), r);
            self.report_step(
                &name,
                "restart-old",
                true,
                "running and healthy again".into(),
            )
        } else {
            self.report_step(
                &name,
                "restart-old",
                false,
                format!("restarted but not healthy: {}", g.reason),
            )
        }
    }

    fn report_step(
        &self,
        service: &ServiceName,
        step: &str,
        ok: bool,
        detail: String,
    ) -> RollbackResult {
        self.emit(Event::RollbackStep {
            service: service.clone(),
            step: step.to_owned(),
            ok,
            detail: detail.clone(),
        });
        let _ = self.with_store(|s| {
            s.event(
                self.revision,
                Some(service),
                "rollback",
                if ok { "succeeded" } else { "failed" },
                &format!("{step}: {detail}"),
            )
        });
        RollbackResult {
            service: service.clone(),
            step: step.to_owned(),
            ok,
            detail,
        }
    }
}

fn step_service(u: &Undo) -> ServiceName {
    match u {
        Undo::Started { service, .. } => service.clone(),
        Undo::Stopped { record } | Undo::Updated { record, .. } => record.name.clone(),
        Undo::SwitchUp { service, .. } => service.clone(),
        Undo::Rollout(u) => u.lock().expect("rollout").new_spec.name.clone(),
    }
}

fn error_text(e: &BackendError) -> String {
    e.to_string()
}

/// Whether replacing `before` by `after` must stop the old instances first
/// (see [`ServiceSpec::stop_first_reason`]).
pub fn stops_first(before: &ServiceSpec, after: &ServiceSpec) -> bool {
    before.stop_first_reason(after).is_some()
}

fn no_spec() -> StepError {
    StepError::new(FailureKind::State, "the plan has no spec")
}

/// Runs `plan` against the world: phases in order, actions within a phase
/// concurrently (at most `deployment.max_parallel`, one for `Sequential`), each
/// gated; on failure everything this run did is undone in reverse order.
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
            .as_ref()
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
    'phases: for (i, phase) in plan.phases.iter().enumerate() {
        if !failures.is_empty() {
            break;
        }
        let phase_began = Instant::now();
        exec.emit(Event::PhaseStarted {
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
            while launching && running.len() < max_parallel && cancel.level() == 0 {
                match queue.next() {
                    Some(c) => running.push(exec.run_change(c)),
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
                _ = cancel.reached(1), if launching => {
                    launching = false;
                }
            }
        }
        let ok = failures.is_empty() && cancel.level() == 0;
        exec.emit(Event::PhaseFinished {
            phase: i + 1,
            ok,
            elapsed_ms: phase_began.elapsed().as_millis() as u64,
        });
        if !ok {
            break 'phases;
        }
    }
    if failures.is_empty() && cancel.level() > 0 {
        failures.push(FailureEvidence {
            service: ServiceName::parse("interrupted").expect("valid name"),
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
                && let Some(mut r) = snap.services.get(&f.service).cloned()
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
    exec.with_store(|s| s.finish_deployment(revision, outcome, &evidence))?;
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
