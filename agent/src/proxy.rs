//! The service's stable address: a reverse proxy inside the agent that spreads
//! requests over healthy replicas, measures them for the metrics events, and
//! answers 503 with the maintenance message while maintenance is on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::event::{MaintenanceInfo, ServiceMetrics};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use ferry_analysis::{SetWindow, LATENCY_MAX_US};

type Body = BoxBody<Bytes, hyper::Error>;

/// Most client connections one service's proxy serves at once.
const MAX_CONNECTIONS: usize = 4096;
/// Tries of a replayable request (GET, HEAD, OPTIONS) before it fails.
const REPLAY_ATTEMPTS: usize = 3;
/// Retry-After sent while maintenance has no end time.
const DEFAULT_RETRY_AFTER_SECS: i64 = 300;

/// A handle on one service's proxy.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    service: String,
    routing: RwLock<Arc<Routing>>,
    next: AtomicUsize,
    split: AtomicUsize,
    maintenance: RwLock<Option<MaintenanceInfo>>,
    /// All traffic, taken by telemetry.
    stats: Mutex<SetWindow>,
    /// Traffic the canary set answered, taken by the rollout's analysis.
    canary_stats: Mutex<SetWindow>,
    /// Traffic the stable set answered, taken by the rollout's analysis
    /// (beside a canary: the baseline; after a switch: the verification).
    stable_stats: Mutex<SetWindow>,
    client: Client<HttpConnector, Body>,
    /// Cancelled once the accept loop has ended and its listener is closed.
    closed: CancellationToken,
}

/// Where requests go: the stable set, and a share of them to the canary set
/// while a rollout runs. Replaced as a whole, so a switch is atomic.
#[derive(Clone, Debug, Default)]
struct Routing {
    stable: Vec<SocketAddr>,
    canary: Vec<SocketAddr>,
    /// Percent of requests sent to `canary` (when it has replicas).
    weight: u8,
}

/// Which set answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Set {
    Stable,
    Canary,
}

