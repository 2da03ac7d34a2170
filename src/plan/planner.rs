//! The planner itself: scope, diff, drift, phases and the call into feasibility.
//!
//! Pure: reads the [`Input`] and nothing else; no clock, no randomness, no I/O.
//! Every collection it iterates is ordered (BTreeMap/BTreeSet), so the same input
//! gives the same plan byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use petgraph::Directed;
use petgraph::graphmap::GraphMap;

/// The phase graphs and their maps hash short service names, for which
/// SipHash's setup dominated; foldhash with a fixed seed. A graph's order is
/// its insertion order, whatever the hash.
type NameHash = foldhash::fast::FixedState;
type DiGraphMap<N, E> = GraphMap<N, E, Directed, NameHash>;

use super::feasibility::{self, Demand};
use super::*;
use crate::error::{Code, Coded, coded_diagnostic};
use crate::model::{ServiceSpec, Strategy, Workload};
use crate::state::{ServiceRecord, ServiceStatus};

/// Errors of planning: only bad names in `--target`, `--exclude`, `--replace`.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Names that are no service of the configuration or the state, each with
    /// its flag; the close names found for some; the services there are.
    #[error("{}", unknown_message(.unknown))]
    UnknownServices {
        unknown: Vec<(&'static str, String)>,
        suggestions: Vec<(String, String)>,
        known: Vec<String>,
    },
}

