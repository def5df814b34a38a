//! Notifications: the only part of ferry that talks to Slack, PagerDuty,
//! SMTP servers and webhooks.
//!
//! Driven by the history (audit) stream through one durable consumer shared
//! by every controller instance, so each transition is notified once however
//! many controllers run, and never once per analysis tick: only transitions
//! are written to history. The consumer only classifies and routes; each
//! sink has its own bounded queue and delivery task that retries with
//! backoff, so a slow or failing endpoint never holds up a deployment or the
//! other sinks (a full queue drops the message with a warning).

mod email;
mod notice;
mod pagerduty;
mod slack;
mod transport;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::api::HistoryRecord;
use ferry_protocol::{streams, Envelope};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use crate::config::notify::{
    EmailSettings, NotifyConfig, PagerDutySettings, ResolvedNotify, RouteSettings, Sink,
    SlackSettings, WebhookSettings, EVENT_KINDS, PAGERDUTY_EVENTS_URL, SINKS,
};

pub use notice::Notice;

use transport::{http_client, HttpClient};

use crate::consumer::{self, Disposition, Durable, Incoming};
use crate::{Error, Shared};

/// The durable consumer every controller instance shares for notifications.
pub const CONSUMER: &str = "ferry-controller-notify";
/// Messages waiting per sink before new ones are dropped.
const QUEUE: usize = 256;
/// Consumes the history stream and delivers notifications until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> Result<(), Error> {
    let settings = shared.config.notify().clone();
    if !settings.is_enabled() {
        shutdown.cancelled().await;
        return Ok(());
    }
    let client = http_client()?;
    let settings = Arc::new(settings);
    let mut queues = BTreeMap::new();
    let mut workers = tokio::task::JoinSet::new();
    for sink in [Sink::Slack, Sink::PagerDuty, Sink::Email, Sink::Webhook] {
        let configured = match sink {
            Sink::Slack => settings.slack.is_some(),
            Sink::PagerDuty => settings.pagerduty.is_some(),
            Sink::Email => settings.email.is_some(),
            Sink::Webhook => settings.webhook.is_some(),
        };
        if configured {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.insert(sink, tx);
            workers.spawn(deliver(
                sink,
                rx,
                settings.clone(),
                client.clone(),
                shutdown.clone(),
            ));
        }
    }
    let queues = Arc::new(queues);
    let durable = Durable {
        stream: streams::history().name,
        name: CONSUMER,
        filter_subjects: Vec::new(),
        only_new: true,
    };
    let handler_settings = settings.clone();
    let result = consumer::run(shared, durable, shutdown, move |_shared, message| {
        let queues = queues.clone();
        let settings = handler_settings.clone();
        async move { route(&settings, &queues, &message) }
    })
    .await;
    while workers.join_next().await.is_some() {}
    result
}

fn route(
    settings: &ResolvedNotify,
    queues: &BTreeMap<Sink, mpsc::Sender<Notice>>,
    message: &Incoming,
) -> Disposition {
    let record = match Envelope::<HistoryRecord>::decode(&message.payload) {
        Ok(envelope) => envelope.data,
        Err(refusal) => {
            return Disposition::Reject(format!("unreadable history record: {}", refusal.detail))
        }
    };
    let Some(notice) = Notice::of(&record, &settings.secrets()) else {
        return Disposition::Done;
    };
    for sink in settings.sinks_for(notice.environment.as_ref(), notice.kind) {
        let Some(queue) = queues.get(&sink) else {
            continue;
        };
        if let Err(e) = queue.try_send(notice.clone()) {
            warn!(
                sink = sink.as_str(),
                kind = notice.kind,
                "notification dropped: {e}"
            );
        }
    }
    Disposition::Done
}

/// Delivers one sink's notices in order, retrying each with doubling backoff.
async fn deliver(
    sink: Sink,
    mut queue: mpsc::Receiver<Notice>,
    settings: Arc<ResolvedNotify>,
    client: HttpClient,
    shutdown: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            () = shutdown.cancelled() => return,
            next = queue.recv() => match next {
                Some(n) => n,
                None => return,
            },
        };
        let mut backoff = settings.retry_backoff;
        for attempt in 1..=settings.max_attempts {
            let result = match sink {
                Sink::Slack => slack::send(&client, &settings, &notice).await,
                Sink::PagerDuty => pagerduty::send(&client, &settings, &notice).await,
                Sink::Email => email::send(&settings, &notice).await,
                Sink::Webhook => webhook::send(&client, &settings, &notice).await,
            };
            match result {
                Ok(()) => {
                    debug!(
                        sink = sink.as_str(),
                        kind = notice.kind,
                        "notification delivered"
                    );
                    break;
                }
                Err(e) if e.retry && attempt < settings.max_attempts => {
                    info!(
                        sink = sink.as_str(),
                        kind = notice.kind,
                        attempt,
                        "notification not delivered ({}); retrying in {backoff:?}",
                        e.message
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
                Err(e) => {
                    warn!(
                        sink = sink.as_str(),
                        kind = notice.kind,
                        attempt,
                        "notification dropped: {}",
                        e.message
                    );
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::{EnvName, ServiceName, Version};

    use super::*;

    fn record(action: &str, outcome: &str, detail: &str) -> HistoryRecord {
        HistoryRecord {
            time: time::OffsetDateTime::now_utc(),
            environment: Some(EnvName::new("production").unwrap()),
            service: ServiceName::new("web").unwrap(),
            version: Some(Version::new("1.0.0").unwrap()),
            action: action.into(),
            outcome: outcome.into(),
            detail: detail.into(),
            command_id: None,
            actor: Some("alice".into()),
        }
    }

    #[test]
    fn transitions_are_classified_and_the_rest_ignored() {
        assert_eq!(
            Notice::classify(&record("deploy", "issued", "")),
            Some("deployment_started")
        );
        assert_eq!(
            Notice::classify(&record("deploy", "failed", "")),
            Some("deployment_failed")
        );
        assert_eq!(
            Notice::classify(&record("rollback", "succeeded", "")),
            Some("rolled_back")
        );
        assert_eq!(
            Notice::classify(&record("promote", "awaiting_approval", "")),
            Some("approval_needed")
        );
        assert_eq!(
            Notice::classify(&record("analysis", "threshold_breached", "")),
            Some("threshold_breached")
        );
        assert_eq!(Notice::classify(&record("release", "published", "")), None);
        assert_eq!(Notice::classify(&record("deploy", "accepted", "")), None);
        for kind in EVENT_KINDS {
            assert!(EVENT_KINDS.contains(&kind));
        }
    }

    #[test]
    fn secrets_are_blanked_out_of_messages() {
        let secrets = vec!["https://hooks.slack.com/services/T0/B0/XYZ".to_owned()];
        let notice = Notice::of(
            &record(
                "deploy",
                "failed",
                "could not reach https://hooks.slack.com/services/T0/B0/XYZ",
            ),
            &secrets,
        )
        .unwrap();
        assert!(!notice.detail.contains("XYZ"), "{}", notice.detail);
        assert!(notice.detail.contains("[redacted]"));
    }
}
