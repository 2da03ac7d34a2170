//! The README's first command and the getting-started tour, run exactly as
//! written (read from the documents themselves), in a fresh temporary
//! directory with `deploy-code` on the `PATH`, as a newcomer runs them.
//!
//! The quickstart numbers its ports from `variables.base_port`; the tour
//! moves them to free ports of its own through `DEPLOY_CODE_VAR_BASE_PORT`,
//! so that it passes beside a quickstart the reader still runs.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The lines of the fenced blocks of `text` whose info string is `lang`.
fn blocks(text: &str, lang: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) if info.trim() == lang => current = Some(Vec::new()),
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some(b), None) => b.push(line.to_owned()),
            _ => {}
        }
    }
    out
}

/// A shell command without its trailing `# comment`.
fn command(line: &str) -> String {
    match line.find("  #") {
        Some(i) => line[..i].trim().to_owned(),
        None => line.trim().to_owned(),
    }
}

struct Shell {
    path: String,
    tour: PathBuf,
    base_port: u16,
}

impl Shell {
    /// Runs one line of the documents; a shell that cannot start is a failed
    /// line (exit -1), never a panic, since guards run this while unwinding.
    fn run(&self, dir: &Path, cmd: &str) -> (i32, String) {
        let cmd = cmd.replace("/tmp/tour", &self.tour.display().to_string());
        let out = match Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(dir)
            .env("PATH", &self.path)
            .env("DEPLOY_CODE_VAR_BASE_PORT", self.base_port.to_string())
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            .output()
        {
            Ok(out) => out,
            Err(e) => return (-1, format!("$ {cmd}\ncannot start sh: {e}\n")),
        };
        (
            out.status.code().unwrap_or(-1),
            format!(
                "$ {cmd}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// Stops what the tour started, whatever happened.
struct Guard<'a> {
    shell: &'a Shell,
    home: PathBuf,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = self.shell.run(
            &self.home,
            "deploy-code -c examples/quickstart/deploy-code.yaml destroy --auto-approve",
        );
        let _ = self
            .shell
            .run(&self.shell.tour, "deploy-code destroy --auto-approve");
    }
}

#[test]
fn the_readme_and_the_tour_work_as_written() {
    let home = tempfile::tempdir().unwrap();
    let quickstart = home.path().join("examples/quickstart");
    std::fs::create_dir_all(&quickstart).unwrap();
    std::fs::copy(
        Path::new(ROOT).join("examples/quickstart/deploy-code.yaml"),
        quickstart.join("deploy-code.yaml"),
    )
    .unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_deploy-code"))
        .parent()
        .unwrap();
    let shell = Shell {
        path: format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        tour: home.path().join("tour"),
        base_port: crate::support::free_ports(3),
    };
    let _guard = Guard {
        shell: &shell,
        home: home.path().to_path_buf(),
    };
    let mut transcript = String::new();
    let mut expect = |dir: &Path, cmd: &str, want: i32| {
        let (code, out) = shell.run(dir, cmd);
        transcript.push_str(&out);
        assert_eq!(code, want, "{transcript}");
    };

    // The README's first command (`cargo run --` builds and runs the binary
    // that is on the PATH here).
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let first = command(&blocks(&readme, "sh")[0][0]);
    let args = first
        .strip_prefix("cargo run -- ")
        .expect("the README starts with `cargo run -- ...`");
    expect(home.path(), &format!("deploy-code {args}"), 0);

    // The tour: the setup block, then every `$ ` line of the console blocks.
    let guide = std::fs::read_to_string(Path::new(ROOT).join("docs/getting-started.md")).unwrap();
    let setup = blocks(&guide, "sh")
        .into_iter()
        .find(|b| b.iter().any(|l| l.contains("/tmp/tour")))
        .expect("the tour's setup block");
    for line in &setup {
        let cmd = command(line);
        // `cd` moves the rest of the tour into the tour directory.
        let cmd = cmd
            .strip_suffix(" && cd /tmp/tour")
            .unwrap_or(&cmd)
            .to_owned();
        expect(home.path(), &cmd, 0);
    }
    assert!(shell.tour.join("deploy-code.yaml").exists());
    let mut ran = 0;
    for block in blocks(&guide, "console") {
        for line in block.iter().filter_map(|l| l.strip_prefix("$ ")) {
            let cmd = command(line);
            if cmd == "echo $?" {
                continue;
            }
            let want = if cmd.contains("APP_MODE=canary deploy-code apply") {
                4
            } else {
                0
            };
            expect(&shell.tour, &cmd, want);
            ran += 1;
        }
    }
    assert!(ran >= 9, "the tour has {ran} commands");
}
