//! Feasibility: does what the plan leaves running fit the capacity?
//!
//! Every dimension is checked and every problem is collected as data (in the
//! manner of Nomad's `AllocMetric`), never by returning at the first one:
//! CPU, memory and storage per host against capacity minus the reserve, GPUs
//! per device (count and per-device memory), and host ports: already in use,
//! or fixed and wanted by more replicas than there are places to bind them
//! (see [`check_ports_per_replica`]).
//!
//! Placement: with one host, everything goes on it. With several (`hosts:` in an
//! inventory file), services are placed first-fit decreasing: largest memory
//! need first (then CPU, then name), each on the first host, in inventory
//! order, where its CPU, memory, storage and GPUs still fit; a service that fits
//! nowhere goes on the host with the most free memory, and that host's totals
//! then report the shortfall. A service that already holds GPUs stays on their
//! host.
//!
//! GPUs: each replica of a service gets `gpu_count` distinct devices. A service
//! that gives `gpu_memory_mb` needs that much free on each device and may share
//! a device with others; one that does not takes whole devices. Devices are
//! chosen first-fit by index; services that keep running hold their recorded
//! devices, and the others are assigned largest need first, then by name.
//! A device's usable memory is its total minus the reserve, and, when probed,
//! at most what is free plus what this deployment's own services hold on it.

use std::collections::{BTreeMap, BTreeSet};

use super::{Capabilities, Dimension, Feasibility, Problem};
use crate::inventory::{Host, Inventory, PublishMode, Source};
use crate::model::{BackendKind, Protocol, ServiceName, ServiceSpec};
use crate::state::GpuRef;

/// One service that will be running after the plan.
pub struct Demand<'a> {
    pub name: &'a ServiceName,
    pub spec: &'a ServiceSpec,
    /// Created, replaced or updated by this plan (its ports are checked).
    pub changing: bool,
    /// GPUs it holds and keeps (a service that is not replaced).
    pub pinned: &'a [GpuRef],
}

impl Demand<'_> {
    fn replicas(&self) -> f64 {
        f64::from(self.spec.replicas)
    }
    fn cpu(&self) -> f64 {
        self.spec.resources.cpu_cores * self.replicas()
    }
    fn memory_mb(&self) -> f64 {
        self.spec.resources.memory_mb as f64 * self.replicas()
    }
    fn storage_gb(&self) -> f64 {
        self.spec.resources.storage_gb as f64 * self.replicas()
    }
    fn gpus(&self) -> u32 {
        self.spec.resources.gpu_count * self.spec.replicas
    }
}

