//! The verdict of `apply`, tried from outside as users would: configurations
//! as users write them, a test service whose every version serves a body
//! naming it, faults at deterministic points, and a check of what really
//! serves afterwards, not only of what the tool reports.
//!
//! - regression tests, one per finding;
//! - the conformance matrix: probe kind x action x fault (processes here,
//!   containers in `tests/it/docker`);
//! - the kill campaign: SIGKILL (and interrupts) at named failpoints, then
//!   recovery after the leftovers have bound their ports.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deploy_code::backends::process::ProcessBackend;
use deploy_code::backends::{Backend, Liveness};

use super::common::*;

/// The test service (see its header for the faults).
pub fn server_script() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/versioned_server.py"
    )
    .to_owned()
}

/// `GET /` on the loopback, blocking: the status code and the body.
pub fn get(port: u16) -> Option<(u16, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())?;
    Some((status, body))
}

/// The body `/` serves on `port`, when it answers 200.
pub fn serves(port: u16) -> Option<String> {
    get(port).filter(|(s, _)| *s == 200).map(|(_, b)| b)
}

/// How a service's health is checked, as users write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// `endpoint: /` with `ports: [{container_port: P}]`.
    Path,
    /// `endpoint: http://127.0.0.1:P/` with `host_port: P` declared.
    UrlHostPort,
    /// `endpoint: http://127.0.0.1:P/` with only `container_port: P`.
    UrlContainerPort,
    /// `tcp: P`.
    Tcp,
    /// `command: [python3, -c, <GET / must answer 200>]`.
    Command,
    /// No `health_check`.
    None,
    /// `endpoint: http://127.0.0.1:P/` and no `ports:` at all.
    UrlUndeclared,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 7] = [
        ProbeKind::Path,
        ProbeKind::UrlHostPort,
        ProbeKind::UrlContainerPort,
        ProbeKind::Tcp,
        ProbeKind::Command,
        ProbeKind::None,
        ProbeKind::UrlUndeclared,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProbeKind::Path => "path endpoint",
            ProbeKind::UrlHostPort => "URL, host port",
            ProbeKind::UrlContainerPort => "URL, container port",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Command => "command",
            ProbeKind::None => "none",
            ProbeKind::UrlUndeclared => "URL, no ports",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    ExitNow,
    ExitLater,
    NeverListen,
    OtherPort,
    Http500,
    Hang,
    Foreign,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::None,
        Fault::ExitNow,
        Fault::ExitLater,
        Fault::NeverListen,
        Fault::OtherPort,
        Fault::Http500,
        Fault::Hang,
        Fault::Foreign,
    ];

    pub fn arg(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::ExitNow => "exit-now",
            Fault::ExitLater => "exit-later",
            Fault::NeverListen => "never-listen",
            Fault::OtherPort => "other-port",
            Fault::Http500 => "http-500",
            Fault::Hang => "hang",
            Fault::Foreign => "foreign",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Create,
    Replace,
}

/// What a case must end in. A fault that no probe of the kind can see is
/// undetectable: the tool reports success, and the case says so.
pub fn expected(probe: ProbeKind, fault: Fault) -> i32 {
    match fault {
        Fault::None => 0,
        // A declared port that another process holds is refused by `plan`.
        Fault::Foreign if probe == ProbeKind::UrlUndeclared => 4,
        Fault::Foreign => 3,
        Fault::ExitNow | Fault::ExitLater => 4,
        Fault::NeverListen | Fault::OtherPort if probe == ProbeKind::None => 0,
        Fault::NeverListen | Fault::OtherPort => 4,
        Fault::Http500 | Fault::Hang if matches!(probe, ProbeKind::None | ProbeKind::Tcp) => 0,
        Fault::Http500 | Fault::Hang => 4,
    }
}

/// One project in a temporary directory: one service `web` (the test server)
/// driven through the `deploy-code` binary.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub name: String,
    foreign: Mutex<Vec<Child>>,
}

