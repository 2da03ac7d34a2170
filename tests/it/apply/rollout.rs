//! Rollouts behind a traffic switch, from the user's side: the configurations
//! as written, a request loop against the published port during `apply`,
//! and what serves afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::verdict::{Site, get, serves, wait_until};

/// The contract's fixed port: tests that use it run one at a time.
static PORT_18301: Mutex<()> = Mutex::new(());

/// The contract's configuration, exactly as written, with `strategy` and
/// (for RollingUpdate) `replicas: 3`.
fn contract(strategy: &str, replicas: Option<u32>) -> String {
    let replicas = replicas
        .map(|n| format!("    replicas: {n}\n"))
        .unwrap_or_default();
    format!(
        r#"version: "1.0.0"
deployment: {{strategy: {strategy}}}
services:
  web:
{replicas}    command: python3
    args: ["-c", "import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    ports: [{{container_port: 8080, host_port: 18301}}]
    health_check: {{endpoint: /}}
"#
    )
}

/// A directory whose `index.html` names `version`.
pub(super) fn site_dir(site: &Site, version: &str) -> PathBuf {
    let dir = site.dir.path().join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), format!("{version}\n")).unwrap();
    dir
}

/// GET / in a loop against `port` until stopped: (answered 200, failed, first failures).
pub struct Loop {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, u64, Vec<String>)>>,
}

