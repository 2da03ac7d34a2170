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
//! A `set` may also carry `"limits":{"idle_timeout_ms":…,"header_timeout_ms":…,
//! "max_connections":…}` (given first on its command line): one client must
//! not be able to take the port from every other. At start the switch raises
//! its soft limit of open files to the hard limit; it closes a connection on
//! which nothing was sent either way for `idle_timeout_ms`; on a port that
//! speaks HTTP it reads each connection's request head itself before it
//! connects to an instance, and closes a client that has not sent it within
//! `header_timeout_ms` (slowloris); it keeps at most `max_connections` client
//! connections open (fewer when its open-file limit allows fewer, two
//! descriptors a connection) and sheds each one beyond at once (`503` on a
//! port that speaks HTTP, else closed), counting it, logging it at most once
//! every few seconds and showing itself as degraded in its status while it
//! sheds. An `accept` that fails (out of descriptors) pauses the accept loop
//! briefly instead of spinning.
//!
//! An instance behind a switch listens on a private port: a process is given
//! it as `PORT` (its first port) and `PORT_<container_port>`; a container
//! keeps its `container_port` and is reached at its address on its network.

pub mod client;
mod protocol;
pub(crate) mod traffic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;

pub use client::{SwitchClient, SwitchError};
pub(crate) use protocol::Reply;
pub use protocol::{CanaryStep, Decision, Groups, Limits, Request, Status, Tuning};
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
/// File descriptors kept out of the connection cap: the runtime's own, the
/// control socket's connections, the log file, and the shed connections
/// being answered.
const RESERVED_FDS: u64 = 64;
/// Shed connections answered (`503`, then read until the client closes) at
/// once; beyond, a shed connection is closed at once.
const SHED_ANSWERS: u64 = 16;
/// How long a shed connection is read after its `503`, at most.
const SHED_LINGER: Duration = Duration::from_secs(1);
/// How long the accept loop pauses after `accept` failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one log line of a kind (shedding, failed accepts) per this many
/// milliseconds.
const LOG_INTERVAL_MS: u64 = 10_000;
/// A switch that shed a connection this recently is degraded.
const DEGRADED_FOR_MS: u64 = 10_000;
/// The largest request head read before an instance is connected.
const MAX_HEAD: usize = 64 * 1024;

const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections";
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

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
    log: Option<PathBuf>,
    started: Instant,
    limits: Mutex<Limits>,
    /// The soft limit of open files, once raised.
    nofile: u64,
    open: AtomicU64,
    shed: AtomicU64,
    /// Shed since the last line logged about it.
    shed_unlogged: AtomicU64,
    /// When it last shed, and when it last logged that or a failed accept
    /// (milliseconds since `started`, plus one; 0: never).
    last_shed: AtomicU64,
    shed_logged: AtomicU64,
    accept_logged: AtomicU64,
    shed_answers: AtomicU64,
    timed_out: AtomicU64,
}

/// One open client connection, counted in `Shared::open` while it lives.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
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
            open: self.open.load(Ordering::Relaxed),
            max_connections: self.cap(),
            shed: self.shed.load(Ordering::Relaxed),
            shedding: self.shedding(),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            open_files_limit: self.nofile,
            limits: Some(self.limits()),
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

    fn limits(&self) -> Limits {
        *self.limits.lock().expect("limits")
    }

    /// Milliseconds since the switch started.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The most client connections kept open: the configured cap, or what
    /// the open-file limit leaves for two descriptors a connection.
    fn cap(&self) -> u64 {
        let by_files = self.nofile.saturating_sub(RESERVED_FDS) / 2;
        self.limits().max_connections.min(by_files).max(1)
    }

    fn shedding(&self) -> bool {
        let last = self.last_shed.load(Ordering::Relaxed);
        last != 0 && self.now_ms() + 1 - last < DEGRADED_FOR_MS
    }

    /// Logs `msg` unless a line of its kind (`last`) was logged in the last
    /// `LOG_INTERVAL_MS`.
    fn log_every(&self, last: &AtomicU64, msg: impl FnOnce() -> String) {
        let now = self.now_ms() + 1;
        let prev = last.load(Ordering::Relaxed);
        if prev != 0 && now - prev < LOG_INTERVAL_MS {
            return;
        }
        if last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            log_line(self.log.as_deref(), &msg());
        }
    }

    /// Sheds a connection beyond the cap: on a port that speaks HTTP it is
    /// answered `503` and read until the client closes (so that closing does
    /// not reset the connection under the answer), as long as few are being
    /// answered; else it is closed at once.
    fn shed(self: &Arc<Self>, stream: TcpStream) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        self.shed_unlogged.fetch_add(1, Ordering::Relaxed);
        self.last_shed.store(self.now_ms() + 1, Ordering::Relaxed);
        self.log_every(&self.shed_logged, || {
            format!(
                "shedding connections: {} open, at the cap of {}; {} shed since the last notice",
                self.open.load(Ordering::Relaxed),
                self.cap(),
                self.shed_unlogged.swap(0, Ordering::Relaxed)
            )
        });
        if !self.http.load(Ordering::Relaxed) {
            return;
        }
        let _ = stream.try_write(SERVICE_UNAVAILABLE);
        if self.shed_answers.fetch_add(1, Ordering::Relaxed) >= SHED_ANSWERS {
            self.shed_answers.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let _ = stream.shutdown().await;
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(SHED_LINGER, async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            shared.shed_answers.fetch_sub(1, Ordering::Relaxed);
        });
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
    http: bool,
    limits: Limits,
}

