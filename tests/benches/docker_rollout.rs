//! Docker rollout: from publishing a signed deploy of 3 replicas of
//! `ferry-sample:1.0.0` to the agent's `succeeded` event, beside the same 3
//! containers started by hand with the docker CLI and health-polled by hand,
//! interleaved in the same run (these machines are noisy; ratios are what
//! compare). Needs a Docker engine and `scripts/build-sample-image`. Run with
//! `cargo bench -p ferry-e2e --bench docker_rollout`.

// A benchmark that cannot set up must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_e2e::{free_port, System, WAIT};
use ferry_protocol::command::{Action, Command, ReleaseSpec};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::{EnvName, Envelope, ServiceName, SigningKey, Version};
use futures::StreamExt;

/// Rounds of (baseline, ferry), after one untimed warm-up round.
const ROUNDS: usize = 7;
const REPLICAS: usize = 3;
/// The health interval of both: ferry's bench config and the hand-made poll.
const INTERVAL: Duration = Duration::from_millis(50);
const IMAGE: &str = "ferry-sample";
const ENV: &str = "dev";
/// A service name of its own, so the cleanup's label filter matches only
/// what this bench's agent created.
const SERVICE: &str = "rollout-bench";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

async fn docker_async(args: Vec<String>) -> std::process::Output {
    let out = tokio::process::Command::new("docker")
        .args(&args)
        .output()
        .await
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes the bench's containers when dropped, on success and on panic: the
/// ones ferry's agent created for this bench's service (`io.ferry.managed`
/// and its environment and service labels) and the baseline's own.
struct Cleanup {
    baseline_prefix: String,
}

impl Cleanup {
    fn sweep(&self) {
        let filters = [
            vec![
                "--filter".to_owned(),
                "label=io.ferry.managed=true".to_owned(),
                "--filter".to_owned(),
                format!("label=io.ferry.environment={ENV}"),
                "--filter".to_owned(),
                format!("label=io.ferry.service={SERVICE}"),
            ],
            vec![
                "--filter".to_owned(),
                format!("name=^{}", self.baseline_prefix),
            ],
        ];
        for filter in filters {
            let mut args = vec!["ps", "-aq"];
            args.extend(filter.iter().map(String::as_str));
            let out = docker(&args);
            let ids: Vec<&str> = std::str::from_utf8(&out.stdout)
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if !ids.is_empty() {
                let mut rm = vec!["rm", "-f"];
                rm.extend(ids);
                let _ = docker(&rm);
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// Polls `ports`' `/health` every [`INTERVAL`] until each has answered 200
/// once, as ferry's health gate does.
async fn wait_all_healthy(client: &reqwest::Client, ports: &[u16]) {
    let deadline = Instant::now() + WAIT;
    let mut healthy = vec![false; ports.len()];
    loop {
        let pending: Vec<usize> = (0..ports.len()).filter(|i| !healthy[*i]).collect();
        let results = futures::future::join_all(pending.iter().map(|i| {
            client
                .get(format!("http://127.0.0.1:{}/health", ports[*i]))
                .send()
        }))
        .await;
        for (i, result) in pending.into_iter().zip(results) {
            if matches!(result, Ok(r) if r.status().as_u16() == 200) {
                healthy[i] = true;
            }
        }
        if healthy.iter().all(|h| *h) {
            return;
        }
        assert!(Instant::now() < deadline, "baseline containers not healthy");
        tokio::time::sleep(INTERVAL).await;
    }
}

/// The baseline: `docker run -d` of 3 containers one after another, health
/// polled until all answer 200; the containers are removed afterwards,
/// outside the measured time.
async fn baseline(client: &reqwest::Client, prefix: &str, round: usize) -> Duration {
    let names: Vec<String> = (0..REPLICAS)
        .map(|i| format!("{prefix}{round}-{i}"))
        .collect();
    let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
    let started = Instant::now();
    for (name, port) in names.iter().zip(&ports) {
        docker_async(
            [
                "run",
                "-d",
                "--name",
                name,
                "-p",
                &format!("127.0.0.1:{port}:8080"),
                "-e",
                "SAMPLE_BIND=0.0.0.0",
                "-e",
                "PORT=8080",
                &format!("{IMAGE}:1.0.0"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        )
        .await;
    }
    wait_all_healthy(client, &ports).await;
    let elapsed = started.elapsed();
    let mut rm = vec!["rm".to_owned(), "-f".to_owned()];
    rm.extend(names);
    docker_async(rm).await;
    elapsed
}

/// When each step of one ferry command was seen, from publish.
#[derive(Default, Debug)]
struct Breakdown {
    accepted: Option<Duration>,
    starting: Option<Duration>,
    all_healthy: Option<Duration>,
    stopping_previous: Option<Duration>,
    succeeded: Duration,
}

struct Ferry {
    client: async_nats::Client,
    events: async_nats::Subscriber,
    key: SigningKey,
}

impl Ferry {
    /// Publishes `action` signed and follows its events to the outcome.
    async fn run(&mut self, action: Action) -> Breakdown {
        let command = Command {
            environment: EnvName::new(ENV).unwrap(),
            service: ServiceName::new(SERVICE).unwrap(),
            actor: Some("bench".into()),
            action,
        };
        // Signing is the controller's cost, not the path measured here.
        let envelope = Envelope::new("/ferry/controller", command)
            .expiring_in(Duration::from_secs(600))
            .sign(&self.key)
            .unwrap();
        let id = envelope.id;
        let bytes = bytes::Bytes::from(envelope.to_bytes().unwrap());
        let started = Instant::now();
        self.client
            .publish(format!("ferry.v1.cmd.{ENV}.{SERVICE}"), bytes)
            .await
            .unwrap();
        let mut breakdown = Breakdown::default();
        loop {
            let message = tokio::time::timeout(WAIT, self.events.next())
                .await
                .expect("outcome in time")
                .unwrap();
            let at = started.elapsed();
            let event = Envelope::<ServiceEvent>::decode(&message.payload)
                .unwrap()
                .data;
            if event.command_id != Some(id) {
                continue;
            }
            match event.body {
                EventBody::Accepted { .. } => breakdown.accepted = Some(at),
                EventBody::Progress {
                    step,
                    ready,
                    desired,
                    ..
                } => match step.as_str() {
                    "starting replicas" => breakdown.starting = Some(at),
                    "waiting for health checks" if ready == desired => {
                        breakdown.all_healthy = Some(at)
                    }
                    "stopping previous replicas" => breakdown.stopping_previous = Some(at),
                    _ => {}
                },
                EventBody::Succeeded { .. } => {
                    breakdown.succeeded = at;
                    return breakdown;
                }
                other => panic!("ferry command failed: {other:?}"),
            }
        }
    }

    async fn deploy(&mut self, version: &str) -> Breakdown {
        self.run(Action::Deploy {
            release: ReleaseSpec {
                version: Version::new(version).unwrap(),
                artifact: format!("{IMAGE}:{version}"),
                digest: None,
                env: BTreeMap::new(),
            },
            replicas: Some(REPLICAS as u32),
            health: None,
            approvals: Vec::new(),
            rollout: None,
            hotfix: false,
        })
        .await
    }
}

fn summary(samples: &[Duration]) -> (f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    (ms(sorted[sorted.len() / 2]), ms(sorted[sorted.len() - 1]))
}

fn median_of(values: impl Iterator<Item = Option<Duration>>) -> String {
    let mut v: Vec<Duration> = values.flatten().collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    format!("{:.1}", ms(v[v.len() / 2]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let info = docker(&["info", "--format", "{{.ServerVersion}}"]);
    assert!(
        info.status.success(),
        "docker_rollout needs a Docker engine: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    for version in ["1.0.0", "2.0.0"] {
        assert!(
            docker(&["image", "inspect", &format!("{IMAGE}:{version}")])
                .status
                .success(),
            "image {IMAGE}:{version} is missing: run scripts/build-sample-image"
        );
    }
    // Declared first, so it is dropped last: after the agent is gone.
    let cleanup = Cleanup {
        baseline_prefix: format!("ferry-bench-baseline-{}-", std::process::id()),
    };
    cleanup.sweep();

    let mut system = System::without_controller();
    let mut config = system.docker_agent_config(ENV, SERVICE, free_port());
    for service in config.services.values_mut() {
        service.health.interval = INTERVAL;
        service.health.timeout = Duration::from_secs(1);
    }
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let events = client
        .subscribe(format!("ferry.v1.evt.{ENV}.{SERVICE}.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut ferry = Ferry {
        client,
        events,
        key: SigningKey::from_seed(&system.controller_key.seed().unwrap()).unwrap(),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    let mut base = Vec::with_capacity(ROUNDS);
    let mut rollouts: Vec<Breakdown> = Vec::with_capacity(ROUNDS);
    // Round 0 warms both paths up and is not counted.
    for round in 0..=ROUNDS {
        let b = baseline(&http, &cleanup.baseline_prefix, round).await;
        // Alternate versions; scaling to 0 first (not measured) means every
        // measured deploy starts 3 fresh containers and stops none.
        let version = if round % 2 == 0 { "1.0.0" } else { "2.0.0" };
        let f = ferry.deploy(version).await;
        assert!(
            f.stopping_previous.is_none(),
            "previous set not scaled away"
        );
        ferry.run(Action::Scale { replicas: 0 }).await;
        println!(
            "round {round}{}: baseline {:8.1} ms   ferry {:8.1} ms",
            if round == 0 { " (warm-up)" } else { "" },
            ms(b),
            ms(f.succeeded)
        );
        if round > 0 {
            base.push(b);
            rollouts.push(f);
        }
    }

    let ferry_total: Vec<Duration> = rollouts.iter().map(|r| r.succeeded).collect();
    let (base_p50, base_max) = summary(&base);
    let (ferry_p50, ferry_max) = summary(&ferry_total);
    println!();
    println!(
        "docker_rollout: {REPLICAS} replicas of {IMAGE}, {ROUNDS} interleaved rounds after 1 warm-up, \
         health polled every {} ms by both",
        INTERVAL.as_millis()
    );
    println!("{:<52} {:>9} {:>9}", "", "median ms", "max ms");
    println!(
        "{:<52} {base_p50:>9.1} {base_max:>9.1}",
        "docker run -d x3 + /health polled (baseline)"
    );
    println!(
        "{:<52} {ferry_p50:>9.1} {ferry_max:>9.1}",
        "ferry deploy command -> succeeded"
    );
    let ratio = ferry_p50 / base_p50;
    println!("{:<52} {ratio:>9.2}", "ratio of medians (ferry / baseline)");
    println!(
        "(each ferry deploy started 3 fresh containers after a scale to 0; \
         stopping a previous set is not in its number)"
    );
    println!(
        "ferry breakdown, medians from publish (ms): accepted {}, starting replicas {}, \
         all healthy {}, succeeded {}",
        median_of(rollouts.iter().map(|r| r.accepted)),
        median_of(rollouts.iter().map(|r| r.starting)),
        median_of(rollouts.iter().map(|r| r.all_healthy)),
        median_of(rollouts.iter().map(|r| Some(r.succeeded))),
    );
    if ratio > 1.3 {
        println!("ratio above the issue's bar of 1.3");
    }

    system.shutdown().await;
    drop(cleanup);
}
