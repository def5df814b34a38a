//! The audit trail's one writer of promotion records: every transition of a
//! promotion worth knowing (requested, waiting for approval, blocked,
//! approved, rejected, superseded) is appended to the history stream under a
//! deterministic id, so it is recorded, and notified, once.

use ferry_protocol::api::HistoryRecord;
use ferry_protocol::{EnvName, ServiceName, Version};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, Shared};

/// Appends a history (audit) record about a promotion under `id`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn promotion(
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
