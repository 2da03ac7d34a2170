//! The deployment's settings beside its services: strategies, canary steps,
//! networks, monitoring, `serve`'s security, hooks.

use super::*;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum Strategy {
    /// One action at a time.
    Sequential,
    /// No phase barrier: each action as soon as the actions it depends on are
    /// healthy (bounded by `max_parallel`).
    Parallel,
    /// Phases in order, actions within a phase in parallel (the default).
    #[default]
    Hybrid,
    /// Phases as Hybrid; a replaced service's replicas are replaced one at a
    /// time, each new one gated before the next old one stops; fixed TCP
    /// host ports are held by a traffic switch.
    RollingUpdate,
    /// Phases as Hybrid; a replaced service's complete new set starts beside
    /// the old one and passes its gates, then the traffic switch moves every
    /// new connection to it at once and the old set drains and stops.
    BlueGreen,
    /// Phases as Hybrid; a replaced service's complete new set starts beside
    /// the old one and passes its gates, then the traffic switch sends it a
    /// growing share of new connections, step by step ([`CanarySettings`]),
    /// each step judged from the switch's counters; a failing step rolls the
    /// change set back.
    Canary,
}

impl Strategy {
    /// Whether services with fixed TCP host ports run behind a traffic
    /// switch under this strategy.
    pub(crate) fn uses_switch(self) -> bool {
        matches!(
            self,
            Strategy::BlueGreen | Strategy::RollingUpdate | Strategy::Canary
        )
    }
}

/// How a `Canary` rollout goes: its steps and how each is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanarySettings {
    /// The canary's share at each step (increasing, 1 to 99); after the last
    /// step the new set takes every connection.
    pub steps: Vec<CanaryStep>,
    pub analysis: CanaryAnalysis,
}

/// One step of a canary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// Percent of new connections sent to the new set.
    pub weight: u8,
    /// How long the step lasts; `None`: until `deploy-code promote` or
    /// `abort`.
    pub pause_seconds: Option<u64>,
}

/// How each canary step is judged, from the switch's counters of the new
/// set (since the step began) and an optional Prometheus query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryAnalysis {
    /// Seconds between two judgements.
    pub interval_seconds: u64,
    /// Most share of HTTP 5xx responses (failed connects for plain TCP).
    pub max_error_rate: Option<f64>,
    /// Most share of connections the new set failed or refused.
    pub max_failed_connections: Option<f64>,
    pub max_latency_ms: Option<LatencyLimit>,
    pub prometheus: Option<PrometheusCheck>,
}

/// A latency quantile's limit (time to the response head).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyLimit {
    pub quantile: f64,
    pub value: u64,
}

/// A Prometheus instant query whose first sample must not exceed `max`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrometheusCheck {
    pub url: String,
    pub query: String,
    pub max: f64,
}

impl Default for CanarySettings {
    fn default() -> Self {
        Self {
            steps: vec![
                CanaryStep {
                    weight: 10,
                    pause_seconds: Some(30),
                },
                CanaryStep {
                    weight: 50,
                    pause_seconds: Some(30),
                },
            ],
            analysis: CanaryAnalysis::default(),
        }
    }
}

impl Default for CanaryAnalysis {
    fn default() -> Self {
        Self {
            interval_seconds: 10,
            max_error_rate: Some(0.01),
            max_failed_connections: Some(0.01),
            max_latency_ms: None,
            prometheus: None,
        }
    }
}

