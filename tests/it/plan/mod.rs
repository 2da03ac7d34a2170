//! Tests of `deploy-code plan`: the pure planner, feasibility, the renderings,
//! saved plans, and the command line against real config, state and inventory files.

mod cli;
mod common;
mod feasibility;
mod planner;
mod render;
