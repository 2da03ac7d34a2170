//! `apply` commands: apply (deploy), destroy (stop), restart, rollback, cleanup.

mod hooks;
mod rollback;

use hooks::{hook_payload, show_hooks};
pub use rollback::rollback;

use std::path::PathBuf;
use std::time::Duration;

use super::progress::{Mode, Progress};
use super::{CommandOutcome, Format, Invocation, Scope};
use crate::apply::{self, Cancel, Event, reconcile};
use crate::backends::{Registry, StartContext};
use crate::config::{self, LoadOptions, LoadedConfig};
use crate::error::{Code, Failure, Plain, RunError};
use crate::hooks::When;
use crate::plan::{self, Plan};
use crate::state::{Holder, Outcome, Store};

/// What `apply` is asked.
#[derive(Clone, Debug, Default)]
pub struct ApplyRequest {
    /// A plan saved by `plan --out`: executed exactly, or refused as stale.
    pub plan_file: Option<PathBuf>,
    pub scope: Scope,
    /// No confirmation asked.
    pub auto_approve: bool,
    /// Apply even when the plan is infeasible.
    pub force: bool,
    /// Leave failed services as they are instead of rolling back.
    pub no_rollback: bool,
}

/// What `destroy` is asked.
#[derive(Clone, Debug, Default)]
pub struct DestroyRequest {
    /// Only these services (and what depends on them); none for all.
    pub targets: Vec<String>,
    pub auto_approve: bool,
}

/// What `rollback` is asked.
#[derive(Clone, Debug, Default)]
pub struct RollbackRequest {
    /// The revision to return to; none for the last successful one before
    /// the current.
    pub to: Option<u64>,
    pub auto_approve: bool,
}

/// What `restart` is asked.
#[derive(Clone, Debug, Default)]
pub struct RestartRequest {
    /// Services to replace; none for all.
    pub services: Vec<String>,
    pub auto_approve: bool,
}

/// What `cleanup` is asked.
#[derive(Clone, Debug, Default)]
pub struct CleanupRequest {
    /// Only list what would be removed.
    pub dry_run: bool,
    pub auto_approve: bool,
}

/// Which command runs the planned path, for its question and its hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Apply,
    Destroy,
    Restart,
    Rollback,
}

impl Run {
    /// What the confirmation asks to do.
    fn what(self) -> &'static str {
        match self {
            Run::Apply => "apply these changes",
            Run::Destroy => "destroy these services",
            Run::Restart => "restart these services",
            Run::Rollback => "return to this revision",
        }
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("deploy-code {}", args.join(" "))
}

fn open_store(inv: &Invocation, path: &std::path::Path) -> Result<Store, Failure> {
    let store = Store::open(
        path,
        &Holder::current(command_line()),
        inv.globals.lock_timeout,
    )?;
    // The monitors' restarts so far become events before anything is replaced.
    if let Ok(snap) = store.snapshot() {
        super::status::import_restarts(inv, &snap);
    }
    Ok(store)
}

fn progress_mode(inv: &Invocation) -> Mode {
    if inv.format() == Format::Json {
        Mode::Json
    } else if inv.out.quiet() {
        Mode::Quiet
    } else if inv.out.interactive() {
        Mode::Bars
    } else {
        Mode::Lines
    }
}

/// The first line of a run's JSON events: what the plan does.
#[derive(serde::Serialize)]
struct PlanEvent<'a> {
    event: &'static str,
    at: String,
    summary: &'a plan::Summary,
    phases: &'a [Vec<crate::model::ServiceName>],
    feasible: bool,
}

/// The plan event: a JSON line with `--format json`, else the human plan
/// (not with `-q`).
fn show_plan(inv: &Invocation, p: &Plan) {
    match inv.format() {
        Format::Json => {
            let event = PlanEvent {
                event: "plan",
                at: apply::now_rfc3339(),
                summary: &p.summary,
                phases: &p.phases,
                feasible: p.feasibility.feasible,
            };
            let line = serde_json::to_string(&event).expect("an event always serializes");
            inv.out.data_lossy(&format!("{line}\n"));
        }
        _ if inv.out.quiet() => {}
        _ => inv
            .out
            .data_lossy(&crate::render::plan::human(p, inv.out.color())),
    }
}