fn unknown_message(unknown: &[(&'static str, String)]) -> String {
    match unknown {
        [(flag, name)] => format!("unknown service `{name}` in `{flag}`"),
        _ => format!(
            "unknown services {}",
            unknown
                .iter()
                .map(|(f, n)| format!("`{n}` (in `{f}`)"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl Coded for PlanError {
    fn error_code(&self) -> Code {
        match self {
            PlanError::UnknownServices { .. } => Code::S001,
        }
    }

    fn help_text(&self) -> Option<String> {
        match self {
            PlanError::UnknownServices {
                suggestions, known, ..
            } => Some(if suggestions.is_empty() {
                format!(
                    "the services are: {}",
                    known
                        .iter()
                        .take(20)
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                suggestions
                    .iter()
                    .map(|(k, n)| format!("did you mean `{k}` instead of `{n}`?"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        }
    }
}

coded_diagnostic!(PlanError);

/// The default share of capacity kept for the system when no config says otherwise.
pub(crate) const DEFAULT_RESERVE_PERCENT: u8 = 20;

/// Turns desired state, state snapshot, observations and inventory into a plan.
///
/// Destroys come first (dependents before their dependencies, by the
/// dependencies recorded in the state), then creates, replaces and updates in
/// dependency order: destroying first frees capacity and host ports for what
/// follows. Within a phase, services are ordered by name.
pub fn plan(input: &Input) -> Result<Plan, PlanError> {
    let empty = BTreeMap::new();
    let opts = &input.options;
    let destroy_all = opts.destroy_all;
    let (desired, disabled): (&BTreeMap<ServiceName, Arc<ServiceSpec>>, &[ServiceName]) =
        match input.desired {
            Some(d) if !destroy_all => (&d.services, &d.disabled),
            Some(d) => (&empty, &d.disabled),
            None => (&empty, &[]),
        };
    let state = &input.snapshot.services;
    check_names(input, desired, disabled)?;

    // Scope: which services this plan considers.
    let mut universe: BTreeSet<&ServiceName> = state.keys().collect();
    universe.extend(desired.keys());
    let by_str: BTreeMap<&str, &ServiceName> = universe.iter().map(|n| (n.as_str(), *n)).collect();
    let deps_of = |name: &ServiceName| -> Vec<&ServiceName> {
        match (desired.get(name), state.get(name)) {
            (Some(d), _) => d.dependencies.iter().collect(),
            (None, Some(r)) => r.spec.dependencies.iter().collect(),
            (None, None) => Vec::new(),
        }
    };
    let mut scope: BTreeSet<&ServiceName> = if opts.targets.is_empty() {
        universe.clone()
    } else {
        let roots: Vec<&ServiceName> = opts
            .targets
            .iter()
            .filter_map(|t| by_str.get(t.as_str()).copied())
            .collect();
        if destroy_all {
            // Destroying a service takes down what depends on it.
            let mut dependents: BTreeMap<&ServiceName, Vec<&ServiceName>> = BTreeMap::new();
            for n in &universe {
                for d in deps_of(n) {
                    dependents.entry(d).or_default().push(n);
                }
            }
            closure(roots, |n| dependents.get(n).cloned().unwrap_or_default())
        } else {
            closure(roots, |n| {
                deps_of(n)
                    .into_iter()
                    .filter_map(|d| by_str.get(d.as_str()).copied())
                    .collect()
            })
        }
    };
    scope.retain(|n| !opts.excludes.iter().any(|e| e == n.as_str()));
    let replaces: BTreeSet<&str> = opts.replaces.iter().map(String::as_str).collect();

    // Drift from observations.
    let mut drift = Vec::new();
    let mut drifted: BTreeMap<&ServiceName, Drift> = BTreeMap::new();
    if let Some(obs) = input.observations {
        for name in &scope {
            let (Some(record), Some(seen)) = (state.get(*name), obs.services.get(*name)) else {
                continue;
            };
            for inst in seen {
                // What the engine says, unless it only repeats the state.
                let note = inst.detail.clone().filter(|d| d != inst.state.as_str());
                let kind = match inst.state {
                    InstanceState::Exited => Some(DriftKind::Exited { note }),
                    InstanceState::Missing => Some(DriftKind::Missing { note }),
                    InstanceState::Degraded => Some(DriftKind::Degraded { note }),
                    InstanceState::Running => match &inst.spec_hash {
                        Some(h) if *h != record.spec_hash => Some(DriftKind::Changed {
                            runs: h.clone(),
                            recorded: record.spec_hash.clone(),
                        }),
                        _ => None,
                    },
                };
                if let Some(kind) = kind {
                    let d = Drift {
                        service: (*name).clone(),
                        kind,
                        instance: inst.handle.clone(),
                    };
                    drifted.entry(*name).or_insert_with(|| d.clone());
                    drift.push(d);
                }
            }
        }
        for (name, handle) in &obs.orphans {
            drift.push(Drift {
                service: name.clone(),
                kind: DriftKind::Orphan,
                instance: handle.clone(),
            });
        }
        for (name, handle, lineage) in &obs.foreign {
            drift.push(Drift {
                service: name.clone(),
                kind: DriftKind::Foreign {
                    lineage: lineage.clone(),
                },
                instance: handle.clone(),
            });
        }
    }

    // One change per service in scope, boxed: the map moves its values as
    // it grows and as changes are taken out in phase order, and a change
    // (two specs) is large.
    let mut changes: BTreeMap<&ServiceName, Box<Change>> = BTreeMap::new();
    for name in &scope {
        let record = state.get(*name);
        let change = match (desired.get(*name), record) {
            (Some(after), None) => Change {
                service: (*name).clone(),
                action: Action::Create,
                backend: after.backend,
                reason: Some(Cause::New.into()),
                forced_by: Vec::new(),
                before: None,
                after: Some(after.clone()),
                prior_handles: Vec::new(),
                gpus: Vec::new(),
                rollout: None,
            },
            (None, Some(r)) => {
                let cause = if destroy_all {
                    Cause::DestroyRequested
                } else if disabled.contains(*name) {
                    Cause::Disabled
                } else {
                    Cause::Removed
                };
                Change {
                    service: (*name).clone(),
                    action: Action::Destroy,
                    backend: r.backend,
                    reason: Some(cause.into()),
                    forced_by: Vec::new(),
                    before: Some(r.spec.clone()),
                    after: None,
                    prior_handles: r.handles.clone(),
                    gpus: Vec::new(),
                    rollout: None,
                }
            }
            (Some(after), Some(r)) => decide(
                r,
                after,
                replaces.contains(name.as_str()),
                drifted.get(*name),
                input
                    .capabilities
                    .get(&after.backend)
                    .map_or(&[][..], |c| &c.updatable_in_place[..]),
            ),
            (None, None) => continue,
        };
        changes.insert(*name, Box::new(change));
    }

    let phases = phases(&changes, state);

    if let Some(d) = input.desired {
        let strategy = d.settings.deployment.strategy;
        for c in changes.values_mut() {
            if let (Action::Create | Action::Replace, Some(after)) = (c.action, &c.after) {
                c.rollout = Some(rollout(
                    strategy,
                    c.before.as_ref().filter(|_| c.action == Action::Replace),
                    after,
                ));
            }
            let dep = &d.settings.deployment;
            match &mut c.rollout {
                Some(Rollout::Canary { weights, .. }) => {
                    weights.extend(dep.canary.steps.iter().map(|s| s.weight));
                }
                Some(Rollout::Rolling {
                    max_surge,
                    max_unavailable,
                    ..
                }) => {
                    *max_surge = dep.rolling.max_surge;
                    *max_unavailable = dep.rolling.max_unavailable;
                }
                Some(Rollout::BlueGreen { keep_seconds, .. }) => {
                    *keep_seconds = dep.blue_green.keep_seconds;
                }
                _ => {}
            }
        }
    }

    // Feasibility of what the plan leaves running.
    let mut demands = Vec::new();
    for (name, record) in state {
        if !changes.contains_key(name) {
            demands.push(Demand {
                name,
                spec: &record.spec,
                changing: false,
                pinned: &record.gpus,
            });
        }
    }
    for (name, c) in &changes {
        let pinned: &[GpuRef] = match c.action {
            Action::NoOp | Action::Update => state.get(*name).map_or(&[], |r| &r.gpus),
            _ => &[],
        };
        let spec = match c.action {
            Action::Destroy => continue,
            Action::NoOp => c.before.as_ref(),
            _ => c.after.as_deref(),
        };
        if let Some(spec) = spec {
            demands.push(Demand {
                name,
                spec,
                changing: c.action != Action::NoOp,
                pinned,
            });
        }
    }
    let reserve = input
        .desired
        .map_or(DEFAULT_RESERVE_PERCENT, |d| d.settings.reserve_percent);
    let held_ports: BTreeSet<u16> = state
        .values()
        .flat_map(|r| r.spec.host_ports().map(|(p, _)| p))
        .collect();
    let feasibility = feasibility::check(
        &demands,
        &held_ports,
        input.inventory,
        reserve,
        &input.capabilities,
    );

    // Changes in phase order, no-ops last by name.
    let mut ordered = Vec::with_capacity(changes.len());
    for phase in &phases {
        for name in phase {
            if let Some(mut c) = changes.remove(name) {
                if matches!(c.action, Action::Create | Action::Replace | Action::Update) {
                    c.gpus = feasibility
                        .gpu_assignments
                        .get(name)
                        .cloned()
                        .unwrap_or_default();
                }
                ordered.push(*c);
            }
        }
    }
    ordered.extend(changes.into_values().map(|c| *c));

    let mut summary = Summary::default();
    for c in &ordered {
        match c.action {
            Action::NoOp => summary.no_op += 1,
            Action::Create => summary.create += 1,
            Action::Update => summary.update += 1,
            Action::Replace => summary.replace += 1,
            Action::Destroy => summary.destroy += 1,
        }
    }

    Ok(Plan {
        format_version: FORMAT_VERSION,
        binding: Binding {
            lineage: input.snapshot.lineage.clone(),
            serial: input.snapshot.serial,
            config_hash: input.config_hash.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            state_key_id: None,
        },
        changes: ordered,
        phases,
        drift,
        feasibility,
        summary,
        destroy_all,
    })
}

/// The action for a service that is both desired and recorded.
fn decide(
    record: &ServiceRecord,
    after: &Arc<ServiceSpec>,
    forced: bool,
    drift: Option<&Drift>,
    updatable: &[String],
) -> Change {
    let mut change = Change {
        service: after.name.clone(),
        action: Action::NoOp,
        backend: after.backend,
        reason: None,
        forced_by: Vec::new(),
        before: Some(record.spec.clone()),
        after: Some(after.clone()),
        prior_handles: record.handles.clone(),
        gpus: Vec::new(),
        rollout: None,
    };
    let paths = if record.spec == **after {
        Vec::new()
    } else {
        changed_paths(&record.spec.canonical(), &after.canonical())
    };
    let forcing: Vec<String> = paths
        .iter()
        .filter(|p| !updatable.iter().any(|u| u == top_level(p)))
        .cloned()
        .collect();
    let backend_changed = record.backend != after.backend || record.spec.backend != after.backend;
    let (action, cause) = if backend_changed {
        change.forced_by = vec!["backend".into()];
        (
            Action::Replace,
            Cause::BackendChanged {
                from: record.backend,
                to: after.backend,
            },
        )
    } else if !forcing.is_empty() {
        change.forced_by = forcing.clone();
        (Action::Replace, Cause::ForcingFields { paths: forcing })
    } else if record.status == ServiceStatus::Tainted {
        (Action::Replace, Cause::Tainted)
    } else if record.status == ServiceStatus::Pending {
        (Action::Replace, Cause::Pending)
    } else if forced {
        (Action::Replace, Cause::ReplaceRequested)
    } else if let Some(d) = drift {
        (
            Action::Replace,
            Cause::RepairsDrift {
                drift: Box::new(d.clone()),
            },
        )
    } else if !paths.is_empty() {
        (Action::Update, Cause::UpdatableFields { paths })
    } else {
        return change;
    };
    // A tainted service is replaced whatever else changed; say so.
    let also_tainted = record.status == ServiceStatus::Tainted && cause != Cause::Tainted;
    change.action = action;
    change.reason = Some(Reason {
        cause,
        also_tainted,
    });
    change
}

/// How a create (`before` is `None`) or a replace of `after` rolls out
/// under `strategy`.
fn rollout(strategy: Strategy, before: Option<&ServiceSpec>, after: &ServiceSpec) -> Rollout {
    let switch_ports: Option<Vec<u16>> = after
        .behind_switch
        .then(|| after.host_ports().map(|(p, _)| p).collect());
    let Some(before) = before else {
        return Rollout::Starts { switch_ports };
    };
    if let Some(why) = before.stop_first_reason(after) {
        return Rollout::StopFirst { why, switch_ports };
    }
    let replicas = after.replicas.max(1);
    match (strategy, after.behind_switch) {
        (Strategy::BlueGreen, true) => Rollout::BlueGreen {
            replicas,
            switch_ports: switch_ports.unwrap_or_default(),
            keep_seconds: 0,
        },
        (Strategy::Canary, true) => Rollout::Canary {
            replicas,
            switch_ports: switch_ports.unwrap_or_default(),
            weights: Vec::new(),
        },
        (Strategy::RollingUpdate, true) => Rollout::Rolling {
            replicas,
            switch_ports,
            max_surge: 1,
            max_unavailable: 0,
        },
        (Strategy::RollingUpdate, false) if after.workload == Workload::Service => {
            Rollout::Rolling {
                replicas,
                switch_ports,
                max_surge: 1,
                max_unavailable: 0,
            }
        }
        _ => Rollout::StartFirst,
    }
}

fn top_level(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// The paths (`image`, `env.API_KEY`, `resources.memory_mb`) whose values differ
/// between two canonical specs. Objects are descended one level, except a
/// sensitive value, which is a leaf.
pub(crate) fn changed_paths(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    let (Value::Object(a), Value::Object(b)) = (a, b) else {
        return out;
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (va, vb) = (a.get(k), b.get(k));
        if va == vb {
            continue;
        }
        match (va, vb) {
            (Some(Value::Object(x)), Some(Value::Object(y)))
                if !super::diff::is_sensitive_map(x) && !super::diff::is_sensitive_map(y) =>
            {
                let sub: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for s in sub {
                    if x.get(s) != y.get(s) {
                        out.push(format!("{k}.{s}"));
                    }
                }
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

fn closure<'a>(
    roots: Vec<&'a ServiceName>,
    next: impl Fn(&'a ServiceName) -> Vec<&'a ServiceName>,
) -> BTreeSet<&'a ServiceName> {
    let mut seen = BTreeSet::new();
    let mut stack = roots;
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(next(n));
        }
    }
    seen
}

/// Destroy phases (dependents first), then create/replace/update phases
/// (dependencies first). Each phase is sorted by name.
fn phases(
    changes: &BTreeMap<&ServiceName, Box<Change>>,
    state: &BTreeMap<ServiceName, ServiceRecord>,
) -> Vec<Vec<ServiceName>> {
    let mut destroy: DiGraphMap<&str, ()> = DiGraphMap::default();
    let mut build: DiGraphMap<&str, ()> = DiGraphMap::default();
    for (name, c) in changes {
        match c.action {
            Action::NoOp => {}
            Action::Destroy => {
                destroy.add_node(name.as_str());
            }
            _ => {
                build.add_node(name.as_str());
            }
        }
    }
    for (name, c) in changes {
        match c.action {
            Action::NoOp => {}
            Action::Destroy => {
                // A service goes before the dependencies the state recorded for it.
                if let Some(r) = state.get(*name) {
                    for d in &r.spec.dependencies {
                        if destroy.contains_node(d.as_str()) && d != *name {
                            destroy.add_edge(name.as_str(), d.as_str(), ());
                        }
                    }
                }
            }
            _ => {
                if let Some(after) = &c.after {
                    for d in &after.dependencies {
                        if build.contains_node(d.as_str()) && d != *name {
                            build.add_edge(d.as_str(), name.as_str(), ());
                        }
                    }
                }
            }
        }
    }
    let by_name: std::collections::HashMap<&str, &ServiceName, NameHash> =
        changes.keys().map(|n| (n.as_str(), *n)).collect();
    let mut out = layers(&destroy);
    out.extend(layers(&build));
    out.into_iter()
        .map(|layer| {
            layer
                .into_iter()
                .filter_map(|n| by_name.get(n).map(|k| (*k).clone()))
                .collect()
        })
        .collect()
}

/// Kahn's algorithm in layers: a node goes in the first layer after all of its
/// predecessors. Nodes left on a cycle (the config rejects cycles; a state could
/// still hold one) go in one last layer.
fn layers<'a>(g: &DiGraphMap<&'a str, ()>) -> Vec<Vec<&'a str>> {
    let mut indegree: std::collections::HashMap<&str, usize, NameHash> = g
        .nodes()
        .map(|n| {
            (
                n,
                g.neighbors_directed(n, petgraph::Direction::Incoming)
                    .count(),
            )
        })
        .collect();
    let mut current: Vec<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut out = Vec::new();
    while !current.is_empty() {
        current.sort_unstable();
        for n in &current {
            indegree.remove(n);
        }
        let mut next = Vec::new();
        for n in &current {
            for m in g.neighbors_directed(n, petgraph::Direction::Outgoing) {
                if let Some(d) = indegree.get_mut(m) {
                    *d -= 1;
                    if *d == 0 {
                        next.push(m);
                    }
                }
            }
        }
        out.push(std::mem::take(&mut current));
        current = next;
    }
    if !indegree.is_empty() {
        let mut left: Vec<&str> = indegree.into_keys().collect();
        left.sort_unstable();
        out.push(left);
    }
    out
}

/// Every name in `--target`, `--exclude`, `--replace` must be a service of the
/// configuration or the state.
fn check_names(
    input: &Input,
    desired: &BTreeMap<ServiceName, Arc<ServiceSpec>>,
    disabled: &[ServiceName],
) -> Result<(), PlanError> {
    let mut known: BTreeSet<&str> = input.snapshot.services.keys().map(|n| n.as_str()).collect();
    known.extend(desired.keys().map(|n| n.as_str()));
    known.extend(disabled.iter().map(|n| n.as_str()));
    if let Some(d) = input.desired {
        known.extend(d.services.keys().map(|n| n.as_str()));
    }
    let o = &input.options;
    let mut unknown: Vec<(&'static str, String)> = Vec::new();
    for (flag, names) in [
        ("--target", &o.targets),
        ("--exclude", &o.excludes),
        ("--replace", &o.replaces),
    ] {
        for n in names {
            if !known.contains(n.as_str()) {
                unknown.push((flag, n.clone()));
            }
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let mut suggestions = Vec::new();
    for (_, n) in &unknown {
        let best = known
            .iter()
            .map(|k| (strsim::jaro_winkler(n, k), *k))
            .filter(|(s, _)| *s >= 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)));
        if let Some((_, k)) = best {
            suggestions.push((k.to_owned(), n.clone()));
        }
    }
    Err(PlanError::UnknownServices {
        unknown,
        suggestions,
        known: known.iter().map(|k| (*k).to_owned()).collect(),
    })
}
