//! `--wait`: following one command's events until its outcome.
//!
//! The subscription is made before the API request is sent, so no event can
//! slip past between the controller issuing the command and ferry listening;
//! events that arrive before the reply wait in the subscription's buffer.

use std::time::Duration;

use async_nats::Subscriber;
use bytes::Bytes;
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::{subject, EnvName, Envelope, ServiceName};
use futures::{Stream, StreamExt};
use uuid::Uuid;

use crate::args::OutputFormat;
use crate::client::Connection;
use crate::error::{CliError, Result};
use crate::output;

/// A subscription to one service's events, made before the command is sent.
pub struct Follower {
    subscriber: Subscriber,
    environment: EnvName,
}

impl Follower {
    /// Subscribes to every event of `service` in `environment`.
    pub async fn subscribe(
        connection: &Connection,
        environment: &EnvName,
        service: &ServiceName,
    ) -> Result<Self> {
        let subject = subject::events_for_service(environment, service);
        let subscriber = connection
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(|e| CliError::unreachable(format!("cannot subscribe to {subject}: {e}")))?;
        Ok(Follower {
            subscriber,
            environment: environment.clone(),
        })
    }

    /// Prints the events of `command_id` until its final one, or fails after
    /// `timeout`; `what` names the command in messages ("rollback of web in
    /// dev to 1.0").
    /// `hosts`: how many hosts carry the command out (each reports its own
    /// outcome; with more than one, each line names its host).
    pub async fn follow(
        self,
        command_id: Uuid,
        what: &str,
        timeout: Duration,
        format: OutputFormat,
        hosts: usize,
    ) -> Result<()> {
        let watch = Watch {
            environment: &self.environment,
            command_id,
            what,
            hosts,
        };
        let events = self.subscriber.map(|message| message.payload);
        follow_events(events, &watch, timeout, |event| match format {
            OutputFormat::Json => output::emit(&output::json_line(event)?),
            OutputFormat::Table => match output::event_line(event) {
                Some(line) => match (&event.host, hosts > 1) {
                    (Some(host), true) => output::emit(&format!("{host}: {line}")),
                    _ => output::emit(&line),
                },
                None => Ok(()),
            },
        })
        .await
    }
}

/// The command being followed.
pub struct Watch<'a> {
    /// The agent's environment.
    pub environment: &'a EnvName,
    /// The command's id.
    pub command_id: Uuid,
    /// The command in words, for messages.
    pub what: &'a str,
    /// How many hosts' final events end the wait (at least one).
    pub hosts: usize,
}

/// Reads `events` (raw envelopes), hands those of the watched command to
/// `show`, and ends once `hosts` distinct hosts sent a final one: `Ok` when
/// each succeeded (or ran dry), exit 1 for the first failure or refusal,
/// exit 4 when `timeout` passes first.
pub async fn follow_events<S>(
    mut events: S,
    watch: &Watch<'_>,
    timeout: Duration,
    mut show: impl FnMut(&ServiceEvent) -> Result<()>,
) -> Result<()>
where
    S: Stream<Item = Bytes> + Unpin,
{
    let Watch {
        environment,
        command_id,
        what,
        hosts,
    } = *watch;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut finished: Vec<Option<ferry_protocol::HostName>> = Vec::new();
    let mut first_failure: Option<CliError> = None;
    loop {
        let raw = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return Err(CliError::unreachable(format!(
                    "the NATS connection closed while waiting for the outcome of the {what} (command {command_id})"
                )))
            }
            Err(_) => {
                return Err(CliError::wait_timed_out(format!(
                    "no outcome for the {what} (command {command_id}) within {}: the {environment} \
                     agent may be down or still working (see `ferry status`); the command stays queued for it",
                    humantime::format_duration(timeout)
                )))
            }
        };
        // Someone else's malformed event is not ours to fail on.
        let Ok(envelope) = Envelope::<ServiceEvent>::decode(&raw) else {
            continue;
        };
        let event = envelope.data;
        if event.command_id != Some(command_id) {
            continue;
        }
        show(&event)?;
        if event.body.is_final() {
            if finished.contains(&event.host) {
                continue;
            }
            finished.push(event.host.clone());
            if let Err(e) = verdict(&event, what) {
                first_failure.get_or_insert(e);
            }
            if finished.len() >= hosts.max(1) {
                return match first_failure {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
        }
    }
}

