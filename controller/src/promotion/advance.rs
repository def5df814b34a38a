//! How a promotion moves by itself: opened by a release or by a deploy
//! succeeding in the previous environment, then advanced as far as it can go
//! now (blocked by the security gate, waiting, or issued). Every record
//! change is a compare-and-set.

use ferry_gate as gate;
use ferry_protocol::api::{PromotionState, ReleaseRecord};
use ferry_protocol::approval::SignedApproval;
use ferry_protocol::command::{Action, Command};
use ferry_protocol::rollout::{RolloutOptions, Strategy};
use ferry_protocol::{EnvName, ServiceName, Version};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::approvals::{reviewer_name, tally};
use crate::config::Stage;
use crate::records::PromotionRecord;
use crate::{audit, ids, supersession, waves, Error, Shared};

/// Actor of a deploy triggered by a release without an author.
const DEFAULT_ACTOR: &str = "ci";

/// `2026-11-26T19:28:36Z`: whole seconds, for sentences.
fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A new release: opens its promotion into the first environment (when that
/// environment deploys by itself) and advances it.
pub(crate) async fn on_release(shared: &Shared, record: &ReleaseRecord) -> Result<(), Error> {
    let release = &record.release;
    let first = shared.config.first_environment().clone();
    let auto = shared.config.stage(&first).is_some_and(|s| s.auto_deploy);
    if !auto {
        return Ok(());
    }
    let actor = release
        .author
        .clone()
        .unwrap_or_else(|| DEFAULT_ACTOR.to_owned());
    let now = OffsetDateTime::now_utc();
    shared
        .store
        .update_promotion(&release.service, &release.version, &first, |current| {
            let mut record = current.unwrap_or_else(|| {
                PromotionRecord::new(&release.service, &release.version, &first, now)
            });
            if record.requested {
                return None;
            }
            record.requested = true;
            record.requested_by = Some(actor.clone());
            record.eligible_at = Some(now);
            record.updated_at = now;
            Some(record)
        })
        .await?;
    advance(shared, &release.service, &release.version, &first).await
}

/// A deploy of `version` succeeded in `env`: the next environment's promotion
/// starts its soak (and is opened, when that environment deploys by itself).
pub(crate) async fn on_deployed(
    shared: &Shared,
    env: &EnvName,
    service: &ServiceName,
    version: &Version,
    at: OffsetDateTime,
) -> Result<(), Error> {
    supersession::reconcile(shared, service).await?;
    let Some(next) = shared.config.next_environment(env).cloned() else {
        return Ok(());
    };
    let Some(stage) = shared.config.stage(&next) else {
        return Ok(());
    };
    if shared.store.release(service, version).await?.is_none() {
        // A version deployed by hand that was never published: not promotable.
        return Ok(());
    }
    let eligible_at = at + stage.soak;
    let auto = stage.auto_deploy;
    let mut opened = false;
    let updated = shared
        .store
        .update_promotion(service, version, &next, |current| {
            opened = false;
            let mut record =
                current.unwrap_or_else(|| PromotionRecord::new(service, version, &next, at));
            if record.is_closed() {
                return None;
            }
            let same = record.eligible_at == Some(eligible_at) && (record.requested || !auto);
            if same {
                return None;
            }
            record.eligible_at = Some(eligible_at);
            if auto && !record.requested {
                record.requested = true;
                record.requested_by = Some("pipeline".to_owned());
                opened = true;
            }
            record.updated_at = OffsetDateTime::now_utc();
            Some(record)
        })
        .await?;
    if opened {
        if let Some(record) = updated {
            opened_audit(shared, &record, stage).await?;
        }
    }
    advance(shared, service, version, &next).await
}

/// Records that a promotion was opened and, if it needs approvals, who is asked.
pub(crate) async fn opened_audit(
    shared: &Shared,
    record: &PromotionRecord,
    stage: &Stage,
) -> Result<(), Error> {
    if stage.approvals_required == 0 {
        return Ok(());
    }
    let names: Vec<&str> = stage.reviewers.iter().map(|r| r.name.as_str()).collect();
    let detail = format!(
        "{} {} needs {} approval(s) to enter {} (reviewers: {}): ferry approve {} {} -e {}",
        record.service,
        record.version,
        stage.approvals_required,
        record.environment,
        names.join(", "),
        record.service,
        record.version,
        record.environment
    );
    let id = ids::promotion(
        &record.service,
        &record.version,
        &record.environment,
        "awaiting_approval",
    );
    audit::promotion(
        shared,
        &record.environment,
        &record.service,
        &record.version,
        "promote",
        "awaiting_approval",
        detail,
        record.requested_by.clone(),
        id,
    )
    .await
}

/// Sets state and detail unless the promotion is closed or already says so.
async fn set_state(
    shared: &Shared,
    record: &PromotionRecord,
    state: PromotionState,
    detail: &str,
) -> Result<bool, Error> {
    if record.state == state && record.detail == detail {
        return Ok(false);
    }
    let mut changed = false;
    shared
        .store
        .update_promotion(
            &record.service,
            &record.version,
            &record.environment,
            |current| {
                changed = false;
                let mut r = current?;
                if r.is_closed() || (r.state == state && r.detail == detail) {
                    return None;
                }
                changed = r.state != state;
                r.state = state;
                r.detail = detail.to_owned();
                r.updated_at = OffsetDateTime::now_utc();
                Some(r)
            },
        )
        .await?;
    Ok(changed)
}

/// Moves a promotion as far as it can go now: blocked by the security gate,
/// waiting (not requested, previous environment, soak, approvals), or issued.
pub(crate) async fn advance(
    shared: &Shared,
    service: &ServiceName,
    version: &Version,
    env: &EnvName,
) -> Result<(), Error> {
    let Some(release) = shared.store.release(service, version).await? else {
        return Ok(());
    };
    let release = release.release;
    let Some(stage) = shared.config.stage(env) else {
        return Ok(());
    };
    let Some(record) = shared.store.promotion(service, version, env).await? else {
        return Ok(());
    };
    if record.is_closed() {
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let tally = tally(&release, env, stage, &record.approvals, now);

    let overrides_needed =
        gate::overrides_needed(&release, shared.config.security_override_approvals());
    if tally.overrides < overrides_needed as usize {
        let detail = gate::held(&release, env, overrides_needed, tally.overrides);
        if set_state(shared, &record, PromotionState::Blocked, &detail).await? {
            warn!(%service, %version, environment = %env, "{detail}");
            let id = ids::promotion(service, version, env, "blocked");
            audit::promotion(
                shared, env, service, version, "gate", "blocked", detail, None, id,
            )
            .await?;
        }
        return Ok(());
    }
    let waiting = |detail: String| {
        let record = &record;
        async move {
            set_state(shared, record, PromotionState::Waiting, &detail)
                .await
                .map(|_| ())
        }
    };
    if !record.requested {
        return waiting(format!(
            "not requested: run ferry promote {service} {version} -e {env}"
        ))
        .await;
    }
    if let Some(previous) = shared.config.previous_environment(env) {
        let serving = shared
            .store
            .deployment(previous, service)
            .await?
            .and_then(|d| d.serving);
        if serving.as_ref() != Some(version) {
            return waiting(format!(
                "waiting for {previous} to run {service} {version} successfully"
            ))
            .await;
        }
        match record.eligible_at {
            None => {
                return waiting(format!(
                    "waiting for {previous} to report {service} {version} healthy"
                ))
                .await
            }
            Some(at) if at > now => {
                return waiting(format!("soaking in {previous} until {}", rfc3339(at))).await;
            }
            Some(_) => {}
        }
    }
    if tally.deploy.len() < stage.approvals_required as usize {
        return waiting(format!(
            "waiting for approvals: {} of {} (may approve: {})",
            tally.deploy.len(),
            stage.approvals_required,
            if tally.waiting_for.is_empty() {
                "nobody".to_owned()
            } else {
                tally.waiting_for.join(", ")
            }
        ))
        .await;
    }

    // Already running there (deployed by hand with the same quorum): close
    // the promotion rather than deploy the same version again.
    let here = shared.store.deployment(env, service).await?;
    if here.as_ref().and_then(|d| d.serving.as_ref()) == Some(version) {
        let detail = format!("{service} {version} already runs in {env}");
        shared
            .store
            .update_promotion(service, version, env, |current| {
                let mut r = current?;
                if r.is_closed() {
                    return None;
                }
                r.state = PromotionState::Issued;
                r.detail = detail.clone();
                r.updated_at = OffsetDateTime::now_utc();
                Some(r)
            })
            .await?;
        return Ok(());
    }

    // Eligible and approved: issue. Issuing is idempotent (deterministic id),
    // so two instances getting here both publish the same command id and
    // JetStream keeps one; the compare-and-set below closes the promotion.
    let approvals: Vec<SignedApproval> = if stage.approvals_required == 0 {
        Vec::new()
    } else {
        tally.deploy
    };
    let approvers: Vec<String> = approvals
        .iter()
        .map(|a| reviewer_name(stage, &a.data.reviewer, &a.data.reviewer_name))
        .collect();
    let id = ids::release_deploy(service, version, env);
    let actor = match (&record.requested_by, approvers.is_empty()) {
        (Some(by), true) => by.clone(),
        (by, false) => format!(
            "{} (approved by {})",
            by.as_deref().unwrap_or("pipeline"),
            approvers.join(", ")
        ),
        (None, true) => "pipeline".to_owned(),
    };
    let command = Command {
        environment: env.clone(),
        service: service.clone(),
        actor: Some(actor),
        hosts: Vec::new(),
        action: Action::Deploy {
            release: release.spec(),
            replicas: None,
            health: None,
            approvals,
            rollout: stage.strategy.map(|kind| {
                Box::new(RolloutOptions {
                    strategy: Some(Strategy::defaults(kind)),
                    analysis: None,
                })
            }),
            hotfix: release.hotfix,
        },
    };
    // With several hosts in the environment it goes host by host.
    match waves::deploy(shared, id, command, None).await {
        Ok(_) => {}
        Err(Error::InvalidCommand(e)) => {
            let detail = format!("cannot be deployed: {e}");
            set_state(shared, &record, PromotionState::Waiting, &detail).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let detail = if approvers.is_empty() {
        format!("deploy issued as command {id}")
    } else {
        format!(
            "deploy issued as command {id}, approved by {}",
            approvers.join(", ")
        )
    };
    shared
        .store
        .update_promotion(service, version, env, |current| {
            let mut r = current?;
            if r.state == PromotionState::Issued {
                return None;
            }
            r.state = PromotionState::Issued;
            r.command_id = Some(id);
            r.detail = detail.clone();
            r.updated_at = OffsetDateTime::now_utc();
            Some(r)
        })
        .await?;
    info!(%service, %version, environment = %env, command = %id, "promotion issued");
    Ok(())
}
