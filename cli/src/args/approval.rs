//! `ferry promote`, `ferry approve`, `ferry reject`, `ferry approvals`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;
use ferry_protocol::{EnvName, ServiceName, Version};

use super::parse::*;

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
    /// Include promotions already deployed, rejected or superseded by a
    /// newer release.
    #[arg(long)]
    pub all: bool,
}
