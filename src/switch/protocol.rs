//! What a switch is told and what it answers: the control socket's
//! requests and replies (one JSON object per line, see the module above),
//! the limits and tuning of its port, and the status it reports.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::traffic::Counters;
use crate::model::{Probe, ServiceSpec, SwitchSettings};

/// How a switch guards itself against clients that hold connections
/// without using them (`deployment.switch`, in milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub idle_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub max_connections: u64,
}

impl Limits {
    pub(crate) fn of(s: &SwitchSettings) -> Self {
        Self {
            idle_timeout_ms: u64::from(s.idle_timeout_seconds) * 1000,
            header_timeout_ms: u64::from(s.header_timeout_seconds) * 1000,
            max_connections: u64::from(s.max_connections),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::of(&SwitchSettings::default())
    }
}

/// What a switch is told about its port besides where to send connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// The port speaks HTTP/1.x.
    pub http: bool,
    pub limits: Limits,
}

impl Tuning {
    /// The switch of `spec`'s host port `host_port`: it speaks HTTP when the
    /// service's health check is a plain `http://` probe of that port (the
    /// host port, or the container port it forwards to).
    pub fn of(spec: &ServiceSpec, host_port: u16) -> Self {
        let port = spec.ports.iter().find(|p| p.host_port == Some(host_port));
        let http = port.is_some_and(|p| {
            spec.health_check.as_ref().is_some_and(|h| match &h.probe {
                Probe::Http { url } => {
                    url_port(url).is_some_and(|u| u == host_port || u == p.container_port)
                }
                _ => false,
            })
        });
        Self {
            http,
            limits: Limits::of(&spec.switch.unwrap_or_default()),
        }
    }
}

/// The port of a plain `http://` URL (80 when it names none).
fn url_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    match authority.rsplit_once(':') {
        Some((_, p)) if !p.contains(']') => p.parse().ok(),
        _ => Some(80),
    }
}

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Set {
        backends: Vec<SocketAddr>,
        #[serde(default)]
        drain_ms: u64,
        /// The canary group (empty: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        canary: Vec<SocketAddr>,
        /// The canary group's share of new connections, percent.
        #[serde(default)]
        weight: u8,
        /// Whether the port speaks HTTP (`None`: as before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http: Option<bool>,
        /// The canary step this weight belongs to (`None`: no canary step).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<CanaryStep>,
        /// The switch's limits from now on (`None`: as before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<Limits>,
    },
    Status,
    Decide {
        decision: Decision,
    },
    Stop,
}

/// The decision on a canary in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Skip the remaining pauses: the new set takes every connection.
    Promote,
    /// Fail the step: the change set rolls back.
    Abort,
}

/// Which step of a canary a switch's weight belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// The step, from 1.
    pub n: u32,
    /// The number of steps.
    pub of: u32,
    /// The step has no `pause_seconds`: it waits for `deploy-code promote`
    /// or `deploy-code abort`.
    pub awaiting_decision: bool,
}

/// The counters of the two groups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Groups {
    pub stable: Counters,
    pub canary: Counters,
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
    /// The canary group (empty: none).
    #[serde(default)]
    pub canary: Vec<SocketAddr>,
    /// The canary group's share of new connections, percent.
    #[serde(default)]
    pub weight: u8,
    /// Whether responses are counted as HTTP.
    #[serde(default)]
    pub http: bool,
    /// The decision given on the canary in progress, not yet acted on.
    #[serde(default)]
    pub decision: Option<Decision>,
    /// The canary step the weight belongs to.
    #[serde(default)]
    pub step: Option<CanaryStep>,
    /// What was counted, by backend, since the switch started.
    #[serde(default)]
    pub counters: HashMap<SocketAddr, Counters>,
    /// The same, summed over the current groups' backends.
    #[serde(default)]
    pub groups: Groups,
    /// Client connections open now (forwarded, or still sending their
    /// request head).
    #[serde(default)]
    pub open: u64,
    /// The most client connections it keeps open: `limits.max_connections`,
    /// or fewer where its open-file limit allows fewer.
    #[serde(default)]
    pub max_connections: u64,
    /// Connections shed since it started: closed at once (or answered `503`)
    /// because `max_connections` were open.
    #[serde(default)]
    pub shed: u64,
    /// It shed a connection in the last few seconds.
    #[serde(default)]
    pub shedding: bool,
    /// Connections it closed because they were idle, or sent no complete
    /// request head in time.
    #[serde(default)]
    pub timed_out: u64,
    /// Its soft limit of open files.
    #[serde(default)]
    pub open_files_limit: u64,
    /// Its limits now.
    #[serde(default)]
    pub limits: Option<Limits>,
}

impl Status {
    /// The counters summed over `backends`.
    pub(crate) fn sum(&self, backends: &[SocketAddr]) -> Counters {
        let mut c = Counters::default();
        for b in backends {
            if let Some(x) = self.counters.get(b) {
                c.add(x);
            }
        }
        c
    }
}

/// A reply on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum Reply {
    Ok,
    Status(Box<Status>),
    Error { message: String },
}
