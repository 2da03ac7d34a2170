use deploy_code::model::ServiceSpec;
use deploy_code::plan::Options;
use deploy_code::state::GpuRef;

use super::common::*;

fn sized(service: &str, cpu: f64, memory_mb: u64, storage_gb: u64) -> ServiceSpec {
    let mut s = spec(service, &[]);
    s.resources.cpu_cores = cpu;
    s.resources.memory_mb = memory_mb;
    s.resources.storage_gb = storage_gb;
    s
}

fn gpus(mut s: ServiceSpec, count: u32, memory_mb: Option<u64>) -> ServiceSpec {
    s.resources.gpu_count = count;
    s.resources.gpu_memory_mb = memory_mb;
    s
}

fn messages(p: &deploy_code::plan::Plan) -> Vec<String> {
    p.feasibility
        .problems
        .iter()
        .map(|x| x.message.clone())
        .collect()
}

#[test]
fn every_exhausted_dimension_is_reported_at_once() {
    let mut h = host(8.0, 32 * 1024, 100);
    h.gpus = vec![gpu(0, "NVIDIA A10", 24 * 1024)];
    h.ports_in_use = vec![22, 8080];
    let d = desired(vec![
        gpus(
            sized("circle_of_experts", 4.0, 24 * 1024, 50),
            1,
            Some(20 * 1024),
        ),
        gpus(sized("vision", 4.0, 16 * 1024, 40), 1, None),
        with_port(sized("api_gateway", 1.0, 2 * 1024, 20), 8080),
    ]);
    let p = ok(&d, &snapshot(vec![]), &inventory(vec![h]));
    assert!(!p.feasibility.feasible);
    assert_eq!(
        messages(&p),
        vec![
            "cpu: need 9 cores, 6.4 cores usable (8 cores - 20% reserve)",
            "memory: need 42 GiB, 25.6 GiB usable (32 GiB - 20% reserve)",
            "storage: need 110 GB, 80 GB usable (100 GB - 20% reserve)",
            "gpu: `circle_of_experts` needs 1 GPU with 20 GiB, none free",
            "port 8080: claimed by `api_gateway`, in use on the host",
        ]
    );
    let dims: Vec<&str> = p
        .feasibility
        .problems
        .iter()
        .map(|x| x.dimension.as_str())
        .collect();
    assert_eq!(dims, vec!["cpu", "memory", "storage", "gpu", "port"]);
    let mem = &p.feasibility.problems[1];
    assert_eq!(mem.need, Some(43008.0));
    assert_eq!(mem.capacity, Some(32768.0));
    assert_eq!(mem.services.len(), 3);
    // The GPU that was free went to the service that takes a whole device.
    assert_eq!(p.feasibility.gpu_assignments[&name("vision")][0].index, 0);
}

#[test]
fn per_device_memory_is_its_own_dimension() {
    let mut h = host(16.0, 64 * 1024, 500);
    h.gpus = vec![gpu(0, "NVIDIA T4", 16 * 1024)];
    let d = desired(vec![gpus(sized("llm", 1.0, 1024, 1), 1, Some(20 * 1024))]);
    let p = ok(&d, &snapshot(vec![]), &inventory(vec![h]));
    assert_eq!(
        messages(&p),
        vec!["gpu_memory: `llm` needs 1 GPU with 20 GiB, none free (most free: 12.8 GiB on GPU 0)"]
    );
}

#[test]
fn no_gpu_is_fine_unless_a_service_needs_one() {
    let d = desired(platform());
    let p = ok(
        &d,
        &snapshot(vec![]),
        &inventory(vec![host(8.0, 16384, 100)]),
    );
    assert!(p.feasibility.feasible, "{:?}", p.feasibility.problems);
    let d = desired(vec![gpus(sized("trainer", 1.0, 1024, 1), 1, None)]);
    let p = ok(
        &d,
        &snapshot(vec![]),
        &inventory(vec![host(8.0, 16384, 100)]),
    );
    assert_eq!(
        messages(&p),
        vec!["gpu: `trainer` needs 1 GPU, the host has none"]
    );
}

