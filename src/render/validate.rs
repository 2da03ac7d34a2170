//! The view of `validate`: what the configuration declares, as one document
//! with `format_version`, and as one line.

use serde::Serialize;

/// `validate --format json`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ValidateDoc {
    pub format_version: u32,
    pub valid: bool,
    /// The configuration file, as named.
    pub file: String,
    /// Enabled and disabled together.
    pub services: usize,
    pub enabled: usize,
    pub disabled: usize,
    /// One-shot tasks among the enabled services.
    pub tasks: usize,
}

impl ValidateDoc {
    pub fn of(file: String, desired: &crate::model::DesiredState) -> Self {
        let enabled = desired.services.len();
        let disabled = desired.disabled.len();
        let tasks = desired
            .services
            .values()
            .filter(|s| s.workload == crate::model::Workload::Task)
            .count();
        Self {
            format_version: 1,
            valid: true,
            file,
            services: enabled + disabled,
            enabled,
            disabled,
            tasks,
        }
    }

    /// `✓ FILE is valid: N services (M disabled)`.
    pub fn human(&self, color: bool) -> String {
        let total = self.services;
        let noun = if total == 1 { "service" } else { "services" };
        let extra = if self.disabled > 0 {
            format!(" ({} disabled)", self.disabled)
        } else {
            String::new()
        };
        let check = if color {
            "\u{1b}[32m✓\u{1b}[0m"
        } else {
            "✓"
        };
        format!("{check} {} is valid: {total} {noun}{extra}\n", self.file)
    }
}
