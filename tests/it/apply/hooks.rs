//! `hooks:` through the real binary: a program gets the run's summary on
//! stdin, a real local HTTP receiver gets webhooks (retried after a 500), a
//! failing `pre_apply` stops the run before any change, and secrets never
//! reach a hook's payload or the output.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::verdict::{Fault, ProbeKind, Site, wait_until};

/// A webhook receiver on a free loopback port: records every POST body and
/// answers with the next scripted status (200 once the script runs out).
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let mut script: std::collections::VecDeque<u16> = script.iter().copied().collect();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let path = first.split(' ').nth(1).unwrap_or("").to_owned();
                seen.lock()
                    .unwrap()
                    .push((path, String::from_utf8_lossy(&body).into_owned()));
                let status = script.pop_front().unwrap_or(200);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, bodies }
    }

    fn bodies(&self) -> Vec<(String, String)> {
        self.bodies.lock().unwrap().clone()
    }
}

#[test]
fn hooks_get_the_summary_and_a_webhook_is_retried() {
    let site = Site::new("hooks-summary");
    let port = super::common::free_port();
    let receiver = Receiver::start(&[500]);
    let pre = site.dir.path().join("pre.json");
    site.write(&format!(
        "{}{}hooks:\n  pre_apply:\n    - command: [\"/bin/busybox\", \"tee\", \"{}\"]\n  post_apply:\n    - url: http://127.0.0.1:{}/done\n      timeout_seconds: 5\n      retries: 2\n",
        site.header(),
        site.web(ProbeKind::Path, port, 0, "v1", Fault::None),
        pre.display(),
        receiver.port
    ));
    let (code, out) = site.apply();
    assert_eq!(code, 0, "{out}");
    let pre: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pre).unwrap()).unwrap();
    assert_eq!(pre["event"], "pre_apply");
    assert_eq!(pre["changes"][0]["service"], "web");
    assert_eq!(pre["changes"][0]["action"], "create");
    assert!(pre["revision"].is_null());
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 2, "a 500, then the retry: {bodies:?}");
    let post: serde_json::Value = serde_json::from_str(&bodies[1].1).unwrap();
    assert_eq!(bodies[1].0, "/done");
    assert_eq!(post["event"], "post_apply");
    assert_eq!(post["outcome"], "succeeded");
    assert_eq!(post["revision"], 1);
    assert!(out.contains("hook post_apply"), "{out}");
    site.teardown();
}

#[test]
fn a_failing_pre_apply_hook_stops_the_run_before_any_change() {
    let site = Site::new("hooks-pre-fails");
    let port = super::common::free_port();
    site.write(&format!(
        "{}{}hooks:\n  pre_apply:\n    - command: [\"/bin/busybox\", \"sh\", \"-c\", \"echo change freeze >&2; exit 7\"]\n",
        site.header(),
        site.web(ProbeKind::Path, port, 0, "v1", Fault::None),
    ));
    let (code, out) = site.apply();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pre_apply"), "{out}");
    assert!(out.contains("exited 7: change freeze"), "{out}");
    assert!(site.marked().is_empty(), "nothing started");
    let (_, history) = site.run(&["--format", "json", "state", "history"]);
    let doc: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(doc["deployments"].as_array().unwrap().len(), 0, "{history}");
    assert_eq!(site.plan_code(), 2, "the change is still to be made");
}

#[test]
fn a_failed_run_tells_on_failure_and_on_rollback_without_its_secrets() {
    let site = Site::new("hooks-failure");
    let receiver = Receiver::start(&[]);
    let secret = "hook-canary-7f3a9c";
    site.write(&format!(
        "{}  broken:\n    command: /bin/busybox\n    args: [\"sh\", \"-c\", \"echo token is $TOKEN; exit 3\"]\n    env: {{TOKEN: \"{{{{ secret('HOOK_TOKEN') }}}}\"}}\nhooks:\n  on_failure:\n    - url: \"http://127.0.0.1:{port}/fail?key={{{{ secret('HOOK_TOKEN') }}}}\"\n  on_rollback:\n    - url: http://127.0.0.1:{port}/rollback\n",
        site.header(),
        port = receiver.port
    ));
    let (code, out) = site.run_with(&["apply", "--auto-approve"], &[("HOOK_TOKEN", secret)]);
    assert_eq!(code, 4, "{out}");
    assert!(
        wait_until(Duration::from_secs(10), || receiver.bodies().len() == 2),
        "{:?}",
        receiver.bodies()
    );
    let bodies = receiver.bodies();
    assert_eq!(
        bodies[0].0,
        format!("/fail?key={secret}"),
        "the webhook got its real URL"
    );
    let fail: serde_json::Value = serde_json::from_str(&bodies[0].1).unwrap();
    assert_eq!(fail["event"], "on_failure");
    assert_eq!(fail["outcome"], "rolled_back");
    assert_eq!(fail["failures"][0]["service"], "broken");
    assert_eq!(bodies[1].0, "/rollback");
    for (_, body) in &bodies {
        assert!(!body.contains(secret), "a payload holds the secret: {body}");
    }
    assert!(!out.contains(secret), "the output holds the secret: {out}");
    assert!(out.contains("hook on_failure"), "{out}");
}

