//! Health gates: HTTP (2xx), TCP connect and command (exit 0) probes.
//!
//! The first probe runs at once; while the service is not ready the probes back
//! off from 10 ms, doubling up to 50 ms during the first 10 s (or the start
//! period, when longer) and up to `interval_seconds` after, so that a service
//! that becomes ready is seen within about 50 ms. Failures during `start_period_seconds` do
//! not count; after it, a failure counts at most once per interval, and
//! `retries` counted failures fail the gate. A process that exits during its gate
//! fails it at once. A one-shot task passes by exiting 0.
//!
//! Attribution: a gate passes only on evidence the instance it judges produced.
//! Liveness is checked before and after every passing probe; an HTTP or TCP
//! probe that reaches a loopback port passes only when the backend does not
//! say that another process holds the listening socket (for processes, the
//! socket's inode must be open in the instance's process tree); a container is
//! probed at its own address or the host port published for it alone. After
//! the first pass the instance must stay alive and healthy for
//! `min_healthy_seconds` (0 by default).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Cancel;
use crate::backends::{Backend, Liveness, ProbeOutcome, Replicas};
use crate::model::{Probe, ServiceSpec, Workload};
use crate::state::Handle;

/// One probe result kept as evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Milliseconds since the gate began.
    pub at_ms: u64,
    pub healthy: bool,
    pub detail: String,
}

/// The verdict of a gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateOutcome {
    pub healthy: bool,
    /// Why it failed (empty when healthy).
    pub reason: String,
    /// How long the gate took.
    pub elapsed_ms: u64,
    /// The last probe results, oldest first (at most [`KEEP`]).
    pub probes: Vec<ProbeRecord>,
}

/// How many probe results a gate keeps.
pub(crate) const KEEP: usize = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause between probes while a service is starting.
const FAST_CAP: Duration = Duration::from_millis(50);
/// How long a gate probes fast before it falls back to `interval_seconds`.
const FAST_WINDOW: Duration = Duration::from_secs(10);
/// How often a passing instance is checked again while it must stay healthy
/// for `min_healthy_seconds`.
const HOLD_PROBE: Duration = Duration::from_millis(250);
/// How long an instance without a health check must keep running after its
/// start to pass: long enough to see a service that dies at start-up.
pub(crate) const NO_CHECK_WAIT: Duration = Duration::from_secs(1);

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        // As Kubernetes' HTTPS probes: the probe asks whether the service
        // answers, not who signed its certificate.
        crate::net::client_builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .tls_danger_accept_invalid_certs(true)
            .build()
            .expect("the probe client always builds")
    })
}

/// Hosts that name this machine's loopback interface.
fn is_loopback(host: &str) -> bool {
    matches!(
        host,
        "127.0.0.1" | "localhost" | "0.0.0.0" | "::1" | "[::1]" | "::"
    ) || host.starts_with("127.")
}

/// Where a probe of `host:port` goes for one instance, by the one port rule
/// (documented in `docs/configuration.md`, "Health checks"):
/// - a loopback address naming a declared `host_port` probes that host port;
/// - a loopback address naming a declared `container_port` probes wherever
///   that port of the instance is reachable (a process: the loopback; a
///   container: its published host port, or its address on its network);
/// - anything else is used as written.
///
/// A path endpoint was lowered to a loopback URL naming the first port.
///
/// `None` when the port is behind a traffic switch and the instance's own
/// address is not known (yet): the switch's port would reach another
/// instance, so that probe fails rather than go there.
pub async fn target(
    backend: &dyn Backend,
    spec: &ServiceSpec,
    handle: &Handle,
    host: &str,
    port: u16,
) -> Option<(String, u16)> {
    if !is_loopback(host) {
        return Some((host.to_owned(), port));
    }
    // Behind a traffic switch a host port is the switch's: the instance is
    // probed at its own (private) address for that port.
    if spec.behind_switch
        && let Some(p) = spec
            .ports
            .iter()
            .find(|p| p.host_port == Some(port))
            .or_else(|| spec.ports.iter().find(|p| p.container_port == port))
    {
        return backend.own_address(handle, p.container_port).await;
    }
    if spec.ports.iter().any(|p| p.host_port == Some(port)) {
        return Some(("127.0.0.1".to_owned(), port));
    }
    if spec.ports.iter().any(|p| p.container_port == port) {
        return Some(backend.probe_address(handle, port).await);
    }
    Some((host.trim_matches(|c| c == '[' || c == ']').to_owned(), port))
}

