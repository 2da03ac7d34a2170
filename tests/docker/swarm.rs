use std::time::Duration;

use deploy_code::backends::swarm::{self, SwarmBackend};
use deploy_code::backends::{Backend, Liveness};
use deploy_code::model::{BackendKind, Text};
use deploy_code::state::Handle;

use crate::common::*;

async fn swarm_engine(test: &str) -> Option<SwarmBackend> {
    engine(test).await?;
    if !swarm_active(test) {
        return None;
    }
    // Without IPVS in the kernel the routing mesh cannot forward; publish
    // on the node itself then.
    let mode = if std::path::Path::new("/proc/sys/net/ipv4/vs").exists() {
        swarm::PublishMode::Ingress
    } else {
        swarm::PublishMode::Host
    };
    Some(
        SwarmBackend::connect()
            .await
            .unwrap()
            .with_publish_mode(mode),
    )
}

fn swarm_web(name: &str) -> deploy_code::model::ServiceSpec {
    let mut s = web(name);
    s.backend = BackendKind::Swarm;
    s
}

async fn converged(b: &SwarmBackend, h: &Handle, replicas: u32, limit: Duration) -> bool {
    eventually(limit, || async {
        b.task_counts(h)
            .await
            .is_some_and(|c| c.replicas == replicas && c.running == replicas)
            && b.native_health(h).await == Some(true)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swarm_service_scales_from_one_to_three_in_place() {
    let Some(b) = swarm_engine("a_swarm_service_scales_from_one_to_three_in_place").await else {
        return;
    };
    let project = project("scale");
    let _guard = Cleanup::new(&project);
    let ctx = ctx(&project);
    let spec = swarm_web("web");
    let h = b.start(&spec, &ctx).await.unwrap();
    let Handle::SwarmService { name, .. } = &h[0] else {
        panic!("{h:?}")
    };
    assert_eq!(name, &format!("{project}_web"));
    assert!(
        converged(&b, &h[0], 1, Duration::from_secs(60)).await,
        "{:?}",
        b.task_counts(&h[0]).await
    );
    assert_eq!(b.liveness(&h[0]).await, Liveness::Running);

    // HTTP health through the published port (routing mesh).
    let (host, port) = b.probe_address(&h[0], 8080).await;
    if b.publish_mode() == swarm::PublishMode::Ingress {
        assert!((42000..=48999).contains(&port));
    }
    let ok = eventually(Duration::from_secs(30), || {
        let host = host.clone();
        async move { http_status(&host, port, "/health") == Some(200) }
    })
    .await;
    assert!(ok, "http://{host}:{port}/health");
    let exec = b
        .exec_probe(
            &h[0],
            &["/bin/busybox".into(), "true".into()],
            Duration::from_secs(5),
        )
        .await;
    assert!(exec.healthy, "{exec:?}");

    // Scale 1 -> 3 in place: same service id, same published port.
    assert!(
        BackendKind::Swarm
            .updatable_in_place()
            .contains(&"replicas")
    );
    let mut three = spec.clone();
    three.replicas = 3;
    let h2 = b.update(&three, &h, &ctx).await.unwrap();
    assert_eq!(h2, h, "updated in place");
    assert!(
        converged(&b, &h2[0], 3, Duration::from_secs(60)).await,
        "{:?}",
        b.task_counts(&h2[0]).await
    );
    if b.publish_mode() == swarm::PublishMode::Ingress {
        assert_eq!(b.probe_address(&h2[0], 8080).await.1, port);
    }
    // Every replica answers on the address the gate probes.
    let (host, port) = b.probe_address(&h2[0], 8080).await;
    assert_eq!(http_status(&host, port, "/health"), Some(200));

    let found = b.discover(&project).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].spec_hash.as_deref(),
        Some(three.spec_hash().as_str())
    );
    assert_eq!(found[0].liveness, Liveness::Running);

    let inv = swarm::nodes_inventory().await.unwrap();
    assert!(!inv.hosts.is_empty());
    assert!(
        inv.hosts[0].cpu_cores >= 1.0 && inv.hosts[0].memory_mb > 0,
        "{inv:?}"
    );

    b.stop(&h2, Duration::from_secs(2)).await.unwrap();
    assert_eq!(b.liveness(&h2[0]).await, Liveness::Missing);
    assert!(b.discover(&project).await.unwrap().is_empty());
    assert!(b.remove_network_if_empty(&project).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_swarm_update_is_rolled_back_to_the_previous_spec() {
    let Some(b) = swarm_engine("a_failing_swarm_update_is_rolled_back_to_the_previous_spec").await
    else {
        return;
    };
    let project = project("rollback");
    let _guard = Cleanup::new(&project);
    let ctx = ctx(&project);
    let good = swarm_web("api");
    let h = b.start(&good, &ctx).await.unwrap();
    assert!(converged(&b, &h[0], 1, Duration::from_secs(60)).await);

    // The new spec's tasks exit at once.
    let mut bad = good.clone();
    bad.args = ["sh", "-c", "echo cannot bind; exit 7"]
        .into_iter()
        .map(Text::plain)
        .collect();
    b.update(&bad, &h, &ctx).await.unwrap();
    // The gate sees the new spec's tasks fail (exit 7) while the Swarm's own
    // failure action may already be putting the old spec back.
    let seen = std::sync::Mutex::new(None);
    let failed = eventually(Duration::from_secs(60), || async {
        let l = b.liveness(&h[0]).await;
        if let Liveness::Exited(code) = l {
            *seen.lock().unwrap() = Some(code);
            return true;
        }
        false
    })
    .await;
    assert!(failed, "{:?}", b.task_counts(&h[0]).await);
    assert_eq!(
        *seen.lock().unwrap(),
        Some(Some(7)),
        "the failing tasks' exit code"
    );
    assert_eq!(b.native_health(&h[0]).await, Some(false));
    let logs = b.logs(&h[0], 50).await;
    assert!(logs.iter().any(|l| l.contains("cannot bind")), "{logs:?}");

    // Rollback: re-apply the previous spec.
    let back = b.update(&good, &h, &ctx).await.unwrap();
    assert_eq!(back, h);
    assert!(
        converged(&b, &h[0], 1, Duration::from_secs(60)).await,
        "{:?}",
        b.task_counts(&h[0]).await
    );
    let counts = b.task_counts(&h[0]).await.unwrap();
    assert_eq!(counts.spec_hash, Some(good.spec_hash()));
    let (host, port) = b.probe_address(&h[0], 8080).await;
    let ok = eventually(Duration::from_secs(30), || {
        let host = host.clone();
        async move { http_status(&host, port, "/health") == Some(200) }
    })
    .await;
    assert!(ok);
    b.stop(&h, Duration::from_secs(2)).await.unwrap();
}
