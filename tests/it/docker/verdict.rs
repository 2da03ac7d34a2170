//! The verdict of `apply` for containers, as users write them: a host port
//! that differs from the container port, every probe kind, faults, and a
//! check of the body each version really serves.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::common::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Path,
    UrlHostPort,
    UrlContainerPort,
    Tcp,
    Command,
    None,
}

impl Probe {
    const ALL: [Probe; 6] = [
        Probe::Path,
        Probe::UrlHostPort,
        Probe::UrlContainerPort,
        Probe::Tcp,
        Probe::Command,
        Probe::None,
    ];

    fn label(self) -> &'static str {
        match self {
            Probe::Path => "path endpoint",
            Probe::UrlHostPort => "URL, host port",
            Probe::UrlContainerPort => "URL, container port",
            Probe::Tcp => "tcp",
            Probe::Command => "command",
            Probe::None => "none",
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
    HttpError,
    Hang,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::None,
        Fault::ExitNow,
        Fault::ExitLater,
        Fault::NeverListen,
        Fault::OtherPort,
        Fault::HttpError,
        Fault::Hang,
    ];

    fn label(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::ExitNow => "exit-now",
            Fault::ExitLater => "exit-later",
            Fault::NeverListen => "never-listen",
            Fault::OtherPort => "other-port",
            Fault::HttpError => "http-404",
            Fault::Hang => "hang",
        }
    }

    /// The container's `sh -c` script for `version`.
    fn script(self, version: &str) -> String {
        let site = format!("mkdir -p /tmp/w && echo version={version} > /tmp/w/index.html");
        match self {
            Fault::None => format!("{site} && exec httpd -f -p 8080 -h /tmp/w"),
            Fault::ExitNow => "exit 3".into(),
            Fault::ExitLater => {
                format!("{site} && (httpd -f -p 8080 -h /tmp/w &) && sleep 0.3 && exit 3")
            }
            Fault::NeverListen => "exec sleep 3600".into(),
            Fault::OtherPort => format!("{site} && exec httpd -f -p 8081 -h /tmp/w"),
            // Nothing to serve at `/`: every answer is 404.
            Fault::HttpError => "mkdir -p /tmp/e && exec httpd -f -p 8080 -h /tmp/e".into(),
            // Accepts connections and never answers HTTP.
            Fault::Hang => "while true; do nc -l -p 8080; done".into(),
        }
    }
}

/// The exit a case must end in. A Swarm task's published port accepts TCP
/// connections for the task (through the engine's proxy) whether the task
/// listens or not: a `tcp` probe of a Swarm service cannot see a task that
/// does not listen.
fn expected(swarm: bool, probe: Probe, fault: Fault) -> i32 {
    match fault {
        Fault::NeverListen | Fault::OtherPort if swarm && probe == Probe::Tcp => 0,
        Fault::None => 0,
        Fault::ExitNow | Fault::ExitLater => 4,
        Fault::NeverListen | Fault::OtherPort if probe == Probe::None => 0,
        Fault::NeverListen | Fault::OtherPort => 4,
        Fault::HttpError | Fault::Hang if matches!(probe, Probe::None | Probe::Tcp) => 0,
        Fault::HttpError | Fault::Hang => 4,
    }
}

struct Site {
    dir: tempfile::TempDir,
    project: String,
    host_port: u16,
    /// Swarm services instead of containers.
    swarm: bool,
    /// Variables for the commands (secrets).
    env: Vec<(String, String)>,
}

fn unique(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", project(test), N.fetch_add(1, Ordering::SeqCst))
}

