//! One service entry lowered into its `ServiceSpec`, and the variables it
//! inherits from the environment `deploy-code` runs in.

use super::*;

impl Lowering<'_> {
    pub(super) fn service(
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
    pub(super) fn inherit_env(
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
}
