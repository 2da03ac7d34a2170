//! How a service rolls out: Swarm's update policy, `rolling`,
//! `blue_green`, `canary`, and whether it sits behind traffic switches.

use super::*;

impl Lowering<'_> {
    /// A Swarm service's update policy from the strategy (`None` when it is
    /// `Hybrid`'s); `rolling.max_unavailable` is refused where Swarm would
    /// ignore it (with `max_surge` above 0, Swarm starts first and stops
    /// nothing early).
    pub(super) fn swarm_update(
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
    pub(super) fn rolling(
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
    pub(super) fn blue_green(
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
    pub(super) fn canary(&self, d: &schema::Deployment, out: &mut Vec<Problem>) -> CanarySettings {
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
    pub(super) fn behind_switch(
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