fn confirm(inv: &Invocation, auto_approve: bool, what: &str) -> Result<(), Failure> {
    if auto_approve {
        return Ok(());
    }
    if !inv.out.interactive() {
        return Err(Plain::new(
            Code::E016,
            format!("refusing to {what} without confirmation: not on a terminal"),
        )
        .help("review the plan, then run again with `--auto-approve`")
        .into());
    }
    let answer = inv
        .out
        .prompt(&format!("Do you want to {what}? Only `yes` is accepted: "));
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(
            Plain::new(Code::E016, "cancelled at the prompt: nothing was changed")
                .help(format!("answer `yes` to {what}, or pass `--auto-approve`"))
                .into(),
        )
    }
}

fn infeasible(p: &Plan) -> Failure {
    Failure::coded(RunError::Infeasible {
        problems: p
            .feasibility
            .problems
            .iter()
            .map(|x| x.message.clone())
            .collect(),
        remedies: p.feasibility.remedies(),
    })
}

/// Runs the executor with progress output and SIGINT handling; turns the report
/// into an exit code or a failure.
fn execute(
    inv: &Invocation,
    p: &Plan,
    loaded: &LoadedConfig,
    store: &mut Store,
    backends: &Registry,
    no_rollback: bool,
    is_rollback: bool,
) -> Result<CommandOutcome, Failure> {
    let rt = inv.runtime()?;
    let hooks = &loaded.desired.settings.hooks;
    // SIGINT and SIGTERM interrupt alike, from the first hook to the last:
    // the first stops a `pre_apply` hook (nothing changes) or the run's
    // launching (which rolls back), the next aborts the rollback or stops
    // the hooks that tell about the run.
    let cancel = Cancel::new();
    let _signals = Interrupts::listen(rt, &cancel);
    if !hooks.pre_apply.is_empty() {
        let results = rt.block_on(crate::hooks::run(
            &hooks.pre_apply,
            When::PreApply,
            &hook_payload(When::PreApply, p, loaded, None),
            loaded.base_dir(),
            &cancel,
        ));
        show_hooks(inv, &results);
        if cancel.level() > 0 {
            return Err(Failure::coded(RunError::Interrupted {
                during: "a `pre_apply` hook".to_owned(),
            }));
        }
        if let Some(bad) = results.iter().find(|r| !r.ok) {
            return Err(Plain::new(
                Code::E016,
                format!(
                    "the pre_apply hook `{}` failed: {}; nothing was changed",
                    bad.hook, bad.detail
                ),
            )
            .help("the hook decides whether a run may start: fix what it checks (or the hook) and apply again")
            .into());
        }
    }
    let progress = Progress::new(progress_mode(inv), &inv.out);
    let hook = |e: &Event| progress.handle(e);
    let opts = apply::Options {
        no_rollback,
        command: command_line(),
        config_snapshot: loaded.redacted_render.clone(),
        config_replay: loaded.replay_render.clone(),
        config_hash: loaded.config_hash(),
        base_dir: loaded.base_dir().to_path_buf(),
    };
    let report = rt.block_on(async {
        let ticker = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress.tick();
            }
        };
        tokio::select! {
            r = apply::execute(p, &loaded.desired, store, backends, &opts, &hook, &cancel) => r,
            () = ticker => unreachable!("the ticker never ends"),
        }
    })?;
    // A signal from here on stops the hooks that tell about the run.
    let after_run = cancel.level();
    publish_metrics(rt, loaded, store);
    let whens: &[When] = match report.outcome {
        Outcome::Succeeded if is_rollback => &[When::PostApply, When::OnRollback],
        Outcome::Succeeded => &[When::PostApply],
        Outcome::RolledBack => &[When::OnFailure, When::OnRollback],
        _ => &[When::OnFailure],
    };
    for &when in whens {
        let list = match when {
            When::PostApply => &hooks.post_apply,
            When::OnFailure => &hooks.on_failure,
            When::OnRollback => &hooks.on_rollback,
            When::PreApply => &hooks.pre_apply,
        };
        if list.is_empty() {
            continue;
        }
        // Reported, never changing the outcome; an interrupt while they
        // run stops them, and the run's outcome stands.
        if cancel.level() == after_run {
            let results = rt.block_on(crate::hooks::run(
                list,
                when,
                &hook_payload(when, p, loaded, Some(&report)),
                loaded.base_dir(),
                &cancel,
            ));
            show_hooks(inv, &results);
        }
        if cancel.level() > after_run {
            inv.out
                .status("interrupted: the hooks that were left were not run");
            break;
        }
    }
    if inv.format() != Format::Json && !report.failures.is_empty() {
        // The evidence of a failure: shown with `-q` too.
        let mut lines = Vec::new();
        for f in &report.failures {
            lines.push(format!("\n`{}` failed: {}", f.service, f.reason));
            if !f.probes.is_empty() {
                lines.push("  last probes:".to_owned());
                for pr in &f.probes {
                    lines.push(format!(
                        "    +{} ms {} {}",
                        pr.at_ms,
                        if pr.healthy { "ok  " } else { "FAIL" },
                        pr.detail
                    ));
                }
            }
            if !f.log_tail.is_empty() {
                lines.push("  last log lines:".to_owned());
                for l in &f.log_tail {
                    lines.push(format!("    | {l}"));
                }
            }
        }
        for l in &report.left {
            lines.push(format!("left: {l}"));
        }
        inv.out.error(&lines.join("\n"));
    }
    if let Some(f) = report.failures.first()
        && let apply::FailureKind::Prepare { code } = f.kind
    {
        // Refused before anything changed: the failure's own code, exit 1.
        return Err(Plain::new(
            code,
            format!(
                "apply of revision {} was refused before any change: `{}`: {}",
                report.revision, f.service, f.reason
            ),
        )
        .help("nothing was started or stopped; fix the service's configuration (or the host) and apply again")
        .into());
    }
    match report.outcome {
        Outcome::Succeeded => {
            // The final result, with `-q` too.
            if inv.format() != Format::Json {
                inv.out.data_lossy(&format!(
                    "{} complete: revision {} in {} ms.\n",
                    if p.destroy_all { "Destroy" } else { "Apply" },
                    report.revision,
                    report.elapsed_ms
                ));
            }
            Ok(CommandOutcome::Done)
        }
        Outcome::RolledBack => Err(Failure::coded(RunError::RolledBack {
            revision: report.revision,
            code: report
                .failures
                .first()
                .map_or(Code::E006, |f| f.kind.code()),
            reason: first_reason(&report),
        })),
        _ => Err(Failure::coded(RunError::NotRolledBack {
            revision: report.revision,
            what: if report.left.is_empty() {
                first_reason(&report)
            } else {
                report.left.join("; ")
            },
        })),
    }
}

