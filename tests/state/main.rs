//! Integration tests of the state file and the `state` commands, on real SQLite
//! files in temporary directories and real child processes.

mod common;
mod store;
