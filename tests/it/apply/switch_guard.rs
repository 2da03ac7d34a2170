//! A traffic switch under a hostile client, from the client's side: a real
//! BlueGreen `apply` run with a soft open-file limit of 1024 (the switch
//! inherits it), then one client holding idle connections, dripping request
//! heads (slowloris) or opening more connections than the switch's cap,
//! while fresh requests must still be answered and the next `apply` work.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::rollout::{Cleanup, site_dir};
use super::verdict::{Site, get, serves, wait_until};

/// The soft and hard open-file limits `apply` (and so the switch) starts with.
const SOFT: u64 = 1024;
const HARD: u64 = 4096;

/// Raises this test process's own soft open-file limit to its hard limit:
/// it holds well over a thousand client sockets.
fn raise_own_open_files() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
    }
    assert!(
        r.rlim_max >= HARD,
        "these tests need a hard open-file limit of at least {HARD}, not {}",
        r.rlim_max
    );
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        unsafe {
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        }
    }
}

/// `apply` of `web` serving `dir`, started with the soft limit of 1024.
fn apply_limited(site: &Site, dir: &Path) -> (i32, String) {
    let mut c = site.cmd();
    c.args(["apply", "--auto-approve"]).env("SITE", dir);
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: SOFT,
                rlim_max: HARD,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A BlueGreen site whose `web` serves a directory over HTTP on a free
/// port behind its switch; `switch` is the `deployment.switch` section.
fn guarded_site(test: &str, switch: &str) -> (Site, u16) {
    let site = Site::new(test);
    let port = super::common::free_port();
    let mut deployment = "deployment:\n  strategy: BlueGreen\n".to_owned();
    if !switch.is_empty() {
        deployment.push_str(&format!("  switch: {switch}\n"));
    }
    let header = site.header().replace("deployment:\n", &deployment);
    site.write(&format!(
        r#"{header}  web:
    command: python3
    args: ["-c", "import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    ports: [{{container_port: {port}, host_port: {port}}}]
    health_check: {{endpoint: /}}
"#
    ));
    (site, port)
}

/// The switch of `web` as `status --format json` shows it.
fn switch_view(site: &Site) -> serde_json::Value {
    let (code, out) = site.run(&["status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    doc["services"]
        .as_array()
        .and_then(|s| s.iter().find(|v| v["service"] == "web"))
        .map(|v| v["switches"][0].clone())
        .unwrap_or_else(|| panic!("no switch of web: {out}"))
}

/// The soft and hard "Max open files" of a process.
fn open_files_limits(pid: u64) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// Opens `n` connections to `port` that send nothing.
fn idle_connections(port: u16, n: usize) -> Vec<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    (0..n)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect()
}

/// `count` fresh requests, one after another: those that were not answered
/// `200` with `version`, as (status, body) or `None`.
fn fresh_requests(port: u16, count: usize, version: &str) -> Vec<Option<(u16, String)>> {
    (0..count)
        .map(|_| get(port))
        .filter(|r| !matches!(r, Some((200, body)) if body == version))
        .collect()
}

/// 1,500 idle connections from one client leave the switch (its soft limit
/// raised from 1024 to the hard limit) answering every fresh request, and
/// the next `apply` works while they are held.
#[test]
fn idle_connections_from_one_client_do_not_lock_others_out() {
    raise_own_open_files();
    let (site, port) = guarded_site("switch-idle", "");
    let _cleanup = Cleanup(&site);
    let v1 = site_dir(&site, "v1");
    let (code, out) = apply_limited(&site, &v1);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("v1"));
    let pid = switch_view(&site)["pid"].as_u64().unwrap();
    assert_eq!(open_files_limits(pid), (HARD, HARD));
    let log = switch_log(&site, port);
    assert!(
        log.contains(&format!("open-file limit raised from {SOFT} to {HARD}")),
        "{log}"
    );

    let held = idle_connections(port, 1500);
    assert!(
        wait_until(Duration::from_secs(30), || {
            switch_view(&site)["open"].as_u64() >= Some(1500)
        }),
        "the switch holds the idle connections: {}",
        switch_view(&site)
    );
    let unanswered = fresh_requests(port, 50, "v1");
    assert!(unanswered.is_empty(), "{unanswered:?}");
    let view = switch_view(&site);
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(view["failed"], 0, "{view}");

    let v2 = site_dir(&site, "v2");
    let (code, out) = apply_limited(&site, &v2);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("v2"));
    drop(held);
}

/// 1,000 clients dripping their request heads a byte a second, for longer
/// than the switch's header timeout: they are closed (and reconnect), fresh
/// requests are all answered meanwhile, and the next `apply` works.
#[test]
fn slowloris_clients_are_closed_after_the_header_timeout() {
    raise_own_open_files();
    let (site, port) = guarded_site("switch-slowloris", "{header_timeout_seconds: 2}");
    let _cleanup = Cleanup(&site);
    let v1 = site_dir(&site, "v1");
    let (code, out) = apply_limited(&site, &v1);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("v1"));

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let start = move |i: usize| -> TcpStream {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("slowloris {i}: {e}"));
        s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n").unwrap();
        s
    };
    let attack = std::thread::spawn(move || {
        let mut conns: Vec<TcpStream> = (0..1000).map(start).collect();
        let mut reopened = 0u64;
        let end = Instant::now() + Duration::from_secs(7);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_secs(1));
            for (i, c) in conns.iter_mut().enumerate() {
                if c.write_all(b"X").is_err() {
                    *c = start(i);
                    reopened += 1;
                }
            }
        }
        reopened
    });
    // Fresh requests while the attack lasts.
    let mut unanswered = Vec::new();
    let mut asked = 0;
    while !attack.is_finished() && asked < 200 {
        unanswered.extend(fresh_requests(port, 1, "v1"));
        asked += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let reopened = attack.join().unwrap();
    assert!(unanswered.is_empty(), "{unanswered:?} of {asked}");
    assert!(asked > 0);
    assert!(reopened > 0, "the switch closed no slowloris connection");
    let view = switch_view(&site);
    assert!(view["timed_out"].as_u64() >= Some(1000), "{view}");
    assert_eq!(view["failed"], 0, "{view}");

    let v2 = site_dir(&site, "v2");
    let (code, out) = apply_limited(&site, &v2);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("v2"));
}

