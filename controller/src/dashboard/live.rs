//! What the dashboard follows live on core NATS: every agent and service
//! event and every audit record, fanned out to the open pages through a
//! bounded broadcast as "this changed" notices; the steps and analyses of
//! rollouts (which no bucket keeps); the alerts that are up; and whether the
//! controller's NATS connection is up. All of it is a cache, rebuilt from
//! the next events after a restart, never a source of truth.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::connection::State;
use ferry_protocol::event::{AgentEvent, EventBody, ServiceEvent};
use ferry_protocol::rollout::{Breach, Metric, RolloutEvent, RolloutPhase};
use ferry_protocol::subject::{self, AgentEventKind, Subject};

use crate::follow::follow;
use ferry_protocol::{EnvName, Envelope, ServiceName};
use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Error, Shared};

/// Notices buffered for a slow page before it is told to fetch everything.
const CHANGES_BUFFERED: usize = 256;
/// Rollout events kept per service: a long canary's whole story.
const TIMELINE_LEN: usize = 300;
/// How often the NATS connection's state is looked at.
const CONNECTION_POLL: Duration = Duration::from_millis(250);

/// One notice to the open pages.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Notice {
    /// Something about a service (or, without one, an environment or the
    /// audit trail) changed: fetch the view again.
    Changed {
        #[serde(skip_serializing_if = "Option::is_none")]
        environment: Option<EnvName>,
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<ServiceName>,
    },
    /// The controller's NATS connection went up or down.
    Connection(Connection),
}

/// The controller's NATS connection, as the page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Connection {
    /// Whether it is up.
    pub connected: bool,
    /// When it went down, while it is down: what the page is stale since.
    #[serde(with = "time::serde::rfc3339::option")]
    pub stale_since: Option<OffsetDateTime>,
}

/// One rollout event as the timeline shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct TimelineEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub command_id: Option<Uuid>,
    #[serde(flatten)]
    pub event: RolloutEvent,
    /// Why it was aborted, or what the verdict rests on, as the CLI says it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

/// An alert that is up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct UpAlert {
    pub environment: EnvName,
    pub service: ServiceName,
    pub text: String,
    pub breach: Breach,
}

type Key = (EnvName, ServiceName);

#[derive(Default)]
struct Caches {
    timelines: BTreeMap<Key, VecDeque<TimelineEntry>>,
    alerts: BTreeMap<(EnvName, ServiceName, String), UpAlert>,
}

/// What the server and the feed share.
pub(crate) struct Live {
    changes: broadcast::Sender<Notice>,
    connection: Mutex<Connection>,
    state: Mutex<Caches>,
}

impl Live {
    pub(crate) fn new() -> Arc<Live> {
        let (changes, _) = broadcast::channel(CHANGES_BUFFERED);
        Arc::new(Live {
            changes,
            connection: Mutex::new(Connection {
                connected: true,
                stale_since: None,
            }),
            state: Mutex::new(Caches::default()),
        })
    }

