//! End-to-end tests of the foundation: a real nats-server per test, the
//! controller and agents in-process, the real `ferry` CLI and `ferry-sample`
//! replicas as child processes, HTTP through the agent's stable port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use ferry_e2e::events::{next_heartbeat, subscribe_heartbeats};
use ferry_e2e::*;
use ferry_protocol::command::{Action, ActionKind, Command};
use ferry_protocol::event::{AgentEvent, EventBody, ServiceEvent};
use ferry_protocol::{subject, EnvName, Envelope, RefusalReason, ServiceName, SigningKey};
use futures::StreamExt;
use time::OffsetDateTime;

fn succeeded(e: &ServiceEvent, action: ActionKind, version: &str) -> bool {
    matches!(&e.body, EventBody::Succeeded { action: a, version: Some(v), .. } if *a == action && v.as_str() == version)
}

async fn deployed(system: &System, port: u16, version: &str, env_vars: &[&str]) {
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    system.publish_release("web", version, env_vars).await;
    watch
        .wait_for(WAIT, &format!("deploy of {version} succeeded"), |e| {
            succeeded(e, ActionKind::Deploy, version)
        })
        .await;
    wait_serving(port, version, WAIT).await;
}

fn command_id(out: &std::process::Output) -> uuid::Uuid {
    let value = json(out);
    value["command_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no command_id in {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_event_deploys_to_dev_and_status_lists_every_environment() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;

    deployed(&system, port, "1.0.0", &[]).await;
    let answer = get(port, "/").await.expect("stable port answers");
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("1.0.0"), "{answer:?}");

    let row = wait_status(
        &system,
        "dev",
        "web",
        "web 1.0.0 running with 2 healthy replicas",
        |r| r["version"] == "1.0.0" && r["replicas_healthy"] == 2 && r["state"] == "running",
    )
    .await;
    assert_eq!(row["replicas_desired"], 2);
    let out = system.cli_async(&["status", "--output", "json"]).await;
    let rows = json(&out);
    let mut envs: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["environment"].as_str())
        .collect();
    envs.dedup();
    assert_eq!(envs, ENVIRONMENTS, "status lists the pipeline in order");
    for row in rows.as_array().unwrap() {
        for field in [
            "environment",
            "service",
            "version",
            "replicas_desired",
            "replicas_healthy",
            "state",
        ] {
            assert!(row.get(field).is_some(), "row lacks {field}: {row}");
        }
    }

    let history = system
        .cli_async(&["history", "-e", "dev", "--output", "json"])
        .await;
    assert_ok(&history, "ferry history");
    let records = json(&history);
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "deploy"
                && r["outcome"] == "succeeded"
                && r["version"] == "1.0.0"),
        "history lacks the successful deploy: {records}"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_every_event_of_a_deploy_name_the_agent_s_host() {
    let mut system = System::start().await;
    let client = system.nats.client().await;
    let mut heartbeats = ferry_e2e::events::subscribe_heartbeats(&client, "dev").await;
    let port = free_port();
    system.start_agent("dev", port).await;
    // The harness names each in-process agent's host `<env>-1`.
    let heartbeat = ferry_e2e::events::next_heartbeat(&mut heartbeats, WAIT).await;
    assert_eq!(
        heartbeat.host_name.as_ref().map(|h| h.as_str()),
        Some("dev-1")
    );

    let mut watch = EventWatch::new(&client, "dev", "web").await;
    system.publish_release("web", "1.0.0", &[]).await;
    let accepted = watch
        .wait_for(WAIT, "the deploy accepted", |e| {
            matches!(e.body, EventBody::Accepted { .. })
        })
        .await;
    let outcome = watch
        .wait_for(WAIT, "the deploy succeeded", |e| {
            succeeded(e, ActionKind::Deploy, "1.0.0")
        })
        .await;
    for event in [&accepted, &outcome] {
        assert_eq!(
            event.host.as_ref().map(|h| h.as_str()),
            Some("dev-1"),
            "{event:?}"
        );
    }
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_release_fails_while_the_old_version_keeps_serving_on_the_stable_port() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    deployed(&system, port, "1.0.0", &[]).await;

    // Hammer the stable port for the whole bad deploy: every answer must be 1.0.0.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (served, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, served, wrong) = (stop.clone(), served.clone(), wrong.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(port, "/").await {
                    Some(a) if a.status == 200 && a.version.as_deref() == Some("1.0.0") => {
                        served.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => wrong.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    system
        .publish_release("web", "2.0.0", &["SAMPLE_HEALTHY=false"])
        .await;
    let failed = watch
        .wait_for(WAIT, "deploy of 2.0.0 failed", |e| matches!(&e.body, EventBody::Failed { version: Some(v), .. } if v.as_str() == "2.0.0"))
        .await;
    let EventBody::Failed {
        reason, serving, ..
    } = &failed.body
    else {
        unreachable!()
    };
    assert!(
        reason.contains("/health"),
        "reason names the failing check: {reason}"
    );
    assert_eq!(serving.as_ref().map(|v| v.as_str()), Some("1.0.0"));

    // The CLI reports the same failure with exit code 1.
    let out = system
        .cli_async(&["deploy", "web", "2.0.0", "-e", "dev", "--wait"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(served.load(Ordering::Relaxed) > 10, "load generator ran");
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "every request during the bad deploy was served by 1.0.0"
    );
    wait_serving(port, "1.0.0", WAIT).await;
    wait_status(
        &system,
        "dev",
        "web",
        "1.0.0 with last outcome failed",
        |r| r["version"] == "1.0.0" && r["last_outcome"] == "failed",
    )
    .await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_goes_to_the_previous_version_and_to_a_named_one() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        deployed(&system, port, version, &[]).await;
    }

    let out = system
        .cli_async(&["rollback", "web", "-e", "dev", "--to", "previous", "--wait"])
        .await;
    assert_ok(&out, "rollback to previous");
    wait_serving(port, "2.0.0", WAIT).await;

    let out = system
        .cli_async(&[
            "rollback",
            "web",
            "-e",
            "dev",
            "--version",
            "1.0.0",
            "--wait",
        ])
        .await;
    assert_ok(&out, "rollback to 1.0.0");
    wait_serving(port, "1.0.0", WAIT).await;

    let out = system
        .cli_async(&[
            "rollback",
            "web",
            "-e",
            "dev",
            "--version",
            "9.9.9",
            "--wait",
        ])
        .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "rollback to an unknown version fails"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("9.9.9")
            || String::from_utf8_lossy(&out.stdout).contains("9.9.9")
    );
    wait_serving(port, "1.0.0", WAIT).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_dry_run_prints_the_plan_and_changes_nothing() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    deployed(&system, port, "1.0.0", &[]).await;
    deployed(&system, port, "2.0.0", &[]).await;
    let before = wait_status(&system, "dev", "web", "2.0.0 running", |r| {
        r["version"] == "2.0.0" && r["state"] == "running"
    })
    .await;

    let out = system
        .cli_async(&["rollback", "web", "-e", "dev", "--dry-run"])
        .await;
    assert_ok(&out, "rollback --dry-run");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("from 2.0.0 to 1.0.0"),
        "plan names both versions: {printed}"
    );

    let answer = get(port, "/").await.expect("serving");
    assert_eq!(answer.version.as_deref(), Some("2.0.0"));
    let after = status_row(&system, "dev", "web").await.expect("row");
    assert_eq!(
        (&after["version"], &after["replicas_desired"]),
        (&before["version"], &before["replicas_desired"])
    );
    let history = json(
        &system
            .cli_async(&["history", "-e", "dev", "--output", "json"])
            .await,
    );
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "rollback" && r["outcome"] == "dry_run"),
        "{history}"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_and_down_changes_the_healthy_replicas_behind_the_port() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    deployed(&system, port, "1.0.0", &[]).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;

    assert_ok(
        &system
            .cli_async(&["scale", "web", "4", "-e", "dev", "--wait"])
            .await,
        "scale to 4",
    );
    let health = watch
        .wait_for(
            WAIT,
            "4 healthy replicas",
            |e| matches!(&e.body, EventBody::Health(h) if h.healthy == 4 && h.replicas.len() == 4),
        )
        .await;
    let EventBody::Health(h) = health.body else {
        unreachable!()
    };
    let mut addresses: Vec<_> = h.replicas.iter().map(|r| r.address.clone()).collect();
    addresses.dedup();
    assert_eq!(addresses.len(), 4, "four distinct replicas");
    wait_status(&system, "dev", "web", "4/4", |r| {
        r["replicas_desired"] == 4 && r["replicas_healthy"] == 4
    })
    .await;

    assert_ok(
        &system
            .cli_async(&["scale", "web", "1", "-e", "dev", "--wait"])
            .await,
        "scale to 1",
    );
    watch.seen.clear();
    watch
        .wait_for(
            WAIT,
            "1 healthy replica",
            |e| matches!(&e.body, EventBody::Health(h) if h.healthy == 1 && h.replicas.len() == 1),
        )
        .await;
    wait_status(&system, "dev", "web", "1/1", |r| {
        r["replicas_desired"] == 1 && r["replicas_healthy"] == 1
    })
    .await;
    wait_serving(port, "1.0.0", WAIT).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_answers_503_with_its_message_and_ends_on_time() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    deployed(&system, port, "1.0.0", &[]).await;

    let out = system
        .cli_async(&[
            "maintenance",
            "web",
            "-e",
            "dev",
            "--enable",
            "--message",
            "Upgrading the database",
            "--duration",
            "3s",
            "--wait",
        ])
        .await;
    assert_ok(&out, "maintenance --enable");
    let enabled = Instant::now();
    let answer = get(port, "/").await.expect("answers");
    assert_eq!(answer.status, 503);
    assert!(answer.body.contains("Upgrading the database"), "{answer:?}");
    let retry: u64 = answer
        .retry_after
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("Retry-After");
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    wait_status(&system, "dev", "web", "maintenance state", |r| {
        r["state"] == "maintenance"
    })
    .await;

    // It ends by itself once its 3 s are up, and not long before.
    let deadline = enabled + Duration::from_secs(8);
    loop {
        let answer = get(port, "/").await.expect("answers");
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "maintenance did not end within 3 s (+5 s slack)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        enabled.elapsed() >= Duration::from_millis(1500),
        "maintenance ended early, after {:?}",
        enabled.elapsed()
    );

    // Without a duration it lasts until disabled.
    assert_ok(
        &system
            .cli_async(&[
                "maintenance",
                "web",
                "-e",
                "dev",
                "--enable",
                "--message",
                "Back soon",
                "--wait",
            ])
            .await,
        "enable",
    );
    assert_eq!(get(port, "/").await.expect("answers").status, 503);
    assert_ok(
        &system
            .cli_async(&["maintenance", "web", "-e", "dev", "--disable", "--wait"])
            .await,
        "disable",
    );
    assert_eq!(get(port, "/").await.expect("answers").status, 200);
    system.shutdown().await;
}

