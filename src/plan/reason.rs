//! Why the planner decided what it did, as data. The words are made by
//! `render::plan`; nothing in the planner reads them.

use serde::{Deserialize, Serialize};

use crate::model::{BackendKind, ServiceName, StopFirst};
use crate::state::Handle;

/// Why a service gets its action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    #[serde(flatten)]
    pub cause: Cause,
    /// The service is also tainted by a failed apply (and so replaced whatever
    /// the cause); never set when the cause is [`Cause::Tainted`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub also_tainted: bool,
}

impl From<Cause> for Reason {
    fn from(cause: Cause) -> Self {
        Reason {
            cause,
            also_tainted: false,
        }
    }
}

/// The decision's cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    /// A service the state does not have.
    New,
    /// `plan --destroy` / `destroy`.
    DestroyRequested,
    /// `enabled: false` in the configuration.
    Disabled,
    /// Gone from the configuration.
    Removed,
    /// The service moves to another backend.
    BackendChanged { from: BackendKind, to: BackendKind },
    /// Canonical spec fields whose change forces a replace.
    ForcingFields { paths: Vec<String> },
    /// Its last apply failed.
    Tainted,
    /// An earlier apply was interrupted while changing it.
    Pending,
    /// `--replace`.
    ReplaceRequested,
    /// What runs differs from the state (the first drift found for it).
    RepairsDrift { drift: Box<Drift> },
    /// Fields its backend changes on the running service.
    UpdatableFields { paths: Vec<String> },
}

/// Something running differs from what the state says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub service: ServiceName,
    #[serde(flatten)]
    pub kind: DriftKind,
    /// The instance it is about.
    pub instance: Handle,
}

/// What kind of drift, with what was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DriftKind {
    /// A recorded instance has exited; `note` is what the engine says beyond that.
    Exited { note: Option<String> },
    /// A recorded instance is gone.
    Missing { note: Option<String> },
    /// A Swarm service runs fewer tasks than the state records replicas.
    Degraded { note: Option<String> },
    /// A recorded instance runs another spec than the state recorded.
    Changed { runs: String, recorded: String },
    /// An instance with this state's marks that no record names.
    Orphan,
    /// An instance with this project's name, started by another state.
    Foreign { lineage: String },
}

impl DriftKind {
    /// The kind's name: `exited`, `missing`, `degraded`, `changed`, `orphan`,
    /// `foreign`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DriftKind::Exited { .. } => "exited",
            DriftKind::Missing { .. } => "missing",
            DriftKind::Degraded { .. } => "degraded",
            DriftKind::Changed { .. } => "changed",
            DriftKind::Orphan => "orphan",
            DriftKind::Foreign { .. } => "foreign",
        }
    }
}

/// How a create or replace rolls out under the deployment's strategy, and
/// whether it costs downtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rollout", rename_all = "snake_case")]
pub enum Rollout {
    /// A create: the service starts (behind the traffic switch on these
    /// ports when it runs behind one).
    Starts { switch_ports: Option<Vec<u16>> },
    /// The old instances stop before the new ones start: downtime.
    StopFirst {
        why: StopFirst,
        switch_ports: Option<Vec<u16>>,
    },
    /// The new set starts beside the old one, then the switch on these ports
    /// moves to it.
    BlueGreen {
        replicas: u32,
        switch_ports: Vec<u16>,
        /// Seconds the old set keeps running after the flip, for a flip
        /// back (`deployment.blue_green.keep_seconds`; 0: stopped once
        /// drained).
        #[serde(default, skip_serializing_if = "is_zero")]
        keep_seconds: u64,
    },
    /// The new set starts beside the old one, then the switch on these ports
    /// sends it these shares (percent) of new connections, step by step,
    /// each judged, then every one.
    Canary {
        replicas: u32,
        switch_ports: Vec<u16>,
        weights: Vec<u8>,
    },
    /// Replica by replica (behind the traffic switch on these ports when it
    /// runs behind one), at most `max_surge` new replicas beyond `replicas`
    /// and `max_unavailable` old ones stopped early at a time
    /// (`deployment.rolling`).
    Rolling {
        replicas: u32,
        switch_ports: Option<Vec<u16>>,
        #[serde(default = "one")]
        max_surge: u32,
        #[serde(default)]
        max_unavailable: u32,
    },
    /// The new instances pass their gates before the old ones stop.
    StartFirst,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn one() -> u32 {
    1
}