/// Why a replace must stop the old instances before the new ones start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", content = "ports", rename_all = "snake_case")]
pub enum StopFirst {
    /// The instance's name is fixed by its service (an orchestrator's
    /// service, as Swarm's): the old one must go before the new one is made.
    FixedName,
    /// The old instances hold host ports the new traffic switch takes over.
    SwitchTakesPorts(Vec<u16>),
    /// The old traffic switch holds host ports the new instances bind.
    SwitchHoldsPorts(Vec<u16>),
    /// The old instances hold host addresses the new ones bind or are probed at.
    OldHoldsPorts(Vec<u16>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSettings {
    pub strategy: Strategy,
    pub max_parallel: u32,
    /// Default interval between health probes, seconds.
    pub health_check_interval: u64,
    /// Budget for a whole apply, seconds.
    pub timeout_seconds: u64,
    pub rollback_on_failure: bool,
    /// Budget for the rollback of a failed apply, seconds.
    pub rollback_timeout_seconds: u64,
    /// Grace period between SIGTERM and SIGKILL (or a container's stop timeout).
    pub stop_grace_seconds: u64,
    /// How long a traffic switch lets connections to instances it no longer
    /// sends new ones to finish before those instances stop.
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
    /// The steps and analysis of a `Canary` rollout.
    #[serde(default)]
    pub canary: CanarySettings,
    /// `RollingUpdate`: replicas replaced at once.
    #[serde(default)]
    pub rolling: RollingSettings,
    /// `BlueGreen`: how long the old set is kept after the flip.
    #[serde(default)]
    pub blue_green: BlueGreenSettings,
    /// `deployment.switch`, when given (lowered into each spec behind
    /// switches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchSettings>,
}

/// `deployment.blue_green`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueGreenSettings {
    /// Seconds the old set keeps running, out of the switches' sets, after
    /// the switches moved to the new one: `rollback` in that window flips
    /// back to it without a restart. 0 stops it once drained.
    pub keep_seconds: u64,
}

fn default_drain() -> u64 {
    5
}

impl Default for DeploymentSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Hybrid,
            max_parallel: 10,
            health_check_interval: 30,
            timeout_seconds: 300,
            rollback_on_failure: true,
            rollback_timeout_seconds: 300,
            stop_grace_seconds: 10,
            drain_seconds: default_drain(),
            canary: CanarySettings::default(),
            rolling: RollingSettings::default(),
            blue_green: BlueGreenSettings::default(),
            switch: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// Bridge, Host or Overlay.
    pub mode: String,
    /// An existing network that containers join instead of the project
    /// network; never created or removed by deploy-code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// Host ports allocated to containers that name none.
    pub port_range: (u16, u16),
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            mode: "Bridge".into(),
            name: None,
            cidr: None,
            dns_servers: Vec::new(),
            port_range: (30000, 40000),
        }
    }
}

impl NetworkSettings {
    /// Containers share the host's network stack (`mode: Host`).
    pub(crate) fn is_host(&self) -> bool {
        self.mode == "Host"
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitoringSettings {
    pub enabled: bool,
    /// A Prometheus Pushgateway base URL that `apply` and `destroy` push to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushgateway: Option<String>,
    /// A node-exporter textfile-collector directory to write `deploy_code.prom` into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub textfile_dir: Option<String>,
}

/// Settings that apply to the whole deployment, resolved with defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Names containers (`<project>-<service>`), labels everything the tool creates.
    pub project: String,
    pub environment: String,
    /// Where services run unless a service says otherwise.
    pub default_backend: BackendKind,
    pub deployment: DeploymentSettings,
    pub network: NetworkSettings,
    /// Absolute, resolved against the config file's directory.
    pub data_dir: std::path::PathBuf,
    /// Absolute, resolved against the config file's directory; per-service logs of processes.
    pub log_dir: std::path::PathBuf,
    /// Share of each capacity dimension kept for the system (the seeds keep 20%).
    pub reserve_percent: u8,
    pub monitoring: MonitoringSettings,
    /// The state file from the config (`state.path`), resolved; flags and env override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_path: Option<std::path::PathBuf>,
    /// How `deploy-code serve` is reached and who may call it (never part of a plan).
    #[serde(skip)]
    pub security: SecuritySettings,
    /// Programs and webhooks told about runs (never part of a plan).
    #[serde(skip)]
    pub hooks: HooksSettings,
}

/// The calls of `deploy-code serve`, as permissions of a role.
pub(crate) const PERMISSIONS: [&str; 12] = [
    "validate", "plan", "status", "health", "history", "events", "apply", "rollback", "restart",
    "destroy", "audit", "state",
];

/// The default roles and their permissions: `viewer` reads, `operator` also
/// changes the deployment through saved plans, rollbacks and restarts,
/// `admin` may do everything.
pub(crate) fn default_roles()
-> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let viewer = &PERMISSIONS[..6];
    let operator = &PERMISSIONS[..9];
    let set = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect();
    [
        ("viewer".to_owned(), set(viewer)),
        ("operator".to_owned(), set(operator)),
        ("admin".to_owned(), set(&PERMISSIONS)),
    ]
    .into_iter()
    .collect()
}