/// The SIGINT and SIGTERM listener of a run, raising its [`Cancel`]'s
/// level at each signal while it lasts. Once listened for, a signal no
/// longer ends the process by itself (the runtime keeps its handler), so
/// the listener lasts as long as anything of the run can wait: the hooks
/// before it, the run, the hooks after it.
struct Interrupts(tokio::task::JoinHandle<()>);

impl Interrupts {
    fn listen(rt: &tokio::runtime::Runtime, cancel: &Cancel) -> Self {
        let c = cancel.clone();
        // Registered before this returns, so that no signal in between
        // ends the process unheard.
        let handlers = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            )
        });
        Self(rt.spawn(async move {
            let (Ok(mut int), Ok(mut term)) = handlers else {
                return;
            };
            loop {
                tokio::select! {
                    Some(()) = int.recv() => c.interrupt(),
                    Some(()) = term.recv() => c.interrupt(),
                    else => return,
                }
            }
        }))
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes the state's metrics where `monitoring` says, after every run; a
/// target that is down is a warning, never a failure.
fn publish_metrics(rt: &tokio::runtime::Runtime, loaded: &LoadedConfig, store: &Store) {
    let monitoring = &loaded.desired.settings.monitoring;
    if monitoring.pushgateway.is_none() && monitoring.textfile_dir.is_none() {
        return;
    }
    let snapshot = match store.snapshot() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("metrics were not published: {e}");
            return;
        }
    };
    let history = crate::state::history(store.path(), u64::MAX).unwrap_or_default();
    let project = &loaded.desired.settings.project;
    let text = crate::metrics::exposition_in(
        project,
        &snapshot,
        &history,
        Some(&loaded.desired.settings.log_dir),
        &crate::state::restarts::counts(store.path()).unwrap_or_default(),
        &rt.block_on(super::status::switch_samples(store.path(), &snapshot)),
    );
    for warning in rt.block_on(crate::metrics::publish(monitoring, project, &text)) {
        tracing::warn!("{warning}");
    }
}

