//! The controller under event load, as the `controller_ingest` benchmark
//! drives it: it keeps folding, and the consumers it holds on the buckets'
//! and the history's streams stay within stated constants, whatever the
//! number of events (real nats-server, the real `ferry-controller` binary).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use ferry_e2e::{free_port, ingest, ControllerProcess, System, WAIT};
use ferry_protocol::streams;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// What the server says about consumers on ferry's state streams while the
/// controller works.
#[derive(Default)]
struct ConsumerWatch {
    /// Consumers created per stream (from JetStream's advisories).
    created: BTreeMap<String, usize>,
    /// The most consumers seen at once per stream (sampled).
    most_at_once: BTreeMap<String, usize>,
}

fn state_streams() -> Vec<String> {
    let mut names: Vec<String> = streams::BUCKETS.iter().map(|b| b.stream_name()).collect();
    names.push(streams::history().name.to_owned());
    names
}

/// Counts consumer creations on ferry's state streams and samples how many
/// exist at once, until `stop`.
async fn watch_consumers(
    client: async_nats::Client,
    stop: CancellationToken,
) -> Arc<Mutex<ConsumerWatch>> {
    let watch = Arc::new(Mutex::new(ConsumerWatch::default()));
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let counted = watch.clone();
    let stop_counting = stop.clone();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                () = stop_counting.cancelled() => return,
                message = advisories.next() => message,
            };
            let Some(message) = message else { return };
            // $JS.EVENT.ADVISORY.CONSUMER.CREATED.<stream>.<consumer>
            if let Some(stream) = message.subject.split('.').nth(5) {
                *counted
                    .lock()
                    .unwrap()
                    .created
                    .entry(stream.to_owned())
                    .or_default() += 1;
            }
        }
    });
    let js = jetstream::new(client);
    let sampled = watch.clone();
    tokio::spawn(async move {
        let names = state_streams();
        loop {
            for name in &names {
                let Ok(stream) = js.get_stream(name).await else {
                    continue;
                };
                let count = stream.cached_info().state.consumer_count;
                let mut watch = sampled.lock().unwrap();
                let most = watch.most_at_once.entry(name.clone()).or_default();
                *most = (*most).max(count);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    });
    watch
}

/// One round of the benchmark's load: published as fast as JetStream takes
/// it, then waited on until the controller has acknowledged all of it, with
/// every outcome in history.
async fn fold_round(js: &jetstream::Context, round: usize, cycles: usize) {
    let history = js.get_stream(streams::history().name).await.unwrap();
    let before = history.get_info().await.unwrap().state.messages;
    let messages = ingest::round_messages(round, cycles);
    let last = ingest::publish(js, &messages).await;
    ingest::controller_drained(js, last).await;
    let after = history.get_info().await.unwrap().state.messages;
    assert_eq!(
        after - before,
        ingest::outcomes(cycles),
        "every outcome of round {round} folded into history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folding_bursts_of_events_creates_no_consumer_on_the_buckets_and_never_stalls() {
    let system = System::without_controller();
    let controller = ControllerProcess::start(&system, &ingest::environments(), free_port()).await;
    let client = system.nats.client().await;
    let js = jetstream::new(client.clone());
    let stop = CancellationToken::new();
    let watch = watch_consumers(client, stop.clone()).await;

    // Two rounds of different sizes, the second the benchmark's round: what
    // the controller holds must not depend on how many events it folds.
    fold_round(&js, 0, 10).await;
    let after_small = watch.lock().unwrap().most_at_once.clone();
    fold_round(&js, 1, ingest::CYCLES).await;
    stop.cancel();

    let watch = watch.lock().unwrap();
    let created: usize = watch
        .created
        .iter()
        .filter(|(stream, _)| stream.starts_with("KV_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        created, 0,
        "folding created consumers on the buckets' streams: {:?}",
        watch.created
    );
    for bucket in streams::BUCKETS {
        let name = bucket.stream_name();
        let most = watch.most_at_once.get(&name).copied().unwrap_or(0);
        // One controller: its one live view of the bucket.
        assert!(
            most <= 1,
            "{most} consumers at once on {name}, over the one watcher a controller keeps"
        );
        assert_eq!(
            after_small.get(&name).copied().unwrap_or(0),
            most,
            "consumers on {name} grew with the number of events"
        );
    }
    let log = controller.log();
    assert!(
        !log.contains("maximum consumers"),
        "the controller ran out of consumers:\n{log}"
    );
    assert!(
        !log.contains("will retry"),
        "the controller stopped folding to retry:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_history_queries_hold_at_most_the_stated_number_of_readers() {
    let system = System::without_controller();
    let controller = ControllerProcess::start(&system, &ingest::environments(), free_port()).await;
    let client = system.nats.client().await;
    let js = jetstream::new(client.clone());
    // Some history to read.
    fold_round(&js, 0, 4).await;
    let history_stream = streams::history().name.to_owned();
    let durables = js
        .get_stream(&history_stream)
        .await
        .unwrap()
        .cached_info()
        .state
        .consumer_count;
    let stop = CancellationToken::new();
    let watch = watch_consumers(client, stop.clone()).await;

    const QUERIES: usize = 24;
    let queries: Vec<_> = (0..QUERIES)
        .map(|_| system.cli_async(&["history", "--limit", "1000", "--output", "json"]))
        .collect();
    let answers = tokio::time::timeout(WAIT, futures::future::join_all(queries))
        .await
        .expect("every history query answered");
    stop.cancel();
    for answer in &answers {
        assert!(
            answer.status.success(),
            "a history query failed: {}",
            String::from_utf8_lossy(&answer.stderr)
        );
    }
    let watch = watch.lock().unwrap();
    let created = watch.created.get(&history_stream).copied().unwrap_or(0);
    assert_eq!(created, QUERIES, "each query read the history once");
    let most = watch
        .most_at_once
        .get(&history_stream)
        .copied()
        .unwrap_or(0);
    assert!(
        most <= durables + ferry_controller::HISTORY_READERS,
        "{most} consumers at once on {history_stream}: over its {durables} durable(s) and \
         {} readers",
        ferry_controller::HISTORY_READERS
    );
    assert!(
        !controller.log().contains("maximum consumers"),
        "the controller ran out of consumers"
    );
}
