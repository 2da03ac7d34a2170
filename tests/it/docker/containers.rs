use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use deploy_code::backends::docker::{self, DockerBackend};
use deploy_code::backends::{Backend, BackendError, Liveness};
use deploy_code::model::{Text, VolumeSpec};
use deploy_code::state::{Handle, ServiceRecord, ServiceStatus, Snapshot};

use super::common::*;

fn id(h: &Handle) -> &str {
    match h {
        Handle::Container { id, .. } => id,
        other => panic!("not a container: {other:?}"),
    }
}

async fn wait_http(b: &DockerBackend, h: &Handle) -> (String, u16) {
    let (host, port) = b.probe_address(h, 8080).await;
    let ok = eventually(Duration::from_secs(15), || {
        let host = host.clone();
        async move { http_status(&host, port, "/health") == Some(200) }
    })
    .await;
    assert!(ok, "GET http://{host}:{port}/health never answered 200");
    (host, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn create_probe_replace_and_destroy() {
    let Some(b) = engine("create_probe_replace_and_destroy").await else {
        return;
    };
    let project = project("crud");
    let _guard = Cleanup::new(&project);
    let mut ctx = ctx(&project);
    ctx.network.cidr = Some(format!(
        "10.{}.{}.0/24",
        200 + std::process::id() % 50,
        std::process::id() % 250
    ));

    let spec = web("web");
    let handles = b.start(&spec, &ctx).await.unwrap();
    assert_eq!(handles.len(), 1);
    let Handle::Container { name, .. } = &handles[0] else {
        panic!()
    };
    assert_eq!(name, &format!("{project}-web"));

    // Health through the published port, allocated from the range.
    let (host, port) = wait_http(&b, &handles[0]).await;
    assert_eq!(host, "127.0.0.1");
    assert!(
        (42000..=48999).contains(&port),
        "port {port} comes from the range"
    );
    assert_eq!(b.liveness(&handles[0]).await, Liveness::Running);

    // Command probes run in the container and read the exit code.
    let ok = b
        .exec_probe(
            &handles[0],
            &[
                "/bin/busybox".into(),
                "test".into(),
                "-f".into(),
                "/www/health".into(),
            ],
            Duration::from_secs(5),
        )
        .await;
    assert!(ok.healthy, "{ok:?}");
    let bad = b
        .exec_probe(
            &handles[0],
            &[
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                "echo nope; exit 4".into(),
            ],
            Duration::from_secs(5),
        )
        .await;
    assert!(!bad.healthy);
    assert!(
        bad.detail.contains("exit 4") && bad.detail.contains("nope"),
        "{bad:?}"
    );
    assert_eq!(
        b.native_health(&handles[0]).await,
        None,
        "no HEALTHCHECK in the image"
    );

    // The network exists with the configured CIDR.
    let net = Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            &docker::network_name(&project),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&net.stdout).trim(),
        ctx.network.cidr.as_deref().unwrap()
    );

    // Labels: discover finds it with its spec hash and lineage.
    let found = b.discover(&project).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].spec_hash.as_deref(),
        Some(spec.spec_hash().as_str())
    );
    assert_eq!(found[0].lineage.as_deref(), Some(ctx.lineage.as_str()));

    // Replace: the new container starts while the old one still runs.
    let mut v2 = spec.clone();
    v2.env.insert("VERSION".into(), Text::plain("2"));
    ctx.revision = 2;
    let new = b.start(&v2, &ctx).await.unwrap();
    assert_ne!(id(&new[0]), id(&handles[0]));
    wait_http(&b, &new[0]).await;
    assert_eq!(
        b.liveness(&handles[0]).await,
        Liveness::Running,
        "old one untouched until stopped"
    );
    b.stop(&handles, Duration::from_secs(1)).await.unwrap();
    assert_eq!(b.liveness(&handles[0]).await, Liveness::Missing);
    let found = b.discover(&project).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].spec_hash.as_deref(), Some(v2.spec_hash().as_str()));
    let Handle::Container { name, .. } = &found[0].handle else {
        panic!()
    };
    assert_eq!(
        name,
        &format!("{project}-web"),
        "the new one holds the canonical name"
    );

    // Destroy: stopping twice is fine; the empty network goes.
    assert!(
        !b.remove_network_if_empty(&project).await.unwrap(),
        "still in use"
    );
    b.stop(&new, Duration::from_secs(1)).await.unwrap();
    b.stop(&new, Duration::from_secs(1)).await.unwrap();
    assert!(b.discover(&project).await.unwrap().is_empty());
    assert!(b.remove_network_if_empty(&project).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exiting_container_is_seen_at_once_with_its_last_lines() {
    let Some(b) = engine("an_exiting_container_is_seen_at_once_with_its_last_lines").await else {
        return;
    };
    let project = project("exit");
    let _guard = Cleanup::new(&project);
    let spec = shell(
        "crash",
        "echo starting; sleep 0.2; echo config missing >&2; exit 3",
    );
    let handles = b.start(&spec, &ctx(&project)).await.unwrap();
    let exited = eventually(Duration::from_secs(10), || async {
        b.liveness(&handles[0]).await == Liveness::Exited(Some(3))
    })
    .await;
    assert!(exited, "liveness: {:?}", b.liveness(&handles[0]).await);
    let lines = b.logs(&handles[0], 10).await;
    assert_eq!(
        lines,
        vec!["starting".to_owned(), "config missing".to_owned()]
    );
    assert_eq!(
        b.logs(&handles[0], 1).await,
        vec!["config missing".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_left_by_a_killed_run_is_found_and_adopted() {
    let Some(b) = engine("a_container_left_by_a_killed_run_is_found_and_adopted").await else {
        return;
    };
    let project = project("adopt");
    let _guard = Cleanup::new(&project);
    let ctx = ctx(&project);
    let spec = web("api");
    // A run starts the container and dies before recording the handle.
    let lost = b.start(&spec, &ctx).await.unwrap();
    drop(b);

    let b = DockerBackend::connect().await.unwrap();
    let found = b.discover(&project).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].handle, lost[0]);
    assert_eq!(found[0].service.as_str(), "api");
    assert_eq!(found[0].liveness, Liveness::Running);
    assert_eq!(
        found[0].spec_hash.as_deref(),
        Some(spec.spec_hash().as_str())
    );
    // Starting the same spec again adopts it instead of duplicating it.
    let again = b.start(&spec, &ctx).await.unwrap();
    assert_eq!(id(&again[0]), id(&lost[0]));
    assert_eq!(b.discover(&project).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_shows_missing_exited_changed_and_orphaned_containers() {
    let Some(b) = engine("drift_shows_missing_exited_changed_and_orphaned_containers").await else {
        return;
    };
    let project = project("drift");
    let _guard = Cleanup::new(&project);
    let ctx = ctx(&project);
    let mut spec = web("pool");
    spec.replicas = 3;
    let handles = b.start(&spec, &ctx).await.unwrap();
    assert_eq!(handles.len(), 3);
    let names: Vec<_> = handles
        .iter()
        .map(|h| match h {
            Handle::Container { name, .. } => name.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert!(
        names.contains(&format!("{project}-pool")) && names.contains(&format!("{project}-pool-2"))
    );

    let mut snapshot = Snapshot::default();
    snapshot.services.insert(
        spec.name.clone(),
        ServiceRecord {
            name: spec.name.clone(),
            spec: spec.clone(),
            spec_hash: spec.spec_hash(),
            backend: deploy_code::model::BackendKind::Docker,
            handles: handles.clone(),
            status: ServiceStatus::Ready,
            gpus: vec![],
            revision: 1,
            created_at: String::new(),
            updated_at: String::new(),
        },
    );
    let obs = deploy_code::refresh::observe_backend(&b, &project, &snapshot)
        .await
        .unwrap();
    assert!(
        obs.services[&spec.name]
            .iter()
            .all(|o| o.state == "running")
    );
    assert!(obs.orphans.is_empty());

    // Outside the tool: one removed, one stopped, and a stray one started.
    Command::new("docker")
        .args(["rm", "-f", id(&handles[0])])
        .output()
        .unwrap();
    Command::new("docker")
        .args(["stop", "-t", "0", id(&handles[1])])
        .output()
        .unwrap();
    let stray = b.start(&shell("stray", "sleep 60"), &ctx).await.unwrap();

    let obs = deploy_code::refresh::observe_backend(&b, &project, &snapshot)
        .await
        .unwrap();
    let states: Vec<_> = obs.services[&spec.name]
        .iter()
        .map(|o| o.state.as_str())
        .collect();
    assert_eq!(states, vec!["missing", "exited", "running"]);
    assert_eq!(
        obs.services[&spec.name][2].spec_hash.as_deref(),
        Some(spec.spec_hash().as_str())
    );
    assert_eq!(obs.orphans.len(), 1);
    assert_eq!(obs.orphans[0].0.as_str(), "stray");
    assert_eq!(obs.orphans[0].1, stray[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn volumes_resources_and_secrets_reach_the_container() {
    let Some(b) = engine("volumes_resources_and_secrets_reach_the_container").await else {
        return;
    };
    let project = project("vol");
    let mut guard = Cleanup::new(&project);
    guard.volumes.push(docker::volume_name(&project, "data"));
    let ctx = ctx(&project);
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("conf.txt"), "from-host\n").unwrap();
    let key = deploy_code::model::SecretKey::random();
    let mut spec = shell("store", "sleep 60");
    spec.env.insert(
        "TOKEN".into(),
        Text::Sensitive(deploy_code::model::Sensitive::new(
            &key,
            "canary-7731".into(),
        )),
    );
    spec.working_dir = Some("/data".into());
    spec.resources.cpu_cores = 0.5;
    spec.resources.memory_mb = 64;
    spec.volumes = vec![
        VolumeSpec {
            name: "data".into(),
            host_path: None,
            mount_path: "/data".into(),
            read_only: false,
        },
        VolumeSpec {
            name: "conf".into(),
            host_path: Some(host_dir.path().display().to_string()),
            mount_path: "/conf".into(),
            read_only: true,
        },
    ];
    let h = b.start(&spec, &ctx).await.unwrap();
    let run = |script: &str| {
        let argv: Vec<String> = ["/bin/busybox", "sh", "-c", script]
            .into_iter()
            .map(String::from)
            .collect();
        let b = &b;
        let h = &h[0];
        async move { b.exec_probe(h, &argv, Duration::from_secs(5)).await }
    };
    assert!(
        run("test \"$TOKEN\" = canary-7731").await.healthy,
        "the secret reaches the container env"
    );
    assert!(
        run("test \"$(pwd)\" = /data && echo x > /data/f")
            .await
            .healthy,
        "working dir + writable volume"
    );
    assert!(
        run("grep -q from-host /conf/conf.txt").await.healthy,
        "bind mount"
    );
    assert!(
        !run("echo x > /conf/new").await.healthy,
        "read-only bind mount"
    );
    let fmt = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
            id(&h[0]),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fmt.stdout).trim(),
        format!("500000000 {}", 64 * 1024 * 1024)
    );
    // The labels (what `status` shows) hold no plaintext.
    let found = b.discover(&project).await.unwrap();
    assert!(!format!("{found:?}").contains("canary-7731"));
    let labels = Command::new("docker")
        .args(["inspect", "-f", "{{json .Config.Labels}}", id(&h[0])])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&labels.stdout).contains("canary-7731"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_is_neither_present_nor_pullable_is_e015() {
    let Some(b) = engine("an_image_that_is_neither_present_nor_pullable_is_e015").await else {
        return;
    };
    let project = project("noimg");
    let _guard = Cleanup::new(&project);
    let mut spec = web("ghost");
    spec.image = Some("127.0.0.1:9/deploy-code/absent:0".into());
    let err = b.start(&spec, &ctx(&project)).await.unwrap_err();
    assert!(
        matches!(err, BackendError::ImageUnavailable { .. }),
        "{err:?}"
    );
    let code = miette::Diagnostic::code(&err).unwrap().to_string();
    assert_eq!(code, "deploy_code::E015");
    assert!(b.discover(&project).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_host_port_is_published_as_asked() {
    let Some(b) = engine("a_fixed_host_port_is_published_as_asked").await else {
        return;
    };
    let project = project("fixed");
    let _guard = Cleanup::new(&project);
    let port = crate::support::free_port();
    let mut spec = web("fixed");
    spec.ports[0].host_port = Some(port);
    spec.ports[0].host_ip = Some("127.0.0.1".into());
    spec.labels = BTreeMap::from([("team".to_owned(), "core".to_owned())]);
    let h = b.start(&spec, &ctx(&project)).await.unwrap();
    assert_eq!(wait_http(&b, &h[0]).await, ("127.0.0.1".to_owned(), port));
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{index .Config.Labels \"team\"}}",
            id(&h[0]),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "core");
}

#[tokio::test(flavor = "multi_thread")]
async fn services_of_one_project_started_at_once_share_one_network() {
    let Some(b) = engine("services_of_one_project_started_at_once_share_one_network").await else {
        return;
    };
    let project = project("level");
    let _guard = Cleanup::new(&project);
    let ctx = ctx(&project);
    let specs: Vec<_> = (0..5).map(|i| web(&format!("s{i}"))).collect();
    let started = futures_util::future::join_all(specs.iter().map(|s| b.start(s, &ctx))).await;
    let mut handles = Vec::new();
    for s in started {
        handles.push(s.expect("every start succeeds").remove(0));
    }
    for h in &handles {
        wait_http(&b, h).await;
    }
    let nets = Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{}$", docker::network_name(&project)),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&nets.stdout).lines().count(), 1);
    // Containers reach each other by service name on the project network.
    let reach = b
        .exec_probe(
            &handles[0],
            &[
                "/bin/busybox".into(),
                "wget".into(),
                "-q".into(),
                "-O".into(),
                "/dev/null".into(),
                "http://s1:8080/health".into(),
            ],
            Duration::from_secs(5),
        )
        .await;
    assert!(reach.healthy, "{reach:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_removed_outside_the_tool_is_created_again() {
    let Some(b) = engine("a_network_removed_outside_the_tool_is_created_again").await else {
        return;
    };
    let project = project("netgone");
    let _guard = Cleanup::new(&project);
    let ctx = ctx(&project);
    let first = b.start(&shell("one", "sleep 60"), &ctx).await.unwrap();
    b.stop(&first, Duration::from_secs(0)).await.unwrap();
    let rm = Command::new("docker")
        .args(["network", "rm", &docker::network_name(&project)])
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let second = b.start(&shell("two", "sleep 60"), &ctx).await.unwrap();
    assert_eq!(b.liveness(&second[0]).await, Liveness::Running);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_healthcheck_verdict_is_read() {
    let Some(b) = engine("the_image_healthcheck_verdict_is_read").await else {
        return;
    };
    let project = project("hc");
    let _guard = Cleanup::new(&project);
    let mut spec = shell("checked", "sleep 60");
    spec.image = Some(IMAGE_WITH_HEALTHCHECK.into());
    let h = b.start(&spec, &ctx(&project)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            b.native_health(&h[0]).await == Some(true)
        })
        .await,
        "never healthy"
    );
    // Break it from inside: the engine's verdict turns unhealthy.
    let rm = b
        .exec_probe(
            &h[0],
            &["/bin/busybox".into(), "rm".into(), "/www/health".into()],
            Duration::from_secs(5),
        )
        .await;
    assert!(rm.healthy, "{rm:?}");
    assert!(
        eventually(Duration::from_secs(15), || async {
            b.native_health(&h[0]).await == Some(false)
        })
        .await,
        "never unhealthy"
    );
}