fn first_reason(r: &apply::Report) -> String {
    r.failures
        .first()
        .map(|f| format!("`{}`: {}", f.service, f.reason))
        .unwrap_or_default()
}

fn grace(loaded: &LoadedConfig) -> Duration {
    Duration::from_secs(loaded.desired.settings.deployment.stop_grace_seconds)
}

/// What reconciliation starts an adopted instance's monitor with: this
/// configuration's project, directories and network, this state's lineage.
fn adoption_ctx(loaded: &LoadedConfig, snap: &crate::state::Snapshot) -> StartContext {
    let settings = &loaded.desired.settings;
    StartContext {
        project: settings.project.clone(),
        lineage: snap.lineage.clone().unwrap_or_default(),
        revision: snap.revision,
        log_dir: settings.log_dir.clone(),
        data_dir: settings.data_dir.clone(),
        base_dir: loaded.base_dir().to_path_buf(),
        network: settings.network.clone(),
        gpus: Vec::new(),
        only_replicas: None,
        stop_grace: std::time::Duration::from_secs(settings.deployment.stop_grace_seconds),
    }
}

/// Recovery, before anything is judged: the instances that an interrupted run
/// of this state left behind (unrecorded, marked with this state's lineage)
/// are adopted or stopped, and its open intents closed, so that leftovers
/// never block the run (a port they hold, say) nor are duplicated by it.
/// Instances of another state sharing the project name are left alone.
fn recover(
    inv: &Invocation,
    store: &mut Store,
    backends: &Registry,
    loaded: &LoadedConfig,
) -> Result<(), Failure> {
    let rt = inv.runtime()?;
    let snap = store.snapshot()?;
    let project = &loaded.desired.settings.project;
    let ours = rt
        .block_on(crate::refresh::observe(backends, project, &snap))
        .ours;
    if ours.is_empty() && snap.open_intents.is_empty() {
        return Ok(());
    }
    let ctx = adoption_ctx(loaded, &snap);
    let done = rt.block_on(reconcile::reconcile(
        store,
        backends,
        ours,
        grace(loaded),
        &ctx,
    ))?;
    if inv.format() != Format::Json {
        for d in &done {
            inv.out.status(&format!(
                "recover: `{}` {} {}",
                d.service, d.action, d.detail
            ));
        }
    }
    Ok(())
}

/// The planned path of `apply`, `destroy`, `restart` and `rollback`: take
/// the lock, recover, plan against the locked state, confirm, execute.
fn plan_and_apply(
    inv: &Invocation,
    loaded: &LoadedConfig,
    req: &ApplyRequest,
    run: Run,
) -> Result<CommandOutcome, Failure> {
    let state_path = config::state_path(
        inv.globals.state.as_deref(),
        Some(loaded),
        inv.config_path(),
    );
    let mut store = open_store(inv, &state_path)?;
    store.ensure_identity(None)?;
    let backends = inv.backends(Some(loaded), Some(&store.snapshot()?));
    recover(inv, &mut store, &backends, loaded)?;
    let snap = store.snapshot()?;
    let planned = super::plan::plan_against(
        inv,
        Some(loaded),
        &snap,
        store.path(),
        &req.scope,
        run == Run::Destroy,
    )?;
    let p = planned.plan;
    let loaded = planned.loaded.expect("planned with a configuration");
    show_plan(inv, &p);
    if !p.feasibility.feasible && !req.force {
        return Err(infeasible(&p));
    }
    if !p.has_changes() {
        return Ok(CommandOutcome::Done);
    }
    confirm(inv, req.auto_approve, run.what())?;
    let no_rollback = req.no_rollback || !loaded.desired.settings.deployment.rollback_on_failure;
    execute(
        inv,
        &p,
        &loaded,
        &mut store,
        &backends,
        no_rollback,
        run == Run::Rollback,
    )
}

