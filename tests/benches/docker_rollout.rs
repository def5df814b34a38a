//! Docker rollout: from publishing a signed deploy of 3 replicas of
//! `ferry-sample:1.0.0` to the agent's `succeeded` event, beside the same 3
//! containers started by hand with the docker CLI and health-polled by hand,
//! interleaved in the same run (these machines are noisy; ratios are what
//! compare). Needs a Docker engine and `scripts/build-sample-image`. Run with
//! `cargo bench -p ferry-e2e --bench docker_rollout`.

// A benchmark that cannot set up must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_e2e::bars::{bars_or_exit, Bars};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_e2e::deploy_bench::{interleaved_rounds, wait_all_healthy, DeployRunner};
use ferry_e2e::{free_port, System};
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::Version;

/// Rounds of (baseline, ferry), after one untimed warm-up round.
const ROUNDS: usize = 7;
/// The bar for the ratio of medians, ferry / by hand.
const BAR: f64 = 1.3;
const REPLICAS: usize = 3;
/// The health interval of both: ferry's bench config and the hand-made poll
/// (both start with shorter pauses that double up to it).
const INTERVAL: Duration = Duration::from_millis(50);
const IMAGE: &str = "ferry-sample";
const ENV: &str = "dev";
/// A service name of its own, so the cleanup's label filter matches only
/// what this bench's agent created.
const SERVICE: &str = "rollout-bench";

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
    wait_all_healthy(client, &ports, INTERVAL).await;
    let elapsed = started.elapsed();
    let mut rm = vec!["rm".to_owned(), "-f".to_owned()];
    rm.extend(names);
    docker_async(rm).await;
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut bars = bars_or_exit("docker_rollout");
    measure(&mut bars).await;
    bars.finish()
}

async fn measure(bars: &mut Bars) {
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

    let prefix = cleanup.baseline_prefix.clone();
    let rounds = interleaved_rounds(
        ROUNDS,
        REPLICAS as u32,
        &mut ferry,
        |round| baseline(&http, &prefix, round),
        // Alternate versions, so each deploy is a new release.
        |round| {
            let version = if round % 2 == 0 { "1.0.0" } else { "2.0.0" };
            ReleaseSpec {
                version: Version::new(version).unwrap(),
                artifact: format!("{IMAGE}:{version}"),
                digest: None,
                env: BTreeMap::new(),
            }
        },
    )
    .await;
    let ratio = rounds.report(
        &format!(
            "docker_rollout: {REPLICAS} replicas of {IMAGE}, {ROUNDS} interleaved rounds after 1 warm-up, \
             health polled every {} ms by both",
            INTERVAL.as_millis()
        ),
        "docker run -d x3 + /health polled (baseline)",
    );
    bars.at_most("ratio of medians, ferry / by hand", ratio, BAR);

    system.shutdown().await;
    drop(cleanup);
}