#[test]
fn gpus_are_assigned_per_device_largest_need_first() {
    let mut h = host(32.0, 128 * 1024, 1000);
    h.gpus = vec![
        gpu(0, "NVIDIA RTX 4090", 24 * 1024),
        gpu(1, "NVIDIA RTX 4090", 24 * 1024),
    ];
    let d = desired(vec![
        gpus(sized("b_small", 1.0, 1024, 1), 1, Some(8 * 1024)),
        gpus(sized("a_large", 1.0, 1024, 1), 1, Some(16 * 1024)),
        gpus(sized("c_small", 1.0, 1024, 1), 1, Some(8 * 1024)),
    ]);
    let p = ok(&d, &snapshot(vec![]), &inventory(vec![h]));
    assert!(p.feasibility.feasible, "{:?}", messages(&p));
    let idx = |s: &str| -> Vec<u32> {
        p.feasibility.gpu_assignments[&name(s)]
            .iter()
            .map(|g| g.index)
            .collect()
    };
    assert_eq!(idx("a_large"), vec![0]);
    assert_eq!(idx("b_small"), vec![1]);
    assert_eq!(idx("c_small"), vec![1]);
    let change = p.change("a_large").unwrap();
    assert_eq!(change.gpus[0].uuid.as_deref(), Some("GPU-0000"));
    assert_eq!(change.gpus[0].model, "NVIDIA RTX 4090");
}

#[test]
fn replicas_count_and_kept_services_hold_their_gpus() {
    let mut h = host(32.0, 128 * 1024, 1000);
    h.gpus = vec![
        gpu(0, "A100", 40960),
        gpu(1, "A100", 40960),
        gpu(2, "A100", 40960),
    ];
    let kept = gpus(sized("kept", 1.0, 1024, 1), 1, None);
    let mut kept_record = record(kept.clone());
    kept_record.gpus = vec![GpuRef {
        host: "box".into(),
        index: 1,
        uuid: None,
        model: "A100".into(),
    }];
    let mut experts = gpus(sized("experts", 1.0, 1024, 1), 1, None);
    experts.replicas = 2;
    let d = desired(vec![kept, experts.clone()]);
    let p = ok(
        &d,
        &snapshot(vec![kept_record.clone()]),
        &inventory(vec![h.clone()]),
    );
    let idx: Vec<u32> = p
        .change("experts")
        .unwrap()
        .gpus
        .iter()
        .map(|g| g.index)
        .collect();
    assert_eq!(idx, vec![0, 2]);
    assert_eq!(p.feasibility.gpu_assignments[&name("kept")][0].index, 1);

    // Three replicas do not fit beside the kept one.
    experts.replicas = 3;
    let d = desired(vec![spec("other", &[]), experts]);
    let opts = Options {
        excludes: vec!["kept".into()],
        ..Options::default()
    };
    let p = run(
        Some(&d),
        &snapshot(vec![kept_record]),
        &inventory(vec![h]),
        opts,
        None,
    )
    .unwrap();
    assert_eq!(
        messages(&p),
        vec!["gpu: `experts` needs 3 GPUs (1 per replica x 3 replicas), only 2 free"]
    );
}

#[test]
fn services_outside_the_scope_still_count() {
    let d = desired(vec![
        sized("big", 1.0, 20 * 1024, 1),
        sized("new", 1.0, 8 * 1024, 1),
    ]);
    let state = vec![record(sized("big", 1.0, 20 * 1024, 1))];
    let opts = Options {
        targets: vec!["new".into()],
        ..Options::default()
    };
    let inv = inventory(vec![host(8.0, 32 * 1024, 100)]);
    let p = run(Some(&d), &snapshot(state), &inv, opts, None).unwrap();
    assert_eq!(action(&p, "big"), "absent");
    assert_eq!(
        messages(&p),
        vec!["memory: need 28 GiB, 25.6 GiB usable (32 GiB - 20% reserve)"]
    );
}

