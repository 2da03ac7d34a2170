//! Helpers shared by the state tests: sample records, and child processes that
//! re-execute this test binary to act as a lock holder or a writer.

use std::collections::BTreeMap;
use std::path::Path;

use deploy_code::model::{
    BackendKind, Resources, RestartPolicy, SecretKey, Sensitive, ServiceName, ServiceSpec, Text,
    Workload,
};
use deploy_code::state::{Handle, Holder, ServiceRecord, ServiceStatus};

pub fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

pub fn spec(service: &str, key: &SecretKey, secret: Option<&str>) -> ServiceSpec {
    let mut env = BTreeMap::new();
    env.insert("PORT".to_owned(), Text::plain("8080"));
    if let Some(s) = secret {
        env.insert(
            "API_TOKEN".to_owned(),
            Text::Sensitive(Sensitive::new(key, s.to_owned())),
        );
    }
    ServiceSpec {
        name: name(service),
        backend: BackendKind::Process,
        workload: Workload::Service,
        replicas: 1,
        image: None,
        command: Some(Text::plain("/usr/bin/sleep")),
        args: vec![Text::plain("1000")],
        working_dir: None,
        env,
        dependencies: Vec::new(),
        resources: Resources {
            cpu_cores: 0.5,
            memory_mb: 128,
            storage_gb: 0,
            gpu_count: 0,
            gpu_memory_mb: None,
        },
        health_check: None,
        ports: Vec::new(),
        volumes: Vec::new(),
        restart: RestartPolicy::No,
        labels: BTreeMap::new(),
    }
}

pub fn record(
    service: &str,
    key: &SecretKey,
    secret: Option<&str>,
    revision: u64,
) -> ServiceRecord {
    let spec = spec(service, key, secret);
    ServiceRecord {
        name: name(service),
        spec_hash: spec.spec_hash(),
        spec,
        backend: BackendKind::Process,
        handles: vec![Handle::Process {
            replica: 0,
            pid: 4242,
            start_time: 123456,
            log_path: format!("/tmp/{service}.log"),
        }],
        status: ServiceStatus::Ready,
        gpus: Vec::new(),
        revision,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    }
}

pub fn holder(command: &str) -> Holder {
    Holder::current(command)
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
