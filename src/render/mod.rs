//! Views: plan, state, inventory and apply events as human text, JSON (with a
//! `format_version`) and Markdown; errors as text and as JSON, rendered only here.

pub mod doctor;
pub mod plan;
pub mod state;
pub mod status;
pub mod validate;
mod window;

/// An error as a person reads it on a terminal: miette's report through the
/// handler `cli` installs (colors, width), redacted.
pub(crate) fn diagnostic_human(report: &miette::Report) -> String {
    let text = match window::fitted(report.as_ref()) {
        Some(fitted) => format!("{:?}", miette::Report::new(fitted)),
        None => format!("{report:?}"),
    };
    crate::redact::text(&text).into_owned()
}

/// An error as plain text, without colors or links (the server's status
/// messages), trimmed and redacted.
pub(crate) fn diagnostic_plain(diag: &dyn miette::Diagnostic) -> String {
    let mut text = String::new();
    let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::none());
    let fitted = window::fitted(diag);
    let shown = fitted
        .as_ref()
        .map_or(diag, |f| f as &dyn miette::Diagnostic);
    if handler.render_report(&mut text, shown).is_err() {
        text = diag.to_string();
    }
    crate::redact::text(text.trim()).into_owned()
}

/// A diagnostic's code as documents show it: without the `deploy_code::`
/// prefix (`E004`, `E002::unknown_key`).
pub(crate) fn diagnostic_code(diag: &dyn miette::Diagnostic) -> Option<String> {
    diag.code().map(|c| c.to_string()).map(|c| {
        c.strip_prefix("deploy_code::")
            .map(str::to_owned)
            .unwrap_or(c)
    })
}

/// Diagnostics as one JSON document: `{"format_version":1,"diagnostics":[{code,
/// severity, message, file, line, column, help}]}`. A diagnostic with related
/// diagnostics (a config with several problems) lists each of them.
pub fn diagnostics_json(diag: &dyn miette::Diagnostic) -> String {
    let mut out = Vec::new();
    collect(diag, &mut out);
    serde_json::to_string_pretty(&serde_json::json!({
        "format_version": 1,
        "diagnostics": out,
    }))
    .expect("JSON always serializes")
}

fn collect(diag: &dyn miette::Diagnostic, out: &mut Vec<serde_json::Value>) {
    let related: Vec<&dyn miette::Diagnostic> =
        diag.related().map(|r| r.collect()).unwrap_or_default();
    if !related.is_empty() {
        for r in related {
            collect(r, out);
        }
        return;
    }
    let code = diagnostic_code(diag);
    let help = diag.help().map(|h| h.to_string());
    let (mut file, mut line, mut column) = (None, None, None);
    if let (Some(src), Some(label)) = (diag.source_code(), diag.labels().and_then(|mut l| l.next()))
        && let Ok(contents) = src.read_span(label.inner(), 0, 0)
    {
        file = contents.name().map(str::to_owned);
        line = Some(contents.line() + 1);
        column = Some(contents.column() + 1);
    }
    out.push(serde_json::json!({
        "code": code,
        "severity": match diag.severity() {
            Some(miette::Severity::Warning) => "warning",
            Some(miette::Severity::Advice) => "advice",
            _ => "error",
        },
        "message": diag.to_string(),
        "file": file,
        "line": line,
        "column": column,
        "help": help,
    }));
}
