use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use deploy_code::metrics::{Timings, exposition, publish};
use deploy_code::model::MonitoringSettings;
use deploy_code::state::{Deployment, Outcome, Snapshot};

use crate::support::{Guard, free_port, have, wait_for_port};

/// A real Pushgateway on a free loopback port, persisting into `dir`; it is
/// killed (by its pid) when the guard drops.
fn pushgateway(dir: &std::path::Path) -> (Guard, u16) {
    let port = free_port();
    let gw = Guard(
        Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--persistence.file={}",
                dir.join("p.data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, Duration::from_secs(20));
    (gw, port)
}

fn deployment(revision: u64, outcome: Outcome, timings: Option<Timings>) -> Deployment {
    Deployment {
        revision,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: Some("2026-01-01T00:00:05Z".into()),
        user: "ci".into(),
        host: "h".into(),
        command: "deploy-code apply".into(),
        config_snapshot: String::new(),
        config_replay: None,
        config_hash: "sha256:00".into(),
        plan_summary: serde_json::json!({}),
        outcome,
        evidence: match timings {
            Some(t) => serde_json::json!({ "timings": t }),
            None => serde_json::json!({}),
        },
    }
}

fn sample_history() -> Vec<Deployment> {
    let timings = Timings {
        duration_seconds: 4.25,
        phases: vec![1.5, 2.75],
        gates: BTreeMap::from([("api".into(), 0.12), ("db".into(), 1.4)]),
    };
    vec![
        deployment(3, Outcome::Succeeded, Some(timings)),
        deployment(2, Outcome::RolledBack, None),
        deployment(1, Outcome::Succeeded, None),
    ]
}

#[test]
fn exposition_passes_promtool() {
    if !have("promtool") {
        return;
    }
    let text = exposition("shop", &Snapshot::default(), &sample_history());
    assert!(
        text.contains("deploy_code_rollbacks_total{project=\"shop\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "deploy_code_last_apply_phase_duration_seconds{project=\"shop\",phase=\"2\"} 2.75"
    ));
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the exposition:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_reach_a_real_pushgateway() {
    if !have("prometheus-pushgateway") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_gw, port) = pushgateway(dir.path());
    let settings = MonitoringSettings {
        enabled: true,
        pushgateway: Some(format!("http://127.0.0.1:{port}")),
        textfile_dir: Some(dir.path().display().to_string()),
    };
    let text = exposition("shop", &Snapshot::default(), &sample_history());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let warnings = rt.block_on(publish(&settings, "shop", &text));
    assert!(warnings.is_empty(), "{warnings:?}");

    let scraped = rt.block_on(async {
        deploy_code::net::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        scraped.contains("deploy_code_deployments_total{")
            && scraped.contains("outcome=\"rolled_back\"")
            && scraped.contains("job=\"deploy-code\""),
        "{scraped}"
    );
    let textfile = std::fs::read_to_string(dir.path().join("deploy_code_shop.prom")).unwrap();
    assert_eq!(textfile, text);
}

#[test]
fn a_pushgateway_that_is_down_is_a_warning() {
    let port = free_port();
    let settings = MonitoringSettings {
        enabled: true,
        pushgateway: Some(format!("http://127.0.0.1:{port}")),
        textfile_dir: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let warnings = rt.block_on(publish(&settings, "shop", "x 1\n"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("not pushed"), "{warnings:?}");
}

/// `apply` and `destroy` publish at the end of every run: a real apply of a
/// real process pushes its timings to a real Pushgateway and a textfile.
#[test]
fn apply_and_destroy_publish_metrics() {
    if !have("prometheus-pushgateway") {
        return;
    }
    let svc_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (_gw, gw_port) = pushgateway(dir.path());
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir(&textfiles).unwrap();
    let project = format!("metrics-{}", std::process::id());
    let config = format!(
        r#"project: {project}
monitoring:
  enabled: true
  prometheus:
    pushgateway: http://127.0.0.1:{gw_port}
    textfile_dir: {textfiles}
services:
  web:
    command: python3
    args: ["-m", "http.server", "{svc_port}", "--bind", "127.0.0.1"]
    ports: [{{container_port: {svc_port}, host_port: {svc_port}}}]
    health_check:
      endpoint: http://127.0.0.1:{svc_port}/
      interval_seconds: 1
      retries: 20
"#,
        textfiles = textfiles.display()
    );
    let cfg = dir.path().join("deploy-code.yaml");
    std::fs::write(&cfg, config).unwrap();
    let run = |args: &[&str]| {
        let out = assert_cmd::cargo::cargo_bin_cmd!("deploy-code")
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["apply", "--auto-approve"]);
    let scrape = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            deploy_code::net::get(format!("http://127.0.0.1:{gw_port}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let after_apply = scrape();
    let ready = format!(
        "deploy_code_service_ready{{backend=\"process\",instance=\"\",job=\"deploy-code\",project=\"{project}\",service=\"web\"}} 1"
    );
    assert!(after_apply.contains(&ready), "{after_apply}");
    assert!(
        after_apply.contains("deploy_code_last_apply_health_gate_seconds{"),
        "{after_apply}"
    );
    run(&["destroy", "--auto-approve"]);
    let after_destroy = scrape();
    assert!(
        after_destroy.contains(&format!("deploy_code_services{{instance=\"\",job=\"deploy-code\",project=\"{project}\",status=\"ready\"}} 0")),
        "{after_destroy}"
    );
    let textfile = std::fs::read_to_string(
        textfiles.join(format!("deploy_code_{}.prom", project.replace('-', "_"))),
    )
    .unwrap();
    assert!(textfile.contains("deploy_code_revision{"), "{textfile}");
}
