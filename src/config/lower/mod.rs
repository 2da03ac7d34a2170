//! `${VAR}` interpolation, the checks that span several values (dependencies,
//! cycles, ports, probes) and the lowering of the file into the model.

mod rollout;
mod security;
mod service;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::diag::{Kind, Problem, did_you_mean};
use super::schema::{self, ConfigFile, Service};
use super::template::Secrets;
use super::yaml::{Key, Node, Value};
use crate::model::{
    AuthSettings, BackendKind, CanaryAnalysis, CanarySettings, CanaryStep, DeploymentSettings,
    DesiredState, HealthCheck, HookSpec, HookTarget, HooksSettings, JwtKey, LatencyLimit,
    MonitoringSettings, NetworkSettings, PortSpec, Probe, PrometheusCheck, Protocol, Resources,
    RestartPolicy, Seconds, SecretKey, SecuritySettings, Sensitive, ServiceName, ServiceSpec,
    Settings, Strategy, Text, TlsSettings, VolumeSpec, Workload,
};

/// Whether an environment variable's name marks it as a secret.
pub(crate) fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.ends_with("_KEY")
        || n == "KEY"
        || ["PASSWORD", "SECRET", "TOKEN", "CREDENTIAL"]
            .iter()
            .any(|w| n.contains(w))
}

/// Replaces `${NAME}` and `${NAME:-default}` in every string value (`$${` is a
/// literal `${`). A secret's value (declared in `secrets:` or named like one)
/// goes in as an opaque token, as `secret()` does.
pub(crate) fn interpolate(
    node: &mut Node,
    env: &BTreeMap<String, String>,
    declared: &BTreeSet<String>,
    secrets: &Secrets,
    out: &mut Vec<Problem>,
) {
    match &mut node.value {
        Value::Str(s) if s.contains('$') => {
            if let Some(new) = interpolate_str(s, &node.span, env, declared, secrets, out) {
                *s = new;
            }
        }
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|n| interpolate(n, env, declared, secrets, out)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, n)| interpolate(n, env, declared, secrets, out)),
        _ => {}
    }
}

fn interpolate_str(
    s: &str,
    span: &Range<usize>,
    env: &BTreeMap<String, String>,
    declared: &BTreeSet<String>,
    secrets: &Secrets,
    out: &mut Vec<Problem>,
) -> Option<String> {
    if !s.contains("${") {
        return None;
    }
    let mut result = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        result.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            result.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            result.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(close) = body_start.find('}') else {
            result.push_str(after);
            rest = "";
            break;
        };
        let body = &body_start[..close];
        rest = &body_start[close + 1..];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        let value = match (env.get(name), default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.to_owned(),
            (None, None) => {
                out.push(
                    Problem::new(
                        Kind::UnsetVariable,
                        format!("the environment variable `{name}` is not set"),
                    )
                    .label(span.clone(), format!("`${{{name}}}` is used here"))
                    .help(format!(
                        "set `{name}` in the environment, or give a default: `${{{name}:-value}}`"
                    )),
                );
                String::new()
            }
        };
        if declared.contains(name) || looks_secret(name) {
            result.push_str(&secrets.token(&format!("${name}"), value));
        } else {
            result.push_str(&value);
        }
    }
    result.push_str(rest);
    Some(result)
}

