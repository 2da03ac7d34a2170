//! The traffic switch: a small long-lived process that holds one published
//! TCP host port of a service and forwards every connection to one of the
//! service's current instances (the pattern of Docker's per-port
//! `docker-proxy`).
//!
//! `apply` starts it from this same binary (`deploy-code __switch …`), in a
//! session of its own, so that it outlives the run; it is found again by its
//! control socket beside the state file (`<state>.switch/<service>.<port>`,
//! mode 0600) and by the marks in its environment (project, lineage, service,
//! port), as instances are. Over the socket, one JSON object per line:
//!
//! - `{"op":"set","backends":["127.0.0.1:41234",…],"drain_ms":5000}`: new
//!   connections go to these backends from now on (round robin; a backend
//!   that refuses a connection is skipped for the next one); connections to
//!   backends no longer in the set may finish for `drain_ms`, then are cut;
//!   A `set` may carry a second group, the canary:
//!   `{"op":"set","backends":[…],"canary":["127.0.0.1:41300"],"weight":10,"http":true}`:
//!   `weight` percent of new connections go to the canary group, the rest to
//!   `backends` (the stable group), by smooth weighted round robin (exact over
//!   every 100 connections); `http` says the port speaks HTTP/1.x, so that
//!   the switch counts each response by class and times it (to its head);
//!   `"step":{"n":1,"of":2,"awaiting_decision":true}` says which step of
//!   the canary the weight belongs to and whether it waits for `promote` or
//!   `abort` (shown by `deploy-code status`);
//! - `{"op":"status"}`: the port, the groups, the weight and the counters
//!   (per backend and per group);
//! - `{"op":"decide","decision":"promote"}` (or `"abort"`): the decision on
//!   the canary in progress, which the `apply` run that set it polls
//!   (`deploy-code promote` / `abort`); refused when no canary is set;
//! - `{"op":"stop"}`: the switch closes its port and exits.
//!
//! An instance behind a switch listens on a private port: a process is given
//! it as `PORT` (its first port) and `PORT_<container_port>`; a container
//! keeps its `container_port` and is reached at its address on its network.

pub mod client;
pub(crate) mod traffic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;

pub use client::{SwitchClient, SwitchError};
pub use traffic::Counters;
use traffic::{Group, ResponseScanner, Weighted};

/// The hidden subcommand that runs a switch.
pub(crate) const ARG: &str = "__switch";

/// Marks in a switch's environment.
pub mod marks {
    pub(crate) const ENV_PROJECT: &str = "DEPLOY_CODE_SWITCH_PROJECT";
    pub(crate) const ENV_LINEAGE: &str = "DEPLOY_CODE_SWITCH_LINEAGE";
    pub(crate) const ENV_SERVICE: &str = "DEPLOY_CODE_SWITCH_SERVICE";
    pub(crate) const ENV_PORT: &str = "DEPLOY_CODE_SWITCH_PORT";
    pub const ENV_SOCKET: &str = "DEPLOY_CODE_SWITCH_SOCKET";
}

/// How long a connect to a backend may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Set {
        backends: Vec<SocketAddr>,
        #[serde(default)]
        drain_ms: u64,
        /// The canary group (empty: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        canary: Vec<SocketAddr>,
        /// The canary group's share of new connections, percent.
        #[serde(default)]
        weight: u8,
        /// Whether the port speaks HTTP (`None`: as before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http: Option<bool>,
        /// The canary step this weight belongs to (`None`: no canary step).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<CanaryStep>,
    },
    Status,
    Decide {
        decision: Decision,
    },
    Stop,
}

/// The decision on a canary in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Skip the remaining pauses: the new set takes every connection.
    Promote,
    /// Fail the step: the change set rolls back.
    Abort,
}

/// Which step of a canary a switch's weight belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// The step, from 1.
    pub n: u32,
    /// The number of steps.
    pub of: u32,
    /// The step has no `pause_seconds`: it waits for `deploy-code promote`
    /// or `deploy-code abort`.
    pub awaiting_decision: bool,
}

/// The counters of the two groups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Groups {
    pub stable: Counters,
    pub canary: Counters,
}

