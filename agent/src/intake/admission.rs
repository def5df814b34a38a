//! Admission of a command, in the intake loop: decode and verify it
//! (signature, expiry, environment, service, the reviewers' quorum where
//! deploys are gated), skip another host's step, check it against the
//! commands running and executed (the replay check), refuse what fails,
//! and publish `accepted` for the rest, so that goes out without waiting
//! for a hop to the service's worker.

use std::collections::HashSet;
use std::sync::Arc;

use async_nats::jetstream;
use ferry_protocol::approval::{self, ApprovalKind, ApprovalTarget};
use ferry_protocol::command::{Action, Command};
use ferry_protocol::envelope::peek_id;
use ferry_protocol::event::EventBody;
use ferry_protocol::{
    EnvName, Envelope, HostName, Refusal, RefusalReason, ServiceName, TrustedKeys,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::settle::{progress_acks, refused, Done, End};
use crate::events::{EventPublisher, Report};
use crate::ledger::Ledger;

/// Whom the agent trusts: the keys that may sign commands, and, for an
/// approval-gated environment, the reviewers whose approvals a deploy must
/// carry and how many.
#[derive(Debug)]
pub struct Trust {
    /// Keys whose signed commands are accepted (the controller's).
    pub commands: TrustedKeys,
    /// Reviewer keys whose approvals count.
    pub reviewers: TrustedKeys,
    /// Approvals from distinct reviewers every deploy needs (0: none).
    pub approvals_required: usize,
}

impl Trust {
    /// Checks a deploy's approvals: none needed when the environment is not
    /// gated. Rollback, scale and maintenance carry none: a rollback only
    /// returns to a version this agent already ran, which passed this check
    /// when it was deployed.
    fn check_approvals(&self, command: &Command, now: OffsetDateTime) -> Result<(), Refusal> {
        let Action::Deploy {
            release, approvals, ..
        } = &command.action
        else {
            return Ok(());
        };
        let digest = release.approval_digest();
        let target = ApprovalTarget {
            service: &command.service,
            version: &release.version,
            digest: &digest,
            environment: &command.environment,
            kind: ApprovalKind::Deploy,
        };
        approval::check_quorum(
            approvals,
            self.approvals_required,
            &self.reviewers,
            target,
            now,
        )
        .map(|_| ())
    }
}

/// Ids of commands accepted and not yet finished: a redelivery of one of
/// them is left to the original's acknowledgement.
#[derive(Clone, Default)]
pub(super) struct InFlight(Arc<std::sync::Mutex<HashSet<Uuid>>>);

impl InFlight {
    /// Marks `id` as running; false if it already was.
    pub(super) fn insert(&self, id: Uuid) -> bool {
        self.0.lock().map(|mut set| set.insert(id)).unwrap_or(false)
    }

    /// `id` has finished.
    pub(super) fn remove(&self, id: &Uuid) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(id);
        }
    }
}

/// A verified, accepted command on its way to its service's worker.
pub(super) struct Admitted {
    pub(super) message: jetstream::Message,
    pub(super) id: Uuid,
    pub(super) expires: OffsetDateTime,
    pub(super) command: Command,
    /// Progress acks from admission, so a command queued behind a long
    /// rollout is not redelivered either; they stop when this is dropped.
    pub(super) progress_acks: tokio_util::sync::DropGuard,
}

/// What admission decided about one message.
pub(super) enum Admission {
    /// Run it.
    Run(Admitted),
    /// Refused or already done: report (if anything) and acknowledge.
    Finish(Done),
    /// A redelivery of a command still running; its original will ack.
    AlreadyRunning,
}

/// What admission needs: whom to trust, where this agent serves, what ran.
pub(super) struct Admitter {
    /// The agent's environment.
    pub(super) environment: EnvName,
    /// The agent's host among the environment's.
    pub(super) host: HostName,
    /// Keys and reviewers.
    pub(super) trust: Arc<Trust>,
    /// The executed commands, for the replay check.
    pub(super) ledger: Arc<Ledger>,
    /// Where refusals and `accepted` go.
    pub(super) publisher: EventPublisher,
    /// The commands accepted and not yet finished.
    pub(super) in_flight: InFlight,
}

