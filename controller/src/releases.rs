//! The release flow: CI's release events are stored and enter the pipeline at
//! its first environment (see [`crate::promotion`]: deployed at once unless
//! the security gate holds them).

use std::sync::Arc;

use ferry_protocol::api::{HistoryRecord, ReleaseRecord};
use ferry_protocol::release::Release;
use ferry_protocol::streams;
use ferry_protocol::subject::Subject;
use ferry_protocol::{Envelope, Refusal, RefusalReason, ServiceName};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::consumer::{self, Disposition, Durable, Incoming};
use crate::store::StoredRelease;
use crate::{ids, promotion, Error, Shared};

/// The durable consumer every controller instance shares for releases.
pub const CONSUMER: &str = "ferry-controller-releases";

/// Handles release events until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> Result<(), Error> {
    let durable = Durable {
        stream: streams::releases().name,
        name: CONSUMER,
        filter_subjects: Vec::new(),
        only_new: false,
    };
    consumer::run(shared, durable, shutdown, handle).await
}

/// Handles one release event; a rejected one is also recorded in the
/// service's history (at the first environment), so CI and operators see why
/// with `ferry history` rather than only in the controller's log.
async fn handle(shared: Arc<Shared>, message: Incoming) -> Disposition {
    let service = match Subject::parse(&message.subject) {
        Ok(Subject::Release { service }) => service,
        // No valid service name: there is no history to put it in.
        _ => return Disposition::Reject(format!("{} is not a release subject", message.subject)),
    };
    let stored_at = message.stored_at;
    match accept(&shared, message, service.clone()).await {
        Disposition::Reject(reason) => {
            let first = shared.config.first_environment().clone();
            let record = HistoryRecord {
                time: stored_at,
                environment: None,
                service: service.clone(),
                version: None,
                action: "release".to_owned(),
                outcome: "rejected".to_owned(),
                detail: Refusal::new(RefusalReason::Invalid, reason.clone()).detail,
                command_id: None,
                actor: None,
            };
            let id = ids::release_rejected(&service, stored_at);
            if let Err(e) = shared.store.append_history(&first, record, id).await {
                return Disposition::Retry(e);
            }
            Disposition::Reject(reason)
        }
        other => other,
    }
}

async fn accept(shared: &Arc<Shared>, message: Incoming, service: ServiceName) -> Disposition {
    let release = match Envelope::<Release>::decode(&message.payload) {
        Ok(envelope) => envelope.data,
        Err(refusal) => {
            return Disposition::Reject(format!("malformed release event: {}", refusal.detail))
        }
    };
    if release.service != service {
        return Disposition::Reject(format!(
            "release of {} published on the subject of {service}",
            release.service
        ));
    }
    if let Err(e) = release.validate() {
        return Disposition::Reject(format!(
            "invalid release {} {}: {e}",
            release.service, release.version
        ));
    }
    let record = ReleaseRecord {
        release: release.clone(),
        received_at: message.stored_at,
    };
    match shared.store.record_release(&record).await {
        Ok(StoredRelease::New) => {}
        // The very message that stored it, redelivered: an earlier attempt
        // stopped part-way, so carry on (every step below is idempotent).
        Ok(StoredRelease::Same(existing)) if existing.received_at == message.stored_at => {}
        Ok(StoredRelease::Same(_)) => {
            // Published again (a CI retry, or a re-created consumer replaying
            // the stream): it was deployed when first seen; deploying it again
            // would undo any promotion or rollback since.
            debug!(service = %release.service, version = %release.version, "release already known; not redeploying");
            return Disposition::Done;
        }
        Ok(StoredRelease::Conflict(existing)) => {
            return Disposition::Reject(format!(
                "release {} {} was already published on {} with different content; versions are immutable, publish a new version",
                release.service, release.version, existing.received_at
            ))
        }
        Err(e) => return Disposition::Retry(e),
    }

    let first = shared.config.first_environment().clone();
    // The history subject needs an environment; a release enters the
    // pipeline at its first one, so that is where its record goes.
    let published = HistoryRecord {
        time: message.stored_at,
        environment: None,
        service: release.service.clone(),
        version: Some(release.version.clone()),
        action: "release".to_owned(),
        outcome: "published".to_owned(),
        detail: format!(
            "release {} {} published ({})",
            release.service, release.version, release.artifact
        ),
        command_id: None,
        actor: release.author.clone(),
    };
    let published_id = ids::release_published(&release.service, &release.version);
    if let Err(e) = shared
        .store
        .append_history(&first, published, published_id)
        .await
    {
        return Disposition::Retry(e);
    }

    match promotion::on_release(shared, &record).await {
        Ok(()) => {
            info!(service = %release.service, version = %release.version, "new release entered the pipeline at {first}");
            Disposition::Done
        }
        Err(Error::InvalidCommand(e)) => Disposition::Reject(format!(
            "release {} {} cannot be deployed: {e}",
            release.service, release.version
        )),
        Err(e) => Disposition::Retry(e),
    }
}
