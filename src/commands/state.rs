//! `state` commands: inspect (`list`, `show`, `history`: read-only, no lock) and
//! maintain (`rm`, `restore`, `unlock`: take the lock or release it) the state
//! file; `backup` copies it consistently while others may write.

use std::path::{Path, PathBuf};

use super::print;
use crate::cli::*;
use crate::error::{Code, Failure, Plain, exit};
use crate::model::ServiceName;
use crate::render::state::{self as view, StateDocument};
use crate::state::{self, Holder, StateError, Store};

/// How many events `state show SERVICE` lists.
const RECENT_EVENTS: u64 = 20;

pub fn run(ctx: &Context, cmd: StateCommand) -> Result<u8, Failure> {
    let path = state_path(ctx);
    match cmd {
        StateCommand::List => list(ctx, &path),
        StateCommand::Show(a) => show(ctx, &path, &a),
        StateCommand::History(a) => history(ctx, &path, a.limit),
        StateCommand::Audit(a) => audit(ctx, &path, a.limit),
        StateCommand::Rm(a) => rm(ctx, &path, &a.service),
        StateCommand::Backup(a) => backup(ctx, &path, &a.file),
        StateCommand::Restore(a) => restore(ctx, &path, &a),
        StateCommand::Unlock(a) => unlock(ctx, &path, a.force),
    }
}

/// The state's path by the one rule (see [`super::reader_state_path`]).
fn state_path(ctx: &Context) -> PathBuf {
    super::reader_state_path(ctx)
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Prints a document as JSON or YAML when asked, else the human text.
fn emit(ctx: &Context, doc: StateDocument, human: impl FnOnce() -> String) -> Result<u8, Failure> {
    match ctx.global.format {
        Format::Json => print(&format!("{}\n", view::to_json(&doc)))?,
        Format::Yaml => print(
            &serde_yaml::to_string(&doc)
                .map_err(|e| Plain::new(Code::E016, format!("cannot write YAML: {e}")))?,
        )?,
        Format::Human | Format::Markdown => print(&human())?,
    }
    Ok(exit::OK)
}

fn audit(ctx: &Context, path: &Path, limit: u64) -> Result<u8, Failure> {
    let events = state::audit_events(path, limit)?;
    let doc = view::audit_doc(&shown(path), &events);
    emit(ctx, StateDocument::Audit(doc.clone()), || {
        view::audit_human(&doc, ctx.color)
    })
}

fn list(ctx: &Context, path: &Path) -> Result<u8, Failure> {
    let snap = state::load_snapshot(path)?;
    let doc = view::list_doc(&shown(path), &snap);
    emit(ctx, StateDocument::List(doc.clone()), || {
        view::list_human(&doc, ctx.color)
    })
}

fn show(ctx: &Context, path: &Path, args: &StateShowArgs) -> Result<u8, Failure> {
    if let Some(rev) = args.revision {
        let Some(d) = state::deployment(path, rev)? else {
            return Err(Plain::new(
                Code::E016,
                format!(
                    "no deployment with revision {rev} in the state `{}`",
                    shown(path)
                ),
            )
            .help("`deploy-code state history` lists the revisions")
            .into());
        };
        let doc = view::deployment_doc(&shown(path), &d);
        return emit(ctx, StateDocument::Deployment(doc.clone()), || {
            view::deployment_human(&doc, ctx.color)
        });
    }
    let snap = state::load_snapshot(path)?;
    if let Some(service) = &args.service {
        let Some(rec) = snap.services.get(service.as_str()) else {
            return Err(StateError::ServiceNotFound {
                name: service.clone(),
                path: path.to_path_buf(),
            }
            .into());
        };
        let mut events = state::events(path, Some(&rec.name), RECENT_EVENTS)?;
        events.extend(crate::monitor::restart_events(rec));
        // Newest first; RFC 3339 UTC times order as text.
        events.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
        events.truncate(usize::try_from(RECENT_EVENTS).unwrap_or(usize::MAX));
        let doc = view::service_doc(&shown(path), rec, &events);
        return emit(ctx, StateDocument::Service(doc.clone()), || {
            view::service_human(&doc, ctx.color)
        });
    }
    let exists = path.exists();
    let doc = view::summary_doc(&shown(path), exists, &snap);
    emit(ctx, StateDocument::Summary(doc.clone()), || {
        view::summary_human(&doc, ctx.color)
    })
}

fn history(ctx: &Context, path: &Path, limit: u64) -> Result<u8, Failure> {
    let deployments = state::history(path, limit)?;
    let doc = view::history_doc(&shown(path), &deployments);
    emit(ctx, StateDocument::History(doc.clone()), || {
        view::history_human(&doc, ctx.color)
    })
}

fn require_state(path: &Path) -> Result<(), StateError> {
    if path.exists() {
        Ok(())
    } else {
        Err(StateError::Missing {
            path: path.to_path_buf(),
        })
    }
}

fn rm(ctx: &Context, path: &Path, service: &str) -> Result<u8, Failure> {
    require_state(path)?;
    let not_found = || StateError::ServiceNotFound {
        name: service.to_owned(),
        path: path.to_path_buf(),
    };
    let name = ServiceName::parse(service).map_err(|_| not_found())?;
    let holder = Holder::current(format!("deploy-code state rm {service}"));
    let mut store = Store::open(path, &holder, ctx.global.lock_timeout)?;
    let snap = store.snapshot()?;
    if !snap.services.contains_key(&name) {
        return Err(not_found().into());
    }
    store.remove_service(&name)?;
    store.event(
        snap.revision,
        Some(&name),
        "forget",
        "succeeded",
        "removed from the state by `state rm`; what runs was not touched",
    )?;
    drop(store);
    if !ctx.global.quiet {
        print(&format!(
            "forgot `{service}`: the state no longer tracks it (what runs was not touched)\n"
        ))?;
    }
    Ok(exit::OK)
}

fn backup(ctx: &Context, path: &Path, file: &Path) -> Result<u8, Failure> {
    let snap = state::backup(path, file)?;
    if !ctx.global.quiet {
        print(&format!(
            "wrote a consistent copy of `{}` (serial {}, revision {}) to `{}`\n",
            shown(path),
            snap.serial,
            snap.revision,
            shown(file)
        ))?;
    }
    Ok(exit::OK)
}

fn restore(ctx: &Context, path: &Path, args: &StateRestoreArgs) -> Result<u8, Failure> {
    let holder = Holder::current(format!("deploy-code state restore {}", shown(&args.file)));
    let saved = state::restore(
        path,
        &args.file,
        args.force,
        &holder,
        ctx.global.lock_timeout,
    )?;
    if !ctx.global.quiet {
        let snap = state::load_snapshot(path)?;
        let mut msg = format!(
            "restored `{}` from `{}` (now serial {}, revision {})\n",
            shown(path),
            shown(&args.file),
            snap.serial,
            snap.revision
        );
        if let Some(saved) = saved {
            msg.push_str(&format!(
                "the previous state was saved to `{}`\n",
                shown(&saved)
            ));
        }
        print(&msg)?;
    }
    Ok(exit::OK)
}

fn unlock(ctx: &Context, path: &Path, force: bool) -> Result<u8, Failure> {
    let released = state::unlock(path, force)?;
    if !ctx.global.quiet {
        let msg = match released {
            None => format!("the state `{}` is not locked\n", shown(path)),
            Some(l) => format!(
                "released the lock of `{}` held by `{}` (pid {} on host `{}`) since {}\n",
                shown(path),
                l.command,
                l.pid,
                l.host,
                l.acquired_at
            ),
        };
        print(&msg)?;
    }
    Ok(exit::OK)
}