#[test]
fn a_rollback_command_tells_on_rollback() {
    let site = Site::new("hooks-rollback");
    let port = super::common::free_port();
    let told = site.dir.path().join("rollback.json");
    let write = |version: &str| {
        site.write(&format!(
            "{}{}hooks:\n  on_rollback:\n    - command: [\"/bin/busybox\", \"tee\", \"{}\"]\n",
            site.header(),
            site.web(ProbeKind::Path, port, 0, version, Fault::None),
            told.display()
        ))
    };
    write("v1");
    site.apply_ok();
    write("v2");
    site.apply_ok();
    assert!(!told.exists(), "a successful apply is not a rollback");
    let (code, out) = site.run(&["rollback", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&told).unwrap()).unwrap();
    assert_eq!(doc["event"], "on_rollback");
    assert_eq!(doc["outcome"], "succeeded");
    assert_eq!(doc["revision"], 3);
    site.teardown();
}

/// A loopback port that accepts every connection and never answers: a
/// webhook that hangs. Counts what it accepted; stops on drop.
struct Silent {
    port: u16,
    accepted: Arc<Mutex<Vec<std::net::TcpStream>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (held, stopped) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.lock().unwrap().push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Silent {
            port,
            accepted,
            stop,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A `deploy-code` run in the background, killed by its pid if a test ends
/// while it still runs.
struct Background(Option<std::process::Child>);

impl Background {
    fn start(site: &Site, args: &[&str]) -> Background {
        let child = site
            .cmd()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Background(Some(child))
    }

    fn signal(&self, sig: i32) {
        let pid = self.0.as_ref().unwrap().id();
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }

    /// Its exit code and output once it has exited within `limit` (a
    /// bound, not a timing: a run that ignores the signal never ends),
    /// else `None` (it is then killed).
    fn exited_within(&mut self, limit: Duration) -> Option<(Option<i32>, String)> {
        let child = self.0.as_mut().unwrap();
        if !wait_until(limit, || matches!(child.try_wait(), Ok(Some(_)))) {
            return None;
        }
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        Some((
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A webhook that accepts and never answers, with retries and a long
/// timeout, held `apply` and `destroy` (and their lock) past SIGTERM and
/// SIGINT: each signal now stops the hook at once, the run's outcome
/// stands, and the next command takes the lock.
#[test]
fn a_signal_stops_a_webhook_that_never_answers_and_frees_the_lock() {
    let site = Site::new("hooks-hang");
    let port = super::common::free_port();
    let silent = Silent::start();
    let write = |hooks: bool| {
        site.write(&format!(
            "{}{}{}",
            site.header(),
            site.web(ProbeKind::Path, port, 0, "v1", Fault::None),
            if hooks {
                format!(
                    "hooks:\n  post_apply:\n    - url: http://127.0.0.1:{}/\n      timeout_seconds: 250\n      retries: 1\n",
                    silent.port
                )
            } else {
                String::new()
            }
        ))
    };
    write(true);
    for (args, sig, seen) in [
        (&["apply", "--auto-approve"][..], libc::SIGTERM, 1),
        (&["destroy", "--auto-approve"][..], libc::SIGINT, 2),
    ] {
        let mut run = Background::start(&site, args);
        assert!(
            wait_until(Duration::from_secs(60), || silent.accepted() >= seen),
            "`{}` never called its hook",
            args[0]
        );
        run.signal(sig);
        let (code, out) = run
            .exited_within(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("`{}` went on after the signal", args[0]));
        // The run itself had succeeded before its hook: that stands.
        assert_eq!(code, Some(0), "`{}`: {out}", args[0]);
        assert!(out.contains("interrupted"), "`{}`: {out}", args[0]);
        if args[0] == "apply" {
            assert_eq!(site.marked().len(), 1, "the service runs");
            site.assert_consistent("after the interrupted hook");
        } else {
            assert!(site.marked().is_empty(), "destroyed");
        }
    }
    // The lock was let go: the next command takes it at once.
    write(false);
    let (code, out) = site.apply();
    assert_eq!(code, 0, "{out}");
    site.teardown();
}

/// A `pre_apply` program that sleeps is stopped by SIGTERM with what it
/// started (its process group): the run exits as an interrupted run does
/// (4, E008), before any change, and the lock is free.
#[test]
fn a_signal_stops_a_pre_apply_program_before_any_change() {
    let site = Site::new("hooks-pre-hang");
    let port = super::common::free_port();
    let pidfile = site.dir.path().join("sleeper.pid");
    site.write(&format!(
        "{}{}hooks:\n  pre_apply:\n    - command: [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 300 & echo $! > {}; wait\"]\n      timeout_seconds: 300\n",
        site.header(),
        site.web(ProbeKind::Path, port, 0, "v1", Fault::None),
        pidfile.display()
    ));
    let mut run = Background::start(&site, &["apply", "--auto-approve"]);
    let sleeper = || -> Option<u32> {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    assert!(
        wait_until(Duration::from_secs(30), || sleeper().is_some()),
        "the hook never started"
    );
    let sleeper = sleeper().unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            if deploy_code::procfs::stat(self.0).is_some_and(|s| s.state != 'Z') {
                unsafe {
                    libc::kill(self.0 as i32, libc::SIGKILL);
                }
            }
        }
    }
    let _sleeper = Kill(sleeper);
    run.signal(libc::SIGTERM);
    let (code, out) = run
        .exited_within(Duration::from_secs(30))
        .expect("`apply` went on after SIGTERM");
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("E008") && out.contains("pre_apply"), "{out}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            deploy_code::procfs::stat(sleeper).is_none_or(|s| s.state == 'Z')
        }),
        "what the hook started was left running"
    );
    assert!(site.marked().is_empty(), "nothing started");
    // The lock was let go: the next command takes it at once.
    site.write(&format!(
        "{}{}",
        site.header(),
        site.web(ProbeKind::Path, port, 0, "v1", Fault::None),
    ));
    let (code, out) = site.apply();
    assert_eq!(code, 0, "{out}");
    site.teardown();
}
