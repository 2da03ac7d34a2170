//! The rollback of a failed run: every step it recorded ([`Undo`]) undone,
//! newest first, each reported as an event and in the state's audit log.

use super::*;

/// A step to undo, recorded as the run goes.
#[derive(Clone, Debug)]
pub(super) enum Undo {
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

impl Exec<'_> {
    /// Undoes every recorded step, newest first.
    pub(super) async fn roll_back(&self, deadline: Instant) -> Vec<RollbackResult> {
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
                    super::UndoStep::Aborted,
                    false,
                    "aborted by a second interrupt".into(),
                ));
                continue;
            }
            if Instant::now() >= deadline {
                out.push(self.report_step(
                    &step_service(&step),
                    super::UndoStep::TimedOut,
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
                    let res = self
                        .stop(&spec, &handles, crate::state::IntentAction::RollbackStop)
                        .await;
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
                        (Err(e), _) => {
                            let running = self.still_running(&spec, &handles).await;
                            format!("{}; {running}", e.message)
                        }
                        (_, Err(e)) => e.to_string(),
                        _ => format!("stopped {} instance(s)", handles.len()),
                    };
                    self.report_step(&service, super::UndoStep::StopNew, ok, detail)
                }
                Undo::Stopped { record } => self.restart_old(*record, deadline).await,
                Undo::SwitchUp { service, client } => {
                    let res = client.stop(&self.ctx.project, &self.ctx.lineage).await;
                    self.report_step(
                        &service,
                        super::UndoStep::StopSwitch,
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
                            self.report_step(
                                &record.name,
                                super::UndoStep::RevertUpdate,
                                true,
                                "reverted".into(),
                            )
                        }
                        Err(e) => self.report_step(
                            &record.name,
                            super::UndoStep::RevertUpdate,
                            false,
                            e.to_string(),
                        ),
                    }
                }
            };
            out.push(r);
        }
        out
    }

    pub(super) async fn restart_old(
        &self,
        record: ServiceRecord,
        deadline: Instant,
    ) -> RollbackResult {
        let name = record.name.clone();
        let spec = match self.with_plaintext(&record.spec) {
            Ok(s) => s,
            Err(e) => {
                let mut r = record.clone();
                r.handles.clear();
                r.status = ServiceStatus::Tainted;
                let _ = self.with_store(|s| s.put_service(&r));
                return self.report_step(&name, super::UndoStep::RestartOld, false, e.message);
            }
        };
        if spec.behind_switch
            && let Err(e) = self.ensure_switches(&spec, false).await
        {
            return self.report_step(&name, super::UndoStep::RestartOld, false, e.message);
        }
        let handles = match self
            .start(
                &spec,
                &record.gpus,
                crate::state::IntentAction::RollbackStart,
            )
            .await
        {
            Ok(h) => h,
            Err(e) => {
                let mut r = record.clone();
                r.handles.clear();
                r.status = ServiceStatus::Tainted;
                let _ = self.with_store(|s| s.put_service(&r));
                return self.report_step(&name, super::UndoStep::RestartOld, false, e.message);
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
                super::UndoStep::RestartOld,
                true,
                "running and healthy again".into(),
            )
        } else {
            self.report_step(
                &name,
                super::UndoStep::RestartOld,
                false,
                format!("restarted but not healthy: {}", g.reason),
            )
        }
    }

    pub(super) fn report_step(
        &self,
        service: &ServiceName,
        step: super::UndoStep,
        ok: bool,
        detail: String,
    ) -> RollbackResult {
        self.emit(Event::RollbackStep {
            service: service.clone(),
            step,
            ok,
            detail: detail.clone(),
        });
        let _ = self.with_store(|s| {
            s.event(
                self.revision,
                Some(service),
                crate::state::EventKind::Rollback,
                if ok {
                    crate::state::EventOutcome::Succeeded
                } else {
                    crate::state::EventOutcome::Failed
                },
                &format!("{step}: {detail}"),
            )
        });
        RollbackResult {
            service: service.clone(),
            step,
            ok,
            detail,
        }
    }
}

impl Exec<'_> {
    /// Which of `handles` still run: `still running: process 42 (replica 0)`.
    async fn still_running(&self, spec: &ServiceSpec, handles: &[Handle]) -> String {
        let Ok(b) = self.backend(spec) else {
            return "whether its new instances run is unknown".to_owned();
        };
        let mut running = Vec::new();
        for h in handles {
            if b.liveness(h).await == crate::instance::Liveness::Running {
                running.push(h.describe());
            }
        }
        if running.is_empty() {
            "none of its new instances runs".to_owned()
        } else {
            format!("still running: {}", running.join(", "))
        }
    }

    /// What the state records of each service this run touched, and
    /// whether those instances run: said when the run could not record its
    /// end, so that what the state believes is never left unsaid.
    pub(super) async fn what_is_left(&self, touched: &[ServiceName]) -> Vec<String> {
        let snap = match self.with_store(|s| s.snapshot()) {
            Ok(snap) => snap,
            Err(e) => return vec![format!("the state cannot be read: {e}")],
        };
        let mut out = Vec::new();
        for name in touched {
            let Some(r) = snap.services.get(name) else {
                out.push(format!("the state records no `{name}`"));
                continue;
            };
            let mut instances = Vec::new();
            for h in &r.handles {
                let live = match self.backends.get(r.backend) {
                    Some(b) if b.liveness(h).await == crate::instance::Liveness::Running => {
                        "running"
                    }
                    Some(_) => "not running",
                    None => "unknown",
                };
                instances.push(format!("{} ({live})", h.describe()));
            }
            out.push(format!(
                "the state records `{name}` at revision {}, {}, with {}",
                r.revision,
                format!("{:?}", r.status).to_lowercase(),
                if instances.is_empty() {
                    "no instance".to_owned()
                } else {
                    instances.join(", ")
                }
            ));
        }
        out
    }
}

pub(super) fn step_service(u: &Undo) -> ServiceName {
    match u {
        Undo::Started { service, .. } => service.clone(),
        Undo::Stopped { record } | Undo::Updated { record, .. } => record.name.clone(),
        Undo::SwitchUp { service, .. } => service.clone(),
        Undo::Rollout(u) => u.lock().expect("rollout").new_spec.name.clone(),
    }
}
