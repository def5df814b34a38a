//! The controller in-process against a real nats-server: a release becomes a
//! signed deploy command for dev, the API answers status and deploy, agents'
//! events become status and history, and shutdown is clean.
//!
//! Needs `nats-server` on PATH (or `TEST_NATS_BIN`).

// Test helpers fail the test loudly; clippy's test exemption only covers
// `#[test]` functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::Client;
use ferry_controller::ControllerConfig;
use ferry_protocol::api::{ApiReply, ApiRequest, CommandIssued, HistoryRecord, StatusRow};
use ferry_protocol::command::{Action, ActionKind, Command};
use ferry_protocol::event::AgentEvent;
use ferry_protocol::event::{
    EventBody, Heartbeat, HostMetrics, ServiceEvent, ServiceSnapshot, ServiceState,
};
use ferry_protocol::release::Release;
use ferry_protocol::subject::{self, AgentEventKind, EventKind};
use ferry_protocol::{EnvName, Envelope, Payload, ServiceName, SigningKey, TrustedKeys, Version};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

/// A nats-server with JetStream on a free port and a temporary store,
/// killed and removed on drop.
struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    async fn start() -> (Self, Client) {
        let store = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = std::env::var("TEST_NATS_BIN").unwrap_or_else(|_| "nats-server".to_owned());
        let child = Process::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be on PATH (or set TEST_NATS_BIN)");
        let server = NatsServer {
            child,
            port,
            _store: store,
        };
        let client = poll(|| async { async_nats::connect(server.url()).await.ok() }).await;
        (server, client)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `attempt` until it yields a value, failing the test after DEADLINE.
async fn poll<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One API call; `None` while nobody answers yet.
async fn try_api<T: DeserializeOwned>(
    client: &Client,
    request: &ApiRequest,
) -> Option<ApiReply<T>> {
    let bytes = Envelope::new("/test/cli", request.clone())
        .to_bytes()
        .unwrap();
    let reply = client
        .request(subject::api(request.op()), bytes.into())
        .await
        .ok()?;
    Some(
        Envelope::<ApiReply<T>>::decode(&reply.payload)
            .unwrap()
            .data,
    )
}

async fn api<T: DeserializeOwned>(client: &Client, request: ApiRequest) -> ApiReply<T> {
    try_api(client, &request)
        .await
        .expect("the controller answers")
}

async fn publish<T: Payload + Serialize>(client: &Client, subject: String, data: T) {
    let bytes = Envelope::new("/test", data).to_bytes().unwrap();
    async_nats::jetstream::new(client.clone())
        .publish(subject, bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn env(name: &str) -> EnvName {
    EnvName::new(name).unwrap()
}

fn web() -> ServiceName {
    ServiceName::new("web").unwrap()
}

fn release(version: &str) -> Release {
    Release {
        service: web(),
        version: Version::new(version).unwrap(),
        artifact: "/opt/web/bin/web".into(),
        digest: None,
        env: Default::default(),
        secret_env: Default::default(),
        author: Some("alice".into()),
        commit: None,
        hotfix: false,
        scan: None,
        scan_findings: Vec::new(),
    }
}

fn key_file(dir: &Path) -> (std::path::PathBuf, String) {
    let key = SigningKey::generate();
    let path = dir.join("controller.nk");
    std::fs::write(&path, key.seed().unwrap()).unwrap();
    (path, key.public_key())
}

/// Waits until the releases consumer has nothing pending or unacknowledged.
async fn releases_consumed(client: &Client) {
    let js = async_nats::jetstream::new(client.clone());
    poll(|| {
        let js = js.clone();
        async move {
            let stream = js.get_stream("FERRY_RELEASES").await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::Consumer<PullConfig> = stream
                .get_consumer(ferry_controller::releases::CONSUMER)
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn release_to_signed_command_status_deploy_and_shutdown() {
    let (server, client) = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (signing_key_file, public_key) = key_file(dir.path());
    let config = ControllerConfig {
        nats_url: server.url(),
        signing_key_file,
        ..ControllerConfig::default()
    }
    .validate()
    .unwrap();
    let shutdown = CancellationToken::new();
    let controller = tokio::spawn(ferry_controller::run(config, shutdown.clone()));

    // Ready once the API answers: the streams exist by then.
    let status_request = ApiRequest::Status { environment: None };
    let first: ApiReply<Vec<StatusRow>> = poll(|| try_api(&client, &status_request)).await;
    assert!(first.success, "{}", first.message);

    // A release from CI becomes a signed deploy command for dev.
    publish(&client, subject::release(&web()), release("1.2.3")).await;
    let js = async_nats::jetstream::new(client.clone());
    let commands = js
        .get_stream("FERRY_COMMANDS")
        .await
        .unwrap()
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject::command(&env("dev"), &web()),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = commands.messages().await.unwrap();
    let message = tokio::time::timeout(DEADLINE, messages.next())
        .await
        .expect("a command within the deadline")
        .unwrap()
        .unwrap();
    let trusted = TrustedKeys::new([public_key.as_str()]).unwrap();
    let command =
        Envelope::<Command>::decode_verified(&message.payload, &trusted, OffsetDateTime::now_utc())
            .expect("signed by the controller's key and not expired");
    assert_eq!(command.source, "/ferry/controller");
    assert_eq!(command.data.environment, env("dev"));
    assert_eq!(command.data.actor.as_deref(), Some("alice"));
    match &command.data.action {
        Action::Deploy { release, .. } => assert_eq!(release.version.as_str(), "1.2.3"),
        other => panic!("expected a deploy, got {other:?}"),
    }
    let msg_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(msg_id, Some(command.id.to_string()));

    // Status lists the whole pipeline, in order. The command is stored before
    // the deployments record is written, so wait for the record.
    let rows = poll(|| async {
        let reply: ApiReply<Vec<StatusRow>> = try_api(&client, &status_request).await?;
        assert!(reply.success, "{}", reply.message);
        let rows = reply.response?;
        rows[0].service.is_some().then_some(rows)
    })
    .await;
    let envs: Vec<&str> = rows.iter().map(|r| r.environment.as_str()).collect();
    assert_eq!(envs, ["dev", "acceptance", "production"]);
    assert_eq!(rows[0].service, Some(web()));
    assert_eq!(rows[0].last_outcome.as_deref(), Some("issued"));
    assert_eq!(rows[0].state, ServiceState::Unknown);
    assert!(rows[1].service.is_none() && rows[2].service.is_none());

    // Deploying an unknown release or to an unknown environment is refused clearly.
    let unknown: ApiReply<CommandIssued> = api(
        &client,
        ApiRequest::Deploy {
            environment: env("acceptance"),
            service: web(),
            version: Version::new("9.9.9").unwrap(),
            replicas: None,
            actor: None,
            rollout: None,
            hotfix: false,
            max_parallel_hosts: None,
        },
    )
    .await;
    assert!(!unknown.success);
    assert_eq!(
        unknown.message,
        "unknown release web 9.9.9: publish it first with ferry release publish"
    );
    let staging: ApiReply<CommandIssued> = api(
        &client,
        ApiRequest::Deploy {
            environment: env("staging"),
            service: web(),
            version: Version::new("1.2.3").unwrap(),
            replicas: None,
            actor: None,
            rollout: None,
            hotfix: false,
            max_parallel_hosts: None,
        },
    )
    .await;
    assert!(!staging.success);
    assert!(
        staging.message.contains("unknown environment staging")
            && staging.message.contains("dev, acceptance, production"),
        "{}",
        staging.message
    );

    // Promoting a known release works.
    let promoted: ApiReply<CommandIssued> = api(
        &client,
        ApiRequest::Deploy {
            environment: env("acceptance"),
            service: web(),
            version: Version::new("1.2.3").unwrap(),
            replicas: Some(2),
            actor: Some("bob".into()),
            rollout: None,
            hotfix: false,
            max_parallel_hosts: None,
        },
    )
    .await;
    assert!(promoted.success, "{}", promoted.message);
    let issued = promoted.response.unwrap();
    assert_eq!(issued.environment, env("acceptance"));
    assert_eq!(issued.action, ActionKind::Deploy);

    // Garbage and a re-published release neither crash the controller nor
    // issue a second deploy to dev.
    async_nats::jetstream::new(client.clone())
        .publish(subject::release(&web()), "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish(&client, subject::release(&web()), release("1.2.3")).await;
    releases_consumed(&client).await;
    let commands_stored = js
        .get_stream("FERRY_COMMANDS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(commands_stored, 2, "one deploy to dev, one to acceptance");

    // An agent's heartbeat and outcome show up in status and history.
    let now = OffsetDateTime::now_utc();
    let heartbeat = AgentEvent::Heartbeat(Heartbeat {
        host_name: None,
        agent_id: "agent-1".into(),
        environment: env("dev"),
        started_at: now,
        interval_secs: 5,
        agent_version: "0.1.0".into(),
        host: HostMetrics::default(),
        services: vec![ServiceSnapshot {
            service: web(),
            version: Some(Version::new("1.2.3").unwrap()),
            previous: None,
            replicas_desired: 1,
            replicas_healthy: 1,
            state: ServiceState::Running,
            maintenance: None,
            runtime: "process".into(),
            address: Some("127.0.0.1:18080".into()),
            rollout: None,
            strategy: None,
        }],
        gap: None,
        sent_at: None,
        trusted_keys: Vec::new(),
        reviewer_keys: Vec::new(),
        approvals_required: 0,
    });
    publish(
        &client,
        subject::agent_event(&env("dev"), AgentEventKind::Heartbeat),
        heartbeat,
    )
    .await;
    let outcome = ServiceEvent {
        host: None,
        environment: env("dev"),
        service: web(),
        command_id: Some(command.id),
        body: EventBody::Succeeded {
            action: ActionKind::Deploy,
            version: Some(Version::new("1.2.3").unwrap()),
            replicas: 1,
            detail: "1 replica healthy".into(),
        },
    };
    publish(
        &client,
        subject::event(&env("dev"), &web(), EventKind::Outcome),
        outcome,
    )
    .await;
    let dev_web = poll(|| async {
        let reply: ApiReply<Vec<StatusRow>> = try_api(&client, &status_request).await?;
        let row = reply.response?.into_iter().next()?;
        (row.agent_up && row.last_outcome.as_deref() == Some("succeeded")).then_some(row)
    })
    .await;
    assert_eq!(dev_web.state, ServiceState::Running);
    assert_eq!(dev_web.address.as_deref(), Some("127.0.0.1:18080"));

    // History is appended after the deployments record, so wait for it too.
    let history_request = ApiRequest::History {
        environment: Some(env("dev")),
        service: Some(web()),
        limit: 10,
        actor: None,
        since: None,
        action: None,
    };
    let outcomes = poll(|| async {
        let reply: ApiReply<Vec<HistoryRecord>> = try_api(&client, &history_request).await?;
        assert!(reply.success, "{}", reply.message);
        let outcomes: Vec<String> = reply
            .response?
            .into_iter()
            .map(|r| format!("{} {}", r.action, r.outcome))
            .collect();
        (outcomes.len() == 4).then_some(outcomes)
    })
    .await;
    // The garbage release event above is in web's history with its reason.
    let (rejected, outcomes): (Vec<String>, Vec<String>) =
        outcomes.into_iter().partition(|o| o == "release rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        outcomes,
        ["release published", "deploy issued", "deploy succeeded"]
    );
    let last_two: ApiReply<Vec<HistoryRecord>> = api(
        &client,
        ApiRequest::History {
            environment: None,
            service: None,
            limit: 2,
            actor: None,
            since: None,
            action: None,
        },
    )
    .await;
    let last_two = last_two.response.unwrap();
    assert_eq!(last_two.len(), 2);
    assert_eq!(last_two[1].outcome, "succeeded");

    // A request on the wrong subject and a malformed request get clear errors.
    let wrong = client
        .request(
            subject::api(ferry_protocol::subject::ApiOp::Scale),
            Envelope::new("/test", status_request.clone())
                .to_bytes()
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let wrong = Envelope::<ApiReply<()>>::decode(&wrong.payload)
        .unwrap()
        .data;
    assert!(
        !wrong.success && wrong.message.contains("send it to ferry.v1.api.status"),
        "{}",
        wrong.message
    );
    let garbage = client
        .request(
            subject::api(ferry_protocol::subject::ApiOp::Status),
            "{".into(),
        )
        .await
        .unwrap();
    let garbage = Envelope::<ApiReply<()>>::decode(&garbage.payload)
        .unwrap()
        .data;
    assert!(!garbage.success && garbage.message.starts_with("not a valid status request"));

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, controller)
        .await
        .expect("the controller stops promptly")
        .unwrap()
        .unwrap();
}

/// The versions of every deploy command stored for dev/web, in stream order.
async fn commands_for_dev_web(js: &async_nats::jetstream::Context) -> Vec<String> {
    let consumer = js
        .get_stream("FERRY_COMMANDS")
        .await
        .unwrap()
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject::command(&env("dev"), &web()),
            ..Default::default()
        })
        .await
        .unwrap();
    let expected = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.unwrap().take(expected as usize);
    let mut versions = Vec::new();
    while let Some(message) = messages.next().await {
        let command = Envelope::<Command>::decode(&message.unwrap().payload).unwrap();
        if let Action::Deploy { release, .. } = command.data.action {
            versions.push(release.version.to_string());
        }
    }
    versions
}

#[tokio::test]
async fn two_instances_share_the_work_and_a_restart_loses_nothing() {
    let (server, client) = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (signing_key_file, _) = key_file(dir.path());
    let config = ControllerConfig {
        nats_url: server.url(),
        signing_key_file,
        environments: vec!["dev".into(), "production".into()],
        ..ControllerConfig::default()
    };
    let start = || {
        let token = CancellationToken::new();
        let task = tokio::spawn(ferry_controller::run(
            config.validate().unwrap(),
            token.clone(),
        ));
        (token, task)
    };
    let (token_a, task_a) = start();
    let (token_b, task_b) = start();
    let status_request = ApiRequest::Status { environment: None };
    let _: ApiReply<Vec<StatusRow>> = poll(|| try_api(&client, &status_request)).await;

    // Two instances, several releases: each deployed exactly once, in order.
    for version in ["2.0.0", "2.0.1", "2.0.2"] {
        publish(&client, subject::release(&web()), release(version)).await;
    }
    releases_consumed(&client).await;
    let js = async_nats::jetstream::new(client.clone());
    assert_eq!(commands_for_dev_web(&js).await, ["2.0.0", "2.0.1", "2.0.2"]);

    // One instance stops; the other carries on answering.
    token_a.cancel();
    task_a.await.unwrap().unwrap();
    let reply: ApiReply<Vec<StatusRow>> = api(&client, status_request.clone()).await;
    assert!(reply.success);

    // Replace the other with a fresh one: releases, status and history survive.
    token_b.cancel();
    task_b.await.unwrap().unwrap();
    let (token_c, task_c) = start();
    let releases_request = ApiRequest::Releases {
        service: Some(web()),
    };
    let releases: ApiReply<Vec<ferry_protocol::api::ReleaseRecord>> =
        poll(|| try_api(&client, &releases_request)).await;
    let versions: Vec<String> = releases
        .response
        .unwrap()
        .into_iter()
        .map(|r| r.release.version.to_string())
        .collect();
    assert_eq!(versions, ["2.0.0", "2.0.1", "2.0.2"]);
    let rows = api::<Vec<StatusRow>>(&client, status_request.clone())
        .await
        .response
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].service, Some(web()));
    assert_eq!(rows[0].last_outcome.as_deref(), Some("issued"));
    let history: ApiReply<Vec<HistoryRecord>> = api(
        &client,
        ApiRequest::History {
            environment: None,
            service: None,
            limit: 1000,
            actor: None,
            since: None,
            action: None,
        },
    )
    .await;
    assert_eq!(history.response.unwrap().len(), 6, "3 published + 3 issued");

    // The fresh instance resumes the shared consumer: only new releases deploy.
    publish(&client, subject::release(&web()), release("2.0.3")).await;
    releases_consumed(&client).await;
    assert_eq!(
        commands_for_dev_web(&js).await,
        ["2.0.0", "2.0.1", "2.0.2", "2.0.3"]
    );
    token_c.cancel();
    task_c.await.unwrap().unwrap();
}
