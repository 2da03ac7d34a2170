//! Starting, finding and steering switches from `deploy-code` itself.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{ARG, CanaryStep, Decision, Reply, Request, Status, Tuning, marks};

/// How long a control request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new switch may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("the traffic switch at {path} does not answer: {message}")]
    Unreachable { path: String, message: String },
    #[error("the traffic switch for port {port} could not start: {message}")]
    Start { port: u16, message: String },
    #[error("the traffic switch refused the request: {0}")]
    Refused(String),
}

/// One switch: where its control socket is, what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchClient {
    pub socket: PathBuf,
    pub service: String,
    pub port: u16,
}

/// The directory beside the state file that holds its switches' sockets.
pub(crate) fn socket_dir(state_path: &Path) -> PathBuf {
    let mut name = state_path.file_name().unwrap_or_default().to_os_string();
    name.push(".switch");
    state_path.with_file_name(name)
}

impl SwitchClient {
    pub fn new(state_path: &Path, service: &str, port: u16) -> Self {
        Self {
            socket: socket_dir(state_path).join(format!("{service}.{port}")),
            service: service.to_owned(),
            port,
        }
    }

    async fn request(&self, req: &Request) -> Result<Reply, SwitchError> {
        let unreachable = |message: String| SwitchError::Unreachable {
            path: self.socket.display().to_string(),
            message,
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let mut line = serde_json::to_string(req).map_err(|e| unreachable(e.to_string()))?;
            line.push('\n');
            stream
                .write_all(line.as_bytes())
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let mut reader = BufReader::new(stream);
            let mut answer = String::new();
            reader
                .read_line(&mut answer)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            serde_json::from_str::<Reply>(&answer).map_err(|e| unreachable(e.to_string()))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable("timed out".into()))?
    }

    /// What the switch says about itself.
    pub async fn status(&self) -> Result<Status, SwitchError> {
        match self.request(&Request::Status).await? {
            Reply::Status(s) => Ok(*s),
            Reply::Error { message } => Err(SwitchError::Refused(message)),
            Reply::Ok => Err(SwitchError::Refused("no status in the reply".into())),
        }
    }

    /// Sends new connections to `backends` from now on; connections to the
    /// others may finish for `drain`. `tuning`: whether the port speaks HTTP
    /// and the switch's limits from now on.
    pub async fn set(
        &self,
        backends: &[SocketAddr],
        drain: Duration,
        tuning: &Tuning,
    ) -> Result<(), SwitchError> {
        let req = Request::Set {
            backends: backends.to_vec(),
            drain_ms: drain.as_millis() as u64,
            canary: Vec::new(),
            weight: 0,
            http: Some(tuning.http),
            step: None,
            limits: Some(tuning.limits),
        };
        self.ok(&req).await
    }

    /// Sends `weight` percent of new connections to `canary`, the rest to
    /// `stable`; `http` says whether responses are counted as HTTP, `step`
    /// which canary step the weight belongs to.
    pub(crate) async fn set_canary(
        &self,
        stable: &[SocketAddr],
        canary: &[SocketAddr],
        weight: u8,
        http: bool,
        step: Option<CanaryStep>,
    ) -> Result<(), SwitchError> {
        let req = Request::Set {
            backends: stable.to_vec(),
            drain_ms: 0,
            canary: canary.to_vec(),
            weight,
            http: Some(http),
            step,
            limits: None,
        };
        self.ok(&req).await
    }

    /// Gives the decision on the canary in progress (refused when none is).
    pub(crate) async fn decide(&self, decision: Decision) -> Result<(), SwitchError> {
        self.ok(&Request::Decide { decision }).await
    }

    async fn ok(&self, req: &Request) -> Result<(), SwitchError> {
        match self.request(req).await? {
            Reply::Ok => Ok(()),
            Reply::Error { message } => Err(SwitchError::Refused(message)),
            Reply::Status(_) => Err(SwitchError::Refused("unexpected status reply".into())),
        }
    }

