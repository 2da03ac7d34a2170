//! The executor on real processes, real HTTP endpoints and a real state file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use deploy_code::apply::{self, Cancel, Event, Options};
use deploy_code::backends::process::ProcessBackend;
use deploy_code::backends::{Backend, Registry};
use deploy_code::inventory::{Host, Inventory, Source};
use deploy_code::model::{
    BackendKind, DesiredState, SecretKey, Sensitive, ServiceSpec, Settings, Text,
};
use deploy_code::plan::{self, Plan};
use deploy_code::state::{Holder, Outcome, ServiceStatus, Snapshot, Store};

use super::common::*;

pub struct World {
    pub dir: tempfile::TempDir,
    pub project: String,
    pub state: PathBuf,
}

impl World {
    pub fn new(test: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        Self {
            project: project(test),
            dir,
            state,
        }
    }

    pub fn store(&self) -> Store {
        let mut s = Store::open(&self.state, &Holder::current("test"), None).unwrap();
        s.ensure_identity(None).unwrap();
        s
    }

    pub fn key(&self) -> SecretKey {
        self.store().snapshot().unwrap().secret_key.unwrap()
    }

    pub fn desired(&self, services: Vec<ServiceSpec>) -> DesiredState {
        let mut settings = Settings {
            project: self.project.clone(),
            environment: "test".into(),
            default_backend: BackendKind::Process,
            deployment: Default::default(),
            network: Default::default(),
            data_dir: self.dir.path().join("data"),
            log_dir: self.dir.path().join("logs"),
            reserve_percent: 20,
            monitoring: Default::default(),
            state_path: None,
            security: Default::default(),
            hooks: Default::default(),
        };
        settings.deployment.stop_grace_seconds = 2;
        settings.deployment.timeout_seconds = 60;
        settings.deployment.rollback_timeout_seconds = 30;
        DesiredState {
            settings,
            services: services
                .into_iter()
                .map(|s| (s.name.clone(), std::sync::Arc::new(s)))
                .collect(),
            disabled: Vec::new(),
        }
    }

    /// Every process on this host marked as this test's project.
    pub async fn processes(&self) -> Vec<(String, u32, Option<String>)> {
        ProcessBackend::new()
            .discover(&self.project)
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.liveness == deploy_code::backends::Liveness::Running)
            .map(|d| (d.service.to_string(), pid_of(&d.handle), d.spec_hash))
            .collect()
    }

    /// Kills every process of this test's project (cleanup by the marks it set).
    pub async fn kill_all(&self) {
        for d in ProcessBackend::new().discover(&self.project).await.unwrap() {
            unsafe {
                libc::kill(-(pid_of(&d.handle) as i32), libc::SIGKILL);
            }
        }
    }
}

impl Drop for World {
    /// Stops what the test started, also when it failed half-way.
    fn drop(&mut self) {
        crate::support::kill_project(&self.project);
    }
}

/// The plan `deploy-code apply` would make without a refresh: the real planner
/// on `desired` and the state's snapshot, with the registered backends'
/// capabilities and a host large enough for everything.
pub fn make_plan(desired: &DesiredState, snap: &Snapshot) -> Plan {
    let inventory = Inventory {
        source: Source::File {
            path: "inventory.yaml".into(),
        },
        hosts: vec![Host {
            name: "test".into(),
            cpu_cores: 64.0,
            memory_mb: 256 * 1024,
            storage_gb: 2000,
            gpus: Vec::new(),
            ports_in_use: Vec::new(),
        }],
        swarm_publish: Default::default(),
    };
    let plan = plan::plan(&plan::Input {
        desired: Some(desired),
        snapshot: snap,
        observations: None,
        inventory: &inventory,
        config_hash: "sha256:test".into(),
        options: plan::Options::default(),
        capabilities: Registry::with_process().capabilities(),
    })
    .unwrap();
    assert!(plan.feasibility.feasible, "{:?}", plan.feasibility);
    plan
}

pub struct Run {
    pub report: apply::Report,
    pub events: Vec<Event>,
}

pub async fn run(world: &World, desired: &DesiredState, no_rollback: bool, cancel: &Cancel) -> Run {
    run_watched(world, desired, no_rollback, cancel, &|_| {}).await
}

/// [`run`], telling `watch` every event as it happens.
pub async fn run_watched(
    world: &World,
    desired: &DesiredState,
    no_rollback: bool,
    cancel: &Cancel,
    watch: &(dyn Fn(&Event) + Send + Sync),
) -> Run {
    let mut store = world.store();
    let snap = store.snapshot().unwrap();
    let plan = make_plan(desired, &snap);
    let events = Mutex::new(Vec::new());
    let hook = |e: &Event| {
        watch(e);
        events.lock().unwrap().push(e.clone());
    };
    let opts = Options {
        no_rollback,
        command: "deploy-code apply".into(),
        config_snapshot: "redacted".into(),
        config_replay: String::new(),
        config_hash: "sha256:test".into(),
        base_dir: world.dir.path().to_path_buf(),
    };
    let report = apply::execute(
        &plan,
        desired,
        &mut store,
        &Registry::with_process(),
        &opts,
        &hook,
        cancel,
    )
    .await
    .unwrap();
    Run {
        report,
        events: events.into_inner().unwrap(),
    }
}

