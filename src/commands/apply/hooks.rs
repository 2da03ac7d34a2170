//! What `apply`, `destroy` and `rollback` tell their hooks, and how the
//! hooks' outcomes are shown.

use super::*;

/// The run's summary that hooks receive (redacted by `hooks::run`).
#[derive(serde::Serialize)]
pub(super) struct HookPayload<'a> {
    format_version: u32,
    event: &'static str,
    at: String,
    project: &'a str,
    environment: &'a str,
    command: String,
    destroy: bool,
    summary: &'a plan::Summary,
    phases: &'a [Vec<crate::model::ServiceName>],
    changes: Vec<HookChange<'a>>,
    revision: Option<u64>,
    outcome: Option<Outcome>,
    elapsed_ms: Option<u64>,
    failures: Vec<HookFailure<'a>>,
}

#[derive(serde::Serialize)]
pub(super) struct HookChange<'a> {
    service: &'a crate::model::ServiceName,
    action: plan::Action,
}

#[derive(serde::Serialize)]
pub(super) struct HookFailure<'a> {
    service: String,
    reason: &'a str,
    log_tail: &'a [String],
}

pub(super) fn hook_payload(
    when: When,
    p: &Plan,
    loaded: &LoadedConfig,
    report: Option<&apply::Report>,
) -> serde_json::Value {
    let settings = &loaded.desired.settings;
    let payload = HookPayload {
        format_version: 1,
        event: when.as_str(),
        at: apply::now_rfc3339(),
        project: &settings.project,
        environment: &settings.environment,
        command: command_line(),
        destroy: p.destroy_all,
        summary: &p.summary,
        phases: &p.phases,
        changes: p
            .changes
            .iter()
            .filter(|c| c.action != plan::Action::NoOp)
            .map(|c| HookChange {
                service: &c.service,
                action: c.action,
            })
            .collect(),
        revision: report.map(|r| r.revision),
        outcome: report.map(|r| r.outcome),
        elapsed_ms: report.map(|r| r.elapsed_ms),
        failures: report
            .map(|r| {
                r.failures
                    .iter()
                    .map(|f| HookFailure {
                        service: f.service.to_string(),
                        reason: &f.reason,
                        log_tail: &f.log_tail,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    serde_json::to_value(&payload).expect("a hook payload always serializes")
}

/// Says what each hook did: a JSON line with `--format json`, else a line on stderr.
pub(super) fn show_hooks(inv: &Invocation, results: &[crate::hooks::Outcome]) {
    for r in results {
        if inv.format() == Format::Json {
            inv.out.data_lossy(&format!(
                "{}\n",
                serde_json::to_string(r).unwrap_or_default()
            ));
        } else {
            let line = format!(
                "hook {} `{}`: {}: {}",
                r.when.as_str(),
                r.hook,
                if r.ok { "ok" } else { "FAILED" },
                r.detail
            );
            if r.ok {
                inv.out.status(&line);
            } else {
                inv.out.error(&line);
            }
        }
    }
}
