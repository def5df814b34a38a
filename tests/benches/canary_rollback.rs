//! Time to roll back a bad canary, with ferry's DEFAULT settings (canary
//! steps 10/35/60/85/100, sequential analysis weighed every 250 ms at a 0.1%
//! false-abort rate, 20 requests for a verdict): a release answering 20% of
//! its requests with errors is deployed under a steady 100 requests a second
//! (so 10 a second reach the canary at its first step), and the load
//! generator at the stable port measures from the first request the bad
//! version answers to the last one, after which the old version serves 100%
//! of requests again. The bar is 5 s in each run (with the fixed-interval
//! rule it was 10 s; Flagger's defaults take about 5 minutes; Argo Rollouts
//! and Nomad do not roll back by default).
//! Run with `cargo bench -p ferry-e2e --bench canary_rollback`.

// A benchmark that cannot set up must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_e2e::bars::{bars_or_exit, Bars};
use std::time::{Duration, Instant};

use ferry_e2e::{
    free_port, sample_release, send_command, wait_serving, EventWatch, Load, System, WAIT,
};
use ferry_protocol::command::Action;
use ferry_protocol::event::EventBody;
use ferry_protocol::rollout::{RolloutOptions, RolloutPhase, Strategy};

const RUNS: usize = 3;
const BAR: Duration = Duration::from_secs(5);
/// Requests a second at the stable port.
const LOAD_PER_SEC: u32 = 100;

fn deploy(version: &str, env: &[(&str, &str)], canary: bool) -> Action {
    Action::Deploy {
        release: sample_release(version, env),
        replicas: Some(2),
        health: None,
        // The seed's canary and the default analysis: nothing overridden.
        rollout: canary.then(|| {
            Box::new(RolloutOptions {
                strategy: Some(Strategy::default_canary()),
                analysis: None,
            })
        }),
        hotfix: false,
        approvals: Vec::new(),
    }
}

async fn send(system: &System, client: &async_nats::Client, action: Action) -> uuid::Uuid {
    send_command(client, &system.controller_key, "dev", "web", action).await
}

struct Run {
    at_proxy: Duration,
    from_step_event: Duration,
    reason: String,
}

async fn one_run() -> Run {
    let mut system = System::without_controller();
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let id = send(&system, &client, deploy("1.0.0", &[], false)).await;
    watch.outcome(id, WAIT).await;
    wait_serving(port, "1.0.0", WAIT).await;

    let load = Load::at_rate(port, LOAD_PER_SEC);
    let id = send(
        &system,
        &client,
        deploy("2.0.0", &[("SAMPLE_ERROR_RATE", "0.2")], true),
    )
    .await;
    watch
        .wait_for(
            WAIT,
            "the first canary step",
            |e| matches!(&e.body, EventBody::Rollout(r) if r.phase == RolloutPhase::StepStarted),
        )
        .await;
    let step_seen = Instant::now();
    let outcome = watch.outcome(id, Duration::from_secs(120)).await;
    let reason = match outcome.body {
        EventBody::Failed { reason, .. } => reason,
        other => panic!("the bad canary was not rolled back: {other:?}"),
    };
    // Enough requests after the outcome to be sure the bad version is out.
    let after = load.stats().total;
    let deadline = Instant::now() + WAIT;
    while load.stats().total < after + 400 {
        assert!(Instant::now() < deadline, "load generator stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = load.stop().await;
    let first = stats.first_seen["2.0.0"];
    let last = stats.last_seen["2.0.0"];
    system.shutdown().await;
    Run {
        at_proxy: last - first,
        from_step_event: last.saturating_duration_since(step_seen),
        reason,
    }
}

#[tokio::main]
async fn main() {
    let mut bars = bars_or_exit("canary_rollback");
    measure(&mut bars).await;
    bars.finish()
}

async fn measure(bars: &mut Bars) {
    ferry_e2e::init_tracing();
    println!(
        "canary rollback with default settings, {LOAD_PER_SEC} requests/s, {RUNS} runs (bar: {BAR:?} each)"
    );
    let mut worst = Duration::ZERO;
    for i in 1..=RUNS {
        let run = one_run().await;
        worst = worst.max(run.at_proxy);
        println!(
            "run {i}: first to last request answered by the bad version {:.2} s (from the step event {:.2} s); {}",
            run.at_proxy.as_secs_f64(),
            run.from_step_event.as_secs_f64(),
            run.reason
        );
    }
    println!(
        "canary_rollback: worst {:.2} s, bar {:.0} s: {}",
        worst.as_secs_f64(),
        BAR.as_secs_f64(),
        if bars.at_most(
            "worst first-to-last bad answer, s",
            worst.as_secs_f64(),
            BAR.as_secs_f64()
        ) {
            "within the bar"
        } else {
            "OVER THE BAR"
        }
    );
}