fn chain(port_a: u16, port_b: u16, port_c: u16) -> Vec<ServiceSpec> {
    let a = http_spec("a", port_a, 0);
    let mut b = http_spec("b", port_b, 100);
    b.dependencies = vec![name("a")];
    let mut c = http_spec("c", port_c, 0);
    c.dependencies = vec![name("b")];
    vec![a, b, c]
}

/// What must equal between two states: each service's spec hash and status.
pub fn essence(path: &Path) -> BTreeMap<String, (String, ServiceStatus, usize)> {
    deploy_code::state::load_snapshot(path)
        .unwrap()
        .services
        .into_iter()
        .map(|(k, r)| (k.to_string(), (r.spec_hash, r.status, r.handles.len())))
        .collect()
}

/// The processes match the state exactly: each recorded handle runs with the
/// recorded spec hash, and nothing else of the project runs.
pub async fn host_matches_state(world: &World) {
    let snap = deploy_code::state::load_snapshot(&world.state).unwrap();
    let mut expected: Vec<(String, u32, Option<String>)> = Vec::new();
    for r in snap.services.values() {
        for h in &r.handles {
            expected.push((r.name.to_string(), pid_of(h), Some(r.spec_hash.clone())));
        }
    }
    expected.sort();
    let mut running = world.processes().await;
    running.sort();
    assert_eq!(
        running, expected,
        "the processes on the host are exactly the state's"
    );
}

