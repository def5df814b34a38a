//! Browser tests of the web dashboard: a real headless Chromium, driven
//! through chromedriver (WebDriver) by fantoccini, against a real system
//! (nats-server, the controller serving the dashboard, agents running the
//! sample). The grid shows the three environments after a release; a
//! canary's timeline and analysis values change on the page without a
//! reload; an abort without the operator token is refused and with it rolls
//! back; the approvals view shows a waiting promotion and the exact
//! `ferry approve` that approves it; while NATS is down the page keeps its
//! data, marked stale. Each view is saved as a PNG under
//! `target/dashboard-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "dashboard/browser.rs"]
mod browser;

use std::collections::BTreeMap;
use std::time::Duration;

use browser::Browser;
use ferry_controller::config::{ReviewerSettings, StageSettings};
use ferry_controller::dashboard::{hash_token, OperatorSettings};
use ferry_e2e::rollout::*;
use ferry_e2e::*;
use ferry_protocol::event::EventBody;
use ferry_protocol::rollout::{AnalysisOverride, RolloutOptions, RolloutPhase, Strategy};
use ferry_protocol::SigningKey;

const TOKEN: &str = "op-token-for-alice-7f3a";

/// A system whose controller serves the dashboard on a free port, with
/// `operators` (name, token); returns the dashboard's base URL.
fn with_dashboard(system: &mut System, operators: &[(&str, &str)]) -> String {
    let port = free_port();
    system.controller_config.dashboard_listen = Some(format!("127.0.0.1:{port}"));
    system.controller_config.dashboard.operators = operators
        .iter()
        .map(|(name, token)| OperatorSettings {
            name: (*name).into(),
            token_sha256: hash_token(token),
        })
        .collect();
    format!("http://127.0.0.1:{port}")
}

