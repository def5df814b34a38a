//! `ferry release ...` and `ferry releases`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use ferry_protocol::release::ScanSummary;
use ferry_protocol::{ServiceName, Version};

use super::parse::*;
use crate::scan_report::ReportFormat;

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
      --env LOG_LEVEL=info --author \"$GITLAB_USER_LOGIN\" --commit \"$CI_COMMIT_SHA\"
  trivy image --format json --output trivy.json registry.example.com/web:1.4.2
  ferry release publish --service web --version 1.4.2 \\
      --artifact registry.example.com/web:1.4.2 --scan-report trivy.json"
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
    #[arg(long, value_name = "SEVERITY=N,...", value_parser = parse_scan, conflicts_with = "scan_report")]
    pub scan: Option<ScanSummary>,
    /// The scanner's report (Trivy JSON, Grype JSON or SARIF 2.1.0): its
    /// findings are counted by severity and the worst 20 travel with the
    /// release, so the security gate names the criticals that hold it. A
    /// report that cannot be read publishes nothing.
    #[arg(long, value_name = "FILE")]
    pub scan_report: Option<PathBuf>,
    /// The report's format, when not detected from its content.
    #[arg(long, value_enum, requires = "scan_report")]
    pub scan_format: Option<ReportFormat>,
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

/// `ferry releases`
#[derive(Debug, ClapArgs)]
pub struct ReleasesArgs {
    /// Only this service.
    #[arg(short = 's', long)]
    pub service: Option<ServiceName>,
}
