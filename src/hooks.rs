//! `hooks:`: programs and webhooks told about a run. A program gets the run's
//! summary as JSON on stdin (argv, no shell); a webhook gets it POSTed as
//! JSON, with a timeout and retries. Every payload passes `redact` before it
//! leaves. A hook never changes a run's outcome, except a failing
//! `pre_apply` hook, which the apply command turns into a refusal before any
//! change.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::model::{HookSpec, HookTarget};

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    PreApply,
    PostApply,
    OnFailure,
    OnRollback,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::PreApply => "pre_apply",
            When::PostApply => "post_apply",
            When::OnFailure => "on_failure",
            When::OnRollback => "on_rollback",
        }
    }
}

/// What one hook did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub event: &'static str,
    pub when: When,
    /// The program or the URL (redacted).
    pub hook: String,
    pub ok: bool,
    pub detail: String,
}

/// Runs `hooks` one after the other with `payload`, from `dir`.
pub async fn run(
    hooks: &[HookSpec],
    when: When,
    payload: &serde_json::Value,
    dir: &Path,
) -> Vec<Outcome> {
    let body = crate::redact::text(&payload.to_string()).into_owned();
    let mut out = Vec::new();
    for h in hooks {
        let (hook, result) = match &h.target {
            HookTarget::Command(argv) => {
                (argv.join(" "), command(argv, &body, h.timeout, dir).await)
            }
            HookTarget::Webhook(url) => (url.display().to_owned(), webhook(url, &body, h).await),
        };
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        out.push(Outcome {
            event: "hook",
            when,
            hook: crate::redact::text(&hook).into_owned(),
            ok,
            detail: crate::redact::text(&detail).into_owned(),
        });
    }
    out
}

async fn command(
    argv: &[String],
    body: &str,
    timeout: Duration,
    dir: &Path,
) -> Result<String, String> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", argv[0]))?;
    let mut stdin = child.stdin.take();
    let body = body.as_bytes().to_vec();
    let run = async move {
        if let Some(s) = stdin.as_mut() {
            // A program that does not read its input is not an error.
            let _ = s.write_all(&body).await;
            let _ = s.shutdown().await;
        }
        drop(stdin);
        child.wait_with_output().await
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(format!(
            "did not finish within {} s (killed)",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("cannot wait for it: {e}")),
        Ok(Ok(o)) if o.status.success() => Ok("exited 0".into()),
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("").trim();
            Err(format!(
                "{}{}",
                match o.status.code() {
                    Some(c) => format!("exited {c}"),
                    None => "was killed by a signal".into(),
                },
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            ))
        }
    }
}

async fn webhook(url: &crate::model::Text, body: &str, h: &HookSpec) -> Result<String, String> {
    let target = match url {
        crate::model::Text::Plain(p) => p.clone(),
        crate::model::Text::Sensitive(s) => s
            .expose()
            .ok_or_else(|| "the URL's secret is not available".to_owned())?
            .to_owned(),
    };
    let client = crate::net::client_builder()
        .timeout(h.timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut last = String::new();
    for attempt in 0..=h.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        match client
            .post(&target)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                return Ok(format!("{} after {} attempt(s)", r.status(), attempt + 1));
            }
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => {
                last = if e.is_timeout() {
                    format!("no answer within {} s", h.timeout.as_secs())
                } else {
                    format!("cannot reach it: {}", crate::redact::text(&e.to_string()))
                }
            }
        }
    }
    Err(format!("{last} ({} attempt(s))", h.retries + 1))
}