fn auto_stage() -> StageSettings {
    StageSettings {
        auto_deploy: Some(true),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grid_shows_the_three_environments_after_a_release() {
    let mut system = System::without_controller();
    let base = with_dashboard(&mut system, &[]);
    // Every environment deploys each release by itself.
    system.controller_config.pipeline = BTreeMap::from([
        ("acceptance".to_owned(), auto_stage()),
        ("production".to_owned(), auto_stage()),
    ]);
    system.start_controller().await;
    for env in ENVIRONMENTS {
        let config = system.agent_config(env, &[("web", free_port()), ("api", free_port())]);
        system.start_agent_with(config).await;
    }
    system.publish_release("web", "1.4.2", &[]).await;
    system.publish_release("api", "2.0.1", &[]).await;
    for env in ENVIRONMENTS {
        for (service, version) in [("web", "1.4.2"), ("api", "2.0.1")] {
            wait_status(&system, env, service, "the release running", |r| {
                r["version"] == version
                    && r["state"] == "running"
                    && r["replicas_healthy"] == r["replicas_desired"]
            })
            .await;
        }
    }

    // And a canary under way in dev, so the grid shows a rollout too.
    let client = system.nats.client().await;
    send(&system, &client, canary_of_v2(vec![25, 100], 600)).await;

    let browser = Browser::start(1440, 900).await;
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_text("#grid", "the canary in dev", |t| {
            t.contains("canary 2.0.0: step 1/2, 25% of traffic")
        })
        .await;
    let grid = browser
        .wait_text("#grid", "every environment with both services", |t| {
            ENVIRONMENTS.iter().all(|e| t.contains(e))
                && t.matches("1.4.2").count() == 3
                && t.matches("2.0.1").count() == 3
                && t.matches(" healthy").count() == 7
        })
        .await;
    assert!(grid.contains("running"), "{grid}");
    assert_eq!(grid.to_lowercase().matches("agent up").count(), 3, "{grid}");
    // Without operators the page says it is read-only and offers no actions.
    let mode = browser
        .wait_text("#mode", "the read-only notice", |t| t.contains("Read-only"))
        .await;
    assert!(mode.contains("no operators are configured"), "{mode}");
    assert!(
        !browser.displayed("#token-button").await,
        "no token to enter"
    );
    browser.screenshot("grid").await;

    // A phone's width: one card per service, still every environment.
    browser.resize(390, 844).await;
    browser
        .wait_text("#grid", "the grid at phone width", |t| {
            t.matches("1.4.2").count() == 3
        })
        .await;
    browser.screenshot("grid-phone").await;
    browser.resize(1440, 900).await;

    browser.goto(&format!("{base}/#/service/web")).await;
    let where_ = browser
        .wait_text("#where", "web in every environment", |t| {
            ENVIRONMENTS.iter().all(|e| t.contains(e)) && t.matches("1.4.2").count() == 3
        })
        .await;
    assert!(
        !where_.contains("Roll back"),
        "a read-only page has no actions: {where_}"
    );
    let history = browser
        .wait_text("#deployments", "three deployments", |t| {
            t.matches("succeeded").count() >= 3
        })
        .await;
    assert!(history.contains("deploy"), "{history}");
    browser.screenshot("service-read-only").await;
    browser.close().await;
    system.shutdown().await;
}

/// dev serving web 1.0.0 behind a controller with the dashboard, and a
/// steady load on the stable port.
async fn dev_serving_v1(
    operators: &[(&str, &str)],
) -> (System, String, async_nats::Client, EventWatch, Load) {
    let mut system = System::without_controller();
    let base = with_dashboard(&mut system, operators);
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
    wait_serving(port, "1.0.0", WAIT).await;
    let load = Load::start(port, 3, Duration::from_millis(3));
    (system, base, client, watch, load)
}

/// A canary deploy of web 2.0.0 with `steps` of `step_secs`, analysed every
/// 700 ms from 5 requests on.
fn canary_of_v2(steps: Vec<u8>, step_secs: u64) -> ferry_protocol::command::Action {
    deploy(
        "2.0.0",
        &[],
        Some(RolloutOptions {
            strategy: Some(Strategy::Canary { steps, step_secs }),
            analysis: Some(AnalysisOverride {
                interval_ms: Some(700),
                min_requests: Some(5),
                ..Default::default()
            }),
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_canary_the_service_page_timeline_and_analysis_change_without_a_reload() {
    let (system, base, client, mut watch, load) = dev_serving_v1(&[("alice", TOKEN)]).await;
    let browser = Browser::start(1440, 1000).await;
    browser.goto(&format!("{base}/#/service/web")).await;
    browser
        .wait_text("#where", "web 1.0.0 in dev", |t| t.contains("1.0.0"))
        .await;
    // Set in the page: a reload would lose it.
    browser
        .execute("window.ferryTestMark = 'same page'; return null;")
        .await;

    let id = send(&system, &client, canary_of_v2(vec![20, 50, 100], 6)).await;

    let first = browser
        .wait_text(".step.current", "step 1 highlighted", |t| {
            t.contains("Step 1 of 3") && t.contains("20%")
        })
        .await;
    assert!(first.contains("in progress"), "{first}");
    let analysis = browser
        .wait_text("#analysis", "an analysis against its thresholds", |t| {
            t.contains("pass")
                && t.contains("≤ 5.0%")
                && t.contains("≥ 95.0%")
                && t.contains("≤ 2000 ms")
        })
        .await;
    let rows_at_step_1 = browser.count("#analysis tbody tr").await;
    browser.screenshot("service-canary").await;

    let second = browser
        .wait_text(".step.current", "step 2 highlighted", |t| {
            t.contains("Step 2 of 3") && t.contains("50%")
        })
        .await;
    assert!(second.contains("in progress"), "{second}");
    let later = browser
        .wait_text("#analysis", "more analyses", |t| {
            t != analysis && t.contains("2 (50%)")
        })
        .await;
    assert!(
        browser.count("#analysis tbody tr").await > rows_at_step_1,
        "{later}"
    );
    let done = browser
        .wait_text(".rollout", "the rollout promoted", |t| {
            t.contains("promoted")
        })
        .await;
    assert!(done.contains("Step 3 of 3 · done"), "{done}");
    assert_eq!(
        wait_rollout_end(&mut watch, id).await,
        RolloutPhase::Promoted
    );
    assert_eq!(
        browser
            .execute("return window.ferryTestMark || null;")
            .await,
        serde_json::json!("same page"),
        "the page was never reloaded"
    );
    browser.screenshot("service-promoted").await;
    browser.close().await;
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "{stats:?}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_without_the_token_is_refused_and_with_it_rolls_back() {
    let (system, base, client, mut watch, load) = dev_serving_v1(&[("alice", TOKEN)]).await;
    // One long step: only an operator ends it.
    let id = send(&system, &client, canary_of_v2(vec![25, 100], 600)).await;
    let browser = Browser::start(1440, 1000).await;
    browser.goto(&format!("{base}/#/service/web")).await;
    browser
        .wait_text(".step.current", "the canary's first step", |t| {
            t.contains("25%")
        })
        .await;
    assert!(
        browser.text("#mode").await.is_empty(),
        "an operator is configured: not read-only"
    );

    // Without a token: refused, and the rollout goes on.
    browser.click("button[data-action=abort]").await;
    let refusal = browser
        .wait_text("#toast", "the refusal", |t| t.starts_with("401"))
        .await;
    assert!(refusal.contains("needs an operator token"), "{refusal}");
    browser.screenshot("abort-refused").await;
    let row = status_row(&system, "dev", "web").await.unwrap();
    assert_eq!(row["rollout"]["state"], "progressing", "{row}");

    // A wrong token, straight over HTTP: refused too.
    let http = reqwest::Client::new();
    let wrong = http
        .post(format!("{base}/api/actions"))
        .header("Authorization", "Bearer not-the-token")
        .header("Content-Type", "application/json")
        .body(r#"{"action":"abort","environment":"dev","service":"web"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    // With alice's token: the abort is issued and the canary rolls back.
    browser.click("#token-button").await;
    browser.type_into("#token-input", TOKEN).await;
    browser.click("#token-form button[value=save]").await;
    browser.click("button[data-action=abort]").await;
    let issued = browser
        .wait_text("#toast", "the abort issued", |t| {
            t.contains("issued as command")
        })
        .await;
    assert!(issued.contains("(as alice)"), "{issued}");
    let end = wait_rollout_end(&mut watch, id).await;
    assert!(matches!(end, RolloutPhase::Aborted { .. }), "{end:?}");
    let banner = browser
        .wait_text(".abort", "the abort and its reason", |t| {
            t.contains("Aborted and rolled back")
        })
        .await;
    assert!(
        banner.to_lowercase().contains("operator"),
        "the reason: {banner}"
    );
    browser
        .wait_text("#where", "1.0.0 serving again", |t| {
            t.contains("1.0.0") && !t.contains("2.0.0")
        })
        .await;
    browser.screenshot("abort-rolled-back").await;

    // Audited with the operator's name, as the CLI's actions are.
    browser
        .goto(&format!("{base}/#/audit?actor=alice%20(dashboard)"))
        .await;
    let audit = browser
        .wait_text("#audit", "the abort in the audit trail", |t| {
            t.contains("alice (dashboard)")
        })
        .await;
    assert!(audit.contains("rollout"), "{audit}");
    browser.screenshot("audit").await;
    browser.close().await;
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "{stats:?}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvals_view_shows_the_waiting_promotion_and_its_ferry_approve_command() {
    let mut system = System::without_controller();
    let base = with_dashboard(&mut system, &[("alice", TOKEN)]);
    let (alice, bob) = (SigningKey::generate(), SigningKey::generate());
    let alice_file = system.dir.path().join("alice.nk");
    std::fs::write(&alice_file, alice.seed().unwrap()).unwrap();
    let reviewers = [("alice", &alice), ("bob", &bob)]
        .iter()
        .map(|(name, key)| ReviewerSettings {
            name: (*name).into(),
            key: key.public_key(),
        })
        .collect();
    system.controller_config.pipeline = BTreeMap::from([(
        "acceptance".to_owned(),
        StageSettings {
            auto_deploy: Some(true),
            approvals_required: 1,
            reviewers,
            ..Default::default()
        },
    )]);
    system.start_controller().await;
    for env in ["dev", "acceptance"] {
        let mut config = system.agent_config(env, &[("web", free_port())]);
        if env == "acceptance" {
            config.approvals_required = 1;
            config.reviewer_keys = vec![alice.public_key(), bob.public_key()];
        }
        system.start_agent_with(config).await;
    }
    system.publish_release("web", "1.0.0", &[]).await;
    wait_status(&system, "dev", "web", "1.0.0 in dev", |r| {
        r["version"] == "1.0.0"
    })
    .await;

    let browser = Browser::start(1440, 900).await;
    browser.goto(&format!("{base}/#/approvals")).await;
    let card = browser
        .wait_text("#approvals", "the waiting promotion", |t| {
            t.contains("web 1.0.0 → acceptance")
        })
        .await;
    assert!(card.contains("0 of 1 approvals"), "{card}");
    assert!(
        card.contains("alice") && card.contains("bob"),
        "who may approve: {card}"
    );
    let command = browser.text(".approve-command").await;
    assert_eq!(command, "ferry approve web 1.0.0 -e acceptance");
    assert_eq!(browser.text("#approvals-count").await, "1");
    browser.screenshot("approvals").await;

    // The command, as shown, with alice's key: the promotion goes through
    // and leaves the page without a reload.
    let mut args: Vec<&str> = command.split(' ').skip(1).collect();
    let key = alice_file.to_str().unwrap();
    args.extend(["--key", key, "--name", "alice"]);
    assert_ok(&system.cli_async(&args).await, "the page's ferry approve");
    browser
        .wait_text("#approvals", "the approved promotion gone", |t| {
            !t.contains("→ acceptance")
        })
        .await;
    wait_status(&system, "acceptance", "web", "1.0.0 in acceptance", |r| {
        r["version"] == "1.0.0"
    })
    .await;
    browser.close().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_nats_is_down_the_page_keeps_its_data_marked_stale() {
    let mut system = System::without_controller();
    let base = with_dashboard(&mut system, &[]);
    system.start_controller().await;
    system.start_agent("dev", free_port()).await;
    system.publish_release("web", "1.0.0", &[]).await;
    wait_status(&system, "dev", "web", "1.0.0 in dev", |r| {
        r["version"] == "1.0.0"
    })
    .await;

    let browser = Browser::start(1440, 900).await;
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_text("#grid", "web 1.0.0", |t| t.contains("1.0.0"))
        .await;
    browser
        .wait_text("#connection", "live", |t| t == "live")
        .await;

    system.nats.kill();
    let badge = browser
        .wait_text("#connection", "the stale mark", |t| {
            t.starts_with("stale since")
        })
        .await;
    assert!(
        browser
            .text("#mode")
            .await
            .contains("lost its NATS connection"),
        "{badge}"
    );
    // A new look at the view is answered from the last good copy.
    browser.goto(&format!("{base}/#/service/web")).await;
    browser.goto(&format!("{base}/#/")).await;
    let grid = browser
        .wait_text("#grid", "the last data", |t| t.contains("1.0.0"))
        .await;
    assert!(grid.contains("dev"), "{grid}");
    browser.screenshot("stale").await;

    system.nats.restart();
    browser
        .wait_text_within(Duration::from_secs(60), "#connection", "live again", |t| {
            t == "live"
        })
        .await;
    browser.close().await;
    system.shutdown().await;
}
