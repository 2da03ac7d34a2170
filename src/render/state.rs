//! Views of the state file for `deploy-code state ...`: JSON documents (each with
//! a `format_version`, described by `schemas/state.schema.json`) and plain
//! aligned text. These output types are built from the state's records and are
//! not the database rows: the wire format can stay stable while the schema moves.
//!
//! Nothing here reveals a secret: sensitive values of a spec are shown as
//! `(sensitive)`, not even as their digest.

use std::fmt::Write as _;

use owo_colors::OwoColorize;
use schemars::JsonSchema;
use serde::Serialize;

use crate::state::{
    AuditRecord, Deployment, Event, Handle, LockInfo, Outcome, ServiceRecord, ServiceStatus,
    Snapshot,
};

/// The version of every state JSON document; raised on an incompatible change.
pub(crate) const STATE_FORMAT_VERSION: u32 = 1;

/// Every JSON document a `state` command prints, told apart by `kind`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum StateDocument {
    /// `state list`.
    List(ListDoc),
    /// `state show`.
    Summary(SummaryDoc),
    /// `state show SERVICE`.
    Service(ServiceDoc),
    /// `state show --revision N`.
    Deployment(DeploymentDoc),
    /// `state history`.
    History(HistoryDoc),
    /// `state audit`.
    Audit(AuditDoc),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusView {
    Ready,
    Tainted,
    Pending,
}

impl From<ServiceStatus> for StatusView {
    fn from(s: ServiceStatus) -> Self {
        match s {
            ServiceStatus::Ready => StatusView::Ready,
            ServiceStatus::Tainted => StatusView::Tainted,
            ServiceStatus::Pending => StatusView::Pending,
        }
    }
}

impl StatusView {
    fn as_str(self) -> &'static str {
        match self {
            StatusView::Ready => "ready",
            StatusView::Tainted => "tainted",
            StatusView::Pending => "pending",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OutcomeView {
    InProgress,
    Succeeded,
    Failed,
    RolledBack,
    RollbackFailed,
}

impl From<Outcome> for OutcomeView {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::InProgress => OutcomeView::InProgress,
            Outcome::Succeeded => OutcomeView::Succeeded,
            Outcome::Failed => OutcomeView::Failed,
            Outcome::RolledBack => OutcomeView::RolledBack,
            Outcome::RollbackFailed => OutcomeView::RollbackFailed,
        }
    }
}

