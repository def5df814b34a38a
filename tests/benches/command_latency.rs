//! Command-to-accepted latency: from publishing a signed command to the
//! agent's `accepted` event, beside raw NATS request-reply on the same
//! nats-server, in the same run (these machines are noisy; ratios are what
//! compare). Run with `cargo bench -p ferry-e2e --bench command_latency`.

// A benchmark that cannot set up must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_e2e::bars::{bars_or_exit, Bars};
use std::time::{Duration, Instant};

use ferry_e2e::{free_port, AgentProcess, NatsServer, System, WAIT};
use ferry_protocol::command::{Action, Command};
use ferry_protocol::event::ServiceEvent;
use ferry_protocol::{EnvName, Envelope, ServiceName, SigningKey, TrustedKeys};
use futures::StreamExt;

const WARMUP: usize = 200;
const SAMPLES: usize = 2000;
/// The bar for ferry's p50 over raw request-reply's, measured in the same run.
const BAR: f64 = 3.0;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Which part a re-executed copy of this benchmark plays: the responders of
/// the baselines run in their own process, as the agent does, so every row
/// pays the same cross-process wake-up.
const ROLE_VAR: &str = "FERRY_BENCH_ROLE";
const URL_VAR: &str = "FERRY_BENCH_NATS_URL";
/// The public key the signature-checking responder trusts.
const TRUSTED_VAR: &str = "FERRY_BENCH_TRUSTED";

/// Answers `bench.echo` requests: the other side of raw request-reply.
async fn echo_responder(url: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let mut requests = client.subscribe("bench.echo").await.unwrap();
    client.flush().await.unwrap();
    println!("ready");
    while let Some(message) = requests.next().await {
        if let Some(reply) = message.reply {
            let _ = client.publish(reply, message.payload).await;
        }
    }
}

/// Reads `bench.js.>` through a durable pull consumer and answers each message
/// with a core publish, then acknowledges it, as the agent does. With
/// `trusted` it first checks each message as the agent checks a command
/// (`decode_verified`: shape, signature, expiry); the bench sends only good
/// ones, so a refusal stops the run.
async fn jetstream_responder(url: &str, trusted: Option<TrustedKeys>) {
    use async_nats::jetstream::{self, consumer};
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.js.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "bench",
            consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    client.flush().await.unwrap();
    println!("ready");
    while let Some(Ok(message)) = messages.next().await {
        if let Some(trusted) = &trusted {
            let now = time::OffsetDateTime::now_utc();
            if let Err(refusal) =
                Envelope::<Command>::decode_verified(&message.payload, trusted, now)
            {
                panic!("the bench's own command was refused: {refusal}");
            }
        }
        let _ = client.publish("bench.reply", message.payload.clone()).await;
        let _ = message.ack().await;
    }
}

/// This benchmark's own executable, re-run as `role`, killed on drop.
struct Responder(std::process::Child);

