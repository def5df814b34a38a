//! The API's view of the installation for `ferry doctor`, and the recording
//! of rollback drills (`ferry drill rollback`) in the audit trail.

use ferry_protocol::api::HistoryRecord;
use ferry_protocol::doctor::{AgentSighting, DrillReport, EnvironmentSetup, Installation};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, Shared};

/// The controller's public key, pipeline and each agent's last heartbeat.
pub(crate) async fn installation(shared: &Shared) -> Result<Installation, Error> {
    let environments = shared.config.environments();
    let mut agents = shared.store.agents(environments).await?;
    let environments = environments
        .iter()
        .map(|env| {
            let stage = shared.config.stage(env);
            EnvironmentSetup {
                environment: env.clone(),
                approvals_required: stage.map_or(0, |s| s.approvals_required),
                reviewer_keys: stage
                    .map(|s| s.reviewers.iter().map(|r| r.key.clone()).collect())
                    .unwrap_or_default(),
                agent: agents.remove(env).map(|record| AgentSighting {
                    received_at: record.received_at,
                    heartbeat: record.heartbeat,
                }),
            }
        })
        .collect();
    Ok(Installation {
        signing_key: shared.config.signing_key().public_key(),
        now: OffsetDateTime::now_utc(),
        command_ttl_secs: shared.config.command_ttl().as_secs(),
        agent_timeout_secs: shared.config.agent_timeout().as_secs(),
        environments,
    })
}

/// Appends the drill to the history as a `drill` record; `id` (the
/// request's) makes a retried request record it once.
pub(crate) async fn record_drill(
    shared: &Shared,
    id: Uuid,
    drill: DrillReport,
    actor: Option<String>,
) -> Result<HistoryRecord, Error> {
    let record = HistoryRecord {
        time: OffsetDateTime::now_utc(),
        environment: Some(drill.environment.clone()),
        service: drill.service.clone(),
        version: Some(drill.serving.clone()),
        action: "drill".to_owned(),
        outcome: if drill.succeeded {
            "succeeded"
        } else {
            "failed"
        }
        .to_owned(),
        detail: drill.sentence(),
        command_id: None,
        actor,
    };
    shared
        .store
        .append_history(&drill.environment, record.clone(), id)
        .await?;
    Ok(record)
}
