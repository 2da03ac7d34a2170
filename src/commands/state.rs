//! `state` commands: inspect (`list`, `show`, `history`: read-only, no lock) and
//! maintain (`rm`, `restore`, `unlock`: take the lock or release it) the state
//! file; `backup` copies it consistently while others may write.

use std::path::{Path, PathBuf};

use super::{CommandOutcome, Format, Invocation};
use crate::error::{Code, Failure, Plain};
use crate::model::ServiceName;
use crate::render::state::{self as view, StateDocument};
use crate::state::{self, Holder, StateError, Store};

/// How many events `state show SERVICE` lists.
const RECENT_EVENTS: u64 = 20;

/// What a `state` command is asked.
#[derive(Clone, Debug)]
pub enum StateRequest {
    List,
    /// The state's identity, or one service, or what a revision deployed.
    Show {
        service: Option<String>,
        revision: Option<u64>,
    },
    History {
        limit: u64,
    },
    Audit {
        limit: u64,
    },
    Rm {
        service: String,
    },
    Backup {
        file: PathBuf,
    },
    Restore {
        file: PathBuf,
        force: bool,
    },
    Unlock {
        force: bool,
    },
}

pub fn run(inv: &Invocation, req: &StateRequest) -> Result<CommandOutcome, Failure> {
    let path = inv.state_path();
    match req {
        StateRequest::List => list(inv, path),
        StateRequest::Show { service, revision } => show(inv, path, service.as_deref(), *revision),
        StateRequest::History { limit } => history(inv, path, *limit),
        StateRequest::Audit { limit } => audit(inv, path, *limit),
        StateRequest::Rm { service } => rm(inv, path, service),
        StateRequest::Backup { file } => backup(inv, path, file),
        StateRequest::Restore { file, force } => restore(inv, path, file, *force),
        StateRequest::Unlock { force } => unlock(inv, path, *force),
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Prints a document as JSON or YAML when asked, else the human text.
fn emit(
    inv: &Invocation,
    doc: StateDocument,
    human: impl FnOnce() -> String,
) -> Result<CommandOutcome, Failure> {
    match inv.format() {
        Format::Json => inv.out.data(&format!("{}\n", view::to_json(&doc)))?,
        Format::Yaml => inv.out.data(
            &serde_yaml::to_string(&doc)
                .map_err(|e| Plain::new(Code::E016, format!("cannot write YAML: {e}")))?,
        )?,
        Format::Human | Format::Markdown => inv.out.data(&human())?,
    }
    Ok(CommandOutcome::Done)
}

fn audit(inv: &Invocation, path: &Path, limit: u64) -> Result<CommandOutcome, Failure> {
    let events = state::audit_events(path, limit)?;
    let doc = view::audit_doc(&shown(path), &events);
    emit(inv, StateDocument::Audit(doc.clone()), || {
        view::audit_human(&doc, inv.out.color())
    })
}

fn list(inv: &Invocation, path: &Path) -> Result<CommandOutcome, Failure> {
    let snap = state::load_snapshot(path)?;
    let doc = view::list_doc(&shown(path), &snap);
    emit(inv, StateDocument::List(doc.clone()), || {
        view::list_human(&doc, inv.out.color())
    })
}

fn show(
    inv: &Invocation,
    path: &Path,
    service: Option<&str>,
    revision: Option<u64>,
) -> Result<CommandOutcome, Failure> {
    if let Some(rev) = revision {
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
        return emit(inv, StateDocument::Deployment(doc.clone()), || {
            view::deployment_human(&doc, inv.out.color())
        });
    }
    let snap = state::load_snapshot(path)?;
    if let Some(service) = service {
        let Some(rec) = snap.services.get(service) else {
            return Err(StateError::ServiceNotFound {
                name: service.to_owned(),
                path: path.to_path_buf(),
            }
            .into());
        };
        // The monitors' restarts become events of the state (each once);
        // a state that cannot take them shows them from the status files.
        let imported = super::status::import_restarts(inv, &snap);
        let mut events = state::events(path, Some(&rec.name), RECENT_EVENTS)?;
        if !imported {
            let log_dir = super::status::log_dir(inv);
            events.extend(
                crate::monitor::restart_rows(rec, log_dir.as_deref())
                    .into_iter()
                    .map(|r| r.event),
            );
        }
        // Newest first; RFC 3339 UTC times order as text.
        events.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
        events.truncate(usize::try_from(RECENT_EVENTS).unwrap_or(usize::MAX));
        let doc = view::service_doc(&shown(path), rec, &events);
        return emit(inv, StateDocument::Service(doc.clone()), || {
            view::service_human(&doc, inv.out.color())
        });
    }
    let exists = path.exists();
    let doc = view::summary_doc(&shown(path), exists, &snap);
    emit(inv, StateDocument::Summary(doc.clone()), || {
        view::summary_human(&doc, inv.out.color())
    })
}

fn history(inv: &Invocation, path: &Path, limit: u64) -> Result<CommandOutcome, Failure> {
    let deployments = state::history(path, limit)?;
    let doc = view::history_doc(&shown(path), &deployments);
    emit(inv, StateDocument::History(doc.clone()), || {
        view::history_human(&doc, inv.out.color())
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

fn rm(inv: &Invocation, path: &Path, service: &str) -> Result<CommandOutcome, Failure> {
    require_state(path)?;
    let not_found = || StateError::ServiceNotFound {
        name: service.to_owned(),
        path: path.to_path_buf(),
    };
    let name = ServiceName::parse(service).map_err(|_| not_found())?;
    let holder = Holder::current(format!("deploy-code state rm {service}"));
    let mut store = Store::open(path, &holder, inv.globals.lock_timeout)?;
    let snap = store.snapshot()?;
    if !snap.services.contains_key(&name) {
        return Err(not_found().into());
    }
    store.remove_service(&name)?;
    store.event(
        snap.revision,
        Some(&name),
        crate::state::EventKind::Forget,
        crate::state::EventOutcome::Succeeded,
        "removed from the state by `state rm`; what runs was not touched",
    )?;
    drop(store);
    if !inv.out.quiet() {
        inv.out.data(&format!(
            "forgot `{service}`: the state no longer tracks it (what runs was not touched)\n"
        ))?;
    }
    Ok(CommandOutcome::Done)
}

fn backup(inv: &Invocation, path: &Path, file: &Path) -> Result<CommandOutcome, Failure> {
    let snap = state::backup(path, file)?;
    if !inv.out.quiet() {
        inv.out.data(&format!(
            "wrote a consistent copy of `{}` (serial {}, revision {}) to `{}`\n",
            shown(path),
            snap.serial,
            snap.revision,
            shown(file)
        ))?;
    }
    Ok(CommandOutcome::Done)
}

fn restore(
    inv: &Invocation,
    path: &Path,
    file: &Path,
    force: bool,
) -> Result<CommandOutcome, Failure> {
    let holder = Holder::current(format!("deploy-code state restore {}", shown(file)));
    let saved = state::restore(path, file, force, &holder, inv.globals.lock_timeout)?;
    if !inv.out.quiet() {
        let snap = state::load_snapshot(path)?;
        let mut msg = format!(
            "restored `{}` from `{}` (now serial {}, revision {})\n",
            shown(path),
            shown(file),
            snap.serial,
            snap.revision
        );
        if let Some(saved) = saved {
            msg.push_str(&format!(
                "the previous state was saved to `{}`\n",
                shown(&saved)
            ));
        }
        inv.out.data(&msg)?;
    }
    Ok(CommandOutcome::Done)
}

fn unlock(inv: &Invocation, path: &Path, force: bool) -> Result<CommandOutcome, Failure> {
    let released = state::unlock(path, force)?;
    if !inv.out.quiet() {
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
        inv.out.data(&msg)?;
    }
    Ok(CommandOutcome::Done)
}