pub fn run(inv: &Invocation, req: &ApplyRequest) -> Result<CommandOutcome, Failure> {
    let done = run_once(inv, req)?;
    keep_window(inv)?;
    Ok(done)
}

/// After an `apply` whose `BlueGreen` rollouts kept old sets
/// (`blue_green.keep_seconds`): waits their window out without the state
/// lock, so that `rollback` can flip back meanwhile, saying so every 5 s,
/// then stops each kept set that was not flipped back to. An interrupt ends
/// the window at once. Were this process killed, the next `apply`,
/// `destroy` or `cleanup` would stop the kept sets (no record names them).
fn keep_window(inv: &Invocation) -> Result<(), Failure> {
    let loaded = inv.config()?;
    let state_path = config::state_path(
        inv.globals.state.as_deref(),
        Some(loaded),
        inv.config_path(),
    );
    if !state_path.exists() {
        return Ok(());
    }
    let kept_now = || {
        crate::state::load_snapshot(&state_path)
            .map(|snap| apply::rollout::kept_sets(&state_path, &snap))
            .unwrap_or_default()
    };
    let kept = kept_now();
    if kept.is_empty() {
        return Ok(());
    }
    let rt = inv.runtime()?;
    let until = kept.iter().map(|k| k.until).max().unwrap_or(0);
    let names: Vec<String> = kept
        .iter()
        .map(|k| format!("`{}`", k.record.name))
        .collect();
    let interrupted = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return false;
        };
        loop {
            let left = until.saturating_sub(apply::rollout::unix_now());
            if left == 0 || kept_now().is_empty() {
                return false;
            }
            inv.out.status(&format!(
                "keeping the old set of {} out of traffic for {left} s more: `deploy-code rollback` flips back to it without a restart",
                names.join(", ")
            ));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(left.min(5))) => {}
                Some(()) = int.recv() => return true,
                Some(()) = term.recv() => return true,
            }
        }
    });
    if interrupted {
        inv.out
            .status("interrupted: the kept old set stops now instead of at the end of its window");
    }
    stop_kept(inv, loaded, &state_path)
}

/// Stops every kept old set of the state at `state_path` now.
fn stop_kept(
    inv: &Invocation,
    loaded: &LoadedConfig,
    state_path: &std::path::Path,
) -> Result<(), Failure> {
    if !state_path.exists() {
        return Ok(());
    }
    let snap = crate::state::load_snapshot(state_path)?;
    if apply::rollout::kept_sets(state_path, &snap).is_empty() {
        return Ok(());
    }
    let rt = inv.runtime()?;
    // A `rollback` may hold the lock right then: wait for it.
    let mut store = Store::open(
        state_path,
        &Holder::current(command_line()),
        Some(inv.globals.lock_timeout.unwrap_or(Duration::from_secs(60))),
    )?;
    let snap = store.snapshot()?;
    let backends = inv.backends(Some(loaded), Some(&snap));
    for k in apply::rollout::kept_sets(state_path, &snap) {
        let res = rt.block_on(apply::rollout::release(
            &mut store,
            &backends,
            &k,
            grace(loaded),
        ));
        if let Err(e) = res {
            return Err(Plain::new(
                Code::E010,
                format!("the kept old set of `{}` did not stop: {e}", k.record.name),
            )
            .help("`deploy-code cleanup` stops instances that no record names")
            .into());
        }
        inv.out.status(&format!(
            "stopped the kept old set of `{}` ({} instance(s))",
            k.record.name,
            k.record.handles.len()
        ));
    }
    Ok(())
}

