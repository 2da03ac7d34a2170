//! What the state costs: recording one action of an apply (an intent row, the
//! service record, the intent closed: three durable commits) and loading a
//! state of 10,000 services, as `plan` does.
//!
//! `cargo bench --bench state`

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use deploy_code::model::{
    BackendKind, Resources, RestartPolicy, SecretKey, Sensitive, ServiceName, ServiceSpec, Text,
    Workload,
};
use deploy_code::state::IntentAction;
use deploy_code::state::{
    self, Handle, Holder, NewDeployment, ServiceRecord, ServiceStatus, Store,
};

fn record(i: usize, key: &SecretKey) -> ServiceRecord {
    let name = ServiceName::parse(&format!("svc-{i:05}")).unwrap();
    let mut env = BTreeMap::new();
    env.insert("PORT".to_owned(), Text::plain((20000 + i).to_string()));
    env.insert("LOG_LEVEL".to_owned(), Text::plain("info"));
    env.insert(
        "API_TOKEN".to_owned(),
        Text::Sensitive(Sensitive::new(key, format!("token-{i}"))),
    );
    let spec = ServiceSpec {
        name: name.clone(),
        backend: BackendKind::Process,
        workload: Workload::Service,
        replicas: 1,
        image: None,
        command: Some(Text::plain("/usr/local/bin/server")),
        args: vec![Text::plain("--port"), Text::plain((20000 + i).to_string())],
        working_dir: Some("/srv".into()),
        env,
        dependencies: Vec::new(),
        resources: Resources {
            cpu_cores: 0.25,
            memory_mb: 256,
            storage_gb: 1,
            gpu_count: 0,
            gpu_memory_mb: None,
        },
        health_check: None,
        ports: Vec::new(),
        volumes: Vec::new(),
        restart: RestartPolicy::OnFailure,
        restart_settings: None,
        labels: BTreeMap::new(),
        network: None,
        behind_switch: false,
        switch: None,
        swarm_update: None,
        inherit_env: Vec::new(),
    };
    ServiceRecord {
        name,
        spec_hash: spec.spec_hash(),
        spec,
        backend: BackendKind::Process,
        handles: vec![Handle::Process {
            replica: 0,
            pid: 1000 + i as u32,
            start_time: 12345,
            log_path: format!("/var/log/svc-{i}.log"),
        }],
        status: ServiceStatus::Ready,
        gpus: Vec::new(),
        revision: 1,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    }
}

fn new_deployment() -> NewDeployment {
    NewDeployment {
        command: "deploy-code apply".into(),
        config_snapshot: "services: {}".into(),
        config_replay: String::new(),
        config_hash: "sha256:0".into(),
        plan_summary: serde_json::json!({}),
    }
}

fn record_one_action(c: &mut Criterion) {
    // On disk (not a tmpfs /tmp), so that commits pay for a real fsync.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("state.db");
    let mut store = Store::open(&path, &Holder::current("bench"), None).unwrap();
    store.ensure_identity(None).unwrap();
    let key = store.snapshot().unwrap().secret_key.unwrap();
    let rev = store.begin_deployment(&new_deployment()).unwrap();
    let rec = record(1, &key);
    let detail = serde_json::json!({"replica": 0});
    let mut g = c.benchmark_group("state");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function(
        "record one action (intent + put_service + close: 3 commits)",
        |b| {
            b.iter(|| {
                let id = store
                    .record_intent(rev, &rec.name, IntentAction::Start, &detail)
                    .unwrap();
                store.put_service(&rec).unwrap();
                store.close_intent(id, "succeeded", &detail).unwrap();
            })
        },
    );
    g.bench_function("one commit (put_service)", |b| {
        b.iter(|| store.put_service(&rec).unwrap())
    });
    g.finish();
}

fn load_10k(c: &mut Criterion) {
    // On disk (not a tmpfs /tmp), so that commits pay for a real fsync.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("state.db");
    {
        let mut store = Store::open(&path, &Holder::current("bench"), None).unwrap();
        store.ensure_identity(None).unwrap();
        let key = store.snapshot().unwrap().secret_key.unwrap();
        let records: Vec<ServiceRecord> = (0..10_000).map(|i| record(i, &key)).collect();
        store.put_services(&records).unwrap();
    }
    assert_eq!(state::load_snapshot(&path).unwrap().services.len(), 10_000);
    let mut g = c.benchmark_group("state");
    g.sample_size(10);
    g.bench_function("load_snapshot of 10,000 services", |b| {
        b.iter(|| state::load_snapshot(&path).unwrap())
    });
    g.finish();
}

criterion_group!(benches, record_one_action, load_10k);
criterion_main!(benches);
