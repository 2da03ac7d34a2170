//! The three scheduling strategies on real processes, told apart by the order
//! in which the executor starts services and sees them pass their gates.
//!
//! One configuration serves the three: `a` (phase 1) is slow to listen, `b`
//! (phase 1) is quick, and `c` (phase 2) depends on `b` only. `Sequential`
//! runs one action at a time; `Hybrid` starts `a` and `b` together but holds
//! `c` until the whole of phase 1 is healthy; `Parallel` starts `c` as soon as
//! `b` is healthy, while `a` still starts up.

use deploy_code::apply::{Cancel, Event};
use deploy_code::model::Strategy;
use deploy_code::state::Outcome;

use super::common::*;
use super::engine::{World, run};

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