/// Reports tokens of secrets in places that cannot hold a sensitive value (only
/// `env`, `environment`, `command` and `args` of a service can).
pub(crate) fn check_secret_places(root: &Node, out: &mut Vec<Problem>) {
    /// A step of the path to a value: a key, or an index in a sequence. The
    /// path borrows its keys; it is written out only for a problem.
    #[derive(Clone, Copy)]
    enum Step<'a> {
        Key(&'a str),
        Index(usize),
    }
    fn is(step: Option<&Step<'_>>, names: &[&str]) -> bool {
        matches!(step, Some(Step::Key(k)) if names.contains(k))
    }
    fn walk<'a>(node: &'a Node, path: &mut Vec<Step<'a>>, out: &mut Vec<Problem>) {
        match &node.value {
            Value::Str(s) if s.contains("__DC_SECRET_") => {
                let in_service = path.len() >= 3
                    && is(path.first(), &["services"])
                    && is(path.get(2), &["env", "environment", "command", "args"]);
                let jwt_secret = path.len() == 3
                    && is(path.first(), &["security"])
                    && is(path.get(1), &["auth"])
                    && is(path.get(2), &["jwt_secret"]);
                let webhook =
                    path.len() == 4 && is(path.first(), &["hooks"]) && is(path.get(3), &["url"]);
                let allowed = in_service || jwt_secret || webhook;
                if !allowed {
                    let at: Vec<String> = path
                        .iter()
                        .map(|s| match s {
                            Step::Key(k) => (*k).to_owned(),
                            Step::Index(i) => i.to_string(),
                        })
                        .collect();
                    out.push(
                        Problem::new(Kind::SecretNotAllowed, format!("a secret cannot be used in `{}`", at.join(".")))
                            .label(node.span.clone(), "this value holds a secret")
                            .help("secrets may appear only in a service's `env`, `command` and `args`, `security.auth.jwt_secret` and a hook's `url`, where they stay redacted"),
                    );
                }
            }
            Value::Seq(items) => {
                for (i, n) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    walk(n, path, out);
                    path.pop();
                }
            }
            Value::Map(entries) => {
                for (k, n) in entries {
                    path.push(Step::Key(&k.name));
                    walk(n, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    walk(root, &mut Vec::new(), out);
}

/// One service as found in the file.
pub(crate) struct Entry<'a> {
    pub key: &'a Key,
    pub node: &'a Node,
    /// `None` when its definition has type errors (already reported).
    pub def: Option<Service>,
    /// The definition had schema problems: what is left of it is checked, but
    /// not for what a misspelt key may have meant (no command, say).
    pub dirty: bool,
}

fn span_of(node: &Node, path: &[&str]) -> Option<Range<usize>> {
    let mut n = node;
    for p in path {
        n = n.get(p)?;
    }
    Some(n.span.clone())
}

fn key_span(node: &Node, key: &str) -> Option<Range<usize>> {
    node.entry(key).map(|(k, _)| k.span.clone())
}

/// Everything needed to lower: the typed file (settings), the service entries.
pub(crate) struct Lowering<'a> {
    pub root: &'a Node,
    pub file: ConfigFile,
    pub services: Vec<Entry<'a>>,
    pub base_dir: PathBuf,
    pub secrets: &'a Secrets,
    pub key: SecretKey,
}

impl Lowering<'_> {
    /// Cross-value checks and lowering; problems are appended to `out`.
    pub fn lower(mut self, out: &mut Vec<Problem>) -> Option<DesiredState> {
        let start = out.len();
        let settings = self.settings(out);
        // Looked up by name for every dependency and port: a fast hash.
        let enabled: foldhash::HashMap<&str, bool> = self
            .services
            .iter()
            .map(|e| {
                let on = e.def.as_ref().and_then(|d| d.enabled).unwrap_or(true);
                (e.key.name.as_str(), on)
            })
            .collect();
        let names: Vec<&str> = self.services.iter().map(|e| e.key.name.as_str()).collect();
        let common = self.inherit_env(
            self.root
                .get("deployment")
                .and_then(|n| n.get("inherit_env")),
            self.file
                .deployment
                .as_ref()
                .and_then(|d| d.inherit_env.as_deref()),
            "deployment.inherit_env",
            out,
        );
        // Each service's typed definition is dropped once it is lowered.
        let services = std::mem::take(&mut self.services);

        let mut specs = BTreeMap::new();
        let mut disabled = Vec::new();
        let mut port_claims: foldhash::HashMap<(u16, Protocol), (&str, Range<usize>)> =
            foldhash::HashMap::default();
        let mut graph: BTreeMap<&str, Vec<(String, Range<usize>)>> = BTreeMap::new();

        for mut entry in services {
            let name = match ServiceName::parse(&entry.key.name) {
                Ok(n) => Some(n),
                Err(why) => {
                    out.push(
                        Problem::new(
                            Kind::InvalidServiceName,
                            format!("`{}` is not a valid service name: {why}", entry.key.name),
                        )
                        .label(entry.key.span.clone(), "invalid name")
                        .help(format!(
                            "rename it, e.g. `{}`",
                            suggest_name(&entry.key.name)
                        )),
                    );
                    None
                }
            };
            let Some(def) = entry.def.take() else {
                continue;
            };
            let def = &def;
            let is_enabled = def.enabled.unwrap_or(true);

            // dependencies
            let mut deps = Vec::new();
            for (i, dep) in def.dependencies.iter().flatten().enumerate() {
                let dspan = span_of(entry.node, &["dependencies"])
                    .and_then(|_| entry.node.get("dependencies"))
                    .and_then(|d| match &d.value {
                        Value::Seq(items) => items.get(i).map(|n| n.span.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| entry.key.span.clone());
                match enabled.get(dep.as_str()) {
                    None => {
                        let help = match did_you_mean(
                            dep,
                            names.iter().copied().filter(|n| *n != entry.key.name),
                        ) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => {
                                "define this service under `services`, or remove the dependency"
                                    .to_owned()
                            }
                        };
                        out.push(
                            Problem::new(
                                Kind::UnknownDependency,
                                format!(
                                    "`{}` depends on `{dep}`, which is not defined",
                                    entry.key.name
                                ),
                            )
                            .label(dspan, "unknown service")
                            .help(help),
                        );
                    }
                    Some(false) if is_enabled => out.push(
                        Problem::new(
                            Kind::DisabledDependency,
                            format!("`{}` depends on `{dep}`, which is disabled", entry.key.name),
                        )
                        .label(dspan, "disabled service")
                        .help(format!(
                            "enable `{dep}`, or disable `{}` too, or remove the dependency",
                            entry.key.name
                        )),
                    ),
                    Some(_) => {
                        if is_enabled {
                            graph
                                .entry(entry.key.name.as_str())
                                .or_default()
                                .push((dep.clone(), dspan));
                        }
                        if let Ok(d) = ServiceName::parse(dep) {
                            deps.push(d);
                        }
                    }
                }
            }
            deps.sort();
            deps.dedup();

            if is_enabled {
                let backend = backend_of(def, &settings);
                for (i, port) in def.ports.iter().flatten().enumerate() {
                    let Some(host) = host_port(port, backend, &settings) else {
                        continue;
                    };
                    let protocol = protocol(port.protocol);
                    let pspan = entry
                        .node
                        .get("ports")
                        .and_then(|p| match &p.value {
                            Value::Seq(items) => items.get(i),
                            _ => None,
                        })
                        .map(|n| {
                            n.get("host_port")
                                .or_else(|| n.get("container_port"))
                                .map_or(n.span.clone(), |x| x.span.clone())
                        })
                        .unwrap_or_else(|| entry.key.span.clone());
                    if let Some((other, ospan)) = port_claims.get(&(host, protocol)) {
                        out.push(
                            Problem::new(
                                Kind::PortConflict,
                                format!("host port {host}/{} is claimed by both `{other}` and `{}`", protocol.as_str(), entry.key.name),
                            )
                            .label(pspan, "claimed again here")
                            .label(ospan.clone(), "first claimed here")
                            .help("give one of them another `host_port`, or leave `host_port` out on a container to get one from `network.port_range`"),
                        );
                    } else {
                        port_claims.insert((host, protocol), (entry.key.name.as_str(), pspan));
                    }
                }
            }
            let spec = self
                .service(&entry, def, name.clone(), deps, &settings, out)
                .map(|mut spec| {
                    // `deployment.inherit_env` is every service's too.
                    spec.inherit_env.extend(common.iter().cloned());
                    spec.inherit_env.sort();
                    spec.inherit_env.dedup();
                    spec
                });
            if let (Some(spec), Some(name)) = (spec, name) {
                if is_enabled {
                    specs.insert(name, std::sync::Arc::new(spec));
                } else {
                    disabled.push(name);
                }
            }
        }

        for (cycle, span) in cycles(&graph) {
            out.push(
                Problem::new(
                    Kind::DependencyCycle,
                    format!("the dependencies form a cycle: {}", cycle.join(" -> ")),
                )
                .label(span, "this dependency closes the cycle")
                .help("remove one of these dependencies so that the services can start in order"),
            );
        }

        if settings.deployment.blue_green.keep_seconds > 0
            && !specs.is_empty()
            && !specs.values().any(|s| s.behind_switch)
        {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`blue_green.keep_seconds` has no effect: no service runs behind a traffic switch",
                )
                .label(
                    span_of(self.root, &["deployment", "blue_green", "keep_seconds"])
                        .unwrap_or(0..0),
                    "would have no effect",
                )
                .help("only a long-running process or container (not a Swarm service) with a fixed TCP `host_port` runs behind a switch that can flip back to a kept set; remove the key"),
            );
        }
        if settings.deployment.switch.is_some()
            && !specs.is_empty()
            && !specs.values().any(|s| s.behind_switch)
        {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`deployment.switch` has no effect: no service runs behind a traffic switch",
                )
                .label(
                    span_of(self.root, &["deployment", "switch"]).unwrap_or(0..0),
                    "would have no effect",
                )
                .help("only a long-running process or container (not a Swarm service) with a fixed TCP `host_port` runs behind a switch; remove the section"),
            );
        }
        if out.len() > start {
            return None;
        }
        Some(DesiredState {
            settings,
            services: specs,
            disabled,
        })
    }

    fn settings(&self, out: &mut Vec<Problem>) -> Settings {
        let f = &self.file;
        let infra = f.infrastructure.clone().unwrap_or_default();
        let runtime = infra.container_runtime;
        let orchestrator = infra.orchestrator;
        let at = |key: &str| span_of(self.root, &["infrastructure", key]).unwrap_or(0..0);
        if runtime == Some(schema::ContainerRuntime::Containerd) {
            out.push(
                unsupported(
                    "infrastructure.container_runtime",
                    "Containerd",
                    "use `Docker` (or `Podman`), or `Process` for local processes",
                )
                .label(at("container_runtime"), "not supported"),
            );
        }
        // The registry says which orchestrators a backend answers to.
        let orchestrated = orchestrator.map(|o| {
            let name = o.name();
            (
                name,
                BackendKind::ORCHESTRATORS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, kind)| *kind),
            )
        });
        if let Some((name, None)) = orchestrated {
            let known: Vec<String> = BackendKind::ORCHESTRATORS
                .iter()
                .filter(|(n, _)| *n != "None")
                .map(|(n, _)| format!("`{n}`"))
                .collect();
            out.push(
                unsupported(
                    "infrastructure.orchestrator",
                    name,
                    &format!("use one of {}", known.join(", ")),
                )
                .label(at("orchestrator"), "not supported"),
            );
        }
        let containers = matches!(
            runtime,
            Some(schema::ContainerRuntime::Docker | schema::ContainerRuntime::Podman)
        );
        let default_backend = match orchestrated {
            Some((_, Some(Some(kind)))) => kind,
            _ if containers => BackendKind::CONTAINERS,
            _ => BackendKind::LOCAL,
        };
        let d = f.deployment.clone().unwrap_or_default();
        let rolling = self.rolling(&d, out);
        let dd = DeploymentSettings::default();
        let uses_switch = matches!(
            d.strategy,
            Some(
                schema::Strategy::RollingUpdate
                    | schema::Strategy::BlueGreen
                    | schema::Strategy::Canary
            )
        );
        if d.drain_seconds.is_some() && !uses_switch {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`deployment.drain_seconds` has no effect without a traffic switch",
                )
                .label(
                    span_of(self.root, &["deployment", "drain_seconds"]).unwrap_or(0..0),
                    "would have no effect",
                )
                .help("only `strategy: BlueGreen`, `RollingUpdate` and `Canary` put services behind a traffic switch that drains; remove the key or change the strategy"),
            );
        }
        if d.switch.is_some() && !uses_switch {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`deployment.switch` has no effect without a traffic switch",
                )
                .label(
                    span_of(self.root, &["deployment", "switch"]).unwrap_or(0..0),
                    "would have no effect",
                )
                .help("only `strategy: BlueGreen`, `RollingUpdate` and `Canary` put services behind a traffic switch; remove the section or change the strategy"),
            );
        }
        let switch = d.switch.as_ref().map(|w| {
            let sd = crate::model::SwitchSettings::default();
            crate::model::SwitchSettings {
                idle_timeout_seconds: w.idle_timeout_seconds.unwrap_or(sd.idle_timeout_seconds),
                header_timeout_seconds: w
                    .header_timeout_seconds
                    .unwrap_or(sd.header_timeout_seconds),
                max_connections: w.max_connections.unwrap_or(sd.max_connections),
            }
        });
        let canary = self.canary(&d, out);
        let deployment = DeploymentSettings {
            strategy: match d.strategy {
                Some(schema::Strategy::Sequential) => Strategy::Sequential,
                Some(schema::Strategy::Parallel) => Strategy::Parallel,
                Some(schema::Strategy::RollingUpdate) => Strategy::RollingUpdate,
                Some(schema::Strategy::BlueGreen) => Strategy::BlueGreen,
                Some(schema::Strategy::Canary) => Strategy::Canary,
                Some(schema::Strategy::Hybrid) | None => Strategy::Hybrid,
            },
            max_parallel: d.max_parallel.unwrap_or(dd.max_parallel),
            health_check_interval: d.health_check_interval.unwrap_or(dd.health_check_interval),
            timeout_seconds: d.timeout_seconds.unwrap_or(dd.timeout_seconds),
            rollback_on_failure: d.rollback_on_failure.unwrap_or(dd.rollback_on_failure),
            rollback_timeout_seconds: d
                .rollback_timeout_seconds
                .unwrap_or(dd.rollback_timeout_seconds),
            stop_grace_seconds: d.stop_grace_seconds.unwrap_or(dd.stop_grace_seconds),
            drain_seconds: d.drain_seconds.unwrap_or(dd.drain_seconds),
            canary,
            rolling,
            blue_green: self.blue_green(&d, out),
            switch,
        };
        let n = infra.network.clone().unwrap_or_default();
        let nd = NetworkSettings::default();
        let port_range = n
            .port_range
            .as_ref()
            .map_or(nd.port_range, |r| (r.start, r.end));
        if port_range.0 > port_range.1 {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    format!(
                        "`infrastructure.network.port_range` starts at {} after its end {}",
                        port_range.0, port_range.1
                    ),
                )
                .label(
                    span_of(self.root, &["infrastructure", "network", "port_range"])
                        .unwrap_or(0..0),
                    "empty range",
                )
                .help("make `start` lower than or equal to `end`"),
            );
        }
        let net_at = |key: &str| {
            span_of(self.root, &["infrastructure", "network", key])
                .or_else(|| span_of(self.root, &["infrastructure", "network"]))
                .unwrap_or(0..0)
        };
        let swarm = orchestrator == Some(schema::Orchestrator::Swarm);
        match n.mode {
            Some(schema::NetworkMode::Overlay) if !swarm => out.push(
                unsupported(
                    "infrastructure.network.mode",
                    "Overlay",
                    "an overlay network needs `orchestrator: Swarm`; on one host use `Bridge` or `Host`",
                )
                .label(net_at("mode"), "needs Swarm"),
            ),
            Some(schema::NetworkMode::Host) if swarm => out.push(
                unsupported(
                    "infrastructure.network.mode",
                    "Host",
                    "Swarm services run on the project's overlay network; leave `mode` out or write `Overlay`",
                )
                .label(net_at("mode"), "not with Swarm"),
            ),
            Some(schema::NetworkMode::Host) => {
                let given = [
                    ("name", n.name.is_some()),
                    ("cidr", n.cidr.is_some()),
                    ("dns_servers", n.dns_servers.as_ref().is_some_and(|d| !d.is_empty())),
                ];
                for (key, given) in given {
                    if given {
                        out.push(
                            Problem::new(
                                Kind::InvalidValue,
                                format!("`infrastructure.network.{key}` has no meaning with `mode: Host`"),
                            )
                            .label(net_at(key), "not with Host")
                            .help("containers on the host network use the host's own interfaces and resolver; remove the key, or use `mode: Bridge`"),
                        );
                    }
                }
            }
            _ => {}
        }
        if let (Some(name), Some(_)) = (&n.name, &n.cidr) {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    format!("`infrastructure.network.cidr` cannot be set for the existing network `{name}`"),
                )
                .label(net_at("cidr"), "only for the project network")
                .help("`cidr` is the subnet of the project network deploy-code creates; an existing network keeps its own. Remove one of `name` and `cidr`"),
            );
        }
        if let Some(name) = &n.name
            && (name.is_empty() || matches!(name.as_str(), "host" | "none"))
        {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    format!("`{name}` cannot be used as `infrastructure.network.name`"),
                )
                .label(net_at("name"), "not a network to join")
                .help("for the host's network write `mode: Host`; otherwise name an existing bridge (or, with Swarm, overlay) network"),
            );
        }
        let network = NetworkSettings {
            mode: match n.mode {
                Some(schema::NetworkMode::Host) => "Host".into(),
                Some(schema::NetworkMode::Overlay) => "Overlay".into(),
                _ => "Bridge".into(),
            },
            name: n.name.clone(),
            cidr: n.cidr.clone(),
            dns_servers: n.dns_servers.clone().unwrap_or_default(),
            port_range,
        };
        let storage = infra.storage.clone().unwrap_or_default();
        let resolve = |p: Option<&String>, default: &str| -> PathBuf {
            let p = p.map_or_else(|| PathBuf::from(default), PathBuf::from);
            if p.is_absolute() {
                p
            } else {
                self.base_dir.join(p)
            }
        };
        let m = f.monitoring.clone().unwrap_or_default();
        let prom = m.prometheus.clone().unwrap_or_default();
        Settings {
            project: f.project.clone().unwrap_or_else(|| "code".into()),
            environment: f.environment.clone().unwrap_or_else(|| "default".into()),
            default_backend,
            deployment,
            network,
            data_dir: resolve(storage.data_dir.as_ref(), ".deploy-code/data"),
            log_dir: resolve(storage.log_dir.as_ref(), ".deploy-code/logs"),
            reserve_percent: infra.resource_reserve_percent.unwrap_or(20),
            monitoring: MonitoringSettings {
                enabled: m.enabled.unwrap_or(false),
                pushgateway: prom.pushgateway.clone(),
                textfile_dir: prom.textfile_dir.clone(),
            },
            state_path: f
                .state
                .as_ref()
                .and_then(|s| s.path.as_ref())
                .map(|p| resolve(Some(p), "")),
            security: self.security(out),
            hooks: self.hooks(out),
        }
    }

    fn text(&self, s: &str) -> Text {
        let (plain, found) = self.secrets.substitute(s, true);
        if found {
            Text::Sensitive(Sensitive::new(&self.key, plain))
        } else {
            Text::Plain(plain)
        }
    }
}

