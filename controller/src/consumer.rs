//! Runs a shared durable pull consumer: every controller instance binds to the
//! same consumer, so each message is handled by one of them, and a restarted
//! controller resumes where the last one acknowledged.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::AckKind;
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Error, Shared};

/// How long a message may be in processing before JetStream redelivers it.
/// With one message in flight, this is also how long a controller killed
/// mid-message holds up the others.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long shutdown waits for a message the server may already have sent.
const RELEASE_WAIT: Duration = Duration::from_millis(50);
/// Delay before a message whose processing failed for a passing reason is retried.
const RETRY_DELAY: Duration = Duration::from_secs(5);
/// Longest pause between attempts to re-create a lost consumer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A durable consumer's identity and selection.
pub(crate) struct Durable {
    /// Stream it reads.
    pub stream: &'static str,
    /// Durable name, shared by every controller instance.
    pub name: &'static str,
    /// Subjects it selects; empty for the whole stream.
    pub filter_subjects: Vec<String>,
    /// Start at messages stored after the consumer is created, not at the
    /// stream's beginning (notifications: enabling them must not replay a
    /// year of history).
    pub only_new: bool,
}

/// One message to handle.
pub(crate) struct Incoming {
    /// Its subject.
    pub subject: String,
    /// Its body.
    pub payload: Bytes,
    /// When JetStream stored it (the server's clock).
    pub stored_at: OffsetDateTime,
}

/// What to tell JetStream after handling a message.
pub(crate) enum Disposition {
    /// Handled; acknowledge.
    Done,
    /// Never going to work (malformed, invalid): log and terminate, so it is
    /// not redelivered.
    Reject(String),
    /// Failed for a reason that may pass (NATS unavailable): redeliver later.
    Retry(Error),
}

/// Feeds `durable`'s messages one at a time to `handle` until `shutdown`.
///
/// Returns an error only when the consumer cannot be set up at start; later
/// losses (consumer deleted, server restarted) are logged and repaired.
pub(crate) async fn run<F, Fut>(
    shared: Arc<Shared>,
    durable: Durable,
    shutdown: CancellationToken,
    handle: F,
) -> Result<(), Error>
where
    F: Fn(Arc<Shared>, Incoming) -> Fut,
    Fut: Future<Output = Disposition>,
{
    let config = pull::Config {
        durable_name: Some(durable.name.to_owned()),
        description: Some("ferry controller (shared by every instance)".to_owned()),
        deliver_policy: if durable.only_new {
            DeliverPolicy::New
        } else {
            DeliverPolicy::All
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        // One message in flight across all instances keeps them in stream
        // order: two releases or two outcomes of one service must not be
        // applied out of order by two controllers racing.
        max_ack_pending: 1,
        filter_subjects: durable.filter_subjects.clone(),
        ..Default::default()
    };
    let mut backoff = Duration::from_secs(1);
    let mut first = true;
    loop {
        let consumer = match create(&shared, &durable, config.clone()).await {
            Ok(consumer) => consumer,
            Err(e) if first => return Err(e),
            Err(e) => {
                warn!(consumer = durable.name, "{e}; retrying in {backoff:?}");
                if sleep_or_cancel(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        first = false;
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(e) => {
                warn!(consumer = durable.name, "could not start reading: {e}");
                if sleep_or_cancel(backoff, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        // The reason of the retries under way: a failure that persists
        // (NATS away, a view being rebuilt) is reported once, not once per
        // redelivery, and its end is reported too.
        let mut failing: Option<String> = None;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    release_buffered(durable.name, &mut messages).await;
                    return Ok(());
                }
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) if e.kind() == MessagesErrorKind::ConsumerDeleted => {
                    warn!(consumer = durable.name, "consumer deleted; re-creating it");
                    break;
                }
                Some(Err(e)) => {
                    // Missed heartbeats and failed pulls happen while NATS
                    // reconnects; the stream recovers by itself.
                    warn!(consumer = durable.name, "while reading: {e}");
                    continue;
                }
                None => {
                    warn!(
                        consumer = durable.name,
                        "message stream ended; re-creating it"
                    );
                    break;
                }
            };
            // Handled outside the select: once started, a message is
            // finished even if shutdown arrives meanwhile.
            let stored_at = message
                .info()
                .map_or_else(|_| OffsetDateTime::now_utc(), |info| info.published);
            let incoming = Incoming {
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
                stored_at,
            };
            let subject = incoming.subject.clone();
            let ack = match handle(shared.clone(), incoming).await {
                Disposition::Done => {
                    if let Some(reason) = failing.take() {
                        info!(consumer = durable.name, %subject, "handling again after: {reason}");
                    }
                    AckKind::Ack
                }
                Disposition::Reject(reason) => {
                    warn!(consumer = durable.name, %subject, "dropping message: {reason}");
                    AckKind::Term
                }
                Disposition::Retry(e) => {
                    let reason = e.to_string();
                    if failing.as_deref() == Some(reason.as_str()) {
                        debug!(consumer = durable.name, %subject, "will retry in {RETRY_DELAY:?}: {reason}");
                    } else {
                        warn!(consumer = durable.name, %subject, "will retry in {RETRY_DELAY:?}: {reason}");
                        failing = Some(reason);
                    }
                    AckKind::Nak(Some(RETRY_DELAY))
                }
            };
            if let Err(e) = message.ack_with(ack).await {
                // Redelivered after ACK_WAIT; handling is idempotent.
                debug!(consumer = durable.name, %subject, "could not acknowledge: {e}");
            }
        }
        if sleep_or_cancel(backoff, &shutdown).await {
            return Ok(());
        }
    }
}

async fn create(
    shared: &Shared,
    durable: &Durable,
    config: pull::Config,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>, Error> {
    let action = || format!("create consumer {} on {}", durable.name, durable.stream);
    let stream = shared
        .store
        .js()
        .get_stream(durable.stream)
        .await
        .map_err(|e| Error::nats(action(), e))?;
    // Create-or-update rather than get-or-create, so a newer controller's
    // filters and limits replace an older one's.
    stream
        .create_consumer(config)
        .await
        .map_err(|e| Error::nats(action(), e))
}

/// Hands back a message delivered but not yet handled, so the next instance
/// (or the restarted one) gets it at once instead of after [`ACK_WAIT`]:
/// with one message in flight, it would hold up every other.
async fn release_buffered(name: &str, messages: &mut pull::Stream) {
    if let Ok(Some(Ok(message))) = tokio::time::timeout(RELEASE_WAIT, messages.next()).await {
        if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
            debug!(
                consumer = name,
                "could not hand back a message at shutdown: {e}"
            );
        }
    }
}

/// Sleeps `delay`; true if cancelled meanwhile.
async fn sleep_or_cancel(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}
