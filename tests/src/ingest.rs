//! Agents' events as many simulated agents publish them, for measuring and
//! testing how the controller folds them: the `controller_ingest` benchmark
//! and the ingest tests share these rounds, so the test drives exactly the
//! load the benchmark measures.

// Set-up that cannot work must stop the benchmark or test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use ferry_protocol::command::ActionKind;
use ferry_protocol::event::{
    AgentEvent, EventBody, Heartbeat, HostMetrics, ServiceEvent, ServiceMetrics, ServiceSnapshot,
    ServiceState,
};
use ferry_protocol::subject::{self, AgentEventKind};
use ferry_protocol::{streams, EnvName, Envelope, ServiceName, Version};
use time::OffsetDateTime;

use crate::WAIT;

/// Simulated agents, one per environment of the controller's pipeline.
pub const AGENTS: usize = 12;
/// Services each agent manages.
pub const SERVICES: usize = 4;
/// Agent cycles per round by default: in each, every agent sends a
/// heartbeat, and for every service a command's `accepted`, a metrics event
/// and the command's outcome.
pub const CYCLES: usize = 25;

pub fn env_name(agent: usize) -> EnvName {
    EnvName::new(format!("stage{agent:02}")).unwrap()
}

pub fn service_name(service: usize) -> ServiceName {
    ServiceName::new(format!("svc{service}")).unwrap()
}

pub fn snapshot(service: usize, version: &Version) -> ServiceSnapshot {
    ServiceSnapshot {
        service: service_name(service),
        version: Some(version.clone()),
        previous: None,
        replicas_desired: 2,
        replicas_healthy: 2,
        state: ServiceState::Running,
        maintenance: None,
        runtime: "process".into(),
        address: Some("127.0.0.1:8080".into()),
        rollout: None,
        strategy: None,
    }
}

/// Healthy traffic, under every alert threshold.
pub fn metrics() -> ServiceMetrics {
    ServiceMetrics {
        interval_secs: 1.0,
        requests: 100,
        errors: 0,
        error_rate: 0.0,
        requests_per_sec: 100.0,
        p50_ms: 3.0,
        p95_ms: 9.0,
        p99_ms: 14.0,
        availability_percent: Some(100.0),
        replicas: Vec::new(),
    }
}

/// One round's messages, encoded beforehand so encoding is not timed: per
/// cycle and agent, a heartbeat, then per service `accepted`, metrics and
/// the outcome (a deploy on even cycles, a scale on odd ones).
pub fn round_messages(round: usize, cycles: usize) -> Vec<(String, bytes::Bytes)> {
    let started_at = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for cycle in 0..cycles {
        let version = Version::new(format!("1.{round}.{cycle}")).unwrap();
        for agent in 0..AGENTS {
            let env = env_name(agent);
            let source = format!("/ferry/agent/{env}");
            let heartbeat = AgentEvent::Heartbeat(Heartbeat {
                host_name: None,
                agent_id: format!("agent-{agent}"),
                environment: env.clone(),
                started_at,
                interval_secs: 5,
                agent_version: "0.1.0".into(),
                host: HostMetrics::default(),
                services: (0..SERVICES).map(|s| snapshot(s, &version)).collect(),
                gap: None,
                sent_at: None,
                trusted_keys: Vec::new(),
                reviewer_keys: Vec::new(),
                approvals_required: 0,
            });
            out.push((
                subject::agent_event(&env, AgentEventKind::Heartbeat),
                Envelope::new(source.clone(), heartbeat)
                    .to_bytes()
                    .unwrap()
                    .into(),
            ));
            for s in 0..SERVICES {
                let service = service_name(s);
                let command_id = Some(uuid::Uuid::new_v4());
                let action = if cycle % 2 == 0 {
                    ActionKind::Deploy
                } else {
                    ActionKind::Scale
                };
                let bodies = [
                    EventBody::Accepted { action },
                    EventBody::Metrics(metrics()),
                    EventBody::Succeeded {
                        action,
                        version: Some(version.clone()),
                        replicas: 2,
                        detail: format!("{version} serving on 2 replicas"),
                    },
                ];
                for body in bodies {
                    let id = (!matches!(body, EventBody::Metrics(_)))
                        .then_some(command_id)
                        .flatten();
                    let subject = subject::event(&env, &service, body.kind());
                    let event = ServiceEvent {
                        host: None,
                        environment: env.clone(),
                        service: service.clone(),
                        command_id: id,
                        body,
                    };
                    out.push((
                        subject,
                        Envelope::new(source.clone(), event)
                            .to_bytes()
                            .unwrap()
                            .into(),
                    ));
                }
            }
        }
    }
    out
}

/// Stores `messages` in FERRY_EVENTS as fast as JetStream confirms them
/// (acknowledgements pipelined); returns the last stream sequence.
pub async fn publish(js: &jetstream::Context, messages: &[(String, bytes::Bytes)]) -> u64 {
    let mut last = 0;
    for chunk in messages.chunks(256) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (subject, payload) in chunk {
            acks.push(js.publish(subject.clone(), payload.clone()).await.unwrap());
        }
        for ack in acks {
            last = ack.await.unwrap().sequence;
        }
    }
    last
}

/// Waits until the controller's events consumer has acknowledged every
/// message up to stream sequence `last`.
pub async fn controller_drained(js: &jetstream::Context, last: u64) {
    let mut consumer: consumer::PullConsumer = js
        .get_consumer_from_stream(ferry_controller::events::CONSUMER, streams::events().name)
        .await
        .unwrap();
    let deadline = Instant::now() + 10 * WAIT;
    loop {
        let info = consumer.info().await.unwrap();
        if info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "controller did not fold the events in time: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The simulated agents' environments, the controller's pipeline.
pub fn environments() -> Vec<String> {
    (0..AGENTS).map(|a| env_name(a).to_string()).collect()
}

/// Outcomes (and so history records) in a round of `cycles`.
pub fn outcomes(cycles: usize) -> u64 {
    (cycles * AGENTS * SERVICES) as u64
}
