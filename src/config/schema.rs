//! The file format of `deploy-code.yaml`, as Rust types.
//!
//! These types are the one definition of the document: the JSON Schema
//! (`schemas/deploy-code.schema.json`) is generated from them with schemars, the
//! loader validates the parsed YAML against that schema (with spans), and the doc
//! comments are the descriptions editors show. Every field is optional unless
//! noted; the defaults are applied when the file is lowered to the model.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A deploy-code configuration: settings and the services to run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "deploy-code configuration")]
pub(crate) struct ConfigFile {
    /// Version of the configuration document, e.g. `"1.0.0"`. Informational.
    pub version: Option<String>,
    /// Deployment environment name (development, staging, production...). Default `default`.
    pub environment: Option<String>,
    /// Accepted for compatibility; a dry run is `deploy-code plan`. Default false.
    pub dry_run: Option<bool>,
    /// Names containers `<project>-<service>` and labels everything the tool creates. Default `code`.
    pub project: Option<String>,
    /// Template defaults: the lowest-precedence template variables. Their values must not use template variables themselves.
    pub variables: Option<BTreeMap<String, serde_json::Value>>,
    /// Names of environment variables that hold secrets: `${NAME}` of one of these is sensitive.
    pub secrets: Option<Vec<String>>,
    /// Where the state lives.
    pub state: Option<StateSection>,
    pub infrastructure: Option<Infrastructure>,
    pub security: Option<Security>,
    pub deployment: Option<Deployment>,
    pub monitoring: Option<Monitoring>,
    pub hooks: Option<Hooks>,
    /// The services, by name (`[a-z0-9][a-z0-9_-]{0,62}`).
    pub services: Option<BTreeMap<String, Option<Service>>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateSection {
    /// The state file, relative to the config's directory. Default `.deploy-code/state.db`.
    pub path: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub(crate) enum ContainerRuntime {
    Docker,
    /// Treated as Docker (Podman serves the Docker API).
    Podman,
    /// Not supported: rejected.
    Containerd,
    /// Local processes only.
    Process,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub(crate) enum Orchestrator {
    /// Containers on the local Docker engine.
    DockerCompose,
    /// Not supported: rejected.
    Kubernetes,
    /// Docker Swarm services.
    Swarm,
    None,
}

impl Orchestrator {
    /// The value as written in the configuration.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Orchestrator::DockerCompose => "DockerCompose",
            Orchestrator::Kubernetes => "Kubernetes",
            Orchestrator::Swarm => "Swarm",
            Orchestrator::None => "None",
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Infrastructure {
    /// Docker, Podman, Containerd, Process or None. Default: Process (services with an image use Docker).
    pub container_runtime: Option<ContainerRuntime>,
    /// DockerCompose, Kubernetes, Swarm or None. Default None; Swarm runs image services as Swarm services.
    pub orchestrator: Option<Orchestrator>,
    pub network: Option<Network>,
    pub storage: Option<Storage>,
    /// Share (percent) of each capacity dimension kept for the system. Default 20.
    #[schemars(range(max = 90))]
    pub resource_reserve_percent: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub(crate) enum NetworkMode {
    Bridge,
    Host,
    Overlay,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Network {
    /// Bridge, Host or Overlay. Default Bridge.
    pub mode: Option<NetworkMode>,
    /// An existing network to join instead of the project network that
    /// deploy-code creates (and removes when empty): e.g. one shared with a
    /// reverse proxy, or `bridge`, Docker's default network (no name
    /// resolution between containers, quicker starts). Never created or
    /// removed by deploy-code.
    pub name: Option<String>,
    /// Subnet for the project network, e.g. `172.20.0.0/16`.
    pub cidr: Option<String>,
    pub dns_servers: Option<Vec<String>>,
    /// Host ports allocated to containers that name none. Default 30000–40000.
    pub port_range: Option<PortRange>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortRange {
    #[schemars(range(min = 1))]
    pub start: u16,
    #[schemars(range(min = 1))]
    pub end: u16,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Storage {
    /// Data directory, relative to the config's directory. Default `.deploy-code/data`.
    pub data_dir: Option<String>,
    /// Per-service logs of processes. Default `.deploy-code/logs`.
    pub log_dir: Option<String>,
    /// Accepted; unused.
    pub temp_dir: Option<String>,
    /// Accepted; unused.
    pub backup_dir: Option<String>,
}

/// How `deploy-code serve` is reached and who may call it. Read by `serve`
/// only; it changes nothing that is deployed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Security {
    /// Serve over TLS with `cert_path` and `key_path`. Default false.
    pub tls_enabled: Option<bool>,
    /// The server's certificate chain (PEM), relative to the config's directory.
    pub cert_path: Option<String>,
    /// The server's private key (PEM).
    pub key_path: Option<String>,
    /// Require client certificates signed by these CA certificates (PEM). Needs `tls_enabled`.
    pub client_ca_path: Option<String>,
    /// The same as a mapping: `tls: {cert_path, key_path, client_ca_path}`
    /// serves over TLS (instead of `tls_enabled` and the flat keys).
    pub tls: Option<TlsDef>,
    pub auth: Option<Auth>,
    pub rbac: Option<Rbac>,
}

/// TLS of `deploy-code serve`; paths are relative to the config's directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsDef {
    /// The server's certificate chain (PEM).
    pub cert_path: String,
    /// The server's private key (PEM).
    pub key_path: String,
    /// Require client certificates signed by these CA certificates (PEM).
    pub client_ca_path: Option<String>,
}

/// Token authentication of the server's callers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Auth {
    /// Every call needs a valid bearer token; needs a key (`jwt_secret`, or `jwt_public_key_path` with `jwt_algorithm`). Default false.
    pub enabled: Option<bool>,
    /// `JWT` (the only method). OAuth2 and Basic are refused.
    pub method: Option<String>,
    /// The longest lifetime accepted: a token whose `exp` is further than this from the server's clock (5 s of slack), or from its own `iat`, is refused.
    #[schemars(range(min = 1))]
    pub token_expiry_seconds: Option<u64>,
    /// HS256 key, as `"{{ secret('NAME') }}"` (a secret, never plain text in the file), at least 32 bytes.
    pub jwt_secret: Option<String>,
    /// A public key (PEM) checking RS256 or EdDSA tokens, relative to the config's directory.
    pub jwt_public_key_path: Option<String>,
    /// The algorithm of `jwt_public_key_path`: RS256 or EdDSA.
    pub jwt_algorithm: Option<JwtAlgorithm>,
    /// The `iss` claim every token must carry.
    pub issuer: Option<String>,
    /// The `aud` claim every token must carry.
    pub audience: Option<String>,
}

pub use crate::model::JwtAlgorithm;

/// Roles and what they may call. Without `roles`: `viewer` (validate, plan,
/// status, health, history, events), `operator` (those, apply, rollback,
/// restart) and `admin` (everything, destroy and audit too).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rbac {
    /// A token's `role` (or `roles`) claim decides what it may call. Default false: every valid token may call everything.
    pub enabled: Option<bool>,
    /// The roles that exist, each name once: a default role by name, or a role with its permissions (call names: validate, plan, apply (or deploy), destroy, rollback, restart, status, health, history, events, audit; `*` for all).
    pub roles: Option<Vec<Role>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Role {
    Name(String),
    Full(RoleDef),
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleDef {
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Strategy {
    Sequential,
    Parallel,
    Hybrid,
    RollingUpdate,
    BlueGreen,
    Canary,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Sequential (one action at a time), Parallel (no phase barrier: each action once the actions it depends on are healthy, up to `max_parallel`), Hybrid (phases in order, a phase's actions at once up to `max_parallel`; the default), RollingUpdate (a replaced service replica by replica), BlueGreen (a replaced service's whole new set beside the old one, then one switch) or Canary (the whole new set beside the old one, then a growing share of connections, step by step, each step judged; see `canary`). Under RollingUpdate, BlueGreen and Canary, fixed TCP host ports are held by a traffic switch.
    pub strategy: Option<Strategy>,
    /// Most actions at once, 1 to 4294967295. Default 10.
    #[schemars(range(min = 1))]
    pub max_parallel: Option<u32>,
    /// Default health-probe interval, seconds. Default 30.
    #[schemars(range(min = 1))]
    pub health_check_interval: Option<u64>,
    /// Budget for a whole apply, seconds. Default 300.
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u64>,
    /// Undo a failed apply. Default true.
    pub rollback_on_failure: Option<bool>,
    /// Budget for a rollback, seconds. Default 300.
    #[schemars(range(min = 1))]
    pub rollback_timeout_seconds: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL (a container's stop timeout; a Swarm task's stop grace period, which Swarm also uses when an update or a failed health check replaces the task). Default 10.
    pub stop_grace_seconds: Option<u64>,
    /// Seconds a traffic switch lets the connections of instances it no longer sends new ones to finish before they stop (RollingUpdate, BlueGreen and Canary only). Default 5.
    pub drain_seconds: Option<u64>,
    /// The steps of a Canary rollout and how each is judged (Canary only).
    pub canary: Option<Canary>,
    /// RollingUpdate only: how many replicas are replaced at once.
    pub rolling: Option<Rolling>,
    /// BlueGreen only: how long the old set is kept after the flip.
    pub blue_green: Option<BlueGreen>,
    /// Variables of the environment `deploy-code` runs in that every service is given besides its `env` (names or `*` patterns, as a service's `inherit_env`, to which they are added).
    pub inherit_env: Option<Vec<String>>,
    /// How each traffic switch guards itself against clients that hold connections without using them (RollingUpdate, BlueGreen and Canary only).
    pub switch: Option<Switch>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    /// Seconds a client connection may stay open with no byte sent either way before the switch closes it, 1 to 86400. Default 60.
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_seconds: Option<u32>,
    /// On a port that speaks HTTP (the service's health check is an `http://` probe of that port), seconds a client may take to send its whole request head after it connected; the switch connects to an instance only once the head is complete, and closes a slower client with `408`. 1 to 3600. Default 30.
    #[schemars(range(min = 1, max = 3600))]
    pub header_timeout_seconds: Option<u32>,
    /// Client connections a switch keeps open at once, 1 to 1000000; one beyond is shed at once (`503` on a port that speaks HTTP, else closed) and the switch shows as degraded in `status`. Also bounded by the switch's open-file limit (two descriptors a connection). Default 10000.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// Seconds the old set of a service behind a traffic switch keeps running, out of the switch's set, after the switch moved to the new set; `deploy-code rollback` in that window flips the switch back to it at once, without a restart. `apply` waits the window out, then stops the old set. Default 0: the old set stops once drained.
    pub keep_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// New replicas that may run beyond `replicas` during a rolling update, each gated before an old one stops (Kubernetes' `maxSurge`; on Swarm: tasks updated at once, start-first). Default 1.
    pub max_surge: Option<u32>,
    /// Old replicas that may stop before their successors pass their gate (Kubernetes' `maxUnavailable`; on Swarm, with `max_surge: 0`: tasks updated at once, stop-first). Default 0; not both 0.
    pub max_unavailable: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The new set's share of new connections at each step, increasing, each 1 to 99; after the last step it takes every connection. Default: 10 % for 30 s, then 50 % for 30 s.
    pub steps: Option<Vec<CanaryStep>>,
    /// How each step is judged, every `interval_seconds`, from the traffic switch's counters of the new set (since the step began) and an optional Prometheus query. A failing judgement sends every connection back to the old set and rolls the change set back.
    pub analysis: Option<CanaryAnalysis>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of new connections sent to the new set, 1 to 99.
    #[schemars(range(min = 1, max = 99))]
    pub weight: u8,
    /// How long the step lasts, seconds. Omitted: until `deploy-code promote` or `deploy-code abort` (analysis keeps judging meanwhile).
    pub pause_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryAnalysis {
    /// Seconds between two judgements of a step. Default 10.
    #[schemars(range(min = 1))]
    pub interval_seconds: Option<u64>,
    /// Most share (0 to 1) of the new set's HTTP responses that are 5xx (of its connections that failed, when the port does not speak HTTP). Default 0.01.
    #[schemars(range(min = 0, max = 1))]
    pub max_error_rate: Option<f64>,
    /// Most share (0 to 1) of connections to the new set that failed or were refused. Default 0.01.
    #[schemars(range(min = 0, max = 1))]
    pub max_failed_connections: Option<f64>,
    /// Most latency (time to the response head) of the new set at a quantile; HTTP only.
    pub max_latency_ms: Option<LatencyLimit>,
    /// A Prometheus instant query whose first sample must not exceed `max`.
    pub prometheus: Option<PrometheusCheck>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyLimit {
    /// The quantile, above 0 and at most 1 (0.99: the 99th percentile).
    #[schemars(range(min = 0, max = 1))]
    pub quantile: f64,
    /// Milliseconds.
    #[schemars(range(min = 1))]
    pub value: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusCheck {
    /// The Prometheus server (`http://127.0.0.1:9090`); the query goes to `<url>/api/v1/query`.
    pub url: String,
    /// A PromQL expression; the value of its first sample is compared with `max`.
    pub query: String,
    /// Most value the query may return.
    pub max: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Monitoring {
    /// Default false.
    pub enabled: Option<bool>,
    pub prometheus: Option<Prometheus>,
    pub grafana: Option<Grafana>,
    pub alerting: Option<Alerting>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Prometheus {
    pub endpoint: Option<String>,
    pub scrape_interval: Option<u64>,
    pub retention_days: Option<u64>,
    /// A Pushgateway base URL that `apply` and `destroy` push metrics to.
    pub pushgateway: Option<String>,
    /// A node-exporter textfile-collector directory for `deploy_code.prom`.
    pub textfile_dir: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grafana {
    pub endpoint: Option<String>,
    pub dashboards: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Alerting {
    pub enabled: Option<bool>,
    pub webhook_url: Option<String>,
    pub rules: Option<Vec<AlertRule>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertRule {
    pub name: String,
    pub condition: String,
    pub severity: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// A local process (the default without an image).
    Process,
    /// A container (needs `image`).
    Container,
    /// A one-shot task: succeeds by exiting 0.
    Task,
    /// As process.
    Custom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    No,
    OnFailure,
    Always,
    UnlessStopped,
}

/// `restart`: a policy, or a policy with its back-off and circuit breaker.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RestartDef {
    Policy(Restart),
    Settings(RestartSettingsDef),
}

impl RestartDef {
    pub fn policy(&self) -> Option<Restart> {
        match self {
            RestartDef::Policy(p) => Some(*p),
            RestartDef::Settings(s) => s.policy,
        }
    }
}

/// A restart policy with its back-off and circuit breaker. For a local
/// process, its monitor applies them, and for a Docker container with
/// `health_check.restart_after_failures`; any other container's engine takes
/// the policy only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartSettingsDef {
    /// no, on-failure, always or unless-stopped. Default no.
    pub policy: Option<Restart>,
    /// Pause before the first restart, milliseconds, from 0 to 3600000 (an hour). Default 100.
    #[schemars(range(max = 3_600_000))]
    pub initial_delay_ms: Option<u64>,
    /// Longest pause between restarts, seconds, from 1 to 86400 (a day). Default 30.
    #[schemars(range(min = 1, max = 86_400))]
    pub max_delay_seconds: Option<u64>,
    /// Each pause is the previous one times this, from 1 to 100. Default 2.
    #[schemars(range(min = 1, max = 100))]
    pub multiplier: Option<f64>,
    /// The back-off starts again once an instance has run (and passed its health check) this long, seconds, from 0 to 31536000 (a year). Default 10.
    #[schemars(range(max = 31_536_000))]
    pub reset_after_seconds: Option<u64>,
    /// Restarts allowed within `window_seconds`; one more opens the circuit (`failed (circuit open)`) until the next apply or `deploy-code restart`. At least 1. Default 5.
    #[schemars(range(min = 1))]
    pub max_restarts: Option<u32>,
    /// The circuit breaker's window, seconds, from 1 to 31536000 (a year). Default 60.
    #[schemars(range(min = 1, max = 31_536_000))]
    pub window_seconds: Option<u64>,
}

/// An environment value: a string, a number or a boolean (written as text).
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// Reads a value as the untagged derive would (the first of `Bool`, `Int`,
/// `Float`, `Str` that accepts it, the same message when none does) from the
/// value's own type, without buffering it and building the error of every
/// variant tried before the one that fits.
impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn none<T, E: serde::de::Error>() -> Result<T, E> {
            Err(E::custom(
                "data did not match any variant of untagged enum EnvValue",
            ))
        }
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Bool(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EnvValue, E> {
                // `i64` refuses what it cannot hold; `f64` takes any integer.
                Ok(i64::try_from(v).map_or(EnvValue::Float(v as f64), EnvValue::Int))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Float(v))
            }
            fn visit_char<E: serde::de::Error>(self, v: char) -> Result<EnvValue, E> {
                Ok(EnvValue::Str(v.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Str(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<EnvValue, E> {
                Ok(EnvValue::Str(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<EnvValue, E> {
                std::str::from_utf8(v).map_or_else(|_| none(), |s| self.visit_str(s))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<EnvValue, E> {
                none()
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<EnvValue, E> {
                none()
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, _: D) -> Result<EnvValue, D::Error> {
                none()
            }
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(
                self,
                _: D,
            ) -> Result<EnvValue, D::Error> {
                none()
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<EnvValue, A::Error> {
                none()
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<EnvValue, A::Error> {
                none()
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(self, _: A) -> Result<EnvValue, A::Error> {
                none()
            }
        }
        d.deserialize_any(V)
    }
}

/// One service.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Default true. A disabled service is not deployed; nothing may depend on it.
    pub enabled: Option<bool>,
    /// process, container, task or custom. Default: container with an image, else process.
    pub service_type: Option<ServiceType>,
    /// A one-shot task (a migration): it succeeds by exiting 0. Default false.
    pub oneshot: Option<bool>,
    /// Container image; the service runs on Docker (Swarm with `orchestrator: Swarm`).
    pub image: Option<String>,
    /// The seeds' spelling of `image`.
    pub container_image: Option<String>,
    /// Instances to run, 1 to 4294967295. Default 1. To stop a service, remove it or set `enabled: false`.
    #[schemars(range(min = 1))]
    pub replicas: Option<u32>,
    /// The program (a process) or the entrypoint override (a container).
    pub command: Option<String>,
    /// Arguments, passed without a shell.
    pub args: Option<Vec<String>>,
    /// Working directory, relative to the config's directory for a process.
    pub working_dir: Option<String>,
    /// Environment variables.
    pub env: Option<BTreeMap<String, EnvValue>>,
    /// The seeds' spelling of `env`.
    pub environment: Option<BTreeMap<String, EnvValue>>,
    /// Services that must be running (healthy) first.
    pub dependencies: Option<Vec<String>>,
    pub resources: Option<ResourcesDef>,
    pub health_check: Option<HealthCheckDef>,
    pub ports: Option<Vec<PortDef>>,
    pub volumes: Option<Vec<VolumeDef>>,
    /// no, on-failure, always or unless-stopped (default no), or a map with `policy` and the back-off and circuit breaker of a monitored instance (`initial_delay_ms`, `max_delay_seconds`, `multiplier`, `reset_after_seconds`, `max_restarts`, `window_seconds`). A local process is restarted by its monitor; a Docker container with `health_check.restart_after_failures` by a monitor too; any other container by its engine.
    pub restart: Option<RestartDef>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Variables of the environment `deploy-code` runs in that the service is given besides its `env`: names, or patterns in which `*` stands for any run of characters (`AWS_*`), added to `deployment.inherit_env`. Nothing else is passed on, except for a local process the base set `PATH`, `HOME`, `USER`, `LANG`, `LC_*`, `TZ` and `TERM`; `deploy-code`'s own `DEPLOY_CODE_*` variables never are. `plan` shows the names, never the values.
    pub inherit_env: Option<Vec<String>>,
}

/// What one replica needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDef {
    /// Logical CPUs, fractions allowed: a finite number above 0. Default 0.1 for a local process (only what `plan` counts: a process runs without a CPU limit), 0.5 for a container (applied as its limit).
    #[schemars(range(min = 0))]
    pub cpu_cores: Option<f64>,
    /// Memory in MB, 1 to 18446744073709551615. Default 256.
    pub memory_mb: Option<u64>,
    /// Disk in GB, 0 to 18446744073709551615. Default 0.
    pub storage_gb: Option<u64>,
    /// GPUs per replica, 0 to 4294967295. Default 0.
    pub gpu_count: Option<u32>,
    /// Free memory each assigned GPU must have, MB, 1 to 18446744073709551615.
    pub gpu_memory_mb: Option<u64>,
}

/// A health gate: exactly one of `endpoint`, `command` or `tcp`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckDef {
    /// An `http://` or `https://` URL, or a path such as `/health` (the service's first port). Healthy on 2xx. A loopback URL naming a declared `host_port` probes that host port; one naming a declared `container_port` probes wherever that port of the instance is reachable; any other URL is used as written.
    pub endpoint: Option<String>,
    /// An argv run without a shell (inside the container for Docker); healthy on exit 0.
    pub command: Option<Vec<String>>,
    /// A TCP port to connect to.
    pub tcp: Option<u16>,
    /// The host for `tcp`. Default 127.0.0.1.
    pub host: Option<String>,
    /// Seconds between probes, 0.01 to 31536000 (a year); fractions to the millisecond (`0.1`). Default `deployment.health_check_interval`.
    #[schemars(range(min = 0.01, max = 31536000))]
    pub interval_seconds: Option<f64>,
    /// Seconds one probe may take, 0.01 to 31536000 (a year); fractions to the millisecond (`0.2`). Default 5.
    #[schemars(range(min = 0.01, max = 31536000))]
    pub timeout_seconds: Option<f64>,
    /// Consecutive failures that fail the gate. Default 3.
    pub retries: Option<u32>,
    /// Seconds after start during which failures do not count. Default 0.
    pub start_period_seconds: Option<u64>,
    /// Seconds an instance must stay alive and healthy after its first
    /// passing probe before its gate passes. Default 0 (liveness is checked
    /// after every passing probe all the same).
    pub min_healthy_seconds: Option<u64>,
    /// For a local process or a Docker container with a restart policy other than `no` (not on Swarm, which reschedules its tasks itself): consecutive failed probes of the running instance after which its monitor restarts it, at least 1. Default: never.
    #[schemars(range(min = 1))]
    pub restart_after_failures: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortDef {
    /// The port the service listens on, 1 to 65535.
    #[schemars(range(min = 1))]
    pub container_port: u16,
    /// The host port, 1 to 65535. Default: the container port for a process; allocated from `port_range` for a container.
    #[schemars(range(min = 1))]
    pub host_port: Option<u16>,
    /// tcp or udp. Default tcp.
    pub protocol: Option<ProtocolDef>,
    /// Host address to bind. Default all addresses.
    pub host_ip: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolDef {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    /// A named volume, or the name of a bind mount.
    pub name: String,
    pub mount_path: String,
    /// Default false.
    pub read_only: Option<bool>,
    /// A host path: makes this a bind mount.
    pub host_path: Option<String>,
}

/// The JSON Schema of the document, as the pretty JSON checked in under `schemas/`.
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(ConfigFile))
        .expect("a schema always serializes");
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            "https://deploy-code.dev/schemas/deploy-code.schema.json".into(),
        );
    }
    schema
}

/// [`json_schema`] as the text of `schemas/deploy-code.schema.json`.
pub fn json_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&json_schema()).expect("JSON always serializes");
    s.push('\n');
    s
}

/// The key reference of `docs/configuration.md`, generated from the schema so
/// that the docs cannot drift from the types.
pub fn reference_markdown() -> String {
    use serde_json::Value as J;
    let schema = json_schema();
    let defs = schema
        .get("$defs")
        .and_then(J::as_object)
        .cloned()
        .unwrap_or_default();
    fn type_of(s: &J) -> String {
        if let Some(r) = s.get("$ref").and_then(J::as_str) {
            let name = r.rsplit('/').next().unwrap_or(r);
            return format!("[{name}](#{})", name.to_lowercase());
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(J::Array(branches)) = s.get(key) {
                let parts: Vec<String> = branches
                    .iter()
                    .filter(|b| b.get("type").and_then(J::as_str) != Some("null"))
                    .map(type_of)
                    .collect();
                return parts.join(" or ");
            }
        }
        if let Some(c) = s.get("const").and_then(J::as_str) {
            return format!("`{c}`");
        }
        if let Some(J::Array(e)) = s.get("enum") {
            return e
                .iter()
                .filter_map(J::as_str)
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
        }
        let types: Vec<&str> = match s.get("type") {
            Some(J::String(t)) => vec![t.as_str()],
            Some(J::Array(a)) => a
                .iter()
                .filter_map(J::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => vec!["any"],
        };
        let mut out = Vec::new();
        for t in types {
            out.push(match t {
                "array" => format!("list of {}", s.get("items").map_or("any".into(), type_of)),
                "object" => match s.get("additionalProperties") {
                    Some(J::Bool(true)) | None => "mapping".to_owned(),
                    Some(v) => format!("mapping of {}", type_of(v)),
                },
                other => other.to_owned(),
            });
        }
        out.join(" or ")
    }
    fn table(out: &mut String, obj: &J) {
        let required: Vec<&str> = obj
            .get("required")
            .and_then(J::as_array)
            .map(|r| r.iter().filter_map(J::as_str).collect())
            .unwrap_or_default();
        out.push_str("| key | type | meaning and default |\n|---|---|---|\n");
        if let Some(props) = obj.get("properties").and_then(J::as_object) {
            for (k, v) in props {
                let desc = v
                    .get("description")
                    .and_then(J::as_str)
                    .unwrap_or("")
                    .replace('\n', " ");
                let req = if required.contains(&k.as_str()) {
                    " (required)"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "| `{k}`{req} | {} | {desc} |\n",
                    type_of(v).replace('|', "\\|")
                ));
            }
        }
        out.push('\n');
    }
    let mut out = String::from("### Document\n\n");
    table(&mut out, &schema);
    for (name, def) in &defs {
        out.push_str(&format!("### {name}\n\n"));
        if let Some(d) = def.get("description").and_then(J::as_str) {
            out.push_str(d);
            out.push_str("\n\n");
        }
        if def.get("properties").is_some() {
            table(&mut out, def);
        } else {
            out.push_str(&format!("One of: {}\n\n", type_of(def)));
        }
    }
    out
}

/// Programs or webhooks told about runs (apply, destroy, restart, rollback).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Hooks {
    /// Before anything changes; a failing one stops the run (exit 1).
    pub pre_apply: Option<Vec<Hook>>,
    /// After a run that succeeded.
    pub post_apply: Option<Vec<Hook>>,
    /// After a run that failed (rolled back or not).
    pub on_failure: Option<Vec<Hook>>,
    /// After a failed run was rolled back, and after `deploy-code rollback`.
    pub on_rollback: Option<Vec<Hook>>,
}

/// One hook: a program (`command`, run without a shell, the run's summary as
/// JSON on stdin) or a webhook (`url`, the summary POSTed as JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Hook {
    /// The program and its arguments, e.g. `["./notify.sh", "--channel", "ops"]`.
    pub command: Option<Vec<String>>,
    /// The webhook, `http://` or `https://`; may hold a secret (`{{ secret('SLACK_WEBHOOK') }}`).
    pub url: Option<String>,
    /// How long one attempt may take, seconds, 1 to 300. Default 10.
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: Option<u64>,
    /// Further attempts of a webhook that failed (connection error or non-2xx), 0 to 10, after a pause of 0.5 s, then 1 s, 2 s, 4 s, at most 5 s. Default 2. A hook's attempts and pauses together may take at most 600 s.
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<u32>,
}