impl Loop {
    pub fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut ok, mut failed, mut seen) = (0u64, 0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match get(port) {
                    Some((200, _)) => ok += 1,
                    other => {
                        failed += 1;
                        if seen.len() < 5 {
                            seen.push(format!("{other:?}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed, seen)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Pids whose environment has `var` under `dir`.
fn pids_marked_under(var: &str, dir: &Path) -> Vec<u32> {
    deploy_code::procfs::pids()
        .into_iter()
        .filter(|pid| {
            deploy_code::procfs::environ(*pid, "DEPLOY_CODE_")
                .and_then(|e| e.get(var).cloned())
                .is_some_and(|v| Path::new(&v).starts_with(dir))
        })
        .collect()
}

/// The running switches of a site (found by their marks).
fn switches(site: &Site) -> Vec<u32> {
    pids_marked_under(deploy_code::switch::marks::ENV_SOCKET, site.dir.path())
}

/// Destroys what the site runs, then kills whatever is left of it by pid.
pub(super) struct Cleanup<'a>(pub(super) &'a Site);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["destroy", "--auto-approve"]);
        let dir = self.0.dir.path();
        let mut left = switches(self.0);
        left.extend(pids_marked_under("DEPLOY_CODE_LOG_FILE", dir));
        for pid in left {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn apply_with_site(site: &Site, dir: &Path) -> (i32, String) {
    site.run_with(
        &["apply", "--auto-approve"],
        &[("SITE", dir.to_str().unwrap())],
    )
}

/// Applies `versions` in turn under a request loop against 18301; each
/// update must keep the port answering and serve its version after.
fn contract_case(test: &str, strategy: &str, replicas: Option<u32>) {
    let _port = PORT_18301.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new(test);
    let _cleanup = Cleanup(&site);
    site.write(&contract(strategy, replicas));
    let v1 = site_dir(&site, "v1");
    let (code, out) = apply_with_site(&site, &v1);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(18301).as_deref(), Some("v1"));
    assert_eq!(switches(&site).len(), 1, "one switch holds the port");
    for version in ["v2", "v3"] {
        let dir = site_dir(&site, version);
        // The plan says how the service rolls out, and that it costs no downtime.
        let (_, plan) = site.run_with(&["plan"], &[("SITE", dir.to_str().unwrap())]);
        let how = if replicas.is_some() {
            "rolling update, 3 replicas, at most 1 extra and 0 unavailable at a time"
        } else {
            "blue-green"
        };
        assert!(plan.contains(&format!("rollout: {how}")), "{plan}");
        assert!(
            plan.contains("traffic switch on port 18301") && plan.contains("no downtime"),
            "{plan}"
        );
        assert!(!plan.contains("stop-first"), "{plan}");
        let requests = Loop::start(18301);
        assert!(wait_until(Duration::from_secs(5), || serves(18301).is_some()));
        let (code, out) = apply_with_site(&site, &dir);
        let (ok, failed, seen) = requests.finish();
        assert_eq!(code, 0, "{out}");
        assert_eq!(failed, 0, "failed requests during the update: {seen:?}");
        assert!(ok >= 5, "the loop ran during the update ({ok} answered)");
        assert_eq!(serves(18301).as_deref(), Some(version), "{out}");
    }
    let (code, out) = site.run(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("switch :18301 (pid "),
        "the switch, its port and live set: {out}"
    );
    let live = out
        .lines()
        .find(|l| l.contains("switch :18301"))
        .unwrap_or_default()
        .to_owned();
    let expected = replicas.unwrap_or(1) as usize;
    assert_eq!(live.matches("127.0.0.1:").count(), expected, "{out}");
    // `destroy` takes the switch down with the service.
    let (code, out) = site.run_with(
        &["destroy", "--auto-approve"],
        &[("SITE", v1.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        switches(&site).is_empty(),
        "the switch is gone after destroy"
    );
    assert!(get(18301).is_none(), "the port is free after destroy");
}

#[test]
fn blue_green_keeps_the_fixed_port_answering_through_every_apply() {
    contract_case("bg-contract", "BlueGreen", None);
}

#[test]
fn rolling_update_of_three_replicas_keeps_the_fixed_port_answering() {
    contract_case("ru-contract", "RollingUpdate", Some(3));
}

/// A new set that fails its gate never receives traffic: the old set keeps
/// serving, the run rolls back, and the port never stops answering.
#[test]
fn a_failing_new_set_leaves_the_old_one_serving() {
    for strategy in ["BlueGreen", "RollingUpdate"] {
        let site = Site::new("rollout-fail");
        let _cleanup = Cleanup(&site);
        let port = super::common::free_port();
        let config = format!(
            r#"{header}  web:
    replicas: 2
    command: python3
    args: ["-c", "import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    ports: [{{container_port: 8080, host_port: {port}}}]
    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 1, start_period_seconds: 3}}
"#,
            header = site.header().replace(
                "deployment:\n",
                &format!("deployment:\n  strategy: {strategy}\n")
            ),
        );
        site.write(&config);
        let v1 = site_dir(&site, "v1");
        let (code, out) = apply_with_site(&site, &v1);
        assert_eq!(code, 0, "{out}");
        let before = site.recorded();
        let requests = Loop::start(port);
        // A directory that does not exist: the new instances answer 404.
        let (code, out) = apply_with_site(&site, &site.dir.path().join("missing"));
        let (ok, failed, seen) = requests.finish();
        assert_eq!(code, 4, "{strategy}: rolled back: {out}");
        assert_eq!(failed, 0, "{strategy}: failed requests: {seen:?}");
        assert!(ok > 0);
        assert_eq!(serves(port).as_deref(), Some("v1"), "{strategy}: {out}");
        assert_eq!(
            site.recorded(),
            before,
            "{strategy}: the old set is recorded"
        );
        for (_, pid, _) in &before {
            assert!(super::common::alive(*pid), "{strategy}: old pid {pid} runs");
        }
    }
}

/// Under `RollingUpdate` the replicas are replaced one by one: each new one
/// starts only after the previous old one stopped; under `BlueGreen` every
/// new one starts before any old one stops.
#[test]
fn rolling_and_blue_green_replace_in_different_orders() {
    let mut orders = Vec::new();
    for strategy in ["RollingUpdate", "BlueGreen"] {
        let site = Site::new("rollout-order");
        let _cleanup = Cleanup(&site);
        let port = super::common::free_port();
        let header = site.header().replace(
            "deployment:\n",
            &format!("deployment:\n  strategy: {strategy}\n"),
        );
        let config = format!(
            r#"{header}  web:
    replicas: 3
    command: python3
    args: ["-c", "import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    ports: [{{container_port: 8080, host_port: {port}}}]
    health_check: {{endpoint: /}}
"#
        );
        site.write(&config);
        let (code, out) = apply_with_site(&site, &site_dir(&site, "v1"));
        assert_eq!(code, 0, "{out}");
        let (code, out) = site.run_with(
            &["apply", "--auto-approve", "--format", "json"],
            &[("SITE", site_dir(&site, "v2").to_str().unwrap())],
        );
        assert_eq!(code, 0, "{out}");
        let order: Vec<&str> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| match v["event"].as_str() {
                Some("instance_started") => Some("start"),
                Some("instance_stopped") => Some("stop"),
                _ => None,
            })
            .collect();
        orders.push((strategy, order.join(",")));
    }
    assert_eq!(
        orders[0].1, "start,stop,start,stop,start,stop",
        "{orders:?}"
    );
    assert_eq!(orders[1].1, "start,stop", "{orders:?}");
}

/// `RollingUpdate` of 4 replicas with `deployment.rolling` as written:
/// (max_surge, max_unavailable). The started and stopped instances of the
/// run (its events, in order) keep the live count within
/// [replicas - max_unavailable, replicas + max_surge]; the settings give
/// different orders; the port answers throughout when nothing may stop
/// early, and the new version serves afterwards.
#[test]
fn max_surge_and_max_unavailable_bound_the_live_instances() {
    const N: i64 = 4;
    let mut orders = Vec::new();
    for (surge, unavailable) in [(1, 0), (2, 0), (0, 1), (1, 1)] {
        let site = Site::new("rollout-surge");
        let _cleanup = Cleanup(&site);
        let port = super::common::free_port();
        let header = site.header().replace(
            "deployment:\n",
            &format!(
                "deployment:\n  strategy: RollingUpdate\n  drain_seconds: 1\n  rolling: {{max_surge: {surge}, max_unavailable: {unavailable}}}\n"
            ),
        );
        let config = format!(
            r#"{header}  web:
    replicas: {N}
    command: python3
    args: ["-c", "import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    ports: [{{container_port: 8080, host_port: {port}}}]
    health_check: {{endpoint: /, interval_seconds: 1}}
"#
        );
        site.write(&config);
        let (code, out) = apply_with_site(&site, &site_dir(&site, "v1"));
        assert_eq!(code, 0, "{out}");
        let requests = Loop::start(port);
        assert!(wait_until(Duration::from_secs(5), || serves(port).is_some()));
        let (code, out) = site.run_with(
            &["apply", "--auto-approve", "--format", "json"],
            &[("SITE", site_dir(&site, "v2").to_str().unwrap())],
        );
        let (ok, failed, seen) = requests.finish();
        assert_eq!(code, 0, "{out}");
        assert!(ok > 0, "the loop ran");
        if unavailable == 0 {
            assert_eq!(failed, 0, "({surge}, 0): failed requests: {seen:?}");
        }
        assert_eq!(serves(port).as_deref(), Some("v2"), "{out}");
        let (mut live, mut low, mut high) = (N, N, N);
        let mut order = Vec::new();
        for v in out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let n = v["handles"].as_array().map_or(0, Vec::len) as i64;
            match v["event"].as_str() {
                Some("instance_started") => {
                    live += n;
                    order.push(format!("+{n}"));
                }
                Some("instance_stopped") => {
                    live -= n;
                    order.push(format!("-{n}"));
                }
                _ => continue,
            }
            low = low.min(live);
            high = high.max(live);
        }
        assert_eq!(live, N, "({surge}, {unavailable}): {order:?}");
        assert!(
            low >= N - unavailable && high <= N + surge,
            "({surge}, {unavailable}): live between {low} and {high}: {order:?}"
        );
        // Each setting uses all the room it is given.
        assert_eq!(
            (low, high),
            (N - unavailable, N + surge),
            "({surge}, {unavailable}): {order:?}"
        );
        assert_eq!(site.recorded().len(), N as usize, "{out}");
        orders.push(order.join(","));
    }
    assert_eq!(orders[0], "+1,-1,+1,-1,+1,-1,+1,-1", "{orders:?}");
    assert_eq!(orders[1], "+2,-2,+2,-2", "{orders:?}");
    assert_eq!(orders[2], "-1,+1,-1,+1,-1,+1,-1,+1", "{orders:?}");
    assert_eq!(orders[3], "-1,+2,-1,-1,+2,-1", "{orders:?}");
}

/// `validate` refuses `rolling` under another strategy, and settings that
/// replace nothing at a time.
#[test]
fn rolling_settings_that_cannot_work_are_refused() {
    let site = Site::new("rollout-refuse");
    let service = "  web:\n    command: python3\n    args: [\"-m\", \"http.server\"]\n    ports: [{container_port: 8080, host_port: 18399}]\n";
    for (deployment, says) in [
        (
            "  strategy: BlueGreen\n  rolling: {max_surge: 2}\n",
            "has no effect without `strategy: RollingUpdate`",
        ),
        (
            "  rolling: {max_surge: 2}\n",
            "has no effect without `strategy: RollingUpdate`",
        ),
        (
            "  strategy: RollingUpdate\n  rolling: {max_surge: 0, max_unavailable: 0}\n",
            "can replace no replica",
        ),
    ] {
        let header = site
            .header()
            .replace("deployment:\n", &format!("deployment:\n{deployment}"));
        site.write(&format!("{header}{service}"));
        let (code, out) = site.run(&["validate"]);
        assert_ne!(code, 0, "{deployment}: {out}");
        assert!(out.contains(says), "{deployment}: {out}");
        assert!(out.contains("E002"), "{deployment}: {out}");
    }
    let header = site.header().replace(
        "deployment:\n",
        "deployment:\n  strategy: RollingUpdate\n  rolling: {max_surge: 0, max_unavailable: 2}\n",
    );
    site.write(&format!("{header}{service}"));
    let (code, out) = site.run(&["validate"]);
    assert_eq!(code, 0, "{out}");
}

/// `validate` refuses `blue_green` under another strategy, and a
/// `keep_seconds` that no service could use (none behind a switch, as a
/// Swarm service never is).
#[test]
fn blue_green_settings_without_effect_are_refused() {
    let site = Site::new("keep-refuse");
    let switched = "  web:\n    command: python3\n    args: [\"-m\", \"http.server\"]\n    ports: [{container_port: 8080, host_port: 18398}]\n";
    let portless = "  worker:\n    command: python3\n    args: [\"-m\", \"http.server\"]\n";
    for (deployment, services, says) in [
        (
            "  strategy: RollingUpdate\n  blue_green: {keep_seconds: 30}\n",
            switched,
            "has no effect without `strategy: BlueGreen`",
        ),
        (
            "  strategy: BlueGreen\n  blue_green: {keep_seconds: 30}\n",
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
        assert!(out.contains("E002"), "{deployment}: {out}");
    }
    let header = site.header().replace(
        "deployment:\n",
        "deployment:\n  strategy: BlueGreen\n  blue_green: {keep_seconds: 30}\n",
    );
    site.write(&format!("{header}{switched}{portless}"));
    let (code, out) = site.run(&["validate"]);
    assert_eq!(code, 0, "{out}");
}

/// A BlueGreen site of 2 replicas with `blue_green.keep_seconds: {keep}`.
fn keeping_site(test: &str, keep: u64) -> (Site, u16) {
    let site = Site::new(test);
    let port = super::common::free_port();
    let header = site.header().replace(
        "deployment:\n",
        &format!(
            "deployment:\n  strategy: BlueGreen\n  drain_seconds: 1\n  blue_green: {{keep_seconds: {keep}}}\n"
        ),
    );
    site.write(&format!(
        r#"{header}  web:
    replicas: 2
    command: python3
    args: ["-c", "import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    ports: [{{container_port: 8080, host_port: {port}}}]
    health_check: {{endpoint: /, interval_seconds: 1}}
"#
    ));
    (site, port)
}

/// `apply` of `dir` in the background (it waits out the keep window),
/// its output going to `log`.
fn apply_in_background(site: &Site, dir: &Path, log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    site.cmd()
        .args(["apply", "--auto-approve"])
        .env("SITE", dir)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn pids(recorded: &[(String, u32, Option<String>)]) -> Vec<u32> {
    recorded.iter().map(|(_, pid, _)| *pid).collect()
}

/// After a blue-green flip with `keep_seconds`, the old set still runs
/// behind no traffic; `rollback` in the window points the switch back at it
/// (the same processes: no restart) with zero failed requests in a request
/// loop, the old version is served as soon as it returns, and the new set
/// is stopped; the waiting `apply` then ends without stopping anything.
#[test]
fn rollback_in_the_keep_window_flips_back_without_a_restart() {
    let (site, port) = keeping_site("keep-flip", 60);
    let _cleanup = Cleanup(&site);
    let (code, out) = apply_with_site(&site, &site_dir(&site, "v1"));
    assert_eq!(code, 0, "{out}");
    let v1 = pids(&site.recorded());
    let log = site.dir.path().join("apply-v2.log");
    let mut apply = apply_in_background(&site, &site_dir(&site, "v2"), &log);
    assert!(
        wait_until(Duration::from_secs(60), || {
            serves(port).as_deref() == Some("v2") && pids(&site.recorded()) != v1
        }),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let v2 = pids(&site.recorded());
    for pid in &v1 {
        assert!(super::common::alive(*pid), "the kept old pid {pid} runs");
    }
    for _ in 0..10 {
        assert_eq!(
            serves(port).as_deref(),
            Some("v2"),
            "no traffic to the kept set"
        );
    }
    assert!(
        apply.try_wait().unwrap().is_none(),
        "apply waits out the window"
    );

    let requests = Loop::start(port);
    assert!(wait_until(Duration::from_secs(5), || serves(port).is_some()));
    let v2_dir = site_dir(&site, "v2");
    let (code, out) = site.run_with(
        &["rollback", "--auto-approve"],
        &[("SITE", v2_dir.to_str().unwrap())],
    );
    assert_eq!(serves(port).as_deref(), Some("v1"), "at once: {out}");
    let (ok, failed, seen) = requests.finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("flipped back"), "{out}");
    assert_eq!(failed, 0, "failed requests during the flip back: {seen:?}");
    assert!(ok > 0);
    assert_eq!(pids(&site.recorded()), v1, "the kept processes serve again");
    for pid in &v2 {
        assert!(
            wait_until(Duration::from_secs(10), || !super::common::alive(*pid)),
            "the new pid {pid} is stopped"
        );
    }
    let (_, history) = site.run(&["state", "history"]);
    assert!(history.contains("rollback"), "{history}");

    let status = apply.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{said}");
    assert!(said.contains("keeping the old set of `web`"), "{said}");
    for pid in &v1 {
        assert!(super::common::alive(*pid), "{pid} still serves: {said}");
    }
    assert_eq!(serves(port).as_deref(), Some("v1"));
}

/// Without a rollback the kept old set stops when its window closes (the
/// waiting `apply` stops it, then exits); a `destroy` in the window stops the
/// kept set too.
#[test]
fn a_kept_old_set_stops_when_its_window_closes_or_on_destroy() {
    let (site, port) = keeping_site("keep-close", 4);
    let _cleanup = Cleanup(&site);
    let (code, out) = apply_with_site(&site, &site_dir(&site, "v1"));
    assert_eq!(code, 0, "{out}");
    let v1 = pids(&site.recorded());
    let log = site.dir.path().join("apply-v2.log");
    let mut apply = apply_in_background(&site, &site_dir(&site, "v2"), &log);
    assert!(wait_until(Duration::from_secs(60), || {
        pids(&site.recorded()) != v1 && serves(port).as_deref() == Some("v2")
    }));
    for pid in &v1 {
        assert!(super::common::alive(*pid), "kept: {pid}");
    }
    let status = apply.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{said}");
    assert!(said.contains("stopped the kept old set of `web`"), "{said}");
    for pid in &v1 {
        assert!(
            !super::common::alive(*pid),
            "{pid} stopped after the window: {said}"
        );
    }
    assert_eq!(serves(port).as_deref(), Some("v2"));

    // A destroy within the next window stops the kept set with the rest.
    let v2 = pids(&site.recorded());
    let log = site.dir.path().join("apply-v3.log");
    let mut apply = apply_in_background(&site, &site_dir(&site, "v3"), &log);
    // The apply holds the state's lock until its run is recorded; it waits
    // out the window without it, once it says so.
    assert!(wait_until(Duration::from_secs(60), || {
        pids(&site.recorded()) != v2
            && serves(port).as_deref() == Some("v3")
            && std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("keeping the old set of `web`")
    }));
    let v3 = pids(&site.recorded());
    let (code, out) = site.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}");
    for pid in v2.iter().chain(&v3) {
        assert!(
            !super::common::alive(*pid),
            "{pid} stopped by destroy (kept {v2:?}, new {v3:?}): {out}"
        );
    }
    assert!(switches(&site).is_empty(), "{out}");
    let status = apply.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{said}");
}

/// The whole change set rolls back: a service whose blue-green rollout
/// completed (its old set stopped) gets its old set back, serving through
/// the same switch, when a later phase fails; the port never stops
/// answering.
#[test]
fn a_completed_rollout_is_undone_when_a_later_phase_fails() {
    let site = Site::new("rollout-undo");
    let _cleanup = Cleanup(&site);
    let port = super::common::free_port();
    let header = site
        .header()
        .replace("deployment:\n", "deployment:\n  strategy: BlueGreen\n");
    let write = |api_exit: &str| {
        site.write(&format!(
            r#"{header}  web:
    replicas: 2
    command: python3
    args: ["-c", "import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    ports: [{{container_port: 8080, host_port: {port}}}]
    health_check: {{endpoint: /}}
  api:
    command: python3
    args: ["-c", "import sys, time; time.sleep(0.2); sys.exit({api_exit})"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    dependencies: [web]
    oneshot: true
"#
        ))
    };
    write("0");
    let (code, out) = apply_with_site(&site, &site_dir(&site, "v1"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(serves(port).as_deref(), Some("v1"));
    write("3");
    let requests = Loop::start(port);
    let (code, out) = apply_with_site(&site, &site_dir(&site, "v2"));
    let (ok, failed, seen) = requests.finish();
    assert_eq!(code, 4, "rolled back: {out}");
    assert!(out.contains("restore-old-set"), "{out}");
    assert_eq!(failed, 0, "failed requests: {seen:?}");
    assert!(ok > 0);
    assert_eq!(serves(port).as_deref(), Some("v1"), "{out}");
    // The old set is recorded again, runs, and is what the switch serves.
    let recorded = site.recorded();
    let web: Vec<_> = recorded.iter().filter(|(s, _, _)| s == "web").collect();
    assert_eq!(web.len(), 2, "{recorded:?}");
    for (_, pid, _) in &web {
        assert!(super::common::alive(*pid));
    }
    let (_, status) = site.run(&["status"]);
    let line = status
        .lines()
        .find(|l| l.contains(&format!("switch :{port}")))
        .unwrap_or_default();
    assert_eq!(line.matches("127.0.0.1:").count(), 2, "{status}");
}

/// A TCP server on a free loopback port that answers each line with
/// `<name>:<line>`; runs until the test binary ends.
fn echo_server(name: &'static str) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut write = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(write, "{name}:{line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn say(
    conn: &mut (std::net::TcpStream, std::io::BufReader<std::net::TcpStream>),
    text: &str,
) -> Option<String> {
    use std::io::BufRead;
    writeln!(conn.0, "{text}").ok()?;
    let mut answer = String::new();
    match conn.1.read_line(&mut answer) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(answer.trim().to_owned()),
    }
}

fn connect(port: u16) -> (std::net::TcpStream, std::io::BufReader<std::net::TcpStream>) {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = std::io::BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// A switch started for a test, killed by its pid when dropped.
struct TestSwitch {
    client: deploy_code::switch::SwitchClient,
    rt: tokio::runtime::Runtime,
    project: String,
    pid: u32,
    tuning: deploy_code::switch::Tuning,
}

impl TestSwitch {
    fn start(dir: &std::path::Path, port: u16, project: String) -> TestSwitch {
        Self::start_with(dir, port, project, Default::default())
    }

    fn start_with(
        dir: &std::path::Path,
        port: u16,
        project: String,
        tuning: deploy_code::switch::Tuning,
    ) -> TestSwitch {
        let client = deploy_code::switch::SwitchClient::new(&dir.join("state.db"), "web", port);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = rt
            .block_on(client.ensure(
                &format!("127.0.0.1:{port}"),
                &project,
                "lineage-1",
                &dir.join("switch.log"),
                &tuning,
            ))
            .unwrap();
        assert!(started);
        let pid = rt.block_on(client.status()).unwrap().pid;
        TestSwitch {
            client,
            rt,
            project,
            pid,
            tuning,
        }
    }

    fn set(&self, backends: &[std::net::SocketAddr], drain: Duration) {
        self.rt
            .block_on(self.client.set(backends, drain, &self.tuning))
            .unwrap();
    }
}

impl Drop for TestSwitch {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
        }
    }
}

/// The switch on its own: it forwards to its live set, keeps a connection
/// to an instance it no longer sends new ones to for the drain time and
/// then cuts it, counts what it forwarded, and frees its port when stopped.
#[test]
fn the_switch_forwards_drains_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let port = super::common::free_port();
    let (blue, green) = (echo_server("blue"), echo_server("green"));
    let switch = TestSwitch::start(dir.path(), port, format!("switch-{}", std::process::id()));
    let (client, rt, project, pid) = (&switch.client, &switch.rt, &switch.project, switch.pid);
    // The control socket is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&client.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Found again by its marks.
    let found = deploy_code::switch::client::find(project, "lineage-1");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].pid, pid);
    assert!(deploy_code::switch::client::find(project, "another").is_empty());

    switch.set(&[blue], Duration::from_millis(0));
    let mut old = connect(port);
    assert_eq!(say(&mut old, "1").as_deref(), Some("blue:1"));
    switch.set(&[green], Duration::from_secs(5));
    // New connections go to green; the open one still reaches blue.
    let mut new = connect(port);
    assert_eq!(say(&mut new, "2").as_deref(), Some("green:2"));
    assert_eq!(say(&mut old, "3").as_deref(), Some("blue:3"));
    let status = rt.block_on(client.status()).unwrap();
    assert_eq!(status.backends, vec![green]);
    assert_eq!(status.active.get(&blue), Some(&1));
    assert_eq!(status.forwarded.get(&green), Some(&1));
    // After the drain the connection to blue is cut.
    assert!(wait_until(Duration::from_secs(15), || {
        rt.block_on(client.status())
            .is_ok_and(|s| !s.active.contains_key(&blue))
    }));
    assert_eq!(say(&mut old, "4"), None);
    assert_eq!(say(&mut new, "5").as_deref(), Some("green:5"));
    // No backend: a connection is accepted and closed, and counted failed.
    switch.set(&[], Duration::from_millis(0));
    assert_eq!(say(&mut connect(port), "6"), None);
    assert_eq!(rt.block_on(client.status()).unwrap().failed, 1);
    // Stopped: the port and the socket are gone.
    rt.block_on(client.stop(project, "lineage-1")).unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!client.socket.exists());
    assert!(rt.block_on(client.status()).is_err());
}

/// A drain belongs to the request that removed the backend: an earlier
/// request's timer that fires later does not cut a connection that a newer
/// request is still draining.
#[test]
fn an_earlier_drain_does_not_cut_a_later_one_short() {
    let dir = tempfile::tempdir().unwrap();
    let port = super::common::free_port();
    let (blue, green) = (echo_server("blue"), echo_server("green"));
    let switch = TestSwitch::start(
        dir.path(),
        port,
        format!("switch-drain-{}", std::process::id()),
    );
    switch.set(&[blue], Duration::from_millis(0));
    let mut old = connect(port);
    assert_eq!(say(&mut old, "1").as_deref(), Some("blue:1"));
    // Keeps blue (its timer fires in 300 ms), then removes it with 20 s.
    switch.set(&[blue, green], Duration::from_millis(300));
    switch.set(&[green], Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(say(&mut old, "2").as_deref(), Some("blue:2"));
}

/// A connection on which nothing is sent either way for the idle timeout
/// is closed and counted; one that keeps talking is not.
#[test]
fn the_switch_closes_an_idle_connection() {
    let dir = tempfile::tempdir().unwrap();
    let port = super::common::free_port();
    let blue = echo_server("blue");
    let tuning = deploy_code::switch::Tuning {
        http: false,
        limits: deploy_code::switch::Limits {
            idle_timeout_ms: 1000,
            ..Default::default()
        },
    };
    let switch = TestSwitch::start_with(
        dir.path(),
        port,
        format!("switch-idle-{}", std::process::id()),
        tuning,
    );
    switch.set(&[blue], Duration::from_millis(0));
    let mut quiet = connect(port);
    let mut talking = connect(port);
    assert_eq!(say(&mut quiet, "1").as_deref(), Some("blue:1"));
    for i in 0..6 {
        assert_eq!(say(&mut talking, &i.to_string()), Some(format!("blue:{i}")));
        std::thread::sleep(Duration::from_millis(400));
    }
    // 2.4 s without a byte: the quiet one is closed, the talking one is not.
    assert_eq!(say(&mut quiet, "2"), None);
    assert_eq!(say(&mut talking, "7").as_deref(), Some("blue:7"));
    let status = switch.rt.block_on(switch.client.status()).unwrap();
    assert_eq!(status.timed_out, 1);
    assert_eq!(status.open, 1);
}

/// Moving a service that holds its port itself behind a switch stops it
/// first, and the plan says so before `apply`; moving it back out stops the
/// switch.
#[test]
fn moving_behind_the_switch_and_out_again_is_planned_and_done() {
    let site = Site::new("rollout-move");
    let _cleanup = Cleanup(&site);
    let port = super::common::free_port();
    let write = |strategy: &str| {
        let header = site.header().replace(
            "deployment:\n",
            &format!("deployment:\n  strategy: {strategy}\n"),
        );
        site.write(&format!(
            r#"{header}  web:
    command: python3
    args: ["-c", "import os, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), functools.partial(h.SimpleHTTPRequestHandler, directory=os.environ['SITE'])).serve_forever()"]
    env: {{SITE: "{{{{ env('SITE') }}}}"}}
    ports: [{{container_port: {port}, host_port: {port}}}]
    health_check: {{endpoint: /}}
"#
        ));
    };
    let v1 = site_dir(&site, "v1");
    write("Hybrid");
    let (code, out) = apply_with_site(&site, &v1);
    assert_eq!(code, 0, "{out}");
    assert!(switches(&site).is_empty());
    write("BlueGreen");
    let (_, plan) = site.run_with(&["plan"], &[("SITE", v1.to_str().unwrap())]);
    assert!(
        plan.contains(&format!(
            "stop-first, the old instance holds port {port} that the traffic switch takes over"
        )),
        "{plan}"
    );
    let (code, out) = apply_with_site(&site, &v1);
    assert_eq!(code, 0, "{out}");
    assert_eq!(switches(&site).len(), 1);
    assert_eq!(serves(port).as_deref(), Some("v1"));
    write("Hybrid");
    let (_, plan) = site.run_with(&["plan"], &[("SITE", v1.to_str().unwrap())]);
    assert!(
        plan.contains(&format!("stop-first, the traffic switch holds port {port}")),
        "{plan}"
    );
    let (code, out) = apply_with_site(&site, &v1);
    assert_eq!(code, 0, "{out}");
    assert!(switches(&site).is_empty(), "the switch is gone");
    assert_eq!(serves(port).as_deref(), Some("v1"));
}
