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
//! - `{"op":"status"}`: the port, the live set and the counters;
//! - `{"op":"stop"}`: the switch closes its port and exits.
//!
//! An instance behind a switch listens on a private port: a process is given
//! it as `PORT` (its first port) and `PORT_<container_port>`; a container
//! keeps its `container_port` and is reached at its address on its network.

pub mod client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;

pub use client::{SwitchClient, SwitchError};

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
    },
    Status,
    Stop,
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
}

/// A reply on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum Reply {
    Ok,
    Status(Status),
    Error { message: String },
}

struct Conn {
    backend: SocketAddr,
    abort: tokio::task::AbortHandle,
}

struct Shared {
    listen: String,
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
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
        Status {
            pid: std::process::id(),
            listen: self.listen.clone(),
            backends: self.backends.lock().expect("backends").clone(),
            active,
            accepted: self.accepted.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            forwarded: self.forwarded.lock().expect("forwarded").clone(),
        }
    }

    /// The backends to try for the next connection, the chosen one first.
    fn order(&self) -> Vec<SocketAddr> {
        let set = self.backends.lock().expect("backends").clone();
        if set.is_empty() {
            return set;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % set.len();
        set[first..].iter().chain(&set[..first]).copied().collect()
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
        next: AtomicUsize::new(0),
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
    let id = shared.ids.fetch_add(1, Ordering::Relaxed);
    let task = tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
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
            Ok(Request::Status) => (Reply::Status(shared.status()), false),
            Ok(Request::Stop) => (Reply::Ok, true),
            Ok(Request::Set { backends, drain_ms }) => {
                *shared.backends.lock().expect("backends") = backends.clone();
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(drain_ms)).await;
                    let live = s.backends.lock().expect("backends").clone();
                    let conns = s.conns.lock().expect("conns");
                    for c in conns.values().filter(|c| !live.contains(&c.backend)) {
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
