//! Bad input, end to end against a real nats-server: every refused command is
//! an event with a reason, nothing hostile reaches a shell or a replica's
//! environment, and the agent and controller keep working afterwards (each
//! test ends with a good command that succeeds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ferry_e2e::{bin, free_port, json, send_command, wait_serving, EventWatch, System, WAIT};
use ferry_protocol::command::{Action, Command, ReleaseSpec, MAX_ARTIFACT_LEN, MAX_ENV_VARS};
use ferry_protocol::envelope::{canonical_bytes, MAX_MESSAGE_BYTES};
use ferry_protocol::event::{AgentEvent, EventBody};
use ferry_protocol::subject::{self, AgentEventKind};
use ferry_protocol::{EnvName, Envelope, RefusalReason, ServiceName, SigningKey, Version};
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

fn deploy_of(artifact: &str, version: &str, env: BTreeMap<String, String>) -> Action {
    Action::Deploy {
        release: ReleaseSpec {
            version: Version::new(version).unwrap(),
            artifact: artifact.to_owned(),
            digest: None,
            env,
        },
        replicas: Some(1),
        health: None,
        approvals: Vec::new(),
        rollout: None,
        hotfix: false,
    }
}

fn sample() -> String {
    bin("ferry-sample").to_str().unwrap().to_owned()
}

/// A command for dev's `web`, as JSON, for tests to break before signing.
fn command_json(action: Action) -> Value {
    let command = Command {
        environment: EnvName::new("dev").unwrap(),
        service: ServiceName::new("web").unwrap(),
        actor: Some("test".into()),
        hosts: Vec::new(),
        action,
    };
    let envelope =
        Envelope::new("/ferry/controller", command).expiring_in(Duration::from_secs(3600));
    serde_json::to_value(envelope).unwrap()
}

/// Signs an envelope given as JSON with `key`, exactly as `Envelope::sign`
/// does, so the agent's refusal is about the content and not the signature.
fn sign_json(mut value: Value, key: &SigningKey) -> Vec<u8> {
    let object = value.as_object_mut().unwrap();
    object.remove("signature");
    object.insert("issuer".into(), key.public_key().into());
    let signature = key.sign(&canonical_bytes(&value)).unwrap();
    value["signature"] = base64::engine::general_purpose::STANDARD
        .encode(signature)
        .into();
    serde_json::to_vec(&value).unwrap()
}

