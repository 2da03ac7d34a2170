//! The integration tests: one binary, a module per area
//! (`cargo test --test it <area>::<module>::<test>`).

mod apply;
mod config;
mod docker;
mod ops;
mod plan;
mod state;
mod support;
