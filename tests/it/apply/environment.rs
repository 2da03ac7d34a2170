//! What of the operator's environment reaches what `deploy-code apply`
//! starts, read where an attacker on the host would read it:
//! `/proc/<pid>/environ` of the service, its monitor (and the child it
//! starts again), its redacting log writer and its traffic switch. Only the
//! service's `env`, the marks, its ports, the base set and what
//! `inherit_env` names get there.

use std::path::Path;
use std::time::Duration;

use super::verdict::{Site, get, wait_until};

/// The raw `/proc/<pid>/environ` of a process (empty once it is gone).
fn environ(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
        .into_owned()
}

/// The value of `name` in the environment of `pid`.
fn var(pid: u32, name: &str) -> Option<String> {
    environ(pid)
        .split('\0')
        .find_map(|e| e.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

/// The live children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    deploy_code::procfs::pids()
        .into_iter()
        .filter(|p| deploy_code::procfs::stat(*p).is_some_and(|s| s.ppid == pid && s.state != 'Z'))
        .collect()
}

/// Processes whose command line names a file under `dir` and holds `arg`
/// (the deploy-code helpers of a site: `__switch`, `__log-writer`).
fn helpers(dir: &Path, arg: &str) -> Vec<u32> {
    let dir = dir.to_string_lossy().into_owned();
    deploy_code::procfs::pids()
        .into_iter()
        .filter(|pid| {
            let line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let line = String::from_utf8_lossy(&line);
            line.split('\0').any(|a| a == arg) && line.contains(dir.as_str())
        })
        .collect()
}

/// Kills what a site's helpers left (by the pids found for it) when the
/// test ends, after `destroy`, which stops them itself.
struct Helpers<'a>(&'a Site);

impl Drop for Helpers<'_> {
    fn drop(&mut self) {
        self.0.teardown();
        let dir = self.0.dir.path();
        for pid in helpers(dir, "__switch")
            .into_iter()
            .chain(helpers(dir, "__log-writer"))
        {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// `plain`: a process with a declared `env` and a secret (so a log writer
/// redacts its output); `web`: an HTTP server under a monitor
/// (`restart: always`) behind the traffic switch of a BlueGreen rollout.
fn config(site: &Site, port: u16, inherit: &str) -> String {
    format!(
        r#"version: "1.0.0"
project: {project}
deployment: {{strategy: BlueGreen, timeout_seconds: 60, stop_grace_seconds: 2}}
services:
  plain:
    command: /bin/busybox
    args: [sleep, "300"]
    env: {{OWN: declared, TOKEN: "{{{{ secret('APP_TOKEN') }}}}"}}
{inherit}  web:
    command: python3
    args: ["-c", "import os, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), h.SimpleHTTPRequestHandler).serve_forever()"]
    ports: [{{container_port: 8080, host_port: {port}}}]
    restart: always
    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2}}
"#,
        project = site.name
    )
}

#[test]
fn the_operators_secrets_reach_no_service_monitor_writer_or_switch() {
    let site = Site::new("env-clean");
    let _helpers = Helpers(&site);
    let port = crate::support::free_port();
    let aws = format!("aws-canary-{}-9d1e", std::process::id());
    let jwt = format!("jwt-canary-{}-4b7c", std::process::id());
    let token = format!("app-token-{}-21af", std::process::id());
    let operator = [
        ("AWS_SECRET_ACCESS_KEY", aws.as_str()),
        ("JWT_SECRET", jwt.as_str()),
        ("APP_TOKEN", token.as_str()),
    ];
    site.write(&config(&site, port, ""));
    let (code, out) = site.run_with(&["apply", "--auto-approve"], &operator);
    assert_eq!(code, 0, "{out}");
    assert!(get(port).is_some(), "the switch serves");

    let recorded = site.recorded();
    let pid_of = |service: &str| {
        recorded
            .iter()
            .find(|r| r.0 == service)
            .map(|r| r.1)
            .unwrap_or_else(|| panic!("`{service}` is not recorded: {recorded:?}"))
    };
    let plain = pid_of("plain");
    let monitor = pid_of("web");
    let child = children(monitor);
    assert_eq!(child.len(), 1, "the monitor runs one child: {child:?}");
    let switches = helpers(site.dir.path(), "__switch");
    assert_eq!(switches.len(), 1, "one switch: {switches:?}");
    let writers = helpers(site.dir.path(), "__log-writer");
    assert!(!writers.is_empty(), "`plain` has a log writer");

    let clean = |what: &str, pid: u32| {
        let env = environ(pid);
        assert!(!env.is_empty(), "{what} (pid {pid}) is readable");
        for (name, value) in [("AWS_SECRET_ACCESS_KEY", &aws), ("JWT_SECRET", &jwt)] {
            assert!(
                !env.contains(value.as_str()) && var(pid, name).is_none(),
                "{what} (pid {pid}) has the operator's {name}: {env:?}"
            );
        }
        // A declared secret reaches its service as the name it declares, never
        // as the operator's variable that held it.
        assert!(
            var(pid, "APP_TOKEN").is_none(),
            "{what} (pid {pid}): {env:?}"
        );
    };
    clean("the plain service", plain);
    clean("the monitor", monitor);
    clean("the monitored service", child[0]);
    clean("the switch", switches[0]);
    for w in &writers {
        clean("the log writer", *w);
    }

    // What a service is given: its `env`, the base set, its port and marks.
    assert_eq!(var(plain, "OWN").as_deref(), Some("declared"));
    assert_eq!(var(plain, "TOKEN").as_deref(), Some(token.as_str()));
    assert!(var(plain, "PATH").is_some(), "the base set: PATH");
    assert_eq!(var(plain, "DEPLOY_CODE_SERVICE").as_deref(), Some("plain"));
    assert!(
        var(child[0], "PORT").is_some(),
        "the monitored service's port"
    );
    assert!(var(child[0], "PATH").is_some(), "the base set: PATH");

    // The child the monitor starts again is given what the first one was.
    unsafe {
        libc::kill(child[0] as i32, libc::SIGKILL);
    }
    let mut again = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            again = children(monitor);
            again.len() == 1 && again[0] != child[0] && var(again[0], "PORT").is_some()
        }),
        "the monitor restarted its child: {again:?}"
    );
    clean("the restarted service", again[0]);
    assert!(var(again[0], "PATH").is_some(), "the base set: PATH");

    // `inherit_env` passes what it names, and `plan` shows the names only.
    site.write(&config(&site, port, "    inherit_env: [\"AWS_*\"]\n"));
    let (code, plan) = site.run_with(&["plan", "--detailed-exitcode"], &operator);
    assert_eq!(code, 2, "a new list is a change: {plan}");
    assert!(
        plan.contains("AWS_*"),
        "the plan names what is inherited: {plan}"
    );
    for value in [&aws, &jwt, &token] {
        assert!(
            !plan.contains(value.as_str()),
            "the plan shows a value: {plan}"
        );
    }
    let (code, out) = site.run_with(&["apply", "--auto-approve"], &operator);
    assert_eq!(code, 0, "{out}");
    let plain = site
        .recorded()
        .iter()
        .find(|r| r.0 == "plain")
        .map(|r| r.1)
        .expect("`plain` is recorded");
    assert_eq!(
        var(plain, "AWS_SECRET_ACCESS_KEY").as_deref(),
        Some(aws.as_str()),
        "inherited as asked"
    );
    assert!(var(plain, "JWT_SECRET").is_none(), "only what is named");
    let switch = helpers(site.dir.path(), "__switch");
    assert_eq!(switch.len(), 1, "{switch:?}");
    clean("the switch", switch[0]);
}
