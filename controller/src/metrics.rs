//! Prometheus metrics on `/metrics` (when `metrics_listen` is set) and the
//! alerts of running services. Both read the agents' heartbeats and metrics
//! events from core NATS into an in-memory view: a cache, rebuilt within a
//! heartbeat after a restart, never a source of truth. Each scrape renders
//! the view afresh with `prometheus-client`, so services that disappear do
//! not leave stale series behind.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::event::{
    AgentEvent, EventBody, Heartbeat, ServiceEvent, ServiceMetrics, ServiceSnapshot, ServiceState,
};
use ferry_protocol::rollout::{Metric, RolloutState};
use ferry_protocol::subject::{self, AgentEventKind, EventKind};
use ferry_protocol::{EnvName, Envelope, HostName, ServiceName};
use futures::StreamExt;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alerts::Alerts;
use crate::follow::follow;
use crate::{Error, Shared, SOURCE};

/// Content type of the text exposition `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Default)]
struct ServiceView {
    snapshot: Option<ServiceSnapshot>,
    metrics: Option<ServiceMetrics>,
}

#[derive(Default)]
struct EnvView {
    last_heartbeat: Option<(Instant, Duration)>,
    services: BTreeMap<ServiceName, ServiceView>,
    /// Each named host's last heartbeat: when, its interval, its services.
    hosts: BTreeMap<HostName, HostView>,
}

struct HostView {
    at: Instant,
    interval: Duration,
    services: Vec<ServiceSnapshot>,
}

/// What the controller last heard from each environment.
#[derive(Default)]
pub(crate) struct View {
    envs: BTreeMap<EnvName, EnvView>,
    alerts: Alerts,
}

