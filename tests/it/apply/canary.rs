//! The `Canary` strategy from the user's side: a Python HTTP server naming
//! its version on a fixed host port, a request loop against that port during
//! `apply`, what serves afterwards, `promote` and `abort` from another
//! process, and what `validate` refuses.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::common::{free_port, python};
use super::rollout::Loop;
use super::verdict::{Site, serves, wait_until};

/// The server: `GET /` answers the version (every `FAIL_EVERY`-th request
/// with a 500), `GET /health` always 200.
const SERVER: &str = r#"import itertools, os, threading, http.server as h
version = os.environ['VERSION']
every = int(os.environ.get('FAIL_EVERY', '0'))
count = itertools.count(1)
lock = threading.Lock()
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        with lock:
            i = next(count)
        code = 500 if every and self.path != '/health' and i % every == 0 else 200
        body = (version + '\n').encode()
        self.send_response(code)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
"#;

/// Kills what a site left by pid (its switches and its monitored
/// processes), after `destroy`.
struct Cleanup<'a>(&'a Site);

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

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["destroy", "--auto-approve"]);
        let dir = self.0.dir.path();
        let mut left = pids_marked_under(deploy_code::switch::marks::ENV_SOCKET, dir);
        left.extend(pids_marked_under("DEPLOY_CODE_LOG_FILE", dir));
        for pid in left {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// A site running `web` under `Canary` with `canary` (YAML flow mapping).
fn config(site: &Site, port: u16, canary: &str, version: &str, fail_every: u32) -> String {
    let script = site.dir.path().join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let header = site.header().replace(
        "deployment:\n",
        &format!("deployment:\n  strategy: Canary\n  drain_seconds: 1\n  canary: {canary}\n"),
    );
    format!(
        r#"{header}  web:
    command: {py}
    args: ["{script}"]
    env: {{VERSION: "{version}", FAIL_EVERY: "{fail_every}"}}
    ports: [{{container_port: 8080, host_port: {port}}}]
    health_check: {{endpoint: /health, interval_seconds: 1, timeout_seconds: 1, retries: 2}}
"#,
        py = python(),
        script = script.display(),
    )
}

const TWO_STEPS: &str = "{steps: [{weight: 20, pause_seconds: 2}, {weight: 60, pause_seconds: 2}], analysis: {interval_seconds: 1, max_error_rate: 0.01, max_failed_connections: 0.01, max_latency_ms: {quantile: 0.99, value: 2500}}}";

/// The JSON events of an `apply --format json` output.
fn events(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"].is_string())
        .collect()
}

fn canary_events(out: &str) -> Vec<serde_json::Value> {
    events(out)
        .into_iter()
        .filter(|e| e["event"] == "canary")
        .collect()
}

#[test]
fn a_passing_canary_ends_serving_only_the_new_version_with_no_failed_request() {
    let site = Site::new("canary-pass");
    let _cleanup = Cleanup(&site);
    let port = free_port();
    site.write(&config(&site, port, TWO_STEPS, "v1", 0));
    site.apply_ok();
    assert_eq!(serves(port).as_deref(), Some("v1"));

    site.write(&config(&site, port, TWO_STEPS, "v2", 0));
    let (_, plan) = site.run(&["plan"]);
    assert!(
        plan.contains("rollout: canary:") && plan.contains("20 %, then 60 %"),
        "{plan}"
    );
    let requests = Loop::start(port);
    assert!(wait_until(Duration::from_secs(5), || serves(port).is_some()));
    let (code, out) = site.run(&["apply", "--auto-approve", "--format", "json"]);
    let (ok, failed, seen) = requests.finish();
    assert_eq!(code, 0, "{out}");
    assert_eq!(failed, 0, "failed requests during the canary: {seen:?}");
    assert!(ok >= 20, "the loop ran during the canary ({ok} answered)");
    for _ in 0..20 {
        assert_eq!(
            serves(port).as_deref(),
            Some("v2"),
            "only the new version serves"
        );
    }
    let canary = canary_events(&out);
    let weights: Vec<u64> = canary
        .iter()
        .filter(|e| e["verdict"] == "started")
        .map(|e| e["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, vec![20, 60], "{out}");
    assert!(
        canary.iter().all(|e| e["verdict"] != "fail"),
        "every judgement passed: {out}"
    );
    // The new set was judged on what it really served through the switch.
    let served: u64 = canary
        .iter()
        .filter(|e| e["verdict"] == "pass")
        .map(|e| e["counters"]["http_2xx"].as_u64().unwrap())
        .max()
        .unwrap_or(0);
    assert!(served > 0, "the new set answered through the switch: {out}");
}

#[test]
fn a_new_version_answering_errors_is_aborted_by_analysis_and_the_old_one_serves() {
    let site = Site::new("canary-errors");
    let _cleanup = Cleanup(&site);
    let port = free_port();
    site.write(&config(&site, port, TWO_STEPS, "v1", 0));
    site.apply_ok();
    let before = site.recorded();
    let (_, state_before) = site.run(&["state", "show", "web", "--format", "json"]);

    // Every fifth answer of the new version is a 500.
    site.write(&config(&site, port, TWO_STEPS, "v2", 5));
    let requests = Loop::start(port);
    let (code, out) = site.run(&["apply", "--auto-approve", "--format", "json"]);
    let (ok, _, _) = requests.finish();
    assert_eq!(code, 4, "rolled back: {out}");
    assert!(ok > 0);
    for _ in 0..20 {
        assert_eq!(
            serves(port).as_deref(),
            Some("v1"),
            "the old version serves"
        );
    }
    let canary = canary_events(&out);
    let fail = canary
        .iter()
        .find(|e| e["verdict"] == "fail")
        .unwrap_or_else(|| panic!("a failing judgement: {out}"));
    assert_eq!(fail["step"], 1, "{out}");
    assert!(
        fail["detail"].as_str().unwrap().contains("HTTP 5xx"),
        "{out}"
    );
    assert!(fail["counters"]["http_5xx"].as_u64().unwrap() > 0, "{out}");
    assert!(
        out.contains("failed its analysis") && out.contains("E006"),
        "{out}"
    );
    assert_eq!(site.recorded(), before, "the old set is recorded");
    let (_, state_after) = site.run(&["state", "show", "web", "--format", "json"]);
    let spec = |text: &str| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        v["service"]["spec"].clone()
    };
    assert!(!spec(&state_before).is_null(), "{state_before}");
    assert_eq!(
        spec(&state_after),
        spec(&state_before),
        "the old spec is recorded"
    );
    assert!(state_after.contains("\"v1\""), "{state_after}");
}

/// `apply` of `version` in the background, its output piped.
fn apply_in_background(site: &Site) -> Child {
    site.cmd()
        .args(["apply", "--auto-approve", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A canary paused at a step without `pause_seconds` until `decision`,
/// given once `paused` (called with the port while the step waits) returns.
fn decided(site: &Site, decision: &str, paused: impl FnOnce(u16)) -> (u16, i32, String, u64) {
    let port = free_port();
    let steps = "{steps: [{weight: 30}], analysis: {interval_seconds: 1}}";
    site.write(&config(site, port, steps, "v1", 0));
    site.apply_ok();
    let (code, out) = site.run(&[decision]);
    assert_eq!(code, 1, "no canary is in progress yet: {out}");
    assert!(out.contains("no canary is in progress"), "{out}");

    site.write(&config(site, port, steps, "v2", 0));
    let requests = Loop::start(port);
    let child = apply_in_background(site);
    paused(port);
    let mut said = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (code, out) = site.run(&[decision, "web"]);
            said = out;
            code == 0
        }),
        "the canary paused: {said}"
    );
    let (code, out) = finish(child);
    let (_, failed, _) = requests.finish();
    (port, code, out, failed)
}

/// `status --format json` and the human `status` while the canary waits
/// for a decision: the weight, the new set's address, the step, the wait,
/// and the new set's counters from the switch.
fn status_shows_the_paused_canary(site: &Site, port: u16) {
    let mut doc = serde_json::Value::Null;
    // The new set gates first; then the switch counts the loop's requests
    // to it (30 % of them).
    let counted = wait_until(Duration::from_secs(90), || {
        let (code, out) = site.run(&["status", "--format", "json"]);
        doc = serde_json::from_str(&out).unwrap_or_default();
        let canary = &doc["services"][0]["switches"][0]["canary"];
        code == 0 && canary["counters"]["http_2xx"].as_u64().unwrap_or(0) >= 5
    });
    assert!(counted, "the switch counted the canary's answers: {doc:#}");
    let switch = &doc["services"][0]["switches"][0];
    assert_eq!(switch["port"], port, "{doc:#}");
    let canary = &switch["canary"];
    assert_eq!(canary["weight"], 30, "{doc:#}");
    assert_eq!(canary["step"], 1, "{doc:#}");
    assert_eq!(canary["steps"], 1, "{doc:#}");
    assert_eq!(canary["awaiting_decision"], true, "{doc:#}");
    let instances: Vec<String> = canary["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(instances.len(), 1, "one new instance: {doc:#}");
    let live: Vec<&str> = switch["live"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        !live.contains(&instances[0].as_str()),
        "the canary is not in the stable set: {doc:#}"
    );
    // The instance really is the new version, reached at that address.
    let addr: std::net::SocketAddr = instances[0].parse().unwrap();
    assert_eq!(serves(addr.port()).as_deref(), Some("v2"), "{doc:#}");
    let counters = &canary["counters"];
    assert_eq!(counters["http"], true, "{doc:#}");
    assert!(counters["connections"].as_u64().unwrap() >= 5, "{doc:#}");
    assert_eq!(counters["http_5xx"], 0, "{doc:#}");
    assert!(counters["latency_p99_ms"].as_u64().is_some(), "{doc:#}");

    let (code, human) = site.run(&["status"]);
    assert_eq!(code, 0, "{human}");
    assert!(
        human.contains(&format!("canary 30% \u{2192} {}", instances[0])),
        "{human}"
    );
    assert!(
        human.contains("step 1/1, paused: awaiting `deploy-code promote` or `deploy-code abort`"),
        "{human}"
    );
    assert!(human.contains("canary counters: "), "{human}");
    assert!(human.contains("responses 2xx "), "{human}");
}

#[test]
fn promote_finishes_a_paused_canary() {
    let site = Site::new("canary-promote");
    let _cleanup = Cleanup(&site);
    let (port, code, out, failed) = decided(&site, "promote", |port| {
        status_shows_the_paused_canary(&site, port)
    });
    assert_eq!(code, 0, "{out}");
    assert_eq!(failed, 0, "{out}");
    for _ in 0..10 {
        assert_eq!(serves(port).as_deref(), Some("v2"));
    }
    assert!(
        canary_events(&out)
            .iter()
            .any(|e| e["verdict"] == "promoted"),
        "{out}"
    );
}

#[test]
fn abort_rolls_a_paused_canary_back() {
    let site = Site::new("canary-abort");
    let _cleanup = Cleanup(&site);
    let (port, code, out, failed) = decided(&site, "abort", |_| ());
    assert_eq!(code, 4, "{out}");
    assert_eq!(failed, 0, "{out}");
    for _ in 0..10 {
        assert_eq!(serves(port).as_deref(), Some("v1"));
    }
    assert!(out.contains("aborted by `deploy-code abort`"), "{out}");
    let (code, out) = site.run(&["abort"]);
    assert_eq!(code, 1, "nothing left to abort: {out}");
}

#[test]
fn validate_refuses_canary_settings_without_effect_or_out_of_order() {
    let site = Site::new("canary-validate");
    let port = free_port();
    let cases = [
        (
            config(&site, port, TWO_STEPS, "v1", 0)
                .replace("strategy: Canary", "strategy: BlueGreen"),
            "`deployment.canary` has no effect",
        ),
        (
            config(
                &site,
                port,
                "{steps: [{weight: 50, pause_seconds: 1}, {weight: 20, pause_seconds: 1}]}",
                "v1",
                0,
            ),
            "the weights must increase",
        ),
        (
            config(&site, port, "{steps: [{weight: 100}]}", "v1", 0),
            "weight",
        ),
        (
            config(&site, port, "{steps: [{weight: 0}]}", "v1", 0),
            "weight",
        ),
        (
            config(&site, port, "{steps: []}", "v1", 0),
            "`deployment.canary.steps` is empty",
        ),
    ];
    for (text, said) in cases {
        site.write(&text);
        let (code, out) = site.run(&["validate"]);
        assert_ne!(code, 0, "{text}\n{out}");
        assert!(out.contains(said), "{said}: {out}");
        assert!(out.contains("E002"), "{out}");
    }
    // The same settings under Canary, increasing, pass.
    site.write(&config(&site, port, TWO_STEPS, "v1", 0));
    let (code, out) = site.run(&["validate"]);
    assert_eq!(code, 0, "{out}");
}

/// A Prometheus stand-in: `/api/v1/query` answers one sample of `value`
/// and records the queries it was asked.
const PROMETHEUS: &str = r#"import json, sys, urllib.parse, http.server as h
port, value, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query).get('query', [''])[0]
        with open(log, 'a') as f:
            f.write(u.path + ' ' + q + '\n')
        body = json.dumps({'status': 'success', 'data': {'resultType': 'vector', 'result': [{'metric': {}, 'value': [0, value]}]}}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
h.ThreadingHTTPServer(('127.0.0.1', port), H).serve_forever()
"#;

/// Kills the child it holds when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_prometheus_query_above_its_limit_aborts_the_canary() {
    let site = Site::new("canary-prometheus");
    let _cleanup = Cleanup(&site);
    let (port, prom) = (free_port(), free_port());
    let script = site.dir.path().join("prometheus.py");
    let log = site.dir.path().join("queries.log");
    std::fs::write(&script, PROMETHEUS).unwrap();
    let _prometheus = Killed(
        std::process::Command::new(python())
            .arg(&script)
            .arg(prom.to_string())
            .arg("0.5")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let canary = format!(
        "{{steps: [{{weight: 20, pause_seconds: 3}}], analysis: {{interval_seconds: 1, prometheus: {{url: 'http://127.0.0.1:{prom}', query: 'rate(errors[1m])', max: 0.05}}}}}}"
    );
    site.write(&config(&site, port, &canary, "v1", 0));
    site.apply_ok();
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", prom)).is_ok()
    }));
    // The new version answers well; the query says otherwise.
    site.write(&config(&site, port, &canary, "v2", 0));
    let requests = Loop::start(port);
    let (code, out) = site.run(&["apply", "--auto-approve", "--format", "json"]);
    let (_, failed, seen) = requests.finish();
    assert_eq!(code, 4, "{out}");
    assert_eq!(failed, 0, "{seen:?}");
    assert!(
        out.contains("the Prometheus query `rate(errors[1m])` gave 0.5, above 0.05"),
        "{out}"
    );
    for _ in 0..10 {
        assert_eq!(serves(port).as_deref(), Some("v1"));
    }
    let asked = std::fs::read_to_string(&log).unwrap();
    assert!(asked.contains("/api/v1/query rate(errors[1m])"), "{asked}");
}
