//! The HTTP side: accept connections and answer `/health`, `/metrics` and
//! everything else.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::RequestMetrics;

/// Shared by every connection.
pub struct State {
    config: Config,
    /// `/` requests answered so far.
    requests: AtomicU64,
    /// What `/metrics` reports.
    metrics: RequestMetrics,
}

impl State {
    /// Fresh state for `config`.
    pub fn new(config: Config) -> Self {
        State {
            metrics: RequestMetrics::new(&config.service, &config.environment, &config.version),
            config,
            requests: AtomicU64::new(0),
        }
    }
}

/// Accepts connections for ever.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, a connection reset before accept...:
            // back off a little and keep serving.
            Err(e) => {
                log_line!("ferry-sample: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, &req).await) }
            });
            // Clients hanging up mid-request are normal; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let config = &state.config;
    if req.uri().path() == "/health" {
        return if config.healthy {
            respond(StatusCode::OK, "ok", &config.version)
        } else {
            respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy",
                &config.version,
            )
        };
    }
    if req.uri().path() == "/metrics" {
        return respond(StatusCode::OK, state.metrics.render(), &config.version);
    }
    let started = std::time::Instant::now();
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let response = if config.error_rate.fails(n) {
        respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error injected by SAMPLE_ERROR_RATE\n",
            &config.version,
        )
    } else {
        respond(
            StatusCode::OK,
            format!("ferry-sample {}\n", config.version),
            &config.version,
        )
    };
    state
        .metrics
        .record(response.status().as_u16(), started.elapsed());
    response
}

fn respond(status: StatusCode, body: impl Into<Bytes>, version: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    // A version that is not a valid header value is simply not echoed.
    if let Ok(value) = HeaderValue::from_str(version) {
        headers.insert("x-version", value);
    }
    response
}
