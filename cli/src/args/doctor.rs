//! `ferry doctor`, `ferry drill`.

use std::time::Duration;

use clap::{Args as ClapArgs, Subcommand};
use ferry_protocol::{EnvName, ServiceName};

/// `ferry doctor`
#[derive(Debug, ClapArgs)]
pub struct DoctorArgs {
    /// Largest clock difference between an agent and the NATS server that
    /// passes, e.g. 30s (commands expire by the agent's clock).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub max_clock_skew: Duration,
}

/// `ferry drill ...`
#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Roll a service back to its previous version and forward again,
    /// health-gated and timed, under a small load of its own.
    #[command(
        long_about = "Roll a service back to its previous version and forward again, each leg \
            health-gated (as with --wait) and timed, while a small load of ferry's own hits the \
            service's stable address and counts failed requests. The drill and its timings go \
            into the audit trail (ferry audit --action drill). In an approval-gated environment \
            the drill runs only while the serving version's recorded approvals are valid.",
        after_help = "\
Examples:
  ferry drill rollback web -e dev --dry-run
  ferry drill rollback web -e dev"
    )]
    Rollback(DrillRollbackArgs),
}

/// `ferry drill rollback`
#[derive(Debug, ClapArgs)]
pub struct DrillRollbackArgs {
    /// Service name.
    pub service: ServiceName,
    /// Environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: EnvName,
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give up on each leg after this long (exit 4).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub wait_timeout: Duration,
    /// Time between two requests of the drill's load.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub load_interval: Duration,
}
