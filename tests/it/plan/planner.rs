use deploy_code::error::Coded;
use deploy_code::model::{BackendKind, ServiceSpec, Text};
use deploy_code::plan::{Action, Change, InstanceState, Observations, ObservedInstance, Options};
use deploy_code::render::plan::drift_detail;
use deploy_code::state::{Handle, ServiceStatus};

use super::common::*;

/// A change's reason in words, as the views show it.
fn words(c: &Change) -> Option<String> {
    c.reason.as_ref().map(deploy_code::render::plan::reason)
}

#[test]
fn the_platform_is_created_in_dependency_phases() {
    let d = desired(platform());
    let p = ok(&d, &snapshot(vec![]), &big());
    assert_eq!(
        phases(&p),
        vec![
            vec!["postgresql", "redis"],
            vec!["auth_service", "circle_of_experts", "mcp_memory"],
            vec!["api_gateway"],
        ]
    );
    assert_eq!(p.summary.create, 6);
    assert!(p.changes.iter().all(|c| c.action == Action::Create));
    let order: Vec<&str> = p.changes.iter().map(|c| c.service.as_str()).collect();
    assert_eq!(order.first(), Some(&"postgresql"));
    assert_eq!(order.last(), Some(&"api_gateway"));
    assert_eq!(p.binding.lineage.as_deref(), Some("lineage-1"));
    assert_eq!(p.binding.serial, 7);
}

#[test]
fn every_action_with_its_reason() {
    let mut state = vec![
        record(spec("same", &[])),
        record(spec("image_changed", &[])),
        record(spec("gone", &[])),
        record(spec("turned_off", &[])),
        record(spec("tainted", &[])),
    ];
    let mut swarm = spec("swarm_web", &[]);
    swarm.backend = BackendKind::Swarm;
    swarm.image = Some("nginx:1.27".into());
    state.push(record(swarm.clone()));
    state[4].status = ServiceStatus::Tainted;

    let mut img = spec("image_changed", &[]);
    img.args = vec![Text::plain("2000")];
    let mut swarm_after = swarm.clone();
    swarm_after.replicas = 3;
    let mut d = desired(vec![
        spec("same", &[]),
        img,
        spec("tainted", &[]),
        swarm_after,
        spec("fresh", &["same"]),
    ]);
    d.disabled.push(name("turned_off"));

    let p = ok(&d, &snapshot(state), &big());
    assert_eq!(action(&p, "same"), "no-op");
    assert_eq!(action(&p, "image_changed"), "replace");
    assert_eq!(action(&p, "gone"), "destroy");
    assert_eq!(action(&p, "turned_off"), "destroy");
    assert_eq!(action(&p, "tainted"), "replace");
    assert_eq!(action(&p, "swarm_web"), "update");
    assert_eq!(action(&p, "fresh"), "create");
    let reason = |s: &str| words(p.change(s).unwrap()).unwrap_or_default();
    assert_eq!(
        reason("image_changed"),
        "`args` changed (forces replacement)"
    );
    assert_eq!(p.change("image_changed").unwrap().forced_by, vec!["args"]);
    assert_eq!(reason("gone"), "no longer in the configuration");
    assert_eq!(reason("turned_off"), "disabled in the configuration");
    assert_eq!(reason("tainted"), "tainted: its last apply failed");
    assert_eq!(reason("swarm_web"), "`replicas` changed (updated in place)");
    assert_eq!(reason("fresh"), "new service");
    assert!(p.change("same").unwrap().reason.is_none());
    let saved = deploy_code::plan::saved::encode(&p);
    let back = deploy_code::plan::saved::decode(std::str::from_utf8(&saved).unwrap(), "every.plan")
        .unwrap();
    assert_eq!(back, p, "a saved plan reads back the same");
    let s = &p.summary;
    assert_eq!(
        (s.create, s.update, s.replace, s.destroy, s.no_op),
        (1, 1, 2, 2, 1)
    );
    // Destroys first, then the rest; the no-op last and in no phase.
    assert_eq!(
        phases(&p),
        vec![
            vec!["gone", "turned_off"],
            vec!["fresh", "image_changed", "swarm_web", "tainted"],
        ]
    );
    assert_eq!(p.changes.last().unwrap().service.as_str(), "same");
    // before/after per action.
    assert!(p.change("fresh").unwrap().before.is_none());
    assert!(p.change("gone").unwrap().after.is_none());
    assert!(!p.change("gone").unwrap().prior_handles.is_empty());
}

#[test]
fn an_interrupted_service_is_replaced() {
    let mut r = record(spec("db", &[]));
    r.status = ServiceStatus::Pending;
    let p = ok(&desired(vec![spec("db", &[])]), &snapshot(vec![r]), &big());
    assert_eq!(action(&p, "db"), "replace");
    assert_eq!(
        words(p.change("db").unwrap()).as_deref(),
        Some("pending: an earlier apply was interrupted while changing it")
    );
}