type Labels = Vec<(String, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

fn labels(env: &EnvName, service: &ServiceName) -> Labels {
    vec![
        ("environment".into(), env.to_string()),
        ("service".into(), service.to_string()),
    ]
}

fn with(mut base: Labels, key: &str, value: impl Into<String>) -> Labels {
    base.push((key.into(), value.into()));
    base
}

impl View {
    /// Folds in a heartbeat received at `at`.
    fn heartbeat(&mut self, hb: Heartbeat, at: Instant) {
        let env = self.envs.entry(hb.environment.clone()).or_default();
        let interval = Duration::from_secs(hb.interval_secs);
        env.last_heartbeat = Some((at, interval));
        if let Some(host) = hb.host_name.clone() {
            env.hosts.insert(
                host,
                HostView {
                    at,
                    interval,
                    services: hb.services.clone(),
                },
            );
        }
        for snapshot in hb.services {
            let name = snapshot.service.clone();
            env.services.entry(name).or_default().snapshot = Some(snapshot);
        }
    }

    /// Renders everything as Prometheus text.
    pub(crate) fn render(&self, environments: &[EnvName], agent_timeout: Duration) -> String {
        let mut registry = Registry::with_prefix("ferry");
        let family = |registry: &mut Registry, name: &str, help: &str| {
            let f = GaugeFamily::default();
            registry.register(name, help, f.clone());
            f
        };
        let up = family(
            &mut registry,
            "agent_up",
            "1 when the environment's agent sent a heartbeat within the agent timeout",
        );
        let info = family(
            &mut registry,
            "service_version_info",
            "The version a service runs (value 1)",
        );
        let desired = family(&mut registry, "service_replicas_desired", "Replicas wanted");
        let healthy = family(
            &mut registry,
            "service_replicas_healthy",
            "Replicas passing their health checks",
        );
        let rate = family(
            &mut registry,
            "service_requests_per_second",
            "Requests per second at the agent's proxy over the last interval",
        );
        let errors = family(
            &mut registry,
            "service_error_ratio",
            "Share of failed requests (5xx or no answer) over the last interval, 0 to 1",
        );
        let latency = family(
            &mut registry,
            "service_latency_seconds",
            "Response time quantiles at the agent's proxy over the last interval",
        );
        let availability = family(
            &mut registry,
            "service_availability_ratio",
            "Share of successful requests and health checks over the last interval, 0 to 1",
        );
        let rollout_state = family(
            &mut registry,
            "service_rollout_state",
            "1 for the state the service's rollout is in (none when no rollout was run)",
        );
        let rollout_step = family(
            &mut registry,
            "service_rollout_step",
            "Current step of the rollout, 1-based",
        );
        let rollout_steps = family(
            &mut registry,
            "service_rollout_steps",
            "Steps of the rollout in all",
        );
        let rollout_weight = family(
            &mut registry,
            "service_rollout_weight_ratio",
            "Share of traffic the new version gets, 0 to 1",
        );
        let alert = family(
            &mut registry,
            "service_alert",
            "1 while a threshold alert is raised for the service",
        );
        let host_up = family(
            &mut registry,
            "host_agent_up",
            "1 when the host's agent sent a heartbeat within the agent timeout",
        );
        let host_info = family(
            &mut registry,
            "host_service_version_info",
            "The version a service runs on one host of its environment (value 1)",
        );
        let host_desired = family(
            &mut registry,
            "host_service_replicas_desired",
            "Replicas wanted on one host",
        );
        let host_healthy = family(
            &mut registry,
            "host_service_replicas_healthy",
            "Replicas passing their health checks on one host (0 while its agent is down)",
        );

        let now = Instant::now();
        for env in environments {
            let view = self.envs.get(env);
            let alive = view
                .and_then(|v| v.last_heartbeat)
                .is_some_and(|(at, interval)| {
                    now.duration_since(at) <= agent_timeout.max(interval * 3)
                });
            up.get_or_create(&vec![("environment".into(), env.to_string())])
                .set(if alive { 1.0 } else { 0.0 });
            let Some(view) = view else { continue };
            for (host, h) in &view.hosts {
                let host_alive = now.duration_since(h.at) <= agent_timeout.max(h.interval * 3);
                let base = vec![
                    ("environment".into(), env.to_string()),
                    ("host".into(), host.to_string()),
                ];
                host_up
                    .get_or_create(&base)
                    .set(if host_alive { 1.0 } else { 0.0 });
                for snapshot in &h.services {
                    let labels = with(base.clone(), "service", snapshot.service.to_string());
                    if let Some(version) = &snapshot.version {
                        host_info
                            .get_or_create(&with(labels.clone(), "version", version.to_string()))
                            .set(1.0);
                    }
                    host_desired
                        .get_or_create(&labels)
                        .set(f64::from(snapshot.replicas_desired));
                    let healthy = if host_alive {
                        snapshot.replicas_healthy
                    } else {
                        0
                    };
                    host_healthy.get_or_create(&labels).set(f64::from(healthy));
                }
            }
            for (service, s) in &view.services {
                let base = labels(env, service);
                if let Some(snapshot) = &s.snapshot {
                    if let Some(version) = &snapshot.version {
                        info.get_or_create(&with(base.clone(), "version", version.to_string()))
                            .set(1.0);
                    }
                    desired
                        .get_or_create(&base)
                        .set(f64::from(snapshot.replicas_desired));
                    healthy
                        .get_or_create(&base)
                        .set(f64::from(snapshot.replicas_healthy));
                    let current = snapshot.rollout.as_ref().map(|r| r.state);
                    for (name, state) in [
                        ("progressing", Some(RolloutState::Progressing)),
                        ("paused", Some(RolloutState::Paused)),
                        ("promoted", Some(RolloutState::Promoted)),
                        ("aborted", Some(RolloutState::Aborted)),
                        ("none", None),
                    ] {
                        rollout_state
                            .get_or_create(&with(base.clone(), "state", name))
                            .set(if current == state { 1.0 } else { 0.0 });
                    }
                    if let Some(r) = &snapshot.rollout {
                        rollout_step.get_or_create(&base).set(f64::from(r.step));
                        rollout_steps.get_or_create(&base).set(f64::from(r.steps));
                        rollout_weight
                            .get_or_create(&base)
                            .set(f64::from(r.weight_percent) / 100.0);
                    }
                }
                if let Some(m) = &s.metrics {
                    rate.get_or_create(&base).set(m.requests_per_sec);
                    errors.get_or_create(&base).set(m.error_rate);
                    for (q, value) in [("0.5", m.p50_ms), ("0.95", m.p95_ms), ("0.99", m.p99_ms)] {
                        latency
                            .get_or_create(&with(base.clone(), "quantile", q))
                            .set(value / 1000.0);
                    }
                    if let Some(a) = m.availability_percent {
                        availability.get_or_create(&base).set(a / 100.0);
                    }
                }
                for (metric, name) in [
                    (Metric::ErrorRate, "error_rate"),
                    (Metric::P95, "p95"),
                    (Metric::Availability, "availability"),
                ] {
                    alert
                        .get_or_create(&with(base.clone(), "metric", name))
                        .set(if self.alerts.is_up(env, service, metric) {
                            1.0
                        } else {
                            0.0
                        });
                }
            }
        }
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &registry) {
            warn!("could not encode metrics: {e}");
        }
        text
    }
}

