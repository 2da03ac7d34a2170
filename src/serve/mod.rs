//! `deploy-code serve`: the remote control of one configuration and its
//! state, over gRPC (`proto/deploy_code/v1/deploy_code.proto`).
//!
//! Every call runs the same command function as the CLI (`commands::*`), on a
//! thread of its own, with the command's `--format json` output captured
//! (`Output::captured`) and returned, or, for the events of a run, streamed
//! to every `WatchEvents` subscriber as it is printed. The state lock is taken
//! by the command itself, so it is held only while a mutating call runs and a
//! second one is refused with E011, as a second CLI would be. Every call,
//! refused ones too, is written to the state's audit events.
//!
//! This module never decides anything about deployments; `auth` decides who
//! may call what.

pub mod auth;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::commands::{self, CommandOutcome, Globals, Invocation};
use crate::error::{Code, Failure, Plain};
use crate::output::Output;
use crate::state::EventOutcome;

/// The generated messages, server and client of `deploy_code.v1`: generated
/// from `proto/` and committed (`proto/generated/`), so that a build needs no
/// protobuf compiler; `tests/it/ops/proto.rs` holds the file to the `.proto`.
pub mod pb {
    include!("../../proto/generated/deploy_code.v1.rs");
}

use pb::deploy_code_server::{DeployCode, DeployCodeServer};

/// Metadata key of the error code a failed call carries (`E011`, ...).
pub(crate) const CODE_KEY: &str = "deploy-code-code";
/// Metadata key of the exit code the CLI would have returned.
pub(crate) const EXIT_KEY: &str = "deploy-code-exit";

/// The most service names one call may carry (`targets`, `services`); each
/// must be a service name (at most 63 bytes). A configuration's services
/// are all planned by naming none.
pub(crate) const MAX_NAMES: usize = 256;
/// The longest `Backup` path, bytes (Linux's `PATH_MAX`).
pub(crate) const MAX_PATH_BYTES: usize = 4096;
/// The largest `limit` of `History` and `Audit`.
pub(crate) const MAX_LIMIT: u64 = 10_000;
/// The longest status message a failed call returns, bytes: it rides in the
/// trailing metadata, which clients bound (gRPC's own default is 8 KiB for
/// all of it). The audit keeps a shorter cut (`state::AUDIT_DETAIL_MAX`).
pub(crate) const MAX_MESSAGE_BYTES: usize = 6 * 1024;

/// Whether `names` (the field `field` of a call) is within what a call may
/// carry: at most [`MAX_NAMES`] names, each a service name. The refusal
/// says why without repeating what was sent.
pub(crate) fn check_names(field: &str, names: &[String]) -> Result<(), String> {
    if names.len() > MAX_NAMES {
        return Err(format!(
            "`{field}` names {} services; a call may name at most {MAX_NAMES} (name none to mean all)",
            names.len()
        ));
    }
    for (i, n) in names.iter().enumerate() {
        if let Err(why) = crate::model::ServiceName::parse(n) {
            return Err(format!("`{field}[{i}]` is not a service name: {why}"));
        }
    }
    Ok(())
}

/// The events of runs: those of the run under way, kept for late
/// subscribers, and a broadcast of every new one.
pub(crate) struct Hub {
    inner: Mutex<HubInner>,
    tx: broadcast::Sender<pb::Event>,
    /// How many runs are under way: a stream told to stop at shutdown
    /// still delivers the events of a run under way (a SIGTERM interrupts
    /// the run, whose rollback is what a subscriber most needs to see).
    runs: tokio::sync::watch::Sender<usize>,
}

#[derive(Default)]
struct HubInner {
    /// Runs under way (a second one is refused by the state lock, but may
    /// start before it is).
    running: usize,
    current: Vec<pb::Event>,
}

