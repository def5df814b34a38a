//! End-to-end tests of the Prometheus metrics provider: a real Prometheus
//! (Debian's `prometheus`) scrapes the real ferry-sample replicas the agent
//! starts (their `/metrics`), and the agent's canary analysis reads the new
//! version's signals from it instead of from its proxy: process replicas
//! (found through a file_sd file) and containers (found through the Docker
//! engine; needs it and the `ferry-sample` image, skipped otherwise except
//! under CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ferry_agent::config::{
    default_error_rate_query, default_p95_query, default_request_rate_query, AgentConfig,
    MetricsProvider, PrometheusConfig,
};
use ferry_e2e::prometheus::{follow_replicas, Discovery, Prometheus};
use ferry_e2e::rollout::*;
use ferry_e2e::*;
use ferry_protocol::command::Action;
use ferry_protocol::event::EventBody;
use ferry_protocol::rollout::{
    AbortReason, AnalysisOverride, RolloutOptions, RolloutPhase, Strategy,
};
use ferry_protocol::ServiceName;

/// The analysis interval: three scrapes, so every `rate()` has samples.
const INTERVAL_MS: u64 = 3000;

/// The system, the stable port, a client, the event watch, Prometheus, and
/// the task keeping Prometheus's targets up to date: dev/web serving 1.0.0
/// with the Prometheus provider.
async fn serving_v1_analysed_by_prometheus() -> (
    System,
    u16,
    async_nats::Client,
    EventWatch,
    Prometheus,
    tokio::task::JoinHandle<()>,
) {
    let prometheus = Prometheus::start(Discovery::File).await;
    let mut system = System::without_controller();
    let port = free_port();
    let mut config = system.agent_config("dev", &[("web", port)]);
    let log = config.state_dir.join("logs").join("web.log");
    analysed_by(&mut config, "web", &prometheus);
    let follow = follow_replicas(log, prometheus.targets_file());
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let id = send(&system, &client, deploy("1.0.0", &[], None)).await;
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    (system, port, client, watch, prometheus, follow)
}

/// Makes `service` read its signals from `prometheus` with the default queries.
fn analysed_by(config: &mut AgentConfig, service: &str, prometheus: &Prometheus) {
    let service = config
        .services
        .get_mut(&ServiceName::new(service).unwrap())
        .unwrap();
    service.metrics = MetricsProvider::Prometheus(PrometheusConfig {
        url: prometheus.url(),
        error_rate_query: default_error_rate_query(),
        p95_query: default_p95_query(),
        request_rate_query: default_request_rate_query(),
        timeout: Duration::from_secs(1),
    });
}

fn analysis() -> AnalysisOverride {
    AnalysisOverride {
        interval_ms: Some(INTERVAL_MS),
        failures_to_abort: Some(2),
        min_requests: Some(5),
        ..Default::default()
    }
}

fn canary(steps: Vec<u8>, step_secs: u64) -> Option<RolloutOptions> {
    Some(RolloutOptions {
        strategy: Some(Strategy::Canary { steps, step_secs }),
        analysis: Some(analysis()),
    })
}