/// Success or the error a final event means.
fn verdict(event: &ServiceEvent, what: &str) -> Result<()> {
    match &event.body {
        EventBody::Failed {
            reason, serving, ..
        } => Err(CliError::failed(format!(
            "the {what} failed: {reason} (serving {})",
            serving
                .as_ref()
                .map_or_else(|| "nothing".to_owned(), ToString::to_string)
        ))),
        EventBody::Refused { reason, detail } => Err(CliError::failed(format!(
            "the {} agent refused the {what} ({reason}): {detail}",
            event.environment
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::command::ActionKind;
    use ferry_protocol::RefusalReason;

    use super::*;
    use crate::error::Exit;

    fn env() -> EnvName {
        EnvName::new("dev").unwrap()
    }

    fn raw(command_id: Option<Uuid>, body: EventBody) -> Bytes {
        event_from(None, command_id, body)
    }

    fn event_from(host: Option<&str>, command_id: Option<Uuid>, body: EventBody) -> Bytes {
        let event = ServiceEvent {
            host: host.map(|h| ferry_protocol::HostName::new(h).unwrap()),
            environment: env(),
            service: ServiceName::new("web").unwrap(),
            command_id,
            body,
        };
        Envelope::new("/ferry/agent/dev", event)
            .to_bytes()
            .unwrap()
            .into()
    }

    fn succeeded() -> EventBody {
        EventBody::Succeeded {
            action: ActionKind::Scale,
            version: None,
            replicas: 2,
            detail: "scaled".into(),
        }
    }

    async fn run(events: Vec<Bytes>, id: Uuid) -> (Result<()>, Vec<EventBody>) {
        let mut seen = Vec::new();
        let environment = env();
        let watch = Watch {
            environment: &environment,
            command_id: id,
            what: "rollback of web in dev to 9.9.9",
            hosts: 1,
        };
        let result = follow_events(
            futures::stream::iter(events).chain(futures::stream::pending()),
            &watch,
            Duration::from_secs(60),
            |e| {
                seen.push(e.body.clone());
                Ok(())
            },
        )
        .await;
        (result, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn only_this_commands_events_count_and_success_ends_it() {
        let id = Uuid::new_v4();
        let other = Uuid::new_v4();
        let accepted = EventBody::Accepted {
            action: ActionKind::Scale,
        };
        let (result, seen) = run(
            vec![
                raw(Some(other), succeeded()),
                Bytes::from_static(b"garbage"),
                raw(None, EventBody::Metrics(Default::default())),
                raw(Some(id), accepted.clone()),
                raw(Some(id), succeeded()),
                raw(Some(id), accepted.clone()),
            ],
            id,
        )
        .await;
        result.unwrap();
        assert_eq!(seen, vec![accepted, succeeded()]);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_and_refusal_exit_one_dry_run_succeeds() {
        let id = Uuid::new_v4();
        let failed = EventBody::Failed {
            action: ActionKind::Deploy,
            version: None,
            reason: "health checks failed".into(),
            serving: None,
        };
        let err = run(vec![raw(Some(id), failed)], id).await.0.unwrap_err();
        assert_eq!(err.exit, Exit::Failed);
        assert!(err.to_string().contains("health checks failed"), "{err}");

        let refused = EventBody::Refused {
            reason: RefusalReason::Expired,
            detail: "too late".into(),
        };
        let err = run(vec![raw(Some(id), refused)], id).await.0.unwrap_err();
        assert_eq!(err.exit, Exit::Failed);
        assert!(err.to_string().contains("expired"), "{err}");
        assert!(
            err.to_string().contains("9.9.9"),
            "names the command: {err}"
        );

        let dry = EventBody::DryRun {
            action: ActionKind::Rollback,
            plan: vec!["start 1.0".into()],
        };
        run(vec![raw(Some(id), dry)], id).await.0.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_outcome_in_time_exits_four() {
        let id = Uuid::new_v4();
        let (result, seen) = run(
            vec![raw(
                Some(id),
                EventBody::Accepted {
                    action: ActionKind::Deploy,
                },
            )],
            id,
        )
        .await;
        assert_eq!(result.unwrap_err().exit, Exit::WaitTimedOut);
        assert_eq!(seen.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_is_unreachable() {
        let id = Uuid::new_v4();
        let environment = env();
        let watch = Watch {
            environment: &environment,
            command_id: id,
            what: "scale",
            hosts: 1,
        };
        let result = follow_events(
            futures::stream::iter(Vec::<Bytes>::new()),
            &watch,
            Duration::from_secs(1),
            |_| Ok(()),
        )
        .await;
        assert_eq!(result.unwrap_err().exit, Exit::Unreachable);
    }

    fn on_host(host: &str, command_id: Uuid, body: EventBody) -> Bytes {
        event_from(Some(host), Some(command_id), body)
    }

    #[tokio::test(start_paused = true)]
    async fn with_several_hosts_the_wait_ends_when_each_reported_and_any_failure_fails_it() {
        let id = Uuid::new_v4();
        let environment = env();
        let watch = Watch {
            environment: &environment,
            command_id: id,
            what: "scale",
            hosts: 2,
        };
        let failed = EventBody::Failed {
            action: ActionKind::Scale,
            version: None,
            reason: "no replicas".into(),
            serving: None,
        };
        let mut seen = Vec::new();
        let events = vec![
            on_host("web-1", id, failed),
            // A repeat from the same host does not count twice.
            on_host("web-1", id, succeeded()),
            on_host("web-2", id, succeeded()),
        ];
        let result = follow_events(
            futures::stream::iter(events).chain(futures::stream::pending()),
            &watch,
            Duration::from_secs(60),
            |e| {
                seen.push(e.host.clone());
                Ok(())
            },
        )
        .await;
        assert_eq!(result.unwrap_err().exit, Exit::Failed);
        assert_eq!(seen.len(), 3, "every host's events are shown");

        // Only one host reported: the wait goes on until the timeout.
        let events = vec![on_host("web-1", id, succeeded())];
        let result = follow_events(
            futures::stream::iter(events).chain(futures::stream::pending()),
            &watch,
            Duration::from_secs(5),
            |_| Ok(()),
        )
        .await;
        assert_eq!(result.unwrap_err().exit, Exit::WaitTimedOut);
    }
}
