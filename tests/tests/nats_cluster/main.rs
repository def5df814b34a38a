//! ferry on a 3-node NATS cluster in containers (tests/src/nats_cluster.rs):
//! streams and buckets kept three times, agents and controllers connected
//! with every node's URL, and nodes killed under them. Also, on a single
//! server, the start-up check of `stream_replicas` against the server.
//!
//! The cluster tests need the local Docker engine (skipped without one,
//! failing under `CI`); the image is built from the static nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use ferry_controller::config::StageSettings;
use ferry_controller::ControllerConfig;
use ferry_e2e::metrics_scrape::{gauge, scrape_metrics};
use ferry_e2e::nats_cluster::{ferry_streams, LeafNode, NatsCluster, HUB_DOMAIN};
use ferry_e2e::rollout::*;
use ferry_e2e::*;
use ferry_protocol::api::HistoryRecord;
use ferry_protocol::command::{Action, ActionKind, Command};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::rollout::{AnalysisOverride, RolloutOptions, RolloutPhase, Strategy};
use ferry_protocol::{streams, Envelope, RefusalReason, SigningKey};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use uuid::Uuid;

mod failover;
mod leaf;
mod startup;

/// A 3-node cluster, or `None` (the test skips) without a Docker engine
/// outside CI.
async fn cluster(test: &str) -> Option<NatsCluster> {
    if !docker_ready(test, &[], "nothing: start the Docker engine") {
        return None;
    }
    Some(NatsCluster::start(3).await)
}

/// Every message stored in `stream` under `filter`, decoded as envelopes of
/// `T` (those that are not are skipped), read by an ephemeral consumer up
/// to the count it had pending when created (an empty fetch on a busy
/// cluster is not the end). A read that fails (right after a heal the
/// JetStream API can time out while the node catches up) is started over,
/// for up to [`WAIT`].
async fn stored<T: DeserializeOwned>(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Vec<T> {
    stored_envelopes(client, stream, filter)
        .await
        .into_iter()
        .map(|envelope| envelope.data)
        .collect()
}

/// As [`stored`], the whole envelopes.
async fn stored_envelopes<T: DeserializeOwned>(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Vec<Envelope<T>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match read_stored(client, stream, filter, deadline).await {
            Ok(found) => return found,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "could not read {filter} from {stream} within {WAIT:?}: {e}"
                );
                eprintln!("reading {filter} from {stream} again after: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn read_stored<T: DeserializeOwned>(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    deadline: tokio::time::Instant,
) -> Result<Vec<Envelope<T>>, String> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let mut reader = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let total = reader.info().await.map_err(|e| e.to_string())?.num_pending as usize;
    let mut read = 0;
    let mut found = Vec::new();
    while read < total {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("read {read} of the {total} messages of {filter}"));
        }
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| e.to_string())?;
            read += 1;
            if let Ok(envelope) = Envelope::<T>::decode(&message.payload) {
                found.push(envelope);
            }
        }
    }
    Ok(found)
}

/// The envelope ids of every message stored in `stream` under `filter`.
async fn stored_ids(client: &async_nats::Client, stream: &str, filter: &str) -> Vec<Uuid> {
    stored_envelopes::<serde_json::Value>(client, stream, filter)
        .await
        .into_iter()
        .map(|envelope| envelope.id)
        .collect()
}

/// History records of `command_id`.
async fn history_of(client: &async_nats::Client, command_id: Uuid) -> Vec<HistoryRecord> {
    stored::<HistoryRecord>(client, streams::history().name, "ferry.v1.history.>")
        .await
        .into_iter()
        .filter(|r| r.command_id == Some(command_id))
        .collect()
}

/// The stored final events (outcomes) of `command_id` for dev/web.
async fn outcomes_of(client: &async_nats::Client, command_id: Uuid) -> Vec<ServiceEvent> {
    env_outcomes_of(client, "dev", command_id).await
}

/// The stored final events (outcomes and refusals) of `command_id` for `env`'s web.
async fn env_outcomes_of(
    client: &async_nats::Client,
    env: &str,
    command_id: Uuid,
) -> Vec<ServiceEvent> {
    let filter = format!("ferry.v1.evt.{env}.web.>");
    stored::<ServiceEvent>(client, streams::events().name, &filter)
        .await
        .into_iter()
        .filter(|e| e.command_id == Some(command_id) && e.body.is_final())
        .collect()
}

/// The stored outcomes of `command_id`, read again (for up to [`WAIT`])
/// while there are none: an outcome the agent published during a failover
/// was acknowledged, and a read through a new stream leader right after it
/// has been seen to miss it.
async fn stored_outcomes_of(client: &async_nats::Client, command_id: Uuid) -> Vec<ServiceEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let outcomes = outcomes_of(client, command_id).await;
        if !outcomes.is_empty() || tokio::time::Instant::now() >= deadline {
            return outcomes;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A canary of 2.0.0 with 20% errors, steps of 10%, 50% and 100% held
/// 600 s each (only the analysis can end the first), judged every 500 ms
/// once `min_requests` canary requests are in.
fn bad_canary(min_requests: u64) -> Action {
    deploy(
        "2.0.0",
        &[("SAMPLE_ERROR_RATE", "0.2")],
        Some(RolloutOptions {
            strategy: Some(Strategy::Canary {
                steps: vec![10, 50, 100],
                step_secs: 600,
            }),
            analysis: Some(AnalysisOverride {
                interval_ms: Some(500),
                failures_to_abort: Some(2),
                min_requests: Some(min_requests),
                ..Default::default()
            }),
        }),
    )
}

/// Waits for the first step of the rollout of command `canary`.
async fn wait_first_step(watch: &mut EventWatch, canary: Uuid) {
    watch
        .wait_for(WAIT, "the canary's first step", |e| {
            e.command_id == Some(canary)
                && matches!(rollout_phase(e), Some(RolloutPhase::StepStarted))
        })
        .await;
}

/// Polls until the history holds a record of `command_id` with `outcome`.
async fn wait_history(client: &async_nats::Client, command_id: Uuid, outcome: &str) {
    wait_history_within(client, command_id, outcome, WAIT).await
}

/// How long, after a leaf's link heals, the hub may take to source what
/// the leaf stored meanwhile. A source whose consumer request went out
/// during the cut waits up to 30 s for its answer before it tries again,
/// and on a reconnect only a node leading the sourcing stream retries at
/// once (the others on their 10 s health check): usually a second, at
/// worst some 40 s.
const AFTER_HEAL: Duration = Duration::from_secs(120);

/// [`wait_history`] bounded by `wait`.
async fn wait_history_within(
    client: &async_nats::Client,
    command_id: Uuid,
    outcome: &str,
    wait: Duration,
) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let records = history_of(client, command_id).await;
        if records.iter().any(|r| r.outcome == outcome) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {outcome} history record of {command_id} within {wait:?}: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many commands FERRY_COMMANDS holds for `env`'s web.
async fn stored_commands(client: &async_nats::Client, env: &str) -> usize {
    stored::<Command>(client, "FERRY_COMMANDS", &format!("ferry.v1.cmd.{env}.web"))
        .await
        .len()
}

/// Waits up to `within` for the outcome of `deploy`, the first release,
/// asserts it succeeded, then that `port` serves 1.0.0.
async fn first_release_served(watch: &mut EventWatch, deploy: Uuid, within: Duration, port: u16) {
    let outcome = watch.outcome(deploy, within).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;
}
