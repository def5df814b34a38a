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
use ferry_e2e::{free_port, ControllerProcess, System, WAIT};
use ferry_protocol::command::ActionKind;
use ferry_protocol::event::{
    AgentEvent, EventBody, Heartbeat, HostMetrics, ServiceEvent, ServiceMetrics, ServiceSnapshot,
    ServiceState,
};
use ferry_protocol::subject::{self, AgentEventKind, EventKind};
use ferry_protocol::{streams, EnvName, Envelope, ServiceName, Version};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Simulated agents, one per environment of the controller's pipeline.
const AGENTS: usize = 12;
/// Services each agent manages.
const SERVICES: usize = 4;
/// Rounds of publishing, each followed by the controller's and the raw
/// consumers' reading of that round's messages.
const ROUNDS: usize = 3;
/// Agent cycles per round by default: in each, every agent sends a
/// heartbeat, and for every service a command's `accepted`, a metrics event
/// and the command's outcome.
const CYCLES: usize = 25;
const RSS_EVERY: Duration = Duration::from_millis(100);
const RSS_GROWTH_BAR: f64 = 0.10;

fn env_name(agent: usize) -> EnvName {
    EnvName::new(format!("stage{agent:02}")).unwrap()
}

fn service_name(service: usize) -> ServiceName {
    ServiceName::new(format!("svc{service}")).unwrap()
}

fn snapshot(service: usize, version: &Version) -> ServiceSnapshot {
    ServiceSnapshot {
        service: service_name(service),
        version: Some(version.clone()),
        previous: None,
        replicas_desired: 2,
        replicas_healthy: 2,
        state: ServiceState::Running,
        maintenance: None,
        runtime: "process".into(),
        address: Some("127.0.0.1:8080".into()),
        rollout: None,
        strategy: None,
    }
}

/// Healthy traffic, under every alert threshold.
fn metrics() -> ServiceMetrics {
    ServiceMetrics {
        interval_secs: 1.0,
        requests: 100,
        errors: 0,
        error_rate: 0.0,
        requests_per_sec: 100.0,
        p50_ms: 3.0,
        p95_ms: 9.0,
        p99_ms: 14.0,
        availability_percent: Some(100.0),
        replicas: Vec::new(),
    }
}

/// One round's messages, encoded beforehand so encoding is not timed: per
/// cycle and agent, a heartbeat, then per service `accepted`, metrics and
/// the outcome (a deploy on even cycles, a scale on odd ones).
fn round_messages(round: usize, cycles: usize) -> Vec<(String, bytes::Bytes)> {
    let started_at = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for cycle in 0..cycles {
        let version = Version::new(format!("1.{round}.{cycle}")).unwrap();
        for agent in 0..AGENTS {
            let env = env_name(agent);
            let source = format!("/ferry/agent/{env}");
            let heartbeat = AgentEvent::Heartbeat(Heartbeat {
                host_name: None,
                agent_id: format!("agent-{agent}"),
                environment: env.clone(),
                started_at,
                interval_secs: 5,
                agent_version: "0.1.0".into(),
                host: HostMetrics::default(),
                services: (0..SERVICES).map(|s| snapshot(s, &version)).collect(),
                gap: None,
                sent_at: None,
                trusted_keys: Vec::new(),
                reviewer_keys: Vec::new(),
                approvals_required: 0,
            });
            out.push((
                subject::agent_event(&env, AgentEventKind::Heartbeat),
                Envelope::new(source.clone(), heartbeat)
                    .to_bytes()
                    .unwrap()
                    .into(),
            ));
            for s in 0..SERVICES {
                let service = service_name(s);
                let command_id = Some(uuid::Uuid::new_v4());
                let action = if cycle % 2 == 0 {
                    ActionKind::Deploy
                } else {
                    ActionKind::Scale
                };
                let bodies = [
                    EventBody::Accepted { action },
                    EventBody::Metrics(metrics()),
                    EventBody::Succeeded {
                        action,
                        version: Some(version.clone()),
                        replicas: 2,
                        detail: format!("{version} serving on 2 replicas"),
                    },
                ];
                for body in bodies {
                    let id = (!matches!(body, EventBody::Metrics(_)))
                        .then_some(command_id)
                        .flatten();
                    let subject = subject::event(&env, &service, body.kind());
                    let event = ServiceEvent {
                        host: None,
                        environment: env.clone(),
                        service: service.clone(),
                        command_id: id,
                        body,
                    };
                    out.push((
                        subject,
                        Envelope::new(source.clone(), event)
                            .to_bytes()
                            .unwrap()
                            .into(),
                    ));
                }
            }
        }
    }
    out
}

/// Stores `messages` in FERRY_EVENTS as fast as JetStream confirms them
/// (acknowledgements pipelined); returns the last stream sequence.
async fn publish(js: &jetstream::Context, messages: &[(String, bytes::Bytes)]) -> u64 {
    let mut last = 0;
    for chunk in messages.chunks(256) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (subject, payload) in chunk {
            acks.push(js.publish(subject.clone(), payload.clone()).await.unwrap());
        }
        for ack in acks {
            last = ack.await.unwrap().sequence;
        }
    }
    last
}

/// Waits until the controller's events consumer has acknowledged every
/// message up to stream sequence `last`.
async fn controller_drained(js: &jetstream::Context, last: u64) {
    let mut consumer: consumer::PullConsumer = js
        .get_consumer_from_stream(ferry_controller::events::CONSUMER, streams::events().name)
        .await
        .unwrap();
    let deadline = Instant::now() + 10 * WAIT;
    loop {
        let info = consumer.info().await.unwrap();
        if info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "controller did not fold the events in time: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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
    let environments: Vec<String> = (0..AGENTS).map(|a| env_name(a).to_string()).collect();
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
        "{:<6} {:>8} {:>16} {:>18} {:>22}",
        "round", "events", "controller ev/s", "raw JetStream ev/s", "raw, 1 in flight ev/s"
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
        outcomes += (cycles * AGENTS * SERVICES) as u64;
        let history_after = history.get_info().await.unwrap().state.messages;
        assert_eq!(
            history_after - history_before,
            (cycles * AGENTS * SERVICES) as u64,
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
            "{round:<6} {:>8} {:>16.0} {:>18.0} {:>22.0}",
            messages.len(),
            rates.0,
            rates.1,
            rates.2
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
    drop(controller);
}