#[test]
fn destroys_free_capacity_and_our_own_ports_are_not_conflicts() {
    let mut h = host(8.0, 32 * 1024, 100);
    h.ports_in_use = vec![8080, 9090];
    // `old` holds 9090 and goes away; `web` holds 8080 and is replaced.
    let state = vec![
        record(with_port(sized("old", 1.0, 20 * 1024, 1), 9090)),
        record(with_port(sized("web", 1.0, 1024, 1), 8080)),
    ];
    // (One replica: two would need the fixed port twice on one host.)
    let web = with_port(sized("web", 2.0, 1024, 1), 8080);
    let d = desired(vec![web, with_port(sized("new", 1.0, 20 * 1024, 1), 9090)]);
    let p = ok(&d, &snapshot(state), &inventory(vec![h]));
    assert!(p.feasibility.feasible, "{:?}", messages(&p));
}

#[test]
fn several_hosts_are_packed_first_fit_decreasing() {
    let mut a = host(4.0, 8 * 1024, 100);
    a.name = "a".into();
    let mut b = host(4.0, 8 * 1024, 100);
    b.name = "b".into();
    let d = desired(vec![
        sized("s1", 1.0, 5 * 1024, 1),
        sized("s2", 1.0, 5 * 1024, 1),
    ]);
    let p = ok(
        &d,
        &snapshot(vec![]),
        &inventory(vec![a.clone(), b.clone()]),
    );
    assert!(p.feasibility.feasible, "{:?}", messages(&p));

    let d = desired(vec![
        sized("s1", 1.0, 5 * 1024, 1),
        sized("s2", 1.0, 5 * 1024, 1),
        sized("s3", 1.0, 5 * 1024, 1),
    ]);
    let p = ok(&d, &snapshot(vec![]), &inventory(vec![a, b]));
    assert_eq!(
        messages(&p),
        vec!["memory on `a`: need 10 GiB, 6.4 GiB usable (8 GiB - 20% reserve)"]
    );
    assert_eq!(p.feasibility.problems[0].host.as_deref(), Some("a"));
}

#[test]
fn replicas_of_a_fixed_host_port_need_a_place_each_to_bind_it() {
    use deploy_code::inventory::PublishMode;
    use deploy_code::model::BackendKind;

    // Processes: every replica binds on this one host.
    let mut web = with_port(spec("web", &[]), 18601);
    web.replicas = 2;
    let p = ok(&desired(vec![web.clone()]), &snapshot(vec![]), &big());
    assert!(!p.feasibility.feasible);
    assert_eq!(
        messages(&p),
        vec!["port 18601: 2 replicas of `web` need it, 1 host can bind it"]
    );
    let problem = &p.feasibility.problems[0];
    assert_eq!(problem.dimension, "port");
    assert_eq!((problem.need, problem.usable), (Some(2.0), Some(1.0)));

    // One replica, or a port the engine picks per replica, fits.
    let mut one = web.clone();
    one.replicas = 1;
    assert!(
        ok(&desired(vec![one]), &snapshot(vec![]), &big())
            .feasibility
            .feasible
    );
    let mut picked = web.clone();
    picked.ports[0].host_port = None;
    assert!(
        ok(&desired(vec![picked]), &snapshot(vec![]), &big())
            .feasibility
            .feasible
    );

    // Swarm: the routing mesh binds the port once for every task; in host
    // mode each node binds it once.
    let mut swarm = web.clone();
    swarm.backend = BackendKind::Swarm;
    let nodes = |n: usize, mode: PublishMode| {
        let mut inv = inventory((0..n).map(|_| host(64.0, 256 * 1024, 2000)).collect());
        inv.swarm_publish = mode;
        inv
    };
    let d = desired(vec![swarm]);
    assert!(
        ok(&d, &snapshot(vec![]), &nodes(1, PublishMode::Ingress))
            .feasibility
            .feasible
    );
    let p = ok(&d, &snapshot(vec![]), &nodes(1, PublishMode::Host));
    assert_eq!(
        messages(&p),
        vec!["port 18601: 2 replicas of `web` need it, 1 node can bind it"]
    );
    assert!(
        ok(&d, &snapshot(vec![]), &nodes(2, PublishMode::Host))
            .feasibility
            .feasible
    );
}
