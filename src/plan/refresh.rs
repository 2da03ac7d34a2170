//! Refresh, the pure part: what the backends discovered (by their marks) is
//! turned into [`Observations`] for the planner. The looking itself happens
//! outside `plan` (the backends' `discover`, and
//! the top-level `refresh`, which reads the processes a state records too).

use std::collections::{BTreeSet, HashMap};

use super::{InstanceState, Observations, ObservedInstance};
use crate::instance::{Discovered, Handle, Liveness, Replicas};
use crate::model::BackendKind;
use crate::state::Snapshot;

/// What the instances a backend of `kind` discovered (by their marks) say
/// about the services the snapshot records for that backend: each recorded
/// instance is `running`, `exited` or `missing`, with the spec hash it carries,
/// or `degraded` when it stands for several replicas (a Swarm service) and
/// fewer of them run than the record asks for (scaled down behind the tool's
/// back, or tasks that cannot be placed); a discovered instance that no record
/// names is an orphan.
pub(crate) fn observe_discovered(
    kind: BackendKind,
    discovered: &[Discovered],
    snapshot: &Snapshot,
) -> Observations {
    let key = |h: &Handle| h.identity();
    let by_key: HashMap<String, &Discovered> =
        discovered.iter().map(|d| (key(&d.handle), d)).collect();
    let mut obs = Observations::default();
    let mut claimed = BTreeSet::new();
    for (name, record) in &snapshot.services {
        if record.backend != kind {
            continue;
        }
        let mut list = Vec::new();
        for h in &record.handles {
            let k = key(h);
            let inst = match by_key.get(&k) {
                Some(d) => {
                    claimed.insert(k);
                    let wanted = record.spec.replicas;
                    let short = d.replicas.as_ref().filter(|r| r.running < wanted);
                    ObservedInstance {
                        handle: d.handle.clone(),
                        state: match d.liveness {
                            Liveness::Running if short.is_some() => InstanceState::Degraded,
                            Liveness::Running => InstanceState::Running,
                            Liveness::Exited(_) => InstanceState::Exited,
                            Liveness::Missing => InstanceState::Missing,
                        },
                        spec_hash: d.spec_hash.clone(),
                        detail: short.map(|r| {
                            Replicas {
                                wanted,
                                ..r.clone()
                            }
                            .to_string()
                        }),
                    }
                }
                None => ObservedInstance {
                    handle: h.clone(),
                    state: InstanceState::Missing,
                    spec_hash: None,
                    detail: None,
                },
            };
            list.push(inst);
        }
        obs.services.insert(name.clone(), list);
    }
    for d in discovered {
        if !claimed.contains(&key(&d.handle)) {
            obs.orphans.push((d.service.clone(), d.handle.clone()));
        }
    }
    obs
}