impl Hub {
    fn new() -> Hub {
        Hub {
            inner: Mutex::new(HubInner::default()),
            tx: broadcast::channel(4096).0,
            runs: tokio::sync::watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(&self) {
        let mut i = self.lock();
        if i.running == 0 {
            i.current.clear();
        }
        i.running += 1;
        self.runs.send_replace(i.running);
    }

    fn end(&self) {
        let mut i = self.lock();
        i.running = i.running.saturating_sub(1);
        self.runs.send_replace(i.running);
    }

    fn publish(&self, e: pb::Event) {
        let mut i = self.lock();
        i.current.push(e.clone());
        // No subscriber is not an error.
        let _ = self.tx.send(e);
    }

    /// The events of the run under way so far, and a receiver of every
    /// later one: nothing is lost or repeated between the two.
    fn subscribe(&self) -> (Vec<pb::Event>, broadcast::Receiver<pb::Event>) {
        let i = self.lock();
        let replay = if i.running > 0 {
            i.current.clone()
        } else {
            Vec::new()
        };
        (replay, self.tx.subscribe())
    }
}

/// What one call of a command printed and returned.
struct Ran {
    result: Result<CommandOutcome, Failure>,
    output: String,
    finished: Option<serde_json::Value>,
}

/// The service: the CLI's global options (configuration, state, vars),
/// the gate and the event hub.
pub struct Service {
    globals: Globals,
    state: PathBuf,
    gate: auth::Gate,
    hub: Arc<Hub>,
    audit_log: crate::state::AuditLog,
    /// Told when the server shuts down: event streams end then, so that a
    /// graceful shutdown does not wait on them forever.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Service {
    /// Opens the state's audit log (creating the state when it is new).
    pub fn new(
        globals: Globals,
        state: PathBuf,
        gate: auth::Gate,
    ) -> Result<Service, crate::state::StateError> {
        Ok(Service {
            audit_log: crate::state::AuditLog::open(&state)?,
            globals,
            state,
            gate,
            hub: Arc::new(Hub::new()),
            stopping: tokio::sync::watch::channel(false).0,
        })
    }

    /// The options of a call's command: those of the server, except that
    /// a second run is refused at once, as a second CLI without
    /// `--lock-timeout` is.
    fn globals(&self) -> Globals {
        Globals {
            lock_timeout: None,
            ..self.globals.clone()
        }
    }

    fn record(&self, caller: &auth::Caller, call: &str, outcome: EventOutcome, detail: &str) {
        let record = crate::state::AuditRecord {
            subject: caller.subject.clone(),
            role: caller.role.clone(),
            call: call.to_owned(),
            detail: detail.to_owned(),
        };
        if let Err(e) = self.audit_log.record(&record, outcome) {
            tracing::warn!("the audit event of `{call}` was not recorded: {e}");
        }
    }

    /// Admits the call or refuses it with the status that says why; a
    /// refusal is audited here.
    fn admit<T>(
        &self,
        req: &Request<T>,
        call: &str,
        permission: &str,
    ) -> Result<auth::Caller, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.gate
            .admit(header, call, permission)
            .map_err(|(caller, refusal)| {
                // A token may claim roles without end; a refusal names them.
                let bounded = |m: String| crate::state::cut(&m, MAX_MESSAGE_BYTES).into_owned();
                let (outcome, status) = match refusal {
                    auth::Refusal::Unauthenticated(m) => (
                        EventOutcome::Unauthenticated,
                        Status::unauthenticated(bounded(m)),
                    ),
                    auth::Refusal::Denied(m) => {
                        (EventOutcome::Denied, Status::permission_denied(bounded(m)))
                    }
                };
                self.record(&caller, call, outcome, status.message());
                status
            })
    }

    /// Refuses a call whose arguments are past what a call may carry
    /// (`check` is the verdict), with INVALID_ARGUMENT; a refusal is audited.
    fn bounded(
        &self,
        caller: &auth::Caller,
        call: &str,
        check: Result<(), String>,
    ) -> Result<(), Status> {
        check.map_err(|why| {
            self.record(caller, call, EventOutcome::Failed, &why);
            Status::invalid_argument(why)
        })
    }

    /// Runs `f` (a command function) on a thread of its own with its output
    /// captured; with `events`, every event it prints goes to the hub as it
    /// is printed.
    async fn run<F>(&self, events: bool, f: F) -> Ran
    where
        F: FnOnce(&Invocation) -> Result<CommandOutcome, Failure> + Send + 'static,
    {
        let globals = self.globals();
        let hub = events.then(|| self.hub.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let output = Arc::new(Mutex::new(String::new()));
            let finished = Arc::new(Mutex::new(None));
            let (o, fin, h) = (output.clone(), finished.clone(), hub.clone());
            if let Some(h) = &hub {
                h.begin();
            }
            let out = Output::captured(move |text: &str| {
                let mut out = o.lock().unwrap_or_else(|e| e.into_inner());
                out.push_str(text);
                let Some(h) = &h else { return };
                // Events come one JSON object per line, a line per print.
                for line in text.lines() {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                        continue;
                    };
                    let Some(kind) = v.get("event").and_then(|k| k.as_str()) else {
                        continue;
                    };
                    if kind == "finished" {
                        *fin.lock().unwrap_or_else(|e| e.into_inner()) = Some(v.clone());
                    }
                    h.publish(pb::Event {
                        kind: kind.to_owned(),
                        json: line.to_owned(),
                    });
                }
            });
            let result = f(&Invocation::new(globals, out));
            if let Some(h) = &hub {
                h.end();
            }
            let output = std::mem::take(&mut *output.lock().unwrap_or_else(|e| e.into_inner()));
            let finished = finished.lock().unwrap_or_else(|e| e.into_inner()).take();
            let _ = tx.send(Ran {
                result,
                output,
                finished,
            });
        });
        rx.await.unwrap_or_else(|_| Ran {
            result: Err(crate::error::Plain::new(
                crate::error::Code::E016,
                "the call's worker thread ended without a result",
            )
            .into()),
            output: String::new(),
            finished: None,
        })
    }

    /// Audits the outcome and turns a failure into its status.
    fn conclude(&self, caller: &auth::Caller, call: &str, ran: &Ran) -> Result<(), Status> {
        match &ran.result {
            Ok(_) => {
                self.record(caller, call, EventOutcome::Succeeded, "");
                Ok(())
            }
            Err(f) => {
                let status = failure_status(f);
                self.record(caller, call, EventOutcome::Failed, status.message());
                Err(status)
            }
        }
    }

    fn run_reply(ran: &Ran) -> pb::RunReply {
        match &ran.finished {
            Some(v) => pb::RunReply {
                revision: v.get("revision").and_then(|r| r.as_u64()).unwrap_or(0),
                outcome: v
                    .get("outcome")
                    .and_then(|o| o.as_str())
                    .unwrap_or("")
                    .to_owned(),
                elapsed_ms: v.get("elapsed_ms").and_then(|r| r.as_u64()).unwrap_or(0),
            },
            None => pb::RunReply {
                revision: 0,
                outcome: "unchanged".into(),
                elapsed_ms: 0,
            },
        }
    }
}

