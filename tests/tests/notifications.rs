//! End-to-end test of notifications: a real HTTP receiver (axum on
//! loopback) standing in for Slack, PagerDuty and a webhook consumer, and a
//! real SMTP server (mailin-embedded on loopback) for email. A failing deploy
//! and a good one go through the controller; the test checks each format and
//! the webhook's HMAC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_controller::notify::{
    EmailSettings, NotifyConfig, PagerDutySettings, RouteSettings, SlackSettings, WebhookSettings,
};
use ferry_e2e::*;
use ferry_protocol::command::ActionKind;
use ferry_protocol::event::EventBody;
use hmac::{KeyInit, Mac};
use serde_json::Value;

const ROUTING_KEY: &str = "R0UTING0KEY0FOR0TESTS0000000000";
const HMAC_SECRET: &str = "webhook-secret-0123456789abcdef";

#[derive(Clone, Default)]
struct Mailbox {
    current: Vec<u8>,
    mails: Arc<Mutex<Vec<String>>>,
}

impl mailin_embedded::Handler for Mailbox {
    fn data_start(&mut self, _: &str, _: &str, _: bool, _: &[String]) -> mailin_embedded::Response {
        self.current.clear();
        mailin_embedded::response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> mailin_embedded::Response {
        let mail = String::from_utf8_lossy(&self.current).into_owned();
        self.mails.lock().unwrap().push(mail);
        mailin_embedded::response::OK
    }
}

/// A real SMTP server on 127.0.0.1 (its thread ends with the test process).
fn smtp_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let mailbox = Mailbox::default();
    let mails = mailbox.mails.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut server = mailin_embedded::Server::new(mailbox);
    server
        .with_name("smtp.test")
        .with_ssl(mailin_embedded::SslConfig::None)
        .unwrap()
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        if let Err(e) = server.serve() {
            panic!("the SMTP server stopped: {e}");
        }
    });
    (port, mails)
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_and_a_good_production_deploy_reach_slack_pagerduty_the_webhook_and_email() {
    let (http, inbox) = http_receiver().await;
    let (smtp, mails) = smtp_server();
    let base = format!("http://127.0.0.1:{http}");
    let slack_url = format!("{base}/slack");

    let mut system = System::without_controller();
    system.controller_config.environments = vec!["production".into()];
    system.controller_config.notify = NotifyConfig {
        slack: Some(SlackSettings {
            webhook_url: Some(slack_url.clone()),
            ..Default::default()
        }),
        pagerduty: Some(PagerDutySettings {
            routing_key: Some(ROUTING_KEY.into()),
            events_url: Some(format!("{base}/pagerduty")),
            ..Default::default()
        }),
        email: Some(EmailSettings {
            smtp_host: "127.0.0.1".into(),
            smtp_port: Some(smtp),
            starttls: Some(false),
            from: "ferry@example.test".into(),
            to: vec!["ops@example.test".into()],
            ..Default::default()
        }),
        webhook: Some(WebhookSettings {
            url: format!("{base}/webhook"),
            secret: Some(HMAC_SECRET.into()),
            ..Default::default()
        }),
        routes: vec![
            RouteSettings {
                environments: vec![],
                events: vec![
                    "deployment_started".into(),
                    "deployment_succeeded".into(),
                    "deployment_failed".into(),
                ],
                sinks: vec!["slack".into(), "webhook".into()],
            },
            RouteSettings {
                environments: vec!["production".into()],
                events: vec!["deployment_failed".into(), "deployment_succeeded".into()],
                sinks: vec!["pagerduty".into(), "email".into()],
            },
        ],
        retry_backoff: Some("50ms".into()),
        ..Default::default()
    };
    system.start_controller().await;
    let port = free_port();
    let mut config = system.agent_config("production", &[("web", port)]);
    for service in config.services.values_mut() {
        service.health.start_timeout = Duration::from_secs(2);
    }
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "production", "web").await;

    a_failed_1_0_0_then_2_0_0(&system, &mut watch).await;
    watch
        .wait_for(WAIT, "the deploy of 2.0.0", |e| {
            matches!(&e.body, EventBody::Succeeded { action: ActionKind::Deploy, version: Some(v), .. } if v.as_str() == "2.0.0")
        })
        .await;

    let posts = |path: &str| posts(&inbox, path);

    // PagerDuty: a trigger for the failure, then a resolve for the good deploy.
    let pd = until("a PagerDuty resolve", || {
        let pd = posts("pagerduty");
        pd.iter()
            .any(|r| r.json()["event_action"] == "resolve")
            .then_some(pd)
    })
    .await;
    let pd: Vec<Value> = pd.iter().map(Received::json).collect();
    let trigger = pd
        .iter()
        .find(|b| b["event_action"] == "trigger")
        .unwrap_or_else(|| panic!("no trigger: {pd:#?}"));
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["dedup_key"], "ferry/production/web");
    let payload = &trigger["payload"];
    assert!(
        payload["summary"].as_str().unwrap().contains("failed"),
        "{payload}"
    );
    assert_eq!(payload["source"], "ferry/production");
    assert_eq!(payload["severity"], "critical");
    assert!(payload["timestamp"].is_string());
    let resolve = pd.iter().find(|b| b["event_action"] == "resolve").unwrap();
    assert_eq!(resolve["dedup_key"], "ferry/production/web");
    assert_eq!(resolve["routing_key"], ROUTING_KEY);
    let pd_before = pd
        .iter()
        .position(|b| b["event_action"] == "trigger")
        .unwrap();
    let pd_after = pd
        .iter()
        .rposition(|b| b["event_action"] == "resolve")
        .unwrap();
    assert!(pd_before < pd_after, "resolve came before trigger: {pd:#?}");

    // Slack: Block Kit, one message per transition.
    let slack = until("the Slack message of 2.0.0's success", || {
        let slack = posts("slack");
        slack
            .iter()
            .any(|r| {
                let header = r.json()["blocks"][0]["text"]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                header.contains("2.0.0") && header.contains("live")
            })
            .then_some(slack)
    })
    .await;
    for message in &slack {
        let body = message.json();
        assert!(body["text"].is_string(), "{body}");
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[1]["type"], "section");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        assert!(blocks[1]["fields"].as_array().unwrap().len() >= 3);
        assert_eq!(blocks[2]["type"], "context");
    }
    let headers: Vec<String> = slack
        .iter()
        .map(|m| {
            m.json()["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let count = |needle: &str| headers.iter().filter(|h| h.contains(needle)).count();
    assert_eq!(
        count("Deploy of web 1.0.0 to production failed"),
        1,
        "{headers:#?}"
    );
    assert_eq!(count("Deploying web 1.0.0"), 1, "{headers:#?}");
    assert_eq!(count("web 2.0.0 is live in production"), 1, "{headers:#?}");

    // Webhook: JSON with a valid HMAC-SHA256 of the raw body.
    let hooks = until("the webhook of 2.0.0's success", || {
        let hooks = posts("webhook");
        hooks
            .iter()
            .any(|r| r.json()["kind"] == "deployment_succeeded" && r.json()["version"] == "2.0.0")
            .then_some(hooks)
    })
    .await;
    for hook in &hooks {
        let signature = hook.signature.as_deref().expect("signature header");
        assert_eq!(signature, hmac_hex(HMAC_SECRET, &hook.body), "bad HMAC");
        assert_ne!(signature, hmac_hex("another secret", &hook.body));
        let body = hook.json();
        assert_eq!(hook.event.as_deref(), body["kind"].as_str());
        assert_eq!(body["service"], "web");
        assert_eq!(body["environment"], "production");
    }
    assert!(hooks
        .iter()
        .any(|h| h.json()["kind"] == "deployment_failed"));

    // Email: the failure and the success, through a real SMTP server.
    let mails = until("two emails", || {
        let mails = mails.lock().unwrap().clone();
        (mails.len() >= 2).then_some(mails)
    })
    .await;
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Subject: [ferry] Deploy of web 1.0.0 to production failed")),
        "{mails:#?}"
    );
    assert!(
        mails.iter().any(|m| m.contains("To: ops@example.test")),
        "{mails:#?}"
    );

    // No secret is in any message meant for people.
    let everything: Vec<String> = posts("slack")
        .iter()
        .chain(posts("webhook").iter())
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .chain(mails.iter().cloned())
        .collect();
    for text in &everything {
        for secret in [slack_url.as_str(), HMAC_SECRET, ROUTING_KEY] {
            assert!(!text.contains(secret), "a secret leaked: {text}");
        }
    }
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_approval_needed_to_the_webhook_and_only_production_to_pagerduty() {
    let (http, inbox) = http_receiver().await;
    let base = format!("http://127.0.0.1:{http}");
    let mut system = System::without_controller();
    let alice = ferry_protocol::SigningKey::generate();
    let alice_file = system.dir.path().join("alice.nk");
    std::fs::write(&alice_file, alice.seed().unwrap()).unwrap();
    system.controller_config.environments = vec!["dev".into(), "production".into()];
    system.controller_config.pipeline = std::collections::BTreeMap::from([(
        "production".to_owned(),
        ferry_controller::config::StageSettings {
            auto_deploy: Some(true),
            approvals_required: 1,
            reviewers: vec![ferry_controller::config::ReviewerSettings {
                name: "alice".into(),
                key: alice.public_key(),
            }],
            ..Default::default()
        },
    )]);
    system.controller_config.notify = NotifyConfig {
        pagerduty: Some(PagerDutySettings {
            routing_key: Some(ROUTING_KEY.into()),
            events_url: Some(format!("{base}/pagerduty")),
            ..Default::default()
        }),
        webhook: Some(WebhookSettings {
            url: format!("{base}/webhook"),
            secret: Some(HMAC_SECRET.into()),
            ..Default::default()
        }),
        routes: vec![
            RouteSettings {
                environments: vec!["production".into()],
                events: vec!["approval_needed".into()],
                sinks: vec!["webhook".into()],
            },
            RouteSettings {
                environments: vec!["production".into()],
                events: vec!["deployment_succeeded".into(), "deployment_failed".into()],
                sinks: vec!["pagerduty".into()],
            },
        ],
        retry_backoff: Some("50ms".into()),
        ..Default::default()
    };
    system.start_controller().await;
    let dev_port = free_port();
    system.start_agent("dev", dev_port).await;
    let prod_port = free_port();
    let mut config = system.agent_config("production", &[("web", prod_port)]);
    config.approvals_required = 1;
    config.reviewer_keys = vec![alice.public_key()];
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let mut production = EventWatch::new(&client, "production", "web").await;

    system.publish_release("web", "1.0.0", &[]).await;
    let posts = |path: &str| -> Vec<Received> {
        inbox
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    };
    let asked = until("the approval_needed webhook", || {
        posts("webhook")
            .into_iter()
            .find(|r| r.json()["kind"] == "approval_needed")
    })
    .await;
    let body = asked.json();
    assert_eq!(body["environment"], "production");
    assert_eq!(body["version"], "1.0.0");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("ferry approve web 1.0.0 -e production"),
        "{body}"
    );
    assert_eq!(
        asked.signature.as_deref(),
        Some(hmac_hex(HMAC_SECRET, &asked.body).as_str())
    );

    let out = system
        .cli_async(&[
            "approve",
            "web",
            "1.0.0",
            "-e",
            "production",
            "--key",
            alice_file.to_str().unwrap(),
            "--name",
            "alice",
        ])
        .await;
    assert_ok(&out, "alice approves production");
    production
        .wait_for(WAIT, "production deploy of 1.0.0", |e| {
            matches!(
                &e.body,
                EventBody::Succeeded {
                    action: ActionKind::Deploy,
                    ..
                }
            )
        })
        .await;
    let pd = until("PagerDuty's resolve for production", || {
        let pd = posts("pagerduty");
        (!pd.is_empty()).then_some(pd)
    })
    .await;
    for post in &pd {
        let body = post.json();
        assert_eq!(
            body["dedup_key"], "ferry/production/web",
            "dev reached PagerDuty: {body}"
        );
        assert_eq!(body["event_action"], "resolve");
    }
    // dev's deploy (started, succeeded) reached neither sink.
    let hooks = posts("webhook");
    assert!(
        hooks.iter().all(|r| r.json()["kind"] == "approval_needed"),
        "{:#?}",
        hooks.iter().map(Received::json).collect::<Vec<_>>()
    );
    assert_eq!(hooks.len(), 1, "one message per transition");
    system.shutdown().await;
}

/// A dependency outage during a canary: the stable version fails 30% of
/// requests as the new one does. The agent holds the rollout instead of
/// blaming the new version and raises an alert; the controller records it in
/// history and the webhook gets a `threshold_breached` notice that says both
/// versions fail alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_alike_with_its_stable_version_notifies_a_dependency_outage() {
    use ferry_e2e::rollout::{deploy, rollout_phase, send};
    use ferry_protocol::rollout::{AnalysisOverride, RolloutOptions, RolloutPhase, Strategy};

    let (http, inbox) = http_receiver().await;
    let mut system = System::without_controller();
    system.controller_config.notify = NotifyConfig {
        webhook: Some(WebhookSettings {
            url: format!("http://127.0.0.1:{http}/webhook"),
            secret: Some(HMAC_SECRET.into()),
            ..Default::default()
        }),
        routes: vec![RouteSettings {
            environments: vec!["dev".into()],
            events: vec!["threshold_breached".into()],
            sinks: vec!["webhook".into()],
        }],
        retry_backoff: Some("50ms".into()),
        ..Default::default()
    };
    system.start_controller().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let failing = [("SAMPLE_ERROR_RATE", "0.3")];
    let first = send(&system, &client, deploy("1.0.0", &failing, None)).await;
    watch.outcome(first, WAIT).await;
    wait_serving(port, "1.0.0", WAIT).await;
    let load = Load::start(port, 4, Duration::from_millis(2));
    let canary = Some(RolloutOptions {
        strategy: Some(Strategy::Canary {
            steps: vec![20, 100],
            step_secs: 600,
        }),
        analysis: Some(AnalysisOverride {
            min_requests: Some(5),
            ..Default::default()
        }),
    });
    let id = send(&system, &client, deploy("2.0.0", &failing, canary)).await;
    watch
        .wait_for(Duration::from_secs(60), "both failing", |e| {
            e.command_id == Some(id)
                && matches!(rollout_phase(e), Some(RolloutPhase::BothFailing { .. }))
        })
        .await;
    let notice = until("the threshold_breached webhook", || {
        posts(&inbox, "webhook")
            .into_iter()
            .find(|r| r.json()["kind"] == "threshold_breached")
    })
    .await;
    let body = notice.json();
    assert_eq!(body["environment"], "dev");
    assert_eq!(body["version"], "2.0.0");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("stable one") && detail.contains("dependency outage"),
        "{detail}"
    );
    assert_eq!(
        notice.signature.as_deref(),
        Some(hmac_hex(HMAC_SECRET, &notice.body).as_str())
    );
    load.stop().await;
    system.shutdown().await;
}

