//! The busybox test image: `FROM scratch` + Debian's static busybox +
//! `/www/health`, built once per test binary.

use std::process::Command;
use std::sync::OnceLock;

pub const IMAGE: &str = "deploy-code-test-busybox:1";
pub const IMAGE_WITH_HEALTHCHECK: &str = "deploy-code-test-busybox-healthcheck:1";

/// Builds [`IMAGE`] and [`IMAGE_WITH_HEALTHCHECK`] (whose HEALTHCHECK passes
/// while `/www/health` exists), once.
pub fn build() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy("/bin/busybox", dir.path().join("busybox"))
            .expect("busybox-static is installed (/bin/busybox)");
        std::fs::create_dir(dir.path().join("www")).unwrap();
        std::fs::write(dir.path().join("www/health"), "ok\n").unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nENTRYPOINT [\"/bin/busybox\"]\n",
        )
        .unwrap();
        docker_build(IMAGE, dir.path());
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM {IMAGE}\nHEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD [\"/bin/busybox\", \"test\", \"-f\", \"/www/health\"]\n"
            ),
        )
        .unwrap();
        docker_build(IMAGE_WITH_HEALTHCHECK, dir.path());
    });
}

fn docker_build(tag: &str, dir: &std::path::Path) {
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
