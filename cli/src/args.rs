//! Command-line arguments: clap types only, no IO.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args as ClapArgs, Parser, Subcommand, ValueEnum};
use ferry_protocol::api::MAX_HISTORY_LIMIT;
use ferry_protocol::command::{MAX_MESSAGE_LEN, MAX_REPLICAS};
use ferry_protocol::release::ScanSummary;
use ferry_protocol::{EnvName, ServiceName, Version};
use time::OffsetDateTime;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation failed: the agent reported failure or refused the command,
     or the controller rejected the request (the reason is on stderr)
  2  usage error (bad arguments or options)
  3  NATS or ferry-controller unreachable: connection failure, no responders,
     request timeout
  4  --wait timed out before the command's outcome arrived

Environment:
  FERRY_NATS_URL, FERRY_NATS_CREDS, FERRY_OUTPUT  defaults for the global options
  FERRY_ACTOR  who you are in history (else $USER)";

/// ferry: ship releases to environments through NATS.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Operate ferry: publish releases, deploy, roll back, scale, maintain, inspect",
    long_about = "Operate ferry: publish releases, deploy, roll back, scale, maintain, inspect.\n\n\
        ferry talks to ferry-controller over NATS request-reply; the controller signs \
        commands and hands them to each environment's agent through JetStream. \
        Add --wait to follow a command's events until the agent reports its outcome.",
    after_help = EXIT_CODES
)]
pub struct Args {
    /// Options every command accepts.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Clone, Debug, ClapArgs)]
pub struct GlobalOpts {
    /// NATS server URL (several may be given, comma-separated).
    #[arg(
        long,
        env = "FERRY_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true,
        help_heading = "Global options"
    )]
    pub nats_url: String,

    /// NATS credentials file (.creds) to authenticate with.
    #[arg(
        long,
        env = "FERRY_NATS_CREDS",
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub creds: Option<PathBuf>,

    /// NATS user to authenticate as (with --nats-password-file), e.g. ferry-cli or ferry-ci.
    #[arg(
        long,
        env = "FERRY_NATS_USER",
        global = true,
        value_name = "USER",
        requires = "nats_password_file",
        conflicts_with = "creds",
        help_heading = "Global options"
    )]
    pub nats_user: Option<String>,

    /// File holding the NATS user's password (its first line).
    #[arg(
        long,
        env = "FERRY_NATS_PASSWORD_FILE",
        global = true,
        value_name = "FILE",
        requires = "nats_user",
        help_heading = "Global options"
    )]
    pub nats_password_file: Option<PathBuf>,

    /// Prefix of the CLI's reply subjects; the NATS permissions of its user
    /// allow this one (CI publishing releases uses _INBOX_ferry_ci).
    #[arg(
        long,
        env = "FERRY_NATS_INBOX_PREFIX",
        default_value = "_INBOX_ferry_cli",
        global = true,
        value_name = "PREFIX",
        help_heading = "Global options"
    )]
    pub nats_inbox_prefix: String,

    /// How long to wait for a NATS connection and for each reply, e.g. 5s, 500ms.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, global = true, help_heading = "Global options")]
    pub timeout: Duration,

    /// Output format.
    #[arg(
        short = 'o',
        long,
        env = "FERRY_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Table,
        global = true,
        help_heading = "Global options"
    )]
    pub output: OutputFormat,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and sentences for people.
    Table,
    /// JSON for programs: one document, or one line per event with --wait.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Releases built by CI.
    #[command(subcommand)]
    Release(ReleaseCommand),

    /// Deploy a published release to an environment.
    #[command(after_help = "\
