//! `rollback`: an earlier revision re-applied, or a BlueGreen flip back to
//! the set kept after the flip.

use super::*;

/// Re-applies the configuration of an earlier successful revision, as a normal
/// planned apply. The history keeps that configuration with each secret as the
/// `secret('NAME')` call that made it, so its secrets are read anew by name from
/// today's environment; a secret that is no longer set makes the rollback
/// refuse to start (the configuration error names it).
pub fn rollback(inv: &Invocation, req: &RollbackRequest) -> Result<CommandOutcome, Failure> {
    let current = inv.config()?;
    let path = inv.state_path();
    let history = crate::state::history(path, 10_000)?;
    let succeeded: Vec<_> = history
        .iter()
        .filter(|d| d.outcome == Outcome::Succeeded)
        .collect();
    let target = match req.to {
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
    let Some(replay) = &target.config_replay else {
        return Err(Plain::new(
            Code::E016,
            format!(
                "revision {} withheld secrets and was recorded before the history kept their names: it cannot be re-applied with them",
                target.revision
            ),
        )
        .help("`deploy-code state show --revision N` shows its configuration; restore it in the file and run `apply`")
        .into());
    };
    // The history keeps the revision's configuration with each secret as
    // the `secret('NAME')` call that made it: rendering it reads each one
    // anew from today's environment, by name.
    let opts = inv.load_options();
    let mut old = config::load_from_str(replay, inv.config_path(), &opts)?;
    // Who may call the server and who is told about runs are today's
    // settings, not the revision's.
    old.desired.settings.security = current.desired.settings.security.clone();
    old.desired.settings.hooks = current.desired.settings.hooks.clone();
    if inv.format() != Format::Json {
        inv.out.status(&format!(
            "Returning to the configuration of revision {}.",
            target.revision
        ));
    }
    flip_back(inv, &old, target)?;
    let done = plan_and_apply(
        inv,
        &old,
        &ApplyRequest {
            scope: Scope::refreshed(),
            auto_approve: req.auto_approve,
            ..ApplyRequest::default()
        },
        Run::Rollback,
    )?;
    if done == CommandOutcome::Done && inv.format() != Format::Json {
        inv.out.status(&format!(
            "warning: `{}` still holds the newer configuration: the next `plan` proposes it again. Change the file to keep revision {} (`deploy-code state show --revision {}` shows what it ran).",
            inv.config_path().display(),
            target.revision,
            target.revision
        ));
    }
    Ok(done)
}

/// Within the window of a `BlueGreen` rollout's kept old set
/// (`blue_green.keep_seconds`), and when the revision returned to runs
/// exactly that set's spec: the switches point back at the kept instances
/// (still running: no restart) and the new ones stop, recorded as a
/// revision of its own. Anything else the revision differs in is left to
/// the planned rollback that follows.
pub(super) fn flip_back(
    inv: &Invocation,
    old: &LoadedConfig,
    target: &crate::state::Deployment,
) -> Result<(), Failure> {
    let state_path = config::state_path(inv.globals.state.as_deref(), Some(old), inv.config_path());
    if !state_path.exists() {
        return Ok(());
    }
    let snap = crate::state::load_snapshot(&state_path)?;
    let mut desired = old.desired.clone();
    if let Some(k) = &snap.secret_key {
        desired.rekey(k);
    }
    let matching = |snap: &crate::state::Snapshot| -> Vec<apply::rollout::Kept> {
        apply::rollout::kept_sets(&state_path, snap)
            .into_iter()
            .filter(|k| {
                k.left() > 0
                    && desired
                        .services
                        .get(&k.record.name)
                        .is_some_and(|s| s.spec_hash() == k.record.spec_hash)
                    && snap
                        .services
                        .get(&k.record.name)
                        .is_some_and(|r| r.revision == k.revision)
            })
            .collect()
    };
    if matching(&snap).is_empty() {
        return Ok(());
    }
    let mut store = open_store(inv, &state_path)?;
    let snap = store.snapshot()?;
    let kept = matching(&snap);
    if kept.is_empty() {
        return Ok(());
    }
    let rt = inv.runtime()?;
    let backends = inv.backends(Some(old), Some(&snap));
    let revision = store.begin_deployment(&crate::state::NewDeployment {
        command: command_line(),
        config_snapshot: target.config_snapshot.clone(),
        config_replay: target.config_replay.clone().unwrap_or_default(),
        config_hash: old.config_hash(),
        plan_summary: serde_json::Value::Null,
    })?;
    let dep = &old.desired.settings.deployment;
    let res = rt.block_on(apply::rollout::flip_back(
        &mut store,
        &backends,
        &kept,
        revision,
        Duration::from_secs(dep.drain_seconds),
        grace(old),
    ));
    let outcome = if res.is_ok() {
        Outcome::Succeeded
    } else {
        Outcome::Failed
    };
    store.finish_deployment(revision, outcome, &serde_json::Value::Null)?;
    match res {
        Ok(done) => {
            if inv.format() != Format::Json {
                for line in done {
                    inv.out.status(&format!("flipped back: {line}"));
                }
            }
            Ok(())
        }
        Err(e) => Err(Plain::new(
            Code::E010,
            format!("the flip back to the kept old set failed: {e}"),
        )
        .help("run `deploy-code rollback` again: without a kept set it restarts the old revision's instances")
        .into()),
    }
}
