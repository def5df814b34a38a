//! The web dashboard, served when `dashboard_listen` is set: the
//! environments × services grid, a page per service with its rollout as a
//! step timeline, approvals waiting, and the audit trail, updated live over
//! server-sent events. It reads what the CLI reads, through the API's own
//! handlers, and holds no state of its own beyond caches; actions are
//! operators' only, by token.
//!
//! Its settings and token hashes are `crate::config::dashboard`. `live` (events followed on NATS,
//! fanned out) · `views` (JSON views, last good copies) · `query` (query
//! strings) · `actions` (who may act, and as which API request) · `server`
//! (HTTP, the compiled-in page).

mod actions;
mod live;
mod query;
mod server;
mod views;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use crate::config::dashboard::{
    hash_token, DashboardConfig, Operator, OperatorSettings, ResolvedDashboard,
};

use crate::{Error, Shared};

/// Serves the dashboard until `stop`, if it is configured; otherwise waits
/// for `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) -> Result<(), Error> {
    let Some(address) = shared.config.dashboard().listen else {
        stop.cancelled().await;
        return Ok(());
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| Error::Bind { address, source })?;
    let live = live::Live::new();
    let read_only = shared.config.dashboard().read_only();
    info!(%address, read_only, "serving the dashboard on http://{address}/");
    // The server's own token: a failing feed stops the server without
    // cancelling the other loops' token (the supervisor does that).
    let server_stop = stop.child_token();
    let server = Arc::new(server::Server {
        shared: shared.clone(),
        live: live.clone(),
        views: views::Views::new(shared.clone(), live.clone()),
        stop: server_stop.clone(),
    });
    let serving = tokio::spawn(server::serve(listener, server));
    let fed = live::feed(shared, live, stop).await;
    server_stop.cancel();
    let _ = serving.await;
    fed
}
