//! Executes a plan phase by phase: bounded concurrency within a phase, health
//! gates between phases, an intent row before every side effect, and on failure a
//! rollback of every action of the run in reverse order.
