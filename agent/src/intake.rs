//! Commands arrive durably: the agent reads its environment's subjects of the
//! FERRY_COMMANDS stream through a durable consumer, hands each command to its
//! service's worker (one command at a time per service, services in parallel),
//! and acknowledges only once the outcome is recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use ferry_protocol::command::Command;
use ferry_protocol::event::AgentEvent;
use ferry_protocol::{
    streams, subject, Envelope, Refusal, RefusalReason, ServiceName, TrustedKeys,
};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;
use crate::executor::{Completion, Executor};
use crate::Error;

/// Commands queued per service before the agent stops pulling more.
const WORKER_QUEUE: usize = 32;
/// Unacknowledged commands JetStream may hand the agent at once.
const MAX_ACK_PENDING: i64 = 256;
/// Time JetStream waits for an ack before redelivering; long commands send
/// progress acks well inside it.
const ACK_WAIT: Duration = Duration::from_secs(60);
const PROGRESS_ACK_EVERY: Duration = Duration::from_secs(20);

/// Creates a stream from its spec if it does not exist.
pub async fn ensure_stream(
    js: &jetstream::Context,
    spec: &streams::StreamSpec,
) -> Result<jetstream::stream::Stream, Error> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: spec.name.to_owned(),
        subjects: spec.subjects.clone(),
        max_age: spec.max_age,
        max_bytes: spec.max_bytes,
        max_messages_per_subject: spec.max_messages_per_subject,
        duplicate_window: spec.duplicate_window,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| Error::JetStream {
        what: "creating stream",
        detail: format!("{}: {e}", spec.name),
    })
}

/// The durable consumer name of an environment's agent.
pub fn consumer_name(environment: &ferry_protocol::EnvName) -> String {
    format!("ferry-agent-{environment}")
}

/// Reads commands until `shutdown`, then lets the commands in progress reach a
/// known state and returns.
pub async fn run(
    client: async_nats::Client,
    executor: Arc<Executor>,
    trusted: Arc<TrustedKeys>,
    publisher: EventPublisher,
    shutdown: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(), Error> {
    let js = jetstream::new(client);
    let stream = ensure_stream(&js, &streams::commands()).await?;
    let env = executor.environment().clone();
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &consumer_name(&env),
            consumer::pull::Config {
                durable_name: Some(consumer_name(&env)),
                filter_subject: subject::commands_for_env(&env),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::JetStream {
            what: "creating consumer",
            detail: e.to_string(),
        })?;
    let mut messages = consumer.messages().await.map_err(|e| Error::JetStream {
        what: "pulling commands",
        detail: e.to_string(),
    })?;

    let mut workers: HashMap<ServiceName, mpsc::Sender<jetstream::Message>> = HashMap::new();
    let mut tasks = JoinSet::new();
    for service in executor.services().keys() {
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        workers.insert(service.clone(), tx);
        tasks.spawn(worker(rx, executor.clone(), trusted.clone()));
    }
    tracing::info!(environment = %env, services = workers.len(), "taking commands");
    let _ = ready.send(());

    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // The client re-issues pulls by itself; a missed heartbeat or a
                // reconnect shows up here and is not fatal.
                tracing::warn!(error = %e, "command stream hiccup");
                continue;
            }
            None => {
                return Err(Error::JetStream {
                    what: "pulling commands",
                    detail: "the stream of commands ended".into(),
                })
            }
        };
        route(message, &workers, &executor, &publisher).await;
    }
    drop(workers);
    // Workers finish the command in hand (the backends see the same shutdown
    // and stop waiting on health checks), then end as their queues close.
    while tasks.join_next().await.is_some() {}
    tracing::info!("command intake stopped");
    Ok(())
}

