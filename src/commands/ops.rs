//! `metrics` and `doctor`: the tool explaining the state of things.

use super::{CommandOutcome, Format, Invocation};
use crate::error::Failure;
use crate::render::doctor::{Check, DoctorDoc};

pub fn metrics(inv: &Invocation) -> Result<CommandOutcome, Failure> {
    // The project from the configuration when it loads, else the default.
    let project = inv
        .config_for_reading()
        .map(|l| l.desired.settings.project.clone())
        .unwrap_or_else(|| "code".to_owned());
    let state_path = inv.state_path();
    let snapshot = crate::state::load_snapshot(state_path)?;
    let history = if snapshot.lineage.is_some() {
        crate::state::history(state_path, u64::MAX)?
    } else {
        Vec::new()
    };
    let log_dir = super::status::log_dir(inv);
    super::status::import_restarts(inv, &snapshot);
    let recorded = crate::state::restarts::counts(state_path).unwrap_or_default();
    let switches = inv
        .runtime()?
        .block_on(super::status::switch_samples(state_path, &snapshot));
    inv.out.data_lossy(&crate::metrics::exposition_in(
        &project,
        &snapshot,
        &history,
        log_dir.as_deref(),
        &recorded,
        &switches,
    ));
    Ok(CommandOutcome::Done)
}

/// Whether `dir` (or, when missing, the nearest existing ancestor that would
/// hold it) accepts a new file.
fn writable(dir: &std::path::Path) -> Result<String, String> {
    let mut probe_dir = dir.to_path_buf();
    let mut missing = false;
    while !probe_dir.exists() {
        missing = true;
        match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_dir = p.to_path_buf(),
            _ => {
                probe_dir = std::path::PathBuf::from(".");
                break;
            }
        }
    }
    tempfile::NamedTempFile::new_in(&probe_dir)
        .map(|_| {
            if missing {
                format!(
                    "{} (will be created under {})",
                    dir.display(),
                    probe_dir.display()
                )
            } else {
                dir.display().to_string()
            }
        })
        .map_err(|e| format!("{}: {e}", probe_dir.display()))
}

