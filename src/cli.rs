//! The command line: every flag is defined once here (clap derive); help, the man
//! page and shell completions are generated from these definitions.
//!
//! The flags are read here and nowhere else: [`run`] resolves them into one
//! [`Invocation`] (options, output, configuration, state path, runtime) and a
//! typed request per command. This is the only module that picks the exit
//! code: commands return a [`CommandOutcome`] or a `Failure`, and [`run`]
//! reports the failure through the command's output.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::commands::apply::{
    ApplyRequest, CleanupRequest, DestroyRequest, RestartRequest, RollbackRequest,
};
use crate::commands::plan::PlanRequest;
use crate::commands::state::StateRequest;
use crate::commands::status::{LogsRequest, StatusRequest};
use crate::commands::{self, CommandOutcome, Globals, Invocation, Scope};
use crate::error::{Failure, exit};
pub use crate::output::Format;
use crate::output::Output;

/// Declare services in YAML; plan the change; apply it phase by phase, with
/// health gates and automatic rollback.
#[derive(Debug, Parser)]
#[command(
    name = "deploy-code",
    version,
    about = "Declarative plan/apply deployments for services: local processes, Docker and Docker Swarm",
    long_about = "deploy-code deploys services the way Terraform deploys infrastructure: declare them in \
deploy-code.yaml, review the change with `plan`, execute it with `apply`. The state of what is deployed \
lives in a SQLite file; `apply` runs the change set phase by phase, proves each phase healthy and rolls \
the whole change set back when anything fails.",
    after_help = "Examples:\n  deploy-code validate\n  deploy-code plan --out release.plan\n  deploy-code apply release.plan\n  deploy-code state show\n\nExit codes: 0 ok, 1 error, 2 changes (plan --detailed-exitcode), 3 infeasible, 4 failed and rolled back, 5 rollback incomplete.",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The configuration file
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        env = "DEPLOY_CODE_CONFIG",
        default_value = "deploy-code.yaml",
        value_name = "FILE"
    )]
    pub config: PathBuf,

    /// Set a template variable (repeatable); overrides --var-file and DEPLOY_CODE_VAR_<NAME>
    #[arg(long = "var", global = true, value_name = "KEY=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,

    /// Read template variables from a YAML mapping (repeatable; later files win)
    #[arg(long = "var-file", global = true, value_name = "FILE")]
    pub var_files: Vec<PathBuf>,

    /// Accept a configuration with no services (an apply then destroys everything the state records)
    #[arg(long, global = true)]
    pub allow_empty: bool,

    /// The state file [default: `state.path` from the config, else .deploy-code/state.db beside it]
    #[arg(
        long = "state",
        global = true,
        env = "DEPLOY_CODE_STATE",
        value_name = "FILE"
    )]
    pub state: Option<PathBuf>,

    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// No colour in output (also when NO_COLOR is set or output is not a terminal)
    #[arg(long, global = true)]
    pub no_color: bool,

    /// More detail on stderr (repeat for more)
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors and the final result
    #[arg(short = 'q', long = "quiet", global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// How long to wait for the state lock held by another run, e.g. `30s`, `2m` [default: fail at once]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter `deploy-code.yaml` (never over an existing file)
    #[command(
        after_help = "Examples:\n  deploy-code init\n  deploy-code -c services/deploy-code.yaml init\n\nThen: deploy-code validate, deploy-code plan, deploy-code apply."
    )]
    Init(InitArgs),

    /// Check the configuration: render the template, parse, validate; report every problem
    #[command(
        after_help = "Examples:\n  deploy-code validate\n  deploy-code -c prod.yaml --var replicas=3 validate\n  deploy-code validate --format json"
    )]
    Validate(ValidateArgs),

    /// Show what apply would change, in phases, with resource and GPU feasibility
    #[command(
        after_help = "Examples:\n  deploy-code plan\n  deploy-code plan --out release.plan\n  deploy-code plan --inventory host.yaml --format markdown --detailed-exitcode\n  deploy-code plan --target api_gateway --replace auth_service\n\nExit codes with --detailed-exitcode: 0 no changes, 1 error, 2 changes, 3 infeasible."
    )]
    Plan(PlanArgs),

    /// Execute a plan phase by phase with health gates; roll back on failure
    #[command(
        visible_alias = "deploy",
        after_help = "Examples:\n  deploy-code apply\n  deploy-code apply --auto-approve\n  deploy-code apply release.plan\n  deploy-code deploy --target auth_service --auto-approve\n\nExit codes: 0 ok, 1 error before any change, 3 infeasible, 4 failed and rolled back, 5 rollback incomplete."
    )]
    Apply(ApplyArgs),

    /// Remove everything the state records, dependents first
    #[command(
        visible_alias = "stop",
        after_help = "Examples:\n  deploy-code destroy --auto-approve\n  deploy-code stop --target redis --auto-approve"
    )]
    Destroy(DestroyArgs),

    /// Render a saved plan file
    #[command(
        after_help = "Examples:\n  deploy-code show release.plan\n  deploy-code show release.plan --format json"
    )]
    Show(ShowArgs),

    /// Live status of each deployed service: pid or container, health, uptime, traffic switches
    #[command(
        after_help = "Examples:\n  deploy-code status\n  deploy-code status --detailed\n  deploy-code status --watch\n\nA service behind traffic switches has a line per switch (port, pid, live set, counters); during a canary, also the canary group, the weight in force, whether the step waits for `deploy-code promote` or `deploy-code abort`, and the canary group's counters."
    )]
    Status(StatusArgs),

    /// Probe every deployed service's health check once
    #[command(after_help = "Examples:\n  deploy-code health\n  deploy-code health --format yaml")]
    Health(HealthArgs),

    /// Print a service's log
    #[command(
        after_help = "Examples:\n  deploy-code logs api_gateway\n  deploy-code logs api_gateway --lines 200 --follow"
    )]
    Logs(LogsArgs),

    /// Re-apply the configuration of an earlier successful revision
    #[command(
        after_help = "Examples:\n  deploy-code rollback\n  deploy-code rollback --to 3 --auto-approve\n\nWithin the window of a BlueGreen rollout's kept old set (deployment.blue_green.keep_seconds), the traffic switch flips back to the kept instances at once, without a restart."
    )]
    Rollback(RollbackArgs),

    /// Replace the given services (apply with --replace)
    #[command(
        after_help = "Examples:\n  deploy-code restart --services auth_service,api_gateway --auto-approve"
    )]
    Restart(RestartArgs),

    /// Remove processes and containers of this project that the state does not know
    #[command(
        after_help = "Examples:\n  deploy-code cleanup --dry-run\n  deploy-code cleanup --auto-approve"
    )]
    Cleanup(CleanupArgs),

    /// Finish the canary in progress: skip its remaining pauses; the new set takes every connection
    #[command(
        after_help = "Examples:\n  deploy-code promote\n  deploy-code promote web\n\nActs on the `apply` run of a `strategy: Canary` rollout that waits at one of its steps (another process); exit 1 when no canary is in progress."
    )]
    Promote(CanaryArgs),

    /// Fail the canary in progress: every connection back to the old set, the change set rolls back
    #[command(
        after_help = "Examples:\n  deploy-code abort\n  deploy-code abort web\n\nThe `apply` run that holds the canary then exits 4 (rolled back); exit 1 here when no canary is in progress."
    )]
    Abort(CanaryArgs),

    /// Print this host's capacity (CPU, memory, disk, GPUs, ports) as an inventory file
    #[command(
        after_help = "Examples:\n  deploy-code inventory > host.yaml\n  deploy-code plan --inventory host.yaml"
    )]
    Inventory(InventoryArgs),

    /// Inspect and maintain the state file
    #[command(subcommand)]
    State(StateCommand),

    /// Consistent copy of the state file (same as `state backup`)
    #[command(after_help = "Examples:\n  deploy-code backup --state-out backup.db")]
    Backup(BackupArgs),

    /// Print the Prometheus exposition of what the state knows
    #[command(after_help = "Examples:\n  deploy-code metrics")]
    Metrics(MetricsArgs),

    /// Check the environment: state, lock, Docker, GPUs, directories
    #[command(after_help = "Examples:\n  deploy-code doctor")]
    Doctor(DoctorArgs),

    /// Serve this configuration and state over gRPC (validate, plan, apply, status, events...)
    #[command(
        after_help = "Examples:\n  deploy-code serve\n  deploy-code serve --listen 127.0.0.1:18401\n  JWT_SECRET=... deploy-code -c prod.yaml serve --listen 0.0.0.0:8401\n\nTLS, tokens and roles come from `security:` in the configuration; see docs/serve.md."
    )]
    Serve(ServeArgs),

    /// Print shell completions
    #[command(
        after_help = "Examples:\n  deploy-code completions bash > /etc/bash_completion.d/deploy-code\n  deploy-code completions zsh > ~/.zfunc/_deploy-code"
    )]
    Completions(CompletionsArgs),

    /// Print the man page (roff)
    #[command(after_help = "Examples:\n  deploy-code man > deploy-code.1 && man ./deploy-code.1")]
    Man(ManArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {}

/// The flags that choose what a plan covers; shared by `plan`, `apply`, `destroy`.
#[derive(Debug, Clone, Default, Args)]
pub struct PlanScope {
    /// Plan only this service and what it depends on (repeatable)
    #[arg(long = "target", value_name = "SERVICE")]
    pub targets: Vec<String>,

    /// Leave this service out of the plan (repeatable)
    #[arg(long = "exclude", value_name = "SERVICE")]
    pub excludes: Vec<String>,

    /// Force a replace of this service even if unchanged (repeatable)
    #[arg(long = "replace", value_name = "SERVICE")]
    pub replaces: Vec<String>,

    /// Compare with what is really running (processes, containers) and plan repairs of drift
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub refresh: bool,

    /// Same as --refresh=false: work from the state file alone
    #[arg(long, conflicts_with = "refresh")]
    pub no_refresh: bool,

    /// Check feasibility against this inventory file instead of probing this host
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
}

impl PlanScope {
    pub fn refresh(&self) -> bool {
        self.refresh && !self.no_refresh
    }

    /// What the flags ask the plan to cover.
    fn resolve(&self) -> Scope {
        Scope {
            targets: self.targets.clone(),
            excludes: self.excludes.clone(),
            replaces: self.replaces.clone(),
            refresh: self.refresh(),
            inventory: self.inventory.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub scope: PlanScope,

    /// Plan to remove everything the state records
    #[arg(long)]
    pub destroy: bool,

    /// Save the plan, bound to the current state, for `apply FILE`
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Exit 0 for no changes, 2 for changes, 3 when infeasible (1 on error)
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// A plan saved by `plan --out`; executed exactly, or refused as stale
    #[arg(value_name = "PLAN_FILE")]
    pub plan_file: Option<PathBuf>,

    #[command(flatten)]
    pub scope: PlanScope,

    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long, short = 'y')]
    pub auto_approve: bool,

    /// Apply even when the plan is infeasible
    #[arg(long)]
    pub force: bool,

    /// On failure leave failed services as they are (tainted) instead of rolling back
    #[arg(long)]
    pub no_rollback: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DestroyArgs {
    /// Remove only these services (and what depends on them) (repeatable)
    #[arg(long = "target", value_name = "SERVICE")]
    pub targets: Vec<String>,

    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long, short = 'y')]
    pub auto_approve: bool,

    /// Seconds to wait for each service to stop before killing it
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    pub timeout: Option<u64>,

    /// Accepted for compatibility: destroy always covers every service in the state
    #[arg(long, hide = true)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The saved plan
    #[arg(value_name = "PLAN_FILE")]
    pub plan_file: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Also the spec hash, ports, health probe, log path and recent events
    #[arg(long)]
    pub detailed: bool,

    /// Refresh every interval until interrupted
    #[arg(long)]
    pub watch: bool,

    /// Seconds between refreshes with --watch
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_seconds)]
    pub interval: u64,
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The service
    pub service: String,

    /// How many lines from the end
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,

    /// Keep printing new lines
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The revision to return to [default: the last successful one before the current]
    #[arg(long, value_name = "REVISION")]
    pub to: Option<u64>,

    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long, short = 'y')]
    pub auto_approve: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RestartArgs {
    /// Services to replace, comma-separated [default: all]
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub services: Vec<String>,

    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long, short = 'y')]
    pub auto_approve: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Only list what would be removed
    #[arg(long)]
    pub dry_run: bool,

    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long, short = 'y')]
    pub auto_approve: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CanaryArgs {
    /// The service whose canary to decide (needed only when more than one is in progress)
    pub service: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct InventoryArgs {}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Services with backend, status, revision and last change
    #[command(
        after_help = "Examples:\n  deploy-code state list\n  deploy-code state list --format json"
    )]
    List,
    /// The state's identity and lock, or one service's applied spec, handles and events
    #[command(
        after_help = "Examples:\n  deploy-code state show\n  deploy-code state show api_gateway\n  deploy-code state show --revision 3 --format json"
    )]
    Show(StateShowArgs),
    /// The deployment history, newest first
    #[command(after_help = "Examples:\n  deploy-code state history --limit 5")]
    History(StateHistoryArgs),
    /// The calls made to `deploy-code serve`: who, with which role, what, and the outcome
    #[command(
        after_help = "Examples:\n  deploy-code state audit --limit 20\n  deploy-code state audit --format json"
    )]
    Audit(StateHistoryArgs),
    /// Forget a service without touching what runs
    #[command(after_help = "Examples:\n  deploy-code state rm legacy_worker")]
    Rm(StateRmArgs),
    /// Write a consistent copy of the state file (SQLite backup API)
    #[command(
        after_help = "Examples:\n  deploy-code state backup /var/backups/deploy-code/state-$(date +%F).db"
    )]
    Backup(StateFileArgs),
    /// Replace the state file with a backup (guarded)
    #[command(
        after_help = "Examples:\n  deploy-code state restore state-2026-01-01.db\n  deploy-code state restore other.db --force"
    )]
    Restore(StateRestoreArgs),
    /// Release the state lock
    #[command(
        after_help = "Examples:\n  deploy-code state unlock\n  deploy-code state unlock --force"
    )]
    Unlock(StateUnlockArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StateShowArgs {
    /// A service to show
    pub service: Option<String>,

    /// What was deployed at this revision
    #[arg(long, value_name = "N")]
    pub revision: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct StateHistoryArgs {
    /// At most this many deployments
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
}

#[derive(Debug, Clone, Args)]
pub struct StateRmArgs {
    /// The service to forget
    pub service: String,
}

#[derive(Debug, Clone, Args)]
pub struct StateFileArgs {
    /// The file to write
    pub file: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct StateRestoreArgs {
    /// The backup to restore
    pub file: PathBuf,

    /// Restore even when the backup belongs to another lineage or is older
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StateUnlockArgs {
    /// Release the lock even when its holder is alive
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Where to write the copy of the state
    #[arg(long = "state-out", value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; a non-loopback one needs `security.auth`
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8401")]
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("expected KEY=VALUE, got `{s}`"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// A duration, in the one style of every flag that takes one: humantime's
/// (`500ms`, `30s`, `2m`, `1h30m`, `1h 30m`), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|e| format!("expected a duration such as 30s or 2m, got `{s}`: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 30s, 2m or 1h30m, got `{s}`: {e}"))
}

/// A duration flag held in whole seconds: what [`parse_duration`] reads,
/// rounded up to the next second.
pub fn parse_seconds(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    Ok(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

impl GlobalArgs {
    /// The options every command may need, resolved.
    fn globals(&self) -> Globals {
        Globals {
            config: self.config.clone(),
            vars: self.vars.clone(),
            var_files: self.var_files.clone(),
            allow_empty: self.allow_empty,
            state: self.state.clone(),
            lock_timeout: self.lock_timeout,
        }
    }

    /// The output, decided once from the flags and the environment.
    fn output(&self) -> Output {
        Output::terminal(self.format, self.quiet, self.verbose, self.no_color)
    }
}

/// Parses the arguments, runs the command and returns the exit code. Errors are
/// rendered here, as miette diagnostics (or JSON with `--format json`).
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::ERROR
            } else {
                exit::OK
            };
        }
    };
    let inv = Invocation::new(cli.global.globals(), cli.global.output());
    init_tracing(&inv.out);
    install_miette_handler(&inv.out);
    match dispatch(&inv, cli.command) {
        Ok(outcome) => exit_code(outcome),
        Err(failure) => {
            report_failure(&inv.out, &failure);
            failure.exit_code
        }
    }
}

/// The exit code of a command that did not fail.
fn exit_code(outcome: CommandOutcome) -> u8 {
    match outcome {
        CommandOutcome::Done => exit::OK,
        CommandOutcome::Changes => exit::CHANGES,
        CommandOutcome::Infeasible => exit::INFEASIBLE,
        CommandOutcome::Problems => exit::ERROR,
    }
}

fn dispatch(inv: &Invocation, command: Command) -> Result<CommandOutcome, Failure> {
    match command {
        Command::Init(_) => commands::validate::init(inv),
        Command::Validate(_) => commands::validate::run(inv),
        Command::Plan(a) => commands::plan::run(
            inv,
            &PlanRequest {
                scope: a.scope.resolve(),
                destroy: a.destroy,
                out: a.out,
                detailed_exitcode: a.detailed_exitcode,
            },
        ),
        Command::Apply(a) => commands::apply::run(
            inv,
            &ApplyRequest {
                plan_file: a.plan_file,
                scope: a.scope.resolve(),
                auto_approve: a.auto_approve,
                force: a.force,
                no_rollback: a.no_rollback,
            },
        ),
        Command::Destroy(a) => commands::apply::destroy(
            inv,
            &DestroyRequest {
                targets: a.targets,
                auto_approve: a.auto_approve,
            },
        ),
        Command::Show(a) => commands::plan::show(inv, &a.plan_file),
        Command::Status(a) => commands::status::status(
            inv,
            &StatusRequest {
                detailed: a.detailed,
                watch: a.watch,
                interval: std::time::Duration::from_secs(a.interval),
            },
        ),
        Command::Health(_) => commands::status::health(inv),
        Command::Logs(a) => commands::status::logs(
            inv,
            &LogsRequest {
                service: a.service,
                lines: a.lines,
                follow: a.follow,
            },
        ),
        Command::Rollback(a) => commands::apply::rollback(
            inv,
            &RollbackRequest {
                to: a.to,
                auto_approve: a.auto_approve,
            },
        ),
        Command::Restart(a) => commands::apply::restart(
            inv,
            &RestartRequest {
                services: a.services,
                auto_approve: a.auto_approve,
            },
        ),
        Command::Cleanup(a) => commands::apply::cleanup(
            inv,
            &CleanupRequest {
                dry_run: a.dry_run,
                auto_approve: a.auto_approve,
            },
        ),
        Command::Promote(a) => commands::canary::decide(
            inv,
            a.service.as_deref(),
            commands::canary::Decision::Promote,
        ),
        Command::Abort(a) => {
            commands::canary::decide(inv, a.service.as_deref(), commands::canary::Decision::Abort)
        }
        Command::Inventory(_) => commands::plan::inventory(inv),
        Command::State(c) => commands::state::run(inv, &state_request(c)),
        Command::Backup(a) => commands::state::run(inv, &StateRequest::Backup { file: a.out }),
        Command::Metrics(_) => commands::ops::metrics(inv),
        Command::Doctor(_) => commands::ops::doctor(inv),
        Command::Serve(a) => crate::serve::run(inv, a.listen),
        Command::Completions(a) => {
            let mut cmd = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "deploy-code", &mut out);
            inv.out.bytes(&out)?;
            Ok(CommandOutcome::Done)
        }
        Command::Man(_) => {
            let man = clap_mangen::Man::new(Cli::command());
            let mut out = Vec::new();
            man.render(&mut out)
                .map_err(|e| crate::error::Plain::new(crate::error::Code::E016, e.to_string()))?;
            inv.out.bytes(&out)?;
            Ok(CommandOutcome::Done)
        }
    }
}

fn state_request(c: StateCommand) -> StateRequest {
    match c {
        StateCommand::List => StateRequest::List,
        StateCommand::Show(a) => StateRequest::Show {
            service: a.service,
            revision: a.revision,
        },
        StateCommand::History(a) => StateRequest::History { limit: a.limit },
        StateCommand::Audit(a) => StateRequest::Audit { limit: a.limit },
        StateCommand::Rm(a) => StateRequest::Rm { service: a.service },
        StateCommand::Backup(a) => StateRequest::Backup { file: a.file },
        StateCommand::Restore(a) => StateRequest::Restore {
            file: a.file,
            force: a.force,
        },
        StateCommand::Unlock(a) => StateRequest::Unlock { force: a.force },
    }
}

fn init_tracing(out: &Output) {
    let level = if out.quiet() {
        "error"
    } else {
        match out.verbose() {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEPLOY_CODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("deploy_code={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::output::log_writer)
        .with_ansi(out.color())
        .without_time()
        .with_target(false)
        .try_init();
}

fn install_miette_handler(out: &Output) {
    let color = out.color();
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .color(color)
                .unicode(color)
                .terminal_links(false)
                .width(100)
                .build(),
        )
    }));
}

fn report_failure(out: &Output, failure: &Failure) {
    if out.format() == Format::Json {
        let doc = crate::render::diagnostics_json(failure.report.as_ref());
        out.data_lossy(&format!("{doc}\n"));
    } else {
        out.error(&crate::render::diagnostic_human(&failure.report));
    }
}
