//! `validate`: render, parse and check the configuration; print one line.
//! `init`: write a starter configuration.

use super::{CommandOutcome, Format, Invocation};
use crate::error::Failure;
use crate::render::validate::ValidateDoc;

pub fn run(inv: &Invocation) -> Result<CommandOutcome, Failure> {
    let loaded = inv.config()?;
    let doc = ValidateDoc::of(inv.config_path().display().to_string(), &loaded.desired);
    let text = if inv.format() == Format::Json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).expect("JSON always serializes")
        )
    } else {
        doc.human(inv.out.color())
    };
    inv.out.data_lossy(&text);
    Ok(CommandOutcome::Done)
}

/// The starter configuration `init` writes: one local process with a health
/// check, commented with the keys a newcomer changes next.
pub(crate) const STARTER: &str = r#"# yaml-language-server: $schema=.deploy-code/deploy-code.schema.json
# deploy-code: declare services, review the change with `deploy-code plan`,
# make it so with `deploy-code apply`. Reference: docs/configuration.md.
version: "1.0.0"
project: hello            # names and marks everything this deployment starts

deployment:
  strategy: Hybrid        # phases in dependency order, services of a phase in parallel
  stop_grace_seconds: 5   # SIGTERM, then SIGKILL after this long

services:
  web:
    # A local process (the default backend); `image:` instead runs a container.
    command: python3
    args: ["-m", "http.server", "8000", "--bind", "127.0.0.1"]
    ports:
      - container_port: 8000   # for a process, also its host port
    health_check:
      endpoint: /              # GET http://127.0.0.1:8000/, healthy on 2xx
      interval_seconds: 2
    resources:
      cpu_cores: 0.25          # what `plan` checks against this host's capacity
      memory_mb: 64
"#;

/// `deploy-code init`: writes [`STARTER`] (and the JSON Schema it names, for
/// editors), refusing to overwrite, and says what to run next.
pub fn init(inv: &Invocation) -> Result<CommandOutcome, Failure> {
    let path = inv.config_path();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let refuse = |what: String| -> Failure {
        crate::error::Plain::new(crate::error::Code::E016, what)
            .help("keep your file; name another with `-c FILE`, or remove it first")
            .into()
    };
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(refuse(format!("`{}` exists already", path.display())));
        }
        Err(e) => return Err(refuse(format!("cannot write `{}`: {e}", path.display()))),
    };
    use std::io::Write;
    file.write_all(STARTER.as_bytes())
        .map_err(|e| refuse(format!("cannot write `{}`: {e}", path.display())))?;
    let schema_dir = dir.join(".deploy-code");
    if crate::fsperm::private_dir(&schema_dir).is_ok() {
        use std::os::unix::fs::OpenOptionsExt;
        let schema = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(schema_dir.join("deploy-code.schema.json"));
        if let Ok(mut f) = schema {
            let _ = f.write_all(crate::config::schema::json_schema_text().as_bytes());
        }
    }
    inv.out.data_lossy(&format!(
        "Wrote `{}`. Next: `deploy-code validate`, then `deploy-code plan` to see what `deploy-code apply` would start.\n",
        path.display()
    ));
    Ok(CommandOutcome::Done)
}