impl Site {
    fn new(test: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            project: unique(test),
            host_port: free_port(),
            swarm: false,
            env: Vec::new(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("deploy-code.yaml")
    }

    /// `web`: busybox serving `version=<version>` on container port 8080,
    /// published on the site's host port.
    fn write(&self, probe: Probe, version: &str, fault: Fault) {
        let h = self.host_port;
        let check = match probe {
            Probe::Path => Some("endpoint: /".to_owned()),
            Probe::UrlHostPort => Some(format!("endpoint: \"http://127.0.0.1:{h}/\"")),
            Probe::UrlContainerPort => Some("endpoint: \"http://127.0.0.1:8080/\"".to_owned()),
            Probe::Tcp => Some("tcp: 8080".to_owned()),
            Probe::Command => Some(
                "command: [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/\"]".to_owned(),
            ),
            Probe::None => None,
        };
        let mut s = format!(
            "version: \"1.0.0\"\nproject: {}\ninfrastructure: {{container_runtime: Docker{}}}\ndeployment: {{timeout_seconds: 60, stop_grace_seconds: 1, rollback_timeout_seconds: 60}}\nservices:\n  web:\n    image: {IMAGE}\n    args: [\"sh\", \"-c\", \"{}\"]\n    ports: [{{container_port: 8080, host_port: {h}}}]\n",
            self.project,
            if self.swarm {
                ", orchestrator: Swarm"
            } else {
                ""
            },
            fault.script(version)
        );
        if let Some(c) = check {
            s.push_str(&format!(
                "    health_check: {{{c}, interval_seconds: 1, timeout_seconds: 1, retries: 2, min_healthy_seconds: 1}}\n"
            ));
        }
        std::fs::write(self.config(), s).unwrap();
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
            .current_dir(self.dir.path())
            .arg("-c")
            .arg(self.config())
            .args(args)
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            // No IPVS here for the ingress routing mesh.
            .env("DEPLOY_CODE_SWARM_PUBLISH_MODE", "host")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn apply(&self) -> (i32, String) {
        self.run(&["apply", "--auto-approve"])
    }

    /// The body the published port serves, when it answers 200.
    fn serves(&self) -> Option<String> {
        use std::io::{Read, Write};
        let addr = format!("127.0.0.1:{}", self.host_port).parse().ok()?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let ok = text.split_whitespace().nth(1) == Some("200");
        ok.then(|| {
            text.split_once("\r\n\r\n")
                .map(|(_, b)| b.trim().to_owned())
        })
        .flatten()
    }

    /// Names of the project's Swarm services.
    fn services(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "service",
                "ls",
                "--filter",
                &format!("label=io.deploy-code.project={}", self.project),
                "--format",
                "{{.Name}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// What runs of the project: its Swarm services, or its containers
    /// (running or not).
    fn instances(&self) -> Vec<String> {
        if self.swarm {
            self.services()
        } else {
            self.containers()
        }
    }

    /// Names of the project's containers, running or not.
    fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=io.deploy-code.project={}", self.project),
                "--format",
                "{{.Names}}",
            ])
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }
}

/// The most common Docker shape: container port 8080 published on another
/// host port, checked by `endpoint: /`, by a URL naming the host port and by
/// one naming the container port. Each deploys and serves its version.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_port_that_differs_from_the_container_port_deploys() {
    let Some(_b) = engine("a_host_port_that_differs_from_the_container_port_deploys").await else {
        return;
    };
    for probe in [Probe::Path, Probe::UrlHostPort, Probe::UrlContainerPort] {
        let site = Site::new("hostport");
        let _guard = Cleanup::new(&site.project);
        site.write(probe, "v1", Fault::None);
        let (code, out) = site.apply();
        assert_eq!(code, 0, "{}: {out}", probe.label());
        assert_eq!(
            site.serves().as_deref(),
            Some("version=v1"),
            "{}",
            probe.label()
        );
        // `status` names the container, its published port and its uptime.
        let (_, status) = site.run(&["status"]);
        let row = status
            .lines()
            .find(|l| l.starts_with("web "))
            .unwrap_or_else(|| panic!("{status}"));
        assert!(
            row.contains(&format!("container {}-web", site.project)),
            "{status}"
        );
        assert!(
            row.contains(&format!("{}->8080", site.host_port)),
            "{status}"
        );
        assert!(row.contains("healthy"), "{status}");
        let uptime = row.split_whitespace().nth(7).unwrap_or("-");
        assert!(uptime.ends_with('s'), "an uptime is shown: {status}");
        let (_, _) = site.run(&["destroy", "--auto-approve"]);
    }
}

