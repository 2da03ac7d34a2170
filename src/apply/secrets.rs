//! The plaintext of a run's secrets: known by digest from the desired state,
//! put back into a recorded spec (whose secrets are digests) when a step must
//! start it again.

use std::collections::HashMap;

use super::{Exec, FailureKind, StepError};
use crate::model::{DesiredState, Sensitive, ServiceSpec, Text};

/// Plaintext of every sensitive value of the desired state, by digest.
pub(super) fn secret_map(desired: &DesiredState) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for spec in desired.services.values() {
        let texts = spec
            .command
            .iter()
            .chain(spec.args.iter())
            .chain(spec.env.values());
        for t in texts {
            if let Text::Sensitive(s) = t
                && let Some(p) = s.expose()
            {
                m.insert(s.digest().to_owned(), p.to_owned());
            }
        }
    }
    m
}

impl Exec<'_> {
    /// The recorded spec with the plaintext of its secrets, where this run knows it.
    pub(super) fn with_plaintext(&self, spec: &ServiceSpec) -> Result<ServiceSpec, StepError> {
        let mut spec = spec.clone();
        let mut missing = Vec::new();
        let fix = |t: &mut Text, field: String, missing: &mut Vec<String>| {
            if let Text::Sensitive(s) = t
                && s.expose().is_none()
            {
                match (self.secrets.get(s.digest()), &self.key) {
                    (Some(p), Some(k)) => *t = Text::Sensitive(Sensitive::new(k, p.clone())),
                    _ => missing.push(field),
                }
            }
        };
        if let Some(c) = &mut spec.command {
            fix(c, "command".into(), &mut missing);
        }
        for (i, a) in spec.args.iter_mut().enumerate() {
            fix(a, format!("args[{i}]"), &mut missing);
        }
        for (k, v) in spec.env.iter_mut() {
            fix(v, format!("env.{k}"), &mut missing);
        }
        if missing.is_empty() {
            Ok(spec)
        } else {
            Err(StepError::new(
                FailureKind::SecretUnavailable,
                format!(
                    "the previous value of sensitive `{}` is not known (only its digest is recorded)",
                    missing.join("`, `")
                ),
            ))
        }
    }
}