Examples:
  ferry deploy web 1.4.2 -e production --wait
  ferry deploy web 1.4.2 -e dev --replicas 3")]
    Deploy(DeployArgs),

    /// Roll a service back to the previous or a named version.
    #[command(
        long_about = "Roll a service back to the previous or a named version.\n\n\
            The agent keeps the versions it ran; the target must be one of them. \
            With --dry-run the agent reports its plan and changes nothing; ferry \
            always waits for that plan and prints it.",
        after_help = "\
Examples:
  ferry rollback web -e production --wait
  ferry rollback web -e production --version 1.4.0
  ferry rollback web -e production --dry-run
  ferry rollback web -e production --force --wait   # current version is wedged"
    )]
    Rollback(RollbackArgs),

    /// Change a service's replica count (0 stops it).
    #[command(after_help = "Examples:\n  ferry scale web 4 -e production --wait")]
    Scale(ScaleArgs),

    /// Turn a service's maintenance mode on or off.
    #[command(
        long_about = "Turn a service's maintenance mode on or off.\n\n\
            In maintenance the agent answers every request with 503 and the message, \
            until disabled or the duration passes.",
        after_help = "\
Examples:
  ferry maintenance web -e production --enable --message 'Back at 14:00' --duration 30m
  ferry maintenance web -e production --disable"
    )]
    Maintenance(MaintenanceArgs),

    /// Act on a rollout in progress: pause, resume, promote or abort.
    #[command(
        long_about = "Act on a rollout in progress: pause, resume, promote or abort.\n\n\
            pause holds the canary at its step (analysis goes on and may still roll back); \
            resume continues; promote sends all traffic to the new version now; abort \
            rolls back to the stable version now. ferry waits for the agent to act.",
        after_help = "\
Examples:
  ferry rollout pause web -e production
  ferry rollout abort web -e production"
    )]
    Rollout(RolloutArgs),

    /// Watch an environment live: traffic, errors, latency, availability, rollouts.
    #[command(
        long_about = "Watch an environment live: per service its version, replicas, requests \
            per second, error rate, p95, availability and rollout, redrawn every interval \
            (one line per service and interval when stdout is not a terminal), then a summary.\n\n\
            Exit codes: 0 no threshold breached, 5 a threshold was breached, 3 NATS unreachable.",
        after_help = "\
Examples:
  ferry monitor -e production -d 600 -i 30
  ferry monitor -e production -c
  ferry monitor -e production -t 2 -r 1500 -a 99"
    )]
    Monitor(MonitorArgs),

    /// Show what runs where, as the agents last reported it.
    Status(StatusArgs),

    /// Show deployment history, newest last.
    #[command(after_help = "Examples:\n  ferry history -e production -s web --limit 20")]
    History(HistoryArgs),

    /// List the releases CI has published.
    Releases(ReleasesArgs),

    /// Read the audit trail: releases, promotions, approvals, rejections,
    /// security gate decisions, commands and outcomes (who, what, when, why).
    #[command(after_help = "\
Examples:
  ferry audit -e production --since 24h
  ferry audit --actor alice --action approve --output json")]
    Audit(AuditArgs),

    /// Ask for a release to be promoted into an environment; it deploys once
    /// eligible (previous environment healthy for the soak time) and approved.
    #[command(after_help = "Examples:\n  ferry promote web 1.4.2 -e acceptance")]
    Promote(PromoteArgs),

    /// Approve a release for an environment, signed with your reviewer key.
    #[command(
        long_about = "Approve a release for an environment, signed with your reviewer key.\n\n\
            The approval (service, version, artifact digest, environment, expiry) is \
            signed here with the seed in --key (or FERRY_REVIEWER_KEY); the seed never \
            leaves this process. The controller counts it if your public key is among \
            the environment's reviewers and you are not the release's author; the \
            agent of an approval-gated environment checks the signatures again.",
        after_help = "\
Examples:
  ferry keygen --out ~/.ferry/reviewer.nk       # once; give the public key to the ops team
  ferry approve web 1.4.2 -e production --key ~/.ferry/reviewer.nk
  ferry approve web 1.4.2 -e production --security-override   # critical vulnerabilities accepted"
    )]
    Approve(ApproveArgs),

    /// Reject a release for an environment: its promotion stops there.
    #[command(
        after_help = "Examples:\n  ferry reject web 1.4.2 -e production --reason 'breaks checkout'"
    )]
    Reject(RejectArgs),

    /// List promotions waiting for approvals, soak time or the security gate.
    #[command(
        after_help = "Examples:\n  ferry approvals\n  ferry approvals -e production --all --output json"
    )]
    Approvals(ApprovalsArgs),

    /// Generate a signing key (nkey): the controller's, or a reviewer's.
    #[command(
        long_about = "Generate a signing key (an ed25519 nkey): the controller's or a reviewer's.\n\n\
            The controller signs every command with its seed; each agent lists the \
            public key in its trusted_keys. A reviewer signs approvals with theirs \
            (ferry approve --key); the public key goes in the controller's \
            [pipeline.<env>] reviewers and the gated agents' reviewer_keys. With --out \
            the seed goes to FILE (mode 0600) and only the public key is printed.",
        after_help = "\
Examples:
  ferry keygen --out /etc/ferry/controller.nk   # prints the public key for agents
  ferry keygen --out ~/.ferry/reviewer.nk       # a reviewer's key"
    )]
    Keygen(KeygenArgs),
}

