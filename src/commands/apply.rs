//! `apply` commands: apply (deploy), destroy (stop), restart, rollback, cleanup.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::apply::{self, Cancel, Event, reconcile};
use crate::backends::Registry;
use crate::cli::*;
use crate::commands::progress::{Mode, Progress};
use crate::config::{self, LoadOptions, LoadedConfig};
use crate::error::{Code, Failure, Plain, exit};
use crate::hooks::When;
use crate::plan::{self, Plan};
use crate::state::{Holder, Outcome, Store};

/// The backends a configuration and a state need: processes always, Docker and
/// Swarm when a service of either uses them.
pub fn registry_for(
    loaded: Option<&LoadedConfig>,
    snap: Option<&crate::state::Snapshot>,
) -> Registry {
    let mut kinds = Vec::new();
    if let Some(l) = loaded {
        kinds.push(l.desired.settings.default_backend);
        kinds.extend(l.desired.services.values().map(|s| s.backend));
    }
    if let Some(s) = snap {
        kinds.extend(s.services.values().map(|r| r.backend));
    }
    Registry::for_kinds(kinds)
}

/// The backends this build offers.
pub fn registry() -> Registry {
    Registry::with_all()
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Plain::new(Code::E016, format!("cannot start the async runtime: {e}")).into())
}

pub(crate) fn load_config(ctx: &Context) -> Result<LoadedConfig, Failure> {
    Ok(config::load(&ctx.load_options())?)
}

pub(crate) fn state_path(ctx: &Context, loaded: Option<&LoadedConfig>) -> PathBuf {
    config::state_path(ctx.global.state.as_deref(), loaded, &ctx.global.config)
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("deploy-code {}", args.join(" "))
}

fn open_store(ctx: &Context, loaded: &LoadedConfig) -> Result<Store, Failure> {
    let path = state_path(ctx, Some(loaded));
    Ok(Store::open(
        &path,
        &Holder::current(command_line()),
        ctx.global.lock_timeout,
    )?)
}

fn progress_mode(ctx: &Context) -> Mode {
    if ctx.global.format == Format::Json {
        Mode::Json
    } else if ctx.global.quiet {
        Mode::Quiet
    } else if ctx.interactive {
        Mode::Bars
    } else {
        Mode::Lines
    }
}

/// Plans against the current state (after `desired.rekey`).
fn make_plan(
    loaded: &LoadedConfig,
    store: &Store,
    scope: &PlanScope,
    options: plan::Options,
    backends: &Registry,
    rt: &tokio::runtime::Runtime,
) -> Result<(Plan, LoadedConfig), Failure> {
    let snap = store.snapshot()?;
    if loaded.desired.services.values().any(|s| s.has_sensitive()) {
        snap.require_key(store.path())?;
    }
    let mut loaded = loaded.clone();
    if let Some(key) = &snap.secret_key {
        loaded.desired.rekey(key);
    }
    let config_hash = loaded.config_hash();
    let observations = scope.refresh().then(|| {
        rt.block_on(crate::refresh::observe(
            backends,
            &loaded.desired.settings.project,
            &snap,
        ))
        .observations
    });
    let inventory = match &scope.inventory {
        Some(f) => crate::inventory::load_file(f)?,
        None => backends
            .get(loaded.desired.settings.default_backend)
            .filter(|b| b.reports_capacity())
            .and_then(|b| rt.block_on(b.capacity()).ok().flatten())
            .unwrap_or_else(|| crate::inventory::probe(&loaded.desired.settings.data_dir)),
    };
    let p = plan::plan(&plan::Input {
        desired: Some(&loaded.desired),
        snapshot: &snap,
        observations: observations.as_ref(),
        inventory: &inventory,
        config_hash,
        options,
        capabilities: backends.capabilities(),
    })?;
    Ok((p, loaded))
}

fn plan_options(scope: &PlanScope, destroy_all: bool) -> plan::Options {
    plan::Options {
        targets: scope.targets.clone(),
        excludes: scope.excludes.clone(),
        replaces: scope.replaces.clone(),
        destroy_all,
    }
}

