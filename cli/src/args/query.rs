//! `ferry status`, `ferry history`, `ferry audit`.

use clap::Args as ClapArgs;
use ferry_protocol::api::MAX_HISTORY_LIMIT;
use ferry_protocol::{EnvName, ServiceName};
use time::OffsetDateTime;

use super::parse::*;

/// `ferry status`
#[derive(Debug, ClapArgs)]
pub struct StatusArgs {
    /// Only this environment.
    #[arg(short = 'e', long = "env", visible_alias = "environment")]
    pub environment: Option<EnvName>,
    /// One row per host of each environment (the JSON output always lists
    /// them in each row's `hosts`).
    #[arg(long)]
    pub hosts: bool,
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
