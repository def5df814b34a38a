//! End-to-end tests of what the analysis concludes beyond absolute
//! thresholds, on the process runtime with real traffic through the stable
//! port: a window where the stable version fails as the canary does is not
//! blamed on the canary; a canary clearly worse than stable is rolled back
//! under the thresholds; and `recreate` and `blue-green` deploys are
//! verified after their switch and rolled back (switched back) on a breach.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ferry_e2e::rollout::*;
use ferry_e2e::*;
use ferry_protocol::command::Action;
use ferry_protocol::event::EventBody;
use ferry_protocol::rollout::{
    AbortReason, AnalysisOverride, BothFailing, Metric, RolloutControl, RolloutOptions,
    RolloutPhase, Strategy,
};

/// One long canary step: only the analysis (or an operator) can end it.
fn one_long_step(weight: u8, analysis: AnalysisOverride) -> Option<RolloutOptions> {
    Some(RolloutOptions {
        strategy: Some(Strategy::Canary {
            steps: vec![weight, 100],
            step_secs: 600,
        }),
        analysis: Some(analysis),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_where_stable_and_canary_both_fail_is_not_blamed_on_the_canary() {
    // A dependency outage: the serving version fails 30% of requests too.
    let (system, port, client, mut watch) = serving_v1_with(&[("SAMPLE_ERROR_RATE", "0.3")]).await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.3")],
            one_long_step(
                20,
                AnalysisOverride {
                    min_requests: Some(5),
                    ..Default::default()
                },
            ),
        ),
    )
    .await;
    let event = watch
        .wait_for(Duration::from_secs(60), "both failing", |e| {
            e.command_id == Some(id)
                && matches!(rollout_phase(e), Some(RolloutPhase::BothFailing { .. }))
        })
        .await;
    match rollout_phase(&event) {
        Some(RolloutPhase::BothFailing {
            canary,
            stable_value,
        }) => {
            assert!(
                matches!(canary.metric, Metric::ErrorRate | Metric::Availability),
                "{canary:?}"
            );
            assert!(
                canary.evidence.is_some(),
                "the verdict carries its evidence"
            );
            let fails = match canary.metric {
                Metric::Availability => *stable_value < 95.0,
                _ => *stable_value > 5.0,
            };
            assert!(
                fails,
                "the stable version was measured failing: {stable_value}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Held, not rolled back: the default is to pause and tell people.
    watch
        .wait_for(WAIT, "the rollout paused", |e| {
            e.command_id == Some(id) && matches!(rollout_phase(e), Some(RolloutPhase::Paused))
        })
        .await;
    assert!(
        watch.seen.iter().all(|e| aborted(e).is_none()),
        "nothing was aborted on the canary's account"
    );
    assert!(
        load.stats().by_version.get("2.0.0").copied().unwrap_or(0) > 0,
        "the canary still takes its share while held"
    );
    // An operator decides; the outcome names the operator, not the canary.
    let abort = send(
        &system,
        &client,
        Action::Rollout {
            control: RolloutControl::Abort,
        },
    )
    .await;
    watch.outcome(abort, WAIT).await;
    let outcome = watch.outcome(id, WAIT).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(reason.contains("aborted by an operator"), "{reason}");
    assert_eq!(serving, Some("1.0.0"));
    load.stop().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_failing_aborts_with_the_outage_as_the_reason_when_configured_to() {
    let (system, port, client, mut watch) = serving_v1_with(&[("SAMPLE_ERROR_RATE", "0.3")]).await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.3")],
            one_long_step(
                20,
                AnalysisOverride {
                    min_requests: Some(5),
                    on_both_failing: Some(BothFailing::Abort),
                    ..Default::default()
                },
            ),
        ),
    )
    .await;
    let outcome = watch.outcome(id, Duration::from_secs(60)).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(
        reason.contains("the stable version fails too") && reason.contains("not this release"),
        "{reason}"
    );
    assert_eq!(serving, Some("1.0.0"));
    let RolloutPhase::Aborted { reason } = wait_rollout_end(&mut watch, id).await else {
        panic!("the rollout was not aborted")
    };
    assert!(
        matches!(reason, AbortReason::BothFailing { .. }),
        "{reason:?}"
    );
    load.stop().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_clearly_worse_than_stable_under_the_thresholds_is_rolled_back() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    // 4% errors: under the 5% threshold, but 4 points worse than a stable
    // version that fails nothing (the default margin is 2 points).
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.04")],
            one_long_step(50, AnalysisOverride::default()),
        ),
    )
    .await;
    let outcome = watch.outcome(id, Duration::from_secs(90)).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(reason.contains("against the stable version"), "{reason}");
    assert_eq!(serving, Some("1.0.0"));
    let RolloutPhase::Aborted { reason } = wait_rollout_end(&mut watch, id).await else {
        panic!("the rollout was not aborted")
    };
    match reason {
        AbortReason::WorseThanStable { breach, step, .. } => {
            assert_eq!(breach.metric, Metric::ErrorRate);
            assert!(
                breach.value < 5.0,
                "under the absolute threshold: {breach:?}"
            );
            assert_eq!(breach.threshold, 2.0, "stable's 0% plus the 2-point margin");
            let evidence = breach.evidence.expect("evidence");
            assert_eq!(evidence.stable_value, Some(0.0));
            assert_eq!(step, 1);
        }
        other => panic!("{other:?}"),
    }
    wait_no_traffic_to(&load, "2.0.0", 200, WAIT).await;
    load.stop().await;
    system.shutdown().await;
}

/// A deploy of `version` with `strategy`, verified for 30 s after its switch.
fn verified(version: &str, env: &[(&str, &str)], strategy: Strategy) -> Action {
    deploy(
        version,
        env,
        Some(RolloutOptions {
            strategy: Some(strategy),
            analysis: Some(AnalysisOverride {
                verify_for_secs: Some(30),
                min_requests: Some(5),
                ..Default::default()
            }),
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreate_deploy_of_a_30_percent_error_release_is_rolled_back_by_its_verification() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        verified("2.0.0", &[("SAMPLE_ERROR_RATE", "0.3")], Strategy::Recreate),
    )
    .await;
    let outcome = watch.outcome(id, Duration::from_secs(90)).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(
        reason.contains("verification after the recreate switch"),
        "{reason}"
    );
    assert!(reason.contains("rolled back to 1.0.0"), "{reason}");
    assert_eq!(serving, Some("1.0.0"));
    // The verification's breach is reported as an analysis event too.
    watch
        .wait_for(WAIT, "the verification's breach", |e| {
            e.command_id == Some(id)
                && matches!(rollout_phase(e), Some(RolloutPhase::Analysed { breaches, .. }) if !breaches.is_empty())
        })
        .await;
    wait_no_traffic_to(&load, "2.0.0", 200, WAIT).await;
    wait_serving(port, "1.0.0", WAIT).await;
    load.stop().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_breach_in_verification_switches_back_to_the_kept_set() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        verified(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.3")],
            Strategy::BlueGreen {
                keep_old_for_secs: 120,
            },
        ),
    )
    .await;
    let outcome = watch.outcome(id, Duration::from_secs(90)).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(
        reason.contains("verification after the blue-green switch"),
        "{reason}"
    );
    assert!(
        reason.contains("switched back to the kept 1.0.0 set"),
        "{reason}"
    );
    assert_eq!(serving, Some("1.0.0"));
    // A switch back, not a redeploy: the switch is reported, and before it
    // (progress events arrive in order) no replica of 1.0.0 was started again.
    watch
        .wait_for(WAIT, "the switch back", |e| {
            e.command_id == Some(id)
                && matches!(&e.body, EventBody::Progress { step, .. } if step.contains("switching back"))
        })
        .await;
    assert!(
        !watch.seen.iter().any(|e| e.command_id == Some(id)
            && matches!(&e.body, EventBody::Progress { step, .. } if step.contains("starting"))
            && matches!(&e.body, EventBody::Progress { version: Some(v), .. } if v.as_str() == "1.0.0")),
        "1.0.0 was started again instead of switched back to"
    );
    wait_no_traffic_to(&load, "2.0.0", 200, WAIT).await;
    load.stop().await;
    system.shutdown().await;
}
