//! The deployment NATS configuration (`deploy/nats/nats-server.conf`) lets
//! each role do its job and nothing more: a real nats-server runs with it, and
//! each test connects with a role's credentials. Refused subscriptions and
//! publishes are seen as the server's permissions-violation errors (through
//! the client's event callback) and as messages that never arrive, checked
//! against a message that does arrive after them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use ferry_e2e::*;
use ferry_protocol::command::ActionKind;
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::{streams, subject, EnvName, HostName, ServiceName};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

/// How long a request that the server silently refuses may take to fail.
const REFUSED: Duration = Duration::from_secs(2);

fn env(name: &str) -> EnvName {
    EnvName::new(name).unwrap()
}

fn web() -> ServiceName {
    ServiceName::new("web").unwrap()
}

/// The durable consumer of `env`'s agent on `host`.
fn consumer_of(env_name: &str, host: &str) -> String {
    streams::agent_consumer(&env(env_name), &HostName::new(host).unwrap())
}

/// A client for `user` whose server errors (permission violations) arrive on
/// the returned channel.
async fn client_with_errors(
    nats: &NatsServer,
    user: &str,
    inbox: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = nats
        .options_as(user, inbox)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    (client, rx)
}

/// Waits for a permissions violation naming `subject`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, kind: &str, subject: &str) {
    let wanted = format!("permissions violation for {kind} to \"{subject}\"").to_lowercase();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(error) = errors.recv().await {
            if error.to_lowercase().contains(&wanted) {
                return error;
            }
        }
        panic!("error channel closed")
    })
    .await
    .unwrap_or_else(|_| panic!("no {wanted:?} within {WAIT:?}"));
    assert!(found.to_lowercase().contains(&wanted));
}

/// The controller's client, with the command and event streams created.
async fn controller(nats: &NatsServer) -> (async_nats::Client, jetstream::Context) {
    let client = nats
        .client_as("ferry-controller", "_INBOX_ferry_controller")
        .await;
    let js = jetstream::new(client.clone());
    for spec in [streams::commands(), streams::events(), streams::releases()] {
        js.get_or_create_stream(spec.config())
            .await
            .unwrap_or_else(|e| panic!("controller creates {}: {e}", spec.name));
    }
    (client, js)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_agent_credentials_cannot_read_production_commands() {
    init_tracing();
    let nats = NatsServer::start_with_permissions();
    let (_controller, controller_js) = controller(&nats).await;
    let (dev, mut errors) =
        client_with_errors(&nats, "ferry-agent-dev", "_INBOX_ferry_agent_dev").await;

    // A plain subscription to production's commands is refused.
    let production = subject::commands_for_env(&env("production"));
    let mut snooping = dev.subscribe(production.clone()).await.unwrap();
    dev.flush().await.unwrap();
    violation(&mut errors, "subscription", &production).await;

    // So is a consumer on the command stream filtered to production, under
    // dev's host's consumer name, a production host's, or none.
    let mut dev_js = jetstream::new(dev.clone());
    dev_js.set_timeout(REFUSED);
    let stream = dev_js
        .get_stream(streams::commands().name)
        .await
        .expect("dev's agent may look up the command stream");
    for durable in [
        Some(consumer_of("dev", "dev-1")),
        Some(consumer_of("production", "production-1")),
        None,
    ] {
        let created = stream
            .create_consumer(consumer::pull::Config {
                durable_name: durable.clone(),
                filter_subject: production.clone(),
                ..Default::default()
            })
            .await;
        assert!(
            created.is_err(),
            "dev created a consumer {durable:?} on production's commands"
        );
    }

    // Dev's own consumer works, and a command for production published
    // before dev's own never reaches dev, by either path.
    let mine = stream
        .get_or_create_consumer(
            &consumer_of("dev", "dev-1"),
            consumer::pull::Config {
                durable_name: Some(consumer_of("dev", "dev-1")),
                filter_subject: subject::commands_for_env(&env("dev")),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .expect("dev's agent creates its own consumer");
    let to_production = subject::command(&env("production"), &web());
    let to_dev = subject::command(&env("dev"), &web());
    controller_js
        .publish(to_production.clone(), "for production".into())
        .await
        .unwrap()
        .await
        .expect("the controller may command production");
    controller_js
        .publish(to_dev.clone(), "for dev".into())
        .await
        .unwrap()
        .await
        .expect("the controller may command dev");
    let mut messages = mine.messages().await.unwrap();
    let first = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("dev's command arrives")
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), to_dev);
    assert_eq!(&first.payload[..], b"for dev");
    first.ack().await.expect("dev acks its own command");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), snooping.next())
            .await
            .is_err(),
        "the refused subscription received a production command"
    );
    let commands = controller_js
        .get_stream(streams::commands().name)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&to_production)
        .await
        .expect("production's command is in the stream");
    assert_eq!(&commands.payload[..], b"for production");
}