fn run_once(inv: &Invocation, req: &ApplyRequest) -> Result<CommandOutcome, Failure> {
    let loaded = inv.config()?;
    let Some(file) = &req.plan_file else {
        return plan_and_apply(inv, loaded, req, Run::Apply);
    };
    // A saved plan: executed exactly, or refused when stale.
    let saved = crate::planfile::read(file)?;
    let mut store = open_store(inv, inv.state_path())?;
    let snap = store.snapshot()?;
    let mut l = loaded.clone();
    let key = snap.secret_key.clone();
    if let Some(k) = &key {
        l.desired.rekey(k);
    }
    if let Err(stale) = plan::saved::check_fresh(&saved, &snap, &l.config_hash()) {
        // The commonest stale plan: one that was applied already.
        let applied = (snap.serial > saved.binding.serial)
            .then(|| crate::state::history(store.path(), 20).ok())
            .flatten()
            .and_then(|h| {
                h.into_iter().find(|d| {
                    d.outcome == Outcome::Succeeded && d.config_hash == saved.binding.config_hash
                })
            });
        if let Some(d) = applied {
            return Err(Plain::new(
                Code::E013,
                format!(
                    "the saved plan `{}` is stale: its configuration was already applied (revision {}, {})",
                    file.display(),
                    d.revision,
                    d.started_at
                ),
            )
            .help("nothing to do; for a new change run `deploy-code plan --out FILE` again")
            .into());
        }
        return Err(Plain::new(
            Code::E013,
            format!(
                "the saved plan `{}` is stale: {}",
                file.display(),
                stale.changed.join("; ")
            ),
        )
        .help("run `deploy-code plan --out FILE` again and apply the new plan")
        .into());
    }
    if !saved.feasibility.feasible && !req.force {
        return Err(infeasible(&saved));
    }
    store.ensure_identity(key.as_ref())?;
    if !saved.has_changes() {
        return Ok(CommandOutcome::Done);
    }
    let backends = inv.backends(Some(&l), Some(&snap));
    let no_rollback = req.no_rollback || !l.desired.settings.deployment.rollback_on_failure;
    execute(inv, &saved, &l, &mut store, &backends, no_rollback, false)
}

pub fn destroy(inv: &Invocation, req: &DestroyRequest) -> Result<CommandOutcome, Failure> {
    let scope = Scope {
        targets: req.targets.clone(),
        ..Scope::refreshed()
    };
    // Destroying needs only the state: a configuration that no longer loads (a
    // secret that is gone, a file deleted) must not keep anything running, and
    // one with no services is fine.
    let opts = LoadOptions {
        allow_empty: true,
        ..inv.load_options()
    };
    let from_file = config::load(&opts).map_err(Failure::from);
    let from_file_loaded = from_file.is_ok();
    let loaded = match from_file {
        Ok(l) => l,
        Err(f) => {
            tracing::warn!(
                "the configuration does not load, destroying from the state alone with default settings:\n{:?}",
                f.report
            );
            config::load_from_str(
                "{}",
                inv.config_path(),
                &LoadOptions {
                    path: inv.config_path().to_path_buf(),
                    allow_empty: true,
                    ..LoadOptions::default()
                },
            )?
        }
    };
    // Nothing to destroy and nowhere to record it: create nothing.
    let state = config::state_path(
        inv.globals.state.as_deref(),
        Some(&loaded),
        inv.config_path(),
    );
    if !inv.config_path().exists() && !state.exists() {
        return Err(Plain::new(
            Code::E001,
            format!(
                "nothing to destroy: there is no configuration at `{}` and no state at `{}`",
                inv.config_path().display(),
                state.display()
            ),
        )
        .help("run it where the deployment's configuration or state is, or name them with `-c FILE` and `--state FILE`")
        .into());
    }
    let done = plan_and_apply(
        inv,
        &loaded,
        &ApplyRequest {
            scope,
            auto_approve: req.auto_approve,
            force: true,
            ..ApplyRequest::default()
        },
        Run::Destroy,
    )?;
    // Old sets kept by a blue-green rollout's window go too (no record
    // names them, so the plan does not).
    if done == CommandOutcome::Done {
        stop_kept(inv, &loaded, &state)?;
    }
    // The project's container networks go with the last container.
    if done == CommandOutcome::Done
        && req.targets.is_empty()
        && from_file_loaded
        && let Ok(rt) = inv.runtime()
    {
        let project = &loaded.desired.settings.project;
        for b in inv
            .backends(Some(&loaded), None)
            .all()
            .filter(|b| b.tears_down_network())
        {
            // Without an engine (or a Swarm manager) there is no network to remove.
            if let Err(e @ crate::backends::BackendError::Network { .. }) =
                rt.block_on(b.teardown_network(project))
            {
                tracing::warn!("{e}");
            }
        }
    }
    Ok(done)
}