fn parse(args: &[std::ffi::OsString]) -> Option<Args> {
    let mut socket = None;
    let mut listen = None;
    let mut log = None;
    let mut http = false;
    let mut limits = Limits::default();
    let mut it = args.iter();
    let number = |it: &mut std::slice::Iter<'_, std::ffi::OsString>| -> Option<u64> {
        it.next()?.to_str()?.parse().ok().filter(|n| *n > 0)
    };
    while let Some(a) = it.next() {
        match a.to_str()? {
            "--socket" => socket = Some(PathBuf::from(it.next()?)),
            "--listen" => listen = Some(it.next()?.to_str()?.to_owned()),
            "--log" => log = Some(PathBuf::from(it.next()?)),
            "--http" => http = true,
            "--idle-timeout-ms" => limits.idle_timeout_ms = number(&mut it)?,
            "--header-timeout-ms" => limits.header_timeout_ms = number(&mut it)?,
            "--max-connections" => limits.max_connections = number(&mut it)?,
            _ => return None,
        }
    }
    Some(Args {
        socket: socket?,
        listen: listen?,
        log,
        http,
        limits,
    })
}

/// Raises the soft limit of open files to the hard limit (a switch holds two
/// descriptors a connection, and the usual soft limit of 1024 is soon
/// reached); the soft limit then, and the one before.
fn raise_open_files() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (1024, 1024);
    }
    let before = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            r.rlim_cur = r.rlim_max;
        }
    }
    (r.rlim_cur, before)
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
    let (nofile, before) = raise_open_files();
    if nofile != before {
        log_line(
            args.log.as_deref(),
            &format!("open-file limit raised from {before} to {nofile}"),
        );
    }
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
    match rt.block_on(serve(&args, nofile)) {
        Ok(()) => 0,
        Err(e) => {
            log_line(args.log.as_deref(), &e);
            1
        }
    }
}

async fn serve(args: &Args, nofile: u64) -> Result<(), String> {
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
        http: AtomicBool::new(args.http),
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
        log: args.log.clone(),
        started: Instant::now(),
        limits: Mutex::new(args.limits),
        nofile,
        open: AtomicU64::new(0),
        shed: AtomicU64::new(0),
        shed_unlogged: AtomicU64::new(0),
        last_shed: AtomicU64::new(0),
        shed_logged: AtomicU64::new(0),
        accept_logged: AtomicU64::new(0),
        shed_answers: AtomicU64::new(0),
        timed_out: AtomicU64::new(0),
    });
    log_line(
        args.log.as_deref(),
        &format!(
            "listening on {} (at most {} connections)",
            args.listen,
            shared.cap()
        ),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("no SIGTERM handler: {e}"))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    if shared.open.load(Ordering::Relaxed) >= shared.cap() {
                        shared.shed(stream);
                    } else {
                        shared.open.fetch_add(1, Ordering::Relaxed);
                        let open = Open(shared.clone());
                        tokio::spawn(forward(shared.clone(), stream, open));
                    }
                }
                // Out of descriptors (or kernel memory): the connection stays
                // in the backlog and the listener stays ready, so accepting
                // again at once would spin.
                Err(e) => {
                    shared.log_every(&shared.accept_logged, || {
                        format!("cannot accept a connection: {e}; pausing the accept loop")
                    });
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(control_conn(shared.clone(), stream));
                }
                Err(e) => {
                    shared.log_every(&shared.accept_logged, || {
                        format!("cannot accept a control connection: {e}; pausing the accept loop")
                    });
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = shared.stop.notified() => break,
            _ = term.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    log_line(args.log.as_deref(), "stopped");
    Ok(())
}