/// `ferry release ...`
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Publish a release (what a CI job runs after building and testing).
    #[command(
        long_about = "Publish a release: what a CI job runs after building and testing.\n\n\
            The release goes to the FERRY_RELEASES JetStream stream, de-duplicated on \
            service and version, and is printed with its stream sequence once \
            JetStream has stored it.",
        after_help = "\
Examples:
  ferry release publish --service web --version 1.4.2 \\
      --artifact registry.example.com/web:1.4.2 --digest sha256:ab12... \\
      --env LOG_LEVEL=info --author \"$GITLAB_USER_LOGIN\" --commit \"$CI_COMMIT_SHA\""
    )]
    Publish(PublishArgs),
}

/// `ferry release publish`
#[derive(Debug, ClapArgs)]
pub struct PublishArgs {
    /// Service name.
    #[arg(long, short = 's')]
    pub service: ServiceName,
    /// Version, e.g. 1.4.2 or 2024.06.01-rc.1+build.7.
    #[arg(long)]
    pub version: Version,
    /// Executable path (process runtime) or image reference (Docker, Kubernetes).
    #[arg(long)]
    pub artifact: String,
    /// Content digest of the artifact, e.g. sha256:...
    #[arg(long)]
    pub digest: Option<String>,
    /// An environment variable the release runs with (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// A secret environment variable (repeatable): the replicas get it like
    /// --env, but ferry shows its value as <secret> everywhere.
    #[arg(long = "secret-env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub secret_env: Vec<(String, String)>,
    /// Who made it (commit author or CI user).
    #[arg(long)]
    pub author: Option<String>,
    /// Source commit.
    #[arg(long)]
    pub commit: Option<String>,
    /// Mark it a hotfix (it takes the short canary path).
    #[arg(long)]
    pub hotfix: bool,
    /// The vulnerability scan's counts by severity, e.g.
    /// critical=0,high=2,medium=5,low=11; any critical holds the release at
    /// the security gate.
    #[arg(long, value_name = "SEVERITY=N,...", value_parser = parse_scan)]
    pub scan: Option<ScanSummary>,
}

impl PublishArgs {
    /// The variables as a map, refusing a name given twice.
    pub fn env_map(&self) -> Result<BTreeMap<String, String>, String> {
        let mut map = BTreeMap::new();
        for (key, value) in self.env.iter().chain(&self.secret_env) {
            if map.insert(key.clone(), value.clone()).is_some() {
                return Err(format!("--env/--secret-env {key} is given more than once"));
            }
        }
        Ok(map)
    }
}

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
    /// Take the short canary of a hotfix.
    #[arg(long)]
    pub hotfix: bool,
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
}

/// Default length of maintenance.
pub const DEFAULT_MAINTENANCE: Duration = Duration::from_secs(60 * 60);