/// Follows heartbeats and metrics events, raises and clears alerts, and
/// serves `/metrics` if configured, until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) -> Result<(), Error> {
    let view = Arc::new(Mutex::new(View::default()));
    let mut heartbeats = follow(&shared, subject::all_agent_events(), |env| {
        subject::agent_event(env, AgentEventKind::Heartbeat)
    })
    .await?;
    let mut metrics = follow(
        &shared,
        subject::all_events_of_kind(EventKind::Metrics),
        |env| subject::events_of_kind(env, EventKind::Metrics),
    )
    .await?;
    if let Some(address) = shared.config.metrics_listen() {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address, source })?;
        info!(%address, "serving Prometheus metrics on /metrics");
        tokio::spawn(serve(listener, shared.clone(), view.clone(), stop.clone()));
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            Some(message) = heartbeats.next() => {
                let Ok(envelope) = Envelope::<AgentEvent>::decode(&message.payload) else { continue };
                let AgentEvent::Heartbeat(hb) = envelope.data else { continue };
                let Ok(mut view) = view.lock() else { continue };
                view.heartbeat(hb, Instant::now());
            }
            Some(message) = metrics.next() => {
                let Ok(envelope) = Envelope::<ServiceEvent>::decode(&message.payload) else { continue };
                let event_id = envelope.id;
                let event = envelope.data;
                let EventBody::Metrics(m) = event.body else { continue };
                let changes = {
                    let Ok(mut view) = view.lock() else { continue };
                    let View { envs, alerts } = &mut *view;
                    let s = envs.entry(event.environment.clone()).or_default()
                        .services.entry(event.service.clone()).or_default();
                    let snapshot = s.snapshot.as_ref().filter(|s| s.state != ServiceState::Idle);
                    let changes = alerts.observe(&event.environment, &event.service, snapshot, &m, shared.config.alerts());
                    s.metrics = Some(m);
                    changes
                };
                for alert in changes {
                    publish_alert(&shared, &event.environment, &event.service, event_id, alert).await;
                }
            }
            else => return Err(Error::TaskEnded { task: "metrics" }),
        }
    }
}