#[test]
fn a_changed_secret_forces_a_replace_by_its_path() {
    let before = with_secret(spec("api", &[]), "API_KEY", "old-value");
    let after = with_secret(spec("api", &[]), "API_KEY", "new-value");
    let p = ok(
        &desired(vec![after]),
        &snapshot(vec![record(before)]),
        &big(),
    );
    let c = p.change("api").unwrap();
    assert_eq!(c.action, Action::Replace);
    assert_eq!(
        words(c).as_deref(),
        Some("`env.API_KEY` changed (forces replacement)")
    );
}

#[test]
fn an_unchanged_secret_is_a_no_op() {
    let s = with_secret(spec("api", &[]), "API_KEY", "same-value");
    let p = ok(
        &desired(vec![s.clone()]),
        &snapshot(vec![record(s)]),
        &big(),
    );
    assert!(!p.has_changes());
}

#[test]
fn a_backend_change_is_a_replace() {
    let before = spec("web", &[]);
    let mut after = spec("web", &[]);
    after.backend = BackendKind::Docker;
    after.image = Some("nginx:1.27".into());
    let p = ok(
        &desired(vec![after]),
        &snapshot(vec![record(before)]),
        &big(),
    );
    let c = p.change("web").unwrap();
    assert_eq!(c.action, Action::Replace);
    assert_eq!(
        words(c).as_deref(),
        Some("`backend` changed from `process` to `docker` (forces replacement)")
    );
}

#[test]
fn destroy_all_goes_in_reverse_dependency_order() {
    let state = platform().into_iter().map(record).collect();
    let p = run(
        None,
        &snapshot(state),
        &big(),
        Options {
            destroy_all: true,
            ..Options::default()
        },
        None,
    )
    .unwrap();
    // A service goes as soon as nothing left depends on it.
    assert_eq!(
        phases(&p),
        vec![
            vec!["api_gateway", "mcp_memory"],
            vec!["auth_service", "circle_of_experts"],
            vec!["postgresql", "redis"],
        ]
    );
    assert!(p.destroy_all);
    assert_eq!(p.summary.destroy, 6);
}

#[test]
fn destroys_use_the_dependencies_recorded_in_the_state() {
    // The config no longer has either; only the state knows `worker` needs `queue`.
    let state = vec![
        record(spec("queue", &[])),
        record(spec("worker", &["queue"])),
        record(spec("keep", &[])),
    ];
    let p = ok(&desired(vec![spec("keep", &[])]), &snapshot(state), &big());
    assert_eq!(phases(&p), vec![vec!["worker"], vec!["queue"]]);
}

#[test]
fn target_takes_the_dependencies_exclude_and_replace_apply() {
    let d = desired(platform());
    let opts = Options {
        targets: vec!["auth_service".into()],
        ..Options::default()
    };
    let p = run(Some(&d), &snapshot(vec![]), &big(), opts, None).unwrap();
    assert_eq!(
        phases(&p),
        vec![vec!["postgresql", "redis"], vec!["auth_service"]]
    );

    let opts = Options {
        excludes: vec!["api_gateway".into(), "mcp_memory".into()],
        ..Options::default()
    };
    let p = run(Some(&d), &snapshot(vec![]), &big(), opts, None).unwrap();
    assert_eq!(action(&p, "api_gateway"), "absent");
    assert_eq!(p.summary.create, 4);

    let state = platform().into_iter().map(record).collect();
    let opts = Options {
        replaces: vec!["redis".into()],
        ..Options::default()
    };
    let p = run(Some(&d), &snapshot(state), &big(), opts, None).unwrap();
    assert_eq!(action(&p, "redis"), "replace");
    assert_eq!(
        words(p.change("redis").unwrap()).as_deref(),
        Some("replacement requested with `--replace`")
    );
    assert_eq!(p.summary.no_op, 5);
}

#[test]
fn a_targeted_destroy_takes_the_dependents() {
    let state = platform().into_iter().map(record).collect();
    let opts = Options {
        destroy_all: true,
        targets: vec!["auth_service".into()],
        ..Options::default()
    };
    let p = run(None, &snapshot(state), &big(), opts, None).unwrap();
    assert_eq!(phases(&p), vec![vec!["api_gateway"], vec!["auth_service"]]);
}

#[test]
fn unknown_names_are_s001_with_a_suggestion() {
    let d = desired(platform());
    let opts = Options {
        targets: vec!["api_gatway".into()],
        ..Options::default()
    };
    let err = run(Some(&d), &snapshot(vec![]), &big(), opts, None).unwrap_err();
    assert_eq!(err.error_code(), deploy_code::error::Code::S001);
    assert_eq!(
        err.to_string(),
        "unknown service `api_gatway` in `--target`"
    );
    assert_eq!(
        err.help_text().as_deref(),
        Some("did you mean `api_gateway` instead of `api_gatway`?")
    );
    let opts = Options {
        excludes: vec!["nope".into()],
        replaces: vec!["redsi".into()],
        ..Options::default()
    };
    let err = run(Some(&d), &snapshot(vec![]), &big(), opts, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown services `nope` (in `--exclude`), `redsi` (in `--replace`)"
    );
}

