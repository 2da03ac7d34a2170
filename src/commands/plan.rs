//! `plan`, `show` and `inventory`.
//!
//! [`prepare`] is the whole read side shared with `apply` and `destroy`: load the
//! configuration, read the state (read-only, no lock), re-digest secrets under
//! the state's key, take the inventory, observe what runs, and plan.

use std::path::PathBuf;

use super::{CommandOutcome, Format, Invocation, Scope};
use crate::config::{self, LoadedConfig};
use crate::error::Failure;
use crate::inventory::{self, Inventory};
use crate::model::SecretKey;
use crate::plan::{self, Plan};
use crate::render;
use crate::state::{self, Snapshot};

/// Everything the read side produced, for `plan`, `apply` and `destroy`.
pub struct Prepared {
    /// `None` for a destroy without a configuration file, and for `plan`'s
    /// own read of a configuration without secrets (see `prepare_with`).
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

/// What `plan` is asked.
#[derive(Clone, Debug, Default)]
pub struct PlanRequest {
    pub scope: Scope,
    /// Plan to remove everything the state records.
    pub destroy: bool,
    /// Save the plan here.
    pub out: Option<PathBuf>,
    /// Report changes as [`CommandOutcome::Changes`].
    pub detailed_exitcode: bool,
}

/// The plan of a configuration against a state, and what it was made with.
pub(crate) struct Planned {
    /// The configuration, its secrets digested under `secret_key` (`None`
    /// where `plan_with` was not asked to keep it).
    pub loaded: Option<LoadedConfig>,
    pub plan: Plan,
    pub config_hash: String,
    pub secret_key: SecretKey,
    pub inventory: Inventory,
}

/// The one way a plan is made, for `plan` and `apply` alike: re-digest the
/// configuration's secrets under the state's key (a new one for a new
/// state), take the inventory (the `--inventory` file, else the Swarm's
/// nodes or a probe of this host), observe what runs when refresh is on,
/// and plan. Writes nothing.
pub(crate) fn plan_against(
    inv: &Invocation,
    loaded: Option<&LoadedConfig>,
    snapshot: &Snapshot,
    state_path: &std::path::Path,
    scope: &Scope,
    destroy_all: bool,
) -> Result<Planned, Failure> {
    plan_with(
        inv,
        loaded,
        snapshot,
        state_path,
        scope,
        destroy_all,
        Keep::ALL,
    )
}

/// What a caller of [`plan_with`] keeps of the read side.
#[derive(Clone, Copy)]
struct Keep {
    /// Return the configuration (see [`Planned::loaded`]).
    config: bool,
    /// Compute the configuration hash. Without it the plan's binding holds an
    /// empty hash: for a plan that is only shown in a view that does not
    /// print its binding (human, Markdown), never saved nor applied.
    hash: bool,
}

impl Keep {
    const ALL: Keep = Keep {
        config: true,
        hash: true,
    };
}

/// [`plan_against`]; without `keep.config`, [`Planned::loaded`] is `None`
/// unless the configuration has secrets to re-digest, and a configuration
/// without secrets is planned as it is, not copied (the copy of thousands of
/// services would only be dropped by `plan`).
fn plan_with(
    inv: &Invocation,
    borrowed: Option<&LoadedConfig>,
    snapshot: &Snapshot,
    state_path: &std::path::Path,
    scope: &Scope,
    destroy_all: bool,
    keep: Keep,
) -> Result<Planned, Failure> {
    let sensitive =
        borrowed.is_some_and(|l| l.desired.services.values().any(|s| s.has_sensitive()));
    if sensitive {
        snapshot.require_key(state_path)?;
    }
    let secret_key = snapshot
        .secret_key
        .clone()
        .unwrap_or_else(SecretKey::random);
    // Re-digesting changes only sensitive values: without any, the copy
    // would be the configuration itself.
    let mut kept = if sensitive || keep.config {
        borrowed.cloned()
    } else {
        None
    };
    if let Some(l) = kept.as_mut() {
        l.desired.rekey(&secret_key);
    }
    let loaded = if kept.is_some() {
        kept.as_ref()
    } else {
        borrowed
    };
    let config_hash = match loaded {
        None => "none".to_owned(),
        Some(l) if keep.hash => l.config_hash(),
        Some(_) => String::new(),
    };
    let rt = inv.runtime()?;
    let backends = inv.backends(loaded, Some(snapshot));
    let inventory = match &scope.inventory {
        Some(path) => inventory::load_file(path)?,
        None => {
            let data_dir = loaded.map_or_else(
                || PathBuf::from("."),
                |l| l.desired.settings.data_dir.clone(),
            );
            loaded
                .and_then(|l| rt.block_on(backends.capacity(l.desired.settings.default_backend)))
                .unwrap_or_else(|| inventory::probe(&data_dir))
        }
    };
    let observations = scope.refresh.then(|| match loaded {
        Some(l) => {
            rt.block_on(crate::refresh::observe(
                &backends,
                &l.desired.settings.project,
                snapshot,
            ))
            .observations
        }
        // Without a configuration there is no project name to look for.
        None => crate::refresh::observe_recorded(&backends, snapshot),
    });
    let input = plan::Input {
        desired: loaded.map(|l| &l.desired),
        snapshot,
        observations: observations.as_ref(),
        inventory: &inventory,
        config_hash: config_hash.clone(),
        options: plan::Options {
            targets: scope.targets.clone(),
            excludes: scope.excludes.clone(),
            replaces: scope.replaces.clone(),
            destroy_all,
        },
        capabilities: backends.capabilities(),
    };
    let mut plan = plan::plan(&input)?;
    plan.binding.state_key_id = Some(crate::state::key::id(&secret_key));
    Ok(Planned {
        loaded: kept,
        plan,
        config_hash,
        secret_key,
        inventory,
    })
}

/// Loads the configuration and the state (read-only, no lock) and plans
/// ([`plan_against`]). Never writes anything.
pub fn prepare(inv: &Invocation, scope: &Scope, destroy_all: bool) -> Result<Prepared, Failure> {
    prepare_with(inv, scope, destroy_all, Keep::ALL)
}

/// [`prepare`]; without `keep.config`, [`Prepared::loaded`] is `None` unless
/// the configuration has secrets (see `plan_with`); without `keep.hash`,
/// [`Prepared::config_hash`] and the plan's binding hold an empty hash.
fn prepare_with(
    inv: &Invocation,
    scope: &Scope,
    destroy_all: bool,
    keep: Keep,
) -> Result<Prepared, Failure> {
    // A destroy plan needs no services, nor a configuration file. The
    // configuration is borrowed: `plan_against` makes the one copy it rekeys.
    let destroy_config;
    let loaded: Option<&LoadedConfig> = if destroy_all && !inv.config_path().exists() {
        None
    } else if destroy_all {
        destroy_config = config::load(&config::LoadOptions {
            allow_empty: true,
            ..inv.load_options()
        })?;
        Some(&destroy_config)
    } else {
        Some(inv.config()?)
    };
    let state_path = config::state_path(inv.globals.state.as_deref(), loaded, inv.config_path());
    let snapshot = state::load_snapshot(&state_path)?;
    let planned = plan_with(
        inv,
        loaded,
        &snapshot,
        &state_path,
        scope,
        destroy_all,
        keep,
    )?;
    Ok(Prepared {
        loaded: planned.loaded,
        snapshot,
        plan: planned.plan,
        state_path,
        config_hash: planned.config_hash,
        secret_key: planned.secret_key,
        inventory: planned.inventory,
    })
}

/// The plan in the format asked for.
pub(crate) fn render_plan(inv: &Invocation, plan: &Plan) -> String {
    match inv.format() {
        Format::Human => render::plan::human(plan, inv.out.color()),
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

/// The outcome of a plan: infeasible (always); with `--detailed-exitcode`
/// changes when it has some; else done.
pub fn outcome(plan: &Plan, detailed: bool) -> CommandOutcome {
    if !plan.feasibility.feasible {
        CommandOutcome::Infeasible
    } else if detailed && plan.has_changes() {
        CommandOutcome::Changes
    } else {
        CommandOutcome::Done
    }
}

fn has_secret(c: &plan::Change) -> bool {
    c.after
        .as_deref()
        .is_some_and(crate::model::ServiceSpec::has_sensitive)
}

pub fn run(inv: &Invocation, req: &PlanRequest) -> Result<CommandOutcome, Failure> {
    // `plan` prints and saves the plan; it needs no copy of the configuration,
    // and the configuration hash only where the plan's binding is saved or
    // printed (the human and Markdown views do not print it).
    let keep = Keep {
        config: false,
        hash: req.out.is_some() || !matches!(inv.format(), Format::Human | Format::Markdown),
    };
    // The refresh's local processes are read on the other core while a large
    // configuration loads. The other core is then awake when the load starts
    // its own second thread: 2,000 services plan in about 3 ms less (most of
    // it the wake-up), a small file gains nothing and skips it.
    let large = std::fs::metadata(inv.config_path())
        .is_ok_and(|m| m.len() >= crate::config::LARGE_BYTES as u64);
    if req.scope.refresh && large {
        crate::backends::process::read_marks_early();
    }
    // Refresh and the inventory await the backends one call at a time.
    inv.runtime_on_this_thread()?;
    let prepared = prepare_with(inv, &req.scope, req.destroy, keep)?;
    let plan = &prepared.plan;
    let mut text = render_plan(inv, plan);
    if let Some(out) = &req.out {
        // A plan for a state that has no key yet keeps the key it made its
        // digests with beside the state, where `apply` will find it.
        if prepared.snapshot.secret_key.is_none() && plan.changes.iter().any(has_secret) {
            crate::state::key::store(&prepared.state_path, &prepared.secret_key)?;
        }
        crate::planfile::write(out, plan)?;
        if inv.format() == Format::Human && !inv.out.quiet() {
            text.push_str(&format!(
                "\nSaved the plan to `{}`. Apply exactly this plan with `deploy-code apply {}`.\n",
                out.display(),
                out.display()
            ));
        }
    }
    inv.out.data(&text)?;
    Ok(outcome(plan, req.detailed_exitcode))
}

/// `show`: a saved plan in the format asked for.
pub fn show(inv: &Invocation, plan_file: &std::path::Path) -> Result<CommandOutcome, Failure> {
    let plan = crate::planfile::read(plan_file)?;
    inv.out.data(&render_plan(inv, &plan))?;
    Ok(CommandOutcome::Done)
}

/// One host of an inventory, or all of them.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum InventoryDoc<'a> {
    Host(&'a inventory::Host),
    Hosts { hosts: &'a [inventory::Host] },
}

pub fn inventory(inv: &Invocation) -> Result<CommandOutcome, Failure> {
    // The data directory decides which disk counts; without a usable
    // configuration it is the current directory's.
    let data_dir = if inv.config_path().exists() {
        inv.config()
            .map(|l| l.desired.settings.data_dir.clone())
            .unwrap_or_else(|_| PathBuf::from("."))
    } else {
        PathBuf::from(".")
    };
    let host = inventory::probe(&data_dir);
    let text = match inv.format() {
        Format::Json => {
            let doc = match host.hosts.as_slice() {
                [one] => InventoryDoc::Host(one),
                all => InventoryDoc::Hosts { hosts: all },
            };
            let mut s = serde_json::to_string_pretty(&doc).expect("an inventory always serializes");
            s.push('\n');
            s
        }
        _ => inventory::to_yaml(&host),
    };
    inv.out.data(&text)?;
    Ok(CommandOutcome::Done)
}