/// The notification key of a history record or a webhook body: the
/// transition it tells of (the webhook carries the record's fields).
fn transition(v: &Value) -> String {
    format!(
        "{} {} {} {} {} {} {}",
        v["environment"],
        v["service"],
        v["version"],
        v["action"],
        v["outcome"],
        v["command_id"],
        v["time"]
    )
}

/// Two controller instances with the same webhook sink share one durable
/// consumer of the history stream: every notifiable transition (a failed
/// deploy, a good one, a promotion waiting for approval, the approved
/// deploy) reaches the webhook once, none twice, none late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_send_each_notification_once() {
    use ferry_controller::config::{ReviewerSettings, StageSettings};
    use ferry_controller::notify::{Notice, CONSUMER};
    use ferry_protocol::api::HistoryRecord;

    let (http, inbox) = http_receiver().await;
    let mut system = System::without_controller();
    let alice = ferry_protocol::SigningKey::generate();
    let alice_file = system.dir.path().join("alice.nk");
    std::fs::write(&alice_file, alice.seed().unwrap()).unwrap();
    system.controller_config.environments = vec!["dev".into(), "production".into()];
    system.controller_config.pipeline = std::collections::BTreeMap::from([(
        "production".to_owned(),
        StageSettings {
            auto_deploy: Some(true),
            approvals_required: 1,
            reviewers: vec![ReviewerSettings {
                name: "alice".into(),
                key: alice.public_key(),
            }],
            ..Default::default()
        },
    )]);
    // Every event of every environment to the webhook.
    system.controller_config.notify = NotifyConfig {
        webhook: Some(WebhookSettings {
            url: format!("http://127.0.0.1:{http}/webhook"),
            secret: Some(HMAC_SECRET.into()),
            ..Default::default()
        }),
        routes: vec![RouteSettings {
            environments: vec![],
            events: vec![],
            sinks: vec!["webhook".into()],
        }],
        retry_backoff: Some("50ms".into()),
        ..Default::default()
    };
    system.start_controller().await;
    // The second instance: the same configuration, key and NATS user.
    let mut second = system.controller_config.clone();
    second.nats_url = system.nats.url();
    second.signing_key_file = system.dir.path().join("controller.nk");
    let second = second.validate().unwrap();
    let second_token = tokio_util::sync::CancellationToken::new();
    let second_task = tokio::spawn(ferry_controller::run(second, second_token.clone()));

    // Both instances are pulling from the shared notification consumer.
    let client = system.nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let history = ferry_protocol::streams::history().name;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting = match js
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                CONSUMER, history,
            )
            .await
        {
            Ok(mut consumer) => consumer.info().await.map_or(0, |i| i.num_waiting),
            Err(_) => 0,
        };
        if waiting >= 2 {
            break;
        }
        if second_task.is_finished() {
            panic!("the second controller stopped: {:?}", second_task.await);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{CONSUMER} never had both instances pulling (waiting pulls: {waiting})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dev_port = free_port();
    let mut dev = system.agent_config("dev", &[("web", dev_port)]);
    for service in dev.services.values_mut() {
        service.health.start_timeout = Duration::from_secs(2);
    }
    system.start_agent_with(dev).await;
    let prod_port = free_port();
    let mut production = system.agent_config("production", &[("web", prod_port)]);
    production.approvals_required = 1;
    production.reviewer_keys = vec![alice.public_key()];
    system.start_agent_with(production).await;
    let mut dev_watch = EventWatch::new(&client, "dev", "web").await;
    let mut prod_watch = EventWatch::new(&client, "production", "web").await;

    // 1.0.0 fails in dev and goes no further; 2.0.0 is good in dev, waits
    // for alice in production, then goes live.
    a_failed_1_0_0_then_2_0_0(&system, &mut dev_watch).await;
    until("the approval_needed webhook of 2.0.0", || {
        posts(&inbox, "webhook")
            .into_iter()
            .find(|r| r.json()["kind"] == "approval_needed")
    })
    .await;
    let out = system
        .cli_async(&[
            "approve",
            "web",
            "2.0.0",
            "-e",
            "production",
            "--key",
            alice_file.to_str().unwrap(),
            "--name",
            "alice",
        ])
        .await;
    assert_ok(&out, "alice approves production");
    prod_watch
        .wait_for(WAIT, "production's deploy of 2.0.0", |e| {
            matches!(&e.body, EventBody::Succeeded { action: ActionKind::Deploy, version: Some(v), .. } if v.as_str() == "2.0.0")
        })
        .await;

    // Every transition, once each: (environment, kind, version).
    let mut expected = vec![
        ("dev", "deployment_started", "1.0.0"),
        ("dev", "deployment_failed", "1.0.0"),
        ("dev", "deployment_started", "2.0.0"),
        ("dev", "deployment_succeeded", "2.0.0"),
        ("production", "approval_needed", "2.0.0"),
        ("production", "deployment_started", "2.0.0"),
        ("production", "deployment_succeeded", "2.0.0"),
    ];
    expected.sort_unstable();
    let summary = |hooks: &[Received]| {
        let mut seen: Vec<(String, String, String)> = hooks
            .iter()
            .map(|r| {
                let body = r.json();
                (
                    body["environment"].as_str().unwrap_or("").to_owned(),
                    body["kind"].as_str().unwrap_or("").to_owned(),
                    body["version"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        seen.sort_unstable();
        seen
    };
    let as_owned = |list: &[(&str, &str, &str)]| -> Vec<(String, String, String)> {
        list.iter()
            .map(|(e, k, v)| ((*e).to_owned(), (*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    until("a webhook for every transition", || {
        let seen = summary(&posts(&inbox, "webhook"));
        as_owned(&expected)
            .iter()
            .all(|t| seen.contains(t))
            .then_some(())
    })
    .await;
    // A quiet window for late duplicates (the other instance, a redelivery).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hooks = posts(&inbox, "webhook");
    assert_eq!(
        summary(&hooks),
        as_owned(&expected),
        "one webhook per transition"
    );

    // History holds each transition once, and each notifiable record was
    // posted exactly once.
    let out = system
        .cli_async(&["history", "--limit", "1000", "--output", "json"])
        .await;
    assert_ok(&out, "ferry history");
    let records: Vec<HistoryRecord> = serde_json::from_slice(&out.stdout).unwrap();
    let mut notifiable: Vec<String> = records
        .iter()
        .filter(|r| Notice::classify(r).is_some())
        .map(|r| transition(&serde_json::to_value(r).unwrap()))
        .collect();
    notifiable.sort_unstable();
    let mut posted: Vec<String> = hooks.iter().map(|r| transition(&r.json())).collect();
    posted.sort_unstable();
    assert_eq!(
        posted, notifiable,
        "every notifiable history record posted once"
    );
    for hook in &hooks {
        assert_eq!(
            hook.signature.as_deref(),
            Some(hmac_hex(HMAC_SECRET, &hook.body).as_str())
        );
    }

    second_token.cancel();
    second_task.await.unwrap().unwrap();
    system.shutdown().await;
}

/// Publishes `web 1.0.0`, which never becomes healthy, waits (on `watch`,
/// the environment it first deploys to) until its deploy failed, then
/// publishes a good `web 2.0.0`.
async fn a_failed_1_0_0_then_2_0_0(system: &System, watch: &mut EventWatch) {
    system
        .publish_release("web", "1.0.0", &["SAMPLE_HEALTHY=false"])
        .await;
    watch
        .wait_for(WAIT, "the failed deploy of 1.0.0", |e| {
            matches!(
                &e.body,
                EventBody::Failed {
                    action: ActionKind::Deploy,
                    ..
                }
            )
        })
        .await;
    system.publish_release("web", "2.0.0", &[]).await;
}
