//! Real child processes: this test binary re-executed with `DEPLOY_CODE_TEST_ROLE`
//! acts as a lock holder or a writer; the tests race them, kill them with
//! SIGKILL and check what is left.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use deploy_code::model::SecretKey;
use deploy_code::state::{self, NewDeployment, Store};

use super::common::*;
use deploy_code::state::{EventKind, EventOutcome, IntentAction};

pub const ROLE_VAR: &str = "DEPLOY_CODE_TEST_ROLE";
const STATE_VAR: &str = "DEPLOY_CODE_TEST_STATE_FILE";

/// What a child does, by role. Prints `READY` once it holds the lock.
pub fn run_role(role: &str) {
    let path = PathBuf::from(std::env::var(STATE_VAR).expect("state path"));
    match role {
        "hold" => {
            let _store = Store::open(&path, &holder("test-holder"), None).unwrap();
            println!("READY");
            wait_for_stdin_eof();
        }
        "hold-umask0" => {
            // A separate process: changing its umask affects nothing else.
            unsafe { libc::umask(0) };
            let mut store = Store::open(&path, &holder("test-holder"), None).unwrap();
            store.ensure_identity(None).unwrap();
            let key = SecretKey::random();
            store.put_service(&record("api", &key, None, 1)).unwrap();
            println!("READY");
            wait_for_stdin_eof();
        }
        "race" => match Store::open(&path, &holder("test-race"), None) {
            Ok(_store) => {
                println!("WON {}", std::process::id());
                std::thread::sleep(Duration::from_millis(1500));
            }
            Err(e) => println!("LOST {e}"),
        },
        "writer" => writer(&path),
        other => panic!("unknown role {other}"),
    }
}

fn wait_for_stdin_eof() {
    let mut line = String::new();
    while std::io::stdin()
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}

/// Writes forever: intents, services, events, deployments.
fn writer(path: &Path) {
    let mut store =
        Store::open(path, &holder("test-writer"), Some(Duration::from_secs(10))).unwrap();
    store.ensure_identity(None).unwrap();
    let key = store.snapshot().unwrap().secret_key.unwrap();
    println!("READY");
    let mut i: u64 = 0;
    loop {
        let rev = store
            .begin_deployment(&NewDeployment {
                command: "test-writer".into(),
                config_snapshot: "x".repeat(4000),
                config_replay: String::new(),
                config_hash: format!("sha256:{i}"),
                plan_summary: serde_json::json!({"i": i}),
            })
            .unwrap();
        for s in 0..8 {
            let n = format!("svc-{s}");
            let id = store
                .record_intent(
                    rev,
                    &name(&n),
                    IntentAction::Start,
                    &serde_json::json!({"i": i}),
                )
                .unwrap();
            let mut rec = record(&n, &key, Some("writer-secret"), rev);
            rec.spec.labels.insert("i".into(), i.to_string());
            rec.spec_hash = rec.spec.spec_hash();
            store.put_service(&rec).unwrap();
            store
                .close_intent(id, "succeeded", &serde_json::json!({}))
                .unwrap();
            store
                .event(
                    rev,
                    Some(&name(&n)),
                    EventKind::Create,
                    EventOutcome::Succeeded,
                    "ok",
                )
                .unwrap();
        }
        store
            .finish_deployment(rev, state::Outcome::Succeeded, &serde_json::Value::Null)
            .unwrap();
        i += 1;
    }
}

pub struct Role {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
}

impl Role {
    pub fn spawn(role: &str, path: &Path) -> Role {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "state::child_process_entry",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ROLE_VAR, role)
            .env(STATE_VAR, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Role { child, stdout }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        self.expect_any(&[prefix])
    }