impl Site {
    pub fn new(test: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            name: format!("{}-{}", project(test), rand_suffix()),
            foreign: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("deploy-code.yaml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join(".deploy-code/state.db")
    }

    pub fn write(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    /// The header every config of this site starts with.
    pub fn header(&self) -> String {
        format!(
            "version: \"1.0.0\"\nproject: {}\ndeployment:\n  timeout_seconds: 60\n  stop_grace_seconds: 2\n  rollback_timeout_seconds: 30\nservices:\n",
            self.name
        )
    }

    /// `web` as the test server of `version` with `fault`, checked by `probe`.
    pub fn web(
        &self,
        probe: ProbeKind,
        port: u16,
        other: u16,
        version: &str,
        fault: Fault,
    ) -> String {
        let py = python();
        let script = server_script();
        let mut s = format!(
            "  web:\n    command: {py}\n    args: [\"{script}\", \"{port}\", \"{version}\", \"{}\", \"{other}\"]\n",
            fault.arg()
        );
        match probe {
            ProbeKind::UrlUndeclared => {}
            ProbeKind::UrlHostPort => s.push_str(&format!(
                "    ports: [{{container_port: {port}, host_port: {port}}}]\n"
            )),
            _ => s.push_str(&format!("    ports: [{{container_port: {port}}}]\n")),
        }
        let check = match probe {
            ProbeKind::Path => "endpoint: /".to_owned(),
            ProbeKind::UrlHostPort | ProbeKind::UrlContainerPort | ProbeKind::UrlUndeclared => {
                format!("endpoint: http://127.0.0.1:{port}/")
            }
            ProbeKind::Tcp => format!("tcp: {port}"),
            ProbeKind::Command => format!(
                "command: [\"{py}\", \"-c\", \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)\"]"
            ),
            ProbeKind::None => return s,
        };
        // A command probe starts an interpreter, which takes more than a
        // second on a loaded machine.
        let timeout = if probe == ProbeKind::Command { 5 } else { 1 };
        s.push_str(&format!(
            "    health_check: {{{check}, interval_seconds: 1, timeout_seconds: {timeout}, retries: 2, min_healthy_seconds: 1}}\n"
        ));
        s
    }

    /// Writes a configuration of the one service `web` (see [`Site::web`]).
    pub fn write_web(&self, probe: ProbeKind, port: u16, version: &str, fault: Fault) {
        self.write(&format!(
            "{}{}",
            self.header(),
            self.web(probe, port, 0, version, fault)
        ));
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_deploy-code"));
        c.current_dir(self.dir.path())
            .arg("-c")
            .arg(self.config())
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            .env_remove(deploy_code::failpoint::ENV);
        c
    }

    pub fn run(&self, args: &[&str]) -> (i32, String) {
        self.run_with(args, &[])
    }

    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
        let mut c = self.cmd();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let code = out.status.code().unwrap_or(-1);
        (
            code,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn apply(&self) -> (i32, String) {
        self.run(&["apply", "--auto-approve"])
    }

    /// `apply`, which must succeed.
    pub fn apply_ok(&self) {
        let (code, out) = self.apply();
        assert_eq!(code, 0, "{out}");
    }

    /// `plan --detailed-exitcode`: 0 no changes, 2 changes.
    pub fn plan_code(&self) -> i32 {
        self.run(&["plan", "--detailed-exitcode"]).0
    }

    /// The live processes marked as this project's: `(service, pid, spec hash)`.
    pub fn marked(&self) -> Vec<(String, u32, Option<String>)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut v: Vec<_> = rt
            .block_on(ProcessBackend::new().discover(&self.name))
            .unwrap()
            .into_iter()
            .filter(|d| d.liveness == Liveness::Running)
            .map(|d| (d.service.to_string(), pid_of(&d.handle), d.spec_hash))
            .collect();
        v.sort();
        v
    }

    /// What the state records: `(service, pid, spec hash)`.
    pub fn recorded(&self) -> Vec<(String, u32, Option<String>)> {
        if !self.state().exists() {
            return Vec::new();
        }
        let snap = deploy_code::state::load_snapshot(&self.state()).unwrap();
        let mut v = Vec::new();
        for r in snap.services.values() {
            for h in &r.handles {
                v.push((r.name.to_string(), pid_of(h), Some(r.spec_hash.clone())));
            }
        }
        v.sort();
        v
    }

    /// The processes on the host are exactly those the state records, and
    /// every recorded one runs: no orphan, no duplicate, no ghost.
    pub fn assert_consistent(&self, what: &str) {
        let recorded = self.recorded();
        assert_eq!(self.marked(), recorded, "{what}: host and state disagree");
        for (_, pid, _) in &recorded {
            assert!(alive(*pid), "{what}: recorded pid {pid} is not running");
        }
    }

    /// A process that is not deploy-code's holds `port` until the site drops.
    pub fn foreign(&self, port: u16) {
        let child = Command::new(python())
            .args([&server_script(), &port.to_string(), "foreign"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.foreign.lock().unwrap().push(child);
        wait_until(Duration::from_secs(10), || serves(port).is_some());
    }

    /// Removes what the site runs: `destroy`, then whatever carries its marks.
    pub fn teardown(&self) {
        let _ = self.run(&["destroy", "--auto-approve"]);
        for (_, pid, _) in self.marked() {
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for (_, pid, _) in self.marked() {
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let mut foreign = self
            .foreign
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for c in foreign.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `N` free ports, all different.
pub fn distinct_ports<const N: usize>() -> [u16; N] {
    loop {
        let ports: [u16; N] = std::array::from_fn(|_| free_port());
        let set: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        if set.len() == N {
            return ports;
        }
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

// --- regression tests, one per finding ----------------------------------

/// A replaced process that dies is not reported healthy because its
/// predecessor answers on the same address (no `ports:`, the URL names it).
#[test]
fn a_replacement_that_dies_is_not_passed_by_its_predecessor() {
    let site = Site::new("v-dies");
    let port = free_port();
    let py = python();
    let script = server_script();
    let cfg = |version: &str, fault: &str| {
        format!(
            "{}  api:\n    command: {py}\n    args: [\"{script}\", \"{port}\", \"{version}\", \"{fault}\"]\n    health_check: {{endpoint: \"http://127.0.0.1:{port}/\", interval_seconds: 1, timeout_seconds: 1, retries: 2}}\n",
            site.header()
        )
    };
    site.write(&cfg("v1", "none"));
    let (code, out) = site.apply();
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("version=v1"));
    site.write(&cfg("v2", "exit-now"));
    let (_, plan) = site.run(&["plan"]);
    assert!(
        plan.contains(&format!(
            "stop-first, the old instance holds port {port}: the service is down while its new instance starts"
        )),
        "the plan shows the outage before apply: {plan}"
    );
    let (code, out) = site.apply();
    assert_eq!(code, 4, "the dead replacement fails its gate: {out}");
    assert!(out.contains("exited with code 3"), "{out}");
    assert_eq!(
        serves(port).as_deref(),
        Some("version=v1"),
        "v1 serves again"
    );
    site.assert_consistent("after the rollback");
    let (_, status) = site.run(&["status"]);
    assert!(
        status.contains("healthy") && !status.contains("unhealthy"),
        "{status}"
    );
    site.teardown();
}

/// A foreign process answering on the port a service is probed at does not
/// pass its gate: the listening socket must belong to the instance.
#[test]
fn a_probe_answered_by_another_process_does_not_pass() {
    let site = Site::new("v-foreign");
    let port = free_port();
    site.foreign(port);
    site.write_web(ProbeKind::UrlUndeclared, port, "v1", Fault::None);
    let (code, out) = site.apply();
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("held by a process that is not this instance"),
        "{out}"
    );
    assert_eq!(serves(port).as_deref(), Some("version=foreign"));
    assert!(site.marked().is_empty(), "nothing of ours is left");
    site.teardown();
}

/// A service that is alive when probed but exits 300 ms later fails a gate
/// that holds it for `min_healthy_seconds`.
#[test]
fn min_healthy_seconds_catches_a_late_exit() {
    let site = Site::new("v-late");
    let port = free_port();
    site.write_web(ProbeKind::Path, port, "v1", Fault::ExitLater);
    let (code, out) = site.apply();
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("exited with code 3"), "{out}");
    assert!(site.marked().is_empty());
    site.teardown();
}

/// A command that is not on PATH is refused before anything changes: the
/// running service keeps running, exit 1, E003.
#[test]
fn a_missing_command_is_refused_before_anything_stops() {
    let site = Site::new("v-pyhton");
    let port = free_port();
    site.write_web(ProbeKind::Path, port, "v1", Fault::None);
    site.apply_ok();
    let before = site.marked();
    site.write(&format!(
        "{}{}",
        site.header(),
        site.web(ProbeKind::Path, port, 0, "v2", Fault::None)
            .replace(&python(), "pyhton3")
    ));
    let (code, out) = site.apply();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("E003") && out.contains("pyhton3"), "{out}");
    assert!(!out.contains("rollback") && !out.contains("E006"), "{out}");
    assert_eq!(site.marked(), before, "nothing was stopped or started");
    assert_eq!(serves(port).as_deref(), Some("version=v1"));
    site.teardown();
}

/// A working directory that does not exist is refused before any change.
#[test]
fn a_missing_working_directory_is_refused_before_anything_stops() {
    let site = Site::new("v-cwd");
    let port = free_port();
    let web = site.web(ProbeKind::Path, port, 0, "v1", Fault::None);
    site.write(&format!("{}{web}", site.header()));
    site.apply_ok();
    let before = site.marked();
    site.write(&format!(
        "{}{web}    working_dir: no/such/dir\n",
        site.header()
    ));
    let (code, out) = site.apply();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("E005") && out.contains("no/such/dir"), "{out}");
    assert_eq!(site.marked(), before);
    site.teardown();
}

/// `status` and `health` agree when the only instance is dead.
#[test]
fn status_folds_liveness_in() {
    let site = Site::new("v-status");
    let port = free_port();
    site.write_web(ProbeKind::Path, port, "v1", Fault::None);
    site.apply_ok();
    for (_, pid, _) in site.marked() {
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    wait_until(Duration::from_secs(5), || site.marked().is_empty());
    let (_, status) = site.run(&["status"]);
    assert!(status.contains("degraded"), "{status}");
    assert!(status.contains("unhealthy"), "{status}");
    assert!(!status.contains(" healthy"), "{status}");
    let (code, health) = site.run(&["health"]);
    assert_eq!(code, 1, "{health}");
    assert!(health.contains("UNHEALTHY"), "{health}");
    site.teardown();
}

/// Every action writes an audit event with its outcome.
#[test]
fn every_action_is_in_the_audit_trail() {
    let site = Site::new("v-audit");
    let port = free_port();
    site.write_web(ProbeKind::Path, port, "v1", Fault::None);
    site.apply_ok();
    site.write_web(ProbeKind::Path, port, "v2", Fault::ExitNow);
    assert_eq!(site.apply().0, 4);
    let (code, out) = site.run(&["state", "show", "web"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("(none)"), "{out}");
    assert!(out.contains("create") && out.contains("succeeded"), "{out}");
    assert!(out.contains("replace") && out.contains("failed"), "{out}");
    assert!(out.contains("rollback"), "{out}");
    site.teardown();
}

/// A service that forks: its child is part of the instance, stopped with it,
/// and never an orphan of the next plan.
#[test]
fn a_forked_child_is_stopped_with_its_service() {
    let site = Site::new("v-fork");
    let port = free_port();
    let py = python();
    let script = server_script();
    // The shell forks the server and waits for it: the server is a child.
    let cfg = |version: &str| {
        format!(
            "{}  web:\n    command: /bin/sh\n    args: [\"-c\", \"{py} {script} {port} {version} & wait\"]\n    ports: [{{container_port: {port}}}]\n    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2}}\n",
            site.header()
        )
    };
    site.write(&cfg("v1"));
    let (code, out) = site.apply();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        site.marked().len(),
        1,
        "the child is no instance of its own"
    );
    assert_eq!(site.plan_code(), 0, "no orphan in the next plan");
    site.write(&cfg("v2"));
    // The old instance and its child both stop: a child left behind would
    // hold the port, and the new instance could not take it.
    let (code, out) = site.apply();
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("version=v2"));
    site.assert_consistent("after the replace");
    let (code, out) = site.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(3), || serves(port).is_none()),
        "the forked server is gone"
    );
    site.teardown();
}

/// `https://` endpoints work (a self-signed certificate is accepted).
#[test]
fn https_endpoints_are_probed() {
    let site = Site::new("v-https");
    let port = free_port();
    let dir = site.dir.path();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::support::skip(
            std::thread::current().name().unwrap_or("an HTTPS gate"),
            "DEPLOY_CODE_REQUIRE_TOOLS",
            "openssl cannot make a certificate",
        );
        return;
    }
    let py = python();
    let server = format!(
        "import http.server, ssl\\nctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\\nctx.load_cert_chain('cert.pem', 'key.pem')\\ns = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)\\ns.socket = ctx.wrap_socket(s.socket, server_side=True)\\ns.serve_forever()"
    );
    site.write(&format!(
        "{}  tls:\n    command: {py}\n    args: [\"-c\", \"{server}\"]\n    health_check: {{endpoint: \"https://127.0.0.1:{port}/\", interval_seconds: 1, timeout_seconds: 2, retries: 2}}\n",
        site.header()
    ));
    let (code, out) = site.apply();
    assert_eq!(code, 0, "{out}");
    let (code, health) = site.run(&["health"]);
    assert_eq!(code, 0, "{health}");
    site.teardown();
}

// --- the conformance matrix ------------------------------------------------

/// The outcome of one matrix case, or why it did not hold.
pub struct CaseResult {
    pub probe: ProbeKind,
    pub act: Act,
    pub fault: Fault,
    pub exit: i32,
    pub problem: Option<String>,
}

fn run_case(probe: ProbeKind, act: Act, fault: Fault) -> CaseResult {
    let site = Site::new("m");
    let [port, moved, other] = distinct_ports();
    let check = |cond: bool, what: String| if cond { None } else { Some(what) };
    let mut problem = None;
    let mut note = |p: Option<String>| {
        if problem.is_none() {
            problem = p;
        }
    };
    if act == Act::Replace {
        site.write(&format!(
            "{}{}",
            site.header(),
            site.web(probe, port, other, "v1", Fault::None)
        ));
        let (code, out) = site.apply();
        note(check(code == 0, format!("v1 apply exited {code}: {out}")));
    }
    // A foreign process holds the port the new version wants: for a
    // replace that is another port than the old version's.
    let new_port = if fault == Fault::Foreign && act == Act::Replace {
        moved
    } else {
        port
    };
    if fault == Fault::Foreign {
        site.foreign(new_port);
    }
    let before = site.marked();
    let new_version = if act == Act::Create { "v1" } else { "v2" };
    site.write(&format!(
        "{}{}",
        site.header(),
        site.web(probe, new_port, other, new_version, fault)
    ));
    let (exit, out) = site.apply();
    let want = expected(probe, fault);
    note(check(
        exit == want,
        format!("exit {exit}, expected {want}: {out}"),
    ));
    match exit {
        0 => {
            if fault == Fault::None {
                note(check(
                    serves(new_port).as_deref() == Some(&format!("version={new_version}")),
                    format!("the new version does not serve: {:?}", get(new_port)),
                ));
            }
            note(check(
                site.plan_code() == 0,
                "the next plan is not empty".into(),
            ));
        }
        3 => note(check(
            site.marked() == before,
            "a refused plan changed something".into(),
        )),
        _ => {
            if act == Act::Replace {
                note(check(
                    serves(port).as_deref() == Some("version=v1"),
                    format!("the old version does not serve again: {:?}", get(port)),
                ));
            }
            note(check(
                site.plan_code() == 2,
                "the next plan does not show the change again".into(),
            ));
        }
    }
    let recorded = site.recorded();
    let marked = site.marked();
    note(check(
        marked == recorded,
        format!("host {marked:?} and state {recorded:?} disagree"),
    ));
    if act == Act::Create && exit != 0 {
        note(check(
            marked.is_empty(),
            "a failed create left instances".into(),
        ));
    }
    site.teardown();
    note(check(
        site.marked().is_empty(),
        "destroy left instances".into(),
    ));
    CaseResult {
        probe,
        act,
        fault,
        exit,
        problem,
    }
}

/// Runs `cases` on `threads` threads and prints the matrix as a table.
pub fn run_matrix(
    cases: Vec<(ProbeKind, Act, Fault)>,
    threads: usize,
    run: fn(ProbeKind, Act, Fault) -> CaseResult,
) -> Vec<CaseResult> {
    let queue = Mutex::new(cases);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some((p, a, f)) = next else { return };
                    let r = run(p, a, f);
                    results.lock().unwrap().push(r);
                }
            });
        }
    });
    results.into_inner().unwrap()
}

