//! The desired state: what the configuration asks to be running, as plain values.
//!
//! Everything here is pure data that checks its own invariants. The configuration
//! loader (`config`) produces these values; `plan` compares them with the state;
//! `apply` and the backends execute them. Nothing in this module does I/O.
//!
//! Secrets: a [`Text`] is either plain or [`Sensitive`]. A sensitive value
//! serializes as its keyed digest only (`{"sensitive": "hmac-sha256:…"}`), so any
//! spec that is written to the state, a plan file or the screen carries no
//! plaintext by construction. The plaintext is kept in memory for the backends
//! that need it (`Sensitive::expose`).

mod secret;
mod settings;

pub use secret::*;
pub use settings::*;

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A service name: `[a-z0-9][a-z0-9_-]{0,62}`, unique within a configuration.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub(crate) const MAX_LEN: usize = 63;

    /// Checks the name; the error says what is wrong in words fit for a diagnostic.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("a service name cannot be empty".into());
        }
        if name.len() > Self::MAX_LEN {
            return Err(format!(
                "a service name is at most {} characters, this one has {}",
                Self::MAX_LEN,
                name.len()
            ));
        }
        let mut chars = name.chars();
        let first = chars.next().unwrap_or('_');
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err("a service name starts with a lowercase letter or a digit".into());
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "a service name holds only lowercase letters, digits, `_` and `-`, not `{bad}`"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ServiceName> for String {
    fn from(value: ServiceName) -> Self {
        value.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an apply failure is about: one service, or the run as a whole (it
/// was interrupted before any service failed). Never a made-up service name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Subject {
    Service(ServiceName),
    /// The run itself; shown as `interrupted`.
    Run,
}

impl Subject {
    /// The service, when the failure is one service's.
    pub fn service(&self) -> Option<&ServiceName> {
        match self {
            Subject::Service(n) => Some(n),
            Subject::Run => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Service(n) => n.fmt(f),
            Subject::Run => f.write_str("interrupted"),
        }
    }
}

impl PartialEq<ServiceName> for Subject {
    fn eq(&self, other: &ServiceName) -> bool {
        self.service() == Some(other)
    }
}

impl std::borrow::Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

pub use crate::registry::BackendKind;

/// A long-running service is healthy when its gate passes; a one-shot task
/// (a migration, say) succeeds by exiting 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    #[default]
    Service,
    Task,
}

/// The resources one replica needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Logical CPUs (fractions allowed).
    pub cpu_cores: f64,
    pub memory_mb: u64,
    pub storage_gb: u64,
    pub gpu_count: u32,
    /// The memory each assigned GPU must have free, when the service says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mb: Option<u64>,
}

impl Resources {
    /// `resources.memory_mb` of a service that declares none.
    pub(crate) const DEFAULT_MEMORY_MB: u64 = 256;
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The port the service listens on (inside the container; for a process the
    /// same as the host port).
    pub container_port: u16,
    /// The host port. `None` for a container: allocated from `network.port_range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// A named volume, or for a bind mount the name given in the config.
    pub name: String,
    /// A host path for a bind mount; `None` for a named volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    pub mount_path: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Probe {
    /// `GET url`, healthy on 2xx.
    Http { url: String },
    /// A TCP connect to `host:port`.
    Tcp { host: String, port: u16 },
    /// An argv run without a shell (in the container for Docker); healthy on exit 0.
    Command { argv: Vec<String> },
}

impl Probe {
    /// The port an HTTP or TCP probe reaches on the loopback, if it does.
    pub(crate) fn loopback_port(&self) -> Option<u16> {
        let loopback = |h: &str| {
            matches!(h, "localhost" | "0.0.0.0" | "::1" | "[::1]") || h.starts_with("127.")
        };
        match self {
            Probe::Tcp { host, port } => loopback(host).then_some(*port),
            Probe::Http { url } => {
                let (scheme, rest) = url.split_once("://")?;
                let authority = rest.split('/').next()?;
                let (host, port) = match authority.rsplit_once(':') {
                    Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
                    _ => (authority, if scheme == "https" { 443 } else { 80 }),
                };
                loopback(host).then_some(port)
            }
            Probe::Command { .. } => None,
        }
    }
}

/// A duration in seconds, to the millisecond, as a health check's
/// `interval_seconds` and `timeout_seconds` are written (`1`, `0.25`). A whole
/// number serializes as an integer, as these fields were written before they
/// took fractions, so that recorded specs keep their hashes; a fraction
/// serializes as a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seconds {
    millis: u64,
}