/// Counts the stored events of `kind` that carry `command_id`.
async fn stored_events(client: &async_nats::Client, kind: &str, command_id: uuid::Uuid) -> usize {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("FERRY_EVENTS").await.expect("events stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("ferry.v1.evt.dev.web.{kind}"),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer.messages().await.expect("messages");
    let mut count = 0;
    for _ in 0..pending {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("stored event")
            .expect("some")
            .expect("ok");
        let event = Envelope::<ServiceEvent>::decode(&message.payload).expect("event");
        if event.data.command_id == Some(command_id) {
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_while_the_agent_is_down_runs_exactly_once_after_it_starts() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    deployed(&system, port, "1.0.0", &[]).await;
    system.stop_agent("dev").await;
    assert!(
        get(port, "/").await.is_none(),
        "nothing serves while the agent is down"
    );

    let out = system
        .cli_async(&["scale", "web", "3", "-e", "dev", "--output", "json"])
        .await;
    assert_ok(&out, "scale while the agent is down");
    let id = command_id(&out);

    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let config = system.agents["dev"].config.clone();
    system.start_agent_with(config).await;
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { replicas: 3, .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;

    // Restart again and push a later command through: had the first one been
    // redelivered, it would have been handled before this one.
    system.restart_agent("dev").await;
    assert_ok(
        &system
            .cli_async(&["scale", "web", "2", "-e", "dev", "--wait"])
            .await,
        "later scale",
    );
    assert_eq!(
        stored_events(&client, "accepted", id).await,
        1,
        "accepted once"
    );
    assert_eq!(
        stored_events(&client, "outcome", id).await,
        1,
        "one outcome"
    );
    system.shutdown().await;
}

fn scale_command(replicas: u32) -> Command {
    Command {
        environment: EnvName::new("dev").unwrap(),
        service: ServiceName::new("web").unwrap(),
        actor: Some("e2e".into()),
        hosts: Vec::new(),
        action: Action::Scale { replicas },
    }
}

async fn publish_raw(client: &async_nats::Client, subject: &str, payload: Vec<u8>) {
    let js = jetstream::new(client.clone());
    js.publish(subject.to_owned(), payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_unsigned_badly_signed_and_replayed_commands_are_refused_with_their_reason() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    deployed(&system, port, "1.0.0", &[]).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let subject = "ferry.v1.cmd.dev.web";
    let ttl = Duration::from_secs(60);
    // What the agent runs before the refused commands, as its heartbeat says.
    let mut heartbeats = subscribe_heartbeats(&client, "dev").await;
    let web_desired = |hb: &ferry_protocol::event::Heartbeat| {
        hb.services
            .iter()
            .find(|s| s.service.as_str() == "web")
            .map(|s| s.replicas_desired)
    };
    let before = web_desired(&next_heartbeat(&mut heartbeats, WAIT).await);
    assert_eq!(before, Some(2), "the release deploys 2 replicas");

    let unsigned = Envelope::new("/attacker", scale_command(5)).expiring_in(ttl);
    let mut expired = Envelope::new("/ferry/controller", scale_command(5));
    expired.expires = Some(OffsetDateTime::now_utc() - Duration::from_secs(1));
    let expired = expired.sign(&system.controller_key).unwrap();
    let stranger = Envelope::new("/attacker", scale_command(5))
        .expiring_in(ttl)
        .sign(&SigningKey::generate())
        .unwrap();
    let genuine = Envelope::new("/ferry/controller", scale_command(1))
        .expiring_in(ttl)
        .sign(&system.controller_key)
        .unwrap();
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&genuine.to_bytes().unwrap()).unwrap();
    tampered["data"]["replicas"] = 5.into();
    tampered["id"] = uuid::Uuid::new_v4().to_string().into();

    let cases = [
        (
            unsigned.id,
            unsigned.to_bytes().unwrap(),
            RefusalReason::Unsigned,
        ),
        (
            expired.id,
            expired.to_bytes().unwrap(),
            RefusalReason::Expired,
        ),
        (
            stranger.id,
            stranger.to_bytes().unwrap(),
            RefusalReason::UntrustedIssuer,
        ),
        (
            tampered["id"].as_str().unwrap().parse().unwrap(),
            serde_json::to_vec(&tampered).unwrap(),
            RefusalReason::BadSignature,
        ),
    ];
    for (id, payload, reason) in cases {
        publish_raw(&client, subject, payload).await;
        let event = watch.outcome(id, WAIT).await;
        match &event.body {
            EventBody::Refused {
                reason: got,
                detail,
            } => {
                assert_eq!(*got, reason, "{detail}");
                assert!(!detail.is_empty());
            }
            other => panic!("expected a {reason} refusal, got {other:?}"),
        }
    }

    // None of the refused commands (each a scale to 5) changed anything: a
    // heartbeat sent after their refusals still has the release's 2.
    drop(heartbeats);
    let mut heartbeats = subscribe_heartbeats(&client, "dev").await;
    let after = web_desired(&next_heartbeat(&mut heartbeats, WAIT).await);
    assert_eq!(after, before, "a refused command changed the replicas");

    // The genuine command (a scale to 1) runs once; the same bytes again
    // are a replay.
    publish_raw(&client, subject, genuine.to_bytes().unwrap()).await;
    let event = watch.outcome(genuine.id, WAIT).await;
    assert!(
        matches!(event.body, EventBody::Succeeded { replicas: 1, .. }),
        "{event:?}"
    );
    watch.seen.clear();
    publish_raw(&client, subject, genuine.to_bytes().unwrap()).await;
    let event = watch.outcome(genuine.id, WAIT).await;
    assert!(
        matches!(
            event.body,
            EventBody::Refused {
                reason: RefusalReason::Replayed,
                ..
            }
        ),
        "{event:?}"
    );

    // The replay changed nothing either: the genuine scale's 1 replica runs.
    wait_status(&system, "dev", "web", "1 replica", |r| {
        r["replicas_desired"] == 1 && r["replicas_healthy"] == 1
    })
    .await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_every_command_subject_are_refused_and_the_agent_keeps_running() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    deployed(&system, port, "1.0.0", &[]).await;
    let client = system.nats.client().await;
    let mut refusals = client
        .subscribe("ferry.v1.evt.dev.*.refused")
        .await
        .unwrap();
    let mut agent_refusals = client
        .subscribe(subject::agent_event(
            &EnvName::new("dev").unwrap(),
            subject::AgentEventKind::Refused,
        ))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let garbage: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{}".to_vec(),
        b"[1,2,3]".to_vec(),
        b"null".to_vec(),
        vec![0xff, 0x00, 0xfe],
        br#"{"specversion":"1.0","id":"x","data":{"action":"scale","replicas":"many"}}"#.to_vec(),
        br#"{"specversion":"0.3","id":"7e0ee6e6-6e8c-4b8b-9f4e-4f9b3f8a1c2d","source":"/x","type":"t","time":"2020-01-01T00:00:00Z","datacontenttype":"application/json","data":{}}"#.to_vec(),
    ];
    for payload in &garbage {
        publish_raw(&client, "ferry.v1.cmd.dev.web", payload.clone()).await;
    }
    // A service this agent does not manage, and subjects that are not ferry's shape.
    let ghost = Envelope::new(
        "/ferry/controller",
        Command {
            service: ServiceName::new("ghost").unwrap(),
            ..scale_command(1)
        },
    )
    .expiring_in(Duration::from_secs(60))
    .sign(&system.controller_key)
    .unwrap();
    publish_raw(&client, "ferry.v1.cmd.dev.ghost", ghost.to_bytes().unwrap()).await;
    publish_raw(&client, "ferry.v1.cmd.dev.web.extra", b"{}".to_vec()).await;
    publish_raw(&client, "ferry.v1.cmd.dev.Bad_Name", b"{}".to_vec()).await;

    for i in 0..garbage.len() + 1 {
        let message = tokio::time::timeout(WAIT, refusals.next())
            .await
            .unwrap_or_else(|_| panic!("refusal {i} missing"))
            .unwrap();
        let event = Envelope::<ServiceEvent>::decode(&message.payload)
            .unwrap()
            .data;
        let EventBody::Refused { reason, .. } = event.body else {
            panic!("{event:?}")
        };
        if event.service.as_str() == "ghost" {
            assert_eq!(reason, RefusalReason::UnknownService);
        } else {
            assert!(
                matches!(reason, RefusalReason::Malformed | RefusalReason::Unsigned),
                "{reason}"
            );
        }
    }
    for _ in 0..2 {
        let message = tokio::time::timeout(WAIT, agent_refusals.next())
            .await
            .expect("agent-level refusal")
            .unwrap();
        let event = Envelope::<AgentEvent>::decode(&message.payload)
            .unwrap()
            .data;
        assert!(
            matches!(
                event,
                AgentEvent::Refused {
                    reason: RefusalReason::Malformed,
                    ..
                }
            ),
            "{event:?}"
        );
    }

    // Still running, still serving, still taking commands.
    wait_serving(port, "1.0.0", WAIT).await;
    assert_ok(
        &system
            .cli_async(&["scale", "web", "3", "-e", "dev", "--wait"])
            .await,
        "scale after garbage",
    );
    system.shutdown().await;
}
