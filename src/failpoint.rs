//! Named crash points, for testing crash safety at deterministic places.
//!
//! `DEPLOY_CODE_FAILPOINT=<name>` (or `<name>@<n>`) makes the process kill
//! itself with SIGKILL the first (or the n-th) time it reaches the point
//! `<name>`: no destructor, no rollback, no flush, as a power cut or an OOM
//! kill would. A suffix picks another signal: `:int` (one SIGINT, as a first
//! Ctrl-C), `:int2` (two, as an impatient operator), `:term` (SIGTERM, as a
//! CI runner cancelling a job). Without the variable a point costs one
//! relaxed load.
//!
//! The points, in the order a run reaches them:
//! - `after-intent`: an intent row is durable, its side effect not begun;
//! - `after-start`: instances were started, the state does not record them;
//! - `in-commit`: inside a state write transaction, before its commit;
//! - `during-gate`: a health gate has begun;
//! - `after-stop`: instances were stopped, the intent not yet closed;
//! - `during-rollback`: a rollback step is about to run.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The variable that names the point.
pub const ENV: &str = "DEPLOY_CODE_FAILPOINT";

struct Armed {
    point: String,
    nth: u32,
    signals: Vec<i32>,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            let (v, signals) = match v.split_once(':') {
                None | Some((_, "kill")) => (v.split(':').next()?.to_owned(), vec![libc::SIGKILL]),
                Some((p, "int")) => (p.to_owned(), vec![libc::SIGINT]),
                Some((p, "int2")) => (p.to_owned(), vec![libc::SIGINT, libc::SIGINT]),
                Some((p, "term")) => (p.to_owned(), vec![libc::SIGTERM]),
                Some(_) => return None,
            };
            let (point, nth) = match v.split_once('@') {
                Some((name, n)) => (name.to_owned(), n.parse().ok()?),
                None => (v, 1),
            };
            Some(Armed {
                point,
                nth,
                signals,
            })
        })
        .as_ref()
}

/// Signals this process as armed when `name` is the armed point and this is
/// its n-th hit.
pub fn hit(name: &str) {
    static HITS: AtomicU32 = AtomicU32::new(0);
    let Some(armed) = armed() else {
        return;
    };
    if armed.point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth {
        for (i, sig) in armed.signals.iter().enumerate() {
            if i > 0 {
                // Two interrupts in a row, not one coalesced signal.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            // SAFETY: plain syscalls.
            unsafe {
                libc::kill(libc::getpid(), *sig);
            }
        }
    }
}