impl Admitter {
    /// Verifies a command and checks it against what was executed, in the intake
    /// loop, so the `accepted` event goes out without waiting for a hop to the
    /// service's worker.
    pub(super) async fn admit(
        &self,
        message: jetstream::Message,
        service: ServiceName,
    ) -> Admission {
        let host = &self.host;
        let now = OffsetDateTime::now_utc();
        let envelope =
            match Envelope::<Command>::decode_verified(&message.payload, &self.trust.commands, now)
            {
                Ok(envelope) => envelope,
                Err(refusal) => {
                    let report = Report::refused(&service, peek_id(&message.payload), &refusal);
                    return Admission::Finish(refused(message, report));
                }
            };
        let id = envelope.id;
        let command = envelope.data;
        if command.environment == self.environment && !command.is_for(host) {
            // Another host's step of a wave (or a command to one host): this
            // host neither runs nor reports it, and it is not a replay here.
            tracing::debug!(command_id = %id, %host, "command for other hosts; skipping");
            return Admission::Finish(Done {
                message,
                report: None,
                end: End::Ack,
            });
        }
        let mismatch = if command.environment != self.environment {
            Some(Refusal::new(
                RefusalReason::WrongEnvironment,
                format!(
                    "the command is for {} but this agent serves {}",
                    command.environment, &self.environment
                ),
            ))
        } else if command.service != service {
            Some(Refusal::new(
                RefusalReason::Invalid,
                format!(
                    "the command names service {} but was sent on {}'s subject",
                    command.service, service
                ),
            ))
        } else {
            command
                .validate()
                .err()
                .map(|e| Refusal::new(RefusalReason::Invalid, e.to_string()))
                .or_else(|| self.trust.check_approvals(&command, now).err())
        };
        if let Some(refusal) = mismatch {
            let report = Report::refused(&service, Some(id), &refusal);
            return Admission::Finish(refused(message, report));
        }
        if !self.in_flight.insert(id) {
            if message.info().map(|i| i.delivered > 1).unwrap_or(false) {
                tracing::info!(command_id = %id, "redelivery of a command still running; its own ack will settle it");
                return Admission::AlreadyRunning;
            }
            let refusal = Refusal::new(
                RefusalReason::Replayed,
                format!("command {id} is already running"),
            );
            let report = Report::refused(&service, Some(id), &refusal);
            return Admission::Finish(refused(message, report));
        }
        if self.ledger.was_executed(&id) {
            self.in_flight.remove(&id);
            let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(false);
            if redelivered {
                // Our own ack was lost after the outcome was recorded: not a replay.
                tracing::info!(command_id = %id, "redelivered command was already executed; acknowledging");
                return Admission::Finish(Done {
                    message,
                    report: None,
                    end: End::Term,
                });
            }
            let refusal = Refusal::new(
                RefusalReason::Replayed,
                format!("command {id} was already executed"),
            );
            let report = Report::refused(&service, Some(id), &refusal);
            return Admission::Finish(refused(message, report));
        }

        // Straight away rather than through the event queue: it is what a
        // waiting operator sees first.
        self.publisher
            .publish_now(
                &service,
                Some(id),
                EventBody::Accepted {
                    action: command.action.kind(),
                },
            )
            .await;
        // Publishing only queued the event for the connection's task. Yield so
        // that task writes it out now: otherwise the command's worker, woken
        // next on this thread, starts executing (opening logs, spawning) first
        // and `accepted` leaves after that work, or on another thread woken for it.
        tokio::task::yield_now().await;
        let expires = envelope.expires.unwrap_or_else(OffsetDateTime::now_utc);
        let keep_alive = CancellationToken::new();
        tokio::spawn(progress_acks(message.clone(), keep_alive.clone()));
        Admission::Run(Admitted {
            message,
            id,
            expires,
            command,
            progress_acks: keep_alive.drop_guard(),
        })
    }
}