async fn route(
    message: jetstream::Message,
    workers: &HashMap<ServiceName, mpsc::Sender<jetstream::Message>>,
    executor: &Executor,
    publisher: &EventPublisher,
) {
    let parsed = subject::Subject::parse(message.subject.as_str());
    let service = match parsed {
        Ok(subject::Subject::Command { env, service }) if &env == executor.environment() => service,
        other => {
            let detail = match other {
                Ok(_) => "not a command subject of this environment".to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(subject = %message.subject, %detail, "refusing message on an unusable subject");
            publisher
                .publish_agent(AgentEvent::Refused {
                    subject: message.subject.as_str().chars().take(200).collect(),
                    reason: RefusalReason::Malformed,
                    detail,
                })
                .await;
            terminate(&message).await;
            return;
        }
    };
    match workers.get(&service) {
        Some(tx) => {
            if tx.send(message).await.is_err() {
                tracing::error!(%service, "service worker is gone; the command will be redelivered");
            }
        }
        None => {
            let refusal = Refusal::new(
                RefusalReason::UnknownService,
                format!("this agent does not manage a service named {service}"),
            );
            executor
                .refuse(
                    &service,
                    ferry_protocol::envelope::peek_id(&message.payload),
                    &refusal,
                )
                .await;
            terminate(&message).await;
        }
    }
}

async fn worker(
    mut queue: mpsc::Receiver<jetstream::Message>,
    executor: Arc<Executor>,
    trusted: Arc<TrustedKeys>,
) {
    while let Some(message) = queue.recv().await {
        handle(message, &executor, &trusted).await;
    }
}

async fn handle(message: jetstream::Message, executor: &Executor, trusted: &TrustedKeys) {
    let Ok(subject::Subject::Command { service, .. }) =
        subject::Subject::parse(message.subject.as_str())
    else {
        terminate(&message).await;
        return;
    };
    let envelope = match Envelope::<Command>::decode_verified(
        &message.payload,
        trusted,
        OffsetDateTime::now_utc(),
    ) {
        Ok(envelope) => envelope,
        Err(refusal) => {
            executor
                .refuse(
                    &service,
                    ferry_protocol::envelope::peek_id(&message.payload),
                    &refusal,
                )
                .await;
            terminate(&message).await;
            return;
        }
    };
    let id = envelope.id;
    let command = envelope.data;
    let mismatch = if &command.environment != executor.environment() {
        Some(Refusal::new(
            RefusalReason::WrongEnvironment,
            format!(
                "the command is for {} but this agent serves {}",
                command.environment,
                executor.environment()
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
    };
    if let Some(refusal) = mismatch {
        executor.refuse(&service, Some(id), &refusal).await;
        terminate(&message).await;
        return;
    }
    if executor.was_executed(&id) {
        let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(false);
        if redelivered {
            // Our own ack was lost after the outcome was recorded: not a replay.
            tracing::info!(command_id = %id, "redelivered command was already executed; acknowledging");
        } else {
            let refusal = Refusal::new(
                RefusalReason::Replayed,
                format!("command {id} was already executed"),
            );
            executor.refuse(&service, Some(id), &refusal).await;
        }
        terminate(&message).await;
        return;
    }

    executor.accepted(&service, id, command.action.kind());
    let expires = envelope.expires.unwrap_or_else(OffsetDateTime::now_utc);
    let keep_alive = CancellationToken::new();
    let progress_acks = tokio::spawn(progress_acks(message.clone(), keep_alive.clone()));
    let completion = executor.execute(id, expires, command).await;
    keep_alive.cancel();
    let _ = progress_acks.await;
    match completion {
        Completion::Done => {
            if let Err(e) = message.double_ack().await {
                tracing::warn!(command_id = %id, error = %e, "ack not confirmed; a redelivery will be recognised as executed");
            }
        }
        Completion::Interrupted => {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    }
}

async fn progress_acks(message: jetstream::Message, done: CancellationToken) {
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

async fn terminate(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Term).await {
        tracing::warn!(error = %e, "could not terminate a refused message");
    }
}
