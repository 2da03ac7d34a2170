//! deploy-code: declarative plan/apply deployments for services.
//!
//! Data flows one way: the config (a minijinja template) is rendered, parsed and
//! validated into a [`model::DesiredState`]; the [`state`] file yields a
//! snapshot; [`inventory`] gives the capacity; [`plan`] (pure) turns those into
//! an ordered change set; [`apply`] executes it through the [`backends`]; and
//! [`render`] shows every step. Only [`cli`] reads flags and picks exit codes;
//! everything a command prints goes through its [`output::Output`].

pub mod apply;
pub mod backends;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod fsperm;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod heap;
pub mod hooks;
pub mod instance;
pub mod inventory;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod net;
pub mod output;
pub mod plan;
pub mod planfile;
pub mod procfs;
pub mod redact;
pub mod refresh;
pub mod registry;
pub mod render;
pub mod serve;
pub mod state;
pub mod switch;

/// Runs the tool on these arguments and returns the process exit code.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    if args.get(1).is_some_and(|a| a == backends::logwriter::ARG) {
        let file = args.get(2).cloned().unwrap_or_default();
        return backends::logwriter::run(std::path::Path::new(&file));
    }
    if args.get(1).is_some_and(|a| a == monitor::ARG) {
        return monitor::run();
    }
    if args.get(1).is_some_and(|a| a == switch::ARG) {
        return switch::run(&args[2..]);
    }
    cli::run(args)
}
