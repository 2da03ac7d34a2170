//! `promote` and `abort`: the decision on a canary in progress, given to
//! the traffic switches of its service over their control sockets (beside
//! the state file); the `apply` run that holds the canary polls them and
//! acts (promote: the new set takes every connection at once; abort: the
//! step fails and the change set rolls back). Neither takes the state lock:
//! the run in progress holds it.

use super::{CommandOutcome, Invocation};
use crate::error::Failure;
pub(crate) use crate::switch::Decision;
use crate::switch::SwitchClient;

/// Why a decision could not be given. Its code and help follow from the
/// variant.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CanaryError {
    #[error("no canary is in progress{}", service.as_ref().map(|s| format!(" for `{s}`")).unwrap_or_default())]
    NoneInProgress { service: Option<String> },
    #[error("canaries of {} are in progress: name the service", services.join(", "))]
    Ambiguous { services: Vec<String> },
    #[error(transparent)]
    Switch(#[from] crate::switch::SwitchError),
}

impl crate::error::Coded for CanaryError {
    fn error_code(&self) -> crate::error::Code {
        match self {
            CanaryError::NoneInProgress { .. } | CanaryError::Ambiguous { .. } => {
                crate::error::Code::E016
            }
            CanaryError::Switch(_) => crate::error::Code::E010,
        }
    }

    fn help_text(&self) -> Option<String> {
        Some(match self {
            CanaryError::NoneInProgress { .. } => "a canary is in progress while `deploy-code apply` runs a `strategy: Canary` rollout and waits at one of its steps; `deploy-code status` shows the services' switches".to_owned(),
            CanaryError::Ambiguous { services } => format!(
                "give one of them: `deploy-code promote {}`",
                services.first().map(String::as_str).unwrap_or("SERVICE")
            ),
            CanaryError::Switch(_) => "the switch's control socket lives beside the state file (`<state>.switch/`); check `--state`".to_owned(),
        })
    }
}

crate::error::coded_diagnostic!(CanaryError);

/// The switches beside the state that hold a canary (of `service` when
/// given): found by their control sockets.
async fn in_progress(inv: &Invocation, service: Option<&str>) -> Vec<SwitchClient> {
    let dir = crate::switch::client::socket_dir(inv.state_path());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((svc, port)) = name.rsplit_once('.') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if service.is_some_and(|s| s != svc) {
            continue;
        }
        let client = SwitchClient {
            socket: e.path(),
            service: svc.to_owned(),
            port,
        };
        if client.status().await.is_ok_and(|s| !s.canary.is_empty()) {
            out.push(client);
        }
    }
    out.sort_by_key(|c| (c.service.clone(), c.port));
    out
}

/// Gives `decision` to the canary of `service` (or the only one in
/// progress).
pub(crate) fn decide(
    inv: &Invocation,
    service: Option<&str>,
    decision: Decision,
) -> Result<CommandOutcome, Failure> {
    let rt = inv.runtime()?;
    rt.block_on(async {
        let switches = in_progress(inv, service).await;
        let mut services: Vec<String> = switches.iter().map(|c| c.service.clone()).collect();
        services.dedup();
        match services.len() {
            0 => {
                return Err(CanaryError::NoneInProgress {
                    service: service.map(str::to_owned),
                }
                .into());
            }
            1 => {}
            _ => return Err(CanaryError::Ambiguous { services }.into()),
        }
        for c in &switches {
            c.decide(decision).await.map_err(CanaryError::from)?;
        }
        let what = match decision {
            Decision::Promote => "promoted: the apply run moves every connection to the new set",
            Decision::Abort => {
                "aborted: the apply run sends every connection back to the old set and rolls back"
            }
        };
        inv.out.status(&format!("{}: {what}", services[0]));
        Ok(CommandOutcome::Done)
    })
}
