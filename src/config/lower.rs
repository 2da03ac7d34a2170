//! `${VAR}` interpolation, the checks that span several values (dependencies,
//! cycles, ports, probes) and the lowering of the file into the model.

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

    /// `security:` for `serve`. A key that would change nothing (a
    /// certificate without `tls_enabled`, auth settings without
    /// `auth.enabled`, roles without `rbac.enabled`) is refused.
    fn security(&self, out: &mut Vec<Problem>) -> SecuritySettings {
        let Some(sec) = &self.file.security else {
            return SecuritySettings::default();
        };
        let at = |path: &[&str]| {
            let mut full = vec!["security"];
            full.extend_from_slice(path);
            span_of(self.root, &full).unwrap_or(0..0)
        };
        let unused = |path: &[&str], why: &str, help: &str| {
            Problem::new(
                Kind::InvalidValue,
                format!("`security.{}` has no effect: {why}", path.join(".")),
            )
            .label(at(path), "would have no effect")
            .help(help.to_owned())
        };
        let resolve = |p: &String| self.base_dir.join(p);
        let tls_on = sec.tls_enabled == Some(true);
        for (key, value) in [
            ("cert_path", &sec.cert_path),
            ("key_path", &sec.key_path),
            ("client_ca_path", &sec.client_ca_path),
        ] {
            if value.is_some() && !tls_on {
                out.push(unused(
                    &[key],
                    "`tls_enabled` is not true",
                    "set `tls_enabled: true` to serve over TLS, or remove the key",
                ));
            }
        }
        let mut tls = tls_on.then(|| TlsSettings {
            cert: sec.cert_path.as_ref().map(resolve),
            key: sec.key_path.as_ref().map(resolve),
            client_ca: sec.client_ca_path.as_ref().map(resolve),
        });
        if let Some(t) = &sec.tls {
            if sec.tls_enabled.is_some()
                || sec.cert_path.is_some()
                || sec.key_path.is_some()
                || sec.client_ca_path.is_some()
            {
                out.push(
                    Problem::new(
                        Kind::InvalidValue,
                        "`security.tls` and `security.tls_enabled` / `cert_path` / `key_path` / `client_ca_path` say the same thing twice".to_owned(),
                    )
                    .label(at(&["tls"]), "TLS given here too")
                    .help("keep one form: the `tls:` mapping, or `tls_enabled: true` with the flat keys"),
                );
            }
            tls = Some(TlsSettings {
                cert: Some(resolve(&t.cert_path)),
                key: Some(resolve(&t.key_path)),
                client_ca: t.client_ca_path.as_ref().map(resolve),
            });
        }
        let a = sec.auth.clone().unwrap_or_default();
        let auth_on = a.enabled == Some(true);
        if let Some(m) = &a.method
            && m != "JWT"
        {
            out.push(
                unsupported(
                    "security.auth.method",
                    m,
                    "tokens are JWTs: write `method: JWT`",
                )
                .label(at(&["auth", "method"]), "not supported"),
            );
        }
        if !auth_on {
            for (key, set) in [
                ("method", a.method.is_some()),
                ("token_expiry_seconds", a.token_expiry_seconds.is_some()),
                ("jwt_secret", a.jwt_secret.is_some()),
                ("jwt_public_key_path", a.jwt_public_key_path.is_some()),
                ("jwt_algorithm", a.jwt_algorithm.is_some()),
                ("issuer", a.issuer.is_some()),
                ("audience", a.audience.is_some()),
            ] {
                if set {
                    out.push(unused(
                        &["auth", key],
                        "`auth.enabled` is not true",
                        "set `auth.enabled: true` to require tokens, or remove the key",
                    ));
                }
            }
        }
        if a.jwt_secret.is_some() && a.jwt_public_key_path.is_some() {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`security.auth` names both `jwt_secret` and `jwt_public_key_path`",
                )
                .label(at(&["auth", "jwt_public_key_path"]), "one key only")
                .help("keep `jwt_secret` for HS256 tokens or `jwt_public_key_path` (with `jwt_algorithm`) for RS256/EdDSA tokens"),
            );
        }
        if a.jwt_public_key_path.is_some() != a.jwt_algorithm.is_some() {
            let key = if a.jwt_algorithm.is_some() {
                "jwt_algorithm"
            } else {
                "jwt_public_key_path"
            };
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`security.auth.jwt_public_key_path` and `jwt_algorithm` go together",
                )
                .label(at(&["auth", key]), "needs the other")
                .help("name the public key file and its algorithm (`RS256` or `EdDSA`)"),
            );
        }
        let secret = a.jwt_secret.as_ref().map(|s| self.text(s));
        if let Some(crate::model::Text::Plain(_)) = &secret {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`security.auth.jwt_secret` is written in plain text",
                )
                .label(at(&["auth", "jwt_secret"]), "not a secret")
                .help("give it as a secret: `jwt_secret: \"{{ secret('JWT_SECRET') }}\"`"),
            );
        }
        if auth_on && let Some(crate::model::Text::Sensitive(value)) = &secret {
            // Only the secret's name and whether it is empty are said: its
            // length would tell a guesser where to start.
            let len = value.expose().map_or(0, str::len);
            if len < crate::model::MIN_HS256_SECRET_BYTES {
                let names = a
                    .jwt_secret
                    .as_deref()
                    .map(|s| self.secrets.names(s))
                    .unwrap_or_default();
                let named = match names.as_slice() {
                    [] => "the secret".to_owned(),
                    [one] => format!("the secret `{one}`"),
                    many => format!("the secrets `{}`", many.join("`, `")),
                };
                out.push(
                    Problem::new(
                        Kind::InvalidValue,
                        format!(
                            "`security.auth.jwt_secret` ({named}) is {}: an HS256 secret needs at least {} bytes",
                            if len == 0 { "empty" } else { "too short" },
                            crate::model::MIN_HS256_SECRET_BYTES
                        ),
                    )
                    .label(at(&["auth", "jwt_secret"]), "a guessable key signs tokens anyone could forge")
                    .help(format!(
                        "give {named} at least {} random bytes (RFC 7518 §3.2), e.g. `openssl rand -base64 48`",
                        crate::model::MIN_HS256_SECRET_BYTES
                    )),
                );
            }
        }
        if auth_on && a.jwt_secret.is_none() && a.jwt_public_key_path.is_none() {
            out.push(
                Problem::new(
                    Kind::MissingKey,
                    "`security.auth` is enabled but names no key: no token could be checked",
                )
                .label(at(&["auth", "enabled"]), "tokens need a key")
                .help("give `jwt_secret: \"{{ secret('JWT_SECRET') }}\"` (HS256) or `jwt_public_key_path` with `jwt_algorithm` (RS256 or EdDSA)"),
            );
        }
        let key = match (secret, &a.jwt_public_key_path, a.jwt_algorithm) {
            (Some(s), _, _) => Some(JwtKey::Hs256(s)),
            (None, Some(p), Some(algorithm)) => Some(JwtKey::Public {
                path: resolve(p),
                algorithm,
            }),
            _ => None,
        };
        let auth = auth_on.then(|| AuthSettings {
            key,
            max_lifetime: a.token_expiry_seconds,
            issuer: a.issuer.clone(),
            audience: a.audience.clone(),
        });
        let r = sec.rbac.clone().unwrap_or_default();
        let rbac_on = r.enabled == Some(true);
        if rbac_on && !auth_on {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`security.rbac` is enabled but `security.auth` is not",
                )
                .label(at(&["rbac", "enabled"]), "roles come from tokens")
                .help("set `security.auth.enabled: true` (roles are claims of the callers' tokens), or disable `rbac`"),
            );
        }
        if r.roles.is_some() && !rbac_on {
            out.push(unused(
                &["rbac", "roles"],
                "`rbac.enabled` is not true",
                "set `rbac.enabled: true` for roles to decide what a token may call, or remove `roles`",
            ));
        }
        let defaults = crate::model::default_roles();
        let mut roles = BTreeMap::new();
        // Where each role was first defined: a second definition of a name
        // would replace the first one's permissions without a word.
        let mut defined: BTreeMap<&str, Range<usize>> = BTreeMap::new();
        match &r.roles {
            None => roles = defaults.clone(),
            Some(list) => {
                for (i, role) in list.iter().enumerate() {
                    let span = self
                        .root
                        .get("security")
                        .and_then(|n| n.get("rbac"))
                        .and_then(|n| n.get("roles"))
                        .and_then(|n| match &n.value {
                            Value::Seq(items) => items.get(i).map(|n| n.span.clone()),
                            _ => None,
                        })
                        .unwrap_or(0..0);
                    let name = match role {
                        schema::Role::Name(name) => name,
                        schema::Role::Full(def) => &def.name,
                    };
                    if let Some(first) = defined.get(name.as_str()) {
                        out.push(
                            Problem::new(
                                Kind::InvalidValue,
                                format!("the role `{name}` is defined twice"),
                            )
                            .label(span.clone(), "defined again here")
                            .label(first.clone(), "first defined here")
                            .help(format!(
                                "keep one definition of `{name}`: a second one would replace the first one's permissions"
                            )),
                        );
                        continue;
                    }
                    defined.insert(name, span.clone());
                    match role {
                        schema::Role::Name(name) => match defaults.get(name) {
                            Some(p) => {
                                roles.insert(name.clone(), p.clone());
                            }
                            None => out.push(
                                Problem::new(
                                    Kind::InvalidValue,
                                    format!("`{name}` is not a default role"),
                                )
                                .label(span, "unknown role")
                                .help(format!(
                                    "the default roles are viewer, operator and admin; define others with `{{name: {name}, permissions: [...]}}`{}",
                                    did_you_mean(name, defaults.keys().map(String::as_str)).map(|d| format!(" (did you mean `{d}`?)")).unwrap_or_default()
                                )),
                            ),
                        },
                        schema::Role::Full(def) => {
                            let mut set = BTreeSet::new();
                            for (j, p) in def.permissions.iter().enumerate() {
                                let at_permission = self
                                    .root
                                    .get("security")
                                    .and_then(|n| n.get("rbac"))
                                    .and_then(|n| n.get("roles"))
                                    .and_then(|n| match &n.value {
                                        Value::Seq(items) => items.get(i),
                                        _ => None,
                                    })
                                    .and_then(|n| n.get("permissions"))
                                    .and_then(|n| match &n.value {
                                        Value::Seq(items) => items.get(j).map(|n| n.span.clone()),
                                        _ => None,
                                    })
                                    .unwrap_or_else(|| span.clone());
                                match p.as_str() {
                                    "*" => set.extend(
                                        crate::model::PERMISSIONS.iter().map(|s| (*s).to_owned()),
                                    ),
                                    "deploy" => {
                                        set.insert("apply".to_owned());
                                    }
                                    p if crate::model::PERMISSIONS.contains(&p) => {
                                        set.insert(p.to_owned());
                                    }
                                    other => out.push(
                                        Problem::new(
                                            Kind::InvalidValue,
                                            format!("`{other}` is not a permission (role `{}`)", def.name),
                                        )
                                        .label(at_permission, "unknown permission")
                                        .help(format!(
                                            "{}permissions are the calls: {}, `deploy` (the same as `apply`) or `*`",
                                            did_you_mean(other, crate::model::PERMISSIONS.iter().copied()).map(|d| format!("did you mean `{d}`? ")).unwrap_or_default(),
                                            crate::model::PERMISSIONS.join(", "),
                                        )),
                                    ),
                                }
                            }
                            roles.insert(def.name.clone(), set);
                        }
                    }
                }
            }
        }
        SecuritySettings {
            tls,
            auth,
            rbac: rbac_on.then_some(roles),
        }
    }

    /// `hooks:`: each one a program or a webhook, never both.
    fn hooks(&self, out: &mut Vec<Problem>) -> HooksSettings {
        let Some(h) = &self.file.hooks else {
            return HooksSettings::default();
        };
        let mut lower = |when: &str, list: &Option<Vec<schema::Hook>>| -> Vec<HookSpec> {
            let mut specs = Vec::new();
            for (i, hook) in list.iter().flatten().enumerate() {
                let span = self
                    .root
                    .get("hooks")
                    .and_then(|n| n.get(when))
                    .and_then(|n| match &n.value {
                        Value::Seq(items) => items.get(i).map(|n| n.span.clone()),
                        _ => None,
                    })
                    .unwrap_or(0..0);
                let bad = |msg: String, help: &str| {
                    Problem::new(Kind::InvalidValue, msg)
                        .label(span.clone(), "this hook")
                        .help(help.to_owned())
                };
                let target = match (&hook.command, &hook.url) {
                    (Some(argv), None) if !argv.is_empty() && !argv[0].is_empty() => {
                        if hook.retries.is_some() {
                            out.push(bad(
                                format!("`hooks.{when}[{i}].retries` has no effect on a command"),
                                "only a webhook is retried; remove `retries`",
                            ));
                        }
                        HookTarget::Command(argv.clone())
                    }
                    (None, Some(url)) => {
                        let t = self.text(url);
                        let shown = t.display();
                        let plain = match &t {
                            Text::Plain(p) => p.clone(),
                            Text::Sensitive(s) => s.expose().unwrap_or_default().to_owned(),
                        };
                        if !(plain.starts_with("http://") || plain.starts_with("https://")) {
                            out.push(bad(
                                format!("`hooks.{when}[{i}].url` `{shown}` is not an http(s) URL"),
                                "write `http://...` or `https://...`",
                            ));
                        }
                        HookTarget::Webhook(t)
                    }
                    (Some(_), Some(_)) => {
                        out.push(bad(
                            format!("`hooks.{when}[{i}]` has both `command` and `url`"),
                            "a hook is a program or a webhook: keep one",
                        ));
                        continue;
                    }
                    _ => {
                        out.push(bad(
                            format!("`hooks.{when}[{i}]` has neither a `command` nor a `url`"),
                            "give `command: [program, args...]` or `url: https://...`",
                        ));
                        continue;
                    }
                };
                let spec = HookSpec {
                    target,
                    timeout: std::time::Duration::from_secs(hook.timeout_seconds.unwrap_or(10)),
                    retries: hook.retries.unwrap_or(2),
                };
                // Each bound alone is the schema's (its diagnostic names the
                // range); together they must fit the hook's total.
                let in_range = spec.retries <= HookSpec::MAX_RETRIES
                    && spec.timeout.as_secs() <= HookSpec::MAX_TIMEOUT_SECONDS;
                let worst = spec.worst_case();
                if in_range && worst > HookSpec::MAX_TOTAL {
                    let attempts = spec.retries + 1;
                    let pauses = worst - spec.timeout * attempts;
                    out.push(bad(
                        format!(
                            "`hooks.{when}[{i}]` may take {} s: {attempts} attempts of up to {} s and {} s of pauses, more than the {} s a hook may take",
                            worst.as_secs_f64(),
                            spec.timeout.as_secs(),
                            pauses.as_secs_f64(),
                            HookSpec::MAX_TOTAL.as_secs()
                        ),
                        &format!(
                            "lower `timeout_seconds` or `retries`: (retries + 1) × timeout_seconds plus the pauses between attempts must stay within {} s",
                            HookSpec::MAX_TOTAL.as_secs()
                        ),
                    ));
                }
                specs.push(spec);
            }
            specs
        };
        HooksSettings {
            pre_apply: lower("pre_apply", &h.pre_apply),
            post_apply: lower("post_apply", &h.post_apply),
            on_failure: lower("on_failure", &h.on_failure),
            on_rollback: lower("on_rollback", &h.on_rollback),
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

    fn service(
        &self,
        entry: &Entry<'_>,
        def: &Service,
        name: Option<ServiceName>,
        dependencies: Vec<ServiceName>,
        settings: &Settings,
        out: &mut Vec<Problem>,
    ) -> Option<ServiceSpec> {
        let start = out.len();
        let sname = &entry.key.name;
        let node = entry.node;
        let inherit_env = self.inherit_env(
            node.get("inherit_env"),
            def.inherit_env.as_deref(),
            &format!("services.{sname}.inherit_env"),
            out,
        );
        let invalid = |msg: String, span: Option<Range<usize>>, help: &str| {
            Problem::new(Kind::InvalidService, msg)
                .label(span.unwrap_or_else(|| entry.key.span.clone()), "here")
                .help(help.to_owned())
        };
        if def.image.is_some() && def.container_image.is_some() {
            out.push(invalid(
                format!("`{sname}` sets both `image` and `container_image`"),
                key_span(node, "container_image"),
                "keep one of the two spellings",
            ));
        }
        if def.env.is_some() && def.environment.is_some() {
            out.push(invalid(
                format!("`{sname}` sets both `env` and `environment`"),
                key_span(node, "environment"),
                "keep one of the two spellings",
            ));
        }
        let image = def.image.clone().or_else(|| def.container_image.clone());
        if def.service_type == Some(schema::ServiceType::Container) && image.is_none() {
            out.push(invalid(
                format!("`{sname}` is a container but names no image"),
                key_span(node, "service_type"),
                "add `image: <name>:<tag>`",
            ));
        }
        if image.is_none() && def.command.is_none() && !entry.dirty {
            out.push(invalid(
                format!("`{sname}` has neither a `command` nor an `image`"),
                Some(entry.key.span.clone()),
                "add `command:` to run a local process, or `image:` to run a container",
            ));
        }
        let backend = backend_of(def, settings);
        let workload =
            if def.oneshot == Some(true) || def.service_type == Some(schema::ServiceType::Task) {
                Workload::Task
            } else {
                Workload::Service
            };

        let r = def.resources.clone().unwrap_or_default();
        let rnode = node.get("resources");
        let positive = |key: &str, v: Option<f64>, out: &mut Vec<Problem>| {
            if v == Some(0.0) {
                out.push(
                    Problem::new(
                        Kind::NonPositiveResource,
                        format!("`services.{sname}.resources.{key}` must be positive, found 0"),
                    )
                    .label(
                        rnode
                            .and_then(|n| n.get(key))
                            .map_or(entry.key.span.clone(), |n| n.span.clone()),
                        "zero",
                    )
                    .help("give a value above 0, or leave the key out for the default"),
                );
            }
        };
        positive("cpu_cores", r.cpu_cores, out);
        positive("memory_mb", r.memory_mb.map(|v| v as f64), out);
        positive("gpu_memory_mb", r.gpu_memory_mb.map(|v| v as f64), out);
        let resources = Resources {
            cpu_cores: r.cpu_cores.unwrap_or(backend.default_cpu_cores()),
            memory_mb: r.memory_mb.unwrap_or(Resources::DEFAULT_MEMORY_MB),
            storage_gb: r.storage_gb.unwrap_or(0),
            gpu_count: r.gpu_count.unwrap_or(0),
            gpu_memory_mb: r.gpu_memory_mb,
        };

        let host_net = backend.may_use_host_network() && settings.network.is_host();
        if host_net {
            for (i, p) in def.ports.iter().flatten().enumerate() {
                if let Some(h) = p.host_port.filter(|h| *h != p.container_port) {
                    let span = node
                        .get("ports")
                        .and_then(|n| match &n.value {
                            Value::Seq(items) => items.get(i),
                            _ => None,
                        })
                        .and_then(|n| n.get("host_port"))
                        .map(|n| n.span.clone());
                    out.push(invalid(
                        format!(
                            "`{sname}` asks for host port {h} for container port {}, but on the host network a container's port is its host port",
                            p.container_port
                        ),
                        span,
                        "remove `host_port`, or make it equal to `container_port`, or use `network.mode: Bridge` to publish the port elsewhere",
                    ));
                }
            }
        }
        let ports: Vec<PortSpec> = def
            .ports
            .iter()
            .flatten()
            .map(|p| PortSpec {
                container_port: p.container_port,
                host_port: host_port(p, backend, settings),
                host_ip: p.host_ip.clone(),
                protocol: protocol(p.protocol),
            })
            .collect();

        let restart_policy = match def.restart.as_ref().and_then(schema::RestartDef::policy) {
            Some(schema::Restart::OnFailure) => RestartPolicy::OnFailure,
            Some(schema::Restart::Always) => RestartPolicy::Always,
            Some(schema::Restart::UnlessStopped) => RestartPolicy::UnlessStopped,
            Some(schema::Restart::No) | None => RestartPolicy::No,
        };
        let restart_settings = restart_settings(
            def,
            sname,
            (backend, workload, restart_policy),
            node,
            &entry.key.span,
            out,
        );
        let health_check = def.health_check.as_ref().and_then(|h| {
            let hspan = key_span(node, "health_check");
            let count = [h.endpoint.is_some(), h.command.is_some(), h.tcp.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            let probe = if count == 0 {
                out.push(
                    Problem::new(Kind::HealthCheckWithoutProbe, format!("the health check of `{sname}` has neither `endpoint`, `command` nor `tcp`"))
                        .label(hspan.unwrap_or_else(|| entry.key.span.clone()), "no probe")
                        .help("add `endpoint: /health` (HTTP), `command: [..]` (exit 0) or `tcp: <port>`; or remove `health_check`"),
                );
                return None;
            } else if count > 1 {
                out.push(invalid(
                    format!("the health check of `{sname}` has more than one of `endpoint`, `command` and `tcp`"),
                    hspan,
                    "keep exactly one probe",
                ));
                return None;
            } else if let Some(ep) = &h.endpoint {
                if ep.starts_with('/') {
                    let Some(port) = ports.first() else {
                        out.push(invalid(
                            format!("the health endpoint `{ep}` of `{sname}` is a path, but the service has no port"),
                            node.get("health_check").and_then(|n| n.get("endpoint")).map(|n| n.span.clone()),
                            "write a full URL such as `http://127.0.0.1:8080/health`, or add a port",
                        ));
                        return None;
                    };
                    let p = port.host_port.unwrap_or(port.container_port);
                    Probe::Http { url: format!("http://127.0.0.1:{p}{ep}") }
                } else if ep.starts_with("http://") || ep.starts_with("https://") {
                    Probe::Http { url: ep.clone() }
                } else {
                    out.push(invalid(
                        format!("the health endpoint `{ep}` of `{sname}` is neither a URL nor a path"),
                        node.get("health_check").and_then(|n| n.get("endpoint")).map(|n| n.span.clone()),
                        "write `http://host:port/path` or a path starting with `/`",
                    ));
                    return None;
                }
            } else if let Some(argv) = &h.command {
                if argv.is_empty() {
                    out.push(invalid(
                        format!("the health-check command of `{sname}` is empty"),
                        hspan,
                        "give the program and its arguments, e.g. `[pg_isready]`",
                    ));
                    return None;
                }
                Probe::Command { argv: argv.clone() }
            } else {
                Probe::Tcp {
                    host: h.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                    port: h.tcp.unwrap_or(0),
                }
            };
            for (key, v) in [
                ("interval_seconds", h.interval_seconds),
                ("timeout_seconds", h.timeout_seconds),
            ] {
                if let Some(v) = v
                    && ((v * 1000.0).round() - v * 1000.0).abs() > 1e-6
                {
                    let span = node
                        .get("health_check")
                        .and_then(|n| n.get(key))
                        .map_or_else(|| entry.key.span.clone(), |n| n.span.clone());
                    out.push(
                        Problem::new(
                            Kind::InvalidValue,
                            format!(
                                "`health_check.{key}` of `{sname}` is {v}: it is counted in milliseconds"
                            ),
                        )
                        .label(span, "finer than a millisecond")
                        .help("give at most three decimals, e.g. `0.25`".to_owned()),
                    );
                    return None;
                }
            }
            Some(HealthCheck {
                probe,
                interval_seconds: h
                    .interval_seconds
                    .and_then(Seconds::from_secs_f64)
                    .unwrap_or(Seconds::whole(settings.deployment.health_check_interval)),
                timeout_seconds: h
                    .timeout_seconds
                    .and_then(Seconds::from_secs_f64)
                    .unwrap_or(Seconds::whole(5)),
                retries: h.retries.unwrap_or(3),
                start_period_seconds: h.start_period_seconds.unwrap_or(0),
                min_healthy_seconds: h.min_healthy_seconds.unwrap_or(0),
                restart_after_failures: h.restart_after_failures,
            })
        });

        let env: BTreeMap<String, Text> = def
            .env
            .iter()
            .chain(def.environment.iter())
            .flatten()
            .map(|(k, v)| {
                let s = match v {
                    schema::EnvValue::Bool(b) => b.to_string(),
                    schema::EnvValue::Int(i) => i.to_string(),
                    schema::EnvValue::Float(f) => f.to_string(),
                    schema::EnvValue::Str(s) => s.clone(),
                };
                (k.clone(), self.text(&s))
            })
            .collect();

        let behind_switch = self.behind_switch(
            entry, sname, backend, workload, host_net, &ports, settings, out,
        );
        let swarm_update = backend
            .orchestrates()
            .then(|| self.swarm_update(entry, sname, health_check.as_ref(), &ports, settings, out))
            .flatten();
        if out.len() > start {
            return None;
        }
        Some(ServiceSpec {
            name: name?,
            backend,
            workload,
            replicas: def.replicas.unwrap_or(1),
            image,
            command: def.command.as_deref().map(|c| self.text(c)),
            args: def.args.iter().flatten().map(|a| self.text(a)).collect(),
            working_dir: def.working_dir.clone(),
            env,
            dependencies,
            resources,
            health_check,
            ports,
            volumes: def
                .volumes
                .iter()
                .flatten()
                .map(|v| VolumeSpec {
                    name: v.name.clone(),
                    host_path: v.host_path.clone(),
                    mount_path: v.mount_path.clone(),
                    read_only: v.read_only.unwrap_or(false),
                })
                .collect(),
            restart: restart_policy,
            restart_settings,
            labels: def.labels.clone().unwrap_or_default(),
            network: if !backend.joins_networks() {
                None
            } else if host_net {
                Some("host".into())
            } else {
                settings.network.name.clone()
            },
            behind_switch,
            switch: settings.deployment.switch.filter(|_| behind_switch),
            swarm_update,
            inherit_env,
        })
    }

    /// An `inherit_env` list (`at`, the list's node; `path`, its key for the
    /// messages): each entry a variable's name, or a pattern in which `*`
    /// stands for any run of characters. `deploy-code`'s own variables
    /// (`DEPLOY_CODE_*`) are never passed on, so a pattern that can only
    /// name them would have no effect and is refused.
    fn inherit_env(
        &self,
        at: Option<&Node>,
        list: Option<&[String]>,
        path: &str,
        out: &mut Vec<Problem>,
    ) -> Vec<String> {
        let mut kept = Vec::new();
        for (i, pattern) in list.into_iter().flatten().enumerate() {
            let span = at
                .and_then(|n| match &n.value {
                    Value::Seq(items) => items.get(i).map(|n| n.span.clone()),
                    _ => None,
                })
                .or_else(|| at.map(|n| n.span.clone()))
                .unwrap_or(0..0);
            let well_formed = !pattern.is_empty()
                && !pattern.starts_with(|c: char| c.is_ascii_digit())
                && pattern
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*');
            if !well_formed {
                out.push(
                    Problem::new(
                        Kind::InvalidValue,
                        format!("`{path}[{i}]` `{pattern}` is not a variable name or pattern"),
                    )
                    .label(span, "not a name")
                    .help("give a variable's name (letters, digits and `_`, not starting with a digit), or a pattern in which `*` stands for any run of characters, e.g. `AWS_*`"),
                );
            } else if pattern.starts_with(crate::model::OWN_ENV_PREFIX) {
                out.push(
                    Problem::new(
                        Kind::InvalidValue,
                        format!(
                            "`{path}[{i}]` `{pattern}` has no effect: deploy-code's own `{}*` variables are never passed on",
                            crate::model::OWN_ENV_PREFIX
                        ),
                    )
                    .label(span, "would have no effect")
                    .help("the state key, the secrets directory and the marks stay with deploy-code; give what the service needs in `env`, or remove the entry"),
                );
            } else {
                kept.push(pattern.clone());
            }
        }
        kept
    }

    /// A Swarm service's update policy from the strategy (`None` when it is
    /// `Hybrid`'s); `rolling.max_unavailable` is refused where Swarm would
    /// ignore it (with `max_surge` above 0, Swarm starts first and stops
    /// nothing early).
    fn swarm_update(
        &self,
        entry: &Entry<'_>,
        sname: &str,
        health_check: Option<&HealthCheck>,
        ports: &[PortSpec],
        settings: &Settings,
        out: &mut Vec<Problem>,
    ) -> Option<crate::model::SwarmUpdate> {
        let dep = &settings.deployment;
        let fixed = ports.iter().any(|p| p.host_port.is_some());
        if dep.strategy == Strategy::RollingUpdate
            && dep.rolling.max_surge > 0
            && dep.rolling.max_unavailable > 0
        {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    format!(
                        "`rolling.max_unavailable` has no effect on `{sname}`, a Swarm service, while `max_surge` is above 0: Swarm then starts each new task first and stops no old one early"
                    ),
                )
                .label(
                    span_of(self.root, &["deployment", "rolling", "max_unavailable"])
                        .unwrap_or(0..0),
                    "ignored by Swarm",
                )
                .label(entry.key.span.clone(), "this service")
                .help("on Swarm write either `max_surge` (tasks started first, that many at once) or `max_surge: 0` with `max_unavailable` (tasks stopped first)"),
            );
        }
        let min_healthy = health_check.map_or(0, |h| h.min_healthy_seconds);
        let update =
            crate::model::SwarmUpdate::for_strategy(dep.strategy, dep.rolling, min_healthy, fixed);
        (update != crate::model::SwarmUpdate::hybrid(fixed)).then_some(update)
    }

    /// `deployment.rolling`, refused under another strategy than
    /// `RollingUpdate` and when it would replace nothing at a time.
    fn rolling(
        &self,
        d: &schema::Deployment,
        out: &mut Vec<Problem>,
    ) -> crate::model::RollingSettings {
        let dr = crate::model::RollingSettings::default();
        let Some(r) = &d.rolling else {
            return dr;
        };
        let at = |key: &[&str]| {
            let mut path = vec!["deployment", "rolling"];
            path.extend_from_slice(key);
            span_of(self.root, &path)
                .or_else(|| span_of(self.root, &["deployment", "rolling"]))
                .unwrap_or(0..0)
        };
        if d.strategy != Some(schema::Strategy::RollingUpdate) {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`deployment.rolling` has no effect without `strategy: RollingUpdate`",
                )
                .label(at(&[]), "would have no effect")
                .help("`max_surge` and `max_unavailable` size the steps of a rolling update; remove the key or write `strategy: RollingUpdate`"),
            );
        }
        let rolling = crate::model::RollingSettings {
            max_surge: r.max_surge.unwrap_or(dr.max_surge),
            max_unavailable: r.max_unavailable.unwrap_or(dr.max_unavailable),
        };
        if rolling.max_surge == 0 && rolling.max_unavailable == 0 {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`deployment.rolling` with `max_surge: 0` and `max_unavailable: 0` can replace no replica",
                )
                .label(at(&["max_surge"]), "no extra replica")
                .label(at(&["max_unavailable"]), "and none stopped first")
                .help("allow at least one extra replica (`max_surge: 1`, the default) or one stopped first (`max_unavailable: 1`)"),
            );
        }
        rolling
    }

    /// `deployment.blue_green`, refused under another strategy than
    /// `BlueGreen`.
    fn blue_green(
        &self,
        d: &schema::Deployment,
        out: &mut Vec<Problem>,
    ) -> crate::model::BlueGreenSettings {
        let Some(b) = &d.blue_green else {
            return crate::model::BlueGreenSettings::default();
        };
        if d.strategy != Some(schema::Strategy::BlueGreen) {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`deployment.blue_green` has no effect without `strategy: BlueGreen`",
                )
                .label(
                    span_of(self.root, &["deployment", "blue_green"]).unwrap_or(0..0),
                    "would have no effect",
                )
                .help("`keep_seconds` keeps the old set of a blue-green rollout for a flip back; remove the key or write `strategy: BlueGreen`"),
            );
        }
        crate::model::BlueGreenSettings {
            keep_seconds: b.keep_seconds.unwrap_or(0),
        }
    }

    /// The `deployment.canary` settings: refused under another strategy;
    /// steps increasing (the schema bounds each weight to 1..=99).
    fn canary(&self, d: &schema::Deployment, out: &mut Vec<Problem>) -> CanarySettings {
        let dc = CanarySettings::default();
        let Some(c) = &d.canary else {
            return dc;
        };
        let at = |path: &[&str]| {
            let mut full = vec!["deployment", "canary"];
            full.extend_from_slice(path);
            span_of(self.root, &full).unwrap_or(0..0)
        };
        if d.strategy != Some(schema::Strategy::Canary) {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`deployment.canary` has no effect: the strategy is not `Canary`",
                )
                .label(at(&[]), "would have no effect")
                .help("set `deployment.strategy: Canary`, or remove `deployment.canary`"),
            );
        }
        let steps_node = self
            .root
            .get("deployment")
            .and_then(|n| n.get("canary"))
            .and_then(|n| n.get("steps"));
        let step_span = |i: usize| match steps_node.map(|n| &n.value) {
            Some(Value::Seq(items)) => items
                .get(i)
                .map(|n| n.get("weight").unwrap_or(n).span.clone())
                .unwrap_or(0..0),
            _ => steps_node.map(|n| n.span.clone()).unwrap_or(0..0),
        };
        let steps: Vec<CanaryStep> = match &c.steps {
            None => dc.steps.clone(),
            Some(steps) => steps
                .iter()
                .map(|s| CanaryStep {
                    weight: s.weight,
                    pause_seconds: s.pause_seconds,
                })
                .collect(),
        };
        if c.steps.as_ref().is_some_and(Vec::is_empty) {
            out.push(
                Problem::new(Kind::InvalidValue, "`deployment.canary.steps` is empty")
                    .label(
                        steps_node.map_or(0..0, |n| n.span.clone()),
                        "no step",
                    )
                    .help("give at least one step (`{weight: 10, pause_seconds: 30}`), or use `strategy: BlueGreen` to move every connection at once"),
            );
        }
        for (i, w) in steps.windows(2).enumerate() {
            if w[1].weight <= w[0].weight {
                out.push(
                    Problem::new(
                        Kind::InvalidValue,
                        format!(
                            "canary step {} has weight {} after {}: the weights must increase",
                            i + 2,
                            w[1].weight,
                            w[0].weight
                        ),
                    )
                    .label(step_span(i + 1), "not above the step before")
                    .help("list the steps by increasing weight, each from 1 to 99; after the last one the new set takes every connection"),
                );
            }
        }
        let a = c.analysis.clone().unwrap_or_default();
        let da = dc.analysis;
        if let Some(l) = &a.max_latency_ms
            && l.quantile <= 0.0
        {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`max_latency_ms.quantile` must be above 0",
                )
                .label(
                    at(&["analysis", "max_latency_ms", "quantile"]),
                    "not above 0",
                )
                .help("give a quantile such as 0.99 (the 99th percentile)"),
            );
        }
        if let Some(p) = &a.prometheus
            && !(p.url.starts_with("http://") || p.url.starts_with("https://"))
        {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    format!("`{}` is not an http(s) URL", p.url),
                )
                .label(at(&["analysis", "prometheus", "url"]), "not an http(s) URL")
                .help("give the Prometheus server's base URL, such as `http://127.0.0.1:9090`"),
            );
        }
        CanarySettings {
            steps,
            analysis: CanaryAnalysis {
                interval_seconds: a.interval_seconds.unwrap_or(da.interval_seconds),
                max_error_rate: a.max_error_rate.or(da.max_error_rate),
                max_failed_connections: a.max_failed_connections.or(da.max_failed_connections),
                max_latency_ms: a.max_latency_ms.map(|l| LatencyLimit {
                    quantile: l.quantile,
                    value: l.value,
                }),
                prometheus: a.prometheus.map(|p| PrometheusCheck {
                    url: p.url,
                    query: p.query,
                    max: p.max,
                }),
            },
        }
    }

    /// Whether a service runs behind a traffic switch: under `BlueGreen` or
    /// `RollingUpdate`, a long-running process or container with fixed TCP
    /// host ports. A service the strategy cannot act on is refused rather
    /// than run as another strategy would.
    #[allow(clippy::too_many_arguments)]
    fn behind_switch(
        &self,
        entry: &Entry<'_>,
        sname: &str,
        backend: BackendKind,
        workload: Workload,
        host_net: bool,
        ports: &[PortSpec],
        settings: &Settings,
        out: &mut Vec<Problem>,
    ) -> bool {
        let strategy = settings.deployment.strategy;
        if !strategy.uses_switch() {
            return false;
        }
        let name = format!("{strategy:?}");
        let strategy_span = span_of(self.root, &["deployment", "strategy"]).unwrap_or(0..0);
        let refuse = |why: String, help: &str, out: &mut Vec<Problem>| {
            out.push(
                Problem::new(Kind::InvalidValue, why)
                    .label(strategy_span.clone(), "the strategy")
                    .label(entry.key.span.clone(), "this service")
                    .help(help.to_owned()),
            );
        };
        if backend.orchestrates() {
            // Swarm rolls its services out itself, by the update policy the
            // strategy gives it (`swarm_update`); its routing mesh holds the
            // published ports. It has no way to weight connections.
            if strategy == Strategy::Canary {
                refuse(
                    format!(
                        "`strategy: Canary` has no effect on `{sname}`, a Swarm service: Swarm cannot send a share of connections to new tasks"
                    ),
                    "use `RollingUpdate` or `BlueGreen` for a Swarm service (its update policy follows them), or run it on the `docker` backend",
                    out,
                );
            }
            return false;
        }
        let fixed: Vec<&PortSpec> = ports.iter().filter(|p| p.host_port.is_some()).collect();
        if workload != Workload::Service || fixed.is_empty() {
            return false;
        }
        if host_net {
            refuse(
                format!(
                    "`strategy: {name}` cannot put `{sname}` behind a traffic switch: on the host network its container binds its host ports itself"
                ),
                "use `network.mode: Bridge`, or `Hybrid`, `Sequential` or `Parallel`",
                out,
            );
            return false;
        }
        if let Some(p) = fixed.iter().find(|p| p.protocol == Protocol::Udp) {
            refuse(
                format!(
                    "`strategy: {name}` cannot put `{sname}` behind a traffic switch: host port {}/udp, and the switch forwards TCP only",
                    p.host_port.unwrap_or(0)
                ),
                "leave `host_port` out of UDP ports, or use `Hybrid`, `Sequential` or `Parallel`",
                out,
            );
            return false;
        }
        true
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
