//! Command-to-accepted latency: from publishing a signed command to the
//! agent's `accepted` event, beside raw NATS request-reply on the same
//! nats-server, in the same run (these machines are noisy; ratios are what
//! compare). Run with `cargo bench -p ferry-e2e --bench command_latency`.

use std::time::{Duration, Instant};

use ferry_e2e::{free_port, NatsServer, System, WAIT};
use ferry_protocol::command::{Action, Command};
use ferry_protocol::event::ServiceEvent;
use ferry_protocol::{EnvName, Envelope, ServiceName, SigningKey};
use futures::StreamExt;

const WARMUP: usize = 200;
const SAMPLES: usize = 2000;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn raw_request_reply(nats: &NatsServer) -> Vec<Duration> {
    let responder = nats.client().await;
    let mut requests = responder.subscribe("bench.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = responder.publish(reply, message.payload).await;
            }
        }
    });
    let client = nats.client().await;
    client.flush().await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 512]);
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let started = Instant::now();
        client.request("bench.echo", payload.clone()).await.unwrap();
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    samples
}

async fn command_to_accepted(nats: &NatsServer, key: &SigningKey) -> Vec<Duration> {
    let client = nats.client().await;
    let mut accepted = client
        .subscribe("ferry.v1.evt.dev.web.accepted")
        .await
        .unwrap();
    let mut outcomes = client
        .subscribe("ferry.v1.evt.dev.web.outcome")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let command = Command {
            environment: EnvName::new("dev").unwrap(),
            service: ServiceName::new("web").unwrap(),
            actor: Some("bench".into()),
            action: Action::Scale {
                replicas: 1 + (i % 3) as u32,
            },
        };
        // Signing is the controller's cost, not the path measured here.
        let envelope = Envelope::new("/ferry/controller", command)
            .expiring_in(Duration::from_secs(600))
            .sign(key)
            .unwrap();
        let id = envelope.id;
        let bytes = bytes::Bytes::from(envelope.to_bytes().unwrap());
        let started = Instant::now();
        client.publish("ferry.v1.cmd.dev.web", bytes).await.unwrap();
        loop {
            let message = tokio::time::timeout(WAIT, accepted.next())
                .await
                .expect("accepted in time")
                .unwrap();
            if Envelope::<ServiceEvent>::decode(&message.payload)
                .unwrap()
                .data
                .command_id
                == Some(id)
            {
                break;
            }
        }
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
        // Let the command finish so the next one is not queued behind it.
        loop {
            let message = tokio::time::timeout(WAIT, outcomes.next())
                .await
                .expect("outcome in time")
                .unwrap();
            if Envelope::<ServiceEvent>::decode(&message.payload)
                .unwrap()
                .data
                .command_id
                == Some(id)
            {
                break;
            }
        }
    }
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;

    let mut raw = raw_request_reply(&system.nats).await;
    let mut ferry = command_to_accepted(&system.nats, &system.controller_key).await;
    raw.sort();
    ferry.sort();
    let (raw50, raw99) = (percentile(&raw, 0.50), percentile(&raw, 0.99));
    let (ferry50, ferry99) = (percentile(&ferry, 0.50), percentile(&ferry, 0.99));
    println!("command_latency: {SAMPLES} samples each after {WARMUP} warm-up, same nats-server, same run");
    println!("{:<38} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!(
        "{:<38} {:>9.3} {:>9.3}",
        "raw NATS request-reply (baseline)",
        ms(raw50),
        ms(raw99)
    );
    println!(
        "{:<38} {:>9.3} {:>9.3}",
        "ferry command -> accepted event",
        ms(ferry50),
        ms(ferry99)
    );
    println!(
        "{:<38} {:>9.2} {:>9.2}",
        "ratio (ferry / raw)",
        ferry50.as_secs_f64() / raw50.as_secs_f64(),
        ferry99.as_secs_f64() / raw99.as_secs_f64()
    );
    system.shutdown().await;
}