/// Checks every dimension; see the module documentation for the rules.
pub fn check(
    demands: &[Demand],
    held_ports: &BTreeSet<u16>,
    inventory: &Inventory,
    reserve_percent: u8,
    capabilities: &BTreeMap<BackendKind, Capabilities>,
) -> Feasibility {
    let mut f = Feasibility {
        feasible: true,
        problems: Vec::new(),
        gpu_assignments: BTreeMap::new(),
        inventory_source: match &inventory.source {
            Source::Probe => "probe".to_owned(),
            Source::File { path } => path.clone(),
            Source::Swarm => "swarm".to_owned(),
        },
        reserve_percent,
    };
    if inventory.hosts.is_empty() {
        return f;
    }
    let keep = 1.0 - f64::from(reserve_percent.min(100)) / 100.0;
    let multi = inventory.hosts.len() > 1;

    // Placement.
    let mut order: Vec<&Demand> = demands.iter().collect();
    order.sort_by(|a, b| {
        b.memory_mb()
            .total_cmp(&a.memory_mb())
            .then(b.cpu().total_cmp(&a.cpu()))
            .then(a.name.cmp(b.name))
    });
    let mut placed: Vec<Vec<&Demand>> = vec![Vec::new(); inventory.hosts.len()];
    let mut used = vec![(0.0f64, 0.0f64, 0.0f64, 0u32); inventory.hosts.len()];
    for d in order {
        let idx = if !multi {
            0
        } else if let Some(i) = d
            .pinned
            .first()
            .and_then(|g| inventory.hosts.iter().position(|h| h.name == g.host))
        {
            i
        } else {
            let fits = |i: usize| {
                let h = &inventory.hosts[i];
                let u = used[i];
                u.0 + d.cpu() <= h.cpu_cores * keep + 1e-9
                    && u.1 + d.memory_mb() <= h.memory_mb as f64 * keep + 1e-9
                    && u.2 + d.storage_gb() <= h.storage_gb as f64 * keep + 1e-9
                    && u.3 + d.gpus() <= h.gpus.len() as u32
            };
            (0..inventory.hosts.len())
                .find(|i| fits(*i))
                .unwrap_or_else(|| {
                    (0..inventory.hosts.len())
                        .max_by(|a, b| {
                            let fa = inventory.hosts[*a].memory_mb as f64 - used[*a].1;
                            let fb = inventory.hosts[*b].memory_mb as f64 - used[*b].1;
                            fa.total_cmp(&fb).then(b.cmp(a))
                        })
                        .unwrap_or(0)
                })
        };
        used[idx].0 += d.cpu();
        used[idx].1 += d.memory_mb();
        used[idx].2 += d.storage_gb();
        used[idx].3 += d.gpus();
        placed[idx].push(d);
    }

    for (host, on_host) in inventory.hosts.iter().zip(placed.iter_mut()) {
        on_host.sort_by(|a, b| a.name.cmp(b.name));
        let host_label = multi.then(|| host.name.clone());
        let prefix = |dim: &str| match &host_label {
            Some(h) => format!("{dim} on `{h}`"),
            None => dim.to_owned(),
        };
        check_scalar(
            &mut f,
            on_host,
            host_label.as_ref(),
            Dimension::Cpu,
            &prefix("cpu"),
            host.cpu_cores,
            keep,
            reserve_percent,
            |d| d.cpu(),
            fmt_cores,
        );
        check_scalar(
            &mut f,
            on_host,
            host_label.as_ref(),
            Dimension::Memory,
            &prefix("memory"),
            host.memory_mb as f64,
            keep,
            reserve_percent,
            |d| d.memory_mb(),
            fmt_mib,
        );
        check_scalar(
            &mut f,
            on_host,
            host_label.as_ref(),
            Dimension::Storage,
            &prefix("storage"),
            host.storage_gb as f64,
            keep,
            reserve_percent,
            |d| d.storage_gb(),
            |gb| format!("{} GB", trim(gb)),
        );
        assign_gpus(&mut f, on_host, host, host_label.as_ref(), keep, demands);
        for d in on_host.iter().filter(|d| d.changing) {
            let ports: BTreeSet<u16> = d
                .spec
                .host_ports()
                .filter(|(_, proto)| *proto == Protocol::Tcp)
                .map(|(p, _)| p)
                .collect();
            for p in ports {
                if host.ports_in_use.contains(&p) && !held_ports.contains(&p) {
                    let on = match &host_label {
                        Some(h) => format!("in use on `{h}`"),
                        None => "in use on the host".to_owned(),
                    };
                    f.problems.push(Problem {
                        dimension: Dimension::Port,
                        host: host_label.clone(),
                        message: format!("port {p}: claimed by `{}`, {on}", d.name),
                        services: vec![d.name.clone()],
                        need: Some(f64::from(p)),
                        usable: None,
                        capacity: None,
                    });
                }
            }
        }
    }
    check_ports_per_replica(&mut f, demands, inventory, capabilities);
    f.feasible = f.problems.is_empty();
    f
}

