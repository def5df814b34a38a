//! The agents' events: heartbeats go to the agents bucket; accepted, refused
//! and outcome events update the deployments bucket, and the final ones are
//! appended to history.

use std::sync::Arc;

use ferry_protocol::api::HistoryRecord;
use ferry_protocol::command::ActionKind;
use ferry_protocol::event::{AgentEvent, Alert, EventBody, ServiceEvent};
use ferry_protocol::streams;
use ferry_protocol::subject::{AgentEventKind, EventKind, Subject, PREFIX};
use ferry_protocol::{EnvName, Envelope, ServiceName};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::consumer::{self, Disposition, Durable, Incoming};
use crate::records::{AgentRecord, DeploymentRecord, EventFacts};
use crate::{ids, promotion, waves, Error, Shared};

/// The durable consumer every controller instance shares for agent events.
pub const CONSUMER: &str = "ferry-controller-events";

/// The event subjects the controller needs. Progress, health and metrics are
/// left to the CLI's live views: the controller's state does not depend on
/// them. Alerts (the controller's own on running services, and the agents'
/// when a canary and its stable version fail alike) go to history, whose
/// consumer notifies people.
pub fn filter_subjects() -> Vec<String> {
    let mut subjects: Vec<String> = [
        EventKind::Accepted,
        EventKind::Refused,
        EventKind::Outcome,
        EventKind::Alert,
    ]
    .into_iter()
    .map(|kind| format!("{PREFIX}.evt.*.*.{}", kind.as_str()))
    .collect();
    subjects.extend(
        [AgentEventKind::Heartbeat, AgentEventKind::Refused]
            .into_iter()
            .map(|kind| format!("{PREFIX}.agent.*.{}", kind.as_str())),
    );
    subjects
}

/// Handles agent events until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> Result<(), Error> {
    let durable = Durable {
        stream: streams::events().name,
        name: CONSUMER,
        filter_subjects: filter_subjects(),
        only_new: false,
    };
    consumer::run(shared, durable, shutdown, handle).await
}

async fn handle(shared: Arc<Shared>, message: Incoming) -> Disposition {
    match Subject::parse(&message.subject) {
        Ok(Subject::Agent {
            env,
            kind: AgentEventKind::Heartbeat,
        }) => heartbeat(&shared, env, &message).await,
        Ok(Subject::Agent {
            env,
            kind: AgentEventKind::Refused,
        }) => agent_refused(env, &message),
        Ok(Subject::Event { env, service, kind }) => {
            service_event(&shared, env, service, kind, &message).await
        }
        _ => Disposition::Reject(format!("{} is not an agent event subject", message.subject)),
    }
}

async fn heartbeat(shared: &Shared, env: EnvName, message: &Incoming) -> Disposition {
    let heartbeat = match Envelope::<AgentEvent>::decode(&message.payload) {
        Ok(Envelope {
            data: AgentEvent::Heartbeat(heartbeat),
            ..
        }) => heartbeat,
        Ok(_) => return Disposition::Reject("not a heartbeat".to_owned()),
        Err(refusal) => {
            return Disposition::Reject(format!("malformed heartbeat: {}", refusal.detail))
        }
    };
    if heartbeat.environment != env {
        return Disposition::Reject(format!(
            "heartbeat of {} published on the subject of {env}",
            heartbeat.environment
        ));
    }
    let key = streams::agent_key(&env, heartbeat.host_name.as_ref());
    let record = AgentRecord {
        heartbeat,
        received_at: message.stored_at,
    };
    let result = shared
        .store
        .update_agent(&key, |current| match current {
            // Keep the newer of the two: another instance may have written a
            // later heartbeat while this one was in flight.
            Some(current) if current.received_at >= record.received_at => None,
            _ => Some(record.clone()),
        })
        .await;
    match result {
        Ok(_) => Disposition::Done,
        Err(e) => Disposition::Retry(e),
    }
}

fn agent_refused(env: EnvName, message: &Incoming) -> Disposition {
    // Not attributable to a service, so there is no deployment or history
    // record to put it in; the log is where an operator will look.
    match Envelope::<AgentEvent>::decode(&message.payload) {
        Ok(Envelope {
            data:
                AgentEvent::Refused {
                    subject,
                    reason,
                    detail,
                },
            ..
        }) => {
            warn!(environment = %env, %subject, %reason, "agent refused a message: {detail}");
            Disposition::Done
        }
        Ok(_) => Disposition::Reject("not an agent refusal".to_owned()),
        Err(refusal) => Disposition::Reject(format!("malformed agent refusal: {}", refusal.detail)),
    }
}

