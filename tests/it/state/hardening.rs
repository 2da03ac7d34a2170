//! What the state refuses and where its key lives: the digest key never in
//! the database, a backup or a plan; a damaged file refused before anything
//! is written; the same permission rule for the file and its companions.

use std::os::unix::fs::PermissionsExt;

use deploy_code::state::{self, Store, key};

use super::common::*;

/// The key lives in `<state>.key` (0600) and nowhere in the database or a
/// backup of it; the database records only the key's id.
#[test]
fn the_key_lives_beside_the_state_not_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let k = seed(&path, &["api"]);
    let file = key::path_for(&path);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), k.to_hex());
    let bytes = all_bytes(&path);
    let hexed = k.to_hex();
    assert!(
        !String::from_utf8_lossy(&bytes).contains(&hexed),
        "the key is not in the database"
    );
    let backup = dir.path().join("backup.db");
    state::backup(&path, &backup).unwrap();
    assert!(!String::from_utf8_lossy(&all_bytes(&backup)).contains(&hexed));
    // A backup alone reads (without its key, secrets cannot be compared).
    let snap = state::load_snapshot(&backup).unwrap();
    assert!(snap.secret_key.is_none());
    assert_eq!(snap.secret_key_id.as_deref(), Some(key::id(&k).as_str()));
    assert!(snap.require_key(&backup).is_err());
}

/// A state written before the key moved out keeps it in `meta`; its next
/// write moves it to the key file and leaves only the id behind.
#[test]
fn a_key_kept_in_the_database_moves_out_on_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let k = seed(&path, &["api"]);
    std::fs::remove_file(key::path_for(&path)).unwrap();
    {
        let conn = rusqlite_open(&path);
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('secret_key', ?1)",
            [k.to_hex()],
        )
        .unwrap();
        conn.execute("DELETE FROM meta WHERE key = 'secret_key_id'", [])
            .unwrap();
    }
    assert_eq!(
        state::load_snapshot(&path)
            .unwrap()
            .secret_key
            .unwrap()
            .to_hex(),
        k.to_hex(),
        "an old state still reads"
    );
    let mut store = Store::open(&path, &holder("deploy-code apply"), None).unwrap();
    store.ensure_identity(None).unwrap();
    drop(store);
    assert_eq!(
        std::fs::read_to_string(key::path_for(&path))
            .unwrap()
            .trim(),
        k.to_hex()
    );
    let conn = rusqlite_open(&path);
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM meta WHERE key = 'secret_key'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}

/// A key file others can read is refused; a wrong key is named.
#[test]
fn a_readable_or_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api"]);
    let file = key::path_for(&path);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = state::load_snapshot(&path).unwrap_err().to_string();
    assert!(err.contains("mode 644"), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&file, format!("{}\n", "ab".repeat(32))).unwrap();
    let err = state::load_snapshot(&path).unwrap_err().to_string();
    assert!(err.contains("the state was made with key:"), "{err}");
}

/// A damaged state is refused before anything is written: E012, the file
/// byte for byte as it was, no companion file created.
#[test]
fn a_damaged_state_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    seed(&path, &["api", "web"]);
    // Destroy a page in the middle of the file (the events table's root,
    // among others).
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(
        bytes.len() > 4 * page,
        "the seeded state has pages to damage"
    );
    for b in &mut bytes[3 * page..4 * page] {
        *b = 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let err = match Store::open(&path, &holder("deploy-code apply"), None) {
        Ok(_) => panic!("a damaged state was opened for writing"),
        Err(e) => e,
    };
    let code = miette::Diagnostic::code(&err).unwrap().to_string();
    assert_eq!(code, "deploy_code::E012", "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
    for suffix in ["-wal", "-shm"] {
        assert!(
            !std::path::Path::new(&format!("{}{suffix}", path.display())).exists(),
            "no {suffix} file was created"
        );
    }
}

/// The directory of a state, and its `-wal`, are held to the state's rule:
/// writable by group or others is refused.
#[test]
fn a_state_directory_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("shared");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("state.db");
    seed(&path, &["api"]);
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = match Store::open(&path, &holder("deploy-code apply"), None) {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("can be written by other users"), "{err}");
}

fn rusqlite_open(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}