/// The matrix as a Markdown table: a row per probe and action, a column per
/// fault; each cell the exit code, `!` where the case did not hold.
pub fn table(results: &[CaseResult]) -> String {
    let mut rows: BTreeMap<(usize, u8), BTreeMap<usize, String>> = BTreeMap::new();
    for r in results {
        let pi = ProbeKind::ALL.iter().position(|p| *p == r.probe).unwrap();
        let fi = Fault::ALL.iter().position(|f| *f == r.fault).unwrap();
        let undetectable = r.exit == 0 && r.fault != Fault::None;
        let cell = match (&r.problem, undetectable) {
            (Some(_), _) => format!("**{}!**", r.exit),
            (None, true) => format!("{} (unseen)", r.exit),
            (None, false) => r.exit.to_string(),
        };
        rows.entry((pi, r.act as u8)).or_default().insert(fi, cell);
    }
    let mut out = String::from("| probe | action |");
    for f in Fault::ALL {
        out.push_str(&format!(" {} |", f.arg()));
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(Fault::ALL.len()));
    out.push('\n');
    for ((pi, a), cells) in rows {
        out.push_str(&format!(
            "| {} | {} |",
            ProbeKind::ALL[pi].label(),
            if a == Act::Create as u8 {
                "create"
            } else {
                "replace"
            }
        ));
        for fi in 0..Fault::ALL.len() {
            out.push_str(&format!(" {} |", cells.get(&fi).map_or("", String::as_str)));
        }
        out.push('\n');
    }
    out
}