/// The back-off and circuit breaker of a process under a restart policy,
/// and the refusal of every restart setting that would have no effect: a
/// policy on a one-shot task, back-off settings without a policy or on a
/// container (whose engine applies only the policy), health-driven restarts
/// without a policy or on a container.
fn restart_settings(
    def: &Service,
    sname: &str,
    (backend, workload, policy): (BackendKind, Workload, RestartPolicy),
    node: &Node,
    fallback: &Range<usize>,
    out: &mut Vec<Problem>,
) -> Option<crate::model::RestartSettings> {
    let invalid = |msg: String, span: Option<Range<usize>>, help: &str| {
        Problem::new(Kind::InvalidService, msg)
            .label(span.unwrap_or_else(|| fallback.clone()), "here")
            .help(help.to_owned())
    };
    let rnode = node.get("restart");
    let policy_span = rnode.map(|n| n.get("policy").unwrap_or(n).span.clone());
    let settings = match &def.restart {
        Some(schema::RestartDef::Settings(s)) => Some(s),
        _ => None,
    };
    let tuned = settings.and_then(|s| {
        [
            ("initial_delay_ms", s.initial_delay_ms.is_some()),
            ("max_delay_seconds", s.max_delay_seconds.is_some()),
            ("multiplier", s.multiplier.is_some()),
            ("reset_after_seconds", s.reset_after_seconds.is_some()),
            ("max_restarts", s.max_restarts.is_some()),
            ("window_seconds", s.window_seconds.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(k, _)| k)
    });
    let tuned_span = |k: &str| rnode.and_then(|n| n.get(k)).map(|n| n.span.clone());
    let raf = def
        .health_check
        .as_ref()
        .and_then(|h| h.restart_after_failures);
    let raf_span = node
        .get("health_check")
        .and_then(|h| h.get("restart_after_failures"))
        .map(|n| n.span.clone());
    let process = backend.supervised_by_monitor();
    // A container with health-driven restarts runs under a monitor of its
    // own, which applies the back-off and the circuit breaker as for a
    // process; Swarm reschedules its tasks itself.
    let monitored_container = backend.runs_images()
        && !backend.orchestrates()
        && raf.is_some()
        && policy != RestartPolicy::No;
    if process && workload == Workload::Task && policy != RestartPolicy::No {
        out.push(invalid(
            format!("`restart` has no effect on `{sname}`: a one-shot task runs once"),
            policy_span,
            "remove `restart`, or make the service long-running (drop `oneshot`)",
        ));
        return None;
    }
    if let Some(k) = tuned {
        if !process && !monitored_container {
            out.push(invalid(
                format!("`restart.{k}` has no effect on `{sname}`: a container's engine applies only the restart policy"),
                tuned_span(k),
                "keep `restart: <policy>` for a container; back-off and circuit breaker apply to local processes and to Docker containers with `health_check.restart_after_failures` (never on Swarm)",
            ));
        } else if policy == RestartPolicy::No {
            out.push(invalid(
                format!("`restart.{k}` has no effect on `{sname}`: its restart policy is `no`"),
                tuned_span(k),
                "add `policy: on-failure` (or `always`, `unless-stopped`) under `restart`, or remove the setting",
            ));
        }
    }
    if raf.is_some() {
        if backend.orchestrates() {
            out.push(invalid(
                format!("`health_check.restart_after_failures` has no effect on `{sname}`: Swarm reschedules its tasks itself"),
                raf_span.clone(),
                "remove `restart_after_failures`; on Swarm the engine replaces a task that fails its `health_check.command` or its image's HEALTHCHECK; run the service as a Docker container or a local process for health-driven restarts",
            ));
        } else if policy == RestartPolicy::No {
            out.push(invalid(
                format!("`health_check.restart_after_failures` has no effect on `{sname}`: its restart policy is `no`"),
                raf_span,
                "add `restart: on-failure` (or `always`, `unless-stopped`), or remove `restart_after_failures`",
            ));
        }
    }
    if let Some(m) = settings.and_then(|s| s.multiplier)
        && !(m.is_finite() && m >= 1.0)
    {
        out.push(invalid(
            format!(
                "`restart.multiplier` of `{sname}` is {m}: it must be a finite number of 1 or more"
            ),
            tuned_span("multiplier"),
            "write 2 to double each pause, or 1 for a constant pause",
        ));
    }
    if !(process || monitored_container) || policy == RestartPolicy::No {
        return None;
    }
    let d = crate::model::RestartSettings::default();
    let s = settings.cloned().unwrap_or_default();
    Some(crate::model::RestartSettings {
        initial_delay_ms: s.initial_delay_ms.unwrap_or(d.initial_delay_ms),
        max_delay_seconds: s.max_delay_seconds.unwrap_or(d.max_delay_seconds),
        multiplier: s.multiplier.unwrap_or(d.multiplier),
        reset_after_seconds: s.reset_after_seconds.unwrap_or(d.reset_after_seconds),
        max_restarts: s.max_restarts.unwrap_or(d.max_restarts),
        window_seconds: s.window_seconds.unwrap_or(d.window_seconds),
    })
}

/// The backend a service runs on: a local process without an image, else a
/// container, on Swarm when that is the default backend.
fn backend_of(def: &schema::Service, settings: &Settings) -> BackendKind {
    BackendKind::for_service(
        def.image.is_some() || def.container_image.is_some(),
        settings.default_backend,
    )
}

/// The host-port rule: a local process's port, and a Docker container's on
/// the host network, is its host port; any other container has the host port
/// it names, else none yet (one is allocated from `network.port_range`).
fn host_port(port: &schema::PortDef, backend: BackendKind, settings: &Settings) -> Option<u16> {
    let own = backend.binds_on_host(backend.may_use_host_network() && settings.network.is_host());
    port.host_port.or(own.then_some(port.container_port))
}

/// A port's protocol: TCP unless the config says UDP.
fn protocol(p: Option<schema::ProtocolDef>) -> Protocol {
    match p {
        Some(schema::ProtocolDef::Udp) => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}

fn unsupported(path: &str, value: &str, help: &str) -> Problem {
    Problem::new(
        Kind::InvalidValue,
        format!("`{path}: {value}` is not supported"),
    )
    .help(help.to_owned())
}

fn suggest_name(name: &str) -> String {
    let s: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(ServiceName::MAX_LEN)
        .collect();
    let s = s.trim_start_matches(['_', '-']).to_owned();
    if s.is_empty() { "service".into() } else { s }
}

/// Every elementary cycle found by a depth-first search (each reported once),
/// with the span of the dependency that closes it.
fn cycles(graph: &BTreeMap<&str, Vec<(String, Range<usize>)>>) -> Vec<(Vec<String>, Range<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    let mut found = Vec::new();
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
    for &start in graph.keys() {
        if marks.get(start).copied().unwrap_or(Mark::New) != Mark::New {
            continue;
        }
        // iterative DFS: (node, next edge index)
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Active);
        while let Some(&mut (node, ref mut idx)) = stack.last_mut() {
            let edges = graph.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if *idx >= edges.len() {
                marks.insert(node, Mark::Done);
                stack.pop();
                continue;
            }
            let (next, span) = &edges[*idx];
            *idx += 1;
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::New => {
                    marks.insert(next.as_str(), Mark::Active);
                    stack.push((next.as_str(), 0));
                }
                Mark::Active => {
                    let pos = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[pos..].iter().map(|(n, _)| (*n).to_owned()).collect();
                    let mut key = cycle.clone();
                    let min = key
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, n)| n.as_str())
                        .map_or(0, |(i, _)| i);
                    key.rotate_left(min);
                    if seen.insert(key) {
                        cycle.push(next.clone());
                        found.push((cycle, span.clone()));
                    }
                }
                Mark::Done => {}
            }
        }
    }
    found
}

/// Resolves `path` against `base` without touching the file system.
pub(crate) fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::path::absolute(base.join(path)).unwrap_or_else(|_| base.join(path))
    }
}
