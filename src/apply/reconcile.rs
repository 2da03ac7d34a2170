//! Reconciliation before an apply: the instances that carry this project's marks
//! are compared with the state, so that a run that was killed (even by SIGKILL)
//! leaves neither an orphan nor a ghost behind.
//!
//! - An instance the state does not name, running the spec the state records for
//!   its service while the recorded instances are gone, is **adopted**: the
//!   record takes its handle (status `pending`, so the next plan replaces it
//!   through a health gate unless it is proven ready), and what watches it
//!   (a container's health-driven restart monitor) is started again if it
//!   died with the run that was killed (`Backend::supervise`).
//! - Any other unrecorded instance is **stopped** (it was started by an
//!   interrupted run or is an old instance of a replace that never finished).
//! - Intents left open by the interrupted run are closed as `abandoned`.
//!
//! Every stop is journalled like any other side effect.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backends::{Discovered, Liveness, Registry, StartContext};
use crate::model::ServiceName;
use crate::state::{Handle, ServiceStatus, StateError, Store};

/// What reconciliation did to one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reconciled {
    pub service: ServiceName,
    /// `adopted`, `stopped`, `intent-closed`, `unwatched` (an adopted
    /// instance whose monitor could not be started).
    pub action: String,
    pub detail: String,
}

/// Adopts or stops the unrecorded instances a refresh found (see the
/// top-level `refresh`, `Refreshed::ours`; only those this very state's runs
/// started are touched) and closes the intents an interrupted run left open.
/// `ctx` is where an adopted instance's monitor is started from (the
/// project, its log directory).
pub(crate) async fn reconcile(
    store: &mut Store,
    backends: &Registry,
    unknown: Vec<Discovered>,
    grace: Duration,
    ctx: &StartContext,
) -> Result<Vec<Reconciled>, StateError> {
    let mut done = Vec::new();
    let snap = store.snapshot()?;
    let revision = snap.revision;
    for intent in &snap.open_intents {
        store.close_intent(
            intent.id,
            "abandoned",
            &serde_json::json!({ "note": "the run that wrote it was interrupted" }),
        )?;
        done.push(Reconciled {
            service: intent.service.clone(),
            action: "intent-closed".into(),
            detail: format!(
                "`{}` of revision {} was interrupted",
                intent.action, intent.revision
            ),
        });
    }
    // Only instances started by runs of this very state are adopted or stopped.
    let unknown = unknown.into_iter().filter(|d| {
        snap.lineage.is_some()
            && d.lineage == snap.lineage
            && !snap
                .services
                .values()
                .flat_map(|r| r.handles.iter())
                .any(|k| k.same_instance(&d.handle))
    });
    let mut records = snap.services.clone();
    for d in unknown {
        let Some(backend) = backends
            .all()
            .find(|b| handle_kind_matches(b.kind(), &d.handle))
        else {
            continue;
        };
        let running = d.liveness == Liveness::Running;
        let wanted_hash = records.get(&d.service).map(|r| r.spec_hash.clone());
        let record_dead = match records.get(&d.service) {
            Some(r) => {
                let mut all_dead = true;
                for h in &r.handles {
                    if backend.liveness(h).await == Liveness::Running {
                        all_dead = false;
                    }
                }
                all_dead
            }
            None => true,
        };
        let adopt = running
            && record_dead
            && wanted_hash.is_some()
            && d.spec_hash == wanted_hash
            && records.contains_key(&d.service);
        if adopt {
            let r = records.get_mut(&d.service).expect("checked");
            r.handles = vec![d.handle.clone()];
            r.status = ServiceStatus::Pending;
            store.put_service(r)?;
            store.event(
                revision,
                Some(&d.service),
                crate::state::EventKind::Adopt,
                crate::state::EventOutcome::Succeeded,
                "adopted an unrecorded instance",
            )?;
            done.push(Reconciled {
                service: d.service.clone(),
                action: "adopted".into(),
                detail: describe(&d.handle),
            });
            let ctx = StartContext {
                revision,
                ..ctx.clone()
            };
            if let Err(e) = backend
                .supervise(&r.spec, &ctx, std::slice::from_ref(&d.handle))
                .await
            {
                let detail = e.to_string();
                store.event(
                    revision,
                    Some(&d.service),
                    crate::state::EventKind::Adopt,
                    crate::state::EventOutcome::Failed,
                    &format!("the adopted instance's monitor could not be started: {detail}"),
                )?;
                done.push(Reconciled {
                    service: d.service.clone(),
                    action: "unwatched".into(),
                    detail,
                });
            }
            continue;
        }
        let id = store.record_intent(
            revision,
            &d.service,
            crate::state::IntentAction::ReconcileStop,
            &serde_json::json!({ "handle": d.handle }),
        )?;
        let res = backend.stop(std::slice::from_ref(&d.handle), grace).await;
        store.close_intent(
            id,
            if res.is_ok() { "succeeded" } else { "failed" },
            &serde_json::json!({}),
        )?;
        done.push(Reconciled {
            service: d.service.clone(),
            action: "stopped".into(),
            detail: describe(&d.handle),
        });
    }
    Ok(done)
}

fn handle_kind_matches(kind: crate::model::BackendKind, h: &Handle) -> bool {
    h.backend() == kind
}

pub(crate) fn describe(h: &Handle) -> String {
    h.describe()
}