/// After a failed replace the old container has its own name again, and
/// `status` and `docker logs <name>` find it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_replace_gives_the_old_container_its_name_back() {
    let Some(_b) = engine("a_failed_replace_gives_the_old_container_its_name_back").await else {
        return;
    };
    let site = Site::new("rename");
    let _guard = Cleanup::new(&site.project);
    // No fixed host port: the replace starts the new container first.
    let write = |version: &str, fault: Fault| {
        let s = format!(
            "version: \"1.0.0\"\nproject: {}\ninfrastructure: {{container_runtime: Docker, network: {{port_range: {{start: 42000, end: 48999}}}}}}\ndeployment: {{timeout_seconds: 60, stop_grace_seconds: 1}}\nservices:\n  frontend:\n    image: {IMAGE}\n    args: [\"sh\", \"-c\", \"{}\"]\n    ports: [{{container_port: 8080}}]\n    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 1, retries: 2}}\n",
            site.project,
            fault.script(version)
        );
        std::fs::write(site.config(), s).unwrap();
    };
    write("v1", Fault::None);
    assert_eq!(site.apply().0, 0);
    write("v2", Fault::ExitNow);
    let (code, out) = site.apply();
    assert_eq!(code, 4, "{out}");
    let name = format!("{}-frontend", site.project);
    assert_eq!(
        site.containers(),
        vec![name.clone()],
        "one container, its name back"
    );
    let logs = Command::new("docker")
        .args(["logs", &name])
        .output()
        .unwrap();
    assert!(logs.status.success(), "docker logs {name}");
    let (_, status) = site.run(&["status"]);
    assert!(
        status.contains(&name) && status.contains("healthy"),
        "{status}"
    );
    let _ = site.run(&["destroy", "--auto-approve"]);
}

struct Outcome {
    swarm: bool,
    probe: Probe,
    replace: bool,
    fault: Fault,
    exit: i32,
    problem: Option<String>,
}

fn run_case(swarm: bool, probe: Probe, replace: bool, fault: Fault) -> Outcome {
    let site = Site {
        swarm,
        ..Site::new("cm")
    };
    let _guard = Cleanup::new(&site.project);
    let mut problem: Option<String> = None;
    let mut note = |ok: bool, what: String| {
        if !ok && problem.is_none() {
            problem = Some(what);
        }
    };
    if replace {
        site.write(probe, "v1", Fault::None);
        let (code, out) = site.apply();
        note(code == 0, format!("v1 apply exited {code}: {out}"));
    }
    let version = if replace { "v2" } else { "v1" };
    site.write(probe, version, fault);
    let (exit, out) = site.apply();
    let want = expected(swarm, probe, fault);
    note(exit == want, format!("exit {exit}, expected {want}: {out}"));
    if exit == 0 && fault == Fault::None {
        note(
            site.serves().as_deref() == Some(&format!("version={version}")),
            format!("the new version does not serve: {:?}", site.serves()),
        );
        note(
            site.run(&["plan", "--detailed-exitcode"]).0 == 0,
            "the next plan is not empty".into(),
        );
    }
    if exit == 4 {
        if replace {
            note(
                site.serves().as_deref() == Some("version=v1"),
                format!("the old version does not serve again: {:?}", site.serves()),
            );
            note(
                site.instances().len() == 1,
                format!("left behind: {:?}", site.instances()),
            );
        } else {
            note(
                site.instances().is_empty(),
                format!("left behind: {:?}", site.instances()),
            );
        }
    }
    let (code, out) = site.run(&["destroy", "--auto-approve"]);
    note(code == 0, format!("destroy exited {code}: {out}"));
    note(
        site.instances().is_empty(),
        format!("destroy left {:?}", site.instances()),
    );
    Outcome {
        swarm,
        probe,
        replace,
        fault,
        exit,
        problem,
    }
}

