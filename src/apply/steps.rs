//! The steps of a run: each side effect journalled (an intent row before it,
//! its result after), records written as soon as a result is known, health
//! gates, and the failures typed as they happen.

use super::*;

pub(super) type StepResult = Result<(), FailureEvidence>;

/// Why a step of a run failed: its kind (from which the codes follow) and
/// its message.
#[derive(Clone, Debug)]
pub(super) struct StepError {
    pub(super) kind: FailureKind,
    pub(super) message: String,
}

impl StepError {
    pub(super) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
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
    pub(super) fn emit(&self, e: Event) {
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

    pub(super) fn with_store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut guard = self.store.lock().expect("store lock");
        f(&mut guard)
    }

    pub(super) fn backend(&self, spec: &ServiceSpec) -> Result<Arc<dyn Backend>, StepError> {
        self.backends.get(spec.backend).ok_or_else(|| {
            StepError::new(
                FailureKind::Backend { code: Code::E014 },
                format!("no {} backend is available", spec.backend),
            )
        })
    }

    pub(super) fn record(
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

    pub(super) fn fail(
        &self,
        service: &ServiceName,
        action: Action,
        err: StepError,
    ) -> FailureEvidence {
        FailureEvidence {
            service: crate::model::Subject::Service(service.clone()),
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
    pub(super) async fn journalled(
        &self,
        spec: &ServiceSpec,
        gpus: &[GpuRef],
        intent: crate::state::IntentAction,
        act: impl std::future::Future<Output = Result<Vec<Handle>, BackendError>>,
    ) -> Result<Vec<Handle>, StepError> {
        // The intent is durable before the side effect; the intents of
        // actions started meanwhile share its sync.
        let (id, durable) = self.with_store(|s| {
            s.record_intent_deferred(
                self.revision,
                &spec.name,
                intent,
                &serde_json::json!({ "spec_hash": spec.spec_hash() }),
            )
        })?;
        durable_off_thread(durable).await?;
        crate::failpoint::hit("after-intent");
        match act.await {
            Ok(handles) => {
                crate::failpoint::hit("after-start");
                let rec = self.record(spec, handles.clone(), ServiceStatus::Pending, gpus);
                // The record and the closed intent in one commit.
                self.with_store(|s| {
                    s.record_started(
                        &rec,
                        id,
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
    pub(super) async fn start(
        &self,
        spec: &ServiceSpec,
        gpus: &[GpuRef],
        intent: crate::state::IntentAction,
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
    pub(super) async fn stop(
        &self,
        spec: &ServiceSpec,
        handles: &[Handle],
        intent: crate::state::IntentAction,
    ) -> Result<(), StepError> {
        let backend = self.backend(spec)?;
        let (id, durable) = self.with_store(|s| {
            s.record_intent_deferred(
                self.revision,
                &spec.name,
                intent,
                &serde_json::json!({ "handles": handles_json(handles) }),
            )
        })?;
        durable_off_thread(durable).await?;
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

    pub(super) async fn gate(
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

    pub(super) async fn evidence(
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
            service: crate::model::Subject::Service(spec.name.clone()),
            action,
            kind: FailureKind::Gate,
            reason: gate.reason,
            probes: gate.probes,
            log_tail,
        }
        .redacted()
    }

    /// Creates (or, after the old instances stopped, re-creates) a service and gates it.
    pub(super) async fn bring_up(
        &self,
        spec: &ServiceSpec,
        gpus: &[GpuRef],
        action: Action,
    ) -> StepResult {
        let handles = self
            .start(spec, gpus, crate::state::IntentAction::Start)
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
    pub(super) async fn stop_prior(
        &self,
        change: &Change,
    ) -> Result<Option<ServiceRecord>, FailureEvidence> {
        let Some(record) = self.prior.get(&change.service).cloned() else {
            return Ok(None);
        };
        self.stop(
            &record.spec,
            &record.handles,
            crate::state::IntentAction::Stop,
        )
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
    pub(super) async fn take_down(&self, change: &Change, remove: bool) -> StepResult {
        let Some(record) = self.stop_prior(change).await? else {
            if remove {
                let _ = self.with_store(|s| s.remove_service(&change.service));
            }
            return Ok(());
        };
        // The switches go with the service, or when it leaves them.
        let after = change.after.as_deref().filter(|_| !remove);
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

    pub(super) async fn run_change(&self, change: &Change) -> StepResult {
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
                        after: Some(std::sync::Arc::new(spec)),
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
            Ok(()) => (
                crate::state::EventOutcome::Succeeded,
                format!("done in {elapsed_ms} ms"),
            ),
            Err(f) => (crate::state::EventOutcome::Failed, f.reason.clone()),
        };
        let kind = match change.action {
            Action::Create => Some(crate::state::EventKind::Create),
            Action::Update => Some(crate::state::EventKind::Update),
            Action::Replace => Some(crate::state::EventKind::Replace),
            Action::Destroy => Some(crate::state::EventKind::Destroy),
            Action::NoOp => None,
        };
        if let Some(kind) = kind {
            let _ = self.with_store(|s| {
                s.event(self.revision, Some(&change.service), kind, outcome, &detail)
            });
        }
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

    pub(super) async fn replace(&self, change: &Change) -> StepResult {
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
            if self.strategy == crate::model::Strategy::Canary {
                return self.canary(change, after, old).await;
            }
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

    pub(super) async fn update(&self, change: &Change) -> StepResult {
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
                crate::state::IntentAction::Update,
                backend.update(after, &record.handles, &self.ctx),
            )
            .await
            .map_err(|e| self.fail(&change.service, change.action, e))?;
        self.undo.lock().expect("undo").push(Undo::Updated {
            record: Box::new(record),
            spec: Box::new(ServiceSpec::clone(after)),
        });
        let g = self.gate(after, &handles, 1, self.deadline).await;
        if !g.healthy {
            return Err(self.evidence(after, &handles, change.action, g).await);
        }
        let rec = self.record(after, handles, ServiceStatus::Ready, &change.gpus);
        self.with_store(|s| s.put_service(&rec))
            .map_err(|e| self.fail(&change.service, change.action, e.into()))
    }
}

/// Waits for an intent to be durable on a blocking thread, so that the
/// actions launched meanwhile write their intents while the `fsync` runs and
/// share the next one (a group commit), and so that their gates keep probing.
async fn durable_off_thread(durable: crate::state::Durable) -> Result<(), StepError> {
    // One turn first: the actions launched together write their intents
    // before the first `fsync` begins, and that one covers them all.
    tokio::task::yield_now().await;
    match tokio::task::spawn_blocking(move || durable.wait()).await {
        Ok(r) => r.map_err(StepError::from),
        Err(e) => Err(StepError::new(
            FailureKind::State,
            format!("the journal's sync did not complete: {e}"),
        )),
    }
}

pub(super) fn error_text(e: &BackendError) -> String {
    e.to_string()
}

pub(super) fn no_spec() -> StepError {
    StepError::new(FailureKind::State, "the plan has no spec")
}