impl Seconds {
    /// `s` whole seconds.
    pub const fn whole(s: u64) -> Self {
        Self {
            millis: s.saturating_mul(1000),
        }
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// `s` seconds rounded to the millisecond; `None` when negative or not finite.
    pub fn from_secs_f64(s: f64) -> Option<Self> {
        (s.is_finite() && s >= 0.0).then(|| Self {
            // `as` saturates at u64::MAX.
            millis: (s * 1000.0).round() as u64,
        })
    }

    pub const fn millis(self) -> u64 {
        self.millis
    }

    /// As a duration, at least `floor`.
    pub fn at_least(self, floor: std::time::Duration) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis).max(floor)
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis.is_multiple_of(1000) {
            write!(f, "{}", self.millis / 1000)
        } else {
            let text = format!("{}.{:03}", self.millis / 1000, self.millis % 1000);
            f.write_str(text.trim_end_matches('0'))
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.millis.is_multiple_of(1000) {
            s.serialize_u64(self.millis / 1000)
        } else {
            s.serialize_f64(self.millis as f64 / 1000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds, at least 0")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds::whole(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(Seconds::whole)
                    .map_err(|_| E::custom("a number of seconds must be at least 0"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Seconds, E> {
                Seconds::from_secs_f64(v)
                    .ok_or_else(|| E::custom("a number of seconds must be at least 0"))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    /// Between probes (fractions allowed: `0.1`).
    pub interval_seconds: Seconds,
    /// How long one probe may take (fractions allowed).
    pub timeout_seconds: Seconds,
    /// Consecutive failures, after the start period, that fail the gate.
    pub retries: u32,
    pub start_period_seconds: u64,
    /// How long an instance must stay alive and healthy after its first
    /// passing probe before its gate passes (Nomad's `min_healthy_time`).
    /// Left out of the canonical form when 0, so that specs recorded before
    /// it existed keep their hashes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_healthy_seconds: u64,
    /// For a process under a restart policy: consecutive failed probes of
    /// the running instance after which its monitor restarts it (Nomad's
    /// `check_restart`). Left out of the canonical form when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after_failures: Option<u32>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl HealthCheck {
    /// The pause between probes; at least [`HealthCheck::FLOOR`].
    pub fn interval(&self) -> std::time::Duration {
        self.interval_seconds.at_least(Self::FLOOR)
    }

    /// How long one probe may take; at least [`HealthCheck::FLOOR`].
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout_seconds.at_least(Self::FLOOR)
    }

    /// The shortest interval and timeout (`validate` refuses shorter ones).
    pub const FLOOR: std::time::Duration = std::time::Duration::from_millis(10);
}

/// How a process's monitor restarts it: exponential back-off that resets
/// after a healthy run, and a circuit breaker (see `src/monitor/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartSettings {
    /// The pause before the first restart, milliseconds.
    pub initial_delay_ms: u64,
    /// The longest pause between restarts, seconds.
    pub max_delay_seconds: u64,
    /// Each restart's pause is the previous one times this (at least 1).
    pub multiplier: f64,
    /// The back-off starts again from `initial_delay_ms` once an instance
    /// has been running (and passing its health check) this long.
    pub reset_after_seconds: u64,
    /// Restarts allowed within `window_seconds`; one more opens the circuit.
    pub max_restarts: u32,
    pub window_seconds: u64,
}

impl Default for RestartSettings {
    fn default() -> Self {
        Self {
            initial_delay_ms: 100,
            max_delay_seconds: 30,
            multiplier: 2.0,
            reset_after_seconds: 10,
            max_restarts: 5,
            window_seconds: 60,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure,
    Always,
    UnlessStopped,
}

/// One service as the configuration asks for it, in canonical form: every default
/// filled in, maps ordered, so that two equal specs serialize to the same bytes.
/// `serde_json::to_value` of this struct is the canonical form that plans diff,
/// that the state stores and whose hash identifies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: ServiceName,
    pub backend: BackendKind,
    pub workload: Workload,
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Text>,
    #[serde(default)]
    pub args: Vec<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, Text>,
    /// Names of the services this one needs running first.
    #[serde(default)]
    pub dependencies: Vec<ServiceName>,
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// For a process with a restart policy other than `no`: how its monitor
    /// restarts it. Left out of the canonical form otherwise, so that specs
    /// recorded before it existed keep their hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_settings: Option<RestartSettings>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// For a container, the network it joins when that is not the project
    /// network: an existing network's name, or `host` for the host's network
    /// stack. Part of the spec, so that moving a service to another network
    /// replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The service's TCP host ports are held by a traffic switch (see
    /// the `switch` module) that forwards to the instances, which listen on
    /// private ports (a process: the `PORT` it is given; a container: its
    /// `container_port` on its network). Lowered from a `BlueGreen` or
    /// `RollingUpdate` strategy; part of the spec, so that moving a service
    /// behind a switch or out from behind one replaces it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub behind_switch: bool,
    /// For a service behind switches: how its switches guard themselves
    /// against clients that hold connections (`deployment.switch`). `None`
    /// (left out of the canonical form, so that specs recorded before it
    /// existed keep their hashes) is [`SwitchSettings::default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchSettings>,
    /// For a Swarm service: how Swarm rolls its tasks over on an update
    /// (its `UpdateConfig`), derived from `deployment.strategy`. `None`
    /// (left out of the canonical form, so that specs recorded before it
    /// existed keep their hashes) is the `Hybrid` policy,
    /// [`SwarmUpdate::hybrid`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_update: Option<SwarmUpdate>,
    /// The variables of the environment `deploy-code` runs in that an
    /// instance is given besides its `env` (names, or patterns with `*`),
    /// sorted and each once: `inherit_env` of the service and of
    /// `deployment`. Only names travel in the spec, never values; a process
    /// also gets the [`BASE_ENV`] set. Left out of the canonical form when
    /// empty, so that specs recorded before it existed keep their hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherit_env: Vec<String>,
}

/// What every local process (and nothing else) inherits from the environment
/// `deploy-code` runs in, whatever its `inherit_env`: what a program needs to
/// find programs, its home and its locale. `LC_*` is every locale variable.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_*", "TZ", "TERM"];

/// The prefix of `deploy-code`'s own variables (marks, the state key, the
/// secrets directory, template variables): never inherited by an instance,
/// whatever pattern names it.
pub const OWN_ENV_PREFIX: &str = "DEPLOY_CODE_";

/// Whether the variable `name` matches `pattern`: a name, or a pattern in
/// which `*` stands for any run of characters (none included).
pub fn env_pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    // Where the last `*` was, and where in `name` its run ends so far.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            // Let the last `*` take one more character.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == b'*')
}

/// `deployment.switch`: how a traffic switch guards itself against clients
/// that hold connections without using them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchSettings {
    /// A connection on which neither side sent a byte for this long is closed.
    pub idle_timeout_seconds: u32,
    /// On a port that speaks HTTP, a client that has not sent its whole
    /// request head this long after it connected is closed (slowloris).
    pub header_timeout_seconds: u32,
    /// Client connections open at once; those beyond are shed.
    pub max_connections: u32,
}

impl SwitchSettings {
    /// kamal-proxy's idle timeout.
    pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 60;
    /// kamal-proxy's read timeout (nginx's `client_header_timeout` is 60).
    pub const DEFAULT_HEADER_TIMEOUT_SECONDS: u32 = 30;
    /// Bounded below by what the switch's file descriptors allow.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
}

impl Default for SwitchSettings {
    fn default() -> Self {
        Self {
            idle_timeout_seconds: Self::DEFAULT_IDLE_TIMEOUT_SECONDS,
            header_timeout_seconds: Self::DEFAULT_HEADER_TIMEOUT_SECONDS,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// In what order Swarm replaces a task: the new one first, or the old one
/// stopped first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    StartFirst,
    StopFirst,
}

/// A Swarm service's update policy (`UpdateConfig`); on failure Swarm
/// always rolls the service back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmUpdate {
    /// Tasks replaced at once; 0 is all at once.
    pub parallelism: u32,
    pub order: UpdateOrder,
    /// How long Swarm watches each new task after it runs (and is healthy)
    /// before it counts the task updated; a task failing in that time rolls
    /// the service back.
    pub monitor_seconds: u64,
}

impl SwarmUpdate {
    /// How long a new task is watched when the health gate asks for no
    /// `min_healthy_seconds`.
    pub const DEFAULT_MONITOR_SECONDS: u64 = 5;

    /// The update policy of a Swarm service under `strategy`: `rolling` is
    /// `deployment.rolling`, `min_healthy_seconds` the health gate's hold,
    /// `fixed_host_port` whether the service publishes a fixed host port
    /// (one listener promised: `Sequential`, `Parallel` and `Hybrid`
    /// replace stop-first there, as on one host).
    pub fn for_strategy(
        strategy: Strategy,
        rolling: RollingSettings,
        min_healthy_seconds: u64,
        fixed_host_port: bool,
    ) -> Self {
        let monitor_seconds = if min_healthy_seconds > 0 {
            min_healthy_seconds
        } else {
            Self::DEFAULT_MONITOR_SECONDS
        };
        let by_port = if fixed_host_port {
            UpdateOrder::StopFirst
        } else {
            UpdateOrder::StartFirst
        };
        let (parallelism, order) = match strategy {
            Strategy::Sequential | Strategy::Hybrid => (1, by_port),
            Strategy::Parallel => (0, by_port),
            // Canary is refused on Swarm by `validate`; as BlueGreen here.
            Strategy::BlueGreen | Strategy::Canary => (0, UpdateOrder::StartFirst),
            Strategy::RollingUpdate if rolling.max_surge > 0 => {
                (rolling.max_surge, UpdateOrder::StartFirst)
            }
            Strategy::RollingUpdate => (rolling.max_unavailable.max(1), UpdateOrder::StopFirst),
        };
        Self {
            parallelism,
            order,
            monitor_seconds,
        }
    }

    /// The policy of `Hybrid`, the default strategy (and of every Swarm
    /// service recorded before the policy followed the strategy).
    pub fn hybrid(fixed_host_port: bool) -> Self {
        Self::for_strategy(
            Strategy::Hybrid,
            RollingSettings::default(),
            0,
            fixed_host_port,
        )
    }
}

/// `deployment.rolling`: how many replicas a `RollingUpdate` replaces at
/// once (as Kubernetes' `maxSurge` and `maxUnavailable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingSettings {
    /// New replicas that may run beyond `replicas` while old ones still
    /// serve.
    pub max_surge: u32,
    /// Old replicas that may stop before their successors passed their
    /// gate.
    pub max_unavailable: u32,
}

impl Default for RollingSettings {
    fn default() -> Self {
        Self {
            max_surge: 1,
            max_unavailable: 0,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ServiceSpec {
    /// The canonical JSON form (sensitive values as digests).
    pub fn canonical(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a ServiceSpec always serializes")
    }

    /// `sha256:<hex>` of the canonical JSON: the identity of this exact spec.
    pub fn spec_hash(&self) -> String {
        // The same bytes as `canonical()` written out, streamed into the hash.
        let mut h = Sha256::new();
        serde_json::to_writer(&mut h, self).expect("a ServiceSpec always serializes");
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// Recomputes every sensitive digest under `key` (see [`Sensitive::rekey`]).
    pub fn rekey(&mut self, key: &SecretKey) {
        if let Some(c) = &mut self.command {
            c.rekey(key);
        }
        self.args.iter_mut().for_each(|a| a.rekey(key));
        self.env.values_mut().for_each(|v| v.rekey(key));
    }

    /// Whether an instance of this spec is given the variable `name` of the
    /// environment `deploy-code` runs in: a name its `inherit_env` matches
    /// or, for a local process (`base`), one of [`BASE_ENV`]; never one of
    /// `deploy-code`'s own ([`OWN_ENV_PREFIX`]).
    pub fn inherits(&self, name: &str, base: bool) -> bool {
        if name.starts_with(OWN_ENV_PREFIX) {
            return false;
        }
        let base = base && BASE_ENV.iter().any(|p| env_pattern_matches(p, name));
        base || self
            .inherit_env
            .iter()
            .any(|p| env_pattern_matches(p, name))
    }

    /// True when any value of this spec is sensitive.
    pub fn has_sensitive(&self) -> bool {
        self.command.as_ref().is_some_and(Text::is_sensitive)
            || self.args.iter().any(Text::is_sensitive)
            || self.env.values().any(Text::is_sensitive)
    }

    /// The loopback ports an instance of this spec holds or is probed at on
    /// the host: its host ports, and for a process (or a container on the
    /// host's network) the port of an HTTP or TCP health check on the
    /// loopback, which it must be listening on whether declared or not.
    pub(crate) fn host_addresses(&self) -> std::collections::BTreeSet<u16> {
        if self.behind_switch {
            // The switch holds the host ports; instances listen and are
            // probed on private ports.
            return std::collections::BTreeSet::new();
        }
        let mut out: std::collections::BTreeSet<u16> = self.host_ports().map(|(p, _)| p).collect();
        let on_host = self
            .backend
            .binds_on_host(self.network.as_deref() == Some("host"));
        if on_host
            && let Some(p) = self
                .health_check
                .as_ref()
                .and_then(|h| h.probe.loopback_port())
        {
            out.insert(p);
        }
        out
    }

    /// Why replacing this spec by `after` must stop the old instances first,
    /// or `None` when the new ones can start and pass their gate before the
    /// old ones stop: they would share a host address (a host port, or the
    /// loopback port a process is probed at), or a name (a Swarm service's
    /// is fixed).
    pub(crate) fn stop_first_reason(&self, after: &ServiceSpec) -> Option<StopFirst> {
        if after.backend.fixed_instance_name() {
            return Some(StopFirst::FixedName);
        }
        if after.behind_switch && !self.behind_switch {
            // The switch takes over the host ports the old instances hold.
            let held = self.host_addresses();
            let taken: Vec<u16> = after
                .host_ports()
                .map(|(p, _)| p)
                .filter(|p| held.contains(p))
                .collect();
            return (!taken.is_empty()).then_some(StopFirst::SwitchTakesPorts(taken));
        }
        if self.behind_switch && !after.behind_switch {
            let held: std::collections::BTreeSet<u16> = self.host_ports().map(|(p, _)| p).collect();
            let shared: Vec<u16> = after
                .host_addresses()
                .into_iter()
                .filter(|p| held.contains(p))
                .collect();
            if !shared.is_empty() {
                return Some(StopFirst::SwitchHoldsPorts(shared));
            }
        }
        let old = self.host_addresses();
        let shared: Vec<u16> = after
            .host_addresses()
            .into_iter()
            .filter(|p| old.contains(p))
            .collect();
        (!shared.is_empty()).then_some(StopFirst::OldHoldsPorts(shared))
    }

    /// Host ports this service claims (all replicas), with their protocol.
    pub(crate) fn host_ports(&self) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.ports
            .iter()
            .filter_map(|p| p.host_port.map(|h| (h, p.protocol)))
    }
}

/// The rendered, validated configuration: the desired state.
#[derive(Clone, Debug)]
pub struct DesiredState {
    pub settings: Settings,
    /// Enabled services only. Disabled ones are listed in `disabled`. Shared
    /// with the plan's changes, which carry the same specs.
    pub services: BTreeMap<ServiceName, std::sync::Arc<ServiceSpec>>,
    pub disabled: Vec<ServiceName>,
}

impl DesiredState {
    /// Recomputes every secret digest under the state's key, so that specs compare
    /// equal to what the state recorded.
    pub fn rekey(&mut self, key: &SecretKey) {
        // Only a spec with a sensitive value changes: the others stay shared.
        self.services
            .values_mut()
            .filter(|s| s.has_sensitive())
            .for_each(|s| std::sync::Arc::make_mut(s).rekey(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hooks_worst_case_counts_every_attempt_and_pause() {
        use std::time::Duration;
        let hook = |retries| HookSpec {
            target: HookTarget::Webhook(Text::plain("http://127.0.0.1:1/")),
            timeout: Duration::from_secs(10),
            retries,
        };
        let pauses: Vec<Duration> = (1..=6).map(HookSpec::backoff).collect();
        assert_eq!(
            pauses,
            [500, 1000, 2000, 4000, 5000, 5000].map(Duration::from_millis)
        );
        for retries in [0, 1, 4, 5, 10] {
            let summed: Duration = (1..=retries).map(HookSpec::backoff).sum();
            assert_eq!(
                hook(retries).worst_case(),
                Duration::from_secs(10) * (retries + 1) + summed,
                "{retries}"
            );
        }
        // Bounded arithmetic for any count, so that `validate` can say how
        // long an out-of-range hook would take.
        assert!(hook(u32::MAX).worst_case() > HookSpec::MAX_TOTAL);
        let program = HookSpec {
            target: HookTarget::Command(vec!["true".into()]),
            ..hook(3)
        };
        assert_eq!(program.worst_case(), Duration::from_secs(10));
    }

    #[test]
    fn an_env_pattern_matches_names_as_a_glob_of_stars() {
        for (pattern, name, want) in [
            ("AWS_*", "AWS_SECRET_ACCESS_KEY", true),
            ("AWS_*", "AWS_", true),
            ("AWS_*", "MY_AWS_KEY", false),
            ("*_TOKEN", "GITHUB_TOKEN", true),
            ("*_TOKEN", "GITHUB_TOKEN_FILE", false),
            ("A*B*C", "AxxBxxBxC", true),
            ("A*B*C", "AxxBxxBxD", false),
            ("*", "ANYTHING", true),
            ("PATH", "PATH", true),
            ("PATH", "PATHS", false),
            ("LC_*", "LC_ALL", true),
            ("LC_*", "LANG", false),
        ] {
            assert_eq!(env_pattern_matches(pattern, name), want, "{pattern} {name}");
        }
    }

    #[test]
    fn seconds_keep_whole_numbers_as_integers() {
        let json = |s: Seconds| serde_json::to_string(&s).unwrap();
        assert_eq!(json(Seconds::whole(5)), "5");
        assert_eq!(json(Seconds::from_millis(250)), "0.25");
        assert_eq!(json(Seconds::from_millis(1500)), "1.5");
        let back = |t: &str| serde_json::from_str::<Seconds>(t).unwrap();
        assert_eq!(back("5"), Seconds::whole(5));
        assert_eq!(back("0.1"), Seconds::from_millis(100));
        assert!(serde_json::from_str::<Seconds>("-1").is_err());
        assert_eq!(Seconds::from_millis(100).to_string(), "0.1");
        assert_eq!(Seconds::from_millis(2000).to_string(), "2");
        assert_eq!(
            Seconds::from_millis(3).at_least(HealthCheck::FLOOR),
            HealthCheck::FLOOR
        );
    }

    #[test]
    fn service_names_are_checked() {
        assert!(ServiceName::parse("api_gateway").is_ok());
        assert!(ServiceName::parse("mcp-01").is_ok());
        assert!(ServiceName::parse("").is_err());
        assert!(ServiceName::parse("Api").is_err());
        assert!(ServiceName::parse("a b").is_err());
        assert!(ServiceName::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn sensitive_values_never_serialize_their_plaintext() {
        let key = SecretKey::new([7; 32]);
        let t = Text::Sensitive(Sensitive::new(&key, "hunter2-canary".into()));
        let json = serde_json::to_string(&t).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains("hmac-sha256:"));
        assert_eq!(format!("{t:?} {t}"), "Sensitive((sensitive)) (sensitive)");
        let back: Text = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t, "equality is by digest");
        assert_eq!(back.expose(), None);
        assert_eq!(t.expose(), Some("hunter2-canary"));
    }

    #[test]
    fn a_changed_secret_changes_the_digest() {
        let key = SecretKey::new([1; 32]);
        assert_ne!(key.digest("a"), key.digest("b"));
        assert_ne!(key.digest("a"), SecretKey::new([2; 32]).digest("a"));
    }
}
