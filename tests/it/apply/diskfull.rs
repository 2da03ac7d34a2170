//! The state's disk fills up in the middle of an apply: the run cannot
//! record its rollback, ends with exit 5 and says what is left where, and the
//! next apply, once there is room again, repairs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::*;
use super::verdict::{Site, server_script, serves, wait_until};

/// A tmpfs mounted on a directory, detached on drop (lazily: an instance
/// still writing its log there does not keep it mounted).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_the_rollback_exits_5_and_the_next_apply_repairs() {
    let site = Site::new("diskfull");
    // The state, the logs and the monitors' files live on a small disk.
    let Some(_disk) = Tmpfs::mount(&site.dir.path().join(".deploy-code"), "16m") else {
        // Mounting needs root (CI runs the tests as root).
        crate::support::skip(
            "a_full_disk_during_the_rollback_exits_5_and_the_next_apply_repairs",
            "DEPLOY_CODE_REQUIRE_TOOLS",
            "cannot mount a tmpfs here (needs root)",
        );
        return;
    };
    let port = free_port();
    let arm = site.dir.path().join("arm");
    let fill = site.dir.path().join(".deploy-code/fill");
    let web = |version: &str, check: &str| {
        format!(
            "{}  web:\n    command: {}\n    args: [\"{}\", \"{port}\", \"{version}\"]\n    ports: [{{container_port: {port}}}]\n    health_check: {{{check}, interval_seconds: 1, timeout_seconds: 2, retries: 2}}\n",
            site.header(),
            python(),
            server_script(),
        )
    };
    site.write(&web("v1", "endpoint: /"));
    site.apply_ok();
    assert_eq!(serves(port).as_deref(), Some("version=v1"));

    // v2's check fills the disk while `arm` exists, and fails then: the
    // gate fails with the disk full, so every step of the rollback finds it
    // full too.
    let probe = format!(
        "command: [\"/bin/sh\", \"-c\", \"if [ -e {arm} ]; then dd if=/dev/zero of={fill} bs=65536 2>/dev/null; exit 1; fi; exit 0\"]",
        arm = arm.display(),
        fill = fill.display(),
    );
    site.write(&web("v2", &probe));
    std::fs::write(&arm, "").unwrap();
    let (code, out) = site.apply();
    assert_eq!(code, 5, "a rollback that could not be recorded: {out}");
    assert!(out.contains("E009"), "{out}");
    assert!(out.contains("left: "), "what is left where: {out}");
    assert!(
        out.contains("the state records `web`"),
        "what the state believes: {out}"
    );
    assert!(
        out.contains("still running") || out.contains("(running)"),
        "which instances run: {out}"
    );

    // Room again: the next apply repairs what the run left.
    std::fs::remove_file(&arm).unwrap();
    std::fs::remove_file(&fill).unwrap();
    let (code, out) = site.apply();
    assert_eq!(code, 0, "the next apply repairs: {out}");
    assert!(
        wait_until(std::time::Duration::from_secs(10), || serves(port)
            .as_deref()
            == Some("version=v2")),
        "v2 serves after the repair"
    );
    site.assert_consistent("after the repair");
    assert_eq!(site.plan_code(), 0, "nothing left to change");
    site.teardown();
}
