//! Helpers of the progressive-delivery tests: a dev agent serving web
//! 1.0.0, deploys of the sample, and reading rollout events.

// Test helpers: a failed setup must stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ferry_protocol::command::Action;
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::rollout::{AbortReason, Metric, RolloutOptions, RolloutPhase};
use uuid::Uuid;

use crate::{
    free_port, sample_release, send_command, wait_serving, EventWatch, Load, System, WAIT,
};

/// A deploy of web `version` of the sample at 2 replicas, with `env_vars`
/// and optional rollout options.
pub fn deploy(version: &str, env_vars: &[(&str, &str)], rollout: Option<RolloutOptions>) -> Action {
    Action::Deploy {
        release: sample_release(version, env_vars),
        replicas: Some(2),
        health: None,
        rollout: rollout.map(Box::new),
        hotfix: false,
        approvals: Vec::new(),
    }
}

/// Signs `action` for dev/web with the controller's key and stores it in
/// the commands stream, as the controller would.
pub async fn send(system: &System, client: &async_nats::Client, action: Action) -> Uuid {
    send_command(client, &system.controller_key, "dev", "web", action).await
}

/// A system with a dev agent serving web 1.0.0 on a fresh port.
pub async fn serving_v1() -> (System, u16, async_nats::Client, EventWatch) {
    serving_v1_with(&[]).await
}

/// A system with a dev agent serving web 1.0.0 with `env_vars` (say, an
/// error rate) on a fresh port.
pub async fn serving_v1_with(
    env_vars: &[(&str, &str)],
) -> (System, u16, async_nats::Client, EventWatch) {
    let mut system = System::without_controller();
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let id = send(&system, &client, deploy("1.0.0", env_vars, None)).await;
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;
    (system, port, client, watch)
}

pub fn rollout_phase(e: &ServiceEvent) -> Option<&RolloutPhase> {
    match &e.body {
        EventBody::Rollout(r) => Some(&r.phase),
        _ => None,
    }
}

pub fn aborted(e: &ServiceEvent) -> Option<AbortReason> {
    match rollout_phase(e) {
        Some(RolloutPhase::Aborted { reason }) => Some(reason.clone()),
        _ => None,
    }
}

/// Waits until `requests` more requests were answered and none of them by
/// `version`; panics if that does not happen within `timeout`.
pub async fn wait_no_traffic_to(load: &Load, version: &str, requests: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let before = load.stats();
        let start_total = before.total;
        let start_version = before.by_version.get(version).copied().unwrap_or(0);
        loop {
            let now = load.stats();
            if now.by_version.get(version).copied().unwrap_or(0) != start_version {
                break;
            }
            if now.total >= start_total + requests {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{version} still answered requests after {timeout:?}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            Instant::now() < deadline,
            "{version} still answered requests after {timeout:?}"
        );
    }
}

/// Waits for the rollout of command `id` to report its end (promoted or
/// aborted). Rollout events travel in order through the agent's event
/// queue and the outcome on its own confirmed path, so the outcome may come
/// first; once the end is in, every rollout event before it is too.
pub async fn wait_rollout_end(watch: &mut EventWatch, id: Uuid) -> RolloutPhase {
    let end = watch
        .wait_for(WAIT, "the rollout's end", |e| {
            e.command_id == Some(id)
                && matches!(
                    rollout_phase(e),
                    Some(RolloutPhase::Promoted | RolloutPhase::Aborted { .. })
                )
        })
        .await;
    rollout_phase(&end).cloned().expect("a rollout event")
}

/// The error-rate breach that rolled back `event`'s canary at its first step.
pub fn assert_error_rate_rollback_at_step_1(reason: AbortReason, weight: u8) {
    match reason {
        AbortReason::Threshold {
            breach,
            step,
            weight_percent,
            intervals,
        } => {
            assert_eq!(breach.metric, Metric::ErrorRate, "{breach:?}");
            assert!(
                (10.0..=30.0).contains(&breach.value),
                "Prometheus measured about 20%: {breach:?}"
            );
            assert_eq!(breach.threshold, 5.0);
            // The fixed rule judged it (the proxy's default is sequential,
            // with evidence): the verdict is the provider's.
            assert_eq!(breach.evidence, None, "{breach:?}");
            assert_eq!(intervals, 2);
            assert_eq!((step, weight_percent), (1, weight));
        }
        other => panic!("aborted for another reason: {other:?}"),
    }
}

/// A failed outcome's reason and the version serving after it; panics on
/// any other outcome.
pub fn failed_reason(body: &EventBody) -> (&str, Option<&str>) {
    match body {
        EventBody::Failed {
            reason, serving, ..
        } => (reason.as_str(), serving.as_ref().map(|v| v.as_str())),
        other => panic!("not a failure: {other:?}"),
    }
}
