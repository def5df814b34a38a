//! Progressive delivery on the Docker runtime: the same agent proxy weighs
//! traffic between containers. Needs a Docker engine and the `ferry-sample`
//! image (`scripts/build-sample-image`); skipped with the reason otherwise,
//! except under CI, where that fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ferry_e2e::rollout::wait_rollout_end;
use ferry_e2e::*;
use ferry_protocol::command::Action;
use ferry_protocol::event::EventBody;
use ferry_protocol::rollout::{
    AbortReason, AnalysisOverride, Metric, RolloutOptions, RolloutPhase, Strategy,
};

/// Whether the tests can run; panics under CI when they cannot.
fn engine_ready(test: &str) -> bool {
    docker_ready(test, &["ferry-sample:1.0.0"], "scripts/build-sample-image")
}

fn deploy(version: &str, env: &[(&str, &str)], canary: bool) -> Action {
    Action::Deploy {
        release: sample_image_release(version, env),
        replicas: Some(2),
        health: None,
        rollout: canary.then(|| {
            Box::new(RolloutOptions {
                strategy: Some(Strategy::Canary {
                    steps: vec![10, 50, 100],
                    step_secs: 2,
                }),
                analysis: Some(AnalysisOverride {
                    interval_ms: Some(500),
                    failures_to_abort: Some(2),
                    min_requests: Some(5),
                    ..Default::default()
                }),
            })
        }),
        hotfix: false,
        approvals: Vec::new(),
    }
}

async fn send(
    system: &System,
    client: &async_nats::Client,
    service: &str,
    action: Action,
) -> uuid::Uuid {
    send_command(client, &system.controller_key, "dev", service, action).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_canaries_are_promoted_when_good_and_rolled_back_at_the_first_step_when_bad() {
    if !engine_ready("docker canary") {
        return;
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let service = format!("cw-{}", &id[..8]);
    let _cleanup = ferry_e2e::docker::RemoveContainers(service.clone());
    let mut system = System::without_controller();
    let port = free_port();
    let config = system.docker_agent_config("dev", &service, port);
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", &service).await;

    let first = send(&system, &client, &service, deploy("1.0.0", &[], false)).await;
    assert!(matches!(
        watch.outcome(first, WAIT).await.body,
        EventBody::Succeeded { .. }
    ));
    wait_serving(port, "1.0.0", WAIT).await;
    let load = Load::start(port, 4, Duration::from_millis(2));

    let good = send(&system, &client, &service, deploy("2.0.0", &[], true)).await;
    let outcome = watch.outcome(good, Duration::from_secs(60)).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { version: Some(v), .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    let steps = watch
        .seen
        .iter()
        .filter(|e| e.command_id == Some(good))
        .filter(
            |e| matches!(&e.body, EventBody::Rollout(r) if r.phase == RolloutPhase::StepStarted),
        )
        .count();
    assert_eq!(steps, 3);
    wait_serving(port, "2.0.0", WAIT).await;

    let bad = send(
        &system,
        &client,
        &service,
        deploy("3.0.0", &[("SAMPLE_ERROR_RATE", "0.2")], true),
    )
    .await;
    let outcome = watch.outcome(bad, Duration::from_secs(60)).await;
    assert!(
        matches!(&outcome.body, EventBody::Failed { serving: Some(v), .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    let RolloutPhase::Aborted { reason } = wait_rollout_end(&mut watch, bad).await else {
        panic!("the bad canary's rollout was not aborted")
    };
    assert!(
        matches!(&reason, AbortReason::Threshold { breach, step: 1, .. } if breach.metric == Metric::ErrorRate),
        "{reason:?}"
    );
    // The bad containers are stopped; traffic is 2.0.0's alone.
    let deadline = Instant::now() + WAIT;
    loop {
        let before = load.stats();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = load.stats();
        let bad_answers = after.by_version.get("3.0.0").copied().unwrap_or(0)
            - before.by_version.get("3.0.0").copied().unwrap_or(0);
        if bad_answers == 0 && after.total > before.total + 50 {
            break;
        }
        assert!(Instant::now() < deadline, "3.0.0 kept getting traffic");
    }
    load.stop().await;
    system.shutdown().await;
}
