//! End-to-end tests of progressive delivery on the process runtime: canary
//! steps with analysis and automatic rollback, blue-green under load,
//! rolling batches, rollout control, and a rollback decided while NATS is
//! gone. Every test makes its own traffic through the stable port (analysis
//! needs requests) and uses short analysis intervals through the per-deploy
//! override; the product defaults stay the seed's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use ferry_e2e::metrics_scrape::{gauge, scrape_metrics};
use ferry_e2e::rollout::*;
use ferry_e2e::*;
use ferry_protocol::command::{Action, ActionKind};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::rollout::{
    AbortReason, AnalysisMode, AnalysisOverride, Metric, RolloutControl, RolloutOptions,
    RolloutPhase, Strategy,
};
use ferry_protocol::Envelope;
use futures::StreamExt;

/// Short analysis for tests: 500 ms intervals, abort after 2, 5 requests
/// for a verdict.
fn quick_analysis() -> AnalysisOverride {
    AnalysisOverride {
        interval_ms: Some(500),
        failures_to_abort: Some(2),
        min_requests: Some(5),
        ..Default::default()
    }
}

fn quick_canary() -> Strategy {
    Strategy::Canary {
        steps: vec![10, 35, 60, 85, 100],
        step_secs: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_of_a_good_release_passes_every_step_to_100_percent() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[],
            Some(RolloutOptions {
                strategy: Some(quick_canary()),
                analysis: Some(quick_analysis()),
            }),
        ),
    )
    .await;
    let outcome = watch.outcome(id, Duration::from_secs(60)).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { version: Some(v), .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    assert_eq!(
        wait_rollout_end(&mut watch, id).await,
        RolloutPhase::Promoted
    );
    let weights: Vec<u8> = watch
        .seen
        .iter()
        .filter(|e| e.command_id == Some(id))
        .filter_map(|e| match &e.body {
            EventBody::Rollout(r) if r.phase == RolloutPhase::StepStarted => {
                Some(r.status.weight_percent)
            }
            _ => None,
        })
        .collect();
    assert_eq!(weights, vec![10, 35, 60, 85, 100], "every step, in order");
    let analysed = watch
        .seen
        .iter()
        .filter(|e| matches!(rollout_phase(e), Some(RolloutPhase::Analysed { .. })))
        .count();
    assert!(
        analysed >= 5,
        "each step was analysed ({analysed} intervals)"
    );
    assert!(watch.seen.iter().all(|e| aborted(e).is_none()), "no abort");
    assert!(
        matches!(
            watch.seen.iter().rev().find_map(rollout_phase),
            Some(RolloutPhase::Promoted)
        ),
        "promoted last"
    );
    wait_no_traffic_to(&load, "1.0.0", 200, WAIT).await;
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "a good canary fails no request: {stats:?}");
    assert!(stats.by_version.get("2.0.0").copied().unwrap_or(0) > 0);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_20_percent_errors_is_rolled_back_at_its_first_step() {
    canary_with_20_percent_errors_is_rolled_back(AnalysisMode::Sequential).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixed_interval_rule_still_rolls_back_after_two_breached_intervals() {
    canary_with_20_percent_errors_is_rolled_back(AnalysisMode::Intervals).await;
}

async fn canary_with_20_percent_errors_is_rolled_back(mode: AnalysisMode) {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.2")],
            Some(RolloutOptions {
                // Long steps: only the analysis can end the first one.
                strategy: Some(Strategy::Canary {
                    steps: vec![10, 35, 60, 85, 100],
                    step_secs: 600,
                }),
                analysis: Some(AnalysisOverride {
                    mode: Some(mode),
                    ..quick_analysis()
                }),
            }),
        ),
    )
    .await;
    let event = watch
        .wait_for(Duration::from_secs(60), "the canary's abort", |e| {
            aborted(e).is_some()
        })
        .await;
    match aborted(&event).unwrap() {
        AbortReason::Threshold {
            breach,
            step,
            weight_percent,
            intervals,
        } => {
            assert!(
                matches!(breach.metric, Metric::ErrorRate | Metric::Availability),
                "{breach:?}"
            );
            assert_eq!(step, 1, "rolled back at its first step");
            assert_eq!(weight_percent, 10);
            match mode {
                AnalysisMode::Intervals => {
                    assert_eq!(breach.metric, Metric::ErrorRate);
                    assert!(breach.value > 5.0, "{breach:?}");
                    assert_eq!(breach.threshold, 5.0);
                    assert_eq!(intervals, 2);
                    assert_eq!(breach.evidence, None);
                }
                AnalysisMode::Sequential => {
                    let evidence = breach
                        .evidence
                        .as_ref()
                        .expect("a sequential verdict's evidence");
                    assert!(evidence.requests >= 5, "min_requests holds: {evidence:?}");
                    assert!(
                        evidence.bad > 0 && evidence.confidence_percent >= 99.0,
                        "{evidence:?}"
                    );
                    assert_eq!(
                        evidence.stable_value,
                        Some(0.0),
                        "stable measured beside it"
                    );
                }
            }
        }
        other => panic!("aborted for another reason: {other:?}"),
    }
    let outcome = watch.outcome(id, WAIT).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(reason.contains("error rate"), "{reason}");
    assert!(reason.contains("step 1"), "{reason}");
    assert_eq!(serving, Some("1.0.0"));
    wait_no_traffic_to(&load, "2.0.0", 200, WAIT).await;
    let stats = load.stop().await;
    assert!(
        stats.by_version.get("2.0.0").copied().unwrap_or(0) > 0,
        "the canary did get traffic: {stats:?}"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_p95_exceeds_the_threshold_is_rolled_back() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 8, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[("SAMPLE_LATENCY_MS", "400")],
            Some(RolloutOptions {
                strategy: Some(Strategy::Canary {
                    steps: vec![20, 100],
                    step_secs: 600,
                }),
                analysis: Some(AnalysisOverride {
                    p95_ms: Some(200.0),
                    p99_ms: Some(5000.0),
                    min_requests: Some(3),
                    ..quick_analysis()
                }),
            }),
        ),
    )
    .await;
    let event = watch
        .wait_for(Duration::from_secs(60), "the canary's abort", |e| {
            aborted(e).is_some()
        })
        .await;
    match aborted(&event).unwrap() {
        AbortReason::Threshold { breach, step, .. } => {
            assert_eq!(breach.metric, Metric::P95, "{breach:?}");
            assert!(breach.value > 200.0, "{breach:?}");
            assert_eq!(step, 1);
        }
        other => panic!("aborted for another reason: {other:?}"),
    }
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Failed { reason, .. } if reason.contains("p95")),
        "{outcome:?}"
    );
    wait_no_traffic_to(&load, "2.0.0", 100, WAIT).await;
    load.stop().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_under_load_fails_no_request() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    // Traffic flows before the switch.
    let deadline = Instant::now() + WAIT;
    while load.stats().total < 100 {
        assert!(Instant::now() < deadline, "load generator got no answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[],
            Some(RolloutOptions {
                strategy: Some(Strategy::BlueGreen {
                    keep_old_for_secs: 30,
                }),
                analysis: None,
            }),
        ),
    )
    .await;
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { version: Some(v), .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    wait_no_traffic_to(&load, "1.0.0", 200, WAIT).await;

    // The old set was kept: a rollback is a switch back, still under load.
    let rollback = send(
        &system,
        &client,
        Action::Rollback {
            to: ferry_protocol::command::RollbackTarget::Previous,
            force: false,
            dry_run: false,
        },
    )
    .await;
    let outcome = watch.outcome(rollback, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { version: Some(v), .. } if v.as_str() == "1.0.0"),
        "{outcome:?}"
    );
    assert!(
        watch.seen.iter().any(|e| e.command_id == Some(rollback)
            && matches!(&e.body, EventBody::Progress { step, .. } if step.contains("kept previous set"))),
        "the rollback switched back to the kept set"
    );
    wait_no_traffic_to(&load, "2.0.0", 200, WAIT).await;
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "no failed request: {stats:?}");
    assert!(stats.by_version.get("2.0.0").copied().unwrap_or(0) > 0);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_goes_batch_by_batch_gated_on_health() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 2, Duration::from_millis(5));
    let mut action = deploy(
        "2.0.0",
        &[],
        Some(RolloutOptions {
            strategy: Some(Strategy::Rolling {
                batch_size: 1,
                max_unavailable: 0,
            }),
            analysis: None,
        }),
    );
    if let Action::Deploy { replicas, .. } = &mut action {
        *replicas = Some(3);
    }
    let id = send(&system, &client, action).await;
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { version: Some(v), replicas: 3, .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    assert_eq!(
        wait_rollout_end(&mut watch, id).await,
        RolloutPhase::Promoted
    );
    let batches = watch
        .seen
        .iter()
        .filter(|e| e.command_id == Some(id))
        .filter(|e| matches!(rollout_phase(e), Some(RolloutPhase::StepStarted)))
        .count();
    assert_eq!(batches, 3, "three batches of one");
    // A batch that never becomes healthy stops the update; 2.0.0 keeps serving.
    let bad = send(
        &system,
        &client,
        deploy(
            "3.0.0",
            &[("SAMPLE_HEALTHY", "false")],
            Some(RolloutOptions {
                strategy: Some(Strategy::Rolling {
                    batch_size: 1,
                    max_unavailable: 0,
                }),
                analysis: None,
            }),
        ),
    )
    .await;
    let outcome = watch.outcome(bad, Duration::from_secs(60)).await;
    assert!(
        matches!(&outcome.body, EventBody::Failed { serving: Some(v), .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    wait_serving(port, "2.0.0", WAIT).await;
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "{stats:?}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_control_pauses_and_promotes_a_canary() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 2, Duration::from_millis(5));
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[],
            Some(RolloutOptions {
                strategy: Some(Strategy::Canary {
                    steps: vec![10, 50, 100],
                    step_secs: 2,
                }),
                analysis: Some(quick_analysis()),
            }),
        ),
    )
    .await;
    watch
        .wait_for(WAIT, "the first step", |e| {
            matches!(rollout_phase(e), Some(RolloutPhase::StepStarted))
        })
        .await;
    let pause = send(
        &system,
        &client,
        Action::Rollout {
            control: RolloutControl::Pause,
        },
    )
    .await;
    let outcome = watch.outcome(pause, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { action: ActionKind::Rollout, detail, .. } if detail.contains("paused at step 1")),
        "{outcome:?}"
    );
    // Paused well past the step's 2 s: no second step starts.
    let second_step = tokio::time::timeout(
        Duration::from_secs(4),
        watch.wait_for(Duration::from_secs(10), "a second step", |e| {
            matches!(&e.body, EventBody::Rollout(r)
                if r.phase == RolloutPhase::StepStarted && r.status.step == 2)
        }),
    )
    .await;
    assert!(second_step.is_err(), "a paused rollout moved on");
    let promote = send(
        &system,
        &client,
        Action::Rollout {
            control: RolloutControl::Promote,
        },
    )
    .await;
    let outcome = watch.outcome(promote, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { version: Some(v), .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    // No rollout now: a control action fails with a clear reason.
    let late = send(
        &system,
        &client,
        Action::Rollout {
            control: RolloutControl::Abort,
        },
    )
    .await;
    let outcome = watch.outcome(late, WAIT).await;
    assert!(
        matches!(&outcome.body, EventBody::Failed { reason, .. } if reason.contains("no rollout")),
        "{outcome:?}"
    );
    load.stop().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_stopped_mid_canary_the_agent_rolls_back_and_reports_it_after_nats_returns() {
    let (mut system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let id = send(
        &system,
        &client,
        deploy(
            "2.0.0",
            &[("SAMPLE_ERROR_RATE", "0.2")],
            Some(RolloutOptions {
                strategy: Some(Strategy::Canary {
                    steps: vec![10, 35, 60, 85, 100],
                    step_secs: 600,
                }),
                analysis: Some(AnalysisOverride {
                    // Long enough that NATS is surely gone before the verdict.
                    interval_ms: Some(1500),
                    mode: Some(AnalysisMode::Intervals),
                    ..quick_analysis()
                }),
            }),
        ),
    )
    .await;
    watch
        .wait_for(WAIT, "the canary's first step", |e| {
            e.command_id == Some(id) && matches!(rollout_phase(e), Some(RolloutPhase::StepStarted))
        })
        .await;
    system.nats.kill();
    let killed = Instant::now();

    // The agent decides alone: the canary gets traffic, then none.
    let deadline = Instant::now() + WAIT;
    while load.stats().by_version.get("2.0.0").copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the canary never got traffic");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_no_traffic_to(&load, "2.0.0", 300, WAIT).await;
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "the rollback came before two analysis intervals; NATS was not gone long enough to prove anything"
    );

    system.nats.restart();
    // The outcome reaches the events stream once NATS is back, stored once
    // (retries carry one `Nats-Msg-Id`).
    let client = system.nats.client().await;
    let js = jetstream::new(client.clone());
    let stored_outcomes = || async {
        let stream = js.get_stream("FERRY_EVENTS").await.expect("events stream");
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: "ferry.v1.evt.dev.web.outcome".into(),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        let mut outcomes = Vec::new();
        while let Some(Ok(message)) = batch.next().await {
            let event = Envelope::<ServiceEvent>::decode(&message.payload)
                .expect("event")
                .data;
            if event.command_id == Some(id) {
                outcomes.push(event.body);
            }
        }
        outcomes
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_outcomes().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the outcome never reached the events stream"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A quiet window past the agent's outcome retries: still exactly one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let outcomes = stored_outcomes().await;
    assert_eq!(
        outcomes.len(),
        1,
        "the outcome stored more than once: {outcomes:?}"
    );
    let EventBody::Failed { reason, .. } = &outcomes[0] else {
        panic!("expected a failed outcome, got {:?}", outcomes[0]);
    };
    assert!(reason.contains("error rate"), "{reason}");
    assert!(reason.contains("step 1"), "{reason}");
    load.stop().await;
    system.shutdown().await;
}

/// Runs `ferry monitor` against the system's NATS (stdout is a pipe, so it
/// prints one line per service and interval).
async fn monitor(system: &System, args: &[&str]) -> std::process::Output {
    let mut all = vec!["monitor", "-e", "dev"];
    all.extend_from_slice(args);
    system.cli_async(&all).await
}

fn live_rates(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|l| l.contains("service=web"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("req_per_sec="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_monitor_shows_live_numbers_and_exits_non_zero_after_a_breach() {
    let (system, port, client, mut watch) = serving_v1().await;
    let load = Load::start(port, 2, Duration::from_millis(5));

    let out = monitor(&system, &["-d", "4", "-i", "1"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "healthy service: {stdout}");
    assert!(stdout.contains("version=1.0.0"), "{stdout}");
    assert!(
        live_rates(&stdout).iter().any(|r| *r > 1.0),
        "live request rates: {stdout}"
    );
    assert!(stdout.contains("summary"), "{stdout}");

    let id = send(
        &system,
        &client,
        deploy("2.0.0", &[("SAMPLE_ERROR_RATE", "0.3")], None),
    )
    .await;
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "2.0.0", WAIT).await;
    let out = monitor(&system, &["-d", "4", "-i", "1", "-t", "10"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "breach exits 5: {stdout}");
    assert!(stdout.contains("version=2.0.0"), "{stdout}");
    assert!(stdout.contains("BREACHED"), "{stdout}");
    assert!(stdout.contains("error rate"), "{stdout}");
    load.stop().await;
    system.shutdown().await;
}

fn alert(e: &ServiceEvent, metric: Metric, raised: bool) -> bool {
    matches!(&e.body, EventBody::Alert(a) if a.breach.metric == metric && a.raised == raised)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_alerts_fire_once_per_transition() {
    let mut system = System::without_controller();
    let metrics_port = free_port();
    system.metrics_port = Some(metrics_port);
    system.start_controller().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let id = send(&system, &client, deploy("1.0.0", &[], None)).await;
    assert!(matches!(
        watch.outcome(id, WAIT).await.body,
        EventBody::Succeeded { .. }
    ));
    let load = Load::start(port, 2, Duration::from_millis(5));

    let web = [("environment", "dev"), ("service", "web")];
    let deadline = Instant::now() + WAIT;
    let (text, scrape) = loop {
        if let Some((text, scrape)) = scrape_metrics(metrics_port).await {
            let live =
                gauge(&scrape, "ferry_service_requests_per_second", &web).is_some_and(|r| r > 1.0);
            let healthy = gauge(&scrape, "ferry_service_replicas_healthy", &web) == Some(2.0);
            if live && healthy {
                break (text, scrape);
            }
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed web's traffic"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every sample line became a sample: nothing was skipped as unparseable.
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    assert_eq!(scrape.samples.len(), sample_lines, "{text}");
    assert_eq!(
        gauge(&scrape, "ferry_agent_up", &[("environment", "dev")]),
        Some(1.0)
    );
    assert_eq!(
        gauge(&scrape, "ferry_agent_up", &[("environment", "production")]),
        Some(0.0),
        "an environment without an agent is down"
    );
    assert_eq!(
        gauge(
            &scrape,
            "ferry_service_version_info",
            &[("service", "web"), ("version", "1.0.0")]
        ),
        Some(1.0)
    );
    for (name, labels) in [
        ("ferry_service_replicas_desired", vec![]),
        ("ferry_service_error_ratio", vec![]),
        ("ferry_service_latency_seconds", vec![("quantile", "0.95")]),
        ("ferry_service_latency_seconds", vec![("quantile", "0.99")]),
        ("ferry_service_availability_ratio", vec![]),
        ("ferry_service_rollout_state", vec![("state", "none")]),
        ("ferry_service_alert", vec![("metric", "error_rate")]),
    ] {
        let labels: Vec<(&str, &str)> = web.iter().copied().chain(labels).collect();
        assert!(
            gauge(&scrape, name, &labels).is_some(),
            "{name} missing:\n{text}"
        );
    }

    // A running service that starts failing raises one alert; it clears
    // when a good version replaces it.
    let id = send(
        &system,
        &client,
        deploy("2.0.0", &[("SAMPLE_ERROR_RATE", "0.3")], None),
    )
    .await;
    assert!(matches!(
        watch.outcome(id, WAIT).await.body,
        EventBody::Succeeded { .. }
    ));
    watch
        .wait_for(WAIT, "an error-rate alert", |e| {
            alert(e, Metric::ErrorRate, true)
        })
        .await;
    let id = send(&system, &client, deploy("3.0.0", &[], None)).await;
    assert!(matches!(
        watch.outcome(id, WAIT).await.body,
        EventBody::Succeeded { .. }
    ));
    watch
        .wait_for(WAIT, "the alert cleared", |e| {
            alert(e, Metric::ErrorRate, false)
        })
        .await;
    let raised = watch
        .seen
        .iter()
        .filter(|e| alert(e, Metric::ErrorRate, true))
        .count();
    assert_eq!(raised, 1, "one alert per transition, not per interval");
    load.stop().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hotfix_release_takes_the_short_canary_and_ferry_rollout_acts_on_it() {
    let mut system = System::start().await;
    let port = free_port();
    let mut config = system.agent_config("dev", &[("web", port)]);
    for service in config.services.values_mut() {
        // The service's own analysis: a hotfix step lasts two intervals.
        service.analysis.interval = Duration::from_secs(2);
        service.analysis.min_requests = 5;
    }
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    system.publish_release("web", "1.0.0", &[]).await;
    watch
        .wait_for(WAIT, "1.0.0 deployed", |e| {
            matches!(&e.body, EventBody::Succeeded { version: Some(v), .. } if v.as_str() == "1.0.0")
        })
        .await;
    wait_serving(port, "1.0.0", WAIT).await;
    let load = Load::start(port, 2, Duration::from_millis(5));

    let sample = bin("ferry-sample");
    let out = system
        .cli_async(&[
            "release",
            "publish",
            "--service",
            "web",
            "--version",
            "1.0.1",
            "--artifact",
            sample.to_str().unwrap(),
            "--hotfix",
        ])
        .await;
    assert_ok(&out, "ferry release publish --hotfix");
    let step = watch
        .wait_for(
            WAIT,
            "the hotfix canary's first step",
            |e| matches!(&e.body, EventBody::Rollout(r) if r.phase == RolloutPhase::StepStarted),
        )
        .await;
    match &step.body {
        EventBody::Rollout(r) => {
            assert_eq!(r.status.steps, 2, "a short canary: {r:?}");
            assert_eq!(r.status.weight_percent, 25);
        }
        _ => unreachable!(),
    }
    let out = system
        .cli_async(&["rollout", "pause", "web", "-e", "dev"])
        .await;
    assert_ok(&out, "ferry rollout pause");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("paused at step 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // `ferry status` shows where the rollout is.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = system
            .cli_async(&["status", "-e", "dev", "--output", "json"])
            .await;
        assert_ok(&out, "ferry status");
        let rows = json(&out);
        let rollout = rows
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["service"] == "web"))
            .map(|r| r["rollout"].clone())
            .unwrap_or_default();
        if rollout["state"] == "paused" {
            assert_eq!(rollout["version"], "1.0.1");
            assert_eq!(rollout["step"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the paused rollout: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Paused, the hotfix is still analysed.
    watch
        .wait_for(WAIT, "an analysis of the hotfix", |e| {
            matches!(rollout_phase(e), Some(RolloutPhase::Analysed { .. }))
        })
        .await;
    let out = system
        .cli_async(&["rollout", "abort", "web", "-e", "dev"])
        .await;
    assert_ok(&out, "ferry rollout abort");
    let outcome = watch
        .wait_for(WAIT, "the hotfix's outcome", |e| {
            matches!(&e.body, EventBody::Failed { version: Some(v), .. } if v.as_str() == "1.0.1")
        })
        .await;
    assert!(
        matches!(&outcome.body, EventBody::Failed { reason, serving: Some(s), .. }
            if reason.contains("aborted by an operator at step 1") && s.as_str() == "1.0.0"),
        "{outcome:?}"
    );
    wait_no_traffic_to(&load, "1.0.1", 100, WAIT).await;
    load.stop().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_deploy_overrides_the_strategy_and_wait_shows_each_canary_step() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("acceptance", port).await;
    system.publish_release("web", "1.0.0", &[]).await;
    system.publish_release("web", "2.0.0", &[]).await;
    let out = system
        .cli_async(&["deploy", "web", "1.0.0", "-e", "acceptance", "--wait"])
        .await;
    assert_ok(&out, "ferry deploy 1.0.0");
    let load = Load::start(port, 2, Duration::from_millis(5));
    let out = system
        .cli_async(&[
            "deploy",
            "web",
            "2.0.0",
            "-e",
            "acceptance",
            "--strategy",
            "canary",
            "--steps",
            "50,100",
            "--step-secs",
            "1",
            "--analysis-interval",
            "500ms",
            "--wait",
        ])
        .await;
    assert_ok(&out, "ferry deploy --strategy canary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("canary 2.0.0 step 1/2 (50%): step started"),
        "{stdout}"
    );
    assert!(
        stdout.contains("canary 2.0.0 step 2/2 (100%): step started"),
        "{stdout}"
    );
    assert!(stdout.contains("passed 2 steps"), "{stdout}");
    let bad = system
        .cli_async(&[
            "deploy",
            "web",
            "2.0.0",
            "-e",
            "acceptance",
            "--strategy",
            "canary",
            "--steps",
            "60,20",
        ])
        .await;
    assert_eq!(bad.status.code(), Some(2), "steps must rise: {bad:?}");
    load.stop().await;
    system.shutdown().await;
}