impl OutcomeView {
    fn as_str(self) -> &'static str {
        match self {
            OutcomeView::InProgress => "in progress",
            OutcomeView::Succeeded => "succeeded",
            OutcomeView::Failed => "failed",
            OutcomeView::RolledBack => "rolled back",
            OutcomeView::RollbackFailed => "rollback failed",
        }
    }
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct ListDoc {
    pub format_version: u32,
    /// The state file.
    pub state: String,
    pub services: Vec<ServiceRow>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct ServiceRow {
    pub name: String,
    /// `process`, `docker` or `swarm`.
    pub backend: String,
    pub status: StatusView,
    /// The deployment that last changed it.
    pub revision: u64,
    /// How many running instances the state knows (processes, containers, a Swarm service).
    pub instances: usize,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct StatusCounts {
    pub ready: usize,
    pub tainted: usize,
    pub pending: usize,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct LockView {
    pub host: String,
    pub pid: u32,
    pub command: String,
    /// RFC 3339 UTC.
    pub acquired_at: String,
}

impl From<&LockInfo> for LockView {
    fn from(l: &LockInfo) -> Self {
        LockView {
            host: l.host.clone(),
            pid: l.pid,
            command: l.command.clone(),
            acquired_at: l.acquired_at.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct IntentView {
    pub id: i64,
    pub revision: u64,
    pub service: String,
    pub action: String,
    pub started_at: String,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct SummaryDoc {
    pub format_version: u32,
    pub state: String,
    /// False when no state file exists yet.
    pub exists: bool,
    /// The random id given to the state when it was created.
    pub lineage: Option<String>,
    /// Raised by every committed change.
    pub serial: u64,
    /// The newest deployment revision (0 when none).
    pub revision: u64,
    pub schema_version: u32,
    pub services: usize,
    pub counts: StatusCounts,
    /// Who holds the lock, if anyone.
    pub lock: Option<LockView>,
    /// Side effects started by a run that never recorded their end.
    pub open_intents: Vec<IntentView>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct GpuView {
    pub host: String,
    pub index: u32,
    pub uuid: Option<String>,
    pub model: String,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum HandleView {
    Process {
        replica: u32,
        pid: u32,
        start_time: u64,
        log_path: String,
    },
    Container {
        replica: u32,
        id: String,
        name: String,
    },
    SwarmService {
        id: String,
        name: String,
    },
}

impl From<&Handle> for HandleView {
    /// Through the handle's serialized form (the state's), which this view
    /// spells the same way.
    fn from(h: &Handle) -> Self {
        serde_json::to_value(h)
            .and_then(serde_json::from_value)
            .expect("a handle serializes as its view")
    }
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ServiceView {
    pub name: String,
    pub backend: String,
    pub status: StatusView,
    pub revision: u64,
    pub spec_hash: String,
    pub created_at: String,
    pub updated_at: String,
    /// The applied spec; sensitive values read `(sensitive)`.
    pub spec: serde_json::Value,
    pub handles: Vec<HandleView>,
    pub gpus: Vec<GpuView>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct EventView {
    pub id: i64,
    pub revision: u64,
    pub at: String,
    pub service: Option<String>,
    pub kind: String,
    pub outcome: String,
    pub message: String,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        EventView {
            id: e.id,
            revision: e.revision,
            at: e.at.clone(),
            service: e.service.as_ref().map(|s| s.to_string()),
            kind: e.kind.as_str().to_owned(),
            outcome: e.outcome.as_str().to_owned(),
            message: e.message.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct ServiceDoc {
    pub format_version: u32,
    pub state: String,
    pub service: ServiceView,
    /// Newest first.
    pub events: Vec<EventView>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct DeploymentView {
    pub revision: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub user: String,
    pub host: String,
    pub command: String,
    pub outcome: OutcomeView,
    pub config_hash: String,
    /// The rendered configuration, secrets redacted.
    pub config_snapshot: String,
    pub plan_summary: serde_json::Value,
    pub evidence: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct DeploymentDoc {
    pub format_version: u32,
    pub state: String,
    pub deployment: DeploymentView,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct DeploymentRow {
    pub revision: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub user: String,
    pub host: String,
    pub command: String,
    pub outcome: OutcomeView,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct HistoryDoc {
    pub format_version: u32,
    pub state: String,
    /// Newest first.
    pub deployments: Vec<DeploymentRow>,
}

/// The calls made to `deploy-code serve`, newest first.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct AuditDoc {
    pub format_version: u32,
    pub state: String,
    pub calls: Vec<AuditRow>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct AuditRow {
    pub at: String,
    /// The token's `sub` claim (as claimed, for a refused token).
    pub subject: String,
    pub role: String,
    /// The remote call, e.g. `Status`, `Apply`.
    pub call: String,
    /// `succeeded`, `failed`, `unauthenticated` or `denied`.
    pub outcome: String,
    pub detail: String,
}

pub(crate) fn audit_doc(state: &str, events: &[(Event, AuditRecord)]) -> AuditDoc {
    AuditDoc {
        format_version: STATE_FORMAT_VERSION,
        state: state.to_owned(),
        calls: events
            .iter()
            .map(|(e, r)| AuditRow {
                at: e.at.clone(),
                subject: r.subject.clone(),
                role: r.role.clone(),
                call: r.call.clone(),
                outcome: e.outcome.as_str().to_owned(),
                detail: crate::redact::text(&r.detail).into_owned(),
            })
            .collect(),
    }
}

pub(crate) fn audit_human(doc: &AuditDoc, color: bool) -> String {
    if doc.calls.is_empty() {
        return format!(
            "no calls to `deploy-code serve` in the state `{}`\n",
            doc.state
        );
    }
    let rows: Vec<Vec<String>> = doc
        .calls
        .iter()
        .map(|c| {
            vec![
                c.at.clone(),
                c.subject.clone(),
                c.role.clone(),
                c.call.clone(),
                c.outcome.clone(),
                c.detail.clone(),
            ]
        })
        .collect();
    table(
        &["AT", "SUBJECT", "ROLE", "CALL", "OUTCOME", "DETAIL"],
        &rows,
        &|r, c, text| {
            if c == 4 && color && doc.calls[r].outcome != "succeeded" {
                text.red().to_string()
            } else {
                text.to_owned()
            }
        },
        color,
    )
}

/// The JSON Schema of every state document (`schemas/state.schema.json`).
pub fn state_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(StateDocument)).expect("a schema serializes")
}

/// Replaces every `{"sensitive": "<digest>"}` by `"(sensitive)"`.
pub(crate) fn redact(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            if map.len() == 1 && map.get("sensitive").is_some_and(Value::is_string) {
                return Value::String("(sensitive)".into());
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, redact(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

pub(crate) fn list_doc(state: &str, snap: &Snapshot) -> ListDoc {
    ListDoc {
        format_version: STATE_FORMAT_VERSION,
        state: state.to_owned(),
        services: snap
            .services
            .values()
            .map(|r| ServiceRow {
                name: r.name.to_string(),
                backend: r.backend.to_string(),
                status: r.status.into(),
                revision: r.revision,
                instances: r.handles.len(),
                updated_at: r.updated_at.clone(),
            })
            .collect(),
    }
}

/// A recorded plan summary in words: "2 to create, 1 to replace, …".
fn plan_words(summary: &serde_json::Value) -> String {
    let count = |k: &str| summary.get(k).and_then(serde_json::Value::as_u64);
    let words: Vec<String> = [
        ("create", "to create"),
        ("replace", "to replace"),
        ("update", "to update"),
        ("destroy", "to destroy"),
        ("no_op", "unchanged"),
    ]
    .iter()
    .filter_map(|(k, w)| count(k).map(|n| format!("{n} {w}")))
    .collect();
    if words.is_empty() {
        summary.to_string()
    } else {
        words.join(", ")
    }
}

pub(crate) fn summary_doc(state: &str, exists: bool, snap: &Snapshot) -> SummaryDoc {
    let mut counts = StatusCounts::default();
    for r in snap.services.values() {
        match r.status {
            ServiceStatus::Ready => counts.ready += 1,
            ServiceStatus::Tainted => counts.tainted += 1,
            ServiceStatus::Pending => counts.pending += 1,
        }
    }
    SummaryDoc {
        format_version: STATE_FORMAT_VERSION,
        state: state.to_owned(),
        exists,
        lineage: snap.lineage.clone(),
        serial: snap.serial,
        revision: snap.revision,
        schema_version: snap.schema_version,
        services: snap.services.len(),
        counts,
        lock: snap.lock.as_ref().map(LockView::from),
        open_intents: snap
            .open_intents
            .iter()
            .map(|i| IntentView {
                id: i.id,
                revision: i.revision,
                service: i.service.to_string(),
                action: i.action.as_str().to_owned(),
                started_at: i.started_at.clone(),
            })
            .collect(),
    }
}

pub(crate) fn service_doc(state: &str, rec: &ServiceRecord, events: &[Event]) -> ServiceDoc {
    ServiceDoc {
        format_version: STATE_FORMAT_VERSION,
        state: state.to_owned(),
        service: ServiceView {
            name: rec.name.to_string(),
            backend: rec.backend.to_string(),
            status: rec.status.into(),
            revision: rec.revision,
            spec_hash: rec.spec_hash.clone(),
            created_at: rec.created_at.clone(),
            updated_at: rec.updated_at.clone(),
            spec: redact(rec.spec.canonical()),
            handles: rec.handles.iter().map(HandleView::from).collect(),
            gpus: rec
                .gpus
                .iter()
                .map(|g| GpuView {
                    host: g.host.clone(),
                    index: g.index,
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                })
                .collect(),
        },
        events: events.iter().map(EventView::from).collect(),
    }
}

pub(crate) fn deployment_doc(state: &str, d: &Deployment) -> DeploymentDoc {
    DeploymentDoc {
        format_version: STATE_FORMAT_VERSION,
        state: state.to_owned(),
        deployment: DeploymentView {
            revision: d.revision,
            started_at: d.started_at.clone(),
            finished_at: d.finished_at.clone(),
            user: d.user.clone(),
            host: d.host.clone(),
            command: d.command.clone(),
            outcome: d.outcome.into(),
            config_hash: d.config_hash.clone(),
            config_snapshot: d.config_snapshot.clone(),
            plan_summary: redact(d.plan_summary.clone()),
            evidence: redact(d.evidence.clone()),
        },
    }
}

pub(crate) fn history_doc(state: &str, deployments: &[Deployment]) -> HistoryDoc {
    HistoryDoc {
        format_version: STATE_FORMAT_VERSION,
        state: state.to_owned(),
        deployments: deployments
            .iter()
            .map(|d| DeploymentRow {
                revision: d.revision,
                started_at: d.started_at.clone(),
                finished_at: d.finished_at.clone(),
                user: d.user.clone(),
                host: d.host.clone(),
                command: d.command.clone(),
                outcome: d.outcome.into(),
            })
            .collect(),
    }
}

/// Pretty JSON of a document.
pub(crate) fn to_json(doc: &StateDocument) -> String {
    serde_json::to_string_pretty(doc).expect("a state document serializes")
}

fn paint_status(s: StatusView, text: &str, color: bool) -> String {
    if !color {
        return text.to_owned();
    }
    match s {
        StatusView::Ready => text.green().to_string(),
        StatusView::Tainted => text.red().to_string(),
        StatusView::Pending => text.yellow().to_string(),
    }
}

fn paint_outcome(o: OutcomeView, text: &str, color: bool) -> String {
    if !color {
        return text.to_owned();
    }
    match o {
        OutcomeView::Succeeded => text.green().to_string(),
        OutcomeView::InProgress => text.yellow().to_string(),
        _ => text.red().to_string(),
    }
}

/// The most characters a cell of a plain table shows (the JSON documents
/// show every value whole): a stored value of any size makes a table of
/// bounded width.
const CELL_MAX_CHARS: usize = 1024;

/// A value as one cell of a plain table: control characters (a newline, a
/// terminal escape) and the marks that reorder text written as escapes,
/// so that a row stays one line and a stored value cannot steer the
/// terminal; at most [`CELL_MAX_CHARS`] characters, then how many more.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(CELL_MAX_CHARS));
    for (shown, (i, c)) in text.char_indices().enumerate() {
        if shown >= CELL_MAX_CHARS {
            let _ = write!(out, "… ({} characters more)", text[i..].chars().count());
            break;
        }
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` and spaces up to `width` characters. Padding by hand: a format
/// width above 65535 panics, and a cell may be that wide.
fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    let mut out = String::with_capacity(text.len() + width.saturating_sub(len));
    out.push_str(text);
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
    out
}

/// A plain table: columns padded to their widest cell (colour added after
/// padding), the last one not padded; each cell as [`cell`] shows it.
pub(crate) fn table(
    headers: &[&str],
    rows: &[Vec<String>],
    paint: &dyn Fn(usize, usize, &str) -> String,
    color: bool,
) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let last = headers.len().saturating_sub(1);
    let width = |i: usize| {
        if i == last {
            0
        } else {
            widths.get(i).copied().unwrap_or(0)
        }
    };
    let mut out = String::new();
    let line = |cells: Vec<String>| -> String { cells.join("  ").trim_end().to_owned() };
    let head: Vec<String> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let padded = pad(h, width(i));
            if color {
                padded.bold().to_string()
            } else {
                padded
            }
        })
        .collect();
    out.push_str(&line(head));
    out.push('\n');
    for (r, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| paint(r, i, &pad(c, width(i))))
            .collect();
        out.push_str(&line(cells));
        out.push('\n');
    }
    out
}

fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let _ = writeln!(out, "{}  {v}", pad(k, w));
    }
    out
}

pub(crate) fn list_human(doc: &ListDoc, color: bool) -> String {
    if doc.services.is_empty() {
        return format!("no services in the state `{}`\n", doc.state);
    }
    let rows: Vec<Vec<String>> = doc
        .services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.backend.clone(),
                s.status.as_str().to_owned(),
                s.revision.to_string(),
                s.instances.to_string(),
                s.updated_at.clone(),
            ]
        })
        .collect();
    let statuses: Vec<StatusView> = doc.services.iter().map(|s| s.status).collect();
    table(
        &[
            "SERVICE",
            "BACKEND",
            "STATUS",
            "REVISION",
            "INSTANCES",
            "UPDATED",
        ],
        &rows,
        &|r, c, text| {
            if c == 2 {
                paint_status(statuses[r], text, color)
            } else {
                text.to_owned()
            }
        },
        color,
    )
}

fn lock_line(lock: &Option<LockView>) -> String {
    match lock {
        None => "free".into(),
        Some(l) => format!(
            "held by `{}` (pid {} on host `{}`) since {}",
            l.command, l.pid, l.host, l.acquired_at
        ),
    }
}

pub(crate) fn summary_human(doc: &SummaryDoc, _color: bool) -> String {
    if !doc.exists {
        return format!(
            "no state at `{}` yet: `deploy-code apply` creates it\n",
            doc.state
        );
    }
    let mut out = fields(&[
        ("state", doc.state.clone()),
        (
            "lineage",
            doc.lineage.clone().unwrap_or_else(|| "(none yet)".into()),
        ),
        ("serial", doc.serial.to_string()),
        ("revision", doc.revision.to_string()),
        ("schema", doc.schema_version.to_string()),
        (
            "services",
            format!(
                "{} ({} ready, {} tainted, {} pending)",
                doc.services, doc.counts.ready, doc.counts.tainted, doc.counts.pending
            ),
        ),
        ("lock", lock_line(&doc.lock)),
    ]);
    if !doc.open_intents.is_empty() {
        out.push_str(
            "\nunfinished actions (a run was interrupted; the next apply reconciles them):\n",
        );
        for i in &doc.open_intents {
            let _ = writeln!(
                out,
                "  #{} revision {}: {} `{}` since {}",
                i.id, i.revision, i.action, i.service, i.started_at
            );
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect::<String>()
}

pub(crate) fn service_human(doc: &ServiceDoc, color: bool) -> String {
    let s = &doc.service;
    let mut out = fields(&[
        ("service", s.name.clone()),
        ("backend", s.backend.clone()),
        ("status", paint_status(s.status, s.status.as_str(), color)),
        ("revision", s.revision.to_string()),
        ("spec hash", s.spec_hash.clone()),
        ("created", s.created_at.clone()),
        ("updated", s.updated_at.clone()),
    ]);
    out.push_str("\nspec:\n");
    out.push_str(&indent(
        serde_yaml::to_string(&s.spec)
            .unwrap_or_default()
            .trim_end(),
    ));
    out.push_str("\nhandles:\n");
    if s.handles.is_empty() {
        out.push_str("  (none)\n");
    }
    for h in &s.handles {
        let line = match h {
            HandleView::Process {
                replica,
                pid,
                start_time,
                log_path,
            } => format!(
                "process replica {replica}: pid {pid} (started at tick {start_time}), log {log_path}"
            ),
            HandleView::Container { replica, id, name } => {
                format!("container replica {replica}: {name} ({})", short(id))
            }
            HandleView::SwarmService { id, name } => {
                format!("swarm service {name} ({})", short(id))
            }
        };
        let _ = writeln!(out, "  {line}");
    }
    if !s.gpus.is_empty() {
        out.push_str("\ngpus:\n");
        for g in &s.gpus {
            let _ = writeln!(out, "  {} #{} {}", g.host, g.index, g.model);
        }
    }
    out.push_str("\nrecent events (newest first):\n");
    if doc.events.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let rows: Vec<Vec<String>> = doc
            .events
            .iter()
            .map(|e| {
                vec![
                    e.at.clone(),
                    e.revision.to_string(),
                    e.kind.clone(),
                    e.outcome.clone(),
                    e.message.clone(),
                ]
            })
            .collect();
        out.push_str(&indent(&table(
            &["AT", "REVISION", "KIND", "OUTCOME", "MESSAGE"],
            &rows,
            &|_, _, t| t.to_owned(),
            color,
        )));
    }
    out
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

pub(crate) fn deployment_human(doc: &DeploymentDoc, color: bool) -> String {
    let d = &doc.deployment;
    let mut out = fields(&[
        ("revision", d.revision.to_string()),
        (
            "outcome",
            paint_outcome(d.outcome, d.outcome.as_str(), color),
        ),
        ("started", d.started_at.clone()),
        (
            "finished",
            d.finished_at.clone().unwrap_or_else(|| "-".into()),
        ),
        ("user", d.user.clone()),
        ("host", d.host.clone()),
        ("command", d.command.clone()),
        ("config hash", d.config_hash.clone()),
        ("plan", plan_words(&d.plan_summary)),
    ]);
    if !d.evidence.is_null() {
        out.push_str("\nevidence:\n");
        out.push_str(&indent(
            serde_yaml::to_string(&d.evidence)
                .unwrap_or_default()
                .trim_end(),
        ));
    }
    out.push_str("\nconfiguration (secrets redacted):\n");
    out.push_str(&indent(d.config_snapshot.trim_end()));
    out
}

pub(crate) fn history_human(doc: &HistoryDoc, color: bool) -> String {
    if doc.deployments.is_empty() {
        return format!("no deployments in the state `{}`\n", doc.state);
    }
    let rows: Vec<Vec<String>> = doc
        .deployments
        .iter()
        .map(|d| {
            vec![
                d.revision.to_string(),
                d.started_at.clone(),
                d.outcome.as_str().to_owned(),
                d.user.clone(),
                d.host.clone(),
                d.command.clone(),
            ]
        })
        .collect();
    let outcomes: Vec<OutcomeView> = doc.deployments.iter().map(|d| d.outcome).collect();
    table(
        &["REVISION", "STARTED", "OUTCOME", "USER", "HOST", "COMMAND"],
        &rows,
        &|r, c, text| {
            if c == 2 {
                paint_outcome(outcomes[r], text, color)
            } else {
                text.to_owned()
            }
        },
        color,
    )
}