/// How reading a request head ended.
enum Head {
    /// Complete, its first byte read at this instant.
    Complete(Instant),
    /// The client closed (or failed) first.
    Closed,
    /// Longer than `MAX_HEAD`.
    TooLarge,
}

/// Reads from `stream` into `head` until it holds a whole request head
/// (what follows it, read with it, stays in `head`).
async fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> Head {
    let mut buf = [0u8; 4096];
    let mut first = None;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => n,
        };
        let at = *first.get_or_insert_with(Instant::now);
        let from = head.len();
        head.extend_from_slice(&buf[..n]);
        if traffic::head_ends(head, from) {
            return Head::Complete(at);
        }
        if head.len() > MAX_HEAD {
            return Head::TooLarge;
        }
    }
}

async fn forward(shared: Arc<Shared>, mut inbound: TcpStream, open: Open) {
    let _ = inbound.set_nodelay(true);
    let limits = shared.limits();
    let http = shared.http.load(Ordering::Relaxed);
    // On an HTTP port no instance is connected before the request head is
    // whole: a client that connects and sends nothing, or drips its head,
    // costs the instances nothing and is closed after the header timeout.
    let mut head = Vec::new();
    let mut asked = None;
    if http {
        let wait = Duration::from_millis(limits.header_timeout_ms);
        match tokio::time::timeout(wait, read_head(&mut inbound, &mut head)).await {
            Ok(Head::Complete(at)) => asked = Some(at),
            Ok(Head::Closed) => return,
            Ok(Head::TooLarge) => {
                let _ = inbound.try_write(HEAD_TOO_LARGE);
                return;
            }
            Err(_) => {
                shared.timed_out.fetch_add(1, Ordering::Relaxed);
                let _ = inbound.try_write(REQUEST_TIMEOUT);
                return;
            }
        }
    }
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
    let s = shared.clone();
    let task = tokio::spawn(async move {
        let _open = open;
        if !head.is_empty() && outbound.write_all(&head).await.is_err() {
            return;
        }
        let last = AtomicU64::new(s.now_ms());
        let pumps = async {
            if http {
                forward_http(&s, addr, inbound, outbound, asked, &last).await;
            } else {
                forward_tcp(&s, inbound, outbound, &last).await;
            }
        };
        tokio::select! {
            () = pumps => {}
            () = idle(&s, &last, limits.idle_timeout_ms) => {
                s.timed_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
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

/// Returns once nothing was sent either way on a connection (`last`: when
/// something last was, in `Shared::now_ms`) for `idle_ms`.
async fn idle(shared: &Shared, last: &AtomicU64, idle_ms: u64) {
    loop {
        let quiet = shared.now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if quiet >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
    }
}

/// Forwards a connection byte for byte, both ways.
async fn forward_tcp(shared: &Shared, inbound: TcpStream, outbound: TcpStream, last: &AtomicU64) {
    let (client_read, client_write) = inbound.into_split();
    let (backend_read, backend_write) = outbound.into_split();
    let touch = |_: &[u8]| last.store(shared.now_ms(), Ordering::Relaxed);
    tokio::join!(
        pump(client_read, backend_write, touch),
        pump(backend_read, client_write, touch)
    );
}

/// Forwards an HTTP connection byte for byte, counting each response head
/// on the way back (its class, and the time since the request's first byte;
/// `asked`: that of the request head already sent).
async fn forward_http(
    shared: &Shared,
    backend: SocketAddr,
    inbound: TcpStream,
    outbound: TcpStream,
    asked: Option<Instant>,
    last: &AtomicU64,
) {
    let (client_read, client_write) = inbound.into_split();
    let (backend_read, backend_write) = outbound.into_split();
    let asked: Mutex<Option<Instant>> = Mutex::new(asked);
    let up = pump(client_read, backend_write, |_| {
        last.store(shared.now_ms(), Ordering::Relaxed);
        let mut a = asked.lock().expect("asked");
        if a.is_none() {
            *a = Some(Instant::now());
        }
    });
    let mut scanner = ResponseScanner::default();
    let down = pump(backend_read, client_write, |bytes| {
        last.store(shared.now_ms(), Ordering::Relaxed);
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
                limits,
            }) => {
                if let Some(l) = limits {
                    *shared.limits.lock().expect("limits") = l;
                }
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
