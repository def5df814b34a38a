//! Promotions as the CLI (and the dashboard) read them, and the approvals a
//! direct `ferry deploy` must carry.

use ferry_gate as gate;
use ferry_protocol::api::{ApprovalView, PromotionView};
use ferry_protocol::approval::SignedApproval;
use ferry_protocol::release::Release;
use ferry_protocol::{EnvName, ServiceName, Version};
use time::OffsetDateTime;

use super::{is_author, reviewer_name, tally, PromotionRecord};
use crate::Shared;

/// The approvals a direct `ferry deploy` of `release` to `env` must carry,
/// or why it cannot go: approval-gated environments need the quorum recorded
/// for that release, and the security gate applies.
pub(crate) async fn approvals_for_deploy(
    shared: &Shared,
    release: &Release,
    env: &EnvName,
) -> Result<Vec<SignedApproval>, String> {
    let Some(stage) = shared.config.stage(env) else {
        return Ok(Vec::new());
    };
    let overrides = gate::overrides_needed(release, shared.config.security_override_approvals());
    if stage.approvals_required == 0 && overrides == 0 {
        return Ok(Vec::new());
    }
    let record = shared
        .store
        .promotion(&release.service, &release.version, env)
        .await
        .map_err(|e| format!("the controller could not read the promotions: {e}"))?;
    let approvals = record.map(|r| r.approvals).unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    let tally = tally(release, env, stage, &approvals, now);
    if tally.overrides < overrides as usize {
        return Err(gate::refusal(release, overrides, tally.overrides));
    }
    if tally.deploy.len() < stage.approvals_required as usize {
        return Err(format!(
            "{env} needs {} approvals of {} {}, {} given; ask a reviewer to run ferry approve {} {} -e {env}",
            stage.approvals_required,
            release.service,
            release.version,
            tally.deploy.len(),
            release.service,
            release.version
        ));
    }
    Ok(if stage.approvals_required == 0 {
        Vec::new()
    } else {
        tally.deploy
    })
}

/// A promotion as `ferry approvals` shows it.
pub(crate) async fn view(
    shared: &Shared,
    service: &ServiceName,
    version: &Version,
    env: &EnvName,
) -> Result<Option<PromotionView>, String> {
    let record = shared
        .store
        .promotion(service, version, env)
        .await
        .map_err(|e| format!("the controller could not read the promotions: {e}"))?;
    let Some(record) = record else {
        return Ok(None);
    };
    let release = shared
        .store
        .release(service, version)
        .await
        .map_err(|e| format!("the controller could not read the releases: {e}"))?;
    Ok(release.and_then(|r| view_of(shared, &r.release, &record)))
}

fn view_of(shared: &Shared, release: &Release, record: &PromotionRecord) -> Option<PromotionView> {
    let stage = shared.config.stage(&record.environment)?;
    let now = OffsetDateTime::now_utc();
    let counted = tally(release, &record.environment, stage, &record.approvals, now);
    let overrides_required =
        gate::overrides_needed(release, shared.config.security_override_approvals());
    Some(PromotionView {
        environment: record.environment.clone(),
        service: record.service.clone(),
        version: record.version.clone(),
        state: record.state,
        approvals_required: stage.approvals_required,
        approvals_valid: counted.deploy.len() as u32,
        overrides_required,
        overrides_valid: counted.overrides as u32,
        waiting_for: if record.is_closed()
            || counted.deploy.len() >= stage.approvals_required as usize
        {
            Vec::new()
        } else {
            counted.waiting_for
        },
        approvals: record
            .approvals
            .iter()
            .map(|a| ApprovalView {
                reviewer_name: reviewer_name(stage, &a.data.reviewer, &a.data.reviewer_name),
                reviewer: a.data.reviewer.clone(),
                kind: a.data.kind,
                expires_at: a.data.expires_at,
                counts: a.data.expires_at > now
                    && !is_author(release, stage, &a.data.reviewer, &a.data.reviewer_name),
            })
            .collect(),
        eligible_at: record.eligible_at,
        detail: record.detail.clone(),
        superseded_by: record.superseded_by.clone(),
    })
}

/// Every promotion matching the filters; closed ones only with `all`.
pub(crate) async fn list(
    shared: &Shared,
    env: Option<&EnvName>,
    service: Option<&ServiceName>,
    all: bool,
) -> Result<Vec<PromotionView>, String> {
    let records = shared
        .store
        .promotions()
        .await
        .map_err(|e| format!("the controller could not read the promotions: {e}"))?;
    let releases = shared
        .store
        .releases(service)
        .await
        .map_err(|e| format!("the controller could not read the releases: {e}"))?;
    let mut out = Vec::new();
    for record in records {
        if env.is_some_and(|e| e != &record.environment)
            || service.is_some_and(|s| s != &record.service)
            || (!all && record.is_closed())
        {
            continue;
        }
        let Some(release) = releases
            .iter()
            .find(|r| r.release.service == record.service && r.release.version == record.version)
        else {
            continue;
        };
        out.extend(view_of(shared, &release.release, &record));
    }
    let order = |e: &EnvName| {
        shared
            .config
            .environments()
            .iter()
            .position(|x| x == e)
            .unwrap_or(usize::MAX)
    };
    out.sort_by(|a, b| {
        (&a.service, &a.version, order(&a.environment)).cmp(&(
            &b.service,
            &b.version,
            order(&b.environment),
        ))
    });
    Ok(out)
}