    /// Reads lines until one starts with one of `prefixes`; returns it.
    pub fn expect_any(&mut self, prefixes: &[&str]) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the child ended before printing {prefixes:?}");
            if prefixes.iter().any(|p| line.starts_with(p)) {
                return line.trim_end().to_owned();
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Closes its stdin (a holder then releases the lock and exits) and waits.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for Role {
    /// A test that fails half way still ends its children (by their own handle).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn state_files_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/.deploy-code/state.db");
    let mut child = Role::spawn("hold-umask0", &path);
    child.expect_line("READY");
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(Path::new(&wal).exists(), "the holder keeps a WAL open");
    assert_eq!(mode(Path::new(&wal)), 0o600);
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    assert_eq!(mode(Path::new(&shm)), 0o600);
    child.finish();
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn two_processes_race_for_the_lock_and_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api"]);
    let mut a = Role::spawn("race", &path);
    let mut b = Role::spawn("race", &path);
    let la = a.expect_any(&["WON", "LOST"]);
    let lb = b.expect_any(&["WON", "LOST"]);
    a.child.wait().unwrap();
    b.child.wait().unwrap();
    let (won, lost) = match (la.starts_with("WON"), lb.starts_with("WON")) {
        (true, false) => (la, lb),
        (false, true) => (lb, la),
        _ => panic!("expected exactly one winner: {la:?} / {lb:?}"),
    };
    let winner = won.trim_start_matches("WON ");
    assert!(lost.starts_with("LOST"), "{lost}");
    assert!(
        lost.contains("locked by `test-race`") && lost.contains(&format!("pid {winner} on host")),
        "{lost}"
    );
}

#[test]
fn the_cli_names_the_holder_of_a_held_lock_and_can_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api", "db"]);
    let mut holder = Role::spawn("hold", &path);
    holder.expect_line("READY");
    let out = bin()
        .args(["--state", path.to_str().unwrap(), "state", "rm", "api"])
        .assert()
        .code(1);
    let stderr = flat(&String::from_utf8_lossy(&out.get_output().stderr));
    assert!(stderr.contains("E011"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "locked by `test-holder` (pid {} on host",
            holder.pid()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("deploy-code state unlock"), "{stderr}");
    // `state unlock` without --force refuses a live holder.
    let out = bin()
        .args(["--state", path.to_str().unwrap(), "state", "unlock"])
        .assert()
        .code(1);
    let stderr = flat(&String::from_utf8_lossy(&out.get_output().stderr));
    assert!(
        stderr.contains("still running") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(state::load_snapshot(&path).unwrap().services.len(), 2);

    // With --lock-timeout the command waits for the holder to finish.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        holder.finish();
    });
    let started = Instant::now();
    bin()
        .args([
            "--state",
            path.to_str().unwrap(),
            "--lock-timeout",
            "20s",
            "state",
            "rm",
            "api",
        ])
        .assert()
        .success();
    assert!(started.elapsed() >= Duration::from_millis(500));
    releaser.join().unwrap();
    let snap = state::load_snapshot(&path).unwrap();
    assert_eq!(snap.services.len(), 1);
    assert!(snap.lock.is_none());
}

#[test]
fn the_lock_of_a_killed_holder_is_broken_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api"]);
    let holder = Role::spawn("hold", &path);
    let mut holder = holder;
    holder.expect_line("READY");
    let pid = holder.pid();
    assert_eq!(state::load_snapshot(&path).unwrap().lock.unwrap().pid, pid);
    holder.kill();
    let out = bin()
        .args(["--state", path.to_str().unwrap(), "state", "rm", "api"])
        .assert()
        .success();
    let stderr = flat(&String::from_utf8_lossy(&out.get_output().stderr));
    assert!(
        stderr.contains("breaking the lock") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    assert!(state::load_snapshot(&path).unwrap().services.is_empty());

    // `state unlock` (no --force) also releases a dead holder's lock.
    let mut holder = Role::spawn("hold", &path);
    holder.expect_line("READY");
    holder.kill();
    bin()
        .args(["--state", path.to_str().unwrap(), "state", "unlock"])
        .assert()
        .success()
        .stdout(predicates::str::contains("released the lock"));
    assert!(state::load_snapshot(&path).unwrap().lock.is_none());
}

#[test]
fn integrity_holds_after_a_writer_is_killed_mid_transaction_again_and_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut last_serial = 0;
    let mut interrupted_actions = 0;
    for round in 0..20u64 {
        let mut w = Role::spawn("writer", &path);
        w.expect_line("READY");
        std::thread::sleep(Duration::from_millis(30 + (round * 37) % 120));
        w.kill();
        assert_eq!(integrity(&path), "ok", "round {round}");
        let snap = state::load_snapshot(&path).unwrap();
        assert!(
            snap.serial >= last_serial,
            "round {round}: serial went back"
        );
        last_serial = snap.serial;
        interrupted_actions += usize::from(!snap.open_intents.is_empty());
        assert!(
            snap.lock.is_some(),
            "the killed writer's lock is still recorded"
        );
        // Every service row parses and matches its hash.
        for rec in snap.services.values() {
            assert_eq!(rec.spec.spec_hash(), rec.spec_hash);
        }
    }
    assert!(last_serial > 0, "the writers committed something");
    // About half the kills land between an intent and its close; none in 20
    // would mean the writer was not writing when it was killed.
    assert!(interrupted_actions > 0, "no kill interrupted an action");
    let store = Store::open(&path, &holder("t"), None).unwrap();
    assert_eq!(store.snapshot().unwrap().lock.unwrap().command, "t");
}

#[test]
fn a_backup_taken_while_another_process_writes_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut w = Role::spawn("writer", &path);
    w.expect_line("READY");
    let lineage = loop {
        if let Some(l) = state::load_snapshot(&path).unwrap().lineage {
            break l;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut serials = Vec::new();
    for i in 0..5 {
        let copy = dir.path().join(format!("backup-{i}.db"));
        bin()
            .args([
                "--state",
                path.to_str().unwrap(),
                "state",
                "backup",
                copy.to_str().unwrap(),
            ])
            .assert()
            .success()
            .stdout(predicates::str::contains("wrote a consistent copy"));
        assert_eq!(mode(&copy), 0o600);
        assert_eq!(integrity(&copy), "ok");
        let snap = state::load_snapshot(&copy).unwrap();
        assert_eq!(snap.lineage.as_deref(), Some(lineage.as_str()));
        serials.push(snap.serial);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The top-level `backup --state-out` is the same command.
    let copy = dir.path().join("top-level.db");
    bin()
        .args([
            "--state",
            path.to_str().unwrap(),
            "backup",
            "--state-out",
            copy.to_str().unwrap(),
        ])
        .assert()
        .success();
    assert_eq!(integrity(&copy), "ok");
    w.kill();
    assert!(serials.windows(2).all(|s| s[0] <= s[1]), "{serials:?}");
    assert!(
        serials.last() > serials.first(),
        "the writer kept writing: {serials:?}"
    );
    let _ = std::fs::Permissions::from_mode(0o600);
}
