//! Saved plans (`plan --out FILE`, `apply FILE`, `show FILE`): their format
//! and their freshness. Reading and writing the files is the `planfile` module's.
//!
//! A saved plan is the plan as JSON, bound to the state's lineage and serial,
//! the rendered configuration's hash and the tool version. Specs carry secrets
//! as keyed digests only, so the file holds no plaintext, and the key of those
//! digests never travels in it (only its id, `binding.state_key_id`). It is
//! written with mode 0600 all the same.

use super::{Binding, FORMAT_VERSION, Plan};
use crate::error::{Code, Coded, coded_diagnostic};
use crate::state::Snapshot;

/// A saved plan that no longer matches the state, the configuration or the tool.
#[derive(Debug, thiserror::Error)]
#[error("the saved plan is stale: {}", .changed.join("; "))]
pub struct StaleError {
    /// What changed, one entry per difference.
    pub changed: Vec<String>,
}

impl Coded for StaleError {
    fn error_code(&self) -> Code {
        Code::E013
    }

    fn help_text(&self) -> Option<String> {
        Some("run `deploy-code plan --out FILE` again and apply the new plan".into())
    }
}

coded_diagnostic!(StaleError);

/// A saved plan file that cannot be written or read as one.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    // The I/O error is part of the message, not a source: it is shown once.
    #[error("cannot write the plan to `{}`: {error}", path.display())]
    Write {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("cannot read the plan `{}`: {error}", path.display())]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("`{name}` is not a saved plan: {detail}")]
    NotAPlan { name: String, detail: String },
    #[error(
        "`{name}` has plan format version {}, this tool reads version {FORMAT_VERSION}",
        found.map_or("none".to_owned(), |v| v.to_string())
    )]
    Version { name: String, found: Option<u64> },
    #[error("`{name}` is not a valid saved plan: {detail}")]
    Invalid { name: String, detail: String },
}

impl Coded for SavedPlanError {
    fn error_code(&self) -> Code {
        match self {
            SavedPlanError::Version { .. } => Code::E013,
            SavedPlanError::Write { .. }
            | SavedPlanError::Read { .. }
            | SavedPlanError::NotAPlan { .. }
            | SavedPlanError::Invalid { .. } => Code::E016,
        }
    }

    fn help_text(&self) -> Option<String> {
        Some(
            match self {
                SavedPlanError::Write { .. } => "check that the directory exists and is writable",
                SavedPlanError::Version { .. } => {
                    "run `deploy-code plan --out FILE` again with this version of the tool"
                }
                SavedPlanError::Read { .. }
                | SavedPlanError::NotAPlan { .. }
                | SavedPlanError::Invalid { .. } => {
                    "give the file written by `deploy-code plan --out FILE`"
                }
            }
            .to_owned(),
        )
    }
}

coded_diagnostic!(SavedPlanError);

/// The bytes of a saved plan file: the plan as JSON.
pub fn encode(plan: &Plan) -> Vec<u8> {
    let mut json = serde_json::to_vec_pretty(plan).expect("a plan always serializes");
    json.push(b'\n');
    json
}

/// A saved plan from the text of its file (`name` for messages); a text that
/// is not one, or of another format version, is an error.
pub fn decode(text: &str, name: &str) -> Result<Plan, SavedPlanError> {
    let head: serde_json::Value =
        serde_json::from_str(text).map_err(|e| SavedPlanError::NotAPlan {
            name: name.to_owned(),
            detail: e.to_string(),
        })?;
    let version = head.get("format_version").and_then(|v| v.as_u64());
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(SavedPlanError::Version {
            name: name.to_owned(),
            found: version,
        });
    }
    serde_json::from_value(head).map_err(|e| SavedPlanError::Invalid {
        name: name.to_owned(),
        detail: e.to_string(),
    })
}

/// Checks that a saved plan still applies: same state lineage and serial, same
/// configuration hash, same tool version. Every difference is reported.
pub fn check_fresh(plan: &Plan, snapshot: &Snapshot, config_hash: &str) -> Result<(), StaleError> {
    let b: &Binding = &plan.binding;
    let mut changed = Vec::new();
    match (&b.lineage, &snapshot.lineage) {
        (None, Some(now)) => changed.push(format!(
            "the plan was made for an empty state, the state now has lineage `{now}`"
        )),
        (Some(was), None) => changed.push(format!(
            "the plan was made for state lineage `{was}`, the state is now empty or missing"
        )),
        (Some(was), Some(now)) if was != now => changed.push(format!(
            "the state's lineage is `{now}`, the plan was made for `{was}`"
        )),
        _ => {}
    }
    if b.serial != snapshot.serial {
        changed.push(format!(
            "the state's serial is {}, the plan was made at serial {}",
            snapshot.serial, b.serial
        ));
    }
    if b.config_hash != config_hash {
        changed.push("the rendered configuration changed since the plan was made".to_owned());
    }
    if let (Some(was), Some(now)) = (&b.state_key_id, &snapshot.secret_key)
        && *was != crate::state::key::id(now)
    {
        changed.push(format!(
            "the plan's secrets were digested with key {was}, this state's key is {} (give the state's key with `{}`)",
            crate::state::key::id(now),
            crate::state::key::ENV
        ));
    }
    let tool = env!("CARGO_PKG_VERSION");
    if b.tool_version != tool {
        changed.push(format!(
            "the plan was made by deploy-code {}, this is {tool}",
            b.tool_version
        ));
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(StaleError { changed })
    }
}