/// What a switch says about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The address it listens on.
    pub listen: String,
    /// Where new connections go.
    pub backends: Vec<SocketAddr>,
    /// Open connections, by backend.
    pub active: HashMap<SocketAddr, u64>,
    /// Connections accepted since it started.
    pub accepted: u64,
    /// Connections no backend took (every backend refused or none was set).
    pub failed: u64,
    /// Connections forwarded, by backend.
    pub forwarded: HashMap<SocketAddr, u64>,
    /// The canary group (empty: none).
    #[serde(default)]
    pub canary: Vec<SocketAddr>,
    /// The canary group's share of new connections, percent.
    #[serde(default)]
    pub weight: u8,
    /// Whether responses are counted as HTTP.
    #[serde(default)]
    pub http: bool,
    /// The decision given on the canary in progress, not yet acted on.
    #[serde(default)]
    pub decision: Option<Decision>,
    /// The canary step the weight belongs to.
    #[serde(default)]
    pub step: Option<CanaryStep>,
    /// What was counted, by backend, since the switch started.
    #[serde(default)]
    pub counters: HashMap<SocketAddr, Counters>,
    /// The same, summed over the current groups' backends.
    #[serde(default)]
    pub groups: Groups,
}

impl Status {
    /// The counters summed over `backends`.
    pub(crate) fn sum(&self, backends: &[SocketAddr]) -> Counters {
        let mut c = Counters::default();
        for b in backends {
            if let Some(x) = self.counters.get(b) {
                c.add(x);
            }
        }
        c
    }
}

/// A reply on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum Reply {
    Ok,
    Status(Box<Status>),
    Error { message: String },
}

struct Conn {
    backend: SocketAddr,
    abort: tokio::task::AbortHandle,
}

struct Shared {
    listen: String,
    backends: Mutex<Vec<SocketAddr>>,
    canary: Mutex<Vec<SocketAddr>>,
    weight: AtomicU8,
    weighted: Mutex<Weighted>,
    http: AtomicBool,
    decision: Mutex<Option<Decision>>,
    step: Mutex<Option<CanaryStep>>,
    counters: Mutex<HashMap<SocketAddr, Counters>>,
    next: AtomicUsize,
    next_canary: AtomicUsize,
    ids: AtomicU64,
    conns: Mutex<HashMap<u64, Conn>>,
    accepted: AtomicU64,
    failed: AtomicU64,
    forwarded: Mutex<HashMap<SocketAddr, u64>>,
    stop: Notify,
}

impl Shared {
    fn status(&self) -> Status {
        let mut active: HashMap<SocketAddr, u64> = HashMap::new();
        for c in self.conns.lock().expect("conns").values() {
            *active.entry(c.backend).or_default() += 1;
        }
        let mut s = Status {
            pid: std::process::id(),
            listen: self.listen.clone(),
            backends: self.backends.lock().expect("backends").clone(),
            active,
            accepted: self.accepted.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            forwarded: self.forwarded.lock().expect("forwarded").clone(),
            canary: self.canary.lock().expect("canary").clone(),
            weight: self.weight.load(Ordering::Relaxed),
            http: self.http.load(Ordering::Relaxed),
            decision: *self.decision.lock().expect("decision"),
            step: *self.step.lock().expect("step"),
            counters: self.counters.lock().expect("counters").clone(),
            groups: Groups::default(),
        };
        s.groups = Groups {
            stable: s.sum(&s.backends),
            canary: s.sum(&s.canary),
        };
        s
    }

    /// The backends to try for the next connection, the chosen one first:
    /// the chosen group's (round robin within it), then the other's.
    fn order(&self) -> Vec<SocketAddr> {
        let stable = self.backends.lock().expect("backends").clone();
        let canary = self.canary.lock().expect("canary").clone();
        let rotate = |set: &[SocketAddr], next: &AtomicUsize| -> Vec<SocketAddr> {
            if set.is_empty() {
                return Vec::new();
            }
            let first = next.fetch_add(1, Ordering::Relaxed) % set.len();
            set[first..].iter().chain(&set[..first]).copied().collect()
        };
        if canary.is_empty() {
            return rotate(&stable, &self.next);
        }
        let group = self
            .weighted
            .lock()
            .expect("weighted")
            .pick(self.weight.load(Ordering::Relaxed));
        let (s, c) = (
            rotate(&stable, &self.next),
            rotate(&canary, &self.next_canary),
        );
        match group {
            Group::Stable => s.into_iter().chain(c).collect(),
            Group::Canary => c.into_iter().chain(s).collect(),
        }
    }