impl Responder {
    async fn start(nats: &NatsServer, role: &str, trusted: Option<&str>) -> Responder {
        use std::io::BufRead;
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        if let Some(key) = trusted {
            command.env(TRUSTED_VAR, key);
        }
        let mut child = command
            .env(ROLE_VAR, role)
            .env(URL_VAR, nats.url())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        });
        let line = tokio::time::timeout(WAIT, line)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(line.trim(), "ready", "{role} responder did not start");
        Responder(child)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn raw_request_reply(client: &async_nats::Client) -> Vec<Duration> {
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

/// The floor under ferry's path, without ferry: a message stored by
/// JetStream, delivered to a durable pull consumer in another process, which
/// answers with a core publish, as the agent does. Shown so the cost of
/// JetStream and the cost of the agent can be told apart. With `signed`, the
/// message is a signed command the responder checks before it answers: the
/// floor plus the one check the agent cannot skip.
async fn jetstream_round_trip(nats: &NatsServer, signed: Option<&SigningKey>) -> Vec<Duration> {
    let public_key = signed.map(SigningKey::public_key);
    let _responder = Responder::start(nats, "jetstream", public_key.as_deref()).await;
    let client = nats.client().await;
    let mut replies = client.subscribe("bench.reply").await.unwrap();
    client.flush().await.unwrap();
    let payload = match signed {
        Some(key) => bytes::Bytes::from(signed_command(key, 0).1),
        None => bytes::Bytes::from(vec![b'x'; 512]),
    };
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let started = Instant::now();
        client.publish("bench.js.x", payload.clone()).await.unwrap();
        tokio::time::timeout(WAIT, replies.next())
            .await
            .unwrap()
            .unwrap();
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    samples
}

/// The `i`th command of a run (a scale to 1, 2 or 3 replicas of `web` in
/// dev), signed by `key`: its id and its bytes on the wire.
fn signed_command(key: &SigningKey, i: usize) -> (uuid::Uuid, Vec<u8>) {
    let command = Command {
        environment: EnvName::new("dev").unwrap(),
        service: ServiceName::new("web").unwrap(),
        actor: Some("bench".into()),
        hosts: Vec::new(),
        action: Action::Scale {
            replicas: 1 + (i % 3) as u32,
        },
    };
    let envelope = Envelope::new("/ferry/controller", command)
        .expiring_in(Duration::from_secs(600))
        .sign(key)
        .unwrap();
    (envelope.id, envelope.to_bytes().unwrap())
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
    let js = async_nats::jetstream::new(client.clone());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(
            ferry_protocol::streams::agent_consumer(
                &EnvName::new("dev").unwrap(),
                &ferry_protocol::HostName::new("dev-1").unwrap(),
            ),
            "FERRY_COMMANDS",
        )
        .await
        .unwrap();
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        // Signing is the controller's cost, not the path measured here.
        let (id, bytes) = signed_command(key, i);
        let bytes = bytes::Bytes::from(bytes);
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
        // Let the command finish, and its acknowledgement land, so each
        // sample measures a command reaching an idle agent (as the raw
        // baseline measures an idle responder).
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
        loop {
            let info = consumer.info().await.unwrap();
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                break;
            }
        }
    }
    samples
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(ROLE_VAR).ok().as_deref() {
        Some("echo") => runtime.block_on(echo_responder(&std::env::var(URL_VAR).unwrap())),
        Some("jetstream") => {
            let trusted = std::env::var(TRUSTED_VAR)
                .ok()
                .map(|key| TrustedKeys::new([key]).unwrap());
            runtime.block_on(jetstream_responder(
                &std::env::var(URL_VAR).unwrap(),
                trusted,
            ))
        }
        Some(other) => panic!("unknown {ROLE_VAR} {other:?}"),
        None => {
            let mut bars = bars_or_exit("command_latency");
            runtime.block_on(measure(&mut bars));
            drop(runtime);
            bars.finish()
        }
    }
}

async fn measure(bars: &mut Bars) {
    // Only nats-server, the agent and the responders: the path measured is
    // theirs, and a controller folding every event into KV would load the
    // same two cores. The agent runs as its own process, as it does in
    // production, and so does every baseline's responder: each row pays the
    // same hop into another process.
    let system = System::without_controller();
    let _agent = AgentProcess::start(
        &system,
        &format!(
            "[services.web]\ncommand = [\"{{artifact}}\"]\nport = {}\n",
            free_port()
        ),
    )
    .await;

    let mut raw = {
        let _responder = Responder::start(&system.nats, "echo", None).await;
        raw_request_reply(&system.nats.client().await).await
    };
    let mut raw_in_process = {
        let responder = system.nats.client().await;
        let mut requests = responder.subscribe("bench.echo").await.unwrap();
        let task = tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                if let Some(reply) = message.reply {
                    let _ = responder.publish(reply, message.payload).await;
                }
            }
        });
        let samples = raw_request_reply(&system.nats.client().await).await;
        task.abort();
        samples
    };
    let mut floor = jetstream_round_trip(&system.nats, None).await;
    let mut floor_signed = jetstream_round_trip(&system.nats, Some(&system.controller_key)).await;
    let mut ferry = command_to_accepted(&system.nats, &system.controller_key).await;
    raw.sort();
    raw_in_process.sort();
    floor.sort();
    floor_signed.sort();
    ferry.sort();
    let row = |name: &str, samples: &[Duration]| {
        println!(
            "{name:<44} {:>9.3} {:>9.3}",
            ms(percentile(samples, 0.50)),
            ms(percentile(samples, 0.99))
        );
    };
    println!("command_latency: {SAMPLES} samples each after {WARMUP} warm-up, same nats-server, same run");
    println!("{:<44} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    row("raw NATS request-reply (baseline)", &raw);
    row(
        "  same, responder inside the measuring process",
        &raw_in_process,
    );
    row("JetStream store, deliver, reply (floor)", &floor);
    row("  same, a signed command checked first", &floor_signed);
    row("ferry command -> accepted event", &ferry);
    let ratio = |q: f64| percentile(&ferry, q).as_secs_f64() / percentile(&raw, q).as_secs_f64();
    println!(
        "{:<44} {:>9.2} {:>9.2}",
        "ratio (ferry / raw request-reply)",
        ratio(0.50),
        ratio(0.99)
    );
    bars.at_most("p50 ratio, ferry / raw request-reply", ratio(0.50), BAR);
}
