//! When freed memory goes back to the system.
//!
//! A command such as `plan` frees memory and uses it again moments later,
//! over and over. Returning each freed page at once, then faulting it in
//! again, cost a fifth of the time of a 2,000-service `plan`. So a command
//! keeps what it frees for [`COMMAND_PURGE_DELAY_MS`] before returning it:
//! reused within that time, it costs nothing; left free, it goes back, and a
//! large plan's peak resident set stays near what it holds (76–83 MB for
//! 10,000 services with the mimalloc 2 built here, against 86 MB when nothing
//! is returned; 90–97 MB against 134 MB with mimalloc 3).
//!
//! The long-lived processes (log writers, monitors, traffic switches,
//! `serve`) return freed memory at once and commit memory as they use it, to
//! keep a small resident set.
//!
//! mimalloc's own variables (`MIMALLOC_ARENA_EAGER_COMMIT`,
//! `MIMALLOC_PURGE_DELAY`), where set, still decide.

/// How long a command keeps freed memory before returning it.
pub const COMMAND_PURGE_DELAY_MS: i64 = 3;

// The option numbers of the mimalloc 2.3 that libmimalloc-sys 0.1.49
// (pinned in Cargo.lock) builds with its `v2` feature (mimalloc 3 numbers
// these two the same): `mi_option_arena_eager_commit` and
// `mi_option_purge_delay` (in milliseconds; for arenas multiplied by
// `mi_option_arena_purge_mult`).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The policy for a command: commit memory as it is used; return freed
/// memory after a few milliseconds.
pub fn for_command() {
    set(ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0);
    set(PURGE_DELAY, "MIMALLOC_PURGE_DELAY", COMMAND_PURGE_DELAY_MS);
}

/// The policy for a long-lived process: commit memory as it is used; return
/// freed memory at once.
pub fn for_long_lived() {
    set(ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0);
    set(PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0);
}

fn set(option: libmimalloc_sys::mi_option_t, variable: &str, value: i64) {
    if std::env::var_os(variable).is_some() {
        return;
    }
    // SAFETY: a plain setter of a global option (an atomic store inside
    // mimalloc), harmless where mimalloc is not the global allocator.
    unsafe { libmimalloc_sys::mi_option_set(option, value as std::ffi::c_long) }
}
