//! Publishing the agent's events. Outcomes go through JetStream and wait for
//! its acknowledgement (they are what history and `--wait` rely on); progress,
//! health and metrics are published fire-and-forget through a bounded queue,
//! so a slow NATS never stalls a deployment.

use std::time::Duration;

use async_nats::jetstream;
use ferry_protocol::event::{AgentEvent, EventBody, ServiceEvent};
use ferry_protocol::subject::{self, AgentEventKind};
use ferry_protocol::{EnvName, Envelope, HostName, Refusal, ServiceName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Queue length between event producers and the publisher task.
const QUEUE: usize = 1024;
/// Longest wait between two tries of an outcome's JetStream publish.
const DURABLE_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A command's final event, recorded and ready to publish.
#[derive(Debug)]
pub struct Report {
    /// The service.
    pub service: ServiceName,
    /// The command.
    pub command_id: Option<Uuid>,
    /// Succeeded, failed, refused or dry run.
    pub body: EventBody,
}

impl Report {
    /// A refusal of a command, logged here so every refusal is.
    pub fn refused(service: &ServiceName, command_id: Option<Uuid>, refusal: &Refusal) -> Report {
        tracing::warn!(%service, ?command_id, reason = %refusal.reason, detail = %refusal.detail, "command refused");
        Report {
            service: service.clone(),
            command_id,
            body: EventBody::Refused {
                reason: refusal.reason,
                detail: refusal.detail.clone(),
            },
        }
    }
}

/// Publishes events for one environment.
#[derive(Clone)]
pub struct EventPublisher {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    environment: EnvName,
    host: HostName,
    source: String,
    shutdown: CancellationToken,
}

impl EventPublisher {
    /// A publisher for the agent of `environment` on `host`.
    pub fn new(client: async_nats::Client, environment: EnvName, host: HostName) -> Self {
        let jetstream = jetstream::new(client.clone());
        let source = format!("/ferry/agent/{environment}");
        EventPublisher {
            client,
            jetstream,
            environment,
            host,
            source,
            shutdown: CancellationToken::new(),
        }
    }

    /// Stops durable publishes from retrying once `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    fn service_envelope(
        &self,
        service: &ServiceName,
        command_id: Option<Uuid>,
        body: EventBody,
    ) -> (String, Option<(Uuid, Vec<u8>)>) {
        let subject = subject::event(&self.environment, service, body.kind());
        let event = ServiceEvent {
            host: Some(self.host.clone()),
            environment: self.environment.clone(),
            service: service.clone(),
            command_id,
            body,
        };
        let envelope = Envelope::new(self.source.clone(), event);
        let encoded = match envelope.to_bytes() {
            Ok(bytes) => Some((envelope.id, bytes)),
            Err(e) => {
                tracing::error!(%subject, error = %e, "could not encode event");
                None
            }
        };
        (subject, encoded)
    }

    /// Publishes an event and waits until JetStream has stored it, retrying
    /// with backoff for as long as it takes (NATS may be gone for a while:
    /// the agent decides alone and reports when it is back) or until
    /// shutdown; returns whether it was stored.
    pub async fn publish_durable(
        &self,
        service: &ServiceName,
        command_id: Option<Uuid>,
        body: EventBody,
    ) -> bool {
        let (subject, Some((event_id, bytes))) = self.service_envelope(service, command_id, body)
        else {
            return false;
        };
        // The event's own id on every try, so JetStream stores the outcome
        // once even when a try that looked failed (NATS went away before the
        // ack) got through.
        let msg_id = event_id.to_string();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let message = jetstream::message::PublishMessage::build()
                .payload(bytes.clone().into())
                .message_id(&msg_id);
            let result = match self.jetstream.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(%subject, attempt, error = %e, "event not stored yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => break,
                    }
                    delay = (delay * 2).min(DURABLE_MAX_BACKOFF);
                }
            }
        }
        // Still sent on core NATS so live watchers (ferry --wait) see it.
        if let Err(e) = self.client.publish(subject.clone(), bytes.into()).await {
            tracing::error!(%subject, error = %e, "event lost");
        }
        false
    }

    /// Publishes a command's final event durably (`--wait` and history rely
    /// on it).
    pub async fn publish_report(&self, report: Report) {
        self.publish_durable(&report.service, report.command_id, report.body)
            .await;
    }

    /// Publishes an event on core NATS now (captured by the events stream, not
    /// confirmed).
    pub async fn publish_now(
        &self,
        service: &ServiceName,
        command_id: Option<Uuid>,
        body: EventBody,
    ) {
        let (subject, Some((_, bytes))) = self.service_envelope(service, command_id, body) else {
            return;
        };
        if let Err(e) = self.client.publish(subject.clone(), bytes.into()).await {
            tracing::warn!(%subject, error = %e, "could not publish event");
        }
    }

    /// Publishes an agent-wide event.
    pub async fn publish_agent(&self, event: AgentEvent) {
        let kind = match event {
            AgentEvent::Heartbeat(_) => AgentEventKind::Heartbeat,
            AgentEvent::Refused { .. } => AgentEventKind::Refused,
        };
        let subject = subject::agent_event(&self.environment, kind);
        match Envelope::new(self.source.clone(), event).to_bytes() {
            Ok(bytes) => {
                if let Err(e) = self.client.publish(subject.clone(), bytes.into()).await {
                    tracing::warn!(%subject, error = %e, "could not publish agent event");
                }
            }
            Err(e) => tracing::error!(%subject, error = %e, "could not encode agent event"),
        }
    }

    /// Starts the fire-and-forget publisher; returns the sink producers use.
    pub fn spawn_sink(
        &self,
        shutdown: CancellationToken,
    ) -> (EventSink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(ServiceName, Option<Uuid>, EventBody)>(QUEUE);
        let publisher = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    // Drain what is queued before leaving.
                    biased;
                    next = rx.recv() => match next {
                        Some((service, id, body)) => publisher.publish_now(&service, id, body).await,
                        None => return,
                    },
                    _ = shutdown.cancelled() => {
                        while let Ok((service, id, body)) = rx.try_recv() {
                            publisher.publish_now(&service, id, body).await;
                        }
                        return;
                    }
                }
            }
        });
        (EventSink { tx }, task)
    }
}

/// Where progress, health and metrics events are queued for publishing.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<(ServiceName, Option<Uuid>, EventBody)>,
}

impl EventSink {
    /// Queues an event; when the queue is full the event is dropped and logged
    /// rather than blocking the caller.
    pub fn emit(&self, service: &ServiceName, command_id: Option<Uuid>, body: EventBody) {
        if let Err(e) = self.tx.try_send((service.clone(), command_id, body)) {
            tracing::warn!(%service, error = %e, "event queue full or closed; event dropped");
        }
    }
}
