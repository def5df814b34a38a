//! Promotion through the pipeline: a release enters the first environment
//! by itself and each next one once it is eligible (the previous environment
//! has run it successfully for the soak time), approved (a quorum of
//! reviewers' signed approvals) and past the security gate (no critical
//! vulnerabilities, or a security override quorum).
//!
//! Every promotion is a record in the promotions bucket; every change to one
//! is a compare-and-set, and the deploy it ends in has a deterministic id, so
//! two controller instances advancing the same promotion issue one command.
//! Each transition worth knowing (requested, waiting for approval, blocked,
//! approved, rejected) is appended to the history (audit) stream under a
//! deterministic id, so it is recorded, and notified, once.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_gate as gate;
use ferry_protocol::api::{HistoryRecord, PromotionState, ReleaseRecord};
use ferry_protocol::approval::{self, ApprovalKind, ApprovalTarget, SignedApproval};
use ferry_protocol::command::{Action, Command};
use ferry_protocol::release::Release;
use ferry_protocol::rollout::{RolloutOptions, Strategy};
use ferry_protocol::{EnvName, ServiceName, Version};
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::Stage;
pub(crate) use crate::records::{PromotionRecord, Rejection};
use crate::{ids, supersession, waves, Error, Shared};

mod review;
mod view;

pub(crate) use review::{approve, promote, reject};
pub(crate) use view::{approvals_for_deploy, list};

/// Actor of a deploy triggered by a release without an author.
const DEFAULT_ACTOR: &str = "ci";
/// How far in the future an approval may say it was issued (clock skew).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The approvals that count for one release in one environment.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Valid deploy approvals, one per reviewer key.
    pub deploy: Vec<SignedApproval>,
    /// Valid security override approvals, one per reviewer key.
    pub overrides: usize,
    /// Reviewers who have not given a counting deploy approval (authors left out).
    pub waiting_for: Vec<String>,
}

/// Whether `reviewer` (key and names) is the release's author.
fn is_author(release: &Release, stage: &Stage, key: &str, declared_name: &str) -> bool {
    let Some(author) = release.author.as_deref().map(str::trim) else {
        return false;
    };
    let same = |name: &str| name.trim().eq_ignore_ascii_case(author);
    author == key || same(declared_name) || stage.reviewer(key).is_some_and(|r| same(&r.name))
}

/// Counts `approvals` of `release` in `env`: a valid signature by one of the
/// environment's reviewers, unexpired at `now`, about exactly this release and
/// environment, not by its author; each reviewer key counts once per kind.
pub(crate) fn tally(
    release: &Release,
    env: &EnvName,
    stage: &Stage,
    approvals: &[SignedApproval],
    now: OffsetDateTime,
) -> Tally {
    let digest = release.approval_digest();
    let mut deploy: BTreeMap<String, SignedApproval> = BTreeMap::new();
    let mut overrides = std::collections::BTreeSet::new();
    for signed in approvals {
        let target = ApprovalTarget {
            service: &release.service,
            version: &release.version,
            digest: &digest,
            environment: env,
            kind: signed.data.kind,
        };
        let (_, keys) = stage.reviewers_for(signed.data.kind);
        let Ok(a) = approval::verify(signed, keys, target, now) else {
            continue;
        };
        if is_author(release, stage, &a.reviewer, &a.reviewer_name) {
            continue;
        }
        match a.kind {
            ApprovalKind::Deploy => {
                deploy.entry(a.reviewer.clone()).or_insert(signed.clone());
            }
            ApprovalKind::SecurityOverride => {
                overrides.insert(a.reviewer.clone());
            }
        }
    }
    let waiting_for = stage
        .reviewers
        .iter()
        .filter(|r| !deploy.contains_key(&r.key))
        .filter(|r| !is_author(release, stage, &r.key, &r.name))
        .map(|r| r.name.clone())
        .collect();
    Tally {
        deploy: deploy.into_values().collect(),
        overrides: overrides.len(),
        waiting_for,
    }
}

/// The name a reviewer key is configured under (what the audit trail
/// records), else the name the approval declares.
pub(crate) fn reviewer_name(stage: &Stage, key: &str, declared: &str) -> String {
    stage
        .reviewer(key)
        .map_or_else(|| declared.to_owned(), |r| r.name.clone())
}

