//! The dashboard's HTTP server: the page and its assets (compiled in), the
//! JSON views, the live notices as server-sent events, and actions.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::actions::{authorize, ActionRequest};
use super::live::{Live, Notice};
use super::query::{audit_filter, Query};
use super::views::Views;
use crate::Shared;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// Connections served at once (each open page holds one for its events).
const MAX_CONNECTIONS: usize = 128;
/// Largest action body accepted.
const MAX_BODY: usize = 16 * 1024;
/// A comment on the event stream this often keeps proxies from closing it.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

pub(crate) struct Server {
    pub shared: Arc<Shared>,
    pub live: Arc<Live>,
    pub views: Views,
    pub stop: CancellationToken,
}

/// Serves until `stop`, then lets the connections in hand finish.
pub(crate) async fn serve(listener: TcpListener, server: Arc<Server>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    let stop = server.stop.clone();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("dashboard accept failed: {e}");
                    continue;
                }
            },
        };
        let server = server.clone();
        tracker.spawn(async move {
            let stop = server.stop.clone();
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(route(&server, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        info!("dashboard connection ended: {e}");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn route(server: &Server, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let views = &server.views;
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => asset(INDEX_HTML, "text/html; charset=utf-8"),
        (&Method::GET, "/app.css") => asset(APP_CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/api/overview") => view(views.serve(path, views.overview()).await),
        (&Method::GET, "/api/service") => match query.service("service") {
            Ok(service) => {
                let key = format!("{path}?{service}");
                view(views.serve(key, views.service(service)).await)
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (&Method::GET, "/api/approvals") => view(views.serve(path, views.approvals()).await),
        (&Method::GET, "/api/audit") => match audit_filter(&query) {
            Ok(filter) => {
                let key = format!("{path}?{}", req.uri().query().unwrap_or(""));
                view(views.serve(key, views.audit(filter)).await)
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (&Method::GET, "/api/live") => live(server),
        (&Method::POST, "/api/actions") => action(server, req).await,
        (
            _,
            "/" | "/app.css" | "/app.js" | "/api/overview" | "/api/service" | "/api/approvals"
            | "/api/audit" | "/api/live" | "/api/actions",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {path}", req.method()),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("nothing at {path}; the dashboard is on /"),
        ),
    }
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    respond(
        StatusCode::OK,
        content_type,
        Bytes::from_static(text.as_bytes()),
    )
}

fn view(answer: Result<super::views::Answer, String>) -> Response<Body> {
    match answer {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "error": message.into() }))
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => respond(status, "application/json", Bytes::from(bytes)),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            Bytes::from(format!("could not encode the answer: {e}")),
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    with_headers(status, content_type, Full::new(body).boxed())
}

fn with_headers(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The live notices: the connection's state first, then each change.
fn live(server: &Server) -> Response<Body> {
    let first = Notice::Connection(server.live.connection());
    let receiver = server.live.subscribe();
    let stop = server.stop.clone();
    let state = (
        Some(first),
        receiver,
        stop,
        tokio::time::interval(KEEPALIVE),
    );
    let stream = futures::stream::unfold(state, |(first, mut rx, stop, mut tick)| async move {
        if let Some(notice) = first {
            return Some((sse(&notice), (None, rx, stop, tick)));
        }
        let frame = tokio::select! {
            () = stop.cancelled() => return None,
            _ = tick.tick() => Bytes::from_static(b": keep-alive\n\n"),
            received = rx.recv() => match received {
                Ok(notice) => sse(&notice),
                // Missed notices: the page fetches everything again.
                Err(broadcast::error::RecvError::Lagged(_)) => sse(&Notice::Changed {
                    environment: None,
                    service: None,
                }),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((frame, (None, rx, stop, tick)))
    });
    let body = StreamBody::new(stream.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))));
    with_headers(StatusCode::OK, "text/event-stream", BodyExt::boxed(body))
}

fn sse(notice: &Notice) -> Bytes {
    let (name, data) = match notice {
        Notice::Changed { .. } => ("change", serde_json::to_string(notice)),
        Notice::Connection(c) => ("connection", serde_json::to_string(c)),
    };
    Bytes::from(format!(
        "event: {name}\ndata: {}\n\n",
        data.unwrap_or_default()
    ))
}

async fn action(server: &Server, req: Request<Incoming>) -> Response<Body> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let operator = match authorize(server.shared.config.dashboard(), authorization.as_deref()) {
        Ok(name) => name.to_owned(),
        Err(refusal) => {
            warn!(
                status = refusal.status,
                "dashboard action refused: {}", refusal.message
            );
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
            return error(status, refusal.message);
        }
    };
    // A form on another site cannot send JSON without a preflight, which
    // this server never grants.
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the action as application/json",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("could not read the action: {e}"),
            )
        }
    };
    let request: ActionRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not an action: {e}")),
    };
    if !server.shared.config.has_environment(&request.environment) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown environment {}: the pipeline is {}",
                request.environment,
                server.shared.config.pipeline()
            ),
        );
    }
    let api_request = match request.into_api(&operator) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !server.live.connection().connected {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller's NATS connection is down: nothing can be issued until it is back",
        );
    }
    match server.views.ask::<serde_json::Value>(api_request).await {
        Ok((message, issued)) => {
            info!(%operator, "dashboard action: {message}");
            json_response(
                StatusCode::OK,
                &json!({ "message": message, "issued": issued, "operator": operator }),
            )
        }
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}