/// Every probe kind x {create, replace} x every fault, on local processes.
/// Each cell must end in its expected exit code with what really serves
/// matching it. Run with `--nocapture` to see the table.
#[test]
fn conformance_matrix_processes() {
    let mut cases = Vec::new();
    for p in ProbeKind::ALL {
        for a in [Act::Create, Act::Replace] {
            for f in Fault::ALL {
                cases.push((p, a, f));
            }
        }
    }
    let results = run_matrix(cases, 4, run_case);
    println!("{}", table(&results));
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.problem
                .as_ref()
                .map(|p| format!("{} / {:?} / {}: {p}", r.probe.label(), r.act, r.fault.arg()))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}

// --- the kill campaign -------------------------------------------------------

/// A scenario of the campaign: the config before (applied first, without a
/// failpoint), the config the killed run applies, and the config the
/// recovery applies.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// Three services a -> b -> c from nothing.
    Create,
    /// v1 -> v2 of all three (same ports: stop-first).
    Replace,
    /// v1 -> v2 where c fails: a rollback runs; recovery applies v1 again.
    Rollback,
}

struct Campaign {
    site: Site,
    ports: [u16; 3],
}

impl Campaign {
    fn new() -> Self {
        let [a, b, c] = distinct_ports();
        Self {
            site: Site::new("k"),
            ports: [a, b, c],
        }
    }

