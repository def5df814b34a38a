//! What the deploy benchmarks share (`docker_rollout`, `process_deploy`): a
//! signed deploy followed from publish to `succeeded` with the time of each
//! step, a hand-made health poll for the baseline, and the interleaved
//! rounds and their report. Each bench brings only how its baseline starts
//! the same replicas by hand.

use std::future::Future;
use std::time::{Duration, Instant};

use ferry_agent::managed::FIRST_START_CHECK;
use ferry_protocol::command::{Action, Command, ReleaseSpec};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::{EnvName, Envelope, ServiceName, SigningKey};
use futures::StreamExt;

use crate::WAIT;

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Polls `ports`' `/health` until each has answered 200 once, as ferry's
/// start gate does: pauses from [`FIRST_START_CHECK`] doubling up to
/// `interval`, so both sides of a comparison see readiness as soon.
pub async fn wait_all_healthy(client: &reqwest::Client, ports: &[u16], interval: Duration) {
    let deadline = Instant::now() + WAIT;
    let mut healthy = vec![false; ports.len()];
    let mut pause = FIRST_START_CHECK.min(interval);
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
        assert!(Instant::now() < deadline, "baseline replicas not healthy");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(interval);
    }
}

/// When each step of one ferry command was seen, from publish.
#[derive(Default, Debug)]
pub struct Breakdown {
    /// The `accepted` event.
    pub accepted: Option<Duration>,
    /// "starting replicas".
    pub starting: Option<Duration>,
    /// "waiting for health checks" with every replica ready.
    pub all_healthy: Option<Duration>,
    /// "stopping previous replicas".
    pub stopping_previous: Option<Duration>,
    /// The `succeeded` event.
    pub succeeded: Duration,
}

/// Publishes signed commands for one service and follows their events.
pub struct DeployRunner {
    client: async_nats::Client,
    events: async_nats::Subscriber,
    key: SigningKey,
    env: String,
    service: String,
}

impl DeployRunner {
    /// Subscribes to `env`/`service`'s events (flushed, so none is missed).
    pub async fn new(
        client: async_nats::Client,
        key: &SigningKey,
        env: &str,
        service: &str,
    ) -> DeployRunner {
        let events = client
            .subscribe(format!("ferry.v1.evt.{env}.{service}.>"))
            .await
            .unwrap();
        client.flush().await.unwrap();
        DeployRunner {
            client,
            events,
            key: SigningKey::from_seed(&key.seed().unwrap()).unwrap(),
            env: env.to_owned(),
            service: service.to_owned(),
        }
    }

    /// Publishes `action` signed and follows its events to the outcome;
    /// panics when it does not succeed.
    pub async fn run(&mut self, action: Action) -> Breakdown {
        let command = Command {
            environment: EnvName::new(&self.env).unwrap(),
            service: ServiceName::new(&self.service).unwrap(),
            actor: Some("bench".into()),
            hosts: Vec::new(),
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
            .publish(format!("ferry.v1.cmd.{}.{}", self.env, self.service), bytes)
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

    /// Deploys `release` with `replicas` and the service's defaults.
    pub async fn deploy(&mut self, release: ReleaseSpec, replicas: u32) -> Breakdown {
        self.run(Action::Deploy {
            release,
            replicas: Some(replicas),
            health: None,
            approvals: Vec::new(),
            rollout: None,
            hotfix: false,
        })
        .await
    }
}

/// The measured rounds of a deploy benchmark.
#[derive(Default)]
pub struct Rounds {
    /// The baseline's times.
    pub baseline: Vec<Duration>,
    /// ferry's deploys.
    pub rollouts: Vec<Breakdown>,
}

/// Runs `rounds` interleaved rounds of (baseline, ferry deploy) after one
/// untimed warm-up round. `release(round)` names the version each ferry round
/// deploys; after each, the service is scaled to 0 (not measured), so every
/// measured deploy starts fresh replicas and stops none.
pub async fn interleaved_rounds<B, Fut>(
    rounds: usize,
    replicas: u32,
    ferry: &mut DeployRunner,
    mut baseline: B,
    release: impl Fn(usize) -> ReleaseSpec,
) -> Rounds
where
    B: FnMut(usize) -> Fut,
    Fut: Future<Output = Duration>,
{
    let mut measured = Rounds::default();
    for round in 0..=rounds {
        let b = baseline(round).await;
        let f = ferry.deploy(release(round), replicas).await;
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
            measured.baseline.push(b);
            measured.rollouts.push(f);
        }
    }
    measured
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

impl Rounds {
    /// Prints the medians and maxima of both, their ratio and ferry's
    /// breakdown; returns the ratio of medians (ferry / baseline).
    pub fn report(&self, title: &str, baseline_label: &str) -> f64 {
        let ferry_total: Vec<Duration> = self.rollouts.iter().map(|r| r.succeeded).collect();
        let (base_p50, base_max) = summary(&self.baseline);
        let (ferry_p50, ferry_max) = summary(&ferry_total);
        println!();
        println!("{title}");
        println!("{:<52} {:>9} {:>9}", "", "median ms", "max ms");
        println!("{baseline_label:<52} {base_p50:>9.1} {base_max:>9.1}");
        println!(
            "{:<52} {ferry_p50:>9.1} {ferry_max:>9.1}",
            "ferry deploy command -> succeeded"
        );
        let ratio = ferry_p50 / base_p50;
        println!("{:<52} {ratio:>9.2}", "ratio of medians (ferry / baseline)");
        println!(
            "(each ferry deploy started fresh replicas after a scale to 0; \
             stopping a previous set is not in its number)"
        );
        println!(
            "ferry breakdown, medians from publish (ms): accepted {}, starting replicas {}, \
             all healthy {}, succeeded {}",
            median_of(self.rollouts.iter().map(|r| r.accepted)),
            median_of(self.rollouts.iter().map(|r| r.starting)),
            median_of(self.rollouts.iter().map(|r| r.all_healthy)),
            median_of(self.rollouts.iter().map(|r| Some(r.succeeded))),
        );
        ratio
    }
}