/// The gRPC status of a failed command: its error code and the CLI's exit
/// code ride along as metadata; the message is the rendered diagnostic.
pub(crate) fn failure_status(f: &Failure) -> Status {
    use crate::error::Code;
    let text = crate::render::diagnostic_plain(f.report.as_ref());
    let text = crate::state::cut(&text, MAX_MESSAGE_BYTES).into_owned();
    let grpc = match f.code {
        Code::E011 => tonic::Code::Aborted,
        Code::E004 | Code::E013 => tonic::Code::FailedPrecondition,
        Code::E001 | Code::E002 => tonic::Code::InvalidArgument,
        _ => tonic::Code::Unknown,
    };
    let mut md = tonic::metadata::MetadataMap::new();
    if let Ok(v) = f.code.as_str().parse() {
        md.insert(CODE_KEY, v);
    }
    if let Ok(v) = f.exit_code.to_string().parse() {
        md.insert(EXIT_KEY, v);
    }
    Status::with_metadata(grpc, text, md)
}

/// Whether a `limit` is within [`MAX_LIMIT`].
fn check_limit(limit: u64) -> Result<(), String> {
    if limit > MAX_LIMIT {
        return Err(format!(
            "`limit` is {limit}; a call returns at most {MAX_LIMIT} entries"
        ));
    }
    Ok(())
}