    fn count(&self, backend: SocketAddr, f: impl FnOnce(&mut Counters)) {
        f(self
            .counters
            .lock()
            .expect("counters")
            .entry(backend)
            .or_default());
    }
}

/// Arguments of the hidden subcommand.
struct Args {
    socket: PathBuf,
    listen: String,
    log: Option<PathBuf>,
}

fn parse(args: &[std::ffi::OsString]) -> Option<Args> {
    let mut socket = None;
    let mut listen = None;
    let mut log = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str()? {
            "--socket" => socket = Some(PathBuf::from(it.next()?)),
            "--listen" => listen = Some(it.next()?.to_str()?.to_owned()),
            "--log" => log = Some(PathBuf::from(it.next()?)),
            _ => return None,
        }
    }
    Some(Args {
        socket: socket?,
        listen: listen?,
        log,
    })
}

/// Appends a line to the switch's log file (its only output).
fn log_line(log: Option<&Path>, msg: &str) {
    use std::io::Write;
    if let Some(path) = log
        && let Ok(mut f) = crate::fsperm::private_append(path)
    {
        let _ = writeln!(f, "{} switch: {msg}", crate::clock::now_rfc3339());
    }
}

/// Runs a switch until it is told to stop (or gets SIGTERM); the exit code.
pub fn run(args: &[std::ffi::OsString]) -> u8 {
    crate::heap::for_long_lived();
    let Some(args) = parse(args) else {
        return 2;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log_line(args.log.as_deref(), &format!("no runtime: {e}"));
            return 1;
        }
    };
    match rt.block_on(serve(&args)) {
        Ok(()) => 0,
        Err(e) => {
            log_line(args.log.as_deref(), &e);
            1
        }
    }
}

async fn serve(args: &Args) -> Result<(), String> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    if let Some(dir) = args.socket.parent() {
        crate::fsperm::private_dir(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // A socket file nobody answers on is a dead switch's: take its place.
    if UnixStream::connect(&args.socket).await.is_ok() {
        return Err(format!(
            "another switch answers on {}",
            args.socket.display()
        ));
    }
    let _ = std::fs::remove_file(&args.socket);
    let control = UnixListener::bind(&args.socket)
        .map_err(|e| format!("cannot bind {}: {e}", args.socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot make {} private: {e}", args.socket.display()))?;
    }
    let shared = Arc::new(Shared {
        listen: args.listen.clone(),
        backends: Mutex::new(Vec::new()),
        canary: Mutex::new(Vec::new()),
        weight: AtomicU8::new(0),
        weighted: Mutex::new(Weighted::default()),
        http: AtomicBool::new(false),
        decision: Mutex::new(None),
        step: Mutex::new(None),
        counters: Mutex::new(HashMap::new()),
        next: AtomicUsize::new(0),
        next_canary: AtomicUsize::new(0),
        ids: AtomicU64::new(0),
        conns: Mutex::new(HashMap::new()),
        accepted: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        forwarded: Mutex::new(HashMap::new()),
        stop: Notify::new(),
    });
    log_line(
        args.log.as_deref(),
        &format!("listening on {}", args.listen),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("no SIGTERM handler: {e}"))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(forward(shared.clone(), stream));
                }
            }
            accepted = control.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(control_conn(shared.clone(), stream));
                }
            }
            _ = shared.stop.notified() => break,
            _ = term.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    log_line(args.log.as_deref(), "stopped");
    Ok(())
}

