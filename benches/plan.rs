//! Planning generated deployments of 1,000 and 10,000 services (about two
//! dependencies each) against a state of the same size in which 1% of the
//! services changed.
//!
//! `cargo bench --bench plan` runs every case; `cargo bench --bench plan -- pure/10000`
//! one of them (e.g. under `/usr/bin/time -v` for the peak memory).

use std::collections::BTreeMap;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use deploy_code::config::{self, template::Inputs};
use deploy_code::inventory::{Host, Inventory, Source};
use deploy_code::model::{DesiredState, ServiceSpec, Text};
use deploy_code::plan::{self, Input, Options};
use deploy_code::state::{Handle, ServiceRecord, ServiceStatus, Snapshot};

fn config_text(n: usize) -> String {
    let mut s = String::from("version: \"1.0.0\"\nproject: bench\nservices:\n");
    for i in 0..n {
        let deps: Vec<String> = [i.checked_sub(1), (i > 1).then_some(i / 2 - 1)]
            .into_iter()
            .flatten()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|d| format!("svc-{d}"))
            .collect();
        let deps = if deps.is_empty() {
            String::new()
        } else {
            format!("    dependencies: [{}]\n", deps.join(", "))
        };
        s.push_str(&format!(
            "  svc-{i}:\n    command: server\n    args: [\"--port\", \"{p}\"]\n{deps}    env:\n      MODE: production\n    resources: {{cpu_cores: 0.001, memory_mb: 1}}\n    ports:\n      - container_port: {p}\n",
            p = 20000 + i % 40000
        ));
    }
    s
}

fn load(text: &str) -> DesiredState {
    config::load_text(text, Path::new("deploy-code.yaml"), &Inputs::default())
        .expect("valid")
        .desired
}

/// The state as an apply of the same config would leave it, with every 100th
/// service recorded with other arguments (so 1% plan as replace).
fn state_of(desired: &DesiredState) -> Snapshot {
    let mut services = BTreeMap::new();
    for (i, (name, spec)) in desired.services.iter().enumerate() {
        let mut spec = ServiceSpec::clone(spec);
        if i % 100 == 0 {
            spec.args.push(Text::plain("--old"));
        }
        services.insert(
            name.clone(),
            ServiceRecord {
                name: name.clone(),
                spec_hash: spec.spec_hash(),
                backend: spec.backend,
                spec,
                handles: vec![Handle::Process {
                    replica: 0,
                    pid: 1000 + i as u32,
                    start_time: 1,
                    log_path: String::new(),
                }],
                status: ServiceStatus::Ready,
                gpus: Vec::new(),
                revision: 1,
                created_at: String::new(),
                updated_at: String::new(),
            },
        );
    }
    Snapshot {
        lineage: Some("bench".into()),
        serial: 1,
        services,
        ..Snapshot::default()
    }
}

fn inventory() -> Inventory {
    Inventory {
        source: Source::Probe,
        hosts: vec![Host {
            name: "bench".into(),
            cpu_cores: 64.0,
            memory_mb: 1 << 20,
            storage_gb: 10_000,
            gpus: Vec::new(),
            ports_in_use: vec![22],
        }],
        swarm_publish: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let inv = inventory();
    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    for n in [1_000usize, 10_000] {
        let text = config_text(n);
        let desired = load(&text);
        let snapshot = state_of(&desired);
        let run = |desired: &DesiredState| {
            let p = plan::plan(&Input {
                desired: Some(desired),
                snapshot: &snapshot,
                observations: None,
                inventory: &inv,
                config_hash: "sha256:bench".into(),
                options: Options::default(),
                capabilities: deploy_code::backends::Registry::with_all().capabilities(),
            })
            .expect("plans");
            assert_eq!(p.summary.replace, n / 100);
            p
        };
        g.bench_function(format!("pure/{n}"), |b| b.iter(|| run(&desired)));
        g.bench_function(format!("load_and_plan/{n}"), |b| {
            b.iter(|| run(&load(&text)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
