//! Integration tests of the state file and the `state` commands, on real SQLite
//! files in temporary directories and real child processes.

mod cli;
mod common;
mod hardening;
mod procs;
mod refusals;
mod store;

/// Not a test of its own: the entry point through which tests re-execute this
/// binary as a child process (a lock holder, a writer) when
/// `DEPLOY_CODE_TEST_ROLE` is set. Without it, it does nothing.
#[test]
fn child_process_entry() {
    if let Ok(role) = std::env::var(procs::ROLE_VAR) {
        procs::run_role(&role);
    }
}