/// The outcome of a probe whose instance's own address is not known yet.
fn own_address_unknown(port: u16) -> ProbeOutcome {
    ProbeOutcome {
        healthy: false,
        detail: format!(
            "the instance's own address for port {port} is not known yet (its port {port} is the traffic switch's)"
        ),
    }
}

/// The container port that a loopback `host:port` names by the port rule:
/// the port itself when declared as a container port, or the container port
/// a declared host port publishes.
fn container_port(spec: &ServiceSpec, host: &str, port: u16) -> Option<u16> {
    if !is_loopback(host) {
        return None;
    }
    spec.ports
        .iter()
        .find(|p| p.host_port == Some(port))
        .or_else(|| spec.ports.iter().find(|p| p.container_port == port))
        .map(|p| p.container_port)
}

/// A URL split into what the port rule needs.
struct Url<'a> {
    scheme: &'a str,
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn split_url(url: &str) -> Option<Url<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, default_port),
    };
    Some(Url {
        scheme,
        host,
        port,
        path,
    })
}

fn host_in_url(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_owned()
    }
}

/// Runs one probe of `probe` against the instance behind `handle`. HTTP and
/// TCP probes that reach a loopback address pass only when the listening
/// socket is the instance's own (where the backend can tell).
pub(crate) async fn probe_once(
    backend: &dyn Backend,
    spec: &ServiceSpec,
    handle: &Handle,
    probe: &Probe,
    timeout: Duration,
) -> ProbeOutcome {
    let (out, reached) = match probe {
        Probe::Http { url } => {
            let (url, reached) = match split_url(url) {
                Some(u) => {
                    let Some((h, p)) = target(backend, spec, handle, u.host, u.port).await else {
                        return own_address_unknown(u.port);
                    };
                    (
                        format!("{}://{}:{p}{}", u.scheme, host_in_url(&h), u.path),
                        Some((h, p)),
                    )
                }
                None => (url.clone(), None),
            };
            (http_probe(&url, timeout).await, reached)
        }
        Probe::Tcp { host, port } => {
            // A connect proves only that something accepts: probe the
            // instance's own address where it has one, not a proxy in front.
            let own = match container_port(spec, host, *port) {
                Some(cp) => backend.own_address(handle, cp).await,
                None => None,
            };
            let (h, p) = match own {
                Some(addr) => addr,
                None => match target(backend, spec, handle, host, *port).await {
                    Some(addr) => addr,
                    None => return own_address_unknown(*port),
                },
            };
            let addr = format!("{}:{p}", host_in_url(&h));
            let out =
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                    Err(_) => ProbeOutcome {
                        healthy: false,
                        detail: format!("connect {addr}: timed out"),
                    },
                    Ok(Err(e)) => ProbeOutcome {
                        healthy: false,
                        detail: format!("connect {addr}: {e}"),
                    },
                    Ok(Ok(_)) => ProbeOutcome {
                        healthy: true,
                        detail: format!("connect {addr}: ok"),
                    },
                };
            (out, Some((h, p)))
        }
        Probe::Command { argv } => return backend.exec_probe(handle, argv, timeout).await,
    };
    match reached {
        Some((h, p)) if out.healthy && is_loopback(&h) => {
            if backend.listener_is_own(handle, p).await == Some(false) {
                return ProbeOutcome {
                    healthy: false,
                    detail: format!(
                        "{}, but port {p} is held by a process that is not this instance",
                        out.detail
                    ),
                };
            }
            out
        }
        _ => out,
    }
}

async fn http_probe(url: &str, timeout: Duration) -> ProbeOutcome {
    let fut = client().get(url).timeout(timeout).send();
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => ProbeOutcome {
            healthy: false,
            detail: format!("GET {url}: timed out after {} ms", timeout.as_millis()),
        },
        Ok(Err(e)) => ProbeOutcome {
            healthy: false,
            detail: format!("GET {url}: {}", short_error(&e)),
        },
        Ok(Ok(resp)) => {
            let status = resp.status();
            ProbeOutcome {
                healthy: status.is_success(),
                detail: format!("GET {url}: {status}"),
            }
        }
    }
}

fn short_error(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

struct Recorder<'a> {
    began: Instant,
    probes: Vec<ProbeRecord>,
    on_probe: &'a (dyn Fn(&ProbeRecord) + Send + Sync),
}

