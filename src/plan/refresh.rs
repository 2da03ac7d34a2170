//! Refresh: the I/O edge of planning.
//!
//! For processes, reads `/proc/<pid>/stat` for every process the state records
//! and reports what it finds as [`Observations`] for the pure planner. A process
//! is identified by its pid and its start time (field 22, clock ticks since
//! boot), so a pid reused by another program reads as `missing`, never as ours.
//! Containers and Swarm services are discovered by their backends (by their
//! labels); [`observe_discovered`] turns what they found into observations.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::{Observations, ObservedInstance};
use crate::backends::{Discovered, Liveness, Replicas};
use crate::model::BackendKind;
use crate::state::{Handle, Snapshot};

/// What the instances a backend of `kind` discovered (by their marks) say
/// about the services the snapshot records for that backend: each recorded
/// instance is `running`, `exited` or `missing`, with the spec hash it carries,
/// or `degraded` when it stands for several replicas (a Swarm service) and
/// fewer of them run than the record asks for (scaled down behind the tool's
/// back, or tasks that cannot be placed); a discovered instance that no record
/// names is an orphan.
pub fn observe_discovered(
    kind: BackendKind,
    discovered: &[Discovered],
    snapshot: &Snapshot,
) -> Observations {
    let key = |h: &Handle| match h {
        Handle::Container { id, .. } => format!("c:{id}"),
        Handle::SwarmService { id, .. } => format!("s:{id}"),
        Handle::Process {
            pid, start_time, ..
        } => format!("p:{pid}:{start_time}"),
    };
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
                            Liveness::Running if short.is_some() => "degraded",
                            Liveness::Running => "running",
                            Liveness::Exited(_) => "exited",
                            Liveness::Missing => "missing",
                        }
                        .into(),
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
                    state: "missing".into(),
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

/// What `/proc` says about one pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    /// Running (or sleeping) with this start time.
    Alive { start_time: u64 },
    /// A zombie: it exited and was not reaped yet.
    Zombie,
    /// No such process.
    Gone,
}

/// Reads `/proc/<pid>/stat`.
pub fn proc_state(pid: u32) -> ProcState {
    proc_state_at(Path::new("/proc"), pid)
}

fn proc_state_at(proc_root: &Path, pid: u32) -> ProcState {
    let Ok(stat) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) else {
        return ProcState::Gone;
    };
    parse_stat(&stat).unwrap_or(ProcState::Gone)
}

/// Parses a `stat` line: the command is in parentheses and may hold spaces, so
/// the fields are counted after the last `)`.
pub fn parse_stat(stat: &str) -> Option<ProcState> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return Some(ProcState::Zombie);
    }
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcState::Alive { start_time })
}

/// Observes every process handle in the snapshot: `running` when the pid is
/// alive with the recorded start time, `exited` when it is gone or a zombie,
/// `missing` when the pid now belongs to another process.
pub fn observe_processes(snapshot: &Snapshot) -> Observations {
    let mut obs = Observations::default();
    for (name, record) in &snapshot.services {
        let mut seen = Vec::new();
        for h in &record.handles {
            let Handle::Process {
                pid, start_time, ..
            } = h
            else {
                continue;
            };
            let state = match proc_state(*pid) {
                ProcState::Alive { start_time: s } if s == *start_time => "running",
                ProcState::Alive { .. } => "missing",
                ProcState::Zombie | ProcState::Gone => "exited",
            };
            seen.push(ObservedInstance {
                handle: h.clone(),
                state: state.to_owned(),
                spec_hash: None,
                detail: None,
            });
        }
        if !seen.is_empty() {
            obs.services.insert(name.clone(), seen);
        }
    }
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_with_spaces_and_parentheses() {
        let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(
            parse_stat(line),
            Some(ProcState::Alive { start_time: 987654 })
        );
        let zombie = "4242 (x) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(zombie), Some(ProcState::Zombie));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_with_a_stable_start_time() {
        let me = std::process::id();
        let a = proc_state(me);
        assert!(matches!(a, ProcState::Alive { .. }));
        assert_eq!(a, proc_state(me));
        assert_eq!(proc_state(u32::MAX - 1), ProcState::Gone);
    }
}