/// `ferry status`
#[derive(Debug, ClapArgs)]
pub struct StatusArgs {
    /// Only this environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: Option<EnvName>,
}

/// `ferry history`
#[derive(Debug, ClapArgs)]
pub struct HistoryArgs {
    /// Only this environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: Option<EnvName>,
    /// Only this service.
    #[arg(short = 's', long)]
    pub service: Option<ServiceName>,
    /// At most this many records.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_HISTORY_LIMIT)))]
    pub limit: u32,
    /// Only records by this actor.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only records of the last DURATION (e.g. 24h) or since an RFC 3339 time.
    #[arg(long, value_parser = parse_since, value_name = "DURATION|TIME")]
    pub since: Option<OffsetDateTime>,
    /// Only this action: release, promote, approve, reject, gate, deploy,
    /// rollback, scale, maintenance.
    #[arg(long)]
    pub action: Option<String>,
}

/// `ferry audit`: the same filters as history.
pub type AuditArgs = HistoryArgs;

/// `ferry promote`
#[derive(Debug, ClapArgs)]
pub struct PromoteArgs {
    /// Service name.
    pub service: ServiceName,
    /// Version.
    pub version: Version,
    /// Target environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
}

/// `ferry approve`
#[derive(Debug, ClapArgs)]
pub struct ApproveArgs {
    /// Service name.
    pub service: ServiceName,
    /// Version.
    pub version: Version,
    /// Environment the approval is for.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    /// File holding your reviewer nkey seed (ferry keygen --out FILE).
    #[arg(long, env = "FERRY_REVIEWER_KEY", value_name = "FILE")]
    pub key: PathBuf,
    /// Your name as a reviewer (default: FERRY_ACTOR, else $USER).
    #[arg(long)]
    pub name: Option<String>,
    /// How long the approval counts (the controller refuses more than its approval_ttl).
    #[arg(long, default_value = "72h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub valid_for: Duration,
    /// Approve letting a release with critical vulnerabilities past the
    /// security gate into this environment, instead of a deploy approval.
    #[arg(long)]
    pub security_override: bool,
}

/// `ferry reject`
#[derive(Debug, ClapArgs)]
pub struct RejectArgs {
    /// Service name.
    pub service: ServiceName,
    /// Version.
    pub version: Version,
    /// Environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    /// Why (recorded in the audit trail and notified).
    #[arg(long, short = 'r', value_parser = parse_message)]
    pub reason: String,
}

/// `ferry approvals`
#[derive(Debug, ClapArgs)]
pub struct ApprovalsArgs {
    /// Only this environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: Option<EnvName>,
    /// Only this service.
    #[arg(short = 's', long)]
    pub service: Option<ServiceName>,
    /// Include promotions already deployed or rejected.
    #[arg(long)]
    pub all: bool,
}

fn parse_scan(text: &str) -> Result<ScanSummary, String> {
    ScanSummary::parse(text).map_err(|e| e.to_string())
}

fn parse_since(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither a duration (24h) nor an RFC 3339 time"))?;
    Ok(OffsetDateTime::now_utc() - ago)
}

/// `ferry releases`
#[derive(Debug, ClapArgs)]
pub struct ReleasesArgs {
    /// Only this service.
    #[arg(short = 's', long)]
    pub service: Option<ServiceName>,
}

