//! One file per group of commands: each takes an [`Invocation`] (the
//! resolved global options, the configuration loaded once, the state path,
//! one async runtime, the backends, the [`Output`]) and a small typed
//! request, calls the engine and hands the results to `render`. They return
//! a [`CommandOutcome`] or a `Failure`; `cli` turns either into an exit code.
//! Nothing here reads a flag: `cli` resolves them before.

pub mod apply;
pub mod canary;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod state;
pub mod status;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::backends::Registry;
use crate::config::{self, LoadOptions, LoadedConfig};
use crate::error::{Code, Failure, Plain};
pub use crate::output::{Format, Output};

/// How a command that did not fail ended; `cli` maps it to the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Done (exit 0).
    Done,
    /// A plan with changes under `--detailed-exitcode` (exit 2).
    Changes,
    /// A plan that does not fit (exit 3).
    Infeasible,
    /// A check that found problems: `health`, `doctor` (exit 1).
    Problems,
}

/// The global options, resolved: what every command may need from the
/// command line and the environment.
#[derive(Clone, Debug, Default)]
pub struct Globals {
    /// The configuration file.
    pub config: PathBuf,
    pub vars: Vec<(String, String)>,
    pub var_files: Vec<PathBuf>,
    pub allow_empty: bool,
    /// `--state` (or `DEPLOY_CODE_STATE`).
    pub state: Option<PathBuf>,
    pub lock_timeout: Option<Duration>,
}

/// One run of one command: the resolved options, the configuration (loaded
/// at most once), the state path by the one rule, one async runtime and the
/// output. Built once, by `cli` or by the server for a call.
pub struct Invocation {
    pub globals: Globals,
    pub out: Output,
    /// The configuration as the command's options load it.
    strict: OnceLock<LoadedConfig>,
    /// The configuration as a reader of the state loads it (no services
    /// needed), or `None` when it does not load.
    lenient: OnceLock<Option<LoadedConfig>>,
    state: OnceLock<PathBuf>,
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl Invocation {
    pub fn new(globals: Globals, out: Output) -> Self {
        Self {
            globals,
            out,
            strict: OnceLock::new(),
            lenient: OnceLock::new(),
            state: OnceLock::new(),
            runtime: OnceLock::new(),
        }
    }

    /// The configuration file's path.
    pub(crate) fn config_path(&self) -> &Path {
        &self.globals.config
    }

    pub fn format(&self) -> Format {
        self.out.format()
    }

    /// What loading the configuration takes from the options.
    pub(crate) fn load_options(&self) -> LoadOptions {
        LoadOptions {
            path: self.globals.config.clone(),
            vars: self.globals.vars.clone(),
            var_files: self.globals.var_files.clone(),
            allow_empty: self.globals.allow_empty,
        }
    }

    /// The configuration, loaded once; its problems are the command's failure.
    pub fn config(&self) -> Result<&LoadedConfig, Failure> {
        if let Some(l) = self.strict.get() {
            return Ok(l);
        }
        let loaded = config::load(&self.load_options())?;
        Ok(self.strict.get_or_init(|| loaded))
    }

    /// The configuration as far as a reader of the state needs it (its
    /// `state.path` and project, and its secrets, which output must redact),
    /// or `None` when it does not load: reading the state needs no services.
    pub(crate) fn config_for_reading(&self) -> Option<&LoadedConfig> {
        if let Some(l) = self.strict.get() {
            return Some(l);
        }
        self.lenient
            .get_or_init(|| {
                config::load(&LoadOptions {
                    allow_empty: true,
                    ..self.load_options()
                })
                .ok()
            })
            .as_ref()
    }

    /// The state file, by the one rule: `--state` (or `DEPLOY_CODE_STATE`),
    /// else the configuration's `state.path`, else `.deploy-code/state.db`
    /// beside the configuration.
    pub fn state_path(&self) -> &Path {
        self.state.get_or_init(|| {
            config::state_path(
                self.globals.state.as_deref(),
                self.config_for_reading(),
                &self.globals.config,
            )
        })
    }

    /// The one async runtime of this command: two worker threads, unless the
    /// command asked for [`Invocation::runtime_on_this_thread`] first.
    pub fn runtime(&self) -> Result<&tokio::runtime::Runtime, Failure> {
        self.runtime_from(|| {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        })
    }

    /// The runtime for a command that awaits one thing at a time and spawns
    /// no task (`plan`): it runs everything on the calling thread and starts
    /// no worker thread, which saves a `plan` about half a millisecond of
    /// thread start-up and shutdown. Later [`Invocation::runtime`] calls
    /// return this one.
    pub(crate) fn runtime_on_this_thread(&self) -> Result<&tokio::runtime::Runtime, Failure> {
        self.runtime_from(tokio::runtime::Builder::new_current_thread)
    }

    fn runtime_from(
        &self,
        builder: impl FnOnce() -> tokio::runtime::Builder,
    ) -> Result<&tokio::runtime::Runtime, Failure> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = builder().enable_all().build().map_err(|e| {
            Failure::from(Plain::new(
                Code::E016,
                format!("cannot start the async runtime: {e}"),
            ))
        })?;
        Ok(self.runtime.get_or_init(|| rt))
    }

    /// The backends a configuration and a state need: processes always,
    /// Docker and Swarm when a service of either uses them.
    pub fn backends(
        &self,
        loaded: Option<&LoadedConfig>,
        snap: Option<&crate::state::Snapshot>,
    ) -> Registry {
        let mut kinds = Vec::new();
        if let Some(l) = loaded {
            kinds.push(l.desired.settings.default_backend);
            kinds.extend(l.desired.services.values().map(|s| s.backend));
        }
        if let Some(s) = snap {
            kinds.extend(s.services.values().map(|r| r.backend));
        }
        Registry::for_kinds(kinds)
    }
}

/// What a plan covers; shared by `plan`, `apply`, `destroy`.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub targets: Vec<String>,
    pub excludes: Vec<String>,
    pub replaces: Vec<String>,
    /// Compare with what really runs.
    pub refresh: bool,
    /// Feasibility against this inventory file instead of a probe.
    pub inventory: Option<PathBuf>,
}

impl Scope {
    /// Everything, refreshed.
    pub(crate) fn refreshed() -> Self {
        Self {
            refresh: true,
            ..Self::default()
        }
    }
}