fn phase_order(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseStarted { phase, .. } => Some(format!("start {phase}")),
            Event::PhaseFinished { phase, ok, .. } => Some(format!("end {phase} {ok}")),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn three_phases_come_up_in_order_and_a_change_replaces_only_what_changed() {
    let w = World::new("three");
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let v1 = w.desired(chain(pa, pb, pc));
    let r = run(&w, &v1, false, &Cancel::new()).await;
    assert_eq!(r.report.outcome, Outcome::Succeeded, "{:?}", r.report);
    assert_eq!(
        phase_order(&r.events),
        [
            "start 1",
            "end 1 true",
            "start 2",
            "end 2 true",
            "start 3",
            "end 3 true"
        ]
    );
    let ready: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ActionSucceeded { service, .. } => Some(service.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(ready, ["a", "b", "c"]);
    for p in [pa, pb, pc] {
        let body = deploy_code::net::get(format!("http://127.0.0.1:{p}/"))
            .await
            .unwrap();
        assert!(body.status().is_success());
    }
    host_matches_state(&w).await;
    let before = deploy_code::state::load_snapshot(&w.state).unwrap();

    // Change c only.
    let mut specs = chain(pa, pb, pc);
    specs[2].env.insert("MODE".into(), Text::plain("v2"));
    let v2 = w.desired(specs);
    let r = run(&w, &v2, false, &Cancel::new()).await;
    assert_eq!(r.report.outcome, Outcome::Succeeded, "{:?}", r.report);
    assert_eq!(r.report.completed, vec![name("c")]);
    let after = deploy_code::state::load_snapshot(&w.state).unwrap();
    for s in ["a", "b"] {
        assert_eq!(
            after.services[s].handles, before.services[s].handles,
            "{s} untouched"
        );
    }
    assert_ne!(after.services["c"].handles, before.services["c"].handles);
    assert!(
        !alive(pid_of(&before.services["c"].handles[0])),
        "old c stopped"
    );
    host_matches_state(&w).await;
    w.kill_all().await;
}

async fn rollback_case(test: &str, broken: ServiceSpec) {
    let w = World::new(test);
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let v1 = w.desired(chain(pa, pb, pc));
    assert_eq!(
        run(&w, &v1, false, &Cancel::new()).await.report.outcome,
        Outcome::Succeeded
    );
    let state_before = essence(&w.state);

    // v2 changes a (phase 1) and breaks b (phase 2).
    let mut specs = chain(pa, pb, pc);
    specs[0].env.insert("MODE".into(), Text::plain("v2"));
    let mut b = broken;
    b.dependencies = vec![name("a")];
    specs[1] = b;
    specs[2].env.insert("MODE".into(), Text::plain("v2"));
    let v2 = w.desired(specs);
    let r = run(&w, &v2, false, &Cancel::new()).await;
    assert_eq!(r.report.outcome, Outcome::RolledBack, "{:?}", r.report);
    assert_eq!(r.report.exit_code(), 4);
    assert_eq!(r.report.failures.len(), 1);
    assert_eq!(r.report.failures[0].service, name("b"));
    assert!(
        !phase_order(&r.events).contains(&"start 3".to_owned()),
        "phase 3 never launched"
    );
    assert_eq!(
        essence(&w.state),
        state_before,
        "the state is back to what it was"
    );
    host_matches_state(&w).await;
    for p in [pa, pb, pc] {
        let resp = deploy_code::net::get(format!("http://127.0.0.1:{p}/"))
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "previous deployment serves on {p}"
        );
    }
    let dep = deploy_code::state::deployment(&w.state, r.report.revision)
        .unwrap()
        .unwrap();
    assert_eq!(dep.outcome, Outcome::RolledBack);
    assert_eq!(dep.evidence["failures"][0]["service"], "b");
    w.kill_all().await;
}

#[tokio::test]
async fn a_process_that_exits_in_phase_2_rolls_everything_back() {
    let port = free_port();
    let mut b = spec("b", &["sh", "-c", "echo boom: config missing; exit 9"]);
    b.health_check = Some(http_check(port, 1, 3));
    rollback_case("exits", b).await;
}

#[tokio::test]
async fn a_gate_that_never_passes_in_phase_2_rolls_everything_back() {
    let port = free_port();
    let mut b = spec("b", &["sleep", "60"]);
    b.health_check = Some(http_check(port, 1, 2));
    rollback_case("gate", b).await;
}

#[tokio::test]
async fn without_rollback_the_failed_service_is_left_tainted() {
    let w = World::new("taint");
    let pa = free_port();
    let v1 = w.desired(vec![http_spec("a", pa, 0)]);
    assert_eq!(
        run(&w, &v1, false, &Cancel::new()).await.report.outcome,
        Outcome::Succeeded
    );
    let mut bad = spec("a", &["sleep", "60"]);
    bad.health_check = Some(http_check(free_port(), 1, 1));
    let v2 = w.desired(vec![bad]);
    let r = run(&w, &v2, true, &Cancel::new()).await;
    assert_eq!(r.report.outcome, Outcome::Failed);
    let snap = deploy_code::state::load_snapshot(&w.state).unwrap();
    assert_eq!(snap.services["a"].status, ServiceStatus::Tainted);
    assert!(
        alive(pid_of(&snap.services["a"].handles[0])),
        "left as it is"
    );
    w.kill_all().await;
}

#[tokio::test]
async fn an_interrupt_rolls_back() {
    let w = World::new("sigint");
    let pa = free_port();
    let v1 = w.desired(vec![http_spec("a", pa, 0)]);
    assert_eq!(
        run(&w, &v1, false, &Cancel::new()).await.report.outcome,
        Outcome::Succeeded
    );
    let before = essence(&w.state);
    let mut slow = http_spec("a", pa, 0);
    slow.env.insert("MODE".into(), Text::plain("v2"));
    let mut never = spec("z", &["sleep", "60"]);
    never.health_check = Some(http_check(free_port(), 30, 5));
    let v2 = w.desired(vec![slow, never]);
    let cancel = Cancel::new();
    // Interrupted once `a` has been replaced, while `z` waits for its gate:
    // there is something to roll back.
    let interrupt = |e: &Event| {
        if matches!(e, Event::ActionSucceeded { service, .. } if service.as_str() == "a")
            && cancel.level() == 0
        {
            cancel.interrupt();
        }
    };
    let r = run_watched(&w, &v2, false, &cancel, &interrupt).await;
    assert_eq!(r.report.outcome, Outcome::RolledBack, "{:?}", r.report);
    assert!(
        r.events.iter().any(|e| matches!(e,
            Event::RollbackStep { service, ok: true, .. } if service.as_str() == "a")),
        "`a` was rolled back: {:?}",
        r.events
    );
    assert_eq!(essence(&w.state), before);
    host_matches_state(&w).await;
    w.kill_all().await;
}

#[tokio::test]
async fn a_secret_canary_never_reaches_state_events_or_our_logs() {
    let w = World::new("canary");
    let key = w.key();
    let canary = format!("canary-{}-d41d8", std::process::id());
    let pa = free_port();
    let mut a = http_spec("a", pa, 0);
    a.env.insert(
        "API_KEY".into(),
        Text::Sensitive(Sensitive::new(&key, canary.clone())),
    );
    let v1 = w.desired(vec![a.clone()]);
    let r = run(&w, &v1, false, &Cancel::new()).await;
    assert_eq!(r.report.outcome, Outcome::Succeeded);
    // A failing change of another field: the rollback restarts the old spec, whose
    // secret it knows by digest from the desired configuration.
    let mut a2 = a.clone();
    a2.args.push(Text::plain("--nonexistent-flag"));
    a2.command = Some(Text::plain("/bin/false"));
    let v2 = w.desired(vec![a2]);
    let r2 = run(&w, &v2, false, &Cancel::new()).await;
    assert_eq!(r2.report.outcome, Outcome::RolledBack, "{:?}", r2.report);
    let snap = deploy_code::state::load_snapshot(&w.state).unwrap();
    let pid = pid_of(&snap.services["a"].handles[0]);
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .into_owned();
    assert!(
        environ.contains(&canary),
        "the restarted service has its secret"
    );
    let mut haystack = format!("{:?}{:?}{:?}{:?}", r.events, r.report, r2.events, r2.report);
    haystack.push_str(&serde_json::to_string(&r2.events).unwrap());
    haystack.push_str(&crate::support::text_outside_logs(w.dir.path()));
    assert!(!haystack.contains(&canary), "canary leaked");
    w.kill_all().await;
}
