//! The agent's ledger over its state: what each service runs (its
//! record), which commands were executed (the replay check), and making a
//! command's changes durable together with its executed mark.
//!
//! Admission reads it (`was_executed`); execution changes records and
//! commits them. Writes go to disk on the blocking pool, in the order their
//! commits were made, and the state's lock is never held across one: an
//! fsync never runs on (or holds a lock needed by) the async workers that
//! carry the proxy and the NATS connection.

use std::sync::{Arc, Mutex};

use ferry_protocol::event::EventBody;
use ferry_protocol::ServiceName;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::runtime::RuntimeError;
use crate::state::{ServiceRecord, State};
use crate::Error;

/// The state, shared, with the order of its disk writes.
pub struct Ledger {
    state: Arc<Mutex<State>>,
    disk_order: tokio::sync::Mutex<()>,
}

/// A commit that did not reach the disk.
pub struct CommitFailed {
    /// Why.
    pub error: Error,
    /// Record changes went with it (not only the executed mark): the
    /// outcome must say the change is live but not recorded.
    pub records_lost: bool,
}

impl CommitFailed {
    fn records_lost(error: Error) -> CommitFailed {
        CommitFailed {
            error,
            records_lost: true,
        }
    }
}

impl Ledger {
    /// A ledger over `state`.
    pub fn new(state: Arc<Mutex<State>>) -> Self {
        Ledger {
            state,
            disk_order: tokio::sync::Mutex::new(()),
        }
    }

    /// The record of one service.
    pub fn record(&self, service: &ServiceName) -> ServiceRecord {
        self.state
            .lock()
            .map(|s| s.service(service))
            .unwrap_or_default()
    }

    /// Whether `id` was already executed.
    pub fn was_executed(&self, id: &Uuid) -> bool {
        self.state
            .lock()
            .map(|s| s.was_executed(id))
            .unwrap_or(false)
    }

    /// Changes `service`'s record in memory, where status and heartbeats
    /// read it; the command's commit makes it durable with the command's
    /// executed mark. A crash before then restarts from the record before
    /// the command, and JetStream delivers the command again.
    pub fn change_record(
        &self,
        service: &ServiceName,
        change: impl FnOnce(&mut ServiceRecord),
    ) -> Result<(), RuntimeError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| RuntimeError::NotRecorded(Error::StatePoisoned.to_string()))?;
        let mut record = state.service(service);
        change(&mut record);
        state.set_service(service, record);
        Ok(())
    }

    /// Records command `id` as executed, together with every record changed
    /// since the last commit, in one synced write on the blocking pool.
    pub async fn commit(&self, id: Uuid, expires: OffsetDateTime) -> Result<(), CommitFailed> {
        let _in_order = self.disk_order.lock().await;
        let commit = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| CommitFailed::records_lost(Error::StatePoisoned))?;
            state.commit(id, expires, OffsetDateTime::now_utc())
        }
        .map_err(CommitFailed::records_lost)?;
        let Some(write) = commit.write else {
            return Ok(());
        };
        let written = tokio::task::spawn_blocking(move || write.perform())
            .await
            .map_err(|e| Error::StateWriter(e.to_string()))
            .and_then(|written| written);
        match written {
            Ok(()) => Ok(()),
            Err(error) => {
                let records_lost = !commit.services.is_empty();
                if let Ok(mut state) = self.state.lock() {
                    state.not_written(commit.services);
                }
                Err(CommitFailed {
                    error,
                    records_lost,
                })
            }
        }
    }
}

/// An outcome whose record changes could not be written: live, but a
/// restarted agent would return to the state before the command.
pub fn not_recorded(body: EventBody, error: &Error) -> EventBody {
    let why = RuntimeError::NotRecorded(error.to_string()).to_string();
    match body {
        EventBody::Succeeded {
            action, version, ..
        } => EventBody::Failed {
            action,
            version: version.clone(),
            reason: why,
            serving: version,
        },
        EventBody::Failed {
            action,
            version,
            reason,
            serving,
        } => EventBody::Failed {
            action,
            version,
            reason: format!("{reason}; {why}"),
            serving,
        },
        other => other,
    }
}