/// `security:` resolved: read by `serve` only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecuritySettings {
    pub tls: Option<TlsSettings>,
    /// `None`: no authentication; every caller is `anonymous`.
    pub auth: Option<AuthSettings>,
    /// Role name to permissions; `None`: every authenticated caller may call everything.
    pub rbac: Option<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>>,
}

/// TLS of the server; paths absolute. Missing files are reported when `serve` starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsSettings {
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub client_ca: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AuthSettings {
    /// `None` when the configuration names no key (`validate` and `serve`
    /// refuse it).
    pub key: Option<JwtKey>,
    /// The longest token lifetime accepted, seconds.
    pub max_lifetime: Option<u64>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// The shortest HS256 secret accepted, bytes: RFC 7518 §3.2 asks for a key
/// at least as long as the hash's output (256 bits); a shorter one, the
/// empty string above all, lets anyone who guesses it sign tokens.
pub(crate) const MIN_HS256_SECRET_BYTES: usize = 32;

#[derive(Clone, Debug, PartialEq)]
pub enum JwtKey {
    /// HS256 with a secret.
    Hs256(Text),
    /// RS256 or EdDSA with a public key file (PEM).
    Public {
        path: std::path::PathBuf,
        algorithm: JwtAlgorithm,
    },
}

// The algorithm of a JWT public key (`security.jwt_algorithm`); no doc comment,
// which would become a description in the JSON Schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum JwtAlgorithm {
    RS256,
    EdDSA,
}

/// `hooks:` resolved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HooksSettings {
    pub pre_apply: Vec<HookSpec>,
    pub post_apply: Vec<HookSpec>,
    pub on_failure: Vec<HookSpec>,
    pub on_rollback: Vec<HookSpec>,
}

impl HooksSettings {
    pub fn is_empty(&self) -> bool {
        self.pre_apply.is_empty()
            && self.post_apply.is_empty()
            && self.on_failure.is_empty()
            && self.on_rollback.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HookSpec {
    pub target: HookTarget,
    pub timeout: std::time::Duration,
    /// Further attempts of a webhook.
    pub retries: u32,
}

impl HookSpec {
    /// The most seconds one attempt may take (`timeout_seconds`).
    pub const MAX_TIMEOUT_SECONDS: u64 = 300;
    /// The most further attempts of a webhook (`retries`).
    pub const MAX_RETRIES: u32 = 10;
    /// The most a hook may take, its attempts and pauses together: what
    /// `validate` allows, and where a run stops waiting for it.
    pub const MAX_TOTAL: std::time::Duration = std::time::Duration::from_secs(600);

    /// The pause before further attempt `n` (from 1): 0.5 s, doubled each
    /// time, at most 5 s.
    pub fn backoff(n: u32) -> std::time::Duration {
        let ms = 500u64.saturating_mul(1u64 << n.saturating_sub(1).min(20));
        std::time::Duration::from_millis(ms.min(5_000))
    }

    /// The longest the hook can take: every attempt to its timeout, with
    /// the pauses between them.
    pub fn worst_case(&self) -> std::time::Duration {
        let attempts = match self.target {
            HookTarget::Command(_) => 1,
            HookTarget::Webhook(_) => self.retries.saturating_add(1),
        };
        // The pauses double from 0.5 s for the first four, then stay at 5 s.
        let pauses = u64::from(attempts - 1);
        let doubling = pauses.min(4);
        let pause_ms = 500 * ((1u64 << doubling) - 1) + (pauses - doubling) * 5_000;
        self.timeout
            .saturating_mul(attempts)
            .saturating_add(std::time::Duration::from_millis(pause_ms))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum HookTarget {
    /// A program and its arguments, run without a shell.
    Command(Vec<String>),
    /// A webhook URL (sensitive when it holds a secret).
    Webhook(Text),
}
