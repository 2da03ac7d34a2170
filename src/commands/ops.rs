//! `metrics` and `doctor`: the tool explaining the state of things.

use crate::cli::*;
use crate::error::{Failure, exit};

/// The project name and state path for commands that read the state: from the
/// config when it loads, else the defaults (`code`, beside the config path).
pub(crate) fn project_and_state(ctx: &Context) -> (String, std::path::PathBuf) {
    let loaded = crate::config::load(&crate::config::LoadOptions {
        path: ctx.global.config.clone(),
        vars: ctx.global.vars.clone(),
        var_files: ctx.global.var_files.clone(),
    })
    .ok();
    let project = loaded
        .as_ref()
        .map(|l| l.desired.settings.project.clone())
        .unwrap_or_else(|| "code".to_owned());
    let state = crate::config::state_path(
        ctx.global.state.as_deref(),
        loaded.as_ref(),
        &ctx.global.config,
    );
    (project, state)
}

pub fn metrics(ctx: &Context, _args: &MetricsArgs) -> Result<u8, Failure> {
    let (project, state_path) = project_and_state(ctx);
    let snapshot = crate::state::load_snapshot(&state_path)?;
    let history = if snapshot.lineage.is_some() {
        crate::state::history(&state_path, u64::MAX)?
    } else {
        Vec::new()
    };
    print!(
        "{}",
        crate::metrics::exposition(&project, &snapshot, &history)
    );
    Ok(exit::OK)
}

pub fn doctor(_ctx: &Context, _args: &DoctorArgs) -> Result<u8, Failure> {
    Err(super::not_yet("doctor"))
}