/// Each host of an environment reads its commands through its own durable
/// consumer, and the environment's agent user names those consumers one by
/// one (users.conf): the dev user creates and pulls dev-1's, but neither
/// creates, looks up nor pulls production-1's, nor a consumer of a dev host
/// the configuration does not list, even once the controller made them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_agent_credentials_use_only_the_consumers_of_dev_s_listed_hosts() {
    init_tracing();
    let nats = NatsServer::start_with_permissions();
    let (_controller, controller_js) = controller(&nats).await;
    let (dev, mut errors) =
        client_with_errors(&nats, "ferry-agent-dev", "_INBOX_ferry_agent_dev").await;
    let own = consumer_of("dev", "dev-1");
    let production = consumer_of("production", "production-1");
    let unlisted = consumer_of("dev", "dev-9");
    assert_eq!(own, "ferry-agent-dev-dev-1");
    assert_eq!(production, "ferry-agent-production-production-1");
    let dev_commands = subject::commands_for_env(&env("dev"));
    let production_commands = subject::commands_for_env(&env("production"));

    let to_production = subject::command(&env("production"), &web());
    let to_dev = subject::command(&env("dev"), &web());
    for (to, payload) in [(&to_production, "for production"), (&to_dev, "for dev")] {
        controller_js
            .publish(to.clone(), payload.into())
            .await
            .unwrap()
            .await
            .expect("the controller commands every environment");
    }

    let mut dev_js = jetstream::new(dev.clone());
    dev_js.set_timeout(REFUSED);
    let stream = dev_js
        .get_stream(streams::commands().name)
        .await
        .expect("dev's agent may look up the command stream");
    let pull_config = |name: &str, filter: &str| consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: filter.to_owned(),
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    };

    // Creating another host's consumer is refused: production-1's with
    // production's filter or with dev's, an unlisted dev host's with dev's.
    for (name, filter) in [
        (&production, &production_commands),
        (&production, &dev_commands),
        (&unlisted, &dev_commands),
    ] {
        let created = stream.create_consumer(pull_config(name, filter)).await;
        assert!(
            created.is_err(),
            "dev created consumer {name} filtered to {filter}"
        );
        violation(
            &mut errors,
            "publish",
            &format!("$JS.API.CONSUMER.CREATE.FERRY_COMMANDS.{name}.{filter}"),
        )
        .await;
    }
    let commands = controller_js
        .get_stream(streams::commands().name)
        .await
        .unwrap();
    for name in [&production, &unlisted] {
        assert!(
            commands.consumer_info(name).await.is_err(),
            "consumer {name} exists after dev's refused creation"
        );
    }

    // Once the controller has made them, dev may neither look them up nor
    // pull from them: no command reaches dev's inbox, none is delivered.
    for (name, filter) in [
        (&production, &production_commands),
        (&unlisted, &dev_commands),
    ] {
        commands
            .create_consumer(pull_config(name, filter))
            .await
            .unwrap_or_else(|e| panic!("the controller creates {name}: {e}"));
        assert!(
            stream.consumer_info(name).await.is_err(),
            "dev looked up {name}"
        );
        violation(
            &mut errors,
            "publish",
            &format!("$JS.API.CONSUMER.INFO.FERRY_COMMANDS.{name}"),
        )
        .await;
        let inbox = dev.new_inbox();
        let mut replies = dev.subscribe(inbox.clone()).await.unwrap();
        let next = format!("$JS.API.CONSUMER.MSG.NEXT.FERRY_COMMANDS.{name}");
        dev.publish_with_reply(next.clone(), inbox, r#"{"batch":1}"#.into())
            .await
            .unwrap();
        dev.flush().await.unwrap();
        violation(&mut errors, "publish", &next).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), replies.next())
                .await
                .is_err(),
            "dev's pull from {name} was answered"
        );
        let info = commands.consumer_info(name).await.unwrap();
        assert_eq!(
            (info.delivered.stream_sequence, info.num_pending),
            (0, 1),
            "{name} delivered a command to dev"
        );
    }

    // Its own host's consumer: created with dev's filter, looked up,
    // pulled, acknowledged (the server confirms the ack).
    let mine = stream
        .create_consumer(pull_config(&own, &dev_commands))
        .await
        .expect("dev's agent creates dev-1's consumer");
    stream
        .consumer_info(&own)
        .await
        .expect("dev's agent looks up dev-1's consumer");
    let mut messages = mine.messages().await.unwrap();
    let first = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("dev's command arrives through dev-1's consumer")
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), to_dev);
    assert_eq!(&first.payload[..], b"for dev");
    first
        .double_ack()
        .await
        .expect("dev acknowledges its command on dev-1's consumer");
    let info = commands.consumer_info(&own).await.unwrap();
    assert_eq!(
        (info.num_ack_pending, info.ack_floor.stream_sequence),
        (0, first.info().unwrap().stream_sequence),
        "dev-1's consumer did not record the ack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_agent_credentials_cannot_publish_to_production_subjects() {
    init_tracing();
    let nats = NatsServer::start_with_permissions();
    let (admin, _js) = controller(&nats).await;
    let mut events = admin.subscribe(subject::all_events()).await.unwrap();
    let mut agent_events = admin.subscribe(subject::all_agent_events()).await.unwrap();
    admin.flush().await.unwrap();
    let (dev, mut errors) =
        client_with_errors(&nats, "ferry-agent-dev", "_INBOX_ferry_agent_dev").await;

    let outcome = subject::event(
        &env("production"),
        &web(),
        ferry_protocol::subject::EventKind::Outcome,
    );
    dev.publish(outcome.clone(), "forged".into()).await.unwrap();
    dev.flush().await.unwrap();
    violation(&mut errors, "publish", &outcome).await;

    let heartbeat = subject::agent_event(
        &env("production"),
        ferry_protocol::subject::AgentEventKind::Heartbeat,
    );
    dev.publish(heartbeat.clone(), "forged".into())
        .await
        .unwrap();
    dev.flush().await.unwrap();
    violation(&mut errors, "publish", &heartbeat).await;

    let command = subject::command(&env("production"), &web());
    dev.publish(command.clone(), "forged".into()).await.unwrap();
    dev.flush().await.unwrap();
    violation(&mut errors, "publish", &command).await;

    // Through JetStream too: no acknowledgement, the stream never has it.
    let mut dev_js = jetstream::new(dev.clone());
    dev_js.set_timeout(REFUSED);
    let acked = match dev_js.publish(outcome.clone(), "forged".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "JetStream acknowledged dev's event for production");

    // Dev's own event, published after the forged ones, is the first thing
    // the admin sees: the server dropped every forged message (one delivered
    // before it would have been read from the socket first).
    let own = subject::event(
        &env("dev"),
        &web(),
        ferry_protocol::subject::EventKind::Outcome,
    );
    dev.publish(own.clone(), "genuine".into()).await.unwrap();
    dev.flush().await.unwrap();
    let first = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("dev's own event arrives")
        .unwrap();
    assert_eq!(
        first.subject.as_str(),
        own,
        "the admin saw a forged event first"
    );
    assert_eq!(&first.payload[..], b"genuine");
    assert!(
        agent_events.next().now_or_never().is_none(),
        "the admin saw a forged agent event"
    );
    let commands = jetstream::new(admin.clone())
        .get_stream(streams::commands().name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        commands, 0,
        "dev's forged command reached the command stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_may_publish_a_release_and_not_a_command() {
    init_tracing();
    let nats = NatsServer::start_with_permissions();
    let (_controller, controller_js) = controller(&nats).await;
    let (ci, mut errors) = client_with_errors(&nats, "ferry-ci", "_INBOX_ferry_ci").await;
    let mut ci_js = jetstream::new(ci.clone());
    ci_js.set_timeout(REFUSED);

    let release = subject::release(&web());
    ci_js
        .publish(release.clone(), "release".into())
        .await
        .unwrap()
        .await
        .expect("JetStream acknowledges CI's release");

    let command = subject::command(&env("production"), &web());
    ci.publish(command.clone(), "forged".into()).await.unwrap();
    ci.flush().await.unwrap();
    violation(&mut errors, "publish", &command).await;
    let mut commands = controller_js
        .get_stream(streams::commands().name)
        .await
        .unwrap();
    assert_eq!(
        commands.info().await.unwrap().state.messages,
        0,
        "CI's command reached the command stream"
    );

    // Nor may CI read events.
    let events = subject::all_events();
    let _sub = ci.subscribe(events.clone()).await.unwrap();
    ci.flush().await.unwrap();
    violation(&mut errors, "subscription", &events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused() {
    init_tracing();
    let nats = NatsServer::start_with_permissions();
    let refused = async_nats::ConnectOptions::with_user_and_password(
        "ferry-agent-dev".into(),
        "not-the-password".into(),
    )
    .max_reconnects(1)
    .connect(nats.url())
    .await;
    let anonymous = async_nats::ConnectOptions::new()
        .max_reconnects(1)
        .connect(nats.url())
        .await;
    assert!(refused.is_err(), "a wrong password connected");
    assert!(anonymous.is_err(), "a client without credentials connected");
}

fn succeeded(e: &ServiceEvent, version: &str) -> bool {
    matches!(&e.body, EventBody::Succeeded { action: ActionKind::Deploy, version: Some(v), .. } if v.as_str() == version)
}

/// The whole flow with every part on its role's user: CI publishes a release,
/// the controller sends dev a signed command, dev's agent deploys it, the CLI
/// reads status and history and CI's user may not use the CLI's API nor the
/// CLI's user publish a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_on_its_own_user_releases_deploys_and_reports() {
    let mut system = System::start_with_permissions().await;
    let port = free_port();
    system.start_agent("dev", port).await;

    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    system.publish_release("web", "1.0.0", &[]).await;
    watch
        .wait_for(WAIT, "deploy of 1.0.0 succeeded", |e| succeeded(e, "1.0.0"))
        .await;
    wait_serving(port, "1.0.0", WAIT).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = system.cli_async(&["status", "--output", "json"]).await;
        assert_ok(&out, "ferry status as ferry-cli");
        let rows = json(&out);
        let running =
            rows.as_array().unwrap().iter().any(|r| {
                r["environment"] == "dev" && r["service"] == "web" && r["version"] == "1.0.0"
            });
        if running {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed web 1.0.0 in dev: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = system
        .cli_async(&["history", "-e", "dev", "--output", "json"])
        .await;
    assert_ok(&history, "ferry history as ferry-cli");

    // The CLI's user cannot publish a release (nothing reaches
    // FERRY_RELEASES: it still holds CI's one release); CI's cannot call the
    // API.
    let js = jetstream::new(client.clone());
    let stored_releases = || async {
        js.get_stream("FERRY_RELEASES")
            .await
            .expect("the releases stream")
            .info()
            .await
            .expect("its info")
            .state
            .messages
    };
    assert_eq!(stored_releases().await, 1, "CI's release of 1.0.0");
    let sample = bin("ferry-sample");
    let out = system
        .cli_async_as(
            "ferry-cli",
            &[
                "release",
                "publish",
                "--service",
                "web",
                "--version",
                "2.0.0",
                "--artifact",
                sample.to_str().unwrap(),
                "--timeout",
                "2s",
            ],
        )
        .await;
    assert!(!out.status.success(), "ferry-cli published a release");
    assert_eq!(
        stored_releases().await,
        1,
        "a release published by ferry-cli was stored"
    );
    let out = system
        .cli_async_as("ferry-ci", &["status", "--timeout", "2s"])
        .await;
    assert!(!out.status.success(), "ferry-ci called the API");
    system.shutdown().await;
}
