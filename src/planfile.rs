//! Saved plan files on disk: written with mode 0600 and synced, read back and
//! checked by [`crate::plan::saved`] (which does no I/O).

use std::io::Write;
use std::path::Path;

use crate::plan::Plan;
use crate::plan::saved::{SavedPlanError, decode, encode};

/// Writes the plan to `path` with mode 0600.
pub fn write(path: &Path, plan: &Plan) -> Result<(), SavedPlanError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |error: std::io::Error| SavedPlanError::Write {
        path: path.to_path_buf(),
        error,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(&encode(plan)).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Reads the saved plan at `path`.
pub fn read(path: &Path) -> Result<Plan, SavedPlanError> {
    let text = std::fs::read_to_string(path).map_err(|error| SavedPlanError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    decode(&text, &path.display().to_string())
}
