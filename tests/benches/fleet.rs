//! Fleet fan-out: N `ferry-agent` processes of one environment (hosts
//! `h-0`..`h-<N-1>`, each reading the environment's commands through its own
//! durable consumer), one signed command to the environment, and the time
//! until all N agents reported `accepted` and all N `succeeded`; beside the
//! JetStream fan-out floor measured on the same nats-server in the same run
//! (N durable pull consumers on the same filter, pulled by tasks of one
//! other process over a few connections, each answering the one message
//! with a core publish), interleaved with the agents' rounds. Each answer is
//! timed twice: when its answerer made it (its own stamp: the envelope's
//! `time`, the floor's reply) and when this benchmark read it, which on a
//! machine shared by N agents waits its turn for a core too. The CPU each
//! round cost the agents, nats-server and the floor's process is read from
//! /proc. Then the real controller folds the N agents' heartbeats: events
//! folded per second, its CPU, and its RSS over the window (these machines
//! are noisy; ratios are what compare). Run with
//! `cargo bench -p ferry-e2e --bench fleet`; `FERRY_FLEET_AGENTS=N`
//! (default 500), `FERRY_FLEET_ROUNDS` (measured rounds, default 5),
//! `FERRY_FLEET_HEARTBEAT` (the agents' heartbeat and metrics interval,
//! default 5s), `FERRY_FLEET_INGEST_SECS` (the controller's window, default
//! 30), `FERRY_FLEET_FLOOR_CONNECTIONS` (default 4).

// A benchmark that cannot set up must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_e2e::bars::{bars_or_exit, Bars};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use ferry_e2e::events::subscribe_heartbeats;
use ferry_e2e::fleet_bench::{
    anon_bytes, child_named, cpu_seconds, ensure_open_files, host_name, until_parent_exits,
    AgentFleet, ReExec, RssSampler,
};
use ferry_e2e::footprint::{mib, rss_bytes};
use ferry_e2e::{bin, free_port, ControllerProcess, System, WAIT};
use ferry_protocol::command::{Action, Command};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::subject::EventKind;
use ferry_protocol::{streams, subject, EnvName, Envelope, ServiceName, SigningKey};
use futures::StreamExt;
use time::OffsetDateTime;

const ENV: &str = "production";
const SERVICE: &str = "web";
/// Agents started together, each batch heard from before the next starts.
const BATCH: usize = 50;
/// The bar: all accepted within 3 times the floor's all answered.
const RATIO_BAR: f64 = 3.0;
const RSS_GROWTH_BAR: f64 = 0.10;
const RSS_EVERY: Duration = Duration::from_millis(500);

/// Which part a re-executed copy of this benchmark plays (the floor's
/// consumers run in a process of their own, as the agents do).
const ROLE_VAR: &str = "FERRY_FLEET_ROLE";
const URL_VAR: &str = "FERRY_FLEET_NATS_URL";
const AGENTS_VAR: &str = "FERRY_FLEET_AGENTS";
const CONNECTIONS_VAR: &str = "FERRY_FLEET_FLOOR_CONNECTIONS";

/// The floor's stream, the subject its one message goes to, the filter of
/// its consumers (the agents': one environment's subjects) and the subject
/// of the answers.
const FLOOR_STREAM: &str = "FLEET_FLOOR";
const FLOOR_SUBJECTS: &str = "fleetfloor.>";
const FLOOR_FILTER: &str = "fleetfloor.production.>";
const FLOOR_SUBJECT: &str = "fleetfloor.production.web";
const FLOOR_REPLY: &str = "fleetfloor.reply";
/// As the agent's intake pulls (agent/src/intake.rs).
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
const ACK_WAIT: Duration = Duration::from_secs(15);
const MAX_ACK_PENDING: i64 = 256;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(ROLE_VAR).ok().as_deref() {
        Some("floor") => runtime.block_on(floor_responder()),
        Some(other) => panic!("unknown {ROLE_VAR} {other:?}"),
        None => {
            let mut bars = bars_or_exit("fleet");
            runtime.block_on(measure(&mut bars));
            drop(runtime);
            bars.finish()
        }
    }
}

