//! Operator-facing integration tests: metrics against a real Pushgateway and
//! promtool, man page and completions.

mod cli;
mod docs;
mod doctor;
mod metrics;
mod proto;
mod recipes;
mod serve;
mod serve_attacks;
mod serve_signal;
mod tidy;
mod tour;