/// The Analysed events of command `id` whose verdict had enough requests.
fn conclusive_analyses(watch: &EventWatch, id: uuid::Uuid) -> usize {
    watch
        .seen
        .iter()
        .filter(|e| e.command_id == Some(id))
        .filter(|e| {
            matches!(
                rollout_phase(e),
                Some(RolloutPhase::Analysed {
                    conclusive: true,
                    ..
                })
            )
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_verdict_rolls_back_a_canary_with_20_percent_errors() {
    let (system, port, client, mut watch, _prometheus, follow) =
        serving_v1_analysed_by_prometheus().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    // Long steps: only the analysis can end the first one.
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.2")],
            canary(vec![25, 100], 600),
        ),
    )
    .await;
    let event = watch
        .wait_for(Duration::from_secs(60), "the canary's abort", |e| {
            aborted(e).is_some()
        })
        .await;
    assert_error_rate_rollback_at_step_1(aborted(&event).unwrap(), 25);
    let outcome = watch.outcome(id, WAIT).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(reason.contains("error rate"), "{reason}");
    assert_eq!(serving, Some("1.0.0"));
    wait_no_traffic_to(&load, "2.0.0", 200, WAIT).await;
    let stats = load.stop().await;
    assert!(
        stats.by_version.get("2.0.0").copied().unwrap_or(0) > 0,
        "the canary did get traffic: {stats:?}"
    );
    follow.abort();
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_verdicts_pass_a_good_canary() {
    let (system, port, client, mut watch, _prometheus, follow) =
        serving_v1_analysed_by_prometheus().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        deploy("2.0.0", &[], canary(vec![25, 100], 10)),
    )
    .await;
    let outcome = watch.outcome(id, Duration::from_secs(60)).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { version: Some(v), .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    assert!(watch.seen.iter().all(|e| aborted(e).is_none()), "no abort");
    let conclusive = conclusive_analyses(&watch, id);
    assert!(
        conclusive >= 2,
        "Prometheus gave verdicts with enough requests ({conclusive})"
    );
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "{stats:?}");
    follow.abort();
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_gone_mid_step_gives_no_verdict_and_then_a_safe_rollback() {
    let (system, port, client, mut watch, mut prometheus, follow) =
        serving_v1_analysed_by_prometheus().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        deploy("2.0.0", &[], canary(vec![25, 100], 12)),
    )
    .await;
    watch
        .wait_for(Duration::from_secs(60), "a verdict from Prometheus", |e| {
            e.command_id == Some(id)
                && matches!(
                    rollout_phase(e),
                    Some(RolloutPhase::Analysed {
                        conclusive: true,
                        ..
                    })
                )
        })
        .await;
    let before = conclusive_analyses(&watch, id);
    prometheus.stop();
    let event = watch
        .wait_for(Duration::from_secs(60), "the abort", |e| {
            aborted(e).is_some() || matches!(rollout_phase(e), Some(RolloutPhase::Promoted))
        })
        .await;
    match aborted(&event) {
        Some(AbortReason::NoVerdict {
            provider,
            detail,
            step,
        }) => {
            assert_eq!(provider, format!("prometheus at {}", prometheus.url()));
            assert!(detail.contains("query failed"), "{detail}");
            assert!((1..=2).contains(&step), "{step}");
        }
        other => panic!("not a no-verdict abort: {other:?} ({event:?})"),
    }
    // At most the interval already answered when it went away.
    let after = conclusive_analyses(&watch, id);
    assert!(
        after <= before + 1,
        "no verdicts without Prometheus ({before} before, {after} after)"
    );
    let outcome = watch.outcome(id, WAIT).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(reason.contains("no verdict from prometheus"), "{reason}");
    assert_eq!(serving, Some("1.0.0"));
    wait_no_traffic_to(&load, "2.0.0", 200, WAIT).await;
    let stats = load.stop().await;
    assert!(stats.by_version.get("1.0.0").copied().unwrap_or(0) > 0);
    follow.abort();
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_verdict_rolls_back_a_docker_canary_with_20_percent_errors() {
    if !docker_ready(
        "prometheus docker canary",
        &["ferry-sample:1.0.0", "ferry-sample:2.0.0"],
        "scripts/build-sample-image",
    ) {
        return;
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let service = format!("pm-{}", &id[..8]);
    let _cleanup = ferry_e2e::docker::RemoveContainers(service.clone());
    let prometheus = Prometheus::start(Discovery::Docker(service.clone())).await;
    let mut system = System::without_controller();
    let port = free_port();
    let mut config = system.docker_agent_config("dev", &service, port);
    analysed_by(&mut config, &service, &prometheus);
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", &service).await;
    let image_deploy =
        |version: &str, env: &[(&str, &str)], rollout: Option<RolloutOptions>| Action::Deploy {
            release: sample_image_release(version, env),
            replicas: Some(2),
            health: None,
            rollout: rollout.map(Box::new),
            hotfix: false,
            approvals: Vec::new(),
        };
    let first = send_command(
        &client,
        &system.controller_key,
        "dev",
        &service,
        image_deploy("1.0.0", &[], None),
    )
    .await;
    let outcome = watch.outcome(first, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    let load = Load::start(port, 4, Duration::from_millis(2));
    let bad = send_command(
        &client,
        &system.controller_key,
        "dev",
        &service,
        image_deploy(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.2")],
            canary(vec![25, 100], 600),
        ),
    )
    .await;
    let event = watch
        .wait_for(Duration::from_secs(90), "the canary's abort", |e| {
            aborted(e).is_some()
        })
        .await;
    assert_error_rate_rollback_at_step_1(aborted(&event).unwrap(), 25);
    let outcome = watch.outcome(bad, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Failed { serving: Some(v), .. } if v.as_str() == "1.0.0"),
        "{outcome:?}"
    );
    wait_no_traffic_to(&load, "2.0.0", 200, WAIT).await;
    load.stop().await;
    system.shutdown().await;
}