/// The floor's consumers: N durable pull consumers on [`FLOOR_FILTER`],
/// spread over a few connections, each pulled by its own task as the agent
/// pulls, answering each message with a core publish and then acking it.
async fn floor_responder() {
    let url = std::env::var(URL_VAR).unwrap();
    let count: usize = setting(AGENTS_VAR, 0);
    let connections: usize = setting(CONNECTIONS_VAR, 4).max(1);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(async_nats::connect(&url).await.unwrap());
    }
    jetstream::new(clients[0].clone())
        .get_or_create_stream(jetstream::stream::Config {
            name: FLOOR_STREAM.into(),
            subjects: vec![FLOOR_SUBJECTS.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // Each consumer is created and pulled on its share of the connections.
    let pulls: Vec<(usize, async_nats::Client, consumer::pull::Stream)> =
        futures::stream::iter(0..count)
            .map(|index| {
                let client = clients[index % connections].clone();
                async move {
                    let name = format!("fleet-floor-{index}");
                    let consumer: consumer::PullConsumer = jetstream::new(client.clone())
                        .create_consumer_on_stream(
                            consumer::pull::Config {
                                durable_name: Some(name),
                                filter_subject: FLOOR_FILTER.into(),
                                ack_policy: consumer::AckPolicy::Explicit,
                                ack_wait: ACK_WAIT,
                                max_ack_pending: MAX_ACK_PENDING,
                                deliver_policy: consumer::DeliverPolicy::All,
                                ..Default::default()
                            },
                            FLOOR_STREAM,
                        )
                        .await
                        .unwrap();
                    let messages = consumer
                        .stream()
                        .expires(PULL_EXPIRES)
                        .heartbeat(PULL_HEARTBEAT)
                        .messages()
                        .await
                        .unwrap();
                    (index, client, messages)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    for (index, client, messages) in pulls {
        tokio::spawn(answer(index, messages, client));
    }
    for client in &clients {
        client.flush().await.unwrap();
    }
    println!("ready");
    until_parent_exits().await;
}

/// Answers each message `index`'s consumer receives with
/// `<index> <round> <when>`, `when` the time it answers (Unix nanoseconds).
async fn answer(index: usize, mut messages: consumer::pull::Stream, client: async_nats::Client) {
    while let Some(next) = messages.next().await {
        let Ok(message) = next else { continue };
        let round = String::from_utf8_lossy(&message.payload)
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        let made = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let _ = client
            .publish(FLOOR_REPLY, format!("{index} {round} {made}").into())
            .await;
        let _ = message.ack().await;
    }
}

/// Which time of an answer: when its answerer made it (the time it
/// stamped on it: the envelope's `time` of an agent's event, the floor's
/// own stamp), or when the benchmark read it. Both count from the publish,
/// on the same machine's clock. On two cores shared by N agents, the
/// benchmark's reading waits its turn too, so the two differ.
#[derive(Clone, Copy)]
enum View {
    Made,
    Seen,
}

/// The N answers to one message, by time from its publish, sorted.
struct Answers {
    made: Vec<Duration>,
    seen: Vec<Duration>,
}

impl Answers {
    /// From `(made, seen)` pairs.
    fn new(pairs: impl Iterator<Item = (Duration, Duration)>) -> Answers {
        let (mut made, mut seen): (Vec<_>, Vec<_>) = pairs.unzip();
        made.sort();
        seen.sort();
        Answers { made, seen }
    }

    fn times(&self, view: View) -> &[Duration] {
        match view {
            View::Made => &self.made,
            View::Seen => &self.seen,
        }
    }

    /// When the last one was made or read.
    fn all(&self, view: View) -> Duration {
        self.times(view).last().copied().unwrap_or_default()
    }

    fn median(&self, view: View) -> Duration {
        let times = self.times(view);
        times.get(times.len() / 2).copied().unwrap_or_default()
    }

    fn first(&self, view: View) -> Duration {
        self.times(view).first().copied().unwrap_or_default()
    }
}

/// The time from `published` (Unix nanoseconds) to `made`; zero if the
/// clock says it was made before.
fn since(published: i128, made: i128) -> Duration {
    Duration::from_nanos(u64::try_from(made - published).unwrap_or(0))
}

/// One message to the floor's consumers; waits for the N answers.
async fn floor_round(
    js: &jetstream::Context,
    replies: &mut async_nats::Subscriber,
    round: usize,
    count: usize,
    size: usize,
) -> Answers {
    let mut payload = format!("{round} ");
    payload.extend(std::iter::repeat_n('x', size.saturating_sub(payload.len())));
    let round = round.to_string();
    let mut answered: HashMap<usize, (Duration, Duration)> = HashMap::with_capacity(count);
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    let published = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let started = Instant::now();
    let ack = js.publish(FLOOR_SUBJECT, payload.into()).await.unwrap();
    while answered.len() < count {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await else {
            panic!(
                "the floor: {} of {count} consumers answered round {round} within {:?}",
                answered.len(),
                2 * WAIT
            );
        };
        let seen = started.elapsed();
        let text = String::from_utf8_lossy(&message.payload);
        let mut words = text.split(' ');
        let (Some(index), Some(of), Some(made)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if let (true, Ok(index), Ok(made)) = (of == round, index.parse(), made.parse()) {
            answered
                .entry(index)
                .or_insert((since(published, made), seen));
        }
    }
    ack.await.unwrap();
    Answers::new(answered.into_values())
}

/// What N agents reported of one command.
struct CommandRound {
    accepted: Answers,
    succeeded: Answers,
    /// Hosts whose outcome was not `succeeded`, with it.
    failed: Vec<(String, String)>,
}

/// The command each round sends: a scale of a service nothing was deployed
/// to yet, which the agent carries out at once (it records the replica
/// count for the next deploy): fan-out, not replicas starting, is measured.
fn signed_command(key: &SigningKey, replicas: u32) -> (uuid::Uuid, bytes::Bytes) {
    let command = Command {
        environment: EnvName::new(ENV).unwrap(),
        service: ServiceName::new(SERVICE).unwrap(),
        actor: Some("bench".into()),
        hosts: Vec::new(),
        action: Action::Scale { replicas },
    };
    let envelope = Envelope::new("/ferry/controller", command)
        .expiring_in(Duration::from_secs(600))
        .sign(key)
        .unwrap();
    (envelope.id, envelope.to_bytes().unwrap().into())
}

/// The service's `accepted` and outcome events, one subscription each,
/// confirmed with the server.
async fn subscribe_command_events(
    client: &async_nats::Client,
) -> (async_nats::Subscriber, async_nats::Subscriber) {
    let env = EnvName::new(ENV).unwrap();
    let service = ServiceName::new(SERVICE).unwrap();
    let accepted = client
        .subscribe(subject::event(&env, &service, EventKind::Accepted))
        .await
        .unwrap();
    let outcomes = client
        .subscribe(subject::event(&env, &service, EventKind::Outcome))
        .await
        .unwrap();
    client.flush().await.unwrap();
    (accepted, outcomes)
}

/// Publishes one signed command to the environment and waits until every
/// one of `count` hosts reported its `accepted` and its outcome. Messages
/// are timed as they arrive and decoded once enough of them are in.
async fn command_round(
    js: &jetstream::Context,
    events: &mut (async_nats::Subscriber, async_nats::Subscriber),
    key: &SigningKey,
    count: usize,
    replicas: u32,
) -> CommandRound {
    let (id, payload) = signed_command(key, replicas);
    let subject = subject::command(
        &EnvName::new(ENV).unwrap(),
        &ServiceName::new(SERVICE).unwrap(),
    );
    let (accepted_events, outcome_events) = events;
    let mut arrived: [Vec<(Duration, bytes::Bytes)>; 2] = [Vec::new(), Vec::new()];
    let mut accepted: HashMap<String, (Duration, Duration)> = HashMap::with_capacity(count);
    let mut succeeded: HashMap<String, (Duration, Duration)> = HashMap::with_capacity(count);
    let mut failed: HashMap<String, String> = HashMap::new();
    let mut decoding = false;
    let deadline = tokio::time::Instant::now() + 4 * WAIT;
    let published = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let started = Instant::now();
    let ack = js.publish(subject, payload).await.unwrap();
    loop {
        let next = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                Some(m) = accepted_events.next() => (0, m),
                Some(m) = outcome_events.next() => (1, m),
            }
        })
        .await;
        let Ok((kind, message)) = next else {
            panic!(
                "command {id}: within {:?}, {} accepted and {} outcome events not yet decoded; \
                 of {count} hosts {} accepted, {} succeeded, {} failed",
                4 * WAIT,
                arrived[0].len(),
                arrived[1].len(),
                accepted.len(),
                succeeded.len(),
                failed.len(),
            );
        };
        arrived[kind].push((started.elapsed(), message.payload));
        if !decoding && (arrived[0].len() < count || arrived[1].len() < count) {
            continue;
        }
        decoding = true;
        for (seen, payload) in arrived.iter_mut().flat_map(|a| a.drain(..)) {
            let Ok(envelope) = Envelope::<ServiceEvent>::decode(&payload) else {
                continue;
            };
            let times = (since(published, envelope.time.unix_timestamp_nanos()), seen);
            let event = envelope.data;
            if event.command_id != Some(id) {
                continue;
            }
            let host = event.host.map(|h| h.to_string()).unwrap_or_default();
            match &event.body {
                EventBody::Accepted { .. } => {
                    accepted.entry(host).or_insert(times);
                }
                EventBody::Succeeded { .. } => {
                    succeeded.entry(host).or_insert(times);
                }
                body => {
                    failed.entry(host).or_insert_with(|| format!("{body:?}"));
                }
            }
        }
        if accepted.len() >= count && succeeded.len() + failed.len() >= count {
            break;
        }
    }
    ack.await.unwrap();
    CommandRound {
        accepted: Answers::new(accepted.into_values()),
        succeeded: Answers::new(succeeded.into_values()),
        failed: failed.into_iter().collect(),
    }
}

/// Waits until every agent's consumer has acknowledged everything (each
/// agent acks a command once its outcome is stored), so the next round
/// starts with idle agents.
async fn agents_idle(js: &jetstream::Context, count: usize) {
    let env = EnvName::new(ENV).unwrap();
    let stream = js.get_stream(streams::commands().name).await.unwrap();
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    loop {
        let busy = futures::stream::iter(0..count)
            .map(|index| {
                let stream = stream.clone();
                let name = streams::agent_consumer(
                    &env,
                    &ferry_protocol::HostName::new(host_name(index)).unwrap(),
                );
                async move {
                    let info = stream.consumer_info(&name).await.unwrap();
                    info.num_ack_pending + usize::from(info.num_pending > 0)
                }
            })
            .buffer_unordered(16)
            .fold(0, |busy, n| async move { busy + n })
            .await;
        if busy == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{busy} commands still unacknowledged by the agents"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agents' memory now: resident (median and max per agent) and
/// anonymous (median per agent, and all of them together: what N agents
/// cost beyond their shared code pages), bytes.
struct AgentsMemory {
    rss_median: u64,
    rss_max: u64,
    anon_median: u64,
    anon_total: u64,
}

impl AgentsMemory {
    fn of(pids: &[u32]) -> AgentsMemory {
        let median = |mut v: Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let rss: Vec<u64> = pids.iter().map(|&pid| rss_bytes(pid)).collect();
        let anon: Vec<u64> = pids.iter().map(|&pid| anon_bytes(pid)).collect();
        AgentsMemory {
            rss_max: rss.iter().copied().max().unwrap_or(0),
            rss_median: median(rss),
            anon_total: anon.iter().sum(),
            anon_median: median(anon),
        }
    }

    fn describe(&self) -> String {
        format!(
            "RSS {:.1} MiB (max {:.1}), of which anonymous {:.1} MiB; all agents' anonymous \
             memory {:.0} MiB",
            mib(self.rss_median),
            mib(self.rss_max),
            mib(self.anon_median),
            mib(self.anon_total)
        )
    }
}

/// The CPU time of all of `pids` so far, seconds.
fn agents_cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "OVER"
    }
}

/// Prints one view's table (per round: the floor's all-answered time,
/// the agents' all-accepted and all-succeeded times, p50 in brackets, and
/// their ratios to the mean of the floor rounds before and after) and its
/// medians over the counted rounds; returns the all-accepted ratio.
fn report(
    view: View,
    what: &str,
    count: usize,
    floors: &[Answers],
    commands: &[CommandRound],
) -> f64 {
    let cell = |a: &Answers| format!("{:.1} ({:.1})", ms(a.all(view)), ms(a.median(view)));
    println!();
    println!("times from publish to the last of {count} answers (p50 in brackets), ms, as {what}:");
    println!(
        "{:<10} {:>22} {:>22} {:>22} {:>10} {:>10}",
        "round",
        "floor: all answered",
        "agents: all accepted",
        "agents: all succeeded",
        "acc/floor",
        "succ/floor"
    );
    for (round, command) in commands.iter().enumerate() {
        let around = (floors[round].all(view) + floors[round + 1].all(view)) / 2;
        println!(
            "{:<10} {:>22} {:>22} {:>22} {:>10.2} {:>10.2}",
            if round == 0 {
                "0 (warm)".to_owned()
            } else {
                round.to_string()
            },
            cell(&floors[round]),
            cell(&command.accepted),
            cell(&command.succeeded),
            command.accepted.all(view).as_secs_f64() / around.as_secs_f64(),
            command.succeeded.all(view).as_secs_f64() / around.as_secs_f64(),
        );
    }
    println!("{:<10} {:>22}", "(last)", cell(&floors[commands.len()]));
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let counted = &commands[1..];
    let floor_all = median(floors[1..].iter().map(|f| f.all(view)).collect());
    let accepted_all = median(counted.iter().map(|c| c.accepted.all(view)).collect());
    let succeeded_all = median(counted.iter().map(|c| c.succeeded.all(view)).collect());
    let first_accepted = median(counted.iter().map(|c| c.accepted.first(view)).collect());
    let first_answer = median(floors[1..].iter().map(|f| f.first(view)).collect());
    let ratio = accepted_all.as_secs_f64() / floor_all.as_secs_f64();
    println!(
        "medians of rounds 1..{}: floor all answered {:.1} ms (first {:.1}); agents all accepted \
         {:.1} ms (first {:.1}), all succeeded {:.1} ms",
        counted.len(),
        ms(floor_all),
        ms(first_answer),
        ms(accepted_all),
        ms(first_accepted),
        ms(succeeded_all)
    );
    println!(
        "ratio all accepted / floor {ratio:.2} (bar: at most {RATIO_BAR}): {}; all succeeded / \
         floor {:.2}",
        verdict(ratio <= RATIO_BAR),
        succeeded_all.as_secs_f64() / floor_all.as_secs_f64()
    );
    ratio
}

async fn measure(bars: &mut Bars) {
    let count: usize = setting(AGENTS_VAR, 500).max(1);
    let rounds: usize = setting("FERRY_FLEET_ROUNDS", 5).max(1);
    let heartbeat: String = setting("FERRY_FLEET_HEARTBEAT", "5s".to_owned());
    let ingest = Duration::from_secs(setting("FERRY_FLEET_INGEST_SECS", 30));
    // Built (or found up to date) before anything is timed.
    bin("ferry-agent");
    // nats-server holds a connection per agent, the floor's, and its stores.
    ensure_open_files(2 * count as u64 + 1024);
    let system = System::without_controller();
    let nats_pid = child_named("nats-server");

    let started = Instant::now();
    let fleet = AgentFleet::start(
        &system,
        ENV,
        count,
        BATCH,
        &format!(
            "heartbeat_interval = \"{heartbeat}\"\nmetrics_interval = \"{heartbeat}\"\n\n\
             [services.{SERVICE}]\ncommand = [\"{{artifact}}\"]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .await;
    let start_time = started.elapsed();
    let pids = fleet.pids();
    let client = system.nats.client().await;
    let js = jetstream::new(client.clone());
    let consumers = js
        .get_stream(streams::commands().name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .consumer_count;
    assert_eq!(consumers, count, "one command consumer per agent");
    let idle_memory = AgentsMemory::of(&pids);

    let floor = ReExec::start(
        ROLE_VAR,
        "floor",
        &[
            (URL_VAR, system.nats.url()),
            (AGENTS_VAR, count.to_string()),
        ],
        4 * WAIT,
    )
    .await;
    let mut replies = client.subscribe(FLOOR_REPLY).await.unwrap();
    let mut events = subscribe_command_events(&client).await;
    let size = signed_command(&system.controller_key, 1).1.len();

    println!(
        "fleet: {count} ferry-agent processes in {ENV} (hosts h-0..h-{}), heartbeat and metrics \
         every {heartbeat}, started and heard from in {:.1} s; the floor: {count} durable pull \
         consumers on the agents' filter in one process over {} connections; same nats-server, \
         same run",
        count - 1,
        start_time.as_secs_f64(),
        setting(CONNECTIONS_VAR, 4)
    );
    // Round 0 warms both paths up (the agents' first command runs code not
    // yet paged in) and is shown but not counted.
    let mut floors = vec![floor_round(&js, &mut replies, 0, count, size).await];
    let mut commands = Vec::new();
    let mut failures = 0;
    // CPU seconds each round cost: the agents, nats-server and the floor's process.
    let nats_cpu = || nats_pid.map(cpu_seconds).unwrap_or(0.0);
    let mut costs = Vec::new();
    for round in 0..=rounds {
        let (agents_before, nats_before) = (agents_cpu(&pids), nats_cpu());
        let command = command_round(
            &js,
            &mut events,
            &system.controller_key,
            count,
            1 + (round % 2) as u32,
        )
        .await;
        let nats_command = nats_cpu() - nats_before;
        agents_idle(&js, count).await;
        let agents_command = agents_cpu(&pids) - agents_before;
        let (floor_before, nats_before) = (cpu_seconds(floor.pid()), nats_cpu());
        floors.push(floor_round(&js, &mut replies, round + 1, count, size).await);
        costs.push([
            agents_command,
            nats_command,
            cpu_seconds(floor.pid()) - floor_before,
            nats_cpu() - nats_before,
        ]);
        for (host, outcome) in command.failed.iter().take(5) {
            eprintln!("fleet: {host} did not succeed: {outcome}");
        }
        failures += command.failed.len();
        commands.push(command);
    }
    let mut verdicts = Vec::new();
    for (view, what) in [
        (View::Made, "made (stamped by the answering process)"),
        (View::Seen, "seen (read by the benchmark)"),
    ] {
        let ratio = report(view, what, count, &floors, &commands);
        verdicts.push(bars.at_most(
            &format!("all accepted / floor's all answered, as {what}"),
            ratio,
            RATIO_BAR,
        ));
    }
    let cost = |i: usize| {
        let mut v: Vec<f64> = costs[1..].iter().map(|c| c[i] * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "CPU per round, medians of rounds 1..{rounds}: a command costs the {count} agents {:.0} ms \
         ({:.0} us each) and nats-server {:.0} ms; a floor message costs its process {:.0} ms and \
         nats-server {:.0} ms",
        cost(0),
        cost(0) * 1000.0 / count as f64,
        cost(1),
        cost(2),
        cost(3)
    );
    println!(
        "bar (all accepted within {RATIO_BAR} times the floor's all answered): {} as made, {} as seen",
        verdict(verdicts[0]),
        verdict(verdicts[1])
    );
    println!("outcomes not succeeded: {failures}");
    bars.at_most("outcomes not succeeded", failures as f64, 0.0);
    drop(floor);
    let busy_memory = AgentsMemory::of(&pids);
    println!(
        "agents' memory, median per agent: idle {}; after the commands {}",
        idle_memory.describe(),
        busy_memory.describe()
    );

    controller_ingest(&system, &js, &fleet, nats_pid, ingest, bars).await;
    drop(fleet);
}

/// The real controller on the same server while the fleet heartbeats: once
/// it caught up with the events stored before it started, for `window`:
/// events folded per second (its events consumer's acknowledgements),
/// heartbeats published per second, its CPU and its RSS; the agents' and
/// nats-server's CPU beside it.
async fn controller_ingest(
    system: &System,
    js: &jetstream::Context,
    fleet: &AgentFleet,
    nats_pid: Option<u32>,
    window: Duration,
    bars: &mut Bars,
) {
    let started = Instant::now();
    let controller = ControllerProcess::start(system, &[ENV.to_owned()], free_port()).await;
    let pid = controller.pid();
    let rss_at_start = rss_bytes(pid);
    let mut consumer: consumer::PullConsumer = js
        .get_consumer_from_stream(ferry_controller::events::CONSUMER, streams::events().name)
        .await
        .unwrap();
    let deadline = Instant::now() + 10 * WAIT;
    let backlog = loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break info.ack_floor.consumer_sequence;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not catch up with the stored events: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let caught_up = started.elapsed();

    let client = system.nats.client().await;
    let mut heartbeats = subscribe_heartbeats(&client, ENV).await;
    let sampler = RssSampler::start(pid, RSS_EVERY);
    let pids = fleet.pids();
    let nats_cpu = || nats_pid.map(cpu_seconds).unwrap_or(0.0);
    let folded_before = consumer.info().await.unwrap().ack_floor.consumer_sequence;
    let (cpu_before, agents_before, nats_before) =
        (cpu_seconds(pid), agents_cpu(&pids), nats_cpu());
    let began = Instant::now();
    let mut published = 0usize;
    let end = tokio::time::Instant::now() + window;
    while let Ok(Some(_)) = tokio::time::timeout_at(end, heartbeats.next()).await {
        published += 1;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let (cpu_after, agents_after, nats_after) = (cpu_seconds(pid), agents_cpu(&pids), nats_cpu());
    let info = consumer.info().await.unwrap();
    let rss = sampler.stop().await;
    let folded = info.ack_floor.consumer_sequence - folded_before;
    let hosts = js
        .get_key_value(streams::AGENTS_BUCKET)
        .await
        .unwrap()
        .keys()
        .await
        .unwrap()
        .filter_map(|k| async move { k.ok() })
        .filter(|k| futures::future::ready(k.starts_with(ENV)))
        .count()
        .await;
    let (first, last) = (rss[0], rss[rss.len() - 1]);
    let max = rss.iter().copied().max().unwrap_or(0);
    let growth = last as f64 / first as f64 - 1.0;
    let percent = |before: f64, after: f64| (after - before) / elapsed * 100.0;

    println!(
        "controller: started and caught up with {backlog} stored events in {:.1} s (RSS {:.1} MiB \
         at start); then over {elapsed:.0} s of {} agents heartbeating:",
        caught_up.as_secs_f64(),
        mib(rss_at_start),
        fleet.len()
    );
    println!(
        "  folded {:.0} events/s ({folded} in all, {} still pending at the end); heartbeats \
         published {:.0}/s; agents bucket keys for {ENV}: {hosts}",
        folded as f64 / elapsed,
        info.num_pending + info.num_ack_pending as u64,
        published as f64 / elapsed
    );
    println!(
        "  CPU, % of one core: controller {:.1}; all {} agents {:.1}; nats-server {}",
        percent(cpu_before, cpu_after),
        fleet.len(),
        percent(agents_before, agents_after),
        match nats_pid {
            Some(_) => format!("{:.1}", percent(nats_before, nats_after)),
            None => "(not found)".to_owned(),
        }
    );
    println!(
        "  controller RSS ({} samples): first {:.1} MiB, max {:.1} MiB, last {:.1} MiB ({:+.1}%; \
         bar: within 10%): {}",
        rss.len(),
        mib(first),
        mib(max),
        mib(last),
        growth * 100.0,
        verdict(bars.at_most(
            "controller RSS growth, fraction",
            growth.abs(),
            RSS_GROWTH_BAR
        ))
    );
    drop(controller);
}
