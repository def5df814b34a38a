//! Command-line arguments: clap types only, no IO.

mod action;
mod approval;
mod doctor;
mod keygen;
mod parse;
mod query;
mod release;
mod shell;
#[cfg(test)]
mod tests;

pub use action::*;
pub use approval::*;
pub use doctor::*;
pub use keygen::*;
pub use query::*;
pub use release::*;
pub use shell::*;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

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

    /// CA file (PEM) the NATS server's certificate is verified against;
    /// TLS is then required.
    #[arg(
        long,
        env = "FERRY_NATS_TLS_CA_FILE",
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub nats_tls_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for a NATS server that verifies clients.
    #[arg(
        long,
        env = "FERRY_NATS_TLS_CERT_FILE",
        global = true,
        value_name = "FILE",
        requires = "nats_tls_key_file",
        help_heading = "Global options"
    )]
    pub nats_tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --nats-tls-cert-file.
    #[arg(
        long,
        env = "FERRY_NATS_TLS_KEY_FILE",
        global = true,
        value_name = "FILE",
        requires = "nats_tls_cert_file",
        help_heading = "Global options"
    )]
    pub nats_tls_key_file: Option<PathBuf>,

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
  ferry deploy web 1.4.2 -e dev --replicas 3
  ferry deploy web 1.4.2 -e production --dry-run")]
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

    /// Check an installation: NATS, JetStream, streams and buckets, the
    /// controller, agents, keys, clocks, permissions, rollback readiness.
    #[command(
        long_about = "Check an installation from where ferry runs: NATS reachable and 2.11 or \
            newer, JetStream enabled, every stream and bucket present with the expected \
            configuration, the controller answering, each environment with a live agent that \
            trusts the controller's key (and, where gated, the pipeline's reviewer keys), clock \
            skew, the caller's NATS permissions, and per service a previous version to roll back \
            to. Each check prints ok or the problem and how to fix it.\n\n\
            Exit codes: 0 every check passed, 1 a check found a problem.",
        after_help = "Examples:\n  ferry doctor\n  ferry doctor --output json"
    )]
    Doctor(DoctorArgs),

    /// Rehearse operations: `ferry drill rollback`.
    #[command(subcommand)]
    Drill(DrillCommand),

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

    /// Print a shell completion script to stdout.
    #[command(
        long_about = "Print a shell completion script to stdout: bash, zsh, fish, elvish or \
            powershell. Needs no NATS.",
        after_help = "\
Examples:
  ferry completions bash > ~/.local/share/bash-completion/completions/ferry
  ferry completions zsh > \"${fpath[1]}/_ferry\"
  ferry completions fish > ~/.config/fish/completions/ferry.fish"
    )]
    Completions(CompletionsArgs),

    /// Write man pages: ferry.1 and one page per subcommand.
    #[command(
        long_about = "Write man pages into DIR: ferry.1 and one page per subcommand \
            (ferry-deploy.1, ferry-release-publish.1, ...). Needs no NATS.",
        after_help = "\
Examples:
  ferry manpages ~/.local/share/man/man1 && man ferry-deploy
  sudo ferry manpages /usr/local/share/man/man1"
    )]
    Manpages(ManpagesArgs),
}
