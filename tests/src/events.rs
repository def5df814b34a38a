//! Watching ferry's events from a test, with timeouts instead of sleeps.

use std::time::Duration;

use ferry_protocol::event::{AgentEvent, EventBody, ServiceEvent};
use ferry_protocol::{subject, EnvName, Envelope, ServiceName};
use futures::StreamExt;

/// A live subscription to one service's events.
pub struct EventWatch {
    subscriber: async_nats::Subscriber,
    /// Every event seen so far, in order.
    pub seen: Vec<ServiceEvent>,
}

impl EventWatch {
    /// Subscribes to `ferry.v1.evt.<env>.<service>.>`; flushes so no event
    /// published after this returns is missed.
    pub async fn new(client: &async_nats::Client, env: &str, service: &str) -> EventWatch {
        let env = EnvName::new(env).expect("env name");
        let service = ServiceName::new(service).expect("service name");
        let subscriber = client
            .subscribe(subject::events_for_service(&env, &service))
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        EventWatch {
            subscriber,
            seen: Vec::new(),
        }
    }

    /// Waits up to `timeout` for an event matching `pred`; panics with what was
    /// seen otherwise.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&ServiceEvent) -> bool,
    ) -> ServiceEvent {
        if let Some(found) = self.seen.iter().find(|e| pred(e)) {
            return found.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.subscriber.next()).await;
            match next {
                Ok(Some(message)) => {
                    let Ok(envelope) = Envelope::<ServiceEvent>::decode(&message.payload) else {
                        continue;
                    };
                    let event = envelope.data;
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("event subscription closed while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {timeout:?}; saw: {:#?}",
                    self.seen
                        .iter()
                        .filter(|e| !matches!(e.body, EventBody::Health(_) | EventBody::Metrics(_)))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits for the final event (succeeded, failed, refused, dry run) of `command_id`.
    pub async fn outcome(&mut self, command_id: uuid::Uuid, timeout: Duration) -> ServiceEvent {
        self.wait_for(timeout, &format!("outcome of {command_id}"), |e| {
            e.command_id == Some(command_id) && e.body.is_final()
        })
        .await
    }
}

/// Subscribes to `env`'s agent heartbeats, confirmed with the server, so
/// the first heartbeat of an agent started afterwards is not missed.
pub async fn subscribe_heartbeats(
    client: &async_nats::Client,
    env: &str,
) -> async_nats::Subscriber {
    let subscriber = client
        .subscribe(format!("ferry.v1.agent.{env}.heartbeat"))
        .await
        .expect("subscribe to heartbeats");
    client.flush().await.expect("flush the subscription");
    subscriber
}

/// Waits for the next heartbeat of `env`'s agent.
pub async fn next_heartbeat(
    subscriber: &mut async_nats::Subscriber,
    timeout: Duration,
) -> ferry_protocol::event::Heartbeat {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, subscriber.next()).await {
            Ok(Some(message)) => {
                if let Ok(Envelope {
                    data: AgentEvent::Heartbeat(hb),
                    ..
                }) = Envelope::<AgentEvent>::decode(&message.payload)
                {
                    return hb;
                }
            }
            Ok(None) => panic!("heartbeat subscription closed"),
            Err(_) => panic!("no heartbeat within {timeout:?}"),
        }
    }
}