impl Proxy {
    /// Binds `address` and serves until `shutdown`.
    pub async fn serve(
        service: &str,
        address: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<Proxy, crate::Error> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| crate::Error::Bind {
                service: service.to_owned(),
                address,
                source,
            })?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let shared = Arc::new(Shared {
            service: service.to_owned(),
            routing: RwLock::new(Arc::new(Routing::default())),
            next: AtomicUsize::new(0),
            split: AtomicUsize::new(0),
            maintenance: RwLock::new(None),
            stats: Mutex::new(SetWindow::new()),
            canary_stats: Mutex::new(SetWindow::new()),
            stable_stats: Mutex::new(SetWindow::new()),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            closed: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, shared.clone(), shutdown));
        Ok(Proxy { shared })
    }

    /// Waits until the proxy has stopped accepting (after its shutdown) and
    /// its port is free again.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    fn update_routing(&self, change: impl FnOnce(&mut Routing)) {
        if let Ok(mut guard) = self.shared.routing.write() {
            let mut routing = (**guard).clone();
            change(&mut routing);
            *guard = Arc::new(routing);
        }
    }

    /// Replaces the stable set of replicas, atomically (a canary set and its
    /// weight stay as they are).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        self.update_routing(|r| r.stable = backends);
    }

    /// The stable replicas receiving traffic.
    pub fn backends(&self) -> Arc<Vec<SocketAddr>> {
        Arc::new(self.routing().stable.clone())
    }

    fn routing(&self) -> Arc<Routing> {
        self.shared
            .routing
            .read()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Sends `weight` percent of requests to `canary` (0 takes it out of
    /// the path at once; requests already sent to it finish).
    pub fn set_canary(&self, canary: Vec<SocketAddr>, weight: u8) {
        self.update_routing(|r| {
            r.canary = canary;
            r.weight = weight.min(100);
        });
    }

    /// The canary set's share of requests now, percent.
    pub fn canary_weight(&self) -> u8 {
        let routing = self.routing();
        if routing.canary.is_empty() {
            0
        } else {
            routing.weight
        }
    }

    /// Makes the canary set the stable set and drops the canary, in one switch.
    pub fn promote_canary(&self) {
        self.update_routing(|r| {
            r.stable = std::mem::take(&mut r.canary);
            r.weight = 0;
        });
    }

    /// Counts a health check of a canary replica toward its availability.
    pub fn record_canary_check(&self, ok: bool) {
        if let Ok(mut stats) = self.shared.canary_stats.lock() {
            stats.record_check(ok);
        }
    }

    /// Counts a health check of a stable replica toward availability.
    pub fn record_check(&self, ok: bool) {
        if let Ok(mut stats) = self.shared.stats.lock() {
            stats.record_check(ok);
        }
        if let Ok(mut stats) = self.shared.stable_stats.lock() {
            stats.record_check(ok);
        }
    }

    /// What the canary set answered since the last call.
    pub fn take_canary_window(&self) -> SetWindow {
        take(&self.shared.canary_stats)
    }

    /// What the stable set answered since the last call (and how its health
    /// checks went).
    pub fn take_stable_window(&self) -> SetWindow {
        take(&self.shared.stable_stats)
    }

    /// Turns maintenance on or off.
    pub fn set_maintenance(&self, maintenance: Option<MaintenanceInfo>) {
        if let Ok(mut guard) = self.shared.maintenance.write() {
            *guard = maintenance;
        }
    }

    /// Maintenance in force now (an ended one counts as off).
    pub fn maintenance(&self) -> Option<MaintenanceInfo> {
        self.shared.maintenance_now()
    }

    /// Traffic since the last call.
    pub fn take_metrics(&self) -> ServiceMetrics {
        take(&self.shared.stats).metrics()
    }
}

/// The window in `stats`, replaced by a fresh one.
fn take(stats: &Mutex<SetWindow>) -> SetWindow {
    match stats.lock() {
        Ok(mut stats) => std::mem::take(&mut *stats),
        Err(_) => SetWindow::new(),
    }
}

impl Shared {
    fn maintenance_now(&self) -> Option<MaintenanceInfo> {
        let guard = self.maintenance.read().ok()?;
        let info = guard.as_ref()?;
        match info.until {
            Some(until) if until <= OffsetDateTime::now_utc() => None,
            _ => Some(info.clone()),
        }
    }

    /// Records a request's answer: in all traffic (what clients saw) and in
    /// the window of the set that answered.
    fn record(&self, started: Instant, failed: bool, set: Set) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(LATENCY_MAX_US);
        if let Ok(mut stats) = self.stats.lock() {
            stats.record(us, failed);
        }
        self.record_for_set(us, failed, set);
    }

    /// Records a failed try that another try will stand in for: the client
    /// may still get an answer, but the analysis of `set` sees the failure
    /// (a canary that drops requests is not hidden by retries on stable).
    fn record_failed_try(&self, started: Instant, set: Set) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(LATENCY_MAX_US);
        self.record_for_set(us, true, set);
    }

    fn record_for_set(&self, us: u64, failed: bool, set: Set) {
        let by_set = match set {
            Set::Canary => &self.canary_stats,
            Set::Stable => &self.stable_stats,
        };
        if let Ok(mut stats) = by_set.lock() {
            stats.record(us, failed);
        }
    }

    /// Chooses the set for one request: exactly `weight` of every 100
    /// requests go to the canary, spread over the hundred (37 is coprime
    /// with 100, so `n * 37 % 100` visits every slot once per hundred).
    fn choose<'a>(&self, routing: &'a Routing) -> (Set, &'a [SocketAddr]) {
        if routing.canary.is_empty() || routing.weight == 0 {
            return (Set::Stable, &routing.stable);
        }
        if routing.weight >= 100 || routing.stable.is_empty() {
            return (Set::Canary, &routing.canary);
        }
        let n = self.split.fetch_add(1, Ordering::Relaxed);
        if (n.wrapping_mul(37) % 100) < usize::from(routing.weight) {
            (Set::Canary, &routing.canary)
        } else {
            (Set::Stable, &routing.stable)
        }
    }

    fn pick(&self, backends: &[SocketAddr]) -> Option<SocketAddr> {
        if backends.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        backends.get(n % backends.len()).copied()
    }
}