/// Beyond `max_connections` the switch answers `503` at once, counts the
/// shed connection, shows itself degraded in `status` and in `metrics`, and
/// serves again once the held connections close.
#[test]
fn connections_beyond_the_cap_are_shed_with_503_and_shown() {
    raise_own_open_files();
    let (site, port) = guarded_site("switch-cap", "{max_connections: 50}");
    let _cleanup = Cleanup(&site);
    let v1 = site_dir(&site, "v1");
    let (code, out) = apply_limited(&site, &v1);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("v1"));

    let held = idle_connections(port, 50);
    assert!(wait_until(Duration::from_secs(10), || {
        switch_view(&site)["open"].as_u64() == Some(50)
    }));
    // Shed: answered 503 and closed, without waiting for an instance.
    for _ in 0..3 {
        let shed = get(port);
        assert!(matches!(&shed, Some((503, _))), "{shed:?}");
    }
    let view = switch_view(&site);
    assert_eq!(view["state"], "degraded", "{view}");
    assert_eq!(view["shed"], 3, "{view}");
    assert_eq!(view["max_connections"], 50, "{view}");
    let (_, human) = site.run(&["status"]);
    assert!(human.contains("degraded"), "{human}");
    assert!(
        human.contains("3 shed at its cap of 50 connections"),
        "{human}"
    );
    // Logged once for the three.
    let log = switch_log(&site, port);
    assert_eq!(log.matches("shedding connections").count(), 1, "{log}");
    let (code, metrics) = site.run_with(&["metrics"], &[("SITE", v1.to_str().unwrap())]);
    assert_eq!(code, 0, "{metrics}");
    let labels = format!("service=\"web\",port=\"{port}\"");
    assert!(
        metrics.contains(&format!(
            "deploy_code_switch_connections_total{{project=\"{}\",{labels},outcome=\"shed\"}} 3",
            site.name
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "deploy_code_switch_degraded{{project=\"{}\",{labels}}} 1",
            site.name
        )),
        "{metrics}"
    );

    drop(held);
    assert!(wait_until(Duration::from_secs(10), || {
        switch_view(&site)["open"].as_u64() == Some(0)
    }));
    assert_eq!(serves(port).as_deref(), Some("v1"));
    let v2 = site_dir(&site, "v2");
    let (code, out) = apply_limited(&site, &v2);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("v2"));
}

/// `validate` refuses `deployment.switch` out of its ranges, under a
/// strategy without switches, and where no service runs behind one.
#[test]
fn switch_settings_out_of_range_or_without_effect_are_refused() {
    let site = Site::new("switch-refuse");
    let switched = "  web:\n    command: python3\n    args: [\"-m\", \"http.server\"]\n    ports: [{container_port: 8080, host_port: 18397}]\n";
    let portless = "  worker:\n    command: python3\n    args: [\"-m\", \"http.server\"]\n";
    for (deployment, services, says) in [
        (
            "  strategy: BlueGreen\n  switch: {max_connections: 0}\n",
            switched,
            "max_connections",
        ),
        (
            "  strategy: BlueGreen\n  switch: {idle_timeout_seconds: 86401}\n",
            switched,
            "idle_timeout_seconds",
        ),
        (
            "  strategy: Canary\n  switch: {header_timeout_seconds: 0}\n",
            switched,
            "header_timeout_seconds",
        ),
        (
            "  strategy: BlueGreen\n  switch: {max_connection: 10}\n",
            switched,
            "max_connection",
        ),
        (
            "  switch: {max_connections: 10}\n",
            switched,
            "`deployment.switch` has no effect without a traffic switch",
        ),
        (
            "  strategy: BlueGreen\n  switch: {max_connections: 10}\n",
            portless,
            "no service runs behind a traffic switch",
        ),
    ] {
        let header = site
            .header()
            .replace("deployment:\n", &format!("deployment:\n{deployment}"));
        site.write(&format!("{header}{services}"));
        let (code, out) = site.run(&["validate"]);
        assert_ne!(code, 0, "{deployment}: {out}");
        assert!(out.contains(says), "{deployment}: {out}");
    }
    let header = site.header().replace(
        "deployment:\n",
        "deployment:\n  strategy: RollingUpdate\n  switch: {idle_timeout_seconds: 300, header_timeout_seconds: 10, max_connections: 20000}\n",
    );
    site.write(&format!("{header}{switched}"));
    let (code, out) = site.run(&["validate"]);
    assert_eq!(code, 0, "{out}");
}

/// The switch's log (`<log_dir>/web-switch-<port>.log`, under the site).
fn switch_log(site: &Site, port: u16) -> String {
    let name = format!("web-switch-{port}.log");
    let mut dirs = vec![site.dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == name.as_str()) {
                return std::fs::read_to_string(path).unwrap();
            }
        }
    }
    panic!("no {name} under {}", site.dir.path().display())
}
