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

use ferry_protocol::api::{
    ApprovalView, HistoryRecord, PromotionState, PromotionView, ReleaseRecord,
};
use ferry_protocol::approval::{self, ApprovalKind, ApprovalTarget, SignedApproval};
use ferry_protocol::command::{Action, Command};
use ferry_protocol::release::Release;
use ferry_protocol::rollout::{RolloutOptions, Strategy};
use ferry_protocol::{EnvName, ServiceName, Version};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::Stage;
use crate::gate;
use crate::{ids, issue, supersession, Error, Shared};

/// Actor of a deploy triggered by a release without an author.
const DEFAULT_ACTOR: &str = "ci";
/// How far in the future an approval may say it was issued (clock skew).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A reviewer's rejection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rejection {
    /// Who.
    pub by: Option<String>,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One release on its way into one environment: the value of
/// `<service>.<version>.<env>` in the promotions bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PromotionRecord {
    pub service: ServiceName,
    pub version: Version,
    pub environment: EnvName,
    pub state: PromotionState,
    /// Asked for: by the pipeline (`auto_deploy`) or `ferry promote`.
    pub requested: bool,
    pub requested_by: Option<String>,
    /// When the previous environment's soak ends (known once it succeeded).
    #[serde(with = "time::serde::rfc3339::option")]
    pub eligible_at: Option<OffsetDateTime>,
    /// Approvals as received (each verified on receipt and again on use).
    pub approvals: Vec<SignedApproval>,
    pub rejection: Option<Rejection>,
    pub command_id: Option<Uuid>,
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The newer release that superseded it (see `supersession`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<Version>,
}

impl PromotionRecord {
    pub(crate) fn new(
        service: &ServiceName,
        version: &Version,
        env: &EnvName,
        now: OffsetDateTime,
    ) -> Self {
        PromotionRecord {
            service: service.clone(),
            version: version.clone(),
            environment: env.clone(),
            state: PromotionState::Waiting,
            requested: false,
            requested_by: None,
            eligible_at: None,
            approvals: Vec::new(),
            rejection: None,
            command_id: None,
            detail: "not requested yet".to_owned(),
            updated_at: now,
            superseded_by: None,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        !matches!(
            self.state,
            PromotionState::Waiting | PromotionState::Blocked
        )
    }
}

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
    match issue::issue(shared, id, command).await {
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
            if let Err(e) = audit(
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
    audit(
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
    audit(
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
    audit(
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