async fn accept_loop(bound: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    // Locals drop in reverse order (and before arguments): the listener,
    // moved into a local after the guard, closes first, then `closed` fires,
    // so a waiter may bind the port again at once.
    let _closed = shared.closed.clone().drop_guard();
    let listener = bound;
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(service = %shared.service, error = %e, "proxy accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "proxy connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Some(maintenance) = shared.maintenance_now() {
        let retry_after = maintenance
            .until
            .map(|until| (until - OffsetDateTime::now_utc()).whole_seconds().max(1))
            .unwrap_or(DEFAULT_RETRY_AFTER_SECS);
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", maintenance.message),
        );
        if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        return Ok(response);
    }

    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // Requests without a body can be replayed, so a replica that went away
    // between pick and answer (stopped by a switch, or crashed) costs a retry,
    // not an error. Each try reads the routing again: a request that picked
    // a set a switch has just taken out of the path goes to the set now in
    // it, also when that set has a single replica.
    let replayable = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let attempts = if replayable { REPLAY_ATTEMPTS } else { 1 };
    let mut body = Some(body.boxed());
    let mut last_error = String::from("no healthy replica");
    let mut set = Set::Stable;
    let mut had_backends = false;
    for attempt in 1..=attempts {
        let routing = shared.routing.read().map(|b| b.clone()).unwrap_or_default();
        let (chosen, backends) = shared.choose(&routing);
        set = chosen;
        let Some(backend) = shared.pick(backends) else {
            break;
        };
        had_backends = true;
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let Ok(uri) = format!("http://{backend}{path}").parse::<hyper::Uri>() else {
            last_error = "invalid request path".into();
            break;
        };
        let outgoing_body = if replayable {
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed()
        } else {
            match body.take() {
                Some(b) => b,
                None => break,
            }
        };
        let mut outgoing = Request::new(outgoing_body);
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = parts.headers.clone();
        if !parts.headers.contains_key(HOST) {
            if let Ok(host) = HeaderValue::from_str(&backend.to_string()) {
                outgoing.headers_mut().insert(HOST, host);
            }
        }
        match shared.client.request(outgoing).await {
            Ok(response) => {
                shared.record(started, response.status().is_server_error(), set);
                return Ok(response.map(|b| b.boxed()));
            }
            Err(e) => {
                tracing::debug!(service = %shared.service, %backend, error = %e, "upstream request failed");
                last_error = format!("replica {backend} failed: {e}");
                if attempt < attempts {
                    shared.record_failed_try(started, set);
                }
            }
        }
    }
    shared.record(started, true, set);
    let status = if !had_backends {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    };
    Ok(text(status, format!("ferry: {last_error}\n")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::Proxy;

    /// A replica on loopback: with `body`, it answers every request with 200
    /// and `body`; without, it reads each request and closes the connection
    /// unanswered, as a process killed mid-request does.
    async fn replica(body: Option<&'static str>, stop: CancellationToken) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        let Some(body) = body.filter(|_| n > 0) else {
                            return;
                        };
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    async fn proxy(stop: &CancellationToken) -> (Proxy, SocketAddr) {
        let port = {
            let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            probe.local_addr().unwrap().port()
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let proxy = Proxy::serve("web", address, stop.clone()).await.unwrap();
        (proxy, address)
    }

    #[tokio::test]
    async fn a_get_the_canary_drops_is_answered_by_stable_and_counted_against_the_canary() {
        let stop = CancellationToken::new();
        let (proxy, address) = proxy(&stop).await;
        let stable = replica(Some("stable"), stop.clone()).await;
        let canary = replica(None, stop.clone()).await;
        proxy.set_backends(vec![stable]);
        // Half the requests to the canary: the split sends the first two
        // tries of the first request there and the third to stable.
        proxy.set_canary(vec![canary], 50);

        let response = reqwest::get(format!("http://{address}/")).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().await.unwrap(), "stable");

        let canary_window = proxy.take_canary_window();
        assert_eq!(
            (canary_window.requests, canary_window.errors),
            (2, 2),
            "the canary's dropped tries are in its window"
        );
        let stable_window = proxy.take_stable_window();
        assert_eq!((stable_window.requests, stable_window.errors), (1, 0));
        let all = proxy.take_metrics();
        assert_eq!(
            (all.requests, all.errors),
            (1, 0),
            "the client saw one answer"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_get_to_a_single_replica_that_drops_it_fails_after_three_tries_and_a_post_after_one()
    {
        let stop = CancellationToken::new();
        let (proxy, address) = proxy(&stop).await;
        let dropping = replica(None, stop.clone()).await;
        proxy.set_backends(vec![dropping]);
        let client = reqwest::Client::new();

        let get = client
            .get(format!("http://{address}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status().as_u16(), 502);
        let stable = proxy.take_stable_window();
        assert_eq!(
            (stable.requests, stable.errors),
            (3, 3),
            "three tries of the GET"
        );

        let post = client
            .post(format!("http://{address}/"))
            .body("order")
            .send()
            .await
            .unwrap();
        assert_eq!(post.status().as_u16(), 502);
        let stable = proxy.take_stable_window();
        assert_eq!(
            (stable.requests, stable.errors),
            (1, 1),
            "a POST is never replayed"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_stopped_proxy_reports_closed_once_its_port_can_be_bound_again() {
        let stop = CancellationToken::new();
        let (proxy, address) = proxy(&stop).await;
        let response = reqwest::get(format!("http://{address}/")).await.unwrap();
        assert_eq!(response.status().as_u16(), 503, "no replica yet");
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), proxy.closed())
            .await
            .expect("the accept loop ends on shutdown");
        std::net::TcpListener::bind(address).expect("the port is free once closed");
    }
}