fn run_checks(inv: &Invocation) -> Vec<Check> {
    let mut checks = Vec::new();
    let loaded = match inv.config() {
        Ok(l) => {
            checks.push(Check::ok(
                "config",
                format!(
                    "{}: {} services",
                    inv.config_path().display(),
                    l.desired.services.len()
                ),
            ));
            Some(l)
        }
        Err(f) => {
            let code = f.report.code().map(|c| c.to_string()).unwrap_or_default();
            checks.push(Check::fail(
                "config",
                format!("{}: {} ({code})", inv.config_path().display(), f.report),
                "run `deploy-code validate` to see every problem with its location",
            ));
            None
        }
    };

    let state_path =
        crate::config::state_path(inv.globals.state.as_deref(), loaded, inv.config_path());
    if !state_path.exists() {
        checks.push(Check::ok(
            "state",
            format!(
                "{}: none yet (the first apply creates it)",
                state_path.display()
            ),
        ));
    } else {
        match crate::state::check_backup(&state_path) {
            Ok((_, snap)) => {
                checks.push(Check::ok(
                    "state",
                    format!(
                        "{}: integrity ok, lineage {}, serial {}, revision {}, {} services",
                        state_path.display(),
                        snap.lineage.as_deref().unwrap_or("-"),
                        snap.serial,
                        snap.revision,
                        snap.services.len()
                    ),
                ));
                match &snap.lock {
                    None => checks.push(Check::ok("lock", "free")),
                    Some(l) => checks.push(Check::warn(
                        "lock",
                        format!(
                            "held by `{}` (pid {} on {}) since {}",
                            l.command, l.pid, l.host, l.acquired_at
                        ),
                        "wait for that run; if it is gone, `deploy-code state unlock` releases it",
                    )),
                }
                if !snap.open_intents.is_empty() {
                    checks.push(Check::warn(
                        "journal",
                        format!(
                            "{} side effect(s) of an interrupted run were never closed",
                            snap.open_intents.len()
                        ),
                        "run `deploy-code plan` to see what runs, then `deploy-code apply` to reconcile",
                    ));
                }
            }
            Err(e) => checks.push(Check::fail(
                "state",
                format!("{}: {e}", state_path.display()),
                miette::Diagnostic::help(&e)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| {
                        "restore a backup with `deploy-code state restore FILE`".into()
                    }),
            )),
        }
    }

    // Each prerequisite of a backend (an engine that answers) once: a
    // failure when a service of the configuration needs it, else a warning.
    let registry = crate::backends::Registry::with_all();
    let mut seen = std::collections::BTreeSet::new();
    for b in registry.all() {
        let Some(pre) = b.prerequisite() else {
            continue;
        };
        if !seen.insert(pre.name) {
            continue;
        }
        let needed = loaded.as_ref().is_some_and(|l| {
            l.desired.services.values().any(|s| {
                registry
                    .get(s.backend)
                    .and_then(|sb| sb.prerequisite())
                    .is_some_and(|p| p.name == pre.name)
            })
        });
        match check_prerequisite(inv, b.as_ref()) {
            Ok(info) => checks.push(Check::ok(pre.name, info)),
            Err(e) if needed => checks.push(Check::fail(pre.name, e, pre.needed_help)),
            Err(e) => checks.push(Check::warn(pre.name, e, pre.optional_help)),
        }
    }

    let gpus_needed: u32 = loaded
        .as_ref()
        .map(|l| {
            l.desired
                .services
                .values()
                .map(|s| s.resources.gpu_count * s.replicas)
                .sum()
        })
        .unwrap_or(0);
    match crate::inventory::nvml_probe() {
        Ok(gpus) if gpus.is_empty() && gpus_needed > 0 => checks.push(Check::fail(
            "gpus",
            format!("NVML found no GPU; the config needs {gpus_needed}"),
            "check the NVIDIA driver with nvidia-smi",
        )),
        Ok(gpus) => checks.push(Check::ok(
            "gpus",
            if gpus.is_empty() {
                "NVML present, no GPU".to_owned()
            } else {
                gpus.iter()
                    .map(|g| format!("#{} {} ({} MiB)", g.index, g.model, g.memory_mb))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        )),
        Err(crate::inventory::NvmlAbsent::NoLibrary(e)) if gpus_needed > 0 => checks.push(Check::fail(
            "gpus",
            format!("no NVIDIA library or driver ({e}); the config needs {gpus_needed} GPU(s)"),
            "install the NVIDIA driver on this host, or plan with --inventory for a remote host",
        )),
        Err(crate::inventory::NvmlAbsent::NoLibrary(_)) => {
            checks.push(Check::ok("gpus", "no NVIDIA library: zero GPUs (none needed)"))
        }
        Err(crate::inventory::NvmlAbsent::Unusable(e)) => checks.push(Check::warn(
            "gpus",
            format!("NVML is present but failed: {e}"),
            "check the NVIDIA driver with nvidia-smi",
        )),
    }

    if let Some(l) = &loaded {
        for (name, dir) in [
            ("data_dir", &l.desired.settings.data_dir),
            ("log_dir", &l.desired.settings.log_dir),
        ] {
            match writable(dir) {
                Ok(d) => checks.push(Check::ok(name, format!("{d}: writable"))),
                Err(e) => checks.push(Check::fail(
                    name,
                    format!("not writable: {e}"),
                    format!(
                        "create it with the right owner, or set `infrastructure.storage.{name}`"
                    ),
                )),
            }
        }
    }
    checks
}

fn check_prerequisite(
    inv: &Invocation,
    b: &dyn crate::backends::Backend,
) -> Result<String, String> {
    let rt = inv.runtime().map_err(|f| f.report.to_string())?;
    rt.block_on(b.check_prerequisite())
}

pub fn doctor(inv: &Invocation) -> Result<CommandOutcome, Failure> {
    let doc = DoctorDoc::new(run_checks(inv));
    if inv.format() == Format::Json {
        inv.out.data_lossy(&format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).expect("JSON")
        ));
    } else {
        inv.out.data_lossy(&doc.human());
    }
    Ok(if doc.healthy {
        CommandOutcome::Done
    } else {
        CommandOutcome::Problems
    })
}
