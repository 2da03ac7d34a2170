//! `plan`, `show` and `inventory`.
//!
//! [`prepare`] is the whole read side shared with `apply` and `destroy`: load the
//! configuration, read the state (read-only, no lock), re-digest secrets under
//! the state's key, take the inventory, observe what runs, and plan.

use std::path::PathBuf;

use super::print;
use crate::cli::*;
use crate::config::{self, LoadedConfig};
use crate::error::{Failure, exit};
use crate::inventory::{self, Inventory};
use crate::model::SecretKey;
use crate::plan::{self, Plan};
use crate::render;
use crate::state::{self, Snapshot};

/// Everything the read side produced, for `plan`, `apply` and `destroy`.
pub struct Prepared {
    /// `None` only for a destroy without a configuration file.
    pub loaded: Option<LoadedConfig>,
    pub snapshot: Snapshot,
    pub plan: Plan,
    pub state_path: PathBuf,
    /// `sha256:` of the rendered configuration, after re-digesting secrets.
    pub config_hash: String,
    /// The key secrets were digested with: the state's, or a new one for a new
    /// state (then also in `plan.binding.new_state_key`).
    pub secret_key: SecretKey,
    pub inventory: Inventory,
}

/// Loads the configuration and the state, takes the inventory (the
/// `--inventory` file, else a probe of this host), observes running processes
/// when refresh is on, and plans. Never writes anything.
pub fn prepare(ctx: &Context, scope: &PlanScope, destroy_all: bool) -> Result<Prepared, Failure> {
    let g = &ctx.global;
    // A destroy plan needs no services.
    let opts = config::LoadOptions {
        allow_empty: destroy_all || g.allow_empty,
        ..ctx.load_options()
    };
    let mut loaded = if destroy_all && !g.config.exists() {
        None
    } else {
        Some(config::load(&opts)?)
    };
    let state_path = config::state_path(g.state.as_deref(), loaded.as_ref(), &g.config);
    let snapshot = state::load_snapshot(&state_path)?;
    if loaded
        .as_ref()
        .is_some_and(|l| l.desired.services.values().any(|s| s.has_sensitive()))
    {
        snapshot.require_key(&state_path)?;
    }
    let secret_key = snapshot
        .secret_key
        .clone()
        .unwrap_or_else(SecretKey::random);
    if let Some(l) = loaded.as_mut() {
        l.desired.rekey(&secret_key);
    }
    let config_hash = loaded
        .as_ref()
        .map_or_else(|| "none".to_owned(), LoadedConfig::config_hash);

    let inventory = match &scope.inventory {
        Some(path) => inventory::load_file(path)?,
        None => {
            let data_dir = loaded.as_ref().map_or_else(
                || PathBuf::from("."),
                |l| l.desired.settings.data_dir.clone(),
            );
            loaded
                .as_ref()
                .and_then(|l| {
                    crate::commands::apply::registry_for(Some(l), None)
                        .capacity_blocking(l.desired.settings.default_backend)
                })
                .unwrap_or_else(|| inventory::probe(&data_dir))
        }
    };
    let observations = scope.refresh().then(|| match loaded.as_ref() {
        Some(l) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                rt.block_on(crate::refresh::observe(
                    &crate::commands::apply::registry_for(Some(l), Some(&snapshot)),
                    &l.desired.settings.project,
                    &snapshot,
                ))
                .observations
            }
            Err(_) => crate::refresh::observe_recorded(&snapshot),
        },
        // Without a configuration there is no project name to look for.
        None => crate::refresh::observe_recorded(&snapshot),
    });

    let input = plan::Input {
        desired: loaded.as_ref().map(|l| &l.desired),
        snapshot: &snapshot,
        observations: observations.as_ref(),
        inventory: &inventory,
        config_hash: config_hash.clone(),
        options: plan::Options {
            targets: scope.targets.clone(),
            excludes: scope.excludes.clone(),
            replaces: scope.replaces.clone(),
            destroy_all,
        },
        capabilities: crate::commands::apply::registry_for(loaded.as_ref(), Some(&snapshot))
            .capabilities(),
    };
    let mut plan = plan::plan(&input)?;
    plan.binding.state_key_id = Some(crate::state::key::id(&secret_key));
    Ok(Prepared {
        loaded,
        snapshot,
        plan,
        state_path,
        config_hash,
        secret_key,
        inventory,
    })
}

/// The plan in the format asked for.
pub fn render_plan(ctx: &Context, plan: &Plan) -> String {
    match ctx.global.format {
        Format::Human => render::plan::human(plan, ctx.color),
        Format::Json => {
            let mut s = render::plan::json(plan);
            s.push('\n');
            s
        }
        Format::Markdown => render::plan::markdown(plan),
        Format::Yaml => serde_yaml::to_string(&render::plan::doc(plan))
            .expect("a plan document always serializes"),
    }
}

/// The exit code of a plan: 3 when infeasible (always); with
/// `--detailed-exitcode` 2 when it has changes; else 0.
pub fn exit_code(plan: &Plan, detailed: bool) -> u8 {
    if !plan.feasibility.feasible {
        exit::INFEASIBLE
    } else if detailed && plan.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    }
}

fn has_secret(c: &plan::Change) -> bool {
    c.after
        .as_ref()
        .is_some_and(crate::model::ServiceSpec::has_sensitive)
}

pub fn run(ctx: &Context, args: &PlanArgs) -> Result<u8, Failure> {
    let prepared = prepare(ctx, &args.scope, args.destroy)?;
    let plan = &prepared.plan;
    let mut text = render_plan(ctx, plan);
    if let Some(out) = &args.out {
        // A plan for a state that has no key yet keeps the key it made its
        // digests with beside the state, where `apply` will find it.
        if prepared.snapshot.secret_key.is_none() && plan.changes.iter().any(has_secret) {
            crate::state::key::store(&prepared.state_path, &prepared.secret_key)?;
        }
        crate::planfile::write(out, plan)?;
        if ctx.global.format == Format::Human && !ctx.global.quiet {
            text.push_str(&format!(
                "\nSaved the plan to `{}`. Apply exactly this plan with `deploy-code apply {}`.\n",
                out.display(),
                out.display()
            ));
        }
    }
    print(&text)?;
    Ok(exit_code(plan, args.detailed_exitcode))
}

pub fn show(ctx: &Context, args: &ShowArgs) -> Result<u8, Failure> {
    let plan = crate::planfile::read(&args.plan_file)?;
    print(&render_plan(ctx, &plan))?;
    Ok(exit::OK)
}

pub fn inventory(ctx: &Context, _args: &InventoryArgs) -> Result<u8, Failure> {
    let g = &ctx.global;
    // The data directory decides which disk counts; without a usable
    // configuration it is the current directory's.
    let data_dir = if g.config.exists() {
        config::load(&ctx.load_options())
            .map(|l| l.desired.settings.data_dir)
            .unwrap_or_else(|_| PathBuf::from("."))
    } else {
        PathBuf::from(".")
    };
    let inv = inventory::probe(&data_dir);
    let text = match g.format {
        Format::Json => {
            let v = if inv.hosts.len() == 1 {
                serde_json::to_value(&inv.hosts[0])
            } else {
                serde_json::to_value(serde_json::json!({ "hosts": inv.hosts }))
            }
            .expect("an inventory always serializes");
            let mut s = serde_json::to_string_pretty(&v).expect("JSON always serializes");
            s.push('\n');
            s
        }
        _ => inventory::to_yaml(&inv),
    };
    print(&text)?;
    Ok(exit::OK)
}
