//! The planner itself: scope, diff, drift, phases and the call into feasibility.
//!
//! Pure: reads the [`Input`] and nothing else; no clock, no randomness, no I/O.
//! Every collection it iterates is ordered (BTreeMap/BTreeSet), so the same input
//! gives the same plan byte for byte.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::Directed;
use petgraph::graphmap::GraphMap;

type DiGraphMap<N, E> = GraphMap<
    N,
    E,
    Directed,
    std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
>;

use super::feasibility::{self, Demand};
use super::*;
use crate::error::{Code, Plain};
use crate::model::ServiceSpec;
use crate::state::{ServiceRecord, ServiceStatus};

/// Errors of planning: only bad names in `--target`, `--exclude`, `--replace`.
pub type PlanError = Plain;

/// The default share of capacity kept for the system when no config says otherwise.
pub const DEFAULT_RESERVE_PERCENT: u8 = 20;

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
    let (desired, disabled): (&BTreeMap<ServiceName, ServiceSpec>, &[ServiceName]) =
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
    let mut drifted: BTreeMap<&ServiceName, String> = BTreeMap::new();
    if let Some(obs) = input.observations {
        for name in &scope {
            let (Some(record), Some(seen)) = (state.get(*name), obs.services.get(*name)) else {
                continue;
            };
            for inst in seen {
                let what = describe_handle(&inst.handle);
                let entry = match inst.state.as_str() {
                    "exited" | "missing" | "degraded" => Some(Drift {
                        service: (*name).clone(),
                        kind: inst.state.clone(),
                        detail: match &inst.detail {
                            Some(d) if *d != inst.state => {
                                format!("{what} is {} ({d})", inst.state)
                            }
                            _ => format!("{what} is {}", inst.state),
                        },
                    }),
                    _ => match &inst.spec_hash {
                        Some(h) if *h != record.spec_hash => Some(Drift {
                            service: (*name).clone(),
                            kind: "changed".into(),
                            detail: format!(
                                "{what} runs spec {}, the state recorded {}",
                                short_hash(h),
                                short_hash(&record.spec_hash)
                            ),
                        }),
                        _ => None,
                    },
                };
                if let Some(d) = entry {
                    drifted
                        .entry(*name)
                        .or_insert_with(|| format!("{} ({})", d.detail, d.kind));
                    drift.push(d);
                }
            }
        }
        for (name, handle) in &obs.orphans {
            drift.push(Drift {
                service: name.clone(),
                kind: "orphan".into(),
                detail: format!(
                    "{} carries this project's marks but the state does not know it",
                    describe_handle(handle)
                ),
            });
        }
        for (name, handle, lineage) in &obs.foreign {
            drift.push(Drift {
                service: name.clone(),
                kind: "foreign".into(),
                detail: format!(
                    "{} carries this project's name but another state started it (lineage {lineage}); left alone",
                    describe_handle(handle)
                ),
            });
        }
    }

    // One change per service in scope.
    let mut changes: BTreeMap<&ServiceName, Change> = BTreeMap::new();
    for name in &scope {
        let record = state.get(*name);
        let change = match (desired.get(*name), record) {
            (Some(after), None) => Change {
                service: (*name).clone(),
                action: Action::Create,
                backend: after.backend,
                reason: Some("new service".into()),
                forced_by: Vec::new(),
                before: None,
                after: Some(after.clone()),
                prior_handles: Vec::new(),
                gpus: Vec::new(),
                rollout: None,
            },
            (None, Some(r)) => {
                let reason = if destroy_all {
                    "destroy requested"
                } else if disabled.contains(*name) {
                    "disabled in the configuration"
                } else {
                    "no longer in the configuration"
                };
                Change {
                    service: (*name).clone(),
                    action: Action::Destroy,
                    backend: r.backend,
                    reason: Some(reason.into()),
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
        changes.insert(*name, change);
    }

    let phases = phases(&changes, state);

    if let Some(d) = input.desired {
        let strategy = d.settings.deployment.strategy;
        for c in changes.values_mut() {
            if let (Action::Create | Action::Replace, Some(after)) = (c.action, &c.after) {
                c.rollout = Some(crate::model::rollout_description(
                    strategy,
                    c.before.as_ref().filter(|_| c.action == Action::Replace),
                    after,
                ));
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
            _ => c.after.as_ref(),
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
    let feasibility = feasibility::check(&demands, &held_ports, input.inventory, reserve);

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
                ordered.push(c);
            }
        }
    }
    ordered.extend(changes.into_values());

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
    after: &ServiceSpec,
    forced: bool,
    drift: Option<&String>,
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
    let paths = if record.spec == *after {
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
    let (action, reason) = if backend_changed {
        change.forced_by = vec!["backend".into()];
        (
            Action::Replace,
            format!(
                "`backend` changed from `{}` to `{}` (forces replacement)",
                record.backend, after.backend
            ),
        )
    } else if !forcing.is_empty() {
        let reason = format!("{} changed (forces replacement)", tick_list(&forcing));
        change.forced_by = forcing;
        (Action::Replace, reason)
    } else if record.status == ServiceStatus::Tainted {
        (Action::Replace, "tainted: its last apply failed".to_owned())
    } else if record.status == ServiceStatus::Pending {
        (
            Action::Replace,
            "pending: an earlier apply was interrupted while changing it".to_owned(),
        )
    } else if forced {
        (
            Action::Replace,
            "replacement requested with `--replace`".to_owned(),
        )
    } else if let Some(d) = drift {
        (Action::Replace, format!("repairs drift: {d}"))
    } else if !paths.is_empty() {
        (
            Action::Update,
            format!("{} changed (updated in place)", tick_list(&paths)),
        )
    } else {
        return change;
    };
    // A tainted or interrupted service is replaced whatever else changed; say so.
    let reason = match record.status {
        ServiceStatus::Tainted if !reason.starts_with("tainted") => {
            format!("{reason}; tainted: its last apply failed")
        }
        _ => reason,
    };
    change.action = action;
    change.reason = Some(reason);
    change
}

fn top_level(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

fn tick_list(paths: &[String]) -> String {
    paths
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
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
    changes: &BTreeMap<&ServiceName, Change>,
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
    let by_name: BTreeMap<&str, &ServiceName> = changes.keys().map(|n| (n.as_str(), *n)).collect();
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
    let mut indegree: BTreeMap<&str, usize> = g
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
        out.push(indegree.into_keys().collect());
    }
    out
}

fn describe_handle(h: &Handle) -> String {
    h.describe_replica()
}

fn short_hash(h: &str) -> String {
    let (algo, hex) = h.split_once(':').unwrap_or(("", h));
    let short: String = hex.chars().take(12).collect();
    if algo.is_empty() {
        short
    } else {
        format!("{algo}:{short}")
    }
}

/// Every name in `--target`, `--exclude`, `--replace` must be a service of the
/// configuration or the state.
fn check_names(
    input: &Input,
    desired: &BTreeMap<ServiceName, ServiceSpec>,
    disabled: &[ServiceName],
) -> Result<(), PlanError> {
    let mut known: BTreeSet<&str> = input.snapshot.services.keys().map(|n| n.as_str()).collect();
    known.extend(desired.keys().map(|n| n.as_str()));
    known.extend(disabled.iter().map(|n| n.as_str()));
    if let Some(d) = input.desired {
        known.extend(d.services.keys().map(|n| n.as_str()));
    }
    let o = &input.options;
    let mut unknown = Vec::new();
    for (flag, names) in [
        ("--target", &o.targets),
        ("--exclude", &o.excludes),
        ("--replace", &o.replaces),
    ] {
        for n in names {
            if !known.contains(n.as_str()) {
                unknown.push((flag, n.as_str()));
            }
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let message = if unknown.len() == 1 {
        format!("unknown service `{}` in `{}`", unknown[0].1, unknown[0].0)
    } else {
        format!(
            "unknown services {}",
            unknown
                .iter()
                .map(|(f, n)| format!("`{n}` (in `{f}`)"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut helps = Vec::new();
    for (_, n) in &unknown {
        let best = known
            .iter()
            .map(|k| (strsim::jaro_winkler(n, k), *k))
            .filter(|(s, _)| *s >= 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)));
        if let Some((_, k)) = best {
            helps.push(format!("did you mean `{k}` instead of `{n}`?"));
        }
    }
    let help = if helps.is_empty() {
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
        helps.join(" ")
    };
    Err(Plain::new(Code::S001, message).help(help))
}