impl Recorder<'_> {
    fn push(&mut self, healthy: bool, detail: String) {
        let r = ProbeRecord {
            at_ms: self.began.elapsed().as_millis() as u64,
            healthy,
            detail,
        };
        (self.on_probe)(&r);
        self.probes.push(r);
        if self.probes.len() > KEEP {
            self.probes.remove(0);
        }
    }

    /// Records `detail` unless the last record already says it (a wait that
    /// polls often keeps its evidence and its progress line readable).
    fn note(&mut self, healthy: bool, detail: String) {
        if self
            .probes
            .last()
            .is_none_or(|p| p.healthy != healthy || p.detail != detail)
        {
            self.push(healthy, detail);
        }
    }

    /// The gate stopped waiting: an interrupt as it is; a deadline with what
    /// the gate was still waiting for, when the last record says.
    fn stopped(self, why: String) -> GateOutcome {
        let reason = match self.probes.last().filter(|p| !p.healthy) {
            Some(p) if why == OUT_OF_TIME => format!("{why} (last: {})", p.detail),
            _ => why,
        };
        self.done(false, reason)
    }

    fn done(self, healthy: bool, reason: String) -> GateOutcome {
        GateOutcome {
            healthy,
            reason,
            elapsed_ms: self.began.elapsed().as_millis() as u64,
            probes: self.probes,
        }
    }
}

/// The first instance that is no longer running, with what happened to it
/// (the engine's reason when it gives one).
async fn first_down(backend: &dyn Backend, handles: &[Handle]) -> Option<(usize, String)> {
    for (i, h) in handles.iter().enumerate() {
        let l = backend.liveness(h).await;
        if l != Liveness::Running {
            let why = match backend.replicas(h).await {
                Some(r) if r.detail.is_some() => format!("is down ({r})"),
                _ => describe(&l),
            };
            return Some((i, why));
        }
    }
    None
}

/// The replicas an instance that stands for several still lacks (a Swarm
/// service with fewer tasks running than it asks for).
async fn shortfall(backend: &dyn Backend, handles: &[Handle]) -> Option<Replicas> {
    for h in handles {
        if let Some(r) = backend.replicas(h).await
            && !r.complete()
        {
            return Some(r);
        }
    }
    None
}

fn describe(l: &Liveness) -> String {
    match l {
        Liveness::Exited(Some(c)) => format!("exited with code {c}"),
        Liveness::Exited(None) => "was killed by a signal".into(),
        Liveness::Missing => "is gone".into(),
        Liveness::Running => "is running".into(),
    }
}

