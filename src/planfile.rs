//! Saved plan files on disk: written with mode 0600 and synced, read back and
//! checked by [`crate::plan::saved`] (which does no I/O).

use std::io::Write;
use std::path::Path;

use crate::error::{Code, Plain};
use crate::plan::Plan;
use crate::plan::saved::{decode, encode};

/// Writes the plan to `path` with mode 0600.
pub fn write(path: &Path, plan: &Plan) -> Result<(), Plain> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| {
        Plain::new(
            Code::E016,
            format!("cannot write the plan to `{}`: {e}", path.display()),
        )
        .help("check that the directory exists and is writable")
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
pub fn read(path: &Path) -> Result<Plan, Plain> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Plain::new(
            Code::E016,
            format!("cannot read the plan `{}`: {e}", path.display()),
        )
        .help("give the file written by `deploy-code plan --out FILE`")
    })?;
    decode(&text, &path.display().to_string())
}
