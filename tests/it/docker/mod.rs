//! The Docker and Swarm backends against a real engine. Without an engine
//! every test is counted as skipped (`support::skip`), unless
//! DEPLOY_CODE_REQUIRE_DOCKER=1 makes it fail.

mod cli;
mod common;
mod containers;
mod health_restart;
mod rollout;
mod swarm;
mod swarm_nodes;
mod verdict;
