//! A real HTTP receiver on loopback (axum) standing in for Slack, PagerDuty
//! and webhook consumers: it records every POST for the test to read.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::Value;

/// One POST as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The path it was posted to, without the leading `/`.
    pub path: String,
    /// Its `X-Ferry-Signature` header.
    pub signature: Option<String>,
    /// Its `X-Ferry-Event` header.
    pub event: Option<String>,
    /// The raw body.
    pub body: Bytes,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Every POST so far, in order.
pub type Inbox = Arc<Mutex<Vec<Received>>>;

async fn receive(
    State(inbox): State<Inbox>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    inbox.lock().unwrap().push(Received {
        path,
        signature: header("x-ferry-signature"),
        event: header("x-ferry-event"),
        body,
    });
    "ok"
}

/// An HTTP receiver on 127.0.0.1 recording every POST to `/<path>`; its
/// port and inbox.
pub async fn http_receiver() -> (u16, Inbox) {
    let inbox: Inbox = Arc::default();
    let app = axum::Router::new()
        .route("/{path}", axum::routing::post(receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, inbox)
}

/// The POSTs to `/<path>` so far.
pub fn posts(inbox: &Inbox, path: &str) -> Vec<Received> {
    inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == path)
        .cloned()
        .collect()
}
