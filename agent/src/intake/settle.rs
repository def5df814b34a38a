//! How a command leaves the agent's hands: its final event published, then
//! its message acknowledged, terminated or left for redelivery; and the
//! progress acks that keep a queued or running command from being
//! redelivered meanwhile.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio_util::sync::CancellationToken;

use crate::events::{EventPublisher, Report};

/// A third of the consumer's ack wait (`streams::ACK_WAIT`): two progress acks may be lost before a running
/// command is redelivered (and recognised as still running).
const PROGRESS_ACK_EVERY: Duration = Duration::from_secs(5);

/// How a message leaves the agent's hands.
pub(super) enum End {
    /// Executed: acknowledge (and wait for the server to confirm).
    Ack,
    /// Refused: never deliver it again.
    Term,
    /// Interrupted by shutdown: deliver it again later.
    Nak,
}

/// A handled message: its final event (if any) and how to acknowledge it.
pub(super) struct Done {
    pub(super) message: jetstream::Message,
    pub(super) report: Option<Report>,
    pub(super) end: End,
}

/// Publishes the final event, then acknowledges: a command is only ever
/// acknowledged after its outcome is both recorded and published.
pub(super) async fn finish(done: Done, publisher: &EventPublisher) {
    if let Some(report) = done.report {
        publisher.publish_report(report).await;
    }
    let result = match done.end {
        End::Ack => done.message.double_ack().await,
        End::Term => done.message.ack_with(AckKind::Term).await,
        End::Nak => done.message.ack_with(AckKind::Nak(None)).await,
    };
    if let Err(e) = result {
        tracing::warn!(subject = %done.message.subject, error = %e, "acknowledgement not confirmed; a redelivery will be recognised as executed");
    }
}

/// A refused command: its refusal is reported and it is never delivered again.
pub(super) fn refused(message: jetstream::Message, report: Report) -> Done {
    Done {
        message,
        report: Some(report),
        end: End::Term,
    }
}

/// Progress acks for `message` every [`PROGRESS_ACK_EVERY`] until `done`.
pub(super) async fn progress_acks(message: jetstream::Message, done: CancellationToken) {
    let mut tick = tokio::time::interval(PROGRESS_ACK_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    }
}
