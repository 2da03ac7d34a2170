//! Files the store must refuse, and leave exactly as they were.

use std::os::unix::fs::PermissionsExt;

use deploy_code::state::{self, StateError, Store};

use super::common::*;

fn assert_untouched(path: &std::path::Path, before: &[u8]) {
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file was modified"
    );
    for suffix in ["-wal", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        assert!(!std::path::Path::new(&p).exists(), "{suffix} was created");
    }
}

#[test]
fn an_empty_file_is_migrated_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::File::create(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(state::load_snapshot(&path).unwrap().schema_version, 0);
    let store = Store::open(&path, &holder("t"), None).unwrap();
    assert_eq!(
        store.snapshot().unwrap().schema_version,
        state::SCHEMA_VERSION
    );
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(app, state::APPLICATION_ID);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in [
        "deployments",
        "events",
        "intents",
        "lock",
        "meta",
        "services",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "missing table {t}: {tables:?}"
        );
    }
}

#[test]
fn a_foreign_sqlite_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path, &holder("t"), None).unwrap_err();
    assert!(matches!(err, StateError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("not a deploy-code state"), "{err}");
    let err = state::load_snapshot(&path).unwrap_err();
    assert!(matches!(err, StateError::Foreign { .. }), "{err:?}");
    assert_untouched(&path, &before);

    let out = bin()
        .args(["--state", path.to_str().unwrap(), "state", "rm", "api"])
        .assert()
        .code(1);
    let stderr = flat(&String::from_utf8_lossy(&out.get_output().stderr));
    assert!(stderr.contains("E012"), "{stderr}");
    assert_untouched(&path, &before);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for content in [
        &b"hi"[..],
        &b"this is a YAML file, not a database at all\n"[..],
    ] {
        let path = dir.path().join("state.db");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Store::open(&path, &holder("t"), None).unwrap_err();
        assert!(matches!(err, StateError::NotSqlite { .. }), "{err:?}");
        let err = state::load_snapshot(&path).unwrap_err();
        assert!(matches!(err, StateError::NotSqlite { .. }), "{err:?}");
        assert_untouched(&path, content);
    }
}

#[test]
fn a_state_from_a_newer_version_is_refused_and_never_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api"]);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path, &holder("t"), None).unwrap_err();
    match &err {
        StateError::Newer {
            found, supported, ..
        } => {
            assert_eq!(*found, 99);
            assert_eq!(*supported, state::SCHEMA_VERSION);
        }
        other => panic!("{other:?}"),
    }
    let err = state::load_snapshot(&path).unwrap_err();
    assert!(matches!(err, StateError::Newer { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn a_state_that_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api"]);
    for mode in [0o666, 0o620, 0o602] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = Store::open(&path, &holder("t"), None).unwrap_err();
        assert!(
            matches!(err, StateError::UnsafePermissions { mode: m, .. } if m == mode),
            "{err:?}"
        );
        assert!(state::load_snapshot(&path).is_err());
    }
    let out = bin()
        .args(["--state", path.to_str().unwrap(), "state", "list"])
        .assert()
        .code(1);
    let stderr = flat(&String::from_utf8_lossy(&out.get_output().stderr));
    assert!(
        stderr.contains("E012") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(state::load_snapshot(&path).unwrap().services.len(), 1);
}

#[test]
fn reading_never_writes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api", "db"]);
    let before = std::fs::read(&path).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let snap = state::load_snapshot(&path).unwrap();
    assert_eq!(snap.services.len(), 2);
    state::history(&path, 5).unwrap();
    state::events(&path, None, 5).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
}
