//! Controller ingest: how many agent events per second one `ferry-controller`
//! process folds into status (the agents and deployments buckets), metrics
//! (its `/metrics` view) and history, from many simulated agents publishing
//! realistic event envelopes on their event subjects into FERRY_EVENTS;
//! beside raw JetStream consumption of the same stored messages in the same
//! run, with the controller's resident memory sampled throughout (these
//! machines are noisy; ratios are what compare). Run with
//! `cargo bench -p ferry-e2e --bench controller_ingest`
//! (`FERRY_INGEST_CYCLES=N` for a shorter or longer run).

// A benchmark that cannot set up must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_e2e::bars::{bars_or_exit, Bars};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use ferry_e2e::footprint::{mib, rss_bytes};
use ferry_e2e::ingest::{
    controller_drained, environments, outcomes as round_outcomes, publish, round_messages, AGENTS,
    CYCLES, SERVICES,
};
use ferry_e2e::{free_port, ControllerProcess, System, WAIT};
use ferry_protocol::streams;
use ferry_protocol::subject::{self, EventKind};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Rounds of publishing, each followed by the controller's and the raw
/// consumers' reading of that round's messages.
const ROUNDS: usize = 3;
const RSS_EVERY: Duration = Duration::from_millis(100);
const RSS_GROWTH_BAR: f64 = 0.10;

/// Reads the stream from `first` to `last` through a new durable pull
/// consumer selecting what the controller's does (plus metrics events,
/// which the controller takes from core NATS), acknowledging each message as
/// the controller does; `max_ack_pending` 1 is the controller's own limit
/// (one message in flight, for order across instances).
async fn raw_consume(
    js: &jetstream::Context,
    name: &str,
    first: u64,
    last: u64,
    max_ack_pending: i64,
) -> (usize, Duration) {
    let stream = js.get_stream(streams::events().name).await.unwrap();
    let mut filter_subjects = ferry_controller::events::filter_subjects();
    filter_subjects.push(subject::all_events_of_kind(EventKind::Metrics));
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending,
            filter_subjects,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut messages = consumer.messages().await.unwrap();
    let mut count = 0;
    loop {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("raw consumer got the messages in time")
            .unwrap()
            .unwrap();
        let sequence = message.info().unwrap().stream_sequence;
        message.ack().await.unwrap();
        count += 1;
        if sequence >= last {
            break;
        }
    }
    let elapsed = started.elapsed();
    stream.delete_consumer(name).await.unwrap();
    (count, elapsed)
}

/// Samples `pid`'s RSS every [`RSS_EVERY`] until `stop`.
fn sample_rss(pid: u32, stop: CancellationToken) -> Arc<Mutex<Vec<u64>>> {
    let samples = Arc::new(Mutex::new(vec![rss_bytes(pid)]));
    let out = samples.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RSS_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => samples.lock().unwrap().push(rss_bytes(pid)),
            }
        }
    });
    out
}

/// Counts the series of `name` in the controller's `/metrics`.
async fn series(metrics_port: u16, name: &str) -> usize {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().filter(|l| l.starts_with(name)).count()
}

fn per_sec(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut bars = bars_or_exit("controller_ingest");
    measure(&mut bars).await;
    bars.finish()
}

async fn measure(bars: &mut Bars) {
    let cycles: usize = std::env::var("FERRY_INGEST_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CYCLES);
    let system = System::without_controller();
    let environments = environments();
    let metrics_port = free_port();
    let controller = ControllerProcess::start(&system, &environments, metrics_port).await;
    let client = system.nats.client().await;
    let js = jetstream::new(client.clone());
    let history = js.get_stream(streams::history().name).await.unwrap();

    let stop_sampling = CancellationToken::new();
    let rss = sample_rss(controller.pid(), stop_sampling.clone());
    println!(
        "controller_ingest: {AGENTS} simulated agents x {SERVICES} services, {ROUNDS} rounds of \
         {cycles} cycles (heartbeat; accepted, metrics, outcome per service)"
    );
    println!(
        "{:<6} {:>8} {:>16} {:>18} {:>22} {:>8}",
        "round",
        "events",
        "controller ev/s",
        "raw JetStream ev/s",
        "raw, 1 in flight ev/s",
        "ratio"
    );
    let mut controller_rates = Vec::new();
    let mut raw_rates = Vec::new();
    let mut raw_one_rates = Vec::new();
    let mut outcomes = 0u64;
    for round in 0..ROUNDS {
        let messages = round_messages(round, cycles);
        let first = js
            .get_stream(streams::events().name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .last_sequence
            + 1;
        let history_before = history.get_info().await.unwrap().state.messages;
        let started = Instant::now();
        let last = publish(&js, &messages).await;
        controller_drained(&js, last).await;
        let controller_elapsed = started.elapsed();
        outcomes += round_outcomes(cycles);
        let history_after = history.get_info().await.unwrap().state.messages;
        assert_eq!(
            history_after - history_before,
            round_outcomes(cycles),
            "every outcome in history"
        );
        let (raw_count, raw_elapsed) = raw_consume(&js, "bench-raw", first, last, 10_000).await;
        let (one_count, one_elapsed) = raw_consume(&js, "bench-raw-one", first, last, 1).await;
        assert_eq!(raw_count, messages.len(), "raw consumer read the round");
        assert_eq!(one_count, messages.len(), "raw consumer read the round");
        let rates = (
            per_sec(messages.len(), controller_elapsed),
            per_sec(raw_count, raw_elapsed),
            per_sec(one_count, one_elapsed),
        );
        println!(
            "{round:<6} {:>8} {:>16.0} {:>18.0} {:>22.0} {:>8.3}",
            messages.len(),
            rates.0,
            rates.1,
            rates.2,
            rates.0 / rates.1
        );
        controller_rates.push(rates.0);
        raw_rates.push(rates.1);
        raw_one_rates.push(rates.2);
    }
    stop_sampling.cancel();
    // Folded into metrics too: every simulated service has its series.
    assert_eq!(
        series(metrics_port, "ferry_service_requests_per_second{").await,
        AGENTS * SERVICES,
        "every service in /metrics"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (c, r, o) = (
        median(&mut controller_rates),
        median(&mut raw_rates),
        median(&mut raw_one_rates),
    );
    println!("medians: controller {c:.0} events/s; raw JetStream {r:.0} events/s; raw with one in flight {o:.0} events/s");
    println!(
        "ratio controller / raw JetStream {:.3}; controller / raw with one in flight {:.2}",
        c / r,
        c / o
    );
    println!("{outcomes} outcomes appended to history");
    let rss = rss.lock().unwrap().clone();
    let (first, last) = (rss[0], rss[rss.len() - 1]);
    let max = rss.iter().copied().max().unwrap_or(0);
    let growth = last as f64 / first as f64 - 1.0;
    println!(
        "controller RSS over the run ({} samples): first {:.1} MiB, max {:.1} MiB, last {:.1} MiB \
         ({:+.1}%; bar: within 10%): {}",
        rss.len(),
        mib(first),
        mib(max),
        mib(last),
        growth * 100.0,
        if bars.at_most(
            "controller RSS growth, fraction",
            growth.abs(),
            RSS_GROWTH_BAR
        ) {
            "ok"
        } else {
            "OVER"
        }
    );
    // The controller's own warnings (it logs at warn and above here): a
    // retry or a consumer it could not make shows as a stall in the rates.
    let log = controller.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    println!("controller warnings during the run: {}", warnings.len());
    for line in &warnings {
        println!("  {line}");
    }
    bars.at_most("controller warnings", warnings.len() as f64, 0.0);
    drop(controller);
}