async fn forward(shared: Arc<Shared>, mut inbound: TcpStream) {
    let _ = inbound.set_nodelay(true);
    let mut chosen = None;
    for addr in shared.order() {
        if let Ok(Ok(s)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            chosen = Some((addr, s));
            break;
        }
        shared.count(addr, |c| c.failed_connects += 1);
    }
    let Some((addr, mut outbound)) = chosen else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = outbound.set_nodelay(true);
    *shared
        .forwarded
        .lock()
        .expect("forwarded")
        .entry(addr)
        .or_default() += 1;
    shared.count(addr, |c| c.connections += 1);
    let id = shared.ids.fetch_add(1, Ordering::Relaxed);
    let task = if shared.http.load(Ordering::Relaxed) {
        tokio::spawn(forward_http(shared.clone(), addr, inbound, outbound))
    } else {
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        })
    };
    shared.conns.lock().expect("conns").insert(
        id,
        Conn {
            backend: addr,
            abort: task.abort_handle(),
        },
    );
    let _ = task.await;
    shared.conns.lock().expect("conns").remove(&id);
}

/// Forwards an HTTP connection byte for byte, counting each response head
/// on the way back (its class, and the time since the request's first byte).
async fn forward_http(
    shared: Arc<Shared>,
    backend: SocketAddr,
    inbound: TcpStream,
    outbound: TcpStream,
) {
    let (client_read, client_write) = inbound.into_split();
    let (backend_read, backend_write) = outbound.into_split();
    let asked: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let asked_up = asked.clone();
    let up = pump(client_read, backend_write, move |_| {
        let mut a = asked_up.lock().expect("asked");
        if a.is_none() {
            *a = Some(Instant::now());
        }
    });
    let mut scanner = ResponseScanner::default();
    let down = pump(backend_read, client_write, move |bytes| {
        scanner.feed(bytes, |code| {
            let latency = asked
                .lock()
                .expect("asked")
                .take()
                .map(|t| t.elapsed().as_millis() as u64);
            shared.count(backend, |c| c.response(code, latency));
        });
    });
    tokio::join!(up, down);
}

/// Copies `from` to `to` until either ends, showing each piece to `seen`
/// first; then shuts `to` down (as `copy_bidirectional` does).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut seen: impl FnMut(&[u8]),
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn control_conn(shared: Arc<Shared>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (reply, stop) = match serde_json::from_str::<Request>(&line) {
            Err(e) => (
                Reply::Error {
                    message: format!("bad request: {e}"),
                },
                false,
            ),
            Ok(Request::Status) => (Reply::Status(Box::new(shared.status())), false),
            Ok(Request::Stop) => (Reply::Ok, true),
            Ok(Request::Decide { decision }) => {
                if shared.canary.lock().expect("canary").is_empty() {
                    (
                        Reply::Error {
                            message: "no canary is in progress on this switch".into(),
                        },
                        false,
                    )
                } else {
                    *shared.decision.lock().expect("decision") = Some(decision);
                    (Reply::Ok, false)
                }
            }
            Ok(Request::Set {
                backends,
                drain_ms,
                canary,
                weight,
                http,
                step,
            }) => {
                {
                    // One lock order for a consistent view: backends, then canary.
                    let mut b = shared.backends.lock().expect("backends");
                    let mut c = shared.canary.lock().expect("canary");
                    *b = backends.clone();
                    *c = canary;
                    shared.weight.store(weight.min(100), Ordering::Relaxed);
                    *shared.weighted.lock().expect("weighted") = Weighted::default();
                    *shared.decision.lock().expect("decision") = None;
                    *shared.step.lock().expect("step") = step;
                }
                if let Some(h) = http {
                    shared.http.store(h, Ordering::Relaxed);
                }
                // This request's drain covers only the backends it removes:
                // one that it keeps and a later request removes drains by
                // that request's clock, however late this timer fires.
                let mut kept = backends;
                kept.extend(shared.canary.lock().expect("canary").iter().copied());
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(drain_ms)).await;
                    let mut live = s.backends.lock().expect("backends").clone();
                    live.extend(s.canary.lock().expect("canary").iter().copied());
                    let conns = s.conns.lock().expect("conns");
                    for c in conns
                        .values()
                        .filter(|c| !live.contains(&c.backend) && !kept.contains(&c.backend))
                    {
                        c.abort.abort();
                    }
                });
                (Reply::Ok, false)
            }
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
        let _ = write.flush().await;
        if stop {
            shared.stop.notify_one();
            return;
        }
    }
}
