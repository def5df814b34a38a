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

mod config;
mod email;
mod pagerduty;
mod slack;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::api::HistoryRecord;
use ferry_protocol::{streams, EnvName, Envelope, ServiceName, Version};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::{
    EmailSettings, NotifyConfig, PagerDutySettings, ResolvedNotify, RouteSettings, Sink,
    SlackSettings, WebhookSettings, EVENT_KINDS, PAGERDUTY_EVENTS_URL, SINKS,
};

use crate::consumer::{self, Disposition, Durable, Incoming};
use crate::{Error, Shared};

/// The durable consumer every controller instance shares for notifications.
pub const CONSUMER: &str = "ferry-controller-notify";
/// Messages waiting per sink before new ones are dropped.
const QUEUE: usize = 256;
/// Longest an HTTP endpoint or SMTP server may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One transition to tell people about.
#[derive(Clone, Debug)]
pub struct Notice {
    /// One of [`EVENT_KINDS`].
    pub kind: &'static str,
    /// Environment.
    pub environment: Option<EnvName>,
    /// Service.
    pub service: ServiceName,
    /// Version.
    pub version: Option<Version>,
    /// History action and outcome.
    pub action: String,
    /// Outcome.
    pub outcome: String,
    /// Who.
    pub actor: Option<String>,
    /// The sentence from history, secrets redacted.
    pub detail: String,
    /// When.
    pub time: time::OffsetDateTime,
    /// The command, if any.
    pub command_id: Option<uuid::Uuid>,
}

impl Notice {
    /// The event kind of a history record, if it is one people are told about.
    pub fn classify(record: &HistoryRecord) -> Option<&'static str> {
        match (record.action.as_str(), record.outcome.as_str()) {
            ("deploy", "issued") => Some("deployment_started"),
            ("deploy", "succeeded") => Some("deployment_succeeded"),
            ("deploy", "failed" | "refused") => Some("deployment_failed"),
            ("rollback", "succeeded") => Some("rolled_back"),
            ("promote", "awaiting_approval") => Some("approval_needed"),
            ("gate", "blocked") => Some("security_blocked"),
            ("reject", "rejected") => Some("promotion_rejected"),
            // Written by the rollout analysis: any action, these outcomes.
            (_, "threshold_breached" | "breached") => Some("threshold_breached"),
            (_, "threshold_cleared" | "cleared") => Some("threshold_cleared"),
            _ => None,
        }
    }

    /// A notice of `record`, with every secret in `secrets` blanked out.
    pub fn of(record: &HistoryRecord, secrets: &[String]) -> Option<Notice> {
        let kind = Self::classify(record)?;
        Some(Notice {
            kind,
            environment: record.environment.clone(),
            service: record.service.clone(),
            version: record.version.clone(),
            action: record.action.clone(),
            outcome: record.outcome.clone(),
            actor: record.actor.as_deref().map(|a| redact(a, secrets)),
            detail: redact(&record.detail, secrets),
            time: record.time,
            command_id: record.command_id,
        })
    }

    /// `web 1.4.2` or `web`.
    fn what(&self) -> String {
        match &self.version {
            Some(v) => format!("{} {v}", self.service),
            None => self.service.to_string(),
        }
    }

    fn env(&self) -> &str {
        self.environment.as_ref().map_or("-", EnvName::as_str)
    }

    /// One line for people.
    pub fn headline(&self) -> String {
        let (what, env) = (self.what(), self.env());
        match self.kind {
            "deployment_started" => format!("Deploying {what} to {env}"),
            "deployment_succeeded" => format!("{what} is live in {env}"),
            "deployment_failed" => format!("Deploy of {what} to {env} failed"),
            "rolled_back" => format!(
                "{} rolled back in {env} to {}",
                self.service,
                self.version.as_ref().map_or("-", Version::as_str)
            ),
            "approval_needed" => format!("{what} needs approval for {env}"),
            "security_blocked" => format!("{what} blocked by the security gate in {env}"),
            "promotion_rejected" => format!("{what} rejected for {env}"),
            "threshold_breached" => format!("Threshold breached: {what} in {env}"),
            "threshold_cleared" => format!("Threshold cleared: {what} in {env}"),
            other => format!("{other}: {what} in {env}"),
        }
    }

    /// An emoji for chat.
    fn icon(&self) -> &'static str {
        match self.kind {
            "deployment_started" => ":rocket:",
            "deployment_succeeded" | "threshold_cleared" => ":white_check_mark:",
            "deployment_failed" | "threshold_breached" => ":x:",
            "rolled_back" => ":leftwards_arrow_with_hook:",
            "approval_needed" => ":raising_hand:",
            "security_blocked" | "promotion_rejected" => ":no_entry:",
            _ => ":information_source:",
        }
    }
}

/// Blanks every secret out of `text`.
fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "[redacted]"))
}

/// A delivery failure: whether trying again may help.
#[derive(Debug)]
pub(crate) struct SendError {
    retry: bool,
    message: String,
}

impl SendError {
    fn transient(message: impl Into<String>) -> Self {
        SendError {
            retry: true,
            message: message.into(),
        }
    }
    fn permanent(message: impl Into<String>) -> Self {
        SendError {
            retry: false,
            message: message.into(),
        }
    }
}

/// An HTTPS-capable client (ring, the system's roots), shared by the HTTP sinks.
pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

fn http_client() -> Result<HttpClient, Error> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| Error::Notify(format!("cannot set up TLS: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// POSTs `body` as JSON to `url` with extra `headers`; 2xx is success, 429
/// and 5xx may pass, other statuses will not.
pub(crate) async fn post_json(
    client: &HttpClient,
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> Result<(), SendError> {
    let mut request = hyper::Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| SendError::permanent(format!("cannot build the request: {e}")))?;
    let response = tokio::time::timeout(SEND_TIMEOUT, client.request(request))
        .await
        .map_err(|_| SendError::transient(format!("no answer within {SEND_TIMEOUT:?}")))?
        .map_err(|e| SendError::transient(format!("request failed: {e}")))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::transient(format!("answered {status}")))
    } else {
        Err(SendError::permanent(format!("answered {status}")))
    }
}

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
