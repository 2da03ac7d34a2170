//! Refresh: one look at what really runs, shared by `plan`, `apply` and
//! `cleanup`. Every backend is asked once ([`Backend::discover`], by this
//! project's marks); the recorded processes are read from `/proc`; what was
//! found is turned into the planner's [`Observations`] by the pure
//! `plan::refresh`, and the instances no record names are split by the state
//! that started them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::backends::{Backend, BackendError, Registry};
use crate::instance::{Discovered, Handle};
use crate::model::ServiceName;
use crate::plan::{Observations, ObservedInstance};
use crate::state::{ServiceRecord, Snapshot};

/// How long one backend's discovery may take: an engine that does not answer
/// must not hold up a plan.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What one refresh found.
#[derive(Clone, Debug, Default)]
pub(crate) struct Refreshed {
    /// For the planner: the recorded instances as found, the orphans of this
    /// state's runs and the instances of another state sharing the project.
    pub observations: Observations,
    /// Unrecorded instances started by runs of this state (to adopt or stop).
    pub ours: Vec<Discovered>,
    /// Unrecorded instances of other states sharing the project name, with
    /// their lineage (never touched).
    pub theirs: Vec<(Discovered, String)>,
}

/// What runs, for a refreshed plan, a recovery and a cleanup: the recorded
/// processes (by pid and start time), containers and Swarm services (by their
/// labels), and the instances marked with `project` that the state does not
/// name: orphans of this state's runs, and those of another state sharing the
/// project name. One discovery per backend serves all of it.
pub(crate) async fn observe(registry: &Registry, project: &str, snapshot: &Snapshot) -> Refreshed {
    let mut obs = observe_recorded(registry, snapshot);
    let mut found = Vec::new();
    for b in registry.all() {
        let kind = b.kind();
        match tokio::time::timeout(DISCOVERY_TIMEOUT, b.discover(project)).await {
            Ok(Ok(d)) => {
                // What a backend reads of its recorded instances directly
                // was read above; the others are known by what it found.
                if !b.reads_recorded() && snapshot.services.values().any(|r| r.backend == kind) {
                    let seen = crate::plan::refresh::observe_discovered(kind, &d, snapshot);
                    obs.services.extend(seen.services);
                }
                found.extend(d);
            }
            Ok(Err(e)) => tracing::debug!(backend = %kind, error = %e, "discovery failed"),
            Err(_) => tracing::warn!(backend = %kind, "discovery took over 10 s; skipped"),
        }
    }
    let (ours, theirs) = by_owner(
        unrecorded(found, &snapshot.services),
        snapshot.lineage.as_deref(),
    );
    obs.orphans = ours
        .iter()
        .map(|d| (d.service.clone(), d.handle.clone()))
        .collect();
    obs.foreign = theirs
        .iter()
        .map(|(d, lineage)| (d.service.clone(), d.handle.clone(), lineage.clone()))
        .collect();
    Refreshed {
        observations: obs,
        ours,
        theirs,
    }
}

/// What one backend's discovery says of the services the snapshot records
/// for it (`running`, `exited` or `missing`, with the spec hash each carries),
/// and the instances marked as `project`'s that no record names.
pub async fn observe_backend(
    backend: &dyn Backend,
    project: &str,
    snapshot: &Snapshot,
) -> Result<Observations, BackendError> {
    let discovered = backend.discover(project).await?;
    Ok(crate::plan::refresh::observe_discovered(
        backend.kind(),
        &discovered,
        snapshot,
    ))
}

/// What the backends that read a recorded instance directly (the process
/// backend: a pid and its start time in `/proc`) say of the instances
/// `snapshot` records; also for `plan` without a configuration, which has no
/// project to discover by.
pub(crate) fn observe_recorded(registry: &Registry, snapshot: &Snapshot) -> Observations {
    let mut obs = Observations::default();
    for (name, record) in &snapshot.services {
        let seen: Vec<ObservedInstance> = record
            .handles
            .iter()
            .filter_map(|h| {
                let (state, detail) = registry.get(h.backend())?.recorded_state(h)?;
                Some(ObservedInstance {
                    handle: h.clone(),
                    state,
                    spec_hash: None,
                    detail,
                })
            })
            .collect();
        if !seen.is_empty() {
            obs.services.insert(name.clone(), seen);
        }
    }
    obs
}

/// The discovered instances that no record of `state` names.
pub(crate) fn unrecorded(
    found: Vec<Discovered>,
    state: &BTreeMap<ServiceName, ServiceRecord>,
) -> Vec<Discovered> {
    let known: Vec<&Handle> = state.values().flat_map(|r| r.handles.iter()).collect();
    found
        .into_iter()
        .filter(|d| !known.iter().any(|k| k.same_instance(&d.handle)))
        .collect()
}

/// Unrecorded instances split into those started by runs of the state with
/// `lineage` (`None`: a state that has started nothing yet) and those of other
/// states sharing the project name, with their lineage.
pub(crate) fn by_owner(
    unrecorded: Vec<Discovered>,
    lineage: Option<&str>,
) -> (Vec<Discovered>, Vec<(Discovered, String)>) {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for d in unrecorded {
        if lineage.is_some() && d.lineage.as_deref() == lineage {
            ours.push(d);
        } else {
            let owner = d.lineage.clone().unwrap_or_else(|| "unknown".into());
            theirs.push((d, owner));
        }
    }
    (ours, theirs)
}