async fn service_event(
    shared: &Shared,
    env: EnvName,
    service: ServiceName,
    kind: EventKind,
    message: &Incoming,
) -> Disposition {
    let envelope = match Envelope::<ServiceEvent>::decode(&message.payload) {
        Ok(envelope) => envelope,
        Err(refusal) => return Disposition::Reject(format!("malformed event: {}", refusal.detail)),
    };
    let event = &envelope.data;
    if event.environment != env || event.service != service || event.body.kind() != kind {
        return Disposition::Reject(format!(
            "a {:?} event about {} in {} does not belong on this subject",
            event.body.kind(),
            event.service,
            event.environment
        ));
    }
    if let EventBody::Alert(alert) = &event.body {
        let history = alert_record(event, alert, message);
        let id = ids::history(envelope.id, &history.outcome);
        return match shared.store.append_history(&env, history, id).await {
            Ok(()) => Disposition::Done,
            Err(e) => Disposition::Retry(e),
        };
    }
    let updated = shared
        .store
        .update_deployment(&env, &service, |current| {
            DeploymentRecord::apply(current, event, message.stored_at)
        })
        .await;
    let record = match updated {
        Ok(record) => record,
        Err(e) => return Disposition::Retry(e),
    };
    // A step of a wave moves the wave on; the wave, not the host, moves
    // the release on to the next environment.
    let wave = match waves::on_event(shared, &env, &service, event).await {
        Ok(wave) => wave,
        Err(e) => return Disposition::Retry(e),
    };
    if let Some(version) = &wave.succeeded {
        if let Err(e) =
            promotion::on_deployed(shared, &env, &service, version, message.stored_at).await
        {
            return Disposition::Retry(e);
        }
    }
    let in_wave = wave.in_wave;
    let Some(history) = history_record(event, record.as_ref(), message) else {
        return Disposition::Done;
    };
    let id = ids::history(envelope.id, &history.outcome);
    if let Err(e) = shared.store.append_history(&env, history, id).await {
        return Disposition::Retry(e);
    }
    // A successful deploy moves the release on towards the next environment.
    if let EventBody::Succeeded {
        action: ActionKind::Deploy,
        version: Some(version),
        ..
    } = &event.body
    {
        if !in_wave {
            if let Err(e) =
                promotion::on_deployed(shared, &env, &service, version, message.stored_at).await
            {
                return Disposition::Retry(e);
            }
        }
    }
    Disposition::Done
}

/// The history record of an alert: action `analysis`, outcome `breached` or
/// `cleared` (what the notifications route as `threshold_breached` and
/// `threshold_cleared`).
fn alert_record(event: &ServiceEvent, alert: &Alert, message: &Incoming) -> HistoryRecord {
    HistoryRecord {
        time: message.stored_at,
        environment: Some(event.environment.clone()),
        service: event.service.clone(),
        version: alert.version.clone(),
        action: "analysis".to_owned(),
        outcome: if alert.raised { "breached" } else { "cleared" }.to_owned(),
        detail: alert.to_string(),
        command_id: event.command_id,
        actor: None,
    }
}

/// The history record of a final event, with what the deployments record
/// knows about its command (action, actor) when the ids match.
fn history_record(
    event: &ServiceEvent,
    record: Option<&DeploymentRecord>,
    message: &Incoming,
) -> Option<HistoryRecord> {
    let command = record.filter(|r| r.command_id.is_some() && r.command_id == event.command_id);
    // History records outcomes only, not the command's acceptance.
    if matches!(event.body, EventBody::Accepted { .. }) {
        return None;
    }
    let facts = EventFacts::of(&event.body)?;
    let outcome = facts.state;
    let action = facts.action.or_else(|| command.and_then(|r| r.action));
    let version = facts
        .version
        .or_else(|| command.and_then(|r| r.version.clone()));
    let detail = match (&event.body, &facts.serving) {
        (EventBody::Failed { .. }, Some(serving)) => {
            format!("{}; {serving} is serving", facts.detail)
        }
        _ => facts.detail,
    };
    Some(HistoryRecord {
        time: message.stored_at,
        environment: Some(event.environment.clone()),
        service: event.service.clone(),
        version,
        action: action.map_or_else(|| "command".to_owned(), |a| a.to_string()),
        outcome: outcome.as_str().to_owned(),
        detail,
        command_id: event.command_id,
        actor: command.and_then(|r| r.actor.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_subjects_are_the_documented_six() {
        assert_eq!(
            filter_subjects(),
            [
                "ferry.v1.evt.*.*.accepted",
                "ferry.v1.evt.*.*.refused",
                "ferry.v1.evt.*.*.outcome",
                "ferry.v1.evt.*.*.alert",
                "ferry.v1.agent.*.heartbeat",
                "ferry.v1.agent.*.refused",
            ]
        );
    }
}
