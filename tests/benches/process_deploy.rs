//! Process deploy: from publishing a signed deploy of 3 replicas of
//! `ferry-sample` on the process runtime to the agent's `succeeded` event,
//! beside the same 3 processes started by hand and health-polled by hand,
//! interleaved in the same run (these machines are noisy; ratios are what
//! compare). The process counterpart of `docker_rollout`. Run with
//! `cargo bench -p ferry-e2e --bench process_deploy`.

// A benchmark that cannot set up must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_e2e::bars::{bars_or_exit, Bars};
use std::time::{Duration, Instant};

use ferry_e2e::deploy_bench::{interleaved_rounds, wait_all_healthy, DeployRunner};
use ferry_e2e::{bin, free_port, sample_release, System};

/// Rounds of (baseline, ferry), after one untimed warm-up round. Either
/// side's time is bimodal (a replica is ready at one health check or at the
/// next, 5 ms later): enough rounds that the medians land in the same mode.
const ROUNDS: usize = 41;
const REPLICAS: usize = 3;
/// The health interval of both: ferry's bench config and the hand-made poll
/// (both start with shorter pauses that double up to it).
const INTERVAL: Duration = Duration::from_millis(50);
const ENV: &str = "dev";
const SERVICE: &str = "deploy-bench";
/// The bar for the ratio of medians.
const BAR: f64 = 1.2;

/// The baseline: 3 `ferry-sample` processes spawned one after another on
/// free ports, health polled until all answer 200; they are stopped
/// afterwards, outside the measured time.
async fn baseline(client: &reqwest::Client, round: usize) -> Duration {
    let sample = bin("ferry-sample");
    let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
    let started = Instant::now();
    let mut children = Vec::with_capacity(REPLICAS);
    for (i, port) in ports.iter().enumerate() {
        children.push(
            tokio::process::Command::new(&sample)
                .env_clear()
                .env("PORT", port.to_string())
                .env("FERRY_VERSION", "1.0.0")
                .env("FERRY_REPLICA", format!("baseline-{round}-{i}"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn ferry-sample"),
        );
    }
    wait_all_healthy(client, &ports, INTERVAL).await;
    let elapsed = started.elapsed();
    for child in &mut children {
        let _ = child.kill().await;
    }
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut bars = bars_or_exit("process_deploy");
    measure(&mut bars).await;
    bars.finish()
}

async fn measure(bars: &mut Bars) {
    let mut system = System::without_controller();
    let mut config = system.agent_config(ENV, &[(SERVICE, free_port())]);
    for service in config.services.values_mut() {
        service.replicas = REPLICAS as u32;
        service.health.interval = INTERVAL;
        service.health.timeout = Duration::from_secs(1);
    }
    system.start_agent_with(config).await;
    let mut ferry = DeployRunner::new(
        system.nats.client().await,
        &system.controller_key,
        ENV,
        SERVICE,
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    let rounds = interleaved_rounds(
        ROUNDS,
        REPLICAS as u32,
        &mut ferry,
        |round| baseline(&http, round),
        // Alternate versions, so each deploy is a new release.
        |round| sample_release(if round % 2 == 0 { "1.0.0" } else { "2.0.0" }, &[]),
    )
    .await;
    let ratio = rounds.report(
        &format!(
            "process_deploy: {REPLICAS} replicas of ferry-sample, {ROUNDS} interleaved rounds after \
             1 warm-up, health polled every {} ms by both",
            INTERVAL.as_millis()
        ),
        "ferry-sample x3 spawned + /health polled (baseline)",
    );
    bars.at_most("ratio of medians, ferry / by hand", ratio, BAR);
    system.shutdown().await;
}
