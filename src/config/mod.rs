//! The configuration language: `deploy-code.yaml` is a minijinja template,
//! rendered (strict undefined), parsed as YAML with a location for every node,
//! checked against the schema (every problem at once, each with its span and a
//! help line) and lowered to [`crate::model::DesiredState`].

use std::path::{Path, PathBuf};

use crate::model::DesiredState;

/// What loading needs from the command line and the environment.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub path: PathBuf,
    /// `--var KEY=VALUE`, highest precedence.
    pub vars: Vec<(String, String)>,
    /// `--var-file FILE`, YAML mappings; later files win.
    pub var_files: Vec<PathBuf>,
}

/// A loaded, valid configuration.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// Absolute path of the config file.
    pub path: PathBuf,
    pub desired: DesiredState,
    /// The rendered YAML with every secret replaced by `(sensitive)`: safe to store
    /// in the state's history and to print.
    pub redacted_render: String,
}

impl LoadedConfig {
    /// The directory relative paths in the config resolve against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// `sha256:` over the redacted rendering plus every secret's digest under the
    /// current key: changes whenever the rendered configuration or a secret changes.
    /// Call after `desired.rekey(..)` so digests use the state's key.
    pub fn config_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.redacted_render.as_bytes());
        for spec in self.desired.services.values() {
            h.update(spec.spec_hash().as_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// Every problem found in a configuration, each a diagnostic with its span.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("the configuration is invalid")]
#[diagnostic(code("deploy_code::E002"))]
pub struct ConfigError {
    #[related]
    pub problems: Vec<miette::Report>,
}

/// Renders, parses, validates and lowers the configuration. Sensitive values are
/// digested under a provisional key; `desired.rekey(state_key)` re-digests them.
pub fn load(opts: &LoadOptions) -> Result<LoadedConfig, ConfigError> {
    let _ = opts;
    todo!()
}

/// The state file: `--state`/`DEPLOY_CODE_STATE`, else `state.path` from the
/// config, else `.deploy-code/state.db` beside the config.
pub fn state_path(
    explicit: Option<&Path>,
    loaded: Option<&LoadedConfig>,
    config_path: &Path,
) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = loaded.and_then(|l| l.desired.settings.state_path.clone()) {
        return p;
    }
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(".deploy-code").join("state.db")
}