fn show_plan(ctx: &Context, p: &Plan) {
    match ctx.global.format {
        Format::Json => {
            let v = serde_json::json!({
                "event": "plan",
                "at": apply::now_rfc3339(),
                "summary": p.summary,
                "phases": p.phases,
                "feasible": p.feasibility.feasible,
            });
            outln!("{v}");
        }
        _ if ctx.global.quiet => {}
        _ => out!("{}", crate::render::plan::human(p, ctx.color)),
    }
}

fn confirm(ctx: &Context, auto_approve: bool, what: &str) -> Result<(), Failure> {
    if auto_approve {
        return Ok(());
    }
    if !ctx.interactive {
        return Err(Plain::new(
            Code::E016,
            format!("refusing to {what} without confirmation: not on a terminal"),
        )
        .help("review the plan, then run again with `--auto-approve`")
        .into());
    }
    eprint!("Do you want to {what}? Only `yes` is accepted: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
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
    let problems: Vec<String> = p
        .feasibility
        .problems
        .iter()
        .map(|x| x.message.clone())
        .collect();
    Failure::new(
        miette::Report::new(
            Plain::new(
                Code::E004,
                format!("the plan does not fit: {}", problems.join("; ")),
            )
            .help({
                let mut r = p.feasibility.remedies();
                r.push("or run with `--force` to apply anyway");
                r.join("; ")
            }),
        ),
        exit::INFEASIBLE,
    )
}

/// Runs the executor with progress output and SIGINT handling; turns the report
/// into an exit code or a failure.
#[allow(clippy::too_many_arguments)]
fn execute(
    ctx: &Context,
    rt: &tokio::runtime::Runtime,
    p: &Plan,
    loaded: &LoadedConfig,
    store: &mut Store,
    backends: &Registry,
    no_rollback: bool,
    is_rollback: bool,
) -> Result<u8, Failure> {
    let hooks = &loaded.desired.settings.hooks;
    if !hooks.pre_apply.is_empty() {
        let results = rt.block_on(crate::hooks::run(
            &hooks.pre_apply,
            When::PreApply,
            &hook_payload(When::PreApply, p, loaded, None),
            loaded.base_dir(),
        ));
        show_hooks(ctx, &results);
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
    let progress = Progress::new(progress_mode(ctx));
    let hook = |e: &Event| progress.handle(e);
    let cancel = Cancel::new();
    let opts = apply::Options {
        no_rollback,
        command: command_line(),
        config_snapshot: loaded.redacted_render.clone(),
        config_hash: loaded.config_hash(),
        base_dir: loaded.base_dir().to_path_buf(),
    };
    let report = rt.block_on(async {
        let c = cancel.clone();
        // SIGINT and SIGTERM interrupt alike: the first stops launching and
        // rolls back, the second aborts at once.
        let sig = tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    Some(()) = int.recv() => c.interrupt(),
                    Some(()) = term.recv() => c.interrupt(),
                    else => return,
                }
            }
        });
        let ticker = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress.tick();
            }
        };
        let r = tokio::select! {
            r = apply::execute(p, &loaded.desired, store, backends, &opts, &hook, &cancel) => r,
            () = ticker => unreachable!("the ticker never ends"),
        };
        sig.abort();
        r
    })?;
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
        // Reported, never changing the outcome.
        let results = rt.block_on(crate::hooks::run(
            list,
            when,
            &hook_payload(when, p, loaded, Some(&report)),
            loaded.base_dir(),
        ));
        show_hooks(ctx, &results);
    }
    if ctx.global.format != Format::Json && !report.failures.is_empty() {
        let mut err = std::io::stderr().lock();
        for f in &report.failures {
            let _ = writeln!(err, "\n`{}` failed: {}", f.service, f.reason);
            if !f.probes.is_empty() {
                let _ = writeln!(err, "  last probes:");
                for pr in &f.probes {
                    let _ = writeln!(
                        err,
                        "    +{} ms {} {}",
                        pr.at_ms,
                        if pr.healthy { "ok  " } else { "FAIL" },
                        pr.detail
                    );
                }
            }
            if !f.log_tail.is_empty() {
                let _ = writeln!(err, "  last log lines:");
                for l in &f.log_tail {
                    let _ = writeln!(err, "    | {l}");
                }
            }
        }
        for l in &report.left {
            let _ = writeln!(err, "left: {l}");
        }
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
            if ctx.global.format != Format::Json {
                outln!(
                    "{} complete: revision {} in {} ms.",
                    if p.destroy_all { "Destroy" } else { "Apply" },
                    report.revision,
                    report.elapsed_ms
                );
            }
            Ok(exit::OK)
        }
        Outcome::RolledBack => Err(Failure::new(
            miette::Report::new(
                Plain::new(
                    report
                        .failures
                        .first()
                        .map_or(Code::E006, |f| f.kind.code()),
                    format!(
                        "apply of revision {} failed and was rolled back: {}",
                        report.revision,
                        first_reason(&report)
                    ),
                )
                .help("the previous deployment runs again; fix the failing service (see the evidence above, or `deploy-code state history`) and apply again"),
            ),
            exit::ROLLED_BACK,
        )),
        _ => Err(Failure::new(
            miette::Report::new(
                Plain::new(
                    Code::E009,
                    format!(
                        "apply of revision {} failed and was not fully rolled back: {}",
                        report.revision,
                        if report.left.is_empty() {
                            first_reason(&report)
                        } else {
                            report.left.join("; ")
                        }
                    ),
                )
                .help("`deploy-code status` shows what runs; `deploy-code plan` shows what an apply would repair"),
            ),
            exit::ROLLBACK_FAILED,
        )),
    }
}

