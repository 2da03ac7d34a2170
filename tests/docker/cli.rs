//! `deploy-code apply` with containers end to end: three phases behind HTTP
//! gates, drift repaired by the next apply, rollback after a container that
//! exits, destroy.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

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
        let mut s = format!(
            "version: \"1.0.0\"\nproject: {}\nenvironment: test\ninfrastructure:\n  container_runtime: Docker\n  network:\n    port_range:\n      start: 42000\n      end: 48999\ndeployment:\n  max_parallel: 4\n  timeout_seconds: 60\n  stop_grace_seconds: 1\n  rollback_timeout_seconds: 60\nservices:\n",
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