    /// A page's own receiver of notices.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.changes.subscribe()
    }

    pub(crate) fn connection(&self) -> Connection {
        *lock(&self.connection)
    }

    /// The latest rollout of a service in an environment, oldest event first.
    pub(crate) fn timeline(&self, env: &EnvName, service: &ServiceName) -> Vec<TimelineEntry> {
        lock(&self.state)
            .timelines
            .get(&(env.clone(), service.clone()))
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn alerts(&self) -> Vec<UpAlert> {
        lock(&self.state).alerts.values().cloned().collect()
    }

    fn set_connected(&self, connected: bool) {
        let mut current = lock(&self.connection);
        if current.connected == connected {
            return;
        }
        *current = Connection {
            connected,
            stale_since: (!connected).then(OffsetDateTime::now_utc),
        };
        let _ = self.changes.send(Notice::Connection(*current));
    }

    fn changed(&self, environment: Option<EnvName>, service: Option<ServiceName>) {
        // No open page is no error.
        let _ = self.changes.send(Notice::Changed {
            environment,
            service,
        });
    }

    /// Takes one service event: rollout steps go to its timeline, alerts
    /// up or down.
    pub(crate) fn service_event(&self, event: ServiceEvent, time: OffsetDateTime) {
        let key = (event.environment.clone(), event.service.clone());
        let mut state = lock(&self.state);
        match event.body {
            EventBody::Rollout(rollout) => {
                let timeline = state.timelines.entry(key).or_default();
                // A new rollout (another command, or a first step) starts a
                // new timeline.
                let new_rollout = timeline.back().is_some_and(|last| {
                    last.command_id != event.command_id
                        || last.event.status.version != rollout.status.version
                }) || (rollout.phase == RolloutPhase::StepStarted
                    && rollout.status.step == 1
                    && timeline
                        .back()
                        .is_some_and(|l| l.event.status.step > 1 || is_end(&l.event.phase)));
                if new_rollout {
                    timeline.clear();
                }
                if timeline.len() == TIMELINE_LEN {
                    // Keep the first (where it started) and drop the oldest analysis.
                    timeline.remove(1);
                }
                let explanation = match &rollout.phase {
                    RolloutPhase::Aborted { reason } => Some(reason.to_string()),
                    RolloutPhase::BothFailing { canary, stable_value } => Some(format!(
                        "the stable version fails too ({} {stable_value:.1}{}): likely a dependency outage; new version: {canary}",
                        canary.metric,
                        canary.metric.unit()
                    )),
                    RolloutPhase::Analysed { breaches, .. } if !breaches.is_empty() => Some(
                        breaches.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    ),
                    _ => None,
                };
                timeline.push_back(TimelineEntry {
                    time,
                    command_id: event.command_id,
                    event: rollout,
                    explanation,
                });
            }
            EventBody::Alert(alert) => {
                let metric = metric_name(alert.breach.metric);
                let id = (key.0.clone(), key.1.clone(), metric);
                if alert.raised {
                    state.alerts.insert(
                        id,
                        UpAlert {
                            environment: key.0,
                            service: key.1,
                            text: alert.breach.to_string(),
                            breach: alert.breach,
                        },
                    );
                } else {
                    state.alerts.remove(&id);
                }
            }
            _ => {}
        }
    }
}

fn is_end(phase: &RolloutPhase) -> bool {
    matches!(phase, RolloutPhase::Promoted | RolloutPhase::Aborted { .. })
}