/// A fixed host port binds once per host: every replica of a process or a
/// container runs on one host, and a Swarm service that publishes in host mode
/// runs at most one task per node with it (the routing mesh binds it once for
/// all tasks). More replicas than places exhaust the port.
fn check_ports_per_replica(
    f: &mut Feasibility,
    demands: &[Demand],
    inventory: &Inventory,
    capabilities: &BTreeMap<BackendKind, Capabilities>,
) {
    // Behind a traffic switch the switch binds the port once for all replicas.
    for d in demands
        .iter()
        .filter(|d| d.changing && d.spec.replicas > 1 && !d.spec.behind_switch)
    {
        let on_nodes = capabilities
            .get(&d.spec.backend)
            .is_some_and(|c| c.places_on_nodes);
        let (places, unit) = match on_nodes {
            // The routing mesh binds the port once for all tasks.
            true if inventory.swarm_publish == PublishMode::Ingress => continue,
            true => (inventory.hosts.len() as u32, "node"),
            false => (1, "host"),
        };
        if d.spec.replicas <= places {
            continue;
        }
        let ports: BTreeSet<u16> = d.spec.host_ports().map(|(p, _)| p).collect();
        for p in ports {
            f.problems.push(Problem {
                dimension: Dimension::Port,
                host: None,
                message: format!(
                    "port {p}: {} replicas of `{}` need it, {places} {unit}{} can bind it",
                    d.spec.replicas,
                    d.name,
                    if places == 1 { "" } else { "s" }
                ),
                services: vec![d.name.clone()],
                need: Some(f64::from(d.spec.replicas)),
                usable: Some(f64::from(places)),
                capacity: Some(f64::from(places)),
            });
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_scalar(
    f: &mut Feasibility,
    on_host: &[&Demand],
    host: Option<&String>,
    dimension: Dimension,
    label: &str,
    capacity: f64,
    keep: f64,
    reserve: u8,
    need_of: impl Fn(&Demand) -> f64,
    fmt: fn(f64) -> String,
) {
    let need: f64 = on_host.iter().map(|d| need_of(d)).sum();
    let usable = capacity * keep;
    if need <= usable + 1e-9 {
        return;
    }
    let services = on_host
        .iter()
        .filter(|d| need_of(d) > 0.0)
        .map(|d| d.name.clone())
        .collect();
    f.problems.push(Problem {
        dimension,
        host: host.cloned(),
        message: format!(
            "{label}: need {}, {} usable ({} - {reserve}% reserve)",
            fmt(need),
            fmt(usable),
            fmt(capacity)
        ),
        services,
        need: Some(need),
        usable: Some(usable),
        capacity: Some(capacity),
    });
}

fn assign_gpus(
    f: &mut Feasibility,
    on_host: &[&Demand],
    host: &Host,
    host_label: Option<&String>,
    keep: f64,
    all: &[Demand],
) {
    // Usable memory per device.
    let ours: BTreeMap<u32, u64> = {
        let mut m = BTreeMap::new();
        for d in all {
            for g in d.pinned.iter().filter(|g| g.host == host.name) {
                let dev_total = host
                    .gpus
                    .iter()
                    .find(|x| x.index == g.index)
                    .map_or(0, |x| x.memory_mb);
                *m.entry(g.index).or_insert(0) +=
                    d.spec.resources.gpu_memory_mb.unwrap_or(dev_total);
            }
        }
        m
    };
    let usable: Vec<u64> = host
        .gpus
        .iter()
        .map(|g| {
            let base = (g.memory_mb as f64 * keep).floor() as u64;
            match g.free_memory_mb {
                Some(free) => base.min(free + ours.get(&g.index).copied().unwrap_or(0)),
                None => base,
            }
        })
        .collect();
    let mut avail = usable.clone();
    let mut exclusive = vec![false; host.gpus.len()];
    let gref = |i: usize| GpuRef {
        host: host.name.clone(),
        index: host.gpus[i].index,
        uuid: host.gpus[i].uuid.clone(),
        model: host.gpus[i].model.clone(),
    };

    // Services that keep their devices hold them first.
    let mut fresh: Vec<&Demand> = Vec::new();
    for d in on_host.iter().filter(|d| d.gpus() > 0) {
        let pinned: Vec<usize> = d
            .pinned
            .iter()
            .filter(|g| g.host == host.name)
            .filter_map(|g| host.gpus.iter().position(|x| x.index == g.index))
            .collect();
        if !pinned.is_empty() && pinned.len() as u32 == d.gpus() {
            for i in &pinned {
                match d.spec.resources.gpu_memory_mb {
                    Some(m) => avail[*i] = avail[*i].saturating_sub(m),
                    None => {
                        avail[*i] = 0;
                        exclusive[*i] = true;
                    }
                }
            }
            f.gpu_assignments
                .insert(d.name.clone(), pinned.into_iter().map(gref).collect());
        } else {
            fresh.push(d);
        }
    }
    fresh.sort_by(|a, b| {
        let na = a.spec.resources.gpu_memory_mb.unwrap_or(u64::MAX);
        let nb = b.spec.resources.gpu_memory_mb.unwrap_or(u64::MAX);
        nb.cmp(&na).then(a.name.cmp(b.name))
    });
    for d in fresh {
        let per = d.spec.resources.gpu_count as usize;
        let want = d.gpus() as usize;
        let mem = d.spec.resources.gpu_memory_mb;
        let mut got: Vec<usize> = Vec::new();
        for _replica in 0..d.spec.replicas {
            let mut chosen = Vec::new();
            for i in 0..host.gpus.len() {
                if chosen.len() == per {
                    break;
                }
                let ok = !exclusive[i]
                    && match mem {
                        Some(m) => avail[i] >= m,
                        // A device of unknown memory (a Swarm node's
                        // generic resource) is free while nobody holds it.
                        None => {
                            avail[i] == usable[i] && (usable[i] > 0 || host.gpus[i].memory_mb == 0)
                        }
                    };
                if ok {
                    chosen.push(i);
                }
            }
            if chosen.len() < per {
                break;
            }
            for i in &chosen {
                match mem {
                    Some(m) => avail[*i] -= m,
                    None => {
                        avail[*i] = 0;
                        exclusive[*i] = true;
                    }
                }
            }
            got.extend(chosen);
        }
        if got.len() == want {
            f.gpu_assignments
                .insert(d.name.clone(), got.into_iter().map(gref).collect());
            continue;
        }
        // Not enough: give back what this service took, and say why.
        for i in &got {
            match mem {
                Some(m) => avail[*i] += m,
                None => {
                    avail[*i] = usable[*i];
                    exclusive[*i] = false;
                }
            }
        }
        let what = match (want, mem) {
            (1, Some(m)) => format!("1 GPU with {}", fmt_mib(m as f64)),
            (n, Some(m)) => format!("{n} GPUs with {} each", fmt_mib(m as f64)),
            (1, None) => "1 GPU".to_owned(),
            (n, None) => format!("{n} GPUs"),
        };
        let what = if d.spec.replicas > 1 {
            format!("{what} ({per} per replica x {} replicas)", d.spec.replicas)
        } else {
            what
        };
        let free_count = (0..host.gpus.len()).filter(|i| !exclusive[*i]).count();
        let qualifying = (0..host.gpus.len())
            .filter(|i| {
                !exclusive[*i]
                    && match mem {
                        Some(m) => avail[*i] >= m,
                        None => avail[*i] == usable[*i] && usable[*i] > 0,
                    }
            })
            .count();
        let on = host_label.map_or(String::new(), |h| format!(" on `{h}`"));
        let (dimension, tail) = if host.gpus.is_empty() {
            (Dimension::Gpu, format!("the host{on} has none"))
        } else if free_count >= per && mem.is_some() && qualifying < per {
            let best = (0..host.gpus.len())
                .filter(|i| !exclusive[*i])
                .max_by_key(|i| (avail[*i], std::cmp::Reverse(*i)));
            let most = best.map_or(String::new(), |i| {
                format!(
                    " (most free: {} on GPU {})",
                    fmt_mib(avail[i] as f64),
                    host.gpus[i].index
                )
            });
            (
                Dimension::GpuMemory,
                if qualifying == 0 {
                    format!("none free{on}{most}")
                } else {
                    format!("only {qualifying} free{on}{most}")
                },
            )
        } else if qualifying == 0 {
            (Dimension::Gpu, format!("none free{on}"))
        } else {
            (Dimension::Gpu, format!("only {qualifying} free{on}"))
        };
        f.problems.push(Problem {
            dimension,
            host: host_label.cloned(),
            message: format!("{dimension}: `{}` needs {what}, {tail}", d.name),
            services: vec![d.name.clone()],
            need: Some(want as f64),
            usable: Some(qualifying as f64),
            capacity: Some(host.gpus.len() as f64),
        });
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// `4 cores`, `6.4 cores`.
pub(crate) fn fmt_cores(x: f64) -> String {
    let s = trim(x);
    if s == "1" {
        "1 core".into()
    } else {
        format!("{s} cores")
    }
}

/// Megabytes as `512 MiB` or `25.6 GiB`.
pub(crate) fn fmt_mib(mb: f64) -> String {
    if mb < 1024.0 {
        format!("{} MiB", trim(mb))
    } else {
        format!("{} GiB", trim(mb / 1024.0))
    }
}
