//! Where the secret-digest key lives.
//!
//! Secrets are kept as keyed digests (HMAC-SHA256) so that a change is seen
//! without storing the secret. The key never travels with the digests: not in
//! the state database, not in backups, not in saved plans. It lives in
//!
//! - `DEPLOY_CODE_STATE_KEY` (64 hex digits), for CI runners that share a
//!   state: every runner is given the same key from the CI's secret store;
//! - otherwise the key file beside the state, `<state file>.key`, mode 0600,
//!   created with the state. One that group or others can read is refused.
//!
//! The state and saved plans record only the key's id (an HMAC of a fixed
//! text), so a wrong or missing key is named instead of making every secret
//! look changed. A state file or a plan file alone allows no offline guess of
//! a secret.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StateError;
use crate::model::SecretKey;

/// The variable that gives the key, as 64 hex digits.
pub const ENV: &str = "DEPLOY_CODE_STATE_KEY";

/// The key file of the state at `state`: `<state>.key`.
pub fn path_for(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".key");
    state.with_file_name(name)
}

/// The key's id: safe to store and to show.
pub fn id(key: &SecretKey) -> String {
    let d = key.digest("deploy-code state key id");
    format!("key:{}", &d[d.len() - 16..])
}

/// The key for the state at `state`: from the environment, else its key file.
/// `None` when neither is there.
pub fn load(state: &Path) -> Result<Option<SecretKey>, StateError> {
    if let Ok(hex) = std::env::var(ENV) {
        return SecretKey::from_hex(hex.trim())
            .map(Some)
            .ok_or_else(|| StateError::BadKey {
                path: state.to_path_buf(),
                detail: format!("`{ENV}` is not 64 hex digits"),
            });
    }
    let file = path_for(state);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::io("read", &file)(e)),
    };
    let mode = std::fs::metadata(&file)
        .map_err(StateError::io("read", &file))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateError::UnsafePermissions { path: file, mode });
    }
    SecretKey::from_hex(text.trim())
        .map(Some)
        .ok_or_else(|| StateError::BadKey {
            path: file,
            detail: "the key file does not hold 64 hex digits".into(),
        })
}

/// Keeps `key` for the state at `state`: writes the key file (0600) unless the
/// key comes from the environment or the file exists already.
pub fn store(state: &Path, key: &SecretKey) -> Result<(), StateError> {
    if std::env::var_os(ENV).is_some() {
        return Ok(());
    }
    let file = path_for(state);
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsperm::private_dir(dir)
            .map_err(StateError::io("create the directory of", &file))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
    {
        Ok(mut f) => f
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|_| writeln!(f, "{}", key.to_hex()))
            .and_then(|_| f.sync_all())
            .map_err(StateError::io("write", &file)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StateError::io("write", &file)(e)),
    }
}
