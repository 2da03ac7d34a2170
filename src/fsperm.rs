//! Files and directories that deploy-code creates are private whatever the
//! umask: directories 0700, files 0600.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) as 0700; a directory that exists keeps
/// its mode when it is private already and is made private otherwise.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    make_private(dir)
}

/// Opens `path` for appending, creating it as 0600.
pub(crate) fn private_append(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    make_private(path)?;
    Ok(f)
}

/// Takes group and other bits off `path` (the umask may have left them on).
fn make_private(path: &Path) -> io::Result<()> {
    let current = fs::metadata(path)?.permissions().mode() & 0o777;
    if current & 0o077 != 0 {
        fs::set_permissions(path, Permissions::from_mode(current & 0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_files_and_dirs_are_private_under_a_wide_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        fs::create_dir_all(tmp.path().join("a")).unwrap();
        fs::set_permissions(tmp.path().join("a"), Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let f = dir.join("x.log");
        fs::write(&f, "").unwrap();
        fs::set_permissions(&f, Permissions::from_mode(0o666)).unwrap();
        private_append(&f).unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