/// Stores raw bytes on `subject` in the commands stream.
async fn publish_raw(client: &async_nats::Client, subject: String, bytes: Vec<u8>) {
    async_nats::jetstream::new(client.clone())
        .publish(subject, bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Sends a signed command that was broken as JSON on dev's `web` subject and
/// waits for its refusal.
async fn refused(
    system: &System,
    events: &mut EventWatch,
    broken: Value,
    what: &str,
) -> (RefusalReason, String) {
    let client = system.nats.client().await;
    let id: Uuid = serde_json::from_value(broken["id"].clone()).unwrap();
    let subject = subject::command(
        &EnvName::new("dev").unwrap(),
        &ServiceName::new("web").unwrap(),
    );
    publish_raw(&client, subject, sign_json(broken, &system.controller_key)).await;
    match events.outcome(id, WAIT).await.body {
        EventBody::Refused { reason, detail } => {
            assert!(!detail.is_empty(), "{what}: refusal without a detail");
            (reason, detail)
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// The agent still carries out a good command: deploys `version` of the sample
/// and serves it on `port`.
async fn still_works(system: &System, events: &mut EventWatch, port: u16, version: &str) {
    let id = send(
        system,
        "dev",
        "web",
        deploy_of(&sample(), version, BTreeMap::new()),
    )
    .await;
    let outcome = events.outcome(id, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "a good deploy after bad input: {outcome:?}"
    );
    wait_serving(port, version, WAIT).await;
}

/// Signs `action` for `env`/`service` as the controller would and stores it.
async fn send(system: &System, env: &str, service: &str, action: Action) -> Uuid {
    let client = system.nats.client().await;
    send_command(&client, &system.controller_key, env, service, action).await
}

async fn dev_agent() -> (System, EventWatch, u16) {
    let mut system = System::without_controller();
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let events = EventWatch::new(&client, "dev", "web").await;
    (system, events, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_oversize_fields_are_refused_with_a_reason_and_the_agent_keeps_working() {
    let (system, mut events, port) = dev_agent().await;
    let good = command_json(Action::Scale { replicas: 1 });

    // Wrong JSON types in fields, each in an otherwise valid, signed command.
    for (pointer, bad) in [
        ("/data/replicas", json!("three")),
        ("/data/replicas", json!(-1)),
        ("/data/replicas", json!(u64::MAX)),
        ("/data/environment", json!(7)),
        ("/data/service", json!(["web"])),
        ("/data/action", json!({"scale": true})),
        ("/expires", json!("tomorrow")),
        ("/time", json!(null)),
    ] {
        let mut broken = good.clone();
        *broken.pointer_mut(pointer).unwrap() = bad.clone();
        let (reason, detail) = refused(&system, &mut events, broken, pointer).await;
        assert_eq!(
            reason,
            RefusalReason::Malformed,
            "{pointer}={bad}: {detail}"
        );
    }

    // Too many variables and too long an artifact: decoded, then refused by validation.
    let many: BTreeMap<String, String> = (0..=MAX_ENV_VARS)
        .map(|i| (format!("V{i}"), "x".into()))
        .collect();
    let broken = command_json(deploy_of(&sample(), "1.0.0", many));
    let (reason, detail) = refused(&system, &mut events, broken, "too many variables").await;
    assert_eq!(reason, RefusalReason::Invalid);
    assert!(
        detail.contains(&format!("at most {MAX_ENV_VARS}")),
        "{detail}"
    );
    let long = format!("/{}", "a".repeat(MAX_ARTIFACT_LEN));
    let broken = command_json(deploy_of(&long, "1.0.0", BTreeMap::new()));
    let (reason, detail) = refused(&system, &mut events, broken, "long artifact").await;
    assert_eq!(reason, RefusalReason::Invalid);
    assert!(detail.contains("artifact"), "{detail}");

    // A megabyte string in a field: refused, and the event quotes at most 1 KiB of it.
    let mut broken = good.clone();
    broken["data"]["replicas"] = Value::String("9".repeat(900 * 1024));
    let (reason, detail) = refused(&system, &mut events, broken, "huge field").await;
    assert_eq!(reason, RefusalReason::Malformed);
    assert!(detail.len() < 2 * 1024, "detail of {} bytes", detail.len());

    // Not JSON at all: refused on the service's subject, with no command id.
    let client = system.nats.client().await;
    let subject = subject::command(
        &EnvName::new("dev").unwrap(),
        &ServiceName::new("web").unwrap(),
    );
    publish_raw(&client, subject.clone(), b"\xff{not json".to_vec()).await;
    let event = events
        .wait_for(WAIT, "refusal of non-JSON", |e| {
            e.command_id.is_none() && matches!(e.body, EventBody::Refused { .. })
        })
        .await;
    assert!(matches!(
        event.body,
        EventBody::Refused { reason: RefusalReason::Malformed, ref detail } if detail.contains("not valid JSON")
    ));

    // Over the envelope's limit: nats-server refuses it before the agent
    // could (its max_payload equals MAX_MESSAGE_BYTES); the decoder refuses
    // it as well, proven in ferry-protocol's fuzzing tests.
    let oversize = vec![b' '; MAX_MESSAGE_BYTES + 1];
    let published = async_nats::jetstream::new(client.clone())
        .publish(subject, oversize.into())
        .await;
    let stored = match published {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !stored,
        "a message over {MAX_MESSAGE_BYTES} bytes was stored"
    );

    still_works(&system, &mut events, port, "1.0.0").await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_environments_services_and_subjects_are_refused_with_a_reason() {
    let (system, mut events, port) = dev_agent().await;
    let client = system.nats.client().await;
    let mut agent_refusals = client
        .subscribe(subject::agent_event(
            &EnvName::new("dev").unwrap(),
            AgentEventKind::Refused,
        ))
        .await
        .unwrap();
    client.flush().await.unwrap();

    // A production command on dev's subject.
    let mut broken = command_json(Action::Scale { replicas: 1 });
    broken["data"]["environment"] = "production".into();
    let (reason, detail) = refused(&system, &mut events, broken, "other environment").await;
    assert_eq!(reason, RefusalReason::WrongEnvironment, "{detail}");

    // A service this agent does not manage: refused on that service's subject.
    let mut ghost = EventWatch::new(&client, "dev", "ghost").await;
    let id = send(&system, "dev", "ghost", Action::Scale { replicas: 1 }).await;
    match ghost.outcome(id, WAIT).await.body {
        EventBody::Refused { reason, detail } => {
            assert_eq!(reason, RefusalReason::UnknownService);
            assert!(detail.contains("ghost"), "{detail}");
        }
        other => panic!("unknown service: {other:?}"),
    }

    // A subject no valid service name could produce (upper case, shell text
    // cannot be a subject token at all): an agent-level refusal.
    publish_raw(&client, "ferry.v1.cmd.dev.WEB".into(), b"{}".to_vec()).await;
    let message = tokio::time::timeout(WAIT, agent_refusals.next())
        .await
        .expect("an agent-level refusal")
        .unwrap();
    match Envelope::<AgentEvent>::decode(&message.payload)
        .unwrap()
        .data
    {
        AgentEvent::Refused {
            subject,
            reason,
            detail,
        } => {
            assert_eq!(subject, "ferry.v1.cmd.dev.WEB");
            assert_eq!(reason, RefusalReason::Malformed);
            assert!(detail.contains("not a ferry v1 subject"), "{detail}");
        }
        other => panic!("{other:?}"),
    }

    // A command for an environment with no agent stays in the stream unread:
    // dev's agent only consumes ferry.v1.cmd.dev.> and never sees it.
    let staging = send(&system, "staging", "web", Action::Scale { replicas: 1 }).await;

    still_works(&system, &mut events, port, "1.0.0").await;
    // Stored, never delivered to dev's agent: had it been, dev would have
    // refused it on its agent subject before the good command above (one
    // connection, handled in order).
    let stream = async_nats::jetstream::new(client.clone())
        .get_stream(ferry_protocol::streams::commands().name)
        .await
        .unwrap();
    let stored = stream
        .get_last_raw_message_by_subject("ferry.v1.cmd.staging.web")
        .await
        .unwrap();
    assert_eq!(
        ferry_protocol::envelope::peek_id(&stored.payload),
        Some(staging)
    );
    client.flush().await.unwrap();
    assert!(
        futures::FutureExt::now_or_never(agent_refusals.next()).is_none(),
        "dev's agent read staging's command"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_refused_at_the_edge() {
    let (system, mut events, port) = dev_agent().await;
    for name in ["web;rm -rf /", "$(id)", "`id`", "../web", "WEB", "web.x"] {
        // Inside a signed command: not a ferry envelope.
        let mut broken = command_json(Action::Scale { replicas: 1 });
        broken["data"]["service"] = name.into();
        let (reason, detail) = refused(&system, &mut events, broken, name).await;
        assert_eq!(reason, RefusalReason::Malformed, "{name}");
        assert!(detail.contains("invalid service"), "{name}: {detail}");

        // From the CLI: refused before anything is sent.
        let out = system.cli(&["scale", name, "1", "-e", "dev"]);
        assert!(!out.status.success(), "ferry scale -s {name:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("invalid service"), "{name}: {stderr}");
    }
    still_works(&system, &mut events, port, "1.0.0").await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_and_relative_artifacts_are_refused() {
    let (system, mut events, port) = dev_agent().await;
    // '.' and '..' segments: refused at the edge, before any runtime looks.
    for artifact in [
        "../../bin/sh",
        "/tmp/../bin/sh",
        "/usr/./bin/env",
        "./ferry-sample",
    ] {
        let broken = command_json(deploy_of(artifact, "1.0.0", BTreeMap::new()));
        let (reason, detail) = refused(&system, &mut events, broken, artifact).await;
        assert_eq!(reason, RefusalReason::Invalid, "{artifact}");
        assert!(detail.contains("path segments"), "{artifact}: {detail}");
    }
    // A relative path without dots passes the protocol (it could be an image
    // name) and is refused by the process runtime before anything changes.
    let id = send(
        &system,
        "dev",
        "web",
        deploy_of("bin/sh", "1.0.0", BTreeMap::new()),
    )
    .await;
    match events.outcome(id, WAIT).await.body {
        EventBody::Failed {
            reason, serving, ..
        } => {
            assert!(reason.contains("must be an absolute path"), "{reason}");
            assert_eq!(serving, None);
        }
        other => panic!("relative artifact: {other:?}"),
    }
    still_works(&system, &mut events, port, "1.0.0").await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_metacharacters_in_artifacts_are_never_interpreted() {
    let (system, mut events, port) = dev_agent().await;
    let dir = system.dir.path().to_str().unwrap().to_owned();
    let pwned = |n: u32| format!("{dir}/pwned-{n}");
    // Real copies of the sample at paths full of shell syntax; a shell would
    // run the `touch` in them. No whitespace: the protocol refuses that.
    let artifacts = [
        format!("{dir}/semi;touch${{IFS}}{};/ferry-sample", pwned(1)),
        format!("{dir}/subst$(touch${{IFS}}{})/ferry-sample", pwned(2)),
        format!("{dir}/tick`touch${{IFS}}{}`/ferry-sample", pwned(3)),
        format!("{dir}/pipe|touch${{IFS}}{}&/ferry-sample", pwned(4)),
    ];
    for (i, artifact) in artifacts.iter().enumerate() {
        let path = Path::new(artifact);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(bin("ferry-sample"), path).unwrap();
        let version = format!("1.0.{i}");
        let id = send(
            &system,
            "dev",
            "web",
            deploy_of(artifact, &version, BTreeMap::new()),
        )
        .await;
        let outcome = events.outcome(id, WAIT).await;
        assert!(
            matches!(outcome.body, EventBody::Succeeded { .. }),
            "{artifact}: {outcome:?}"
        );
        wait_serving(port, &version, WAIT).await;
    }
    // A malicious artifact that only exists if a shell splits it.
    let id = send(
        &system,
        "dev",
        "web",
        deploy_of(
            &format!(
                "{}/ferry-sample;touch${{IFS}}{}",
                bin("ferry-sample").parent().unwrap().display(),
                pwned(5)
            ),
            "9.9.9",
            BTreeMap::new(),
        ),
    )
    .await;
    match events.outcome(id, WAIT).await.body {
        EventBody::Failed {
            reason, serving, ..
        } => {
            assert!(reason.contains("No such file"), "{reason}");
            assert_eq!(serving.as_ref().map(Version::as_str), Some("1.0.3"));
        }
        other => panic!("malicious artifact: {other:?}"),
    }
    for n in 1..=5 {
        assert!(
            !Path::new(&pwned(n)).exists(),
            "{} was created: a shell ran",
            pwned(n)
        );
    }
    wait_serving(port, "1.0.3", WAIT).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_variables_cannot_take_over_ferrys_own_or_inject_more() {
    let mut system = System::without_controller();
    let port = free_port();
    // The operator's own configuration sets PORT and FERRY_VERSION: ferry's
    // values still win, so the replica listens where the proxy looks and
    // reports the version it really is.
    let mut config = system.agent_config("dev", &[("web", port)]);
    for service in config.services.values_mut() {
        service.env.insert("PORT".into(), "1".into());
        service.env.insert("FERRY_VERSION".into(), "evil".into());
    }
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let mut events = EventWatch::new(&client, "dev", "web").await;

    for (name, value, expected) in [
        ("PORT", "1", "reserved"),
        ("FERRY_VERSION", "evil", "reserved"),
        ("FERRY_NEW", "x", "reserved"),
        ("LD_PRELOAD", "/tmp/evil.so", "reserved"),
        ("A=B", "x", "must match"),
        ("1A", "x", "must match"),
        ("A B", "x", "must match"),
        ("", "x", "must match"),
        ("GOOD", "a\u{0}b", "NUL"),
    ] {
        let env = BTreeMap::from([(name.to_owned(), value.to_owned())]);
        let broken = command_json(deploy_of(&sample(), "1.0.0", env));
        let (reason, detail) = refused(&system, &mut events, broken, name).await;
        assert_eq!(reason, RefusalReason::Invalid, "{name}");
        assert!(detail.contains(expected), "{name}: {detail}");
    }

    // Ordinary variables, shell text in a value included, pass as they are.
    let env = BTreeMap::from([("GREETING".to_owned(), "$(id);`id`".to_owned())]);
    let id = send(&system, "dev", "web", deploy_of(&sample(), "1.0.0", env)).await;
    let outcome = events.outcome(id, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    // Serving through the proxy means the replica listens on ferry's PORT,
    // not the configured 1; x-version is FERRY_VERSION as the replica saw it.
    wait_serving(port, "1.0.0", WAIT).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_releases_and_api_requests_get_clear_errors_and_the_controller_keeps_serving() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    let js = async_nats::jetstream::new(system.nats.ci_client().await);
    let release_subject = subject::release(&ServiceName::new("web").unwrap());

    // Release events CI could get wrong, published straight to the stream.
    let valid = json!({
        "specversion": "1.0", "id": Uuid::new_v4(), "source": "/ci",
        "type": "ferry.v1.release.published", "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "data": {"service": "web", "version": "1.0.0", "artifact": sample()}
    });
    let mut bad_releases: Vec<(Vec<u8>, &str)> = vec![(b"not json".to_vec(), "not valid JSON")];
    for (field, value, expected) in [
        ("version", json!(1.5), "invalid type"),
        ("env", json!(["PORT=1"]), "invalid type"),
        ("service", json!("api"), "published on the subject of web"),
        ("artifact", json!("/tmp/../bin/sh"), "path segments"),
        ("env", json!({"PORT": "1"}), "reserved"),
    ] {
        let mut release = valid.clone();
        release["data"][field] = value;
        release["id"] = json!(Uuid::new_v4());
        bad_releases.push((serde_json::to_vec(&release).unwrap(), expected));
    }
    for (bytes, _) in &bad_releases {
        js.publish(release_subject.clone(), bytes.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Each is rejected into web's history with its reason.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = system
            .cli_async(&["history", "-s", "web", "--output", "json"])
            .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rejected = text.matches("\"rejected\"").count();
        if rejected >= bad_releases.len() {
            for (_, expected) in &bad_releases {
                assert!(
                    text.contains(expected),
                    "no rejection saying {expected:?} in {text}"
                );
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rejected} of {} rejections in history: {text}",
            bad_releases.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // API requests: junk, wrong types, an unknown environment.
    let cli = system.nats.cli_client().await;
    let api = subject::api(ferry_protocol::subject::ApiOp::Status);
    for (payload, expected) in [
        (b"junk".to_vec(), "not valid JSON"),
        (
            serde_json::to_vec(
                &json!({"specversion": "1.0", "data": {"op": "status", "environment": 5}}),
            )
            .unwrap(),
            "not a valid status request",
        ),
    ] {
        let reply = cli.request(api.clone(), payload.into()).await.unwrap();
        let text = String::from_utf8_lossy(&reply.payload).into_owned();
        assert!(
            text.contains(expected) && text.contains("\"success\":false"),
            "{text}"
        );
    }
    let out = system.cli_async(&["status", "-e", "nowhere"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nowhere"), "{stderr}");
    // Over the limit: nats-server refuses it; the controller never sees it.
    let oversize = vec![b' '; MAX_MESSAGE_BYTES + 1];
    assert!(cli.request(api, oversize.into()).await.is_err());

    // Still serving: status answers, and a good release deploys to dev.
    let out = system.cli_async(&["status", "--output", "json"]).await;
    assert!(out.status.success());
    let _ = json(&out);
    system.publish_release("web", "2.0.0", &[]).await;
    wait_serving(port, "2.0.0", WAIT).await;
    system.shutdown().await;
}

/// The status API's rows, asked directly (as any program driving ferry would).
async fn status_api_rows(system: &System) -> Vec<Value> {
    let cli = system.nats.cli_client().await;
    let request = Envelope::new(
        "/test",
        ferry_protocol::api::ApiRequest::Status { environment: None },
    );
    let reply = cli
        .request(
            subject::api(ferry_protocol::subject::ApiOp::Status),
            request.to_bytes().unwrap().into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["data"]["success"], true, "{reply}");
    reply["data"]["response"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unsigned_commands_leave_status_alone_and_stay_in_history() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    system.publish_release("web", "1.0.0", &[]).await;
    let before = ferry_e2e::wait_status(&system, "dev", "web", "1.0.0 deployed", |r| {
        r["version"] == "1.0.0" && r["last_outcome"] == "succeeded"
    })
    .await;

    // What a stranger (or a broken script) can put on the commands stream:
    // bytes that are no envelope, and a well-formed command nobody signed,
    // on a service the agent does not manage and on the one it does.
    let client = system.nats.client().await;
    let dev = EnvName::new("dev").unwrap();
    for service in ["webx", "web"] {
        let name = ServiceName::new(service).unwrap();
        let mut unsigned = command_json(Action::Scale { replicas: 1 });
        unsigned["data"]["service"] = service.into();
        let subject = subject::command(&dev, &name);
        publish_raw(&client, subject.clone(), b"\x00garbage{".to_vec()).await;
        publish_raw(&client, subject, serde_json::to_vec(&unsigned).unwrap()).await;
    }

    // Every refusal is in the audit trail.
    let deadline = tokio::time::Instant::now() + WAIT;
    let refusals = loop {
        let out = system
            .cli_async(&["history", "-e", "dev", "--output", "json"])
            .await;
        let records = json(&out);
        let refusals: Vec<(String, String)> = records
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == "refused")
            .map(|r| {
                (
                    r["service"].as_str().unwrap().to_owned(),
                    r["detail"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if refusals.len() >= 4 {
            break refusals;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history shows {} of 4 refusals: {records}",
            refusals.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for service in ["webx", "web"] {
        assert_eq!(
            refusals.iter().filter(|(s, _)| s == service).count(),
            2,
            "{refusals:?}"
        );
    }
    assert!(
        refusals
            .iter()
            .any(|(s, d)| s == "web" && d.starts_with("unsigned")),
        "{refusals:?}"
    );

    // Status knows only what the agent manages and what signed commands did.
    let out = system.cli_async(&["status", "--output", "json"]).await;
    let cli_rows = json(&out).as_array().unwrap().clone();
    for rows in [cli_rows, status_api_rows(&system).await] {
        assert!(
            !rows.iter().any(|r| r["service"] == "webx"),
            "a row for a service no agent manages: {rows:?}"
        );
        let web = rows
            .iter()
            .find(|r| r["environment"] == "dev" && r["service"] == "web")
            .unwrap();
        assert_eq!(web["last_outcome"], "succeeded", "{web}");
        assert_eq!(web["last_outcome_at"], before["last_outcome_at"], "{web}");
        assert_eq!(web["version"], "1.0.0", "{web}");
    }
    system.shutdown().await;
}