    fn config(&self, version: &str, fail_c: bool) -> String {
        let py = python();
        let script = server_script();
        let mut s = self.site.header();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            let fault = if fail_c && i == 2 { "exit-now" } else { "none" };
            s.push_str(&format!(
                "  {n}:\n    command: {py}\n    args: [\"{script}\", \"{}\", \"{version}\", \"{fault}\"]\n    ports: [{{container_port: {}}}]\n    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2}}\n",
                self.ports[i], self.ports[i]
            ));
            if i > 0 {
                s.push_str(&format!("    dependencies: [{}]\n", ["a", "b", "c"][i - 1]));
            }
        }
        s
    }

    /// Waits until every live instance of the project listens on its port
    /// (leftovers of a killed run have bound their ports).
    fn settle(&self) {
        wait_until(Duration::from_secs(5), || {
            self.site.marked().iter().all(|(service, _, _)| {
                let i = ["a", "b", "c"].iter().position(|n| n == service).unwrap();
                get(self.ports[i]).is_some()
            })
        });
    }
}

/// One kill point: the scenario, the failpoint (with its hit number and
/// signal) and what the recovery must find. `Ok(true)` when the run was
/// killed by a signal (`false`: it ended by itself, after an interrupt or
/// because the point was not reached).
fn kill_case(scenario: Scenario, point: &str) -> Result<bool, String> {
    let c = Campaign::new();
    let site = &c.site;
    let (killed_cfg, final_cfg, final_version) = match scenario {
        Scenario::Create => (c.config("v1", false), c.config("v1", false), "v1"),
        Scenario::Replace => (c.config("v2", false), c.config("v2", false), "v2"),
        Scenario::Rollback => (c.config("v2", true), c.config("v1", false), "v1"),
    };
    if !matches!(scenario, Scenario::Create) {
        site.write(&c.config("v1", false));
        let (code, out) = site.apply();
        if code != 0 {
            return Err(format!("v1 apply exited {code}: {out}"));
        }
    }
    site.write(&killed_cfg);
    let (code, out) = site.run_with(
        &["apply", "--auto-approve"],
        &[(deploy_code::failpoint::ENV, point)],
    );
    let killed = code == -1;
    let _ = out;
    c.settle();
    site.write(&final_cfg);
    let (code, out) = site.apply();
    let result = (|| {
        if code != 0 {
            return Err(format!("stuck: recovery apply exited {code}: {out}"));
        }
        let marked = site.marked();
        let recorded = site.recorded();
        if marked != recorded {
            return Err(format!(
                "orphans or duplicates: host {marked:?}, state {recorded:?}"
            ));
        }
        if recorded.len() != 3 {
            return Err(format!("expected 3 instances, the state has {recorded:?}"));
        }
        if let Some((s, pid, _)) = recorded.iter().find(|(_, pid, _)| !alive(*pid)) {
            return Err(format!(
                "ghost: `{s}` pid {pid} is recorded but not running"
            ));
        }
        let conn = rusqlite_integrity(&site.state());
        if conn != "ok" {
            return Err(format!("integrity_check: {conn}"));
        }
        for (i, port) in c.ports.iter().enumerate() {
            let want = format!("version={final_version}");
            if serves(*port).as_deref() != Some(want.as_str()) {
                return Err(format!(
                    "service {i} does not serve {want}: {:?}",
                    get(*port)
                ));
            }
        }
        if site.plan_code() != 0 {
            return Err("the second plan is not empty".into());
        }
        Ok(killed)
    })();
    site.teardown();
    result
}