/// Publishes an alert event into the events stream. Its message id comes
/// from the metrics event that caused it, so a second controller raising the
/// same alert is de-duplicated by JetStream.
async fn publish_alert(
    shared: &Shared,
    env: &EnvName,
    service: &ServiceName,
    cause: uuid::Uuid,
    alert: ferry_protocol::event::Alert,
) {
    let subject = subject::event(env, service, EventKind::Alert);
    let msg_id = format!("alert-{cause}-{:?}-{}", alert.breach.metric, alert.raised);
    if alert.raised {
        warn!(environment = %env, %service, breach = %alert.breach, "alert raised");
    } else {
        info!(environment = %env, %service, metric = %alert.breach.metric, "alert cleared");
    }
    let event = ServiceEvent {
        host: None,
        environment: env.clone(),
        service: service.clone(),
        command_id: None,
        body: EventBody::Alert(alert),
    };
    let bytes = match Envelope::new(SOURCE, event).to_bytes() {
        Ok(bytes) => bytes,
        Err(e) => {
            warn!("could not encode an alert: {e}");
            return;
        }
    };
    let js = async_nats::jetstream::new(shared.client.clone());
    let message = async_nats::jetstream::message::PublishMessage::build()
        .payload(bytes.into())
        .message_id(msg_id);
    match js.send_publish(subject.clone(), message).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                warn!(%subject, "alert not confirmed: {e}");
            }
        }
        Err(e) => warn!(%subject, "could not publish an alert: {e}"),
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    view: Arc<Mutex<View>>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("metrics accept failed: {e}");
                    continue;
                }
            },
        };
        let (shared, view) = (shared.clone(), view.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (shared, view) = (shared.clone(), view.clone());
                async move { Ok::<_, Infallible>(answer(&req, &shared, &view)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = tokio::time::timeout(Duration::from_secs(30), conn).await {
                warn!("metrics connection timed out: {e}");
            }
        });
    }
}

fn answer(
    req: &Request<hyper::body::Incoming>,
    shared: &Shared,
    view: &Mutex<View>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() == "/metrics" {
        let text = view
            .lock()
            .map(|v| v.render(shared.config.environments(), shared.config.agent_timeout()))
            .unwrap_or_default();
        (StatusCode::OK, CONTENT_TYPE, text)
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are on /metrics\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::event::HostMetrics;
    use ferry_protocol::Version;

    fn heartbeat(host: &str, version: &str) -> Heartbeat {
        Heartbeat {
            agent_id: host.into(),
            environment: EnvName::new("production").unwrap(),
            host_name: Some(HostName::new(host).unwrap()),
            started_at: time::OffsetDateTime::UNIX_EPOCH,
            interval_secs: 1,
            agent_version: "0.1.0".into(),
            host: HostMetrics::default(),
            services: vec![ServiceSnapshot {
                service: ServiceName::new("web").unwrap(),
                version: Some(Version::new(version).unwrap()),
                previous: None,
                replicas_desired: 2,
                replicas_healthy: 2,
                state: ServiceState::Running,
                maintenance: None,
                runtime: "process".into(),
                address: None,
                rollout: None,
                strategy: None,
            }],
            gap: None,
            sent_at: None,
            trusted_keys: Vec::new(),
            reviewer_keys: Vec::new(),
            approvals_required: 0,
        }
    }

    #[test]
    fn each_host_has_its_version_replicas_and_agent_up() {
        let mut view = View::default();
        let now = Instant::now();
        view.heartbeat(heartbeat("web-1", "1.4.0"), now);
        view.heartbeat(heartbeat("web-2", "1.3.0"), now - Duration::from_secs(60));
        let text = view.render(
            &[EnvName::new("production").unwrap()],
            Duration::from_secs(15),
        );
        for line in [
            r#"ferry_host_agent_up{environment="production",host="web-1"} 1"#,
            r#"ferry_host_agent_up{environment="production",host="web-2"} 0"#,
            r#"ferry_host_service_version_info{environment="production",host="web-1",service="web",version="1.4.0"} 1"#,
            r#"ferry_host_service_version_info{environment="production",host="web-2",service="web",version="1.3.0"} 1"#,
            r#"ferry_host_service_replicas_healthy{environment="production",host="web-1",service="web"} 2"#,
            r#"ferry_host_service_replicas_healthy{environment="production",host="web-2",service="web"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "missing {line} in\n{text}"
            );
        }
    }
}
