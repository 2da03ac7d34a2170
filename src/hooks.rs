//! `hooks:`: programs and webhooks told about a run. A program gets the run's
//! summary as JSON on stdin (argv, no shell); a webhook gets it POSTed as
//! JSON, with a timeout and retries. Every payload passes `redact` before it
//! leaves. A hook never changes a run's outcome, except a failing
//! `pre_apply` hook, which the apply command turns into a refusal before any
//! change.
//!
//! A hook is bounded: its attempts and the pauses between them stop at
//! [`HookSpec::MAX_TOTAL`] (which `validate` also holds its settings to),
//! and an interrupt (SIGINT, SIGTERM) that arrives while hooks run stops the
//! one running, at once, and the rest are not run.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::apply::Cancel;
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

/// Runs `hooks` one after the other with `payload`, from `dir`, until
/// `cancel` is interrupted once more than it was when they began: the hook
/// that runs then is stopped and reported as interrupted, and the rest are
/// not run (the caller sees the interrupt in `cancel`'s level).
pub async fn run(
    hooks: &[HookSpec],
    when: When,
    payload: &serde_json::Value,
    dir: &Path,
    cancel: &Cancel,
) -> Vec<Outcome> {
    let body = crate::redact::text(&payload.to_string()).into_owned();
    let level = cancel.level();
    let mut out = Vec::new();
    for h in hooks {
        if cancel.level() > level {
            break;
        }
        let hook = match &h.target {
            HookTarget::Command(argv) => argv.join(" "),
            HookTarget::Webhook(url) => url.display().to_owned(),
        };
        let attempt = async {
            match &h.target {
                HookTarget::Command(argv) => command(argv, &body, h.timeout, dir).await,
                HookTarget::Webhook(url) => webhook(url, &body, h).await,
            }
        };
        // Dropping the attempt stops it: a program is killed with its
        // process group, a request is abandoned.
        let result = tokio::select! {
            r = tokio::time::timeout(HookSpec::MAX_TOTAL, attempt) => r.unwrap_or_else(|_| {
                Err(format!(
                    "did not finish within {} s, the most a hook may take (stopped)",
                    HookSpec::MAX_TOTAL.as_secs()
                ))
            }),
            () = cancel.reached(level.saturating_add(1)) => {
                Err("interrupted by SIGINT or SIGTERM (stopped)".to_owned())
            }
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

/// A hook program that is running: dropped before it ended (its timeout,
/// an interrupt), its whole process group is killed, so that what it
/// started (a shell's `sleep`) does not outlive it holding its output open.
struct Running {
    child: tokio::process::Child,
    /// The group it leads, until it has exited and its output closed.
    group: Option<i32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            // SAFETY: a plain syscall on the group this hook's program
            // leads; its id is not reused while a member lives, and some
            // member still holds the output that did not close.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
    }
}

async fn command(
    argv: &[String],
    body: &str,
    timeout: Duration,
    dir: &Path,
) -> Result<String, String> {
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", argv[0]))?;
    let group = child.id().and_then(|p| i32::try_from(p).ok());
    let mut running = Running { child, group };
    let child = &mut running.child;
    let mut stdin = child.stdin.take();
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let body = body.as_bytes().to_vec();
    let run = async move {
        let feed = async {
            if let Some(s) = stdin.as_mut() {
                // A program that does not read its input is not an error.
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            }
            drop(stdin);
        };
        // Its output is read while it runs, so that a full pipe never
        // blocks it: stdout is dropped, stderr kept for its last line.
        let drain = |pipe: Option<tokio::process::ChildStdout>| async move {
            if let Some(mut p) = pipe {
                let _ = tokio::io::copy(&mut p, &mut tokio::io::sink()).await;
            }
        };
        let mut err = Vec::new();
        let read_err = async {
            use tokio::io::AsyncReadExt;
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_end(&mut err).await;
            }
        };
        let ((), (), (), status) = tokio::join!(feed, drain(stdout.take()), read_err, child.wait());
        status.map(|s| (s, err))
    };
    let ended = tokio::time::timeout(timeout, run).await;
    if ended.is_ok() {
        // It exited and its output closed: nothing of it is left to stop.
        running.group = None;
    }
    match ended {
        Err(_) => Err(format!(
            "did not finish within {} s (killed)",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("cannot wait for it: {e}")),
        Ok(Ok((status, _))) if status.success() => Ok("exited 0".into()),
        Ok(Ok((status, stderr))) => {
            let err = String::from_utf8_lossy(&stderr);
            let last = err.lines().last().unwrap_or("").trim();
            Err(format!(
                "{}{}",
                match status.code() {
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
            tokio::time::sleep(HookSpec::backoff(attempt)).await;
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
