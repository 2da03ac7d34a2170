//! Builders for plan tests: specs, state records, snapshots and inventories.

use deploy_code::inventory::{Gpu, Host, Inventory, Source};
use deploy_code::model::{
    BackendKind, DeploymentSettings, DesiredState, MonitoringSettings, NetworkSettings, SecretKey,
    Sensitive, ServiceSpec, Settings, Text,
};
use deploy_code::plan::{self, Input, Observations, Options, Plan};
use deploy_code::state::{Handle, ServiceRecord, ServiceStatus, Snapshot};

use crate::support::Spec;
pub use crate::support::name;

pub fn key() -> SecretKey {
    SecretKey::new([9; 32])
}

pub fn spec(service: &str, deps: &[&str]) -> ServiceSpec {
    Spec::process(service, &["/usr/bin/sleep", "1000"])
        .deps(deps)
        .resources(0.5, 512, 1)
        .build()
}

pub fn with_port(mut s: ServiceSpec, port: u16) -> ServiceSpec {
    s.ports.push(crate::support::port(port));
    s
}

pub fn with_secret(mut s: ServiceSpec, var: &str, value: &str) -> ServiceSpec {
    s.env.insert(
        var.to_owned(),
        Text::Sensitive(Sensitive::new(&key(), value.to_owned())),
    );
    s
}

/// The seeds' platform: postgresql and redis, then the services on them, then the gateway.
pub fn platform() -> Vec<ServiceSpec> {
    vec![
        with_port(spec("postgresql", &[]), 5432),
        with_port(spec("redis", &[]), 6379),
        with_port(spec("auth_service", &["postgresql", "redis"]), 8001),
        with_port(spec("circle_of_experts", &["redis", "postgresql"]), 8002),
        spec("mcp_memory", &["redis"]),
        with_port(
            spec("api_gateway", &["auth_service", "circle_of_experts"]),
            8080,
        ),
    ]
}

pub fn settings() -> Settings {
    Settings {
        project: "platform".into(),
        environment: "test".into(),
        default_backend: BackendKind::Process,
        deployment: DeploymentSettings::default(),
        network: NetworkSettings::default(),
        data_dir: "/tmp/data".into(),
        log_dir: "/tmp/logs".into(),
        reserve_percent: 20,
        monitoring: MonitoringSettings::default(),
        state_path: None,
        security: Default::default(),
        hooks: Default::default(),
    }
}

pub fn desired(specs: Vec<ServiceSpec>) -> DesiredState {
    DesiredState {
        settings: settings(),
        services: specs
            .into_iter()
            .map(|s| (s.name.clone(), std::sync::Arc::new(s)))
            .collect(),
        disabled: Vec::new(),
    }
}

pub fn record(spec: ServiceSpec) -> ServiceRecord {
    ServiceRecord {
        name: spec.name.clone(),
        spec_hash: spec.spec_hash(),
        backend: spec.backend,
        handles: vec![Handle::Process {
            replica: 0,
            pid: 4_000_000,
            start_time: 1,
            log_path: format!("/tmp/logs/{}.log", spec.name),
        }],
        spec,
        status: ServiceStatus::Ready,
        gpus: Vec::new(),
        revision: 1,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    }
}

pub fn snapshot(records: Vec<ServiceRecord>) -> Snapshot {
    Snapshot {
        lineage: Some("lineage-1".into()),
        serial: 7,
        revision: 1,
        secret_key: Some(key()),
        services: records.into_iter().map(|r| (r.name.clone(), r)).collect(),
        ..Snapshot::default()
    }
}

pub fn host(cpu: f64, memory_mb: u64, storage_gb: u64) -> Host {
    Host {
        name: "box".into(),
        cpu_cores: cpu,
        memory_mb,
        storage_gb,
        gpus: Vec::new(),
        ports_in_use: Vec::new(),
    }
}

pub fn gpu(index: u32, model: &str, memory_mb: u64) -> Gpu {
    Gpu {
        index,
        uuid: Some(format!("GPU-{index:04}")),
        model: model.into(),
        memory_mb,
        free_memory_mb: None,
    }
}

pub fn inventory(hosts: Vec<Host>) -> Inventory {
    Inventory {
        source: Source::File {
            path: "inventory.yaml".into(),
        },
        hosts,
        swarm_publish: Default::default(),
    }
}

pub fn big() -> Inventory {
    inventory(vec![host(64.0, 256 * 1024, 2000)])
}

pub fn run(
    desired: Option<&DesiredState>,
    snapshot: &Snapshot,
    inv: &Inventory,
    options: Options,
    observations: Option<&Observations>,
) -> Result<Plan, deploy_code::plan::PlanError> {
    plan::plan(&Input {
        desired,
        snapshot,
        observations,
        inventory: inv,
        config_hash: "sha256:test".into(),
        options,
        capabilities: deploy_code::backends::Registry::with_all().capabilities(),
    })
}

pub fn ok(desired: &DesiredState, snapshot: &Snapshot, inv: &Inventory) -> Plan {
    run(Some(desired), snapshot, inv, Options::default(), None).unwrap()
}

pub fn phases(plan: &Plan) -> Vec<Vec<String>> {
    plan.phases
        .iter()
        .map(|p| p.iter().map(|n| n.to_string()).collect())
        .collect()
}

pub fn action(plan: &Plan, service: &str) -> &'static str {
    plan.change(service).map_or("absent", |c| c.action.as_str())
}