#[test]
fn drift_is_reported_and_repaired() {
    let state = vec![record(spec("db", &[])), record(spec("web", &["db"]))];
    let d = desired(vec![spec("db", &[]), spec("web", &["db"])]);
    let handle = |s: &str| state.iter().find(|r| r.name.as_str() == s).unwrap().handles[0].clone();
    let mut obs = Observations::default();
    obs.services.insert(
        name("db"),
        vec![ObservedInstance {
            handle: handle("db"),
            state: InstanceState::Exited,
            spec_hash: None,
            detail: None,
        }],
    );
    obs.services.insert(
        name("web"),
        vec![ObservedInstance {
            handle: handle("web"),
            state: InstanceState::Running,
            spec_hash: Some("sha256:0123456789abcdef0123".into()),
            detail: None,
        }],
    );
    obs.orphans.push((
        name("web"),
        Handle::Process {
            replica: 1,
            pid: 77,
            start_time: 5,
            log_path: "/tmp/x.log".into(),
        },
    ));
    obs.foreign.push((
        name("db"),
        Handle::Process {
            replica: 0,
            pid: 88,
            start_time: 6,
            log_path: "/tmp/y.log".into(),
        },
        "other-lineage".into(),
    ));
    let p = run(
        Some(&d),
        &snapshot(state),
        &big(),
        Options::default(),
        Some(&obs),
    )
    .unwrap();
    assert_eq!(action(&p, "db"), "replace");
    assert_eq!(
        words(p.change("db").unwrap()).as_deref(),
        Some("repairs drift: replica 0 (pid 4000000) is exited")
    );
    assert_eq!(action(&p, "web"), "replace");
    let kinds: Vec<(&str, &str)> = p
        .drift
        .iter()
        .map(|d| (d.service.as_str(), d.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("db", "exited"),
            ("web", "changed"),
            ("web", "orphan"),
            ("db", "foreign")
        ]
    );
    // Reasons and drift are data in a saved plan, and read back the same.
    let back = deploy_code::plan::saved::decode(
        std::str::from_utf8(&deploy_code::plan::saved::encode(&p)).unwrap(),
        "drift.plan",
    )
    .unwrap();
    assert_eq!(back, p);
    let foreign = &drift_detail(&p.drift[3]);
    assert!(
        foreign.contains("another state started it (lineage other-lineage); left alone"),
        "{foreign}"
    );
    assert_eq!(phases(&p), vec![vec!["db"], vec!["web"]]);
}

#[test]
fn the_same_input_gives_the_same_plan_byte_for_byte() {
    let state: Vec<_> = platform().into_iter().take(4).map(record).collect();
    let mut specs = platform();
    specs[0].replicas = 2;
    let d = desired(specs);
    let a = ok(&d, &snapshot(state.clone()), &big());
    let b = ok(&d, &snapshot(state), &big());
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    assert_eq!(
        deploy_code::render::plan::json(&a),
        deploy_code::render::plan::json(&b)
    );
}

#[test]
fn moving_a_container_to_another_network_replaces_it() {
    let text = |network: &str| {
        format!(
            "infrastructure:\n  container_runtime: Docker\n  network:\n{network}services:\n  web:\n    image: nginx:1\n    ports: [{{container_port: 80}}]\n"
        )
    };
    let load = |t: &str| {
        deploy_code::config::load_text(
            t,
            std::path::Path::new("deploy-code.yaml"),
            &deploy_code::config::template::Inputs::default(),
        )
        .expect("valid")
        .desired
    };
    let project = load(&text("    port_range: {start: 30000, end: 30010}\n"));
    let web = &project.services[&name("web")];
    assert_eq!(web.network, None, "the project network is the default");
    let state = snapshot(vec![record(ServiceSpec::clone(web))]);
    assert_eq!(action(&ok(&project, &state, &big()), "web"), "no-op");

    let edge = load(&text("    name: edge\n"));
    let p = ok(&edge, &state, &big());
    assert_eq!(action(&p, "web"), "replace");
    assert_eq!(p.change("web").unwrap().forced_by, vec!["network"]);

    let host = load(&text("    mode: Host\n"));
    let p = ok(&host, &state, &big());
    assert_eq!(action(&p, "web"), "replace");
    let after = p.change("web").unwrap().after.clone().unwrap();
    assert_eq!(after.network.as_deref(), Some("host"));
    assert_eq!(
        after.ports[0].host_port,
        Some(80),
        "its own port on the host"
    );
}
