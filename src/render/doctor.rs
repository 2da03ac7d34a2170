//! The view of `doctor`: its checks as one document with `format_version`,
//! and as lines.

/// The verdict of one doctor check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    Ok,
    Warning,
    Failed,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct Check {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Check {
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Ok,
            detail: detail.into(),
            help: None,
        }
    }

    pub(crate) fn warn(
        check: &'static str,
        detail: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self {
            check,
            verdict: Verdict::Warning,
            detail: detail.into(),
            help: Some(help.into()),
        }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Failed,
            detail: detail.into(),
            help: Some(help.into()),
        }
    }
}

/// `doctor --format json`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct DoctorDoc {
    pub format_version: u32,
    /// No check failed.
    pub healthy: bool,
    pub checks: Vec<Check>,
}

impl DoctorDoc {
    pub fn new(checks: Vec<Check>) -> Self {
        Self {
            format_version: 1,
            healthy: checks.iter().all(|c| c.verdict != Verdict::Failed),
            checks,
        }
    }

    /// How many checks failed.
    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Failed)
            .count()
    }

    /// A line per check (and its help), then the verdict.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warning => "warn",
                Verdict::Failed => "FAIL",
            };
            out.push_str(&format!("{mark} {:<9} {}\n", c.check, c.detail));
            if let Some(h) = &c.help {
                out.push_str(&format!("               help: {h}\n"));
            }
        }
        let failed = self.failed();
        out.push_str(&format!(
            "\n{}\n",
            if failed == 0 {
                "No problem found.".to_owned()
            } else {
                format!("{failed} check(s) failed.")
            }
        ));
        out
    }
}
