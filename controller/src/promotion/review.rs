//! Reviewers' and operators' decisions on a promotion: a signed approval
//! recorded (or refused with the reason), a rejection, a `ferry promote`.

use ferry_gate as gate;
use ferry_protocol::api::{PromotionState, PromotionView};
use ferry_protocol::approval::{self, ApprovalKind, ApprovalTarget, SignedApproval};
use ferry_protocol::{EnvName, ServiceName, Version};
use std::time::Duration;

use time::OffsetDateTime;
use tracing::warn;
use uuid::Uuid;

use super::advance::{advance, opened_audit};
use super::approvals::{is_author, reviewer_name, tally, MAX_CLOCK_SKEW};
use super::view::view;
use crate::records::{PromotionRecord, Rejection};
use crate::{audit, ids, Shared};

/// What happened to a submitted approval.
enum Submitted {
    Added(Box<PromotionRecord>),
    Duplicate,
    Closed(PromotionState),
}

/// Records a reviewer's signed approval, or says in a sentence why it does
/// not count (untrusted reviewer, bad signature, expired, too long-lived,
/// the release's author, already given).
pub(crate) async fn approve(
    shared: &Shared,
    signed: SignedApproval,
) -> Result<(String, PromotionView), String> {
    let a = signed.data.clone();
    let (service, version, env) = (&a.service, &a.version, &a.environment);
    let stage = shared.config.stage(env).ok_or_else(|| {
        format!(
            "unknown environment {env}: the pipeline is {}",
            shared.config.pipeline()
        )
    })?;
    let release = shared
        .store
        .release(service, version)
        .await
        .map_err(|e| format!("the controller could not read the releases: {e}"))?
        .ok_or_else(|| format!("unknown release {service} {version}"))?
        .release;
    let now = OffsetDateTime::now_utc();
    let who = reviewer_name(stage, &a.reviewer, &a.reviewer_name);
    let refuse = |why: String| {
        let who = &who;
        async move {
            let detail =
                format!("approval by {who} of {service} {version} in {env} refused: {why}");
            // Refused approvals are audited too (a random id: each attempt is an event).
            if let Err(e) = audit::promotion(
                shared,
                env,
                service,
                version,
                "approve",
                "refused",
                detail.clone(),
                Some(who.clone()),
                Uuid::new_v4(),
            )
            .await
            {
                warn!("could not audit a refused approval: {e}");
            }
            Err::<(String, PromotionView), String>(detail)
        }
    };
    let (reviewers, keys) = stage.reviewers_for(a.kind);
    if !reviewers.iter().any(|r| r.key == a.reviewer) {
        return refuse(format!(
            "key {} may not give {} approvals in {env} (reviewers: {})",
            a.reviewer,
            a.kind,
            reviewers
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await;
    }
    let digest = release.approval_digest();
    let target = ApprovalTarget {
        service,
        version,
        digest: &digest,
        environment: env,
        kind: a.kind,
    };
    if let Err(refusal) = approval::verify(&signed, keys, target, now) {
        return refuse(refusal.detail).await;
    }
    let ttl = shared.config.approval_ttl();
    if a.expires_at - a.issued_at > ttl + Duration::from_secs(60) {
        return refuse(format!(
            "valid for longer than this pipeline's approval_ttl ({})",
            humantime::format_duration(ttl)
        ))
        .await;
    }
    if a.issued_at > now + MAX_CLOCK_SKEW {
        return refuse("issued in the future; check the reviewer's clock".to_owned()).await;
    }
    if is_author(&release, stage, &a.reviewer, &a.reviewer_name) {
        return refuse(format!(
            "{who} is the author of {service} {version} and cannot approve it"
        ))
        .await;
    }
    if a.kind == ApprovalKind::SecurityOverride && gate::criticals(&release) == 0 {
        return refuse("the release has no critical vulnerabilities to override".to_owned()).await;
    }
    let mut outcome = Submitted::Duplicate;
    let result = shared
        .store
        .update_promotion(service, version, env, |current| {
            let mut record =
                current.unwrap_or_else(|| PromotionRecord::new(service, version, env, now));
            if record.is_closed() {
                outcome = Submitted::Closed(record.state);
                return None;
            }
            let duplicate = record.approvals.iter().any(|x| {
                x.data.reviewer == a.reviewer && x.data.kind == a.kind && x.data.expires_at > now
            });
            if duplicate {
                outcome = Submitted::Duplicate;
                return None;
            }
            // An expired approval of the same reviewer is replaced, not kept.
            record
                .approvals
                .retain(|x| !(x.data.reviewer == a.reviewer && x.data.kind == a.kind));
            record.approvals.push(signed.clone());
            record.updated_at = now;
            outcome = Submitted::Added(Box::new(record.clone()));
            Some(record)
        })
        .await;
    if let Err(e) = result {
        return Err(format!("the controller could not record the approval: {e}"));
    }
    let record = match outcome {
        Submitted::Added(record) => record,
        Submitted::Duplicate => {
            return refuse(format!(
                "{who} already approved it; one reviewer counts once"
            ))
            .await
        }
        Submitted::Closed(state) => {
            return refuse(format!("the promotion is already {state}")).await;
        }
    };
    let counted = tally(&release, env, stage, &record.approvals, now);
    let (have, need) = match a.kind {
        ApprovalKind::Deploy => (counted.deploy.len(), stage.approvals_required as usize),
        ApprovalKind::SecurityOverride => (
            counted.overrides,
            shared.config.security_override_approvals() as usize,
        ),
    };
    let detail = format!(
        "{who} approved {service} {version} for {env} ({}; {have} of {need})",
        a.kind
    );
    audit::promotion(
        shared,
        env,
        service,
        version,
        "approve",
        "recorded",
        detail.clone(),
        Some(who.clone()),
        ids::history(signed.id, "approved"),
    )
    .await
    .map_err(|e| format!("the controller could not audit the approval: {e}"))?;
    if let Err(e) = advance(shared, service, version, env).await {
        warn!(%service, %version, environment = %env, "could not advance after an approval: {e}");
    }
    let view = view(shared, service, version, env)
        .await?
        .ok_or_else(|| "the promotion vanished".to_owned())?;
    Ok((detail, view))
}

/// Rejects a release in an environment: its promotion there stops for good.
pub(crate) async fn reject(
    shared: &Shared,
    env: &EnvName,
    service: &ServiceName,
    version: &Version,
    reason: String,
    actor: Option<String>,
) -> Result<(String, PromotionView), String> {
    if reason.trim().is_empty() || reason.len() > 1024 {
        return Err("give a reason of 1 to 1024 bytes".to_owned());
    }
    if shared.config.stage(env).is_none() {
        return Err(format!(
            "unknown environment {env}: the pipeline is {}",
            shared.config.pipeline()
        ));
    }
    shared
        .store
        .release(service, version)
        .await
        .map_err(|e| format!("the controller could not read the releases: {e}"))?
        .ok_or_else(|| format!("unknown release {service} {version}"))?;
    let now = OffsetDateTime::now_utc();
    let mut issued = false;
    shared
        .store
        .update_promotion(service, version, env, |current| {
            issued = false;
            let mut record =
                current.unwrap_or_else(|| PromotionRecord::new(service, version, env, now));
            match record.state {
                PromotionState::Issued => {
                    issued = true;
                    return None;
                }
                PromotionState::Rejected => return None,
                _ => {}
            }
            record.state = PromotionState::Rejected;
            record.rejection = Some(Rejection {
                by: actor.clone(),
                reason: reason.clone(),
                at: now,
            });
            record.detail = format!(
                "rejected by {}: {reason}",
                actor.as_deref().unwrap_or("someone")
            );
            record.updated_at = now;
            Some(record)
        })
        .await
        .map_err(|e| format!("the controller could not record the rejection: {e}"))?;
    if issued {
        return Err(format!(
            "{service} {version} was already deployed to {env}; roll it back instead"
        ));
    }
    let detail = format!(
        "{} rejected {service} {version} for {env}: {reason}",
        actor.as_deref().unwrap_or("someone")
    );
    audit::promotion(
        shared,
        env,
        service,
        version,
        "reject",
        "rejected",
        detail.clone(),
        actor,
        ids::promotion(service, version, env, "rejected"),
    )
    .await
    .map_err(|e| format!("the controller could not audit the rejection: {e}"))?;
    let view = view(shared, service, version, env)
        .await?
        .ok_or_else(|| "the promotion vanished".to_owned())?;
    Ok((detail, view))
}

/// `ferry promote`: asks for the release to go into `env` as soon as it is
/// eligible and approved.
pub(crate) async fn promote(
    shared: &Shared,
    env: &EnvName,
    service: &ServiceName,
    version: &Version,
    actor: Option<String>,
) -> Result<(String, PromotionView), String> {
    let stage = shared.config.stage(env).ok_or_else(|| {
        format!(
            "unknown environment {env}: the pipeline is {}",
            shared.config.pipeline()
        )
    })?;
    shared
        .store
        .release(service, version)
        .await
        .map_err(|e| format!("the controller could not read the releases: {e}"))?
        .ok_or_else(|| {
            format!(
                "unknown release {service} {version}: publish it first with ferry release publish"
            )
        })?;
    let now = OffsetDateTime::now_utc();
    // When the previous environment already runs it, the soak counts from
    // its last successful deploy.
    let eligible_at = match shared.config.previous_environment(env) {
        None => Some(now),
        Some(previous) => shared
            .store
            .deployment(previous, service)
            .await
            .map_err(|e| format!("the controller could not read the deployments: {e}"))?
            .filter(|d| d.serving.as_ref() == Some(version))
            .map(|d| d.updated_at + stage.soak),
    };
    let mut closed = None;
    let mut opened = false;
    let updated = shared
        .store
        .update_promotion(service, version, env, |current| {
            closed = None;
            opened = false;
            let mut record =
                current.unwrap_or_else(|| PromotionRecord::new(service, version, env, now));
            if record.is_closed() {
                closed = Some(record.state);
                return None;
            }
            if record.eligible_at.is_none() {
                record.eligible_at = eligible_at;
            }
            if !record.requested {
                record.requested = true;
                record.requested_by = actor.clone();
                opened = true;
            }
            record.updated_at = now;
            Some(record)
        })
        .await
        .map_err(|e| format!("the controller could not record the promotion: {e}"))?;
    if let Some(state) = closed {
        return Err(format!(
            "the promotion of {service} {version} into {env} is already {state}"
        ));
    }
    audit::promotion(
        shared,
        env,
        service,
        version,
        "promote",
        "requested",
        format!(
            "{} asked to promote {service} {version} into {env}",
            actor.as_deref().unwrap_or("someone")
        ),
        actor.clone(),
        Uuid::new_v4(),
    )
    .await
    .map_err(|e| format!("the controller could not audit the request: {e}"))?;
    if let (true, Some(record)) = (opened, updated.as_ref()) {
        opened_audit(shared, record, stage)
            .await
            .map_err(|e| format!("the controller could not audit the request: {e}"))?;
    }
    advance(shared, service, version, env)
        .await
        .map_err(|e| format!("the controller could not advance the promotion: {e}"))?;
    let view = view(shared, service, version, env)
        .await?
        .ok_or_else(|| "the promotion vanished".to_owned())?;
    Ok((
        format!(
            "promotion of {service} {version} into {env}: {}",
            view.detail
        ),
        view,
    ))
}