/// `2026-11-26T19:28:36Z`: whole seconds, for sentences.
fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Appends a history (audit) record about a promotion under `id`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn audit(
    shared: &Shared,
    env: &EnvName,
    service: &ServiceName,
    version: &Version,
    action: &str,
    outcome: &str,
    detail: String,
    actor: Option<String>,
    id: Uuid,
) -> Result<(), Error> {
    let record = HistoryRecord {
        time: OffsetDateTime::now_utc(),
        environment: Some(env.clone()),
        service: service.clone(),
        version: Some(version.clone()),
        action: action.to_owned(),
        outcome: outcome.to_owned(),
        detail,
        command_id: None,
        actor,
    };
    shared.store.append_history(env, record, id).await
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
async fn opened_audit(
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
    audit(
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
            audit(
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ferry_protocol::approval::Approval;
    use ferry_protocol::{SigningKey, TrustedKeys};

    use super::*;
    use crate::config::Reviewer;

    struct Person {
        name: &'static str,
        key: SigningKey,
    }

    fn person(name: &'static str) -> Person {
        Person {
            name,
            key: SigningKey::generate(),
        }
    }

    fn stage(required: u32, people: &[&Person]) -> Stage {
        let reviewers: Vec<Reviewer> = people
            .iter()
            .map(|p| Reviewer {
                name: p.name.into(),
                key: p.key.public_key(),
            })
            .collect();
        let keys = Arc::new(TrustedKeys::new(reviewers.iter().map(|r| r.key.as_str())).unwrap());
        Stage {
            auto_deploy: true,
            soak: Duration::ZERO,
            approvals_required: required,
            reviewers: reviewers.clone(),
            reviewer_keys: keys.clone(),
            strategy: None,
            max_parallel_hosts: 1,
            override_reviewers: reviewers,
            override_keys: keys,
        }
    }

    fn release(author: &str) -> Release {
        Release {
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            artifact: "/bin/web".into(),
            digest: Some("sha256:ab".into()),
            env: Default::default(),
            secret_env: Default::default(),
            author: Some(author.into()),
            commit: None,
            hotfix: false,
            scan: None,
            scan_findings: Vec::new(),
        }
    }

    fn approval(p: &Person, declared: &str, valid: Duration, kind: ApprovalKind) -> SignedApproval {
        let now = OffsetDateTime::now_utc();
        Approval {
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            digest: "sha256:ab".into(),
            environment: EnvName::new("production").unwrap(),
            reviewer: p.key.public_key(),
            reviewer_name: declared.into(),
            issued_at: now,
            expires_at: now + valid,
            kind,
        }
        .sign(&p.key)
        .unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn authors_repeats_expired_and_strangers_do_not_count() {
        let (alice, bob, carol, mallory) = (
            person("alice"),
            person("bob"),
            person("carol"),
            person("mallory"),
        );
        let stage = stage(2, &[&alice, &bob, &carol]);
        let env = EnvName::new("production").unwrap();
        let now = OffsetDateTime::now_utc();
        let carol_wrote_it = release("carol");
        let approvals = vec![
            approval(&alice, "alice", HOUR, ApprovalKind::Deploy),
            approval(&alice, "alice", HOUR, ApprovalKind::Deploy),
            // carol's key under another name is still carol.
            approval(&carol, "not-carol", HOUR, ApprovalKind::Deploy),
            approval(&mallory, "mallory", HOUR, ApprovalKind::Deploy),
            approval(&bob, "bob", Duration::from_secs(1), ApprovalKind::Deploy),
            approval(&bob, "bob", HOUR, ApprovalKind::SecurityOverride),
        ];
        let later = now + Duration::from_secs(2);
        let t = tally(&carol_wrote_it, &env, &stage, &approvals, later);
        let counted: Vec<&str> = t
            .deploy
            .iter()
            .map(|a| a.data.reviewer_name.as_str())
            .collect();
        assert_eq!(counted, ["alice"]);
        assert_eq!(t.overrides, 1);
        assert_eq!(t.waiting_for, ["bob"], "the author is never asked");

        // A reviewer who declares the author's name is taken as the author.
        let t = tally(
            &release("bob"),
            &env,
            &stage,
            &[approval(&alice, "bob", HOUR, ApprovalKind::Deploy)],
            now,
        );
        assert!(t.deploy.is_empty());
        // And an author given as a public key is matched by key.
        let by_key = release(&alice.key.public_key());
        let t = tally(
            &by_key,
            &env,
            &stage,
            &[approval(&alice, "alice", HOUR, ApprovalKind::Deploy)],
            now,
        );
        assert!(t.deploy.is_empty());
    }
}