/// Probe kind x {create, replace} x fault for containers, and for Swarm
/// services. CI runs a fixed sample (containers: every probe kind, the faults
/// without and with an exit at once on create, without and with an error
/// status on replace; Swarm: the path, command and no probe, without and
/// with an exit at once, on create and replace); `DEPLOY_CODE_MATRIX=all`
/// runs every case of both.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_matrix_containers() {
    let Some(_b) = engine("conformance_matrix_containers").await else {
        return;
    };
    let swarm = swarm_active("conformance_matrix_containers");
    let all = std::env::var("DEPLOY_CODE_MATRIX").as_deref() == Ok("all");
    let mut cases = Vec::new();
    for p in Probe::ALL {
        for replace in [false, true] {
            for f in Fault::ALL {
                let sampled = matches!(
                    (replace, f),
                    (false, Fault::None | Fault::ExitNow) | (true, Fault::None | Fault::HttpError)
                );
                if all || sampled {
                    cases.push((false, p, replace, f));
                }
                let swarm_sampled = matches!(p, Probe::Path | Probe::Command | Probe::None)
                    && matches!(f, Fault::None | Fault::ExitNow);
                if swarm && (all || swarm_sampled) {
                    cases.push((true, p, replace, f));
                }
            }
        }
    }
    let started = Instant::now();
    let queue = Mutex::new(cases);
    let results = Mutex::new(Vec::new());
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    loop {
                        let next = queue.lock().unwrap().pop();
                        let Some((w, p, r, f)) = next else { return };
                        let o = run_case(w, p, r, f);
                        results.lock().unwrap().push(o);
                    }
                });
            }
        });
        let results = results.into_inner().unwrap();
        let mut table = String::from(
            "| backend | probe | action | fault | exit | holds |\n|---|---|---|---|---|---|\n",
        );
        let mut sorted: Vec<&Outcome> = results.iter().collect();
        sorted.sort_by_key(|o| {
            (
                o.swarm,
                Probe::ALL.iter().position(|p| *p == o.probe),
                o.replace,
                Fault::ALL.iter().position(|f| *f == o.fault),
            )
        });
        for o in &sorted {
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                if o.swarm { "swarm" } else { "docker" },
                o.probe.label(),
                if o.replace { "replace" } else { "create" },
                o.fault.label(),
                o.exit,
                if o.problem.is_some() { "NO" } else { "yes" }
            ));
        }
        println!(
            "{table}\n{} cases in {:.0} s",
            results.len(),
            started.elapsed().as_secs_f64()
        );
        let failed: Vec<String> = results
            .iter()
            .filter_map(|o| {
                o.problem.as_ref().map(|p| {
                    format!(
                        "{} / {} / {} / {}: {p}",
                        if o.swarm { "swarm" } else { "docker" },
                        o.probe.label(),
                        o.replace,
                        o.fault.label()
                    )
                })
            })
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    })
    .await
    .unwrap();
}

/// A container's secrets leak through no failure path: a secret `command`
/// the image does not have (the engine's error quotes it), and a container
/// that prints its secret and dies (its log tail is the evidence).
#[tokio::test(flavor = "multi_thread")]
async fn a_containers_secret_never_leaves_the_process() {
    let Some(_b) = engine("a_containers_secret_never_leaves_the_process").await else {
        return;
    };
    const CANARY: &str = "canary-c0ntainer-7b2e-xyzzy";
    let forms = [
        CANARY.to_owned(),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, CANARY),
        hex::encode(CANARY),
    ];
    let site = Site {
        env: vec![("TOKEN".into(), CANARY.into())],
        ..Site::new("canary")
    };
    let _guard = Cleanup::new(&site.project);
    let head = format!(
        "version: \"1.0.0\"\nproject: {}\ninfrastructure: {{container_runtime: Docker}}\ndeployment: {{timeout_seconds: 60, stop_grace_seconds: 1}}\nservices:\n  web:\n    image: {IMAGE}\n",
        site.project
    );
    let mut outputs = Vec::new();
    // 1. The secret as the command: the engine says it is not found.
    std::fs::write(
        site.config(),
        format!("{head}    command: \"/{{{{ secret('TOKEN') }}}}\"\n"),
    )
    .unwrap();
    for args in [
        &["apply", "--auto-approve"][..],
        &["apply", "--auto-approve", "--format", "json"],
    ] {
        let (code, out) = site.run(args);
        assert_ne!(code, 0, "{out}");
        outputs.push(out);
    }
    // 2. A container that prints its secret (plain and base64) and exits.
    std::fs::write(
        site.config(),
        format!(
            "{head}    args: [\"sh\", \"-c\", \"echo the token is $TOKEN; echo $TOKEN | base64; exit 3\"]\n    env: {{TOKEN: \"{{{{ secret('TOKEN') }}}}\"}}\n"
        ),
    )
    .unwrap();
    let (code, out) = site.run(&["apply", "--auto-approve"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("the token is (sensitive)"),
        "the evidence is there, redacted: {out}"
    );
    outputs.push(out);
    for args in [
        &["state", "history", "--format", "json"][..],
        &["state", "show", "--revision", "3", "--format", "json"],
        &["destroy", "--auto-approve"],
    ] {
        outputs.push(site.run(args).1);
    }
    let state_dir = site.dir.path().join(".deploy-code");
    for entry in std::fs::read_dir(&state_dir).unwrap().flatten() {
        if entry.path().is_file() {
            outputs
                .push(String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned());
        }
    }
    let leaks: Vec<String> = outputs
        .iter()
        .enumerate()
        .flat_map(|(i, o)| {
            forms
                .iter()
                .filter(|f| o.contains(f.as_str()))
                .map(move |f| format!("output {i}: `{f}`"))
        })
        .collect();
    assert!(leaks.is_empty(), "the canary leaked: {leaks:?}");
}
