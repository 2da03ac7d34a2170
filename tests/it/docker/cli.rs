//! `deploy-code apply` with containers end to end: three phases behind HTTP
//! gates, drift repaired by the next apply, rollback after a container that
//! exits, destroy.

use std::path::PathBuf;
use std::process::Command;

use super::common::*;

struct Deployment {
    dir: tempfile::TempDir,
    project: String,
}

impl Deployment {
    fn new(test: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            project: project(test),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("deploy-code.yaml")
    }

    /// a -> b -> c, busybox httpd on 8080 with host ports allocated; `c_script`
    /// replaces c's command when given.
    fn write(&self, version: &str, c_script: Option<&str>) {
        self.write_on("", version, c_script);
    }

    /// [`Self::write`] with more keys for `infrastructure.network` (indented
    /// by four spaces, each line ending in a newline).
    fn write_on(&self, network: &str, version: &str, c_script: Option<&str>) {
        let mut s = format!(
            "version: \"1.0.0\"\nproject: {}\nenvironment: test\ninfrastructure:\n  container_runtime: Docker\n  network:\n{network}    port_range:\n      start: 42000\n      end: 48999\ndeployment:\n  max_parallel: 4\n  timeout_seconds: 60\n  stop_grace_seconds: 1\n  rollback_timeout_seconds: 60\nservices:\n",
            self.project
        );
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            let args = match (n, c_script) {
                (&"c", Some(script)) => format!("[\"sh\", \"-c\", \"{script}\"]"),
                _ => "[\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]".to_owned(),
            };
            s.push_str(&format!(
                "  {n}:\n    image: {IMAGE}\n    args: {args}\n    env:\n      VERSION: \"{version}\"\n    ports:\n      - container_port: 8080\n    health_check:\n      endpoint: /health\n      interval_seconds: 1\n      timeout_seconds: 1\n      retries: 2\n"
            ));
            if i > 0 {
                s.push_str(&format!("    dependencies: [{}]\n", ["a", "b"][i - 1]));
            }
        }
        std::fs::write(self.config(), s).unwrap();
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
            .current_dir(self.dir.path())
            .arg("-c")
            .arg(self.config())
            .args(args)
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `service -> (container id, VERSION)` of the running containers.
    fn containers(&self) -> Vec<(String, String, String)> {
        let out = Command::new("docker")
            .args([
                "ps",
                "--filter",
                &format!("label=io.deploy-code.project={}", self.project),
                "--format",
                "{{.Label \"io.deploy-code.service\"}} {{.ID}}",
            ])
            .output()
            .unwrap();
        let mut v: Vec<(String, String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (s, id) = l.split_once(' ')?;
                let env = Command::new("docker")
                    .args([
                        "inspect",
                        "-f",
                        "{{range .Config.Env}}{{println .}}{{end}}",
                        id,
                    ])
                    .output()
                    .ok()?;
                let version = String::from_utf8_lossy(&env.stdout)
                    .lines()
                    .find_map(|e| e.strip_prefix("VERSION=").map(str::to_owned))
                    .unwrap_or_default();
                Some((s.to_owned(), id.to_owned(), version))
            })
            .collect();
        v.sort();
        v
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_drift_rollback_and_destroy_with_containers() {
    let Some(_b) = engine("apply_drift_rollback_and_destroy_with_containers").await else {
        return;
    };
    let d = Deployment::new("cli");
    let _guard = Cleanup::new(&d.project);

    d.write("v1", None);
    let (code, out, err) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v1 = d.containers();
    assert_eq!(
        v1.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(v1.iter().all(|c| c.2 == "v1"));

    // Drift: a container removed outside the tool is seen and put back.
    Command::new("docker")
        .args(["rm", "-f", &v1[1].1])
        .output()
        .unwrap();
    let (code, out, err) = d.run(&["plan", "--refresh"]);
    assert!(code == 0 || code == 2, "{out}\n{err}");
    assert!(
        out.contains("b missing") && out.contains("repairs drift"),
        "{out}"
    );
    let (code, out, err) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(d.containers().len(), 3, "b is back");

    // A new version whose last container exits: rolled back to v1.
    let before = d.containers();
    d.write("v2", Some("echo boom-from-c; exit 5"));
    let (code, out, err) = d.run(&["apply", "--auto-approve"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("boom-from-c"),
        "the last log lines are shown\n{out}\n{err}"
    );
    let after = d.containers();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        after.iter().all(|c| c.2 == "v1"),
        "rolled back: {after:?} (before {before:?})"
    );

    let (code, out, err) = d.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(d.containers().is_empty());
    let net = Command::new("docker")
        .args(["network", "inspect", &format!("{}-net", d.project)])
        .output()
        .unwrap();
    assert!(
        !net.status.success(),
        "destroy removed the empty project network"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_fails_the_apply_before_anything_starts() {
    let Some(_b) = engine("a_missing_image_fails_the_apply_before_anything_starts").await else {
        return;
    };
    let d = Deployment::new("no-image");
    let _guard = Cleanup::new(&d.project);
    d.write("v1", None);
    // c, in the last phase, names an image that is neither here nor pullable.
    let cfg = std::fs::read_to_string(d.config()).unwrap();
    let (head, tail) = cfg.split_at(cfg.find("  c:\n").unwrap());
    let missing = format!("{}-missing:none", d.project);
    let tail = tail.replacen(IMAGE, &missing, 1);
    std::fs::write(d.config(), format!("{head}{tail}")).unwrap();

    let (code, out, err) = d.run(&["apply", "--auto-approve", "--format", "json"]);
    assert_eq!(
        code, 1,
        "refused before any change, not rolled back\n{out}\n{err}"
    );
    assert!(
        out.contains("E015"),
        "the failure keeps its own code (the JSON diagnostic is on stdout): {out}"
    );
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(
        !kinds
            .iter()
            .any(|k| *k == "phase_started" || *k == "instance_started"),
        "no phase began: {kinds:?}"
    );
    let failed = events
        .iter()
        .find(|e| e["event"] == "action_failed")
        .expect("the failure is reported");
    assert_eq!(failed["service"], "c");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("image `{missing}` is not present")),
        "{failed}"
    );
    assert!(d.containers().is_empty());
    let (code, out, err) = d.run(&["state", "list", "--format", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["services"].as_array().map(Vec::len), Some(0), "{doc}");
}

/// The networks a container is attached to, by name.
fn networks_of(id: &str) -> String {
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            id,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn network_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["network", "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_network_is_joined_and_kept() {
    let Some(_b) = engine("a_named_network_is_joined_and_kept").await else {
        return;
    };
    let d = Deployment::new("named-net");
    let _guard = Cleanup::new(&d.project);
    let shared = format!("{}-shared", d.project);

    // Missing: the apply fails before anything starts, and says what to do.
    d.write_on(&format!("    name: {shared}\n"), "v1", None);
    let (code, out, err) = d.run(&["apply", "--auto-approve"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains(&format!("the network `{shared}`")),
        "{out}\n{err}"
    );
    assert!(d.containers().is_empty(), "nothing left behind");

    // Present (labelled with the test's project only for the cleanup guard).
    let created = Command::new("docker")
        .args(["network", "create", "--label"])
        .arg(format!("io.deploy-code.project={}", d.project))
        .arg(&shared)
        .output()
        .unwrap();
    assert!(created.status.success());
    // c's gate reaches a by its service name over the shared network.
    let cfg = std::fs::read_to_string(d.config()).unwrap();
    let (head, tail) = cfg.split_at(cfg.find("  c:\n").unwrap());
    let tail = tail.replace(
        "      endpoint: /health\n",
        "      command: [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://a:8080/health\"]\n",
    );
    std::fs::write(d.config(), format!("{head}{tail}")).unwrap();
    let (code, out, err) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let running = d.containers();
    assert_eq!(running.len(), 3, "{running:?}");
    for (service, id, _) in &running {
        assert_eq!(networks_of(id), shared, "{service}");
    }
    assert!(
        !network_exists(&format!("{}-net", d.project)),
        "no project network was created"
    );
    // Back to the project network: every container must move, so it is replaced.
    let named = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        named.replace(&format!("    name: {shared}\n"), ""),
    )
    .unwrap();
    let (code, out, err) = d.run(&["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        out.matches("`network` changed (forces replacement)")
            .count(),
        3,
        "{out}"
    );
    std::fs::write(d.config(), named).unwrap();

    let (code, out, err) = d.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(d.containers().is_empty());
    assert!(network_exists(&shared), "a named network is never removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_default_bridge_and_the_host_network() {
    let Some(_b) = engine("docker_default_bridge_and_the_host_network").await else {
        return;
    };
    // Docker's default bridge: ports published, HTTP gates, no aliases.
    let d = Deployment::new("bridge-net");
    let _guard = Cleanup::new(&d.project);
    d.write_on("    name: bridge\n", "v1", None);
    let (code, out, err) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let running = d.containers();
    assert_eq!(running.len(), 3, "{running:?}");
    assert!(running.iter().all(|(_, id, _)| networks_of(id) == "bridge"));
    let (code, out, err) = d.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(d.containers().is_empty());

    // The host network: the container's own port is the host port.
    let h = Deployment::new("host-net");
    let _guard = Cleanup::new(&h.project);
    let port = crate::support::free_port();
    std::fs::write(
        h.config(),
        format!(
            "version: \"1.0.0\"\nproject: {}\nenvironment: test\ninfrastructure:\n  container_runtime: Docker\n  network:\n    mode: Host\ndeployment:\n  timeout_seconds: 60\n  stop_grace_seconds: 1\nservices:\n  web:\n    image: {IMAGE}\n    args: [\"httpd\", \"-f\", \"-p\", \"127.0.0.1:{port}\", \"-h\", \"/www\"]\n    ports:\n      - container_port: {port}\n    health_check:\n      endpoint: /health\n      interval_seconds: 1\n      timeout_seconds: 1\n      retries: 2\n",
            h.project
        ),
    )
    .unwrap();
    let (code, out, err) = h.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let running = h.containers();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(networks_of(&running[0].1), "host");
    assert_eq!(http_status("127.0.0.1", port, "/health"), Some(200));
    let (code, out, err) = h.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(h.containers().is_empty());
    assert_eq!(http_status("127.0.0.1", port, "/health"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_on_swarm_checks_the_cluster_nodes() {
    let Some(_b) = engine("plan_on_swarm_checks_the_cluster_nodes").await else {
        return;
    };
    if !swarm_active("plan_on_swarm_checks_the_cluster_nodes") {
        return;
    }
    let d = Deployment::new("swplan");
    let write = |gpus: u32| {
        std::fs::write(
            d.config(),
            format!(
                "version: \"1.0.0\"\nproject: {}\nenvironment: test\ninfrastructure:\n  orchestrator: Swarm\nservices:\n  web:\n    image: {IMAGE}\n    replicas: 2\n    resources:\n      cpu_cores: 0.5\n      memory_mb: 64\n      gpu_count: {gpus}\n",
                d.project
            ),
        )
        .unwrap();
    };
    write(0);
    let (code, out, err) = d.run(&["plan"]);
    assert!(code == 0 || code == 2, "{out}\n{err}");
    assert!(out.contains("fits (swarm nodes"), "{out}");
    // The node advertises no NVIDIA-GPU generic resource.
    write(1);
    let (code, out, err) = d.run(&["plan"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(format!("{out}{err}").contains("GPU"), "{out}\n{err}");
}

/// `logs --follow` of a container prints the tail and then what the container
/// prints afterwards, as it prints it (it used to print the tail and then
/// wait forever in silence).
#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_streams_a_container_as_it_prints() {
    use std::io::{BufRead, BufReader};
    let Some(_b) = engine("logs_follow_streams_a_container_as_it_prints").await else {
        return;
    };
    let d = Deployment::new("follow");
    let _guard = Cleanup::new(&d.project);
    std::fs::write(
        d.config(),
        format!(
            "version: \"1.0.0\"\nproject: {}\ninfrastructure:\n  container_runtime: Docker\ndeployment:\n  stop_grace_seconds: 1\nservices:\n  ticker:\n    image: {IMAGE}\n    args: [\"sh\", \"-c\", \"i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done\"]\n",
            d.project
        ),
    )
    .unwrap();
    let (code, out, err) = d.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let tick = |line: &str| -> Option<u64> { line.trim().strip_prefix("tick ")?.parse().ok() };
    let (code, out, err) = d.run(&["logs", "ticker"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let before = out
        .lines()
        .filter_map(tick)
        .max()
        .expect("the tail has ticks");

    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(d.dir.path())
        .arg("-c")
        .arg(d.config())
        .args(["logs", "ticker", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Ticks printed after the plain `logs` above must arrive while it runs.
    let mut later = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while later.len() < 3 && std::time::Instant::now() < deadline {
        match rx.recv_timeout(std::time::Duration::from_millis(500)) {
            Ok(line) => later.extend(tick(&line).filter(|n| *n > before)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        later.len() >= 3,
        "`logs --follow` printed no new lines (after tick {before}): {later:?}"
    );
    assert!(still_running, "`logs --follow` ended by itself");
    let (code, out, err) = d.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// A container gets its declared `env` and what `inherit_env` names of the
/// environment `deploy-code apply` runs in, nothing else of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_gets_what_inherit_env_names_and_nothing_else() {
    let Some(_b) = engine("a_container_gets_what_inherit_env_names_and_nothing_else").await else {
        return;
    };
    let d = Deployment::new("inherit");
    let _guard = Cleanup::new(&d.project);
    std::fs::write(
        d.config(),
        format!(
            "version: \"1.0.0\"\nproject: {}\ninfrastructure:\n  container_runtime: Docker\ndeployment:\n  timeout_seconds: 60\n  stop_grace_seconds: 1\nservices:\n  box:\n    image: {IMAGE}\n    args: [\"sh\", \"-c\", \"sleep 300\"]\n    env: {{OWN: declared}}\n    inherit_env: [\"DCT_PASS_*\"]\n",
            d.project
        ),
    )
    .unwrap();
    let canary = format!("dct-secret-{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(d.dir.path())
        .arg("-c")
        .arg(d.config())
        .args(["apply", "--auto-approve"])
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .env("DCT_PASS_REGION", "eu-west-3")
        .env("DCT_OTHER_SECRET", &canary)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=io.deploy-code.project={}", d.project),
        ])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
    let id = ids.lines().next().expect("the container runs");
    let env = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            id,
        ])
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&env.stdout).into_owned();
    let lines: Vec<&str> = env.lines().collect();
    assert!(lines.contains(&"DCT_PASS_REGION=eu-west-3"), "{env}");
    assert!(lines.contains(&"OWN=declared"), "{env}");
    assert!(
        !env.contains(&canary) && !env.contains("DCT_OTHER_SECRET"),
        "{env}"
    );
    let (code, out, err) = d.run(&["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "{out}\n{err}");
}
