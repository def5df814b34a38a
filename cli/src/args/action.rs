//! The commands that act on a service: deploy, rollback, rollout, monitor, scale, maintenance.

use std::time::Duration;

use clap::{ArgGroup, Args as ClapArgs, ValueEnum};
use ferry_protocol::command::MAX_REPLICAS;
use ferry_protocol::{EnvName, HostName, ServiceName, Version};

use super::parse::*;

/// Following a command's events.
#[derive(Clone, Copy, Debug, ClapArgs)]
pub struct WaitArgs {
    /// Follow the command's events until the agent reports its outcome.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 4), e.g. 90s, 10m.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub wait_timeout: Duration,
}

/// Which hosts of the environment a command is for.
#[derive(Clone, Debug, Default, ClapArgs)]
pub struct HostsArgs {
    /// Only this host of the environment (repeat for several; default:
    /// every host).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<HostName>,
}

/// How analysis reaches a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AnalysisModeArg {
    /// A sequential test on every batch of requests.
    Sequential,
    /// The fixed rule: consecutive breached intervals.
    Intervals,
}

/// `ferry deploy`
#[derive(Debug, ClapArgs)]
pub struct DeployArgs {
    /// Service name.
    pub service: ServiceName,
    /// Version to deploy (must have been published).
    pub version: Version,
    /// Target environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    /// Replicas to run (default: the current count).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_REPLICAS)))]
    pub replicas: Option<u32>,
    /// Strategy for this deploy (default: the service's configured one).
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Canary: traffic percentages per step, e.g. 10,50,100.
    #[arg(long, value_delimiter = ',', requires = "strategy")]
    pub steps: Vec<u8>,
    /// Canary: seconds each step is held and analysed.
    #[arg(long, requires = "strategy")]
    pub step_secs: Option<u64>,
    /// Blue-green: seconds the old set stays for an instant rollback.
    #[arg(long, requires = "strategy")]
    pub keep_old_secs: Option<u64>,
    /// Rolling: replicas replaced per batch.
    #[arg(long, requires = "strategy")]
    pub batch_size: Option<u32>,
    /// Rolling: old replicas that may stop before their replacements are healthy.
    #[arg(long, requires = "strategy")]
    pub max_unavailable: Option<u32>,
    /// Analysis: error-rate threshold, percent (default 5).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Analysis: p95 threshold, ms (default 2000).
    #[arg(long)]
    pub max_p95_ms: Option<f64>,
    /// Analysis: interval, e.g. 5s (default 5s).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub analysis_interval: Option<Duration>,
    /// Analysis: `sequential` (default) or `intervals` (the fixed rule).
    #[arg(long, value_enum, value_name = "MODE")]
    pub analysis_mode: Option<AnalysisModeArg>,
    /// Watch a recreate, rolling or blue-green deploy (or a hotfix) this long
    /// after its switch, rolling back on a breach, e.g. 30s (0s: off).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub verify_for: Option<Duration>,
    /// Take the short canary of a hotfix.
    #[arg(long)]
    pub hotfix: bool,
    /// With several hosts in the environment: hosts moved at once after the
    /// canary host (default: the environment's setting, else 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(ferry_protocol::wave::MAX_PARALLEL_HOSTS)))]
    pub max_parallel_hosts: Option<u32>,
    /// Print what the deploy would do (strategy and steps, replicas,
    /// approvals, the security gate) and change nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// A strategy named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Start the whole new set, switch when healthy, stop the old.
    Recreate,
    /// Batch by batch, gated on health.
    Rolling,
    /// New set beside the old, atomic switch, old kept for a rollback.
    BlueGreen,
    /// Weighted steps with analysis and automatic rollback.
    Canary,
}

/// The only symbolic rollback target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RollbackTo {
    /// The version that ran before the current one.
    Previous,
}

/// `ferry rollback`
#[derive(Debug, ClapArgs)]
pub struct RollbackArgs {
    /// Service name.
    pub service: ServiceName,
    /// Target environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    /// Roll back to the previous version (the default).
    #[arg(long, value_enum, conflicts_with = "version")]
    pub to: Option<RollbackTo>,
    /// Roll back to this version instead.
    #[arg(long)]
    pub version: Option<Version>,
    /// Stop the current replicas before the target is healthy, and roll back
    /// even to the version already running.
    #[arg(long)]
    pub force: bool,
    /// Report the plan and change nothing (always waits for the plan).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub hosts: HostsArgs,
}

/// What `ferry rollout` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RolloutAction {
    /// Hold at the current step.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Send all traffic to the new version now.
    Promote,
    /// Roll back to the stable version now.
    Abort,
}

/// `ferry rollout`
#[derive(Debug, ClapArgs)]
pub struct RolloutArgs {
    /// What to do.
    pub action: RolloutAction,
    /// Service name.
    pub service: ServiceName,
    /// Target environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    /// Give up waiting for the agent after this long (exit 4).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub wait_timeout: Duration,
    #[command(flatten)]
    pub hosts: HostsArgs,
}

/// `ferry monitor`
#[derive(Debug, ClapArgs)]
pub struct MonitorArgs {
    /// Environment to watch.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    /// How long to watch, seconds.
    #[arg(short = 'd', long, default_value_t = 300)]
    pub duration: u64,
    /// Seconds between redraws.
    #[arg(short = 'i', long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// Watch until interrupted (ignores --duration).
    #[arg(short = 'c', long)]
    pub continuous: bool,
    /// Error-rate threshold, percent.
    #[arg(short = 't', long = "error-threshold", default_value_t = 5.0)]
    pub error_threshold: f64,
    /// Response-time (p95) threshold, milliseconds.
    #[arg(short = 'r', long = "response-threshold", default_value_t = 2000.0)]
    pub response_threshold: f64,
    /// Availability threshold, percent.
    #[arg(short = 'a', long = "availability-threshold", default_value_t = 95.0)]
    pub availability_threshold: f64,
}

/// `ferry scale`
#[derive(Debug, ClapArgs)]
pub struct ScaleArgs {
    /// Service name.
    pub service: ServiceName,
    /// New replica count (0 stops the service).
    #[arg(value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_REPLICAS)))]
    pub replicas: u32,
    /// Target environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub hosts: HostsArgs,
}

/// `ferry maintenance`
#[derive(Debug, ClapArgs)]
#[command(group(ArgGroup::new("mode").required(true).args(["enable", "disable"])))]
pub struct MaintenanceArgs {
    /// Service name.
    pub service: ServiceName,
    /// Target environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    /// Turn maintenance on (needs --message).
    #[arg(long, requires = "message")]
    pub enable: bool,
    /// Turn maintenance off.
    #[arg(long)]
    pub disable: bool,
    /// What callers are told while maintenance is on.
    #[arg(long, short = 'm', conflicts_with = "disable", value_parser = parse_message)]
    pub message: Option<String>,
    /// How long maintenance lasts; 0 means until --disable [default: 60m].
    #[arg(long, conflicts_with = "disable", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub hosts: HostsArgs,
}

/// Default length of maintenance.
pub const DEFAULT_MAINTENANCE: Duration = Duration::from_secs(60 * 60);
