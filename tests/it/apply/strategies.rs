//! The three scheduling strategies on real processes, told apart by the order
//! in which the executor starts services and sees them pass their gates.
//!
//! One configuration serves the three: `a` (phase 1) is slow to listen, `b`
//! (phase 1) is quick, and `c` (phase 2) depends on `b` only. `Sequential`
//! runs one action at a time; `Hybrid` starts `a` and `b` together but holds
//! `c` until the whole of phase 1 is healthy; `Parallel` starts `c` as soon as
//! `b` is healthy, while `a` still starts up.

use deploy_code::apply::{Cancel, Event};
use deploy_code::model::{Strategy, Text};
use deploy_code::state::Outcome;

use super::common::*;
use super::engine::{World, essence, host_matches_state, run};

/// How long `a` waits before it listens: long enough that `b` and `c` start
/// and pass their gates meanwhile on a loaded machine.
const SLOW_MS: u64 = 5_000;

/// `(start a|b|c, ready a|b|c)` in the order the run reported them.
async fn order(test: &str, strategy: Strategy) -> Vec<String> {
    let w = World::new(test);
    let mut a = http_spec("a", free_port(), SLOW_MS);
    a.health_check = Some(http_check(a.ports[0].host_port.unwrap(), 1, 60));
    let b = http_spec("b", free_port(), 0);
    let mut c = http_spec("c", free_port(), 0);
    c.dependencies = vec![name("b")];
    let mut desired = w.desired(vec![a, b, c]);
    desired.settings.deployment.strategy = strategy;
    desired.settings.deployment.max_parallel = 4;
    let r = run(&w, &desired, false, &Cancel::new()).await;
    assert_eq!(r.report.outcome, Outcome::Succeeded, "{:?}", r.report);
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::ActionStarted { service, .. } => Some(format!("start {service}")),
            Event::ActionSucceeded { service, .. } => Some(format!("ready {service}")),
            _ => None,
        })
        .collect()
}

fn at(order: &[String], what: &str) -> usize {
    order
        .iter()
        .position(|e| e == what)
        .unwrap_or_else(|| panic!("no `{what}` in {order:?}"))
}

#[tokio::test]
async fn sequential_runs_one_action_at_a_time() {
    let o = order("seq", Strategy::Sequential).await;
    assert_eq!(
        o,
        [
            "start a", "ready a", "start b", "ready b", "start c", "ready c"
        ],
        "one action at a time, in phase order"
    );
}

#[tokio::test]
async fn hybrid_runs_a_phase_at_once_and_waits_for_all_of_it() {
    let o = order("hybrid", Strategy::Hybrid).await;
    assert!(
        at(&o, "start b") < at(&o, "ready a"),
        "`b` starts beside `a`: {o:?}"
    );
    assert!(
        at(&o, "ready a") < at(&o, "start c"),
        "phase 2 waits for all of phase 1: {o:?}"
    );
    assert_eq!(&o[..2], ["start a", "start b"], "{o:?}");
    assert_eq!(&o[4..], ["start c", "ready c"], "{o:?}");
}

#[tokio::test]
async fn parallel_starts_an_action_once_its_dependencies_are_ready() {
    let o = order("parallel", Strategy::Parallel).await;
    assert_eq!(&o[..2], ["start a", "start b"], "{o:?}");
    assert!(
        at(&o, "ready b") < at(&o, "start c"),
        "`c` waits for what it depends on: {o:?}"
    );
    assert!(
        at(&o, "ready c") < at(&o, "ready a"),
        "`c` does not wait for the unrelated `a` of phase 1: {o:?}"
    );
}

#[tokio::test]
async fn parallel_rolls_back_the_whole_change_set() {
    let w = World::new("parallel-rb");
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let specs = || {
        let a = http_spec("a", pa, 0);
        let b = http_spec("b", pb, 0);
        let mut c = http_spec("c", pc, 0);
        c.dependencies = vec![name("b")];
        vec![a, b, c]
    };
    let parallel = |specs| {
        let mut d = w.desired(specs);
        d.settings.deployment.strategy = Strategy::Parallel;
        d.settings.deployment.max_parallel = 4;
        d
    };
    let v1 = parallel(specs());
    let r = run(&w, &v1, false, &Cancel::new()).await;
    assert_eq!(r.report.outcome, Outcome::Succeeded, "{:?}", r.report);
    let before = essence(&w.state);

    // v2 changes `a` (slow to come up) and `b`, and breaks `c`, which fails
    // while `a` still starts.
    let mut v2 = specs();
    v2[0] = http_spec("a", pa, SLOW_MS);
    v2[0].health_check = Some(http_check(pa, 1, 60));
    v2[0].env.insert("MODE".into(), Text::plain("v2"));
    v2[1].env.insert("MODE".into(), Text::plain("v2"));
    let mut broken = spec("c", &["sh", "-c", "echo boom; exit 9"]);
    broken.health_check = Some(http_check(free_port(), 1, 3));
    broken.dependencies = vec![name("b")];
    v2[2] = broken;
    let r = run(&w, &parallel(v2), false, &Cancel::new()).await;
    assert_eq!(r.report.outcome, Outcome::RolledBack, "{:?}", r.report);
    assert_eq!(r.report.failures.len(), 1);
    assert_eq!(r.report.failures[0].service, name("c"));
    for s in ["a", "b", "c"] {
        assert!(
            r.events.iter().any(|e| matches!(e,
                Event::RollbackStep { service, ok: true, .. } if service.as_str() == s)),
            "`{s}` was rolled back: {:?}",
            r.events
        );
    }
    assert_eq!(
        essence(&w.state),
        before,
        "the state is back to what it was"
    );
    host_matches_state(&w).await;
    for p in [pa, pb, pc] {
        let resp = deploy_code::net::get(format!("http://127.0.0.1:{p}/"))
            .await
            .unwrap();
        assert!(resp.status().is_success(), "the previous set serves on {p}");
    }
}
