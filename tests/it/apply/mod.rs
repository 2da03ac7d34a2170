//! Integration tests of `apply`: real processes, real HTTP endpoints on 127.0.0.1.

mod canary;
mod cli;
mod common;
mod diskfull;
mod edges;
mod engine;
mod environment;
mod health;
mod hooks;
mod monitor;
mod process;
mod rollout;
mod secrets;
mod strategies;
mod switch_guard;
mod verdict;