    /// Stops the switch (its port is free once this returns). A switch that
    /// does not answer is stopped by its marks.
    pub async fn stop(&self, project: &str, lineage: &str) -> Result<(), SwitchError> {
        let pid = self.status().await.ok().map(|s| s.pid).or_else(|| {
            find(project, lineage)
                .into_iter()
                .find(|f| f.client == *self)
                .map(|f| f.pid)
        });
        let Some(pid) = pid else {
            return Ok(());
        };
        let _ = self.request(&Request::Stop).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            if Instant::now() >= deadline {
                if let Ok(p) = i32::try_from(pid) {
                    // SAFETY: a plain syscall on the pid the switch reported.
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(&self.socket);
        Ok(())
    }

    /// Starts the switch unless one answers already (`tuning`: what it is
    /// started with); returns whether it started one.
    pub async fn ensure(
        &self,
        listen: &str,
        project: &str,
        lineage: &str,
        log: &Path,
        tuning: &Tuning,
    ) -> Result<bool, SwitchError> {
        if self.status().await.is_ok() {
            return Ok(false);
        }
        let start_failed = |message: String| SwitchError::Start {
            port: self.port,
            message,
        };
        let program = crate::procfs::deploy_code_program()
            .ok_or_else(|| start_failed("the deploy-code binary was not found".into()))?;
        if let Some(dir) = log.parent() {
            crate::fsperm::private_dir(dir).map_err(|e| start_failed(e.to_string()))?;
        }
        let log_len = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(program);
        // Its environment is its marks and its allocator setting alone: it
        // forwards bytes and reads nothing else of this run's environment
        // (which holds the operator's credentials).
        cmd.arg(ARG)
            .env_clear()
            .env(
                crate::procfs::SMALL_HEAP_ENV.0,
                crate::procfs::SMALL_HEAP_ENV.1,
            )
            .arg("--socket")
            .arg(&self.socket)
            .arg("--listen")
            .arg(listen)
            .arg("--log")
            .arg(log)
            .arg("--idle-timeout-ms")
            .arg(tuning.limits.idle_timeout_ms.to_string())
            .arg("--header-timeout-ms")
            .arg(tuning.limits.header_timeout_ms.to_string())
            .arg("--max-connections")
            .arg(tuning.limits.max_connections.to_string())
            .args(tuning.http.then_some("--http"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env(marks::ENV_PROJECT, project)
            .env(marks::ENV_LINEAGE, lineage)
            .env(marks::ENV_SERVICE, &self.service)
            .env(marks::ENV_PORT, self.port.to_string())
            .env(marks::ENV_SOCKET, &self.socket);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| start_failed(e.to_string()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.status().await.is_ok() {
                // Collect its exit status whenever it ends, so that no zombie
                // of ours is left while this run lasts.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(true);
            }
            if let Ok(Some(_)) = child.try_wait() {
                let text = std::fs::read(log).unwrap_or_default();
                let tail = String::from_utf8_lossy(&text[(log_len as usize).min(text.len())..])
                    .lines()
                    .last()
                    .map(|l| l.split_once("switch: ").map_or(l, |(_, m)| m).to_owned())
                    .unwrap_or_else(|| "it exited".into());
                return Err(start_failed(tail));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(start_failed("it did not answer in time".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no connection to `old` is open any more, or `drain` has passed.
    pub(crate) async fn drained(&self, old: &[SocketAddr], drain: Duration) {
        let deadline = Instant::now() + drain;
        loop {
            let open = match self.status().await {
                Ok(s) => old.iter().any(|a| s.active.get(a).is_some_and(|n| *n > 0)),
                Err(_) => false,
            };
            if !open || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn alive(pid: u32) -> bool {
    crate::procfs::stat(pid).is_some_and(|s| !s.is_dead())
}

/// A running switch found by its marks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub client: SwitchClient,
}

/// The switches of this project and lineage that run, found by the marks
/// in their environment.
pub fn find(project: &str, lineage: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for pid in crate::procfs::pids() {
        let Some(env) = crate::procfs::environ(pid, "DEPLOY_CODE_SWITCH_") else {
            continue;
        };
        if env.get(marks::ENV_PROJECT).map(String::as_str) != Some(project)
            || env.get(marks::ENV_LINEAGE).map(String::as_str) != Some(lineage)
            || !alive(pid)
        {
            continue;
        }
        let (Some(service), Some(port), Some(socket)) = (
            env.get(marks::ENV_SERVICE),
            env.get(marks::ENV_PORT).and_then(|p| p.parse().ok()),
            env.get(marks::ENV_SOCKET),
        ) else {
            continue;
        };
        out.push(Found {
            pid,
            client: SwitchClient {
                socket: PathBuf::from(socket),
                service: service.clone(),
                port,
            },
        });
    }
    out.sort_by_key(|f| (f.client.service.clone(), f.client.port));
    out
}