fn metric_name(metric: Metric) -> String {
    serde_json::to_value(metric)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A poisoned lock (a panic elsewhere) still holds a usable cache.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Follows events and the connection until `stop`.
pub(crate) async fn feed(
    shared: Arc<Shared>,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let mut events = follow(&shared, subject::all_events(), |env| {
        subject::events_for_env(env)
    })
    .await?;
    let mut agents = follow(&shared, subject::all_agent_events(), |env| {
        subject::agent_event(env, AgentEventKind::Heartbeat)
    })
    .await?;
    // History is written at the hub: a subscription sees all of it.
    let mut history = shared
        .client
        .subscribe(subject::all_history())
        .await
        .map_err(|e| Error::Nats {
            action: "subscribe to history for the dashboard".into(),
            source: Box::new(e),
        })?;
    let mut poll = tokio::time::interval(CONNECTION_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = poll.tick() => {
                live.set_connected(shared.client.connection_state() == State::Connected);
            }
            Some(message) = events.next() => {
                let Ok(envelope) = Envelope::<ServiceEvent>::decode(&message.payload) else {
                    continue;
                };
                let event = envelope.data;
                // Metrics and health arrive every interval and change no view.
                if matches!(event.body, EventBody::Metrics(_) | EventBody::Health(_)) {
                    continue;
                }
                let (env, service) = (event.environment.clone(), event.service.clone());
                live.service_event(event, envelope.time);
                live.changed(Some(env), Some(service));
            }
            Some(message) = agents.next() => {
                if let Ok(Envelope { data: AgentEvent::Heartbeat(hb), .. }) =
                    Envelope::<AgentEvent>::decode(&message.payload)
                {
                    live.changed(Some(hb.environment), None);
                }
            }
            Some(message) = history.next() => {
                match Subject::parse(message.subject.as_str()) {
                    Ok(Subject::History { env, service }) => live.changed(Some(env), Some(service)),
                    _ => live.changed(None, None),
                }
            }
            else => return Err(Error::TaskEnded { task: "dashboard" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::event::Alert;
    use ferry_protocol::rollout::{AbortReason, RolloutState, RolloutStatus, StrategyKind};
    use ferry_protocol::Version;

    fn event(command: Uuid, step: u32, phase: RolloutPhase) -> ServiceEvent {
        ServiceEvent {
            host: None,
            environment: EnvName::new("dev").unwrap(),
            service: ServiceName::new("web").unwrap(),
            command_id: Some(command),
            body: EventBody::Rollout(RolloutEvent {
                status: RolloutStatus {
                    strategy: StrategyKind::Canary,
                    version: Version::new("2.0.0").unwrap(),
                    state: RolloutState::Progressing,
                    step,
                    steps: 2,
                    weight_percent: if step == 1 { 20 } else { 100 },
                    weight_reached_percent: None,
                },
                phase,
            }),
        }
    }

    #[test]
    fn a_rollout_keeps_its_steps_and_the_next_one_starts_afresh() {
        let live = Live::new();
        let mut notices = live.subscribe();
        let (env, svc) = (
            EnvName::new("dev").unwrap(),
            ServiceName::new("web").unwrap(),
        );
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let now = OffsetDateTime::now_utc();
        live.service_event(event(first, 1, RolloutPhase::StepStarted), now);
        live.service_event(
            event(
                first,
                1,
                RolloutPhase::Aborted {
                    reason: AbortReason::Operator { step: 1 },
                },
            ),
            now,
        );
        let timeline = live.timeline(&env, &svc);
        assert_eq!(timeline.len(), 2);
        assert_eq!(
            timeline[1].explanation.as_deref(),
            Some("aborted by an operator at step 1")
        );
        live.service_event(event(second, 1, RolloutPhase::StepStarted), now);
        let timeline = live.timeline(&env, &svc);
        assert_eq!(timeline.len(), 1, "another command: a new timeline");
        assert_eq!(timeline[0].command_id, Some(second));
        // Timelines are kept, not announced: the feed announces changes.
        assert!(notices.try_recv().is_err());
        live.changed(Some(env.clone()), Some(svc.clone()));
        assert_eq!(
            notices.try_recv().unwrap(),
            Notice::Changed {
                environment: Some(env),
                service: Some(svc)
            }
        );
    }

    #[test]
    fn alerts_are_up_until_cleared_and_the_connection_state_is_announced_once() {
        let live = Live::new();
        let mut notices = live.subscribe();
        let alert = |raised| ServiceEvent {
            host: None,
            environment: EnvName::new("dev").unwrap(),
            service: ServiceName::new("web").unwrap(),
            command_id: None,
            body: EventBody::Alert(Alert {
                raised,
                breach: Breach {
                    metric: Metric::ErrorRate,
                    value: 12.0,
                    threshold: 5.0,
                    evidence: None,
                },
                version: None,
                stable_value: None,
            }),
        };
        let now = OffsetDateTime::now_utc();
        live.service_event(alert(true), now);
        live.service_event(alert(true), now);
        assert_eq!(live.alerts().len(), 1);
        assert_eq!(live.alerts()[0].text, "error rate 12.0% > 5.0%");
        live.service_event(alert(false), now);
        assert!(live.alerts().is_empty());

        live.set_connected(false);
        live.set_connected(false);
        let down = live.connection();
        assert!(!down.connected && down.stale_since.is_some());
        assert_eq!(notices.try_recv().unwrap(), Notice::Connection(down));
        assert!(notices.try_recv().is_err(), "announced once");
        live.set_connected(true);
        assert_eq!(live.connection().stale_since, None);
    }
}
