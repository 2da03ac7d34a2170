use std::time::Duration;

use deploy_code::backends::process::ProcessBackend;
use deploy_code::backends::{Backend, BackendError, Liveness};
use deploy_code::model::{SecretKey, Sensitive, Text};
use deploy_code::state::Handle;

use super::common::*;

#[tokio::test]
async fn a_process_runs_detached_with_its_env_marks_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let key = SecretKey::new([3; 32]);
    let mut s = spec(
        "echoer",
        &["sh", "-c", "echo started $GREETING; exec sleep 30"],
    );
    s.env.insert("GREETING".into(), Text::plain("hello"));
    s.env.insert(
        "TOKEN".into(),
        Text::Sensitive(Sensitive::new(&key, "canary-7f3a".into())),
    );
    let project = project("detached");
    let handles = b.start(&s, &ctx(dir.path(), &project)).await.unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    assert_eq!(handles.len(), 1);
    let Handle::Process {
        pid, start_time, ..
    } = &handles[0]
    else {
        panic!()
    };
    let st = deploy_code::procfs::stat(*pid).unwrap();
    assert_eq!(st.start_time, *start_time);
    // Own session: the session id is its own pid.
    let sid = unsafe { libc::getsid(*pid as i32) };
    assert_eq!(sid, *pid as i32);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains(&format!("DEPLOY_CODE_PROJECT={project}")));
    assert!(environ.contains("DEPLOY_CODE_SERVICE=echoer"));
    assert!(
        environ.contains("TOKEN=canary-7f3a"),
        "the secret reaches the process env"
    );
    assert_eq!(b.liveness(&handles[0]).await, Liveness::Running);
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = b.logs(&handles[0], 10).await;
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lines, vec!["started hello".to_owned()]);
    assert!(log_of(&handles[0]).ends_with("logs/echoer.log"));

    let found = b.discover(&project).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].handle, handles[0]);
    assert_eq!(found[0].spec_hash.as_deref(), Some(s.spec_hash().as_str()));

    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
    assert!(!alive(*pid), "stopped and reaped");
    assert!(b.discover(&project).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_command_is_binary_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let s = spec("ghost", &["/nonexistent/definitely-not-here"]);
    let err = b
        .start(&s, &ctx(dir.path(), &project("missing")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackendError::BinaryNotFound { .. }),
        "{err:?}"
    );
    let code = miette::Diagnostic::code(&err).unwrap().to_string();
    assert_eq!(code, "deploy_code::E003");
}

#[tokio::test]
async fn an_exited_child_reports_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let s = spec("quitter", &["sh", "-c", "exit 3"]);
    let handles = b
        .start(&s, &ctx(dir.path(), &project("exited")))
        .await
        .unwrap();
    let mut l = Liveness::Running;
    for _ in 0..200 {
        l = b.liveness(&handles[0]).await;
        if l != Liveness::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(l, Liveness::Exited(Some(3)));
    assert!(!alive(pid_of(&handles[0])), "no zombie left");
}

#[tokio::test]
async fn replicas_are_separate_processes_with_their_own_logs() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let mut s = spec(
        "multi",
        &[
            "sh",
            "-c",
            "echo replica $DEPLOY_CODE_REPLICA; exec sleep 30",
        ],
    );
    s.replicas = 3;
    let handles = b
        .start(&s, &ctx(dir.path(), &project("replicas")))
        .await
        .unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    assert_eq!(handles.len(), 3);
    for (i, h) in handles.iter().enumerate() {
        assert!(log_of(h).ends_with(format!("logs/multi-{i}.log")));
        // Each replica writes its line once it runs.
        let mut lines = b.logs(h, 5).await;
        for _ in 0..200 {
            if !lines.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            lines = b.logs(h, 5).await;
        }
        assert_eq!(lines, vec![format!("replica {i}")]);
    }
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
    for h in &handles {
        assert!(!alive(pid_of(h)));
    }
}

#[tokio::test]
async fn a_handle_with_another_start_time_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let s = spec("victim", &["sleep", "30"]);
    let handles = b
        .start(&s, &ctx(dir.path(), &project("recycled")))
        .await
        .unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    let Handle::Process {
        replica,
        pid,
        start_time,
        log_path,
    } = handles[0].clone()
    else {
        panic!()
    };
    let impostor = Handle::Process {
        replica,
        pid,
        start_time: start_time + 12345,
        log_path,
    };
    assert_eq!(b.liveness(&impostor).await, Liveness::Missing);
    b.stop(&[impostor], Duration::from_millis(200))
        .await
        .unwrap();
    assert!(alive(pid), "a pid whose start time differs is left alone");
    b.stop(&handles, Duration::from_secs(2)).await.unwrap();
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let b = ProcessBackend::new();
    let s = spec(
        "stubborn",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo trapped; while true; do sleep 0.05; done",
        ],
    );
    let handles = b
        .start(&s, &ctx(dir.path(), &project("stubborn")))
        .await
        .unwrap();
    let _reaper = Reaper(handles.iter().map(pid_of).collect());
    // SIGTERM only once the shell ignores it.
    while b.logs(&handles[0], 5).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = std::time::Instant::now();
    b.stop(&handles, Duration::from_millis(300)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(!alive(pid_of(&handles[0])));
}
