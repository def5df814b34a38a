//! ferry on a 3-node NATS cluster in containers (tests/src/nats_cluster.rs):
//! streams and buckets kept three times, agents and controllers connected
//! with every node's URL, and nodes killed under them. Also, on a single
//! server, the start-up check of `stream_replicas` against the server.
//!
//! The cluster tests need the local Docker engine (skipped without one,
//! failing under `CI`); the image is built from the static nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use ferry_e2e::nats_cluster::NatsCluster;
use ferry_e2e::rollout::*;
use ferry_e2e::*;
use ferry_protocol::api::HistoryRecord;
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::rollout::{AnalysisOverride, RolloutOptions, RolloutPhase, Strategy};
use ferry_protocol::{streams, Envelope};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A 3-node cluster, or `None` (the test skips) without a Docker engine
/// outside CI.
async fn cluster(test: &str) -> Option<NatsCluster> {
    if !docker_ready(test, &[], "nothing: start the Docker engine") {
        return None;
    }
    Some(NatsCluster::start(3).await)
}

/// Every message stored in `stream` under `filter`, decoded as envelopes of
/// `T` (those that are not are skipped), read by an ephemeral consumer.
async fn stored<T: DeserializeOwned>(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Vec<T> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.unwrap();
    let reader = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut found = Vec::new();
    loop {
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while let Some(message) = batch.next().await {
            got += 1;
            if let Ok(envelope) = Envelope::<T>::decode(&message.unwrap().payload) {
                found.push(envelope.data);
            }
        }
        if got == 0 {
            return found;
        }
    }
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
    stored::<ServiceEvent>(client, streams::events().name, "ferry.v1.evt.dev.web.>")
        .await
        .into_iter()
        .filter(|e| e.command_id == Some(command_id) && e.body.is_final())
        .collect()
}

/// Polls until the history holds a record of `command_id` with `outcome`.
async fn wait_history(client: &async_nats::Client, command_id: Uuid, outcome: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let records = history_of(client, command_id).await;
        if records.iter().any(|r| r.outcome == outcome) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {outcome} history record of {command_id} within {WAIT:?}: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_command_stream_leader_killed_mid_canary_the_canary_is_rolled_back_once_and_the_next_command_runs_once(
) {
    let test = "leader_killed_mid_canary";
    let Some(cluster) = cluster(test).await else {
        return;
    };
    let mut system = System::on_servers(cluster.urls(), 3);
    system.start_controller().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    for stream in [
        "FERRY_COMMANDS",
        "FERRY_EVENTS",
        "FERRY_HISTORY",
        "KV_ferry_deployments",
    ] {
        assert_eq!(
            cluster.stream_replicas(&client, stream).await,
            3,
            "{stream} is kept on every node"
        );
    }
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let first = send(&system, &client, deploy("1.0.0", &[], None)).await;
    let outcome = watch.outcome(first, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;

    let load = Load::start(port, 4, Duration::from_millis(2));
    let canary = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.2")],
            Some(RolloutOptions {
                // Long steps: only the analysis can end the first one.
                strategy: Some(Strategy::Canary {
                    steps: vec![10, 50, 100],
                    step_secs: 600,
                }),
                analysis: Some(AnalysisOverride {
                    interval_ms: Some(500),
                    failures_to_abort: Some(2),
                    min_requests: Some(5),
                    ..Default::default()
                }),
            }),
        ),
    )
    .await;
    watch
        .wait_for(WAIT, "the canary's first step", |e| {
            e.command_id == Some(canary)
                && matches!(rollout_phase(e), Some(RolloutPhase::StepStarted))
        })
        .await;
    let leader = cluster.stream_leader(&client, "FERRY_COMMANDS").await;
    cluster.kill(cluster.index_of(&leader));

    let outcome = watch.outcome(canary, Duration::from_secs(90)).await;
    match &outcome.body {
        EventBody::Failed { serving, .. } => {
            assert_eq!(serving.as_ref().map(|v| v.as_str()), Some("1.0.0"))
        }
        other => panic!("the bad canary was not rolled back: {other:?}"),
    }
    let new_leader = cluster.stream_leader(&client, "FERRY_COMMANDS").await;
    assert_ne!(new_leader, leader, "another node leads the commands");
    wait_history(&client, canary, "failed").await;

    let next = send(&system, &client, deploy("3.0.0", &[], None)).await;
    let outcome = watch.outcome(next, Duration::from_secs(60)).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "3.0.0", WAIT).await;
    wait_history(&client, next, "succeeded").await;
    let stats = load.stop().await;
    assert!(
        stats.by_version.get("2.0.0").copied().unwrap_or(0) > 0,
        "the canary did get traffic: {stats:?}"
    );

    // Once each: one outcome event and one history record per command,
    // though the node that led the commands died under them.
    for (what, id) in [("the canary", canary), ("the next deploy", next)] {
        let outcomes = outcomes_of(&client, id).await;
        assert_eq!(outcomes.len(), 1, "{what}'s outcomes: {outcomes:#?}");
        let records: Vec<HistoryRecord> = history_of(&client, id)
            .await
            .into_iter()
            .filter(|r| r.outcome == "failed" || r.outcome == "succeeded")
            .collect();
        assert_eq!(records.len(), 1, "{what}'s history: {records:#?}");
    }
    system.shutdown().await;
}
