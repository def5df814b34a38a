//! `ferry status`, `ferry history` and `ferry releases`: read-only API calls.

use ferry_protocol::api::{ApiRequest, HistoryRecord, ReleaseRecord, StatusRow};
use time::OffsetDateTime;

use crate::args::{GlobalOpts, HistoryArgs, OutputFormat, ReleasesArgs, StatusArgs};
use crate::client::Connection;
use crate::error::Result;
use crate::output;

/// `ferry status`
pub async fn status(global: &GlobalOpts, args: StatusArgs) -> Result<()> {
    let connection = Connection::open(global).await?;
    let rows: Vec<StatusRow> = connection
        .call(ApiRequest::Status {
            environment: args.environment,
        })
        .await?
        .response;
    output::emit(&match global.output {
        OutputFormat::Json => output::json(&rows)?,
        OutputFormat::Table if args.hosts => output::hosts_table(&rows, OffsetDateTime::now_utc()),
        OutputFormat::Table => output::status_table(&rows, OffsetDateTime::now_utc()),
    })
}

/// `ferry history`
pub async fn history(global: &GlobalOpts, args: HistoryArgs) -> Result<()> {
    let connection = Connection::open(global).await?;
    let records: Vec<HistoryRecord> = connection
        .call(ApiRequest::History {
            environment: args.environment,
            service: args.service,
            limit: args.limit,
            actor: args.actor,
            since: args.since,
            action: args.action,
        })
        .await?
        .response;
    output::emit(&match global.output {
        OutputFormat::Json => output::json(&records)?,
        OutputFormat::Table => output::history_table(&records),
    })
}

/// `ferry releases`
pub async fn releases(global: &GlobalOpts, args: ReleasesArgs) -> Result<()> {
    let connection = Connection::open(global).await?;
    let records: Vec<ReleaseRecord> = connection
        .call(ApiRequest::Releases {
            service: args.service,
        })
        .await?
        .response;
    output::emit(&match global.output {
        OutputFormat::Json => output::json(&records)?,
        OutputFormat::Table => output::releases_table(&records),
    })
}