/// Waits until the instances of `spec` are healthy (or a task has exited 0), the
/// gate fails, `deadline` passes or the interrupt level reaches `stop_at`.
pub async fn gate(
    backend: &dyn Backend,
    spec: &ServiceSpec,
    handles: &[Handle],
    cancel: &Cancel,
    stop_at: u8,
    deadline: Option<Instant>,
    on_probe: &(dyn Fn(&ProbeRecord) + Send + Sync),
) -> GateOutcome {
    let mut rec = Recorder {
        began: Instant::now(),
        probes: Vec::new(),
        on_probe,
    };
    let mut backoff = FIRST_BACKOFF;
    if spec.workload == Workload::Task {
        let cap = Duration::from_millis(500);
        loop {
            let mut all_done = true;
            for h in handles {
                match backend.liveness(h).await {
                    Liveness::Running => all_done = false,
                    Liveness::Exited(Some(0)) => {}
                    other => {
                        let why = format!("the task {}", describe(&other));
                        rec.push(false, why.clone());
                        return rec.done(false, why);
                    }
                }
            }
            if all_done {
                rec.push(true, "exited with code 0".into());
                return rec.done(true, String::new());
            }
            if let Some(why) = wait_or_stop(backoff, cancel, stop_at, deadline).await {
                return rec.stopped(why);
            }
            backoff = (backoff * 2).min(cap);
        }
    }
    let Some(check) = &spec.health_check else {
        // No check: every replica must have come up and kept running for
        // NO_CHECK_WAIT; an exit meanwhile fails the gate at once.
        let mut running_since: Option<Instant> = None;
        loop {
            if let Some(why) = wait_or_stop(FAST_CAP, cancel, stop_at, deadline).await {
                return rec.stopped(why);
            }
            if let Some((i, down)) = first_down(backend, handles).await {
                let why = format!("replica {i} {down}");
                rec.push(false, why.clone());
                return rec.done(false, why);
            }
            if let Some(r) = shortfall(backend, handles).await {
                rec.note(false, r.to_string());
                running_since = None;
                continue;
            }
            if running_since.get_or_insert_with(Instant::now).elapsed() >= NO_CHECK_WAIT {
                rec.push(true, "running (no health check)".into());
                return rec.done(true, String::new());
            }
        }
    };
    let interval = check.interval();
    let timeout = check.timeout();
    let start_period = Duration::from_secs(check.start_period_seconds);
    let min_healthy = Duration::from_secs(check.min_healthy_seconds);
    let retries = check.retries.max(1);
    let mut counted = 0u32;
    let mut last_counted: Option<Instant> = None;
    let mut healthy_since: Option<Instant> = None;
    loop {
        if let Some((i, down)) = first_down(backend, handles).await {
            let why = format!("replica {i} {down} during its health check");
            rec.push(false, why.clone());
            return rec.done(false, why);
        }
        let mut all_ok = true;
        let mut probed = Vec::new();
        for h in handles {
            // Replicas behind one address (a host port) answer with one probe.
            let addr = probe_key(backend, spec, h, &check.probe).await;
            if addr.is_some() && probed.contains(&addr) {
                continue;
            }
            probed.push(addr);
            let out = probe_once(backend, spec, h, &check.probe, timeout).await;
            let ok = out.healthy;
            rec.push(ok, out.detail);
            if !ok {
                all_ok = false;
                break;
            }
        }
        // While replicas are still missing, probes that pass (or that find
        // none running yet) wait for them without counting a failure.
        let short = shortfall(backend, handles).await;
        let converging = short.as_ref().is_some_and(|r| all_ok || r.running == 0);
        if all_ok {
            match short {
                // Replicas are still missing: keep waiting for them.
                Some(r) => rec.push(false, r.to_string()),
                None => {
                    // The answer counts only from instances that still run
                    // after it.
                    if let Some((i, down)) = first_down(backend, handles).await {
                        let why = format!("replica {i} {down} right after a passing probe");
                        rec.push(false, why.clone());
                        return rec.done(false, why);
                    }
                    let since = *healthy_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= min_healthy {
                        return rec.done(true, String::new());
                    }
                    let left = min_healthy.saturating_sub(since.elapsed());
                    if let Some(why) =
                        wait_or_stop(left.min(HOLD_PROBE), cancel, stop_at, deadline).await
                    {
                        return rec.stopped(why);
                    }
                    continue;
                }
            }
        }
        healthy_since = None;
        let now = Instant::now();
        if !converging
            && now.duration_since(rec.began) >= start_period
            && last_counted.is_none_or(|t| now.duration_since(t) >= interval)
        {
            counted += 1;
            last_counted = Some(now);
            if counted >= retries {
                let last = rec
                    .probes
                    .last()
                    .map(|p| p.detail.clone())
                    .unwrap_or_default();
                return rec.done(
                    false,
                    format!("health check failed {counted} times (last: {last})"),
                );
            }
        }
        if let Some(why) = wait_or_stop(backoff, cancel, stop_at, deadline).await {
            return rec.stopped(why);
        }
        // Fast probing (at most FAST_CAP apart) while the service may still be
        // coming up; the configured interval once it has had FAST_WINDOW (or its
        // start period) to start.
        let fast = rec.began.elapsed() < FAST_WINDOW.max(start_period);
        backoff = (backoff * 2).min(if fast {
            FAST_CAP.min(interval)
        } else {
            interval
        });
    }
}

/// The address an HTTP or TCP probe of an instance reaches (`None` for a
/// command probe, which runs per instance, and for an instance whose own
/// address is not known yet).
async fn probe_key(
    backend: &dyn Backend,
    spec: &ServiceSpec,
    handle: &Handle,
    probe: &Probe,
) -> Option<(String, u16)> {
    match probe {
        Probe::Http { url } => {
            let u = split_url(url)?;
            target(backend, spec, handle, u.host, u.port).await
        }
        Probe::Tcp { host, port } => target(backend, spec, handle, host, *port).await,
        Probe::Command { .. } => None,
    }
}

/// Why a gate stops when its deadline passes.
const OUT_OF_TIME: &str = "ran out of time";

/// Sleeps `d`; returns why the gate must stop instead (interrupt or deadline).
async fn wait_or_stop(
    d: Duration,
    cancel: &Cancel,
    stop_at: u8,
    deadline: Option<Instant>,
) -> Option<String> {
    if cancel.level() >= stop_at {
        return Some("interrupted".into());
    }
    let d = match deadline {
        Some(dl) => {
            let left = dl.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(OUT_OF_TIME.into());
            }
            d.min(left)
        }
        None => d,
    };
    tokio::select! {
        _ = tokio::time::sleep(d) => None,
        _ = cancel.reached(stop_at) => Some("interrupted".into()),
    }
}