type EventStream = Pin<Box<dyn futures_util::Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl DeployCode for Service {
    async fn validate(
        &self,
        req: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let caller = self.admit(&req, "Validate", "validate")?;
        let ran = self.run(false, commands::validate::run).await;
        self.conclude(&caller, "Validate", &ran)?;
        Ok(Response::new(pb::Document { json: ran.output }))
    }

    async fn plan(&self, req: Request<pb::PlanRequest>) -> Result<Response<pb::PlanReply>, Status> {
        let caller = self.admit(&req, "Plan", "plan")?;
        let r = req.into_inner();
        self.bounded(&caller, "Plan", check_names("targets", &r.targets))?;
        let dir = tempfile::tempdir().map_err(|e| Status::internal(e.to_string()))?;
        let file = dir.path().join("served.plan");
        let out = file.clone();
        let ran = self
            .run(false, move |inv| {
                commands::plan::run(
                    inv,
                    &commands::plan::PlanRequest {
                        scope: commands::Scope {
                            targets: r.targets,
                            ..commands::Scope::default()
                        },
                        destroy: r.destroy,
                        out: Some(out),
                        detailed_exitcode: false,
                    },
                )
            })
            .await;
        self.conclude(&caller, "Plan", &ran)?;
        let bytes = std::fs::read(&file)
            .map_err(|e| Status::internal(format!("the saved plan was not written: {e}")))?;
        let plan = crate::planfile::read(&file).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::PlanReply {
            plan: bytes,
            json: ran.output,
            has_changes: plan.has_changes(),
            feasible: plan.feasibility.feasible,
        }))
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::RunReply>, Status> {
        let caller = self.admit(&req, "Apply", "apply")?;
        let r = req.into_inner();
        let dir = tempfile::tempdir().map_err(|e| Status::internal(e.to_string()))?;
        let file = dir.path().join("served.plan");
        std::fs::write(&file, &r.plan).map_err(|e| Status::internal(e.to_string()))?;
        let ran = self
            .run(true, move |inv| {
                commands::apply::run(
                    inv,
                    &commands::apply::ApplyRequest {
                        plan_file: Some(file),
                        scope: commands::Scope::default(),
                        auto_approve: true,
                        force: r.force,
                        no_rollback: r.no_rollback,
                    },
                )
            })
            .await;
        self.conclude(&caller, "Apply", &ran)?;
        Ok(Response::new(Self::run_reply(&ran)))
    }

    async fn destroy(
        &self,
        req: Request<pb::DestroyRequest>,
    ) -> Result<Response<pb::RunReply>, Status> {
        let caller = self.admit(&req, "Destroy", "destroy")?;
        let r = req.into_inner();
        self.bounded(&caller, "Destroy", check_names("targets", &r.targets))?;
        let ran = self
            .run(true, move |inv| {
                commands::apply::destroy(
                    inv,
                    &commands::apply::DestroyRequest {
                        targets: r.targets,
                        auto_approve: true,
                    },
                )
            })
            .await;
        self.conclude(&caller, "Destroy", &ran)?;
        Ok(Response::new(Self::run_reply(&ran)))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RunReply>, Status> {
        let caller = self.admit(&req, "Rollback", "rollback")?;
        let r = req.into_inner();
        let ran = self
            .run(true, move |inv| {
                commands::apply::rollback(
                    inv,
                    &commands::apply::RollbackRequest {
                        to: r.revision,
                        auto_approve: true,
                    },
                )
            })
            .await;
        self.conclude(&caller, "Rollback", &ran)?;
        Ok(Response::new(Self::run_reply(&ran)))
    }

    async fn restart(
        &self,
        req: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::RunReply>, Status> {
        let caller = self.admit(&req, "Restart", "restart")?;
        let r = req.into_inner();
        self.bounded(&caller, "Restart", check_names("services", &r.services))?;
        let ran = self
            .run(true, move |inv| {
                commands::apply::restart(
                    inv,
                    &commands::apply::RestartRequest {
                        services: r.services,
                        auto_approve: true,
                    },
                )
            })
            .await;
        self.conclude(&caller, "Restart", &ran)?;
        Ok(Response::new(Self::run_reply(&ran)))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let caller = self.admit(&req, "Status", "status")?;
        let ran = self
            .run(false, |inv| {
                commands::status::status(
                    inv,
                    &commands::status::StatusRequest {
                        detailed: false,
                        watch: false,
                        interval: std::time::Duration::from_secs(2),
                    },
                )
            })
            .await;
        self.conclude(&caller, "Status", &ran)?;
        Ok(Response::new(pb::Document { json: ran.output }))
    }

    async fn health(
        &self,
        req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthReply>, Status> {
        let caller = self.admit(&req, "Health", "health")?;
        let ran = self.run(false, commands::status::health).await;
        self.conclude(&caller, "Health", &ran)?;
        let healthy = serde_json::from_str::<serde_json::Value>(&ran.output)
            .ok()
            .and_then(|v| v.get("healthy").and_then(|h| h.as_bool()))
            .unwrap_or(false);
        Ok(Response::new(pb::HealthReply {
            healthy,
            json: ran.output,
        }))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let caller = self.admit(&req, "History", "history")?;
        let limit = match req.get_ref().limit {
            0 => 20,
            n => n,
        };
        self.bounded(&caller, "History", check_limit(limit))?;
        let ran = self
            .run(false, move |inv| {
                commands::state::run(inv, &commands::state::StateRequest::History { limit })
            })
            .await;
        self.conclude(&caller, "History", &ran)?;
        Ok(Response::new(pb::Document { json: ran.output }))
    }

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let caller = self.admit(&req, "Backup", "state")?;
        let file = std::path::PathBuf::from(req.into_inner().path);
        if file.as_os_str().is_empty() {
            self.record(&caller, "Backup", EventOutcome::Failed, "no path given");
            return Err(Status::invalid_argument("a backup needs a `path`"));
        }
        let long = file.as_os_str().len();
        self.bounded(
            &caller,
            "Backup",
            if long > MAX_PATH_BYTES {
                Err(format!(
                    "`path` has {long} bytes; a path has at most {MAX_PATH_BYTES}"
                ))
            } else {
                Ok(())
            },
        )?;
        let ran = self
            .run(false, move |inv| {
                commands::state::run(inv, &commands::state::StateRequest::Backup { file })
            })
            .await;
        self.conclude(&caller, "Backup", &ran)?;
        Ok(Response::new(pb::Document { json: ran.output }))
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let caller = self.admit(&req, "Unlock", "state")?;
        let force = req.into_inner().force;
        let ran = self
            .run(false, move |inv| {
                commands::state::run(inv, &commands::state::StateRequest::Unlock { force })
            })
            .await;
        self.conclude(&caller, "Unlock", &ran)?;
        Ok(Response::new(pb::Document { json: ran.output }))
    }

    async fn audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditReply>, Status> {
        let caller = self.admit(&req, "Audit", "audit")?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n,
        };
        self.bounded(&caller, "Audit", check_limit(limit))?;
        // Recorded first, so that the answer shows this call too.
        self.record(&caller, "Audit", EventOutcome::Succeeded, "");
        let rows = crate::state::audit_events(&self.state, limit)
            .map_err(|e| failure_status(&Failure::from(e)))?;
        Ok(Response::new(pb::AuditReply {
            entries: rows
                .into_iter()
                .map(|(e, r)| pb::AuditEntry {
                    at: e.at,
                    subject: r.subject,
                    role: r.role,
                    call: r.call,
                    outcome: e.outcome.as_str().to_owned(),
                    detail: r.detail,
                })
                .collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = self.admit(&req, "WatchEvents", "events")?;
        self.record(&caller, "WatchEvents", EventOutcome::Succeeded, "");
        let (replay, rx) = self.hub.subscribe();
        let replay: VecDeque<pb::Event> = replay.into();
        let stop = self.stopping.subscribe();
        let runs = self.hub.runs.subscribe();
        let stream = futures_util::stream::unfold(
            (replay, rx, stop, runs),
            |(mut replay, mut rx, mut stop, mut runs)| async move {
                if let Some(e) = replay.pop_front() {
                    return Some((Ok(e), (replay, rx, stop, runs)));
                }
                loop {
                    // At shutdown a stream ends once no run is under way
                    // and it has delivered what the last run published.
                    let stopping = *stop.borrow();
                    if stopping && *runs.borrow_and_update() == 0 {
                        return match rx.try_recv() {
                            Ok(e) => Some((Ok(e), (replay, rx, stop, runs))),
                            Err(_) => None,
                        };
                    }
                    tokio::select! {
                        r = rx.recv() => match r {
                            Ok(e) => return Some((Ok(e), (replay, rx, stop, runs))),
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!("a subscriber fell {n} events behind; they were skipped");
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                        changed = stop.changed(), if !stopping => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                        changed = runs.changed(), if stopping => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Where and how the server listens.
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

/// Serves until SIGINT or SIGTERM; `ready` is told the bound address.
pub async fn serve(
    service: Service,
    listen: Listen,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", listen.addr))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = listen.tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("the TLS configuration is unusable: {e}"))?;
    }
    // Without TCP_NODELAY small replies wait on delayed ACKs (~40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    ready(bound);
    let stopping = service.stopping.clone();
    let shutdown = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        // Calls under way finish (a run interrupted by the same signal
        // rolls back); event streams end once no run is under way.
        let _ = stopping.send(true);
    };
    builder
        .add_service(DeployCodeServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("the server stopped: {e}"))
}

/// `deploy-code serve`: serves this configuration and state until SIGINT
/// or SIGTERM, refusing an address others can reach without authentication.
pub fn run(inv: &Invocation, listen: SocketAddr) -> Result<CommandOutcome, Failure> {
    crate::heap::for_long_lived();
    let loaded = inv.config()?;
    let security = &loaded.desired.settings.security;
    let refuse = |msg: String, help: &str| -> Failure {
        Plain::new(Code::E016, msg).help(help.to_owned()).into()
    };
    let gate =
        auth::Gate::new(security).map_err(|m| refuse(m, "see `security.auth` in docs/serve.md"))?;
    if !gate.authenticates() && !listen.ip().is_loopback() {
        return Err(refuse(
            format!(
                "refusing to serve on {} without authentication: anyone who reaches it could deploy",
                listen
            ),
            "listen on a loopback address (the default, 127.0.0.1:8401), or enable `security.auth`",
        ));
    }
    let tls = match &security.tls {
        None => None,
        Some(t) => {
            let read = |p: &Option<std::path::PathBuf>, what: &str| {
                let Some(p) = p else {
                    return Err(refuse(
                        format!("`security.tls_enabled` is true but `{what}` is not set"),
                        "name the server's certificate (`cert_path`) and key (`key_path`), PEM files",
                    ));
                };
                std::fs::read(p).map_err(|e| {
                    refuse(
                        format!("cannot read `{}` (`{what}`): {e}", p.display()),
                        "check the path (relative paths resolve against the configuration's directory)",
                    )
                })
            };
            let cert = read(&t.cert, "cert_path")?;
            let key = read(&t.key, "key_path")?;
            let mut cfg = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key));
            if t.client_ca.is_some() {
                let ca = read(&t.client_ca, "client_ca_path")?;
                cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            Some(cfg)
        }
    };
    let state = inv.state_path().to_path_buf();
    let service = Service::new(inv.globals.clone(), state.clone(), gate)?;
    let rt = inv.runtime()?;
    let summary = format!(
        "state {}, tls {}, auth {}, roles {}",
        state.display(),
        if security.tls.is_some() { "on" } else { "off" },
        if security.auth.is_some() {
            "JWT"
        } else {
            "off"
        },
        if security.rbac.is_some() { "on" } else { "off" }
    );
    rt.block_on(serve(service, Listen { addr: listen, tls }, |addr| {
        inv.out.data_lossy(&format!(
            "deploy-code serve: listening on {addr} ({summary})\n"
        ));
    }))
    .map_err(|m| refuse(m, "pick another `--listen` address, or check `security`"))?;
    Ok(CommandOutcome::Done)
}