/// The run's summary that hooks receive (redacted by `hooks::run`).
fn hook_payload(
    when: When,
    p: &Plan,
    loaded: &LoadedConfig,
    report: Option<&apply::Report>,
) -> serde_json::Value {
    let settings = &loaded.desired.settings;
    serde_json::json!({
        "format_version": 1,
        "event": when.as_str(),
        "at": apply::now_rfc3339(),
        "project": settings.project,
        "environment": settings.environment,
        "command": command_line(),
        "destroy": p.destroy_all,
        "summary": p.summary,
        "phases": p.phases,
        "changes": p.changes.iter()
            .filter(|c| c.action != plan::Action::NoOp)
            .map(|c| serde_json::json!({"service": c.service, "action": c.action}))
            .collect::<Vec<_>>(),
        "revision": report.map(|r| r.revision),
        "outcome": report.map(|r| r.outcome),
        "elapsed_ms": report.map(|r| r.elapsed_ms),
        "failures": report.map(|r| r.failures.iter().map(|f| serde_json::json!({
            "service": f.service,
            "reason": f.reason,
            "log_tail": f.log_tail,
        })).collect::<Vec<_>>()).unwrap_or_default(),
    })
}

/// Says what each hook did: a JSON line with `--format json`, else a line on stderr.
fn show_hooks(ctx: &Context, results: &[crate::hooks::Outcome]) {
    for r in results {
        if ctx.global.format == Format::Json {
            outln!("{}", serde_json::to_string(r).unwrap_or_default());
        } else if !r.ok || !ctx.global.quiet {
            eprintln!(
                "{}",
                crate::redact::text(&format!(
                    "hook {} `{}`: {}: {}",
                    r.when.as_str(),
                    r.hook,
                    if r.ok { "ok" } else { "FAILED" },
                    r.detail
                ))
            );
        }
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
    let text = crate::metrics::exposition(project, &snapshot, &history);
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

/// Recovery, before anything is judged: the instances that an interrupted run
/// of this state left behind (unrecorded, marked with this state's lineage)
/// are adopted or stopped, and its open intents closed, so that leftovers
/// never block the run (a port they hold, say) nor are duplicated by it.
/// Instances of another state sharing the project name are left alone.
fn recover(
    ctx: &Context,
    rt: &tokio::runtime::Runtime,
    store: &mut Store,
    backends: &Registry,
    loaded: &LoadedConfig,
) -> Result<(), Failure> {
    let snap = store.snapshot()?;
    let project = &loaded.desired.settings.project;
    let ours = rt
        .block_on(crate::refresh::observe(backends, project, &snap))
        .ours;
    if ours.is_empty() && snap.open_intents.is_empty() {
        return Ok(());
    }
    let done = rt.block_on(reconcile::reconcile(store, backends, ours, grace(loaded)))?;
    if ctx.global.format != Format::Json && !ctx.global.quiet {
        for d in &done {
            eprintln!("recover: `{}` {} {}", d.service, d.action, d.detail);
        }
    }
    Ok(())
}

/// The planned path of `apply`, `destroy` and `restart`.
fn plan_and_apply(
    ctx: &Context,
    scope: &PlanScope,
    options: plan::Options,
    auto_approve: bool,
    force: bool,
    no_rollback: bool,
    what: &str,
) -> Result<u8, Failure> {
    let loaded = load_config(ctx)?;
    plan_and_apply_loaded(
        ctx,
        loaded,
        scope,
        options,
        auto_approve,
        force,
        no_rollback,
        what,
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn plan_and_apply_loaded(
    ctx: &Context,
    loaded: LoadedConfig,
    scope: &PlanScope,
    options: plan::Options,
    auto_approve: bool,
    force: bool,
    no_rollback: bool,
    what: &str,
    is_rollback: bool,
) -> Result<u8, Failure> {
    let mut store = open_store(ctx, &loaded)?;
    store.ensure_identity(None)?;
    let backends = registry_for(Some(&loaded), Some(&store.snapshot()?));
    let rt = runtime()?;
    recover(ctx, &rt, &mut store, &backends, &loaded)?;
    let (p, loaded) = make_plan(&loaded, &store, scope, options, &backends, &rt)?;
    show_plan(ctx, &p);
    if !p.feasibility.feasible && !force {
        return Err(infeasible(&p));
    }
    if !p.has_changes() {
        return Ok(exit::OK);
    }
    confirm(ctx, auto_approve, what)?;
    let no_rollback = no_rollback || !loaded.desired.settings.deployment.rollback_on_failure;
    execute(
        ctx,
        &rt,
        &p,
        &loaded,
        &mut store,
        &backends,
        no_rollback,
        is_rollback,
    )
}

pub fn run(ctx: &Context, args: &ApplyArgs) -> Result<u8, Failure> {
    let Some(file) = &args.plan_file else {
        return plan_and_apply(
            ctx,
            &args.scope,
            plan_options(&args.scope, false),
            args.auto_approve,
            args.force,
            args.no_rollback,
            "apply these changes",
        );
    };
    // A saved plan: executed exactly, or refused when stale.
    let saved = crate::planfile::read(file)?;
    let loaded = load_config(ctx)?;
    let mut store = open_store(ctx, &loaded)?;
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
    if !saved.feasibility.feasible && !args.force {
        return Err(infeasible(&saved));
    }
    store.ensure_identity(key.as_ref())?;
    if !saved.has_changes() {
        return Ok(exit::OK);
    }
    let backends = registry_for(Some(&l), Some(&snap));
    let rt = runtime()?;
    let no_rollback = args.no_rollback || !l.desired.settings.deployment.rollback_on_failure;
    execute(
        ctx,
        &rt,
        &saved,
        &l,
        &mut store,
        &backends,
        no_rollback,
        false,
    )
}

pub fn destroy(ctx: &Context, args: &DestroyArgs) -> Result<u8, Failure> {
    let scope = PlanScope {
        targets: args.targets.clone(),
        refresh: true,
        ..Default::default()
    };
    // Destroying needs only the state: a configuration that no longer loads (a
    // secret that is gone, a file deleted) must not keep anything running, and
    // one with no services is fine.
    let opts = LoadOptions {
        allow_empty: true,
        ..ctx.load_options()
    };
    let loaded = match config::load(&opts).map_err(Failure::from) {
        Ok(l) => l,
        Err(f) => {
            tracing::warn!(
                "the configuration does not load, destroying from the state alone with default settings:\n{:?}",
                f.report
            );
            config::load_from_str(
                "{}",
                &ctx.global.config,
                &LoadOptions {
                    path: ctx.global.config.clone(),
                    allow_empty: true,
                    ..LoadOptions::default()
                },
            )?
        }
    };
    // Nothing to destroy and nowhere to record it: create nothing.
    let state = state_path(ctx, Some(&loaded));
    if !ctx.global.config.exists() && !state.exists() {
        return Err(Plain::new(
            Code::E001,
            format!(
                "nothing to destroy: there is no configuration at `{}` and no state at `{}`",
                ctx.global.config.display(),
                state.display()
            ),
        )
        .help("run it where the deployment's configuration or state is, or name them with `-c FILE` and `--state FILE`")
        .into());
    }
    let code = plan_and_apply_loaded(
        ctx,
        loaded,
        &scope,
        plan_options(&scope, true),
        args.auto_approve,
        true,
        false,
        "destroy these services",
        false,
    )?;
    // The project's container networks go with the last container.
    if code == 0
        && args.targets.is_empty()
        && let Ok(loaded) = config::load(&opts)
        && let Ok(rt) = runtime()
    {
        let project = &loaded.desired.settings.project;
        for b in registry().all().filter(|b| b.tears_down_network()) {
            // Without an engine (or a Swarm manager) there is no network to remove.
            if let Err(e @ crate::backends::BackendError::Network { .. }) =
                rt.block_on(b.teardown_network(project))
            {
                tracing::warn!("{e}");
            }
        }
    }
    Ok(code)
}

/// Re-applies the configuration of an earlier successful revision, as a normal
/// planned apply. The history keeps that configuration rendered with secrets
/// redacted, so its sensitive values are taken from the current configuration
/// (the same field of the same service); a secret the current configuration no
/// longer has makes the rollback refuse to start.
pub fn rollback(ctx: &Context, args: &RollbackArgs) -> Result<u8, Failure> {
    let current = load_config(ctx)?;
    let path = state_path(ctx, Some(&current));
    let history = crate::state::history(&path, 10_000)?;
    let succeeded: Vec<_> = history
        .iter()
        .filter(|d| d.outcome == Outcome::Succeeded)
        .collect();
    let target = match args.to {
        Some(rev) => match history.iter().find(|d| d.revision == rev) {
            Some(d) if d.outcome == Outcome::Succeeded => d,
            Some(d) => {
                return Err(Plain::new(
                    Code::E016,
                    format!(
                        "revision {rev} did not succeed (outcome `{}`)",
                        serde_json::to_value(d.outcome)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ),
                )
                .help("`deploy-code state history` lists the revisions; pick a succeeded one")
                .into());
            }
            None => {
                return Err(
                    Plain::new(Code::E016, format!("there is no revision {rev}"))
                        .help("`deploy-code state history` lists the revisions")
                        .into(),
                );
            }
        },
        None => match succeeded.get(1) {
            Some(d) => d,
            None => {
                return Err(Plain::new(
                    Code::E016,
                    "there is no earlier successful revision to return to",
                )
                .help("`deploy-code state history` lists the revisions")
                .into());
            }
        },
    };
    let opts = ctx.load_options();
    let mut old = config::load_from_str(&target.config_snapshot, &ctx.global.config, &opts)?;
    // Who may call the server and who is told about runs are today's
    // settings, not the revision's (whose secrets the history redacted).
    old.desired.settings.security = current.desired.settings.security.clone();
    old.desired.settings.hooks = current.desired.settings.hooks.clone();
    let mut missing = Vec::new();
    for (name, spec) in old.desired.services.iter_mut() {
        let now = current.desired.services.get(name);
        let mut fill =
            |t: &mut crate::model::Text, field: &str, now_t: Option<&crate::model::Text>| {
                if t.display() == "(sensitive)"
                    || matches!(t, crate::model::Text::Plain(p) if p == "(sensitive)")
                {
                    match now_t {
                        Some(n) if n.is_sensitive() => *t = n.clone(),
                        _ => missing.push(format!("`{name}` `{field}`")),
                    }
                }
            };
        if let Some(c) = spec.command.as_mut() {
            fill(c, "command", now.and_then(|n| n.command.as_ref()));
        }
        for (i, a) in spec.args.iter_mut().enumerate() {
            fill(a, &format!("args[{i}]"), now.and_then(|n| n.args.get(i)));
        }
        for (k, v) in spec.env.iter_mut() {
            fill(v, &format!("env.{k}"), now.and_then(|n| n.env.get(k)));
        }
    }
    if !missing.is_empty() {
        return Err(Plain::new(
            Code::E016,
            format!(
                "revision {} used secrets the current configuration does not have: {}",
                target.revision,
                missing.join(", ")
            ),
        )
        .help("the state keeps only digests of secrets; provide them in the current configuration and run the rollback again")
        .into());
    }
    if ctx.global.format != Format::Json && !ctx.global.quiet {
        eprintln!(
            "Returning to the configuration of revision {}.",
            target.revision
        );
    }
    let scope = PlanScope {
        refresh: true,
        ..Default::default()
    };
    let code = plan_and_apply_loaded(
        ctx,
        old,
        &scope,
        plan_options(&scope, false),
        args.auto_approve,
        false,
        false,
        "return to this revision",
        true,
    )?;
    if code == 0 && ctx.global.format != Format::Json && !ctx.global.quiet {
        eprintln!(
            "warning: `{}` still holds the newer configuration: the next `plan` proposes it again. Change the file to keep revision {} (`deploy-code state show --revision {}` shows what it ran).",
            ctx.global.config.display(),
            target.revision,
            target.revision
        );
    }
    Ok(code)
}

pub fn restart(ctx: &Context, args: &RestartArgs) -> Result<u8, Failure> {
    let mut replaces = args.services.clone();
    if replaces.is_empty() {
        let loaded = load_config(ctx)?;
        replaces = loaded
            .desired
            .services
            .keys()
            .map(|s| s.to_string())
            .collect();
    }
    let scope = PlanScope {
        replaces,
        refresh: true,
        ..Default::default()
    };
    plan_and_apply(
        ctx,
        &scope,
        plan_options(&scope, false),
        args.auto_approve,
        false,
        false,
        "restart these services",
    )
}

pub fn cleanup(ctx: &Context, args: &CleanupArgs) -> Result<u8, Failure> {
    let loaded = load_config(ctx)?;
    let snap0 = crate::state::load_snapshot(&state_path(ctx, Some(&loaded)))?;
    let backends = registry_for(Some(&loaded), Some(&snap0));
    let rt = runtime()?;
    let project = loaded.desired.settings.project.clone();
    // Only instances started by runs of this state are cleaned up; those of
    // another state sharing the project name are named and left alone.
    let left_alone = |theirs: &[(crate::backends::Discovered, String)]| {
        for (d, lineage) in theirs {
            outln!(
                "left alone: `{}` {} (started by another state, lineage {lineage})",
                d.service,
                reconcile::describe(&d.handle)
            );
        }
    };
    if args.dry_run {
        let crate::refresh::Refreshed { ours, theirs, .. } =
            rt.block_on(crate::refresh::observe(&backends, &project, &snap0));
        for d in &ours {
            outln!(
                "would remove `{}` {}",
                d.service,
                reconcile::describe(&d.handle)
            );
        }
        left_alone(&theirs);
        if ours.is_empty() {
            outln!("Nothing to clean up.");
        }
        return Ok(exit::OK);
    }
    let mut store = open_store(ctx, &loaded)?;
    store.ensure_identity(None)?;
    let snap = store.snapshot()?;
    let crate::refresh::Refreshed { ours, theirs, .. } =
        rt.block_on(crate::refresh::observe(&backends, &project, &snap));
    left_alone(&theirs);
    if ours.is_empty() && snap.open_intents.is_empty() {
        outln!("Nothing to clean up.");
        return Ok(exit::OK);
    }
    for d in &ours {
        outln!("`{}` {}", d.service, reconcile::describe(&d.handle));
    }
    confirm(ctx, args.auto_approve, "remove these instances")?;
    let done = rt.block_on(reconcile::reconcile(
        &mut store,
        &backends,
        ours,
        grace(&loaded),
    ))?;
    for d in &done {
        outln!("`{}`: {} {}", d.service, d.action, d.detail);
    }
    Ok(exit::OK)
}
