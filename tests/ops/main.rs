//! Operator-facing integration tests: metrics against a real Pushgateway and
//! promtool, man page and completions.

mod cli;
mod doctor;
mod metrics;
mod support;