/// `ferry keygen`
#[derive(Debug, ClapArgs)]
pub struct KeygenArgs {
    /// Write the seed to FILE (mode 0600) and print only the public key.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let valid = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{key:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_message(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("the message must not be empty".to_owned());
    }
    if text.len() > MAX_MESSAGE_LEN {
        return Err(format!("at most {MAX_MESSAGE_LEN} bytes"));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn parse(line: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("ferry").chain(line.iter().copied()))
    }

    #[test]
    fn approve_reject_approvals_promote_and_audit_parse() {
        let args = parse(&[
            "approve",
            "web",
            "1.0.0",
            "-e",
            "production",
            "--key",
            "/k.nk",
            "--valid-for",
            "2h",
            "--security-override",
        ])
        .unwrap();
        let Command::Approve(approve) = args.command else {
            panic!("not approve");
        };
        assert_eq!(approve.valid_for, Duration::from_secs(7200));
        assert!(approve.security_override);
        assert_eq!(approve.key, PathBuf::from("/k.nk"));
        assert!(
            parse(&["reject", "web", "1.0.0", "-e", "production"]).is_err(),
            "a reason is required"
        );
        assert!(parse(&["reject", "web", "1.0.0", "-e", "production", "-r", "no"]).is_ok());
        assert!(parse(&["approvals", "--all", "-e", "production"]).is_ok());
        assert!(parse(&["promote", "web", "1.0.0", "-e", "acceptance"]).is_ok());
        let args = parse(&[
            "audit", "--since", "24h", "--actor", "bob", "--action", "approve",
        ])
        .unwrap();
        let Command::Audit(audit) = args.command else {
            panic!("not audit");
        };
        let since = audit.since.unwrap();
        let ago = OffsetDateTime::now_utc() - since;
        assert!(ago > time::Duration::hours(23) && ago < time::Duration::hours(25));
        assert_eq!(audit.actor.as_deref(), Some("bob"));
        assert!(parse(&["audit", "--since", "yesterday"]).is_err());
        let args = parse(&[
            "release",
            "publish",
            "-s",
            "web",
            "--version",
            "1",
            "--artifact",
            "/a",
            "--scan",
            "critical=1,high=2",
        ])
        .unwrap();
        let Command::Release(ReleaseCommand::Publish(publish)) = args.command else {
            panic!("not publish");
        };
        assert_eq!(publish.scan.unwrap().critical, 1);
        assert!(parse(&[
            "release",
            "publish",
            "-s",
            "web",
            "--version",
            "1",
            "--artifact",
            "/a",
            "--scan",
            "severe=1"
        ])
        .is_err());
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn global_options_have_defaults_and_go_anywhere() {
        let args = parse(&["status"]).unwrap();
        assert_eq!(args.global.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(args.global.timeout, Duration::from_secs(5));
        assert_eq!(args.global.output, OutputFormat::Table);
        assert_eq!(args.global.creds, None);

        let args = parse(&["status", "-o", "json", "--timeout", "250ms"]).unwrap();
        assert_eq!(args.global.output, OutputFormat::Json);
        assert_eq!(args.global.timeout, Duration::from_millis(250));
        assert!(parse(&["-o", "yaml", "status"]).is_err());
    }

    #[test]
    fn rollback_to_and_version_conflict() {
        let err = parse(&[
            "rollback",
            "web",
            "-e",
            "dev",
            "--to",
            "previous",
            "--version",
            "1.0",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);

        let Command::Rollback(args) = parse(&["rollback", "web", "-e", "dev"]).unwrap().command
        else {
            panic!("not a rollback")
        };
        assert_eq!((args.to, args.version), (None, None));
        assert!(!args.dry_run && !args.force && !args.wait.wait);

        let Command::Rollback(args) = parse(&[
            "rollback",
            "web",
            "-e",
            "dev",
            "--version",
            "1.0",
            "--dry-run",
        ])
        .unwrap()
        .command
        else {
            panic!("not a rollback")
        };
        assert_eq!(args.version.unwrap().as_str(), "1.0");
        assert!(args.dry_run);
        assert!(parse(&["rollback", "web", "-e", "dev", "--to", "1.0"]).is_err());
    }

    #[test]
    fn publish_parses_env_pairs() {
        let Command::Release(ReleaseCommand::Publish(args)) = parse(&[
            "release",
            "publish",
            "--service",
            "web",
            "--version",
            "1.2.3",
            "--artifact",
            "/opt/web",
            "--env",
            "A=1",
            "--env",
            "URL=http://x/?a=b",
            "--env",
            "EMPTY=",
            "--hotfix",
        ])
        .unwrap()
        .command
        else {
            panic!("not a publish")
        };
        let env = args.env_map().unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["URL"], "http://x/?a=b");
        assert_eq!(env["EMPTY"], "");
        assert!(args.hotfix);

        for bad in ["NOEQUALS", "=x", "1A=x", "A-B=x"] {
            let err = parse(&[
                "release",
                "publish",
                "--service",
                "web",
                "--version",
                "1",
                "--artifact",
                "a",
                "--env",
                bad,
            ])
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
        }
    }

    #[test]
    fn a_variable_given_twice_is_refused() {
        let Command::Release(ReleaseCommand::Publish(args)) = parse(&[
            "release",
            "publish",
            "--service",
            "web",
            "--version",
            "1",
            "--artifact",
            "a",
            "--env",
            "A=1",
            "--env",
            "A=2",
        ])
        .unwrap()
        .command
        else {
            panic!("not a publish")
        };
        assert!(args.env_map().unwrap_err().contains("A"));
    }

    #[test]
    fn maintenance_needs_a_mode_and_enable_needs_a_message() {
        let err = parse(&["maintenance", "web", "-e", "dev", "--enable"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["maintenance", "web", "-e", "dev"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&[
            "maintenance",
            "web",
            "-e",
            "dev",
            "--enable",
            "--disable",
            "-m",
            "x",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(parse(&["maintenance", "web", "-e", "dev", "--disable", "-m", "x"]).is_err());
        assert!(parse(&[
            "maintenance",
            "web",
            "-e",
            "dev",
            "--disable",
            "--duration",
            "5m"
        ])
        .is_err());

        let Command::Maintenance(args) = parse(&[
            "maintenance",
            "web",
            "-e",
            "dev",
            "--enable",
            "--message",
            "back soon",
            "--duration",
            "30m",
        ])
        .unwrap()
        .command
        else {
            panic!("not maintenance")
        };
        assert!(args.enable);
        assert_eq!(args.message.as_deref(), Some("back soon"));
        assert_eq!(args.duration, Some(Duration::from_secs(1800)));
        assert!(parse(&["maintenance", "web", "-e", "dev", "--disable"]).is_ok());
    }

    #[test]
    fn names_and_ranges_are_checked_at_parse_time() {
        assert!(parse(&["deploy", "Web", "1.0", "-e", "dev"]).is_err());
        assert!(parse(&["deploy", "web", "1.0", "-e", "prod.eu"]).is_err());
        assert!(parse(&["deploy", "web", "1 0", "-e", "dev"]).is_err());
        assert!(
            parse(&["deploy", "web", "1.0"]).is_err(),
            "environment is required"
        );
        assert!(parse(&["deploy", "web", "1.0", "-e", "dev", "--replicas", "0"]).is_err());
        assert!(parse(&["deploy", "web", "1.0", "-e", "dev", "--replicas", "65"]).is_err());
        assert!(parse(&["scale", "web", "0", "-e", "dev"]).is_ok());
        assert!(parse(&["scale", "web", "65", "-e", "dev"]).is_err());
        assert!(parse(&["history", "--limit", "0"]).is_err());
        assert!(
            parse(&["keygen", "--force"]).is_err(),
            "--force needs --out"
        );

        let Command::Deploy(args) = parse(&[
            "deploy",
            "web",
            "1.0",
            "--environment",
            "dev",
            "--wait",
            "--wait-timeout",
            "90s",
        ])
        .unwrap()
        .command
        else {
            panic!("not a deploy")
        };
        assert!(args.wait.wait);
        assert_eq!(args.wait.wait_timeout, Duration::from_secs(90));
        assert_eq!(args.environment.as_str(), "dev");
    }

    #[test]
    fn history_defaults_to_fifty() {
        let Command::History(args) = parse(&["history", "-s", "web"]).unwrap().command else {
            panic!("not history")
        };
        assert_eq!(args.limit, 50);
        assert_eq!(args.service.unwrap().as_str(), "web");
        assert_eq!(args.environment, None);
    }
}