pub fn restart(inv: &Invocation, req: &RestartRequest) -> Result<CommandOutcome, Failure> {
    let loaded = inv.config()?;
    let mut replaces = req.services.clone();
    if replaces.is_empty() {
        replaces = loaded
            .desired
            .services
            .keys()
            .map(|s| s.to_string())
            .collect();
    }
    plan_and_apply(
        inv,
        loaded,
        &ApplyRequest {
            scope: Scope {
                replaces,
                ..Scope::refreshed()
            },
            auto_approve: req.auto_approve,
            ..ApplyRequest::default()
        },
        Run::Restart,
    )
}

pub fn cleanup(inv: &Invocation, req: &CleanupRequest) -> Result<CommandOutcome, Failure> {
    let loaded = inv.config()?;
    let snap0 = crate::state::load_snapshot(inv.state_path())?;
    let backends = inv.backends(Some(loaded), Some(&snap0));
    let rt = inv.runtime()?;
    let project = loaded.desired.settings.project.clone();
    let say = |line: String| inv.out.data_lossy(&format!("{line}\n"));
    // Only instances started by runs of this state are cleaned up; those of
    // another state sharing the project name are named and left alone.
    let left_alone = |theirs: &[(crate::backends::Discovered, String)]| {
        for (d, lineage) in theirs {
            say(format!(
                "left alone: `{}` {} (started by another state, lineage {lineage})",
                d.service,
                reconcile::describe(&d.handle)
            ));
        }
    };
    if req.dry_run {
        let crate::refresh::Refreshed { ours, theirs, .. } =
            rt.block_on(crate::refresh::observe(&backends, &project, &snap0));
        for d in &ours {
            say(format!(
                "would remove `{}` {}",
                d.service,
                reconcile::describe(&d.handle)
            ));
        }
        left_alone(&theirs);
        if ours.is_empty() {
            say("Nothing to clean up.".to_owned());
        }
        return Ok(CommandOutcome::Done);
    }
    let mut store = open_store(inv, inv.state_path())?;
    store.ensure_identity(None)?;
    let snap = store.snapshot()?;
    let crate::refresh::Refreshed { ours, theirs, .. } =
        rt.block_on(crate::refresh::observe(&backends, &project, &snap));
    left_alone(&theirs);
    if ours.is_empty() && snap.open_intents.is_empty() {
        say("Nothing to clean up.".to_owned());
        return Ok(CommandOutcome::Done);
    }
    for d in &ours {
        say(format!(
            "`{}` {}",
            d.service,
            reconcile::describe(&d.handle)
        ));
    }
    confirm(inv, req.auto_approve, "remove these instances")?;
    let ctx = adoption_ctx(loaded, &snap);
    let done = rt.block_on(reconcile::reconcile(
        &mut store,
        &backends,
        ours,
        grace(loaded),
        &ctx,
    ))?;
    for d in &done {
        say(format!("`{}`: {} {}", d.service, d.action, d.detail));
    }
    Ok(CommandOutcome::Done)
}