fn rusqlite_integrity(path: &std::path::Path) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every kill point of the campaign, in a fixed order.
fn kill_points() -> Vec<(Scenario, String)> {
    let mut out = Vec::new();
    let points: &[(&str, u32)] = &[
        ("after-intent", 6),
        ("after-start", 3),
        ("in-commit", 6),
        ("during-gate", 3),
        ("after-stop", 3),
        ("during-rollback", 3),
    ];
    for scenario in [Scenario::Create, Scenario::Replace, Scenario::Rollback] {
        for (point, hits) in points {
            for n in 1..=*hits {
                for signal in ["kill", "int2", "term"] {
                    out.push((scenario, format!("{point}@{n}:{signal}")));
                }
            }
        }
    }
    out
}

/// A seeded run of kill points (SIGKILL, double SIGINT, SIGTERM at named
/// failpoints), each followed by recovery after the leftovers have bound
/// their ports. `DEPLOY_CODE_CAMPAIGN=all` runs every point (the documented
/// full campaign); the default runs a fixed sample of at least 30.
#[test]
fn kill_campaign() {
    let all = kill_points();
    let chosen: Vec<(Scenario, String)> = if std::env::var("DEPLOY_CODE_CAMPAIGN").as_deref()
        == Ok("all")
    {
        all
    } else {
        // A fixed sample: every SIGKILL point with hits 1 to 3, and the
        // interrupts during the first gate.
        all.into_iter()
            .filter(|(_, p)| {
                let early = ["@1:", "@2:", "@3:"].iter().any(|n| p.contains(n));
                (p.ends_with(":kill") && early) || (p.contains("@1:") && p.contains("during-gate"))
            })
            .collect()
    };
    let total = chosen.len();
    let queue = Mutex::new(chosen);
    let failures = Mutex::new(Vec::new());
    let killed = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some((scenario, point)) = next else {
                        return;
                    };
                    match kill_case(scenario, &point) {
                        Ok(true) => {
                            killed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok(false) => {}
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{scenario:?} {point}: {e}")),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let killed = killed.into_inner();
    println!(
        "kill campaign: {total} points, {killed} runs killed by SIGKILL, {} stuck or inconsistent recoveries, {:.0} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(total >= 30, "the campaign has {total} points");
    assert!(
        killed >= 30,
        "only {killed} runs were killed: the failpoints did not fire"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
