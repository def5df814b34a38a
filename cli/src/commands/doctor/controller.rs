//! The controller answering its API, and the caller's NATS permissions for
//! what the CLI does: API requests, following events (`--wait`, `monitor`).

use ferry_protocol::api::ApiRequest;
use ferry_protocol::doctor::Installation;
use ferry_protocol::subject;

use super::checks::Checks;
use crate::client::{Connection, ServerErrors};

/// Adds the controller and permission checks; returns what the controller
/// knows of the installation when it answered.
pub(super) async fn check(
    checks: &mut Checks,
    connection: &Connection,
    server_errors: &ServerErrors,
) -> Option<Installation> {
    // Subscribed before the request: the server handles both in order, so
    // a refusal of either has arrived once the reply (or timeout) has.
    let events = subject::all_events();
    let subscription = connection.client().subscribe(events.clone()).await;
    let reply = connection
        .call::<Installation>(ApiRequest::Installation {})
        .await;
    let denied: Vec<String> = server_errors
        .all()
        .into_iter()
        .filter(|e| e.to_lowercase().contains("permission"))
        .collect();
    match (&subscription, denied.is_empty()) {
        (Ok(_), true) => checks.ok(
            "nats",
            "permissions",
            format!("may call the API and subscribe to {events}"),
        ),
        _ => checks.problem(
            "nats",
            "permissions",
            match &subscription {
                Err(e) => format!("cannot subscribe to {events}: {e}"),
                Ok(_) => denied.join("; "),
            },
            format!(
                "give this NATS user publish on {} and subscribe on {events}, \
                 ferry.v1.agent.> and its inbox prefix (--nats-inbox-prefix) \
                 (see the ferry-cli user in deploy/nats/nats-server.conf)",
                subject::all_api()
            ),
        ),
    }
    drop(subscription);
    match reply {
        Ok(reply) => {
            checks.ok(
                "controller",
                "api",
                format!(
                    "answers: {}; signs commands with {}",
                    reply.message, reply.response.signing_key
                ),
            );
            Some(reply.response)
        }
        Err(e) => {
            checks.problem(
                "controller",
                "api",
                e.to_string(),
                "start ferry-controller (or check it reaches this NATS server); a controller \
                 older than this CLI refuses the installation request: upgrade it",
            );
            None
        }
    }
}
