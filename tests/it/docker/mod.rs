//! The Docker and Swarm backends against a real engine. Without an engine
//! every test prints SKIP and passes, unless DEPLOY_CODE_REQUIRE_DOCKER=1.

mod cli;
mod common;
mod containers;
mod health_restart;
mod rollout;
mod swarm;
mod swarm_nodes;
mod verdict;
