//! `ferry approve`, `ferry reject`, `ferry approvals` and `ferry promote`.
//!
//! An approval is signed here, with the reviewer's seed read from a file;
//! only the signed statement goes to the controller.

use ferry_protocol::api::{ApiRequest, PromotionView, ReleaseRecord};
use ferry_protocol::approval::{Approval, ApprovalKind};
use ferry_protocol::SigningKey;
use time::OffsetDateTime;

use crate::args::{ApprovalsArgs, ApproveArgs, GlobalOpts, OutputFormat, PromoteArgs, RejectArgs};
use crate::client::{actor, Connection};
use crate::error::{CliError, Result};
use crate::output;

/// `ferry approve`
pub async fn approve(global: &GlobalOpts, args: ApproveArgs) -> Result<()> {
    let seed = std::fs::read_to_string(&args.key).map_err(|e| {
        CliError::usage(format!(
            "cannot read the reviewer key {}: {e}",
            args.key.display()
        ))
    })?;
    let key = SigningKey::from_seed(&seed).map_err(|e| {
        CliError::usage(format!(
            "{} does not hold a reviewer nkey seed: {e}",
            args.key.display()
        ))
    })?;
    let connection = Connection::open(global).await?;
    // The approval signs the artifact digest as the controller knows it.
    let releases: Vec<ReleaseRecord> = connection
        .call(ApiRequest::Releases {
            service: Some(args.service.clone()),
        })
        .await?
        .response;
    let release = releases
        .into_iter()
        .find(|r| r.release.version == args.version)
        .ok_or_else(|| {
            CliError::failed(format!("unknown release {} {}", args.service, args.version))
        })?
        .release;
    let now = OffsetDateTime::now_utc();
    let approval = Approval {
        service: args.service,
        version: args.version,
        digest: release.approval_digest(),
        environment: args.environment,
        reviewer: key.public_key(),
        reviewer_name: args.name.unwrap_or_else(actor),
        issued_at: now,
        expires_at: now + args.valid_for,
        kind: if args.security_override {
            ApprovalKind::SecurityOverride
        } else {
            ApprovalKind::Deploy
        },
    };
    let signed = approval
        .sign(&key)
        .map_err(|e| CliError::usage(format!("cannot sign the approval: {e}")))?;
    let reply = connection
        .call::<PromotionView>(ApiRequest::Approve {
            approval: Box::new(signed),
        })
        .await?;
    emit_view(global, &reply.message, &reply.response)
}

/// `ferry reject`
pub async fn reject(global: &GlobalOpts, args: RejectArgs) -> Result<()> {
    let connection = Connection::open(global).await?;
    let reply = connection
        .call::<PromotionView>(ApiRequest::Reject {
            environment: args.environment,
            service: args.service,
            version: args.version,
            reason: args.reason,
            actor: Some(actor()),
        })
        .await?;
    emit_view(global, &reply.message, &reply.response)
}

/// `ferry promote`
pub async fn promote(global: &GlobalOpts, args: PromoteArgs) -> Result<()> {
    let connection = Connection::open(global).await?;
    let reply = connection
        .call::<PromotionView>(ApiRequest::Promote {
            environment: args.environment,
            service: args.service,
            version: args.version,
            actor: Some(actor()),
        })
        .await?;
    emit_view(global, &reply.message, &reply.response)
}

/// `ferry approvals`
pub async fn list(global: &GlobalOpts, args: ApprovalsArgs) -> Result<()> {
    let connection = Connection::open(global).await?;
    let rows: Vec<PromotionView> = connection
        .call(ApiRequest::Approvals {
            environment: args.environment,
            service: args.service,
            all: args.all,
        })
        .await?
        .response;
    output::emit(&match global.output {
        OutputFormat::Json => output::json(&rows)?,
        OutputFormat::Table => output::promotions_table(&rows),
    })
}

fn emit_view(global: &GlobalOpts, message: &str, view: &PromotionView) -> Result<()> {
    output::emit(&match global.output {
        OutputFormat::Json => output::json(view)?,
        OutputFormat::Table => format!(
            "{}\n{}",
            message.trim(),
            output::promotions_table(std::slice::from_ref(view))
        ),
    })
}
