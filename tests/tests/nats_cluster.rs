//! ferry on a 3-node NATS cluster in containers (tests/src/nats_cluster.rs):
//! streams and buckets kept three times, agents and controllers connected
//! with every node's URL, and nodes killed under them. Also, on a single
//! server, the start-up check of `stream_replicas` against the server.
//!
//! The cluster tests need the local Docker engine (skipped without one,
//! failing under `CI`); the image is built from the static nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use ferry_controller::config::StageSettings;
use ferry_controller::ControllerConfig;
use ferry_e2e::metrics_scrape::{gauge, scrape_metrics};
use ferry_e2e::nats_cluster::{ferry_streams, LeafNode, NatsCluster, HUB_DOMAIN};
use ferry_e2e::rollout::*;
use ferry_e2e::*;
use ferry_protocol::api::HistoryRecord;
use ferry_protocol::command::{Action, ActionKind, Command};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::rollout::{AnalysisOverride, RolloutOptions, RolloutPhase, Strategy};
use ferry_protocol::{streams, Envelope, RefusalReason, SigningKey};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A 3-node cluster, or `None` (the test skips) without a Docker engine
/// outside CI.
async fn cluster(test: &str) -> Option<NatsCluster> {
    if !docker_ready(test, &[], "nothing: start the Docker engine") {
        return None;
    }
    Some(NatsCluster::start(3).await)
}

/// Every message stored in `stream` under `filter`, decoded as envelopes of
/// `T` (those that are not are skipped), read by an ephemeral consumer up
/// to the count it had pending when created (an empty fetch on a busy
/// cluster is not the end). A read that fails (right after a heal the
/// JetStream API can time out while the node catches up) is started over,
/// for up to [`WAIT`].
async fn stored<T: DeserializeOwned>(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Vec<T> {
    stored_envelopes(client, stream, filter)
        .await
        .into_iter()
        .map(|envelope| envelope.data)
        .collect()
}

/// As [`stored`], the whole envelopes.
async fn stored_envelopes<T: DeserializeOwned>(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Vec<Envelope<T>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match read_stored(client, stream, filter, deadline).await {
            Ok(found) => return found,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "could not read {filter} from {stream} within {WAIT:?}: {e}"
                );
                eprintln!("reading {filter} from {stream} again after: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn read_stored<T: DeserializeOwned>(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    deadline: tokio::time::Instant,
) -> Result<Vec<Envelope<T>>, String> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let mut reader = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let total = reader.info().await.map_err(|e| e.to_string())?.num_pending as usize;
    let mut read = 0;
    let mut found = Vec::new();
    while read < total {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("read {read} of the {total} messages of {filter}"));
        }
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| e.to_string())?;
            read += 1;
            if let Ok(envelope) = Envelope::<T>::decode(&message.payload) {
                found.push(envelope);
            }
        }
    }
    Ok(found)
}

/// The envelope ids of every message stored in `stream` under `filter`.
async fn stored_ids(client: &async_nats::Client, stream: &str, filter: &str) -> Vec<Uuid> {
    stored_envelopes::<serde_json::Value>(client, stream, filter)
        .await
        .into_iter()
        .map(|envelope| envelope.id)
        .collect()
}

/// History records of `command_id`.
async fn history_of(client: &async_nats::Client, command_id: Uuid) -> Vec<HistoryRecord> {
    stored::<HistoryRecord>(client, streams::history().name, "ferry.v1.history.>")
        .await
        .into_iter()
        .filter(|r| r.command_id == Some(command_id))
        .collect()
}

/// The stored final events (outcomes) of `command_id` for dev/web.
async fn outcomes_of(client: &async_nats::Client, command_id: Uuid) -> Vec<ServiceEvent> {
    env_outcomes_of(client, "dev", command_id).await
}

/// The stored final events (outcomes and refusals) of `command_id` for `env`'s web.
async fn env_outcomes_of(
    client: &async_nats::Client,
    env: &str,
    command_id: Uuid,
) -> Vec<ServiceEvent> {
    let filter = format!("ferry.v1.evt.{env}.web.>");
    stored::<ServiceEvent>(client, streams::events().name, &filter)
        .await
        .into_iter()
        .filter(|e| e.command_id == Some(command_id) && e.body.is_final())
        .collect()
}

/// The stored outcomes of `command_id`, read again (for up to [`WAIT`])
/// while there are none: an outcome the agent published during a failover
/// was acknowledged, and a read through a new stream leader right after it
/// has been seen to miss it.
async fn stored_outcomes_of(client: &async_nats::Client, command_id: Uuid) -> Vec<ServiceEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let outcomes = outcomes_of(client, command_id).await;
        if !outcomes.is_empty() || tokio::time::Instant::now() >= deadline {
            return outcomes;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A canary of 2.0.0 with 20% errors, steps of 10%, 50% and 100% held
/// 600 s each (only the analysis can end the first), judged every 500 ms
/// once `min_requests` canary requests are in.
fn bad_canary(min_requests: u64) -> Action {
    deploy(
        "2.0.0",
        &[("SAMPLE_ERROR_RATE", "0.2")],
        Some(RolloutOptions {
            strategy: Some(Strategy::Canary {
                steps: vec![10, 50, 100],
                step_secs: 600,
            }),
            analysis: Some(AnalysisOverride {
                interval_ms: Some(500),
                failures_to_abort: Some(2),
                min_requests: Some(min_requests),
                ..Default::default()
            }),
        }),
    )
}

/// Waits for the first step of the rollout of command `canary`.
async fn wait_first_step(watch: &mut EventWatch, canary: Uuid) {
    watch
        .wait_for(WAIT, "the canary's first step", |e| {
            e.command_id == Some(canary)
                && matches!(rollout_phase(e), Some(RolloutPhase::StepStarted))
        })
        .await;
}

/// Polls until the history holds a record of `command_id` with `outcome`.
async fn wait_history(client: &async_nats::Client, command_id: Uuid, outcome: &str) {
    wait_history_within(client, command_id, outcome, WAIT).await
}

/// How long, after a leaf's link heals, the hub may take to source what
/// the leaf stored meanwhile. A source whose consumer request went out
/// during the cut waits up to 30 s for its answer before it tries again,
/// and on a reconnect only a node leading the sourcing stream retries at
/// once (the others on their 10 s health check): usually a second, at
/// worst some 40 s.
const AFTER_HEAL: Duration = Duration::from_secs(120);

/// [`wait_history`] bounded by `wait`.
async fn wait_history_within(
    client: &async_nats::Client,
    command_id: Uuid,
    outcome: &str,
    wait: Duration,
) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let records = history_of(client, command_id).await;
        if records.iter().any(|r| r.outcome == outcome) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {outcome} history record of {command_id} within {wait:?}: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_command_stream_leader_killed_mid_canary_the_canary_is_rolled_back_once_and_the_next_command_runs_once(
) {
    let test = "leader_killed_mid_canary";
    let Some(cluster) = cluster(test).await else {
        return;
    };
    let mut system = System::on_servers(cluster.urls(), 3);
    system.start_controller().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    for stream in [
        "FERRY_COMMANDS",
        "FERRY_EVENTS",
        "FERRY_HISTORY",
        "KV_ferry_deployments",
    ] {
        assert_eq!(
            cluster.stream_replicas(&client, stream).await,
            3,
            "{stream} is kept on every node"
        );
    }
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let first = send(&system, &client, deploy("1.0.0", &[], None)).await;
    let outcome = watch.outcome(first, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;

    let load = Load::start(port, 4, Duration::from_millis(2));
    let canary = send(&system, &client, bad_canary(5)).await;
    wait_first_step(&mut watch, canary).await;
    let leader = cluster.stream_leader(&client, "FERRY_COMMANDS").await;
    cluster.kill(cluster.index_of(&leader));

    let outcome = watch.outcome(canary, Duration::from_secs(90)).await;
    match &outcome.body {
        EventBody::Failed { serving, .. } => {
            assert_eq!(serving.as_ref().map(|v| v.as_str()), Some("1.0.0"))
        }
        other => panic!("the bad canary was not rolled back: {other:?}"),
    }
    let new_leader = cluster.stream_leader(&client, "FERRY_COMMANDS").await;
    assert_ne!(new_leader, leader, "another node leads the commands");
    wait_history(&client, canary, "failed").await;

    let next = send(&system, &client, deploy("3.0.0", &[], None)).await;
    let outcome = watch.outcome(next, Duration::from_secs(60)).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "3.0.0", WAIT).await;
    wait_history(&client, next, "succeeded").await;
    let stats = load.stop().await;
    assert!(
        stats.by_version.get("2.0.0").copied().unwrap_or(0) > 0,
        "the canary did get traffic: {stats:?}"
    );

    // Once each: one outcome event and one history record per command,
    // though the node that led the commands died under them.
    for (what, id) in [("the canary", canary), ("the next deploy", next)] {
        let outcomes = outcomes_of(&client, id).await;
        assert_eq!(outcomes.len(), 1, "{what}'s outcomes: {outcomes:#?}");
        let records: Vec<HistoryRecord> = history_of(&client, id)
            .await
            .into_iter()
            .filter(|r| r.outcome == "failed" || r.outcome == "succeeded")
            .collect();
        assert_eq!(records.len(), 1, "{what}'s history: {records:#?}");
    }
    system.shutdown().await;
}

/// dev, acceptance and production, each deploying a release by itself once
/// the previous environment runs it (no approvals, no soak).
fn automatic_pipeline(system: &mut System) {
    let automatic = StageSettings {
        auto_deploy: Some(true),
        soak: Some("0s".into()),
        ..Default::default()
    };
    system.controller_config.pipeline = BTreeMap::from([
        ("acceptance".to_owned(), automatic.clone()),
        ("production".to_owned(), automatic),
    ]);
}

fn deploy_succeeded(e: &ServiceEvent, version: &str) -> bool {
    matches!(&e.body, EventBody::Succeeded { action: ActionKind::Deploy, version: Some(v), .. } if v.as_str() == version)
}

/// How many commands FERRY_COMMANDS holds for `env`'s web.
async fn stored_commands(client: &async_nats::Client, env: &str) -> usize {
    stored::<Command>(client, "FERRY_COMMANDS", &format!("ferry.v1.cmd.{env}.web"))
        .await
        .len()
}

/// Every history record of web `version`, in order.
async fn history_of_version(client: &async_nats::Client, version: &str) -> Vec<HistoryRecord> {
    stored::<HistoryRecord>(client, streams::history().name, "ferry.v1.history.>")
        .await
        .into_iter()
        .filter(|r| r.version.as_ref().is_some_and(|v| v.as_str() == version))
        .collect()
}

/// Asserts that `version` was deployed once to each environment and that
/// no transition of it was recorded twice.
async fn assert_promoted_once(client: &async_nats::Client, version: &str) {
    for env in ENVIRONMENTS {
        assert_eq!(stored_commands(client, env).await, 1, "commands to {env}");
    }
    let records = history_of_version(client, version).await;
    let mut seen = BTreeMap::new();
    for r in &records {
        let key = (
            r.environment.as_ref().map(|e| e.to_string()),
            r.action.clone(),
            r.outcome.clone(),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "transitions recorded more than once: {twice:?}\n{records:#?}"
    );
    for env in ENVIRONMENTS {
        let key = (
            Some(env.to_owned()),
            "deploy".to_owned(),
            "issued".to_owned(),
        );
        assert_eq!(
            seen.get(&key),
            Some(&1),
            "one deploy issued to {env}: {records:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_promoted_dev_to_production_while_a_nats_node_is_down_and_comes_back() {
    let Some(cluster) = cluster("promoted_with_a_node_down").await else {
        return;
    };
    let system = System::on_servers(cluster.urls(), 3);
    promoted_with_a_node_down(cluster, system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_deploy_cluster_configuration_with_role_users_a_release_is_promoted_while_a_node_is_down(
) {
    if !docker_ready(
        "deploy_cluster_with_users",
        &[],
        "nothing: start the Docker engine",
    ) {
        return;
    }
    let mut nats = NatsServer::external_with_users(String::new());
    let cluster = NatsCluster::start_deploy(&nats.user_environment()).await;
    nats.point_at(cluster.urls());
    let anonymous = async_nats::ConnectOptions::new()
        .max_reconnects(1)
        .connect(cluster.url(0))
        .await;
    assert!(
        anonymous.is_err(),
        "the deploy cluster refuses a client without a user"
    );
    let system = System::on_servers_with_users(nats, 3);
    promoted_with_a_node_down(cluster, system).await;
}

/// With every agent and the controller on `cluster`: the node leading the
/// promotions bucket killed, a release published, promoted to dev, the node
/// back, the release through acceptance to production, once.
async fn promoted_with_a_node_down(cluster: NatsCluster, mut system: System) {
    automatic_pipeline(&mut system);
    system.start_controller().await;
    let mut ports = BTreeMap::new();
    for env in ENVIRONMENTS {
        let port = free_port();
        system.start_agent(env, port).await;
        ports.insert(env, port);
    }
    let client = system.nats.client().await;
    let mut dev = EventWatch::new(&client, "dev", "web").await;
    let mut production = EventWatch::new(&client, "production", "web").await;

    // The node leading the promotions bucket goes down before the release.
    let leader = cluster.stream_leader(&client, "KV_ferry_promotions").await;
    let down = cluster.index_of(&leader);
    cluster.kill(down);
    let killed = std::time::Instant::now();
    cluster.wait_failover(&client, down, &ferry_streams()).await;
    eprintln!(
        "every stream and bucket led by a live node {:?} after the kill",
        killed.elapsed()
    );
    system.publish_release("web", "1.0.0", &[]).await;
    dev.wait_for(Duration::from_secs(60), "dev deploy of 1.0.0", |e| {
        deploy_succeeded(e, "1.0.0")
    })
    .await;
    cluster.start_node(down).await;
    production
        .wait_for(Duration::from_secs(60), "production deploy of 1.0.0", |e| {
            deploy_succeeded(e, "1.0.0")
        })
        .await;
    wait_serving(ports["production"], "1.0.0", WAIT).await;
    system.stop_controller().await;
    assert_promoted_once(&client, "1.0.0").await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_on_different_nodes_promote_a_release_once() {
    let Some(cluster) = cluster("two_controllers_on_two_nodes").await else {
        return;
    };
    // The first controller (and the CLI) on node 1 only, the second on node 2.
    let mut system = System::on_servers(cluster.url(0), 3);
    automatic_pipeline(&mut system);
    system.start_controller().await;
    let key_file = system.dir.path().join("controller.nk");
    let second = ControllerConfig {
        nats_url: cluster.url(1),
        signing_key_file: key_file,
        ..system.controller_config.clone()
    }
    .validate()
    .unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let second = tokio::spawn(ferry_controller::run(second, token.clone()));
    for env in ENVIRONMENTS {
        let mut config = system.agent_config(env, &[("web", free_port())]);
        config.nats_url = cluster.urls();
        system.start_agent_with(config).await;
    }
    let client = system.nats.client().await;
    let mut production = EventWatch::new(&client, "production", "web").await;
    system.publish_release("web", "1.0.0", &[]).await;
    production
        .wait_for(Duration::from_secs(60), "production deploy of 1.0.0", |e| {
            deploy_succeeded(e, "1.0.0")
        })
        .await;
    // Both stopped, so nothing either had in hand is still to come.
    token.cancel();
    second.await.unwrap().unwrap();
    system.stop_controller().await;
    assert_promoted_once(&client, "1.0.0").await;
    system.shutdown().await;
}

/// A controller's and a dev agent's configuration files in `dir` for
/// `nats_url` with `stream_replicas = 3`, the agent trusting the
/// controller's new key: (controller.toml, agent.toml).
fn daemon_configs(dir: &std::path::Path, nats_url: &str) -> (PathBuf, PathBuf) {
    let key = SigningKey::generate();
    let key_file = dir.join("controller.nk");
    std::fs::write(&key_file, key.seed().unwrap()).unwrap();
    let controller = dir.join("controller.toml");
    std::fs::write(
        &controller,
        format!(
            "nats_url = \"{nats_url}\"\nsigning_key_file = \"{}\"\nstream_replicas = 3\n",
            key_file.display()
        ),
    )
    .unwrap();
    let agent = dir.join("agent.toml");
    std::fs::write(
        &agent,
        format!(
            "environment = \"dev\"\nnats_url = \"{nats_url}\"\nstate_dir = \"{}\"\ntrusted_keys = [\"{}\"]\nstream_replicas = 3\n[services.web]\nport = {}\n",
            dir.join("agent").display(),
            key.public_key(),
            free_port(),
        ),
    )
    .unwrap();
    (controller, agent)
}

/// Runs `binary --config <config>` to its end (bounded), returning its exit
/// code and standard error.
async fn run_to_exit(binary: &str, config: &std::path::Path) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin(binary))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{binary} did not exit within {WAIT:?}"))
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_kept_with_another_replica_count_stop_controller_and_agent_with_exit_64_listing_each(
) {
    init_tracing();
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    for spec in streams::all_streams() {
        js.get_or_create_stream(spec.config()).await.unwrap();
    }
    for spec in streams::BUCKETS {
        js.create_key_value(spec.replicated(1)).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (controller, agent) = daemon_configs(dir.path(), &nats.url());
    let (code, stderr) = run_to_exit("ferry-controller", &controller).await;
    assert_eq!(code, Some(64), "{stderr}");
    for stream in streams::all_streams()
        .map(|s| s.name.to_owned())
        .into_iter()
        .chain(streams::BUCKETS.iter().map(|b| b.stream_name()))
    {
        assert!(
            stderr.contains(&format!("stream {stream} has 1 replica(s)")),
            "{stream} not listed: {stderr}"
        );
    }

    let (code, stderr) = run_to_exit("ferry-agent", &agent).await;
    assert_eq!(code, Some(64), "{stderr}");
    for stream in ["FERRY_COMMANDS", "FERRY_EVENTS"] {
        assert!(
            stderr.contains(&format!("stream {stream} has 1 replica(s)")),
            "{stream} not listed: {stderr}"
        );
    }
    // Nothing was changed behind the operator's back.
    for spec in streams::all_streams() {
        let mut stream = js.get_stream(spec.name).await.unwrap();
        assert_eq!(stream.info().await.unwrap().config.num_replicas.max(1), 1);
    }
}

#[test]
fn the_deploy_cluster_configuration_is_valid_syncs_every_write_and_keeps_the_users() {
    let config = ferry_e2e::nats::deploy_config().with_file_name("nats-cluster.conf");
    let store = tempfile::tempdir().unwrap();
    let mut check = std::process::Command::new(ferry_e2e::nats::nats_bin());
    check
        .arg("-t")
        .arg("-c")
        .arg(&config)
        .env("FERRY_NATS_STORE_DIR", store.path())
        .env("FERRY_NATS_SERVER_NAME", "nats-1");
    for (_, variable) in ferry_e2e::nats::DEPLOY_USERS
        .into_iter()
        .chain(ferry_e2e::nats_cluster::LEAF_USERS)
    {
        check.env(variable, "a-password");
    }
    let out = check.output().expect("run nats-server -t");
    assert!(
        out.status.success(),
        "nats-server rejects {}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    for wanted in [
        "sync_interval: always",
        "jepsen.io/analyses/nats-2.12.1",
        "include ./users.conf",
        "nats-route://nats-3:6222",
    ] {
        assert!(
            text.contains(wanted),
            "{wanted:?} missing from {}",
            config.display()
        );
    }
}

/// The node the dev agent's connection is on, polled from the nodes' `/connz`.
async fn agents_node(cluster: &NatsCluster) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(n) = cluster.node_serving("ferry-agent-dev").await {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node lists the agent's connection within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_an_agent_is_connected_to_cut_off_the_agent_moves_to_another_and_commands_run_once(
) {
    agents_node_lost(
        "node_cut_off",
        NatsCluster::disconnect,
        NatsCluster::connect,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_an_agent_is_connected_to_paused_the_agent_moves_to_another_and_commands_run_once()
{
    agents_node_lost("node_paused", NatsCluster::pause, NatsCluster::unpause).await;
}

/// The node the dev agent is connected to is lost (`lose`) and later back
/// (`heal`): the agent moves to another node, keeps serving, and commands
/// before, during and after each run once.
async fn agents_node_lost(
    test: &str,
    lose: fn(&NatsCluster, usize),
    heal: fn(&NatsCluster, usize),
) {
    let Some(cluster) = cluster(test).await else {
        return;
    };
    let mut system = System::on_servers(cluster.urls(), 3);
    let port = free_port();
    system.start_agent("dev", port).await;
    let cut = agents_node(&cluster).await;
    // The test watches from another node, so the cut does not blind it.
    let watcher = (cut + 1) % 3;
    let client = async_nats::connect(cluster.url(watcher)).await.unwrap();
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let first = send(&system, &client, deploy("1.0.0", &[], None)).await;
    let outcome = watch.outcome(first, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;

    let load = Load::start(port, 2, Duration::from_millis(5));
    lose(&cluster, cut);
    let lost = std::time::Instant::now();
    let agents_streams = ["FERRY_COMMANDS".to_owned(), "FERRY_EVENTS".to_owned()];
    cluster.wait_failover(&client, cut, &agents_streams).await;
    let dev = &system.agents["dev"].config;
    let dev_consumer = streams::agent_consumer(&dev.environment, &dev.host);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let leader = cluster
            .consumer_leader(&client, "FERRY_COMMANDS", &dev_consumer)
            .await;
        eprintln!(
            "{test}: agent's consumer led by {leader:?} after {:?}",
            lost.elapsed()
        );
        if leader.is_some_and(|l| l != cluster.nodes()[cut].name) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent's consumer still led by the lost node a minute on"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let during = send(&system, &client, deploy("2.0.0", &[], None)).await;
    // A frozen node is left after three unanswered pings (15 s).
    let outcome = watch.outcome(during, Duration::from_secs(60)).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "2.0.0", WAIT).await;
    eprintln!(
        "{test}: the command sent after the loss ran {:?} after it",
        lost.elapsed()
    );
    let moved = agents_node(&cluster).await;
    assert_ne!(
        moved, cut,
        "the agent reconnected to a node still in the cluster"
    );

    heal(&cluster, cut);
    cluster.wait_ready(cut).await;
    let after = send(&system, &client, deploy("3.0.0", &[], None)).await;
    let outcome = watch.outcome(after, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    let stats = load.stop().await;
    assert_eq!(
        stats.failed, 0,
        "the service kept serving through the cut: {stats:?}"
    );
    for (what, id) in [("before", first), ("during", during), ("after", after)] {
        let outcomes = stored_outcomes_of(&client, id).await;
        assert_eq!(
            outcomes.len(),
            1,
            "the command {what} the cut: {outcomes:#?}"
        );
    }
    system.shutdown().await;
}

/// A hub cluster (domain `hub`), production's leaf node, the controller on
/// the hub with production's leaf domain, and production's agent on its
/// leaf serving web 1.0.0; `None` (the test skips) without a Docker engine
/// outside CI. Returns the agent's port, a client of the hub, one of the
/// leaf, and a watch of production/web's live events on the leaf.
struct LeafSetup {
    cluster: NatsCluster,
    leaf: LeafNode,
    system: System,
    port: u16,
    hub: async_nats::Client,
    local: async_nats::Client,
    watch: EventWatch,
}

async fn production_on_a_leaf(test: &str) -> Option<LeafSetup> {
    if !docker_ready(test, &[], "nothing: start the Docker engine") {
        return None;
    }
    let cluster = NatsCluster::start_hub(3).await;
    let leaf = cluster.start_leaf("production").await;
    let mut system = System::on_servers(cluster.urls(), 3);
    // The hub's streams as an agent at the hub would have created them
    // before the controller first ran with leaves (the controller adds the
    // leaf's source to the events stream), and production's agent started
    // before the controller: each stream exists before another sources it.
    // (A source of a stream not there yet is retried after 10 s, then 20 s...)
    let js = jetstream::new(system.nats.client().await);
    for spec in [streams::commands(), streams::events()] {
        js.get_or_create_stream(spec.replicated(3)).await.unwrap();
    }
    let port = free_port();
    let mut config = system.agent_config("production", &[("web", port)]);
    config.nats_url = leaf.url();
    config.stream_replicas = streams::Replicas::ONE;
    config.leaf = Some(streams::LeafDomains {
        leaf: streams::Domain::new("production").unwrap(),
        hub: streams::Domain::new(HUB_DOMAIN).unwrap(),
    });
    system.start_agent_with(config).await;
    system.controller_config.jetstream_domain = Some(HUB_DOMAIN.to_owned());
    system.controller_config.leaf_domains =
        BTreeMap::from([("production".to_owned(), "production".to_owned())]);
    system.metrics_port = Some(free_port());
    system.start_controller().await;
    let sources = js
        .get_stream("FERRY_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .sources
        .clone()
        .unwrap_or_default();
    assert!(
        streams::hub_events(&[(
            ferry_protocol::EnvName::new("production").unwrap(),
            streams::Domain::new("production").unwrap()
        )])
        .sources_present(&sources),
        "the controller added the leaf's source: {sources:?}"
    );
    let hub = system.nats.client().await;
    let local = async_nats::connect(leaf.url()).await.unwrap();
    let mut watch = EventWatch::new(&local, "production", "web").await;
    let first = send_production(&system, &hub, deploy("1.0.0", &[], None)).await;
    let outcome = watch.outcome(first, AFTER_HEAL).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;
    // The outcome reached the hub's events stream through its source, once:
    // the leaf link does not carry production's events as well.
    wait_history_within(&hub, first, "succeeded", AFTER_HEAL).await;
    assert_eq!(
        stored_env_outcomes(&hub, "production", first).await.len(),
        1,
        "one copy of the outcome at the hub"
    );
    Some(LeafSetup {
        cluster,
        leaf,
        system,
        port,
        hub,
        local,
        watch,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_at_the_hub_follows_a_leaf_environments_heartbeats_and_metrics_live() {
    let Some(setup) = production_on_a_leaf("leaf_followed_live").await else {
        return;
    };
    let metrics_port = setup.system.metrics_port.unwrap();
    let load = Load::start(setup.port, 2, Duration::from_millis(5));
    // The leaf link denies production's event subjects (the hub stores them
    // once, through its stream's source): only the controller's consumer of
    // that stream can bring its heartbeats and metrics into /metrics.
    let agent = [("environment", "production")];
    let web = [("environment", "production"), ("service", "web")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, scrape)) = scrape_metrics(metrics_port).await {
            let up = gauge(&scrape, "ferry_agent_up", &agent) == Some(1.0);
            let healthy = gauge(&scrape, "ferry_service_replicas_healthy", &web) == Some(2.0);
            let live =
                gauge(&scrape, "ferry_service_requests_per_second", &web).is_some_and(|r| r > 1.0);
            if up && healthy && live {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub's controller never showed production on its leaf as up, healthy and serving"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "{stats:?}");
    let mut system = setup.system;
    system.stop_controller().await;
    system.shutdown().await;
}

/// Signs `action` for production/web and stores it at the hub, as the controller would.
async fn send_production(system: &System, hub: &async_nats::Client, action: Action) -> Uuid {
    send_command(hub, &system.controller_key, "production", "web", action).await
}

/// The stored final events of `command_id` for `env`'s web, read again (for
/// up to [`AFTER_HEAL`]) while there are none: at the hub they come through
/// the source of the leaf's events stream.
async fn stored_env_outcomes(
    client: &async_nats::Client,
    env: &str,
    command_id: Uuid,
) -> Vec<ServiceEvent> {
    let deadline = tokio::time::Instant::now() + AFTER_HEAL;
    loop {
        let outcomes = env_outcomes_of(client, env, command_id).await;
        if !outcomes.is_empty() || tokio::time::Instant::now() >= deadline {
            return outcomes;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (bounded by [`AFTER_HEAL`]) until the hub's `FERRY_EVENTS` holds
/// every event id of `ids`, and asserts it holds none of them twice.
async fn assert_at_the_hub_once(hub: &async_nats::Client, ids: &[Uuid]) {
    let deadline = tokio::time::Instant::now() + AFTER_HEAL;
    loop {
        let at_hub = stored_ids(hub, "FERRY_EVENTS", "ferry.v1.>").await;
        let mut counts: BTreeMap<Uuid, usize> = BTreeMap::new();
        for id in &at_hub {
            *counts.entry(*id).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "events stored twice at the hub: {twice:?}"
        );
        let missing: Vec<&Uuid> = ids.iter().filter(|id| !counts.contains_key(id)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of the leaf's {} events never reached the hub: {missing:?}",
            missing.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_cut_off_from_the_hub_mid_canary_rolls_back_alone_serves_throughout_and_reports_everything_after_the_heal(
) {
    let Some(LeafSetup {
        cluster: _cluster,
        leaf,
        mut system,
        port,
        hub,
        local,
        mut watch,
    }) = production_on_a_leaf("leaf_cut_mid_canary").await
    else {
        return;
    };
    // 200 requests a second, 20 of them to the canary at its first step:
    // with 100 canary requests needed before any verdict, the analysis
    // decides seconds after the step starts, so after the cut.
    let load = Load::at_rate(port, 200);
    let canary = send_production(&system, &hub, bad_canary(100)).await;
    wait_first_step(&mut watch, canary).await;
    let agent = leaf.connection("ferry-agent-production").await;
    assert!(agent.is_some(), "the agent is connected to its leaf");
    leaf.cut();
    assert!(
        !watch
            .seen
            .iter()
            .any(|e| e.command_id == Some(canary) && (e.body.is_final() || aborted(e).is_some())),
        "the canary was decided before the cut: {:#?}",
        watch.seen
    );
    let cut = std::time::Instant::now();
    leaf.wait_link(false).await;
    eprintln!("leaf link down {:?} after the cut", cut.elapsed());

    let outcome = watch.outcome(canary, Duration::from_secs(90)).await;
    match &outcome.body {
        EventBody::Failed { serving, .. } => {
            assert_eq!(serving.as_ref().map(|v| v.as_str()), Some("1.0.0"))
        }
        other => panic!("the bad canary was not rolled back: {other:?}"),
    }
    eprintln!("canary rolled back {:?} after the cut", cut.elapsed());
    assert_eq!(
        leaf.connection("ferry-agent-production").await,
        agent,
        "the agent stayed connected to its leaf through the cut"
    );
    wait_serving(port, "1.0.0", WAIT).await;
    // Cut off for real: the hub has not heard of the outcome, and the leaf
    // kept it.
    assert!(
        env_outcomes_of(&hub, "production", canary).await.is_empty(),
        "the outcome reached the hub through a cut link"
    );
    assert_eq!(
        env_outcomes_of(&local, "production", canary).await.len(),
        1,
        "the leaf's events stream holds the outcome"
    );
    let stats = load.stop().await;
    assert!(
        stats.by_version.get("2.0.0").copied().unwrap_or(0) > 0,
        "the canary did get traffic: {stats:?}"
    );
    let beyond_the_canary: u64 = stats
        .failed_by_version
        .iter()
        .filter(|(version, _)| version.as_str() != "2.0.0")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        beyond_the_canary, 0,
        "only the bad canary failed requests while the leaf was cut off: {stats:?}"
    );
    // Everything the leaf stored for production up to now (the window of
    // the cut included: rollout steps, analysis, outcome, heartbeats).
    let window = stored_ids(&local, "FERRY_EVENTS", "ferry.v1.>").await;

    leaf.heal();
    let healed = std::time::Instant::now();
    leaf.wait_link(true).await;
    wait_history_within(&hub, canary, "failed", AFTER_HEAL).await;
    eprintln!(
        "the canary's failure in the hub's history {:?} after the heal",
        healed.elapsed()
    );
    assert_at_the_hub_once(&hub, &window).await;
    eprintln!(
        "all {} events of the window at the hub {:?} after the heal",
        window.len(),
        healed.elapsed()
    );
    assert_eq!(env_outcomes_of(&hub, "production", canary).await.len(), 1);
    let records: Vec<HistoryRecord> = history_of(&hub, canary)
        .await
        .into_iter()
        .filter(|r| r.outcome == "failed")
        .collect();
    assert_eq!(records.len(), 1, "one history record: {records:#?}");
    system.stop_controller().await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_issued_while_production_is_cut_off_run_once_after_the_heal_and_an_expired_one_is_refused(
) {
    let Some(LeafSetup {
        cluster: _cluster,
        leaf,
        mut system,
        port,
        hub,
        local,
        mut watch,
    }) = production_on_a_leaf("leaf_cut_commands").await
    else {
        return;
    };
    leaf.cut();
    leaf.wait_link(false).await;
    let during = send_production(&system, &hub, deploy("2.0.0", &[], None)).await;
    let short = Duration::from_secs(3);
    let expiring = send_command_expiring(
        &hub,
        &system.controller_key,
        "production",
        "web",
        deploy("9.0.0", &[], None),
        short,
    )
    .await;
    let expires = std::time::Instant::now() + short;
    let last = send_production(&system, &hub, deploy("3.0.0", &[], None)).await;
    // Until the short one has expired, nothing reaches the leaf.
    while std::time::Instant::now() < expires + Duration::from_secs(1) {
        assert_eq!(
            stored_commands(&local, "production").await,
            1,
            "a command crossed the cut link"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(watch.seen.iter().all(|e| e.command_id != Some(during)));

    leaf.heal();
    let healed = std::time::Instant::now();
    leaf.wait_link(true).await;
    let outcome = watch.outcome(during, AFTER_HEAL).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    eprintln!(
        "the first command ran {:?} after the heal",
        healed.elapsed()
    );
    let refused = watch.outcome(expiring, WAIT).await;
    match &refused.body {
        EventBody::Refused { reason, detail } => {
            assert_eq!(*reason, RefusalReason::Expired, "{detail}")
        }
        other => panic!("the expired command was not refused as expired: {other:?}"),
    }
    let outcome = watch.outcome(last, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "3.0.0", WAIT).await;
    for (id, outcome) in [
        (during, "succeeded"),
        (expiring, "refused"),
        (last, "succeeded"),
    ] {
        wait_history_within(&hub, id, outcome, AFTER_HEAL).await;
    }
    eprintln!(
        "the three commands' records in the hub's history {:?} after the heal",
        healed.elapsed()
    );
    // Once each: one command in the leaf's stream, one final event at the
    // hub, one history record.
    assert_eq!(stored_commands(&local, "production").await, 4);
    for (what, id) in [
        ("the command during the cut", during),
        ("the expired command", expiring),
        ("the last command", last),
    ] {
        let outcomes = stored_env_outcomes(&hub, "production", id).await;
        assert_eq!(outcomes.len(), 1, "{what}'s outcomes: {outcomes:#?}");
        let records: Vec<HistoryRecord> = history_of(&hub, id)
            .await
            .into_iter()
            .filter(|r| ["failed", "succeeded", "refused"].contains(&r.outcome.as_str()))
            .collect();
        assert_eq!(records.len(), 1, "{what}'s history: {records:#?}");
    }
    system.stop_controller().await;
    system.shutdown().await;
}

#[test]
fn the_deploy_leaf_configurations_are_valid_each_in_its_own_domain_and_deny_its_events_on_the_link()
{
    let dir = ferry_e2e::nats::deploy_config();
    let hub = std::fs::read_to_string(dir.with_file_name("nats-cluster.conf")).unwrap();
    for wanted in [
        "domain: hub",
        "leafnodes {",
        "port: 7422",
        "user: ferry-leaf-production, password: $FERRY_LEAF_PRODUCTION_PASSWORD",
    ] {
        assert!(
            hub.contains(wanted),
            "{wanted:?} missing from nats-cluster.conf"
        );
    }
    let store = tempfile::tempdir().unwrap();
    for env in ENVIRONMENTS {
        let config = dir.with_file_name(format!("leaf-{env}.conf"));
        let out = std::process::Command::new(ferry_e2e::nats::nats_bin())
            .arg("-t")
            .arg("-c")
            .arg(&config)
            .env("FERRY_NATS_STORE_DIR", store.path())
            .env(
                format!("FERRY_AGENT_{}_PASSWORD", env.to_uppercase()),
                "a-password",
            )
            .env("FERRY_HUB_URL_1", "nats-leaf://u:p@nats-1:7422")
            .env("FERRY_HUB_URL_2", "nats-leaf://u:p@nats-2:7422")
            .env("FERRY_HUB_URL_3", "nats-leaf://u:p@nats-3:7422")
            .output()
            .expect("run nats-server -t");
        assert!(
            out.status.success(),
            "nats-server rejects {}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&config).unwrap();
        let env_name = ferry_protocol::EnvName::new(env).unwrap();
        let host = ferry_protocol::HostName::new(format!("{env}-1")).unwrap();
        let denied: Vec<String> = streams::leaf_event_subjects(&env_name)
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect();
        let denied = denied.join(", ");
        for wanted in [
            format!("domain: {env}"),
            "sync_interval: always".to_owned(),
            "urls: [$FERRY_HUB_URL_1, $FERRY_HUB_URL_2, $FERRY_HUB_URL_3]".to_owned(),
            format!("deny_exports: [{denied}]"),
            format!("deny_imports: [{denied}]"),
            format!("user: ferry-agent-{env}"),
            // The harness's in-process agent is host `<env>-1`: its
            // consumer must be listed, or deploy leaf runs refuse it.
            format!(
                "\"$JS.API.CONSUMER.MSG.NEXT.FERRY_COMMANDS.{}\"",
                streams::agent_consumer(&env_name, &host)
            ),
            format!(
                "\"$JS.API.CONSUMER.CREATE.FERRY_COMMANDS.{}.ferry.v1.cmd.{env}.>\"",
                streams::agent_consumer(&env_name, &host)
            ),
        ] {
            assert!(
                text.contains(&wanted),
                "{wanted:?} missing from {}",
                config.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_deploy_hub_and_leaf_configurations_with_role_users_production_takes_its_commands_through_its_leaf(
) {
    if !docker_ready(
        "deploy_leaf_with_users",
        &[],
        "nothing: start the Docker engine",
    ) {
        return;
    }
    let mut nats = NatsServer::external_with_users(String::new());
    let users = nats.user_environment();
    let cluster = NatsCluster::start_deploy(&users).await;
    nats.point_at(cluster.urls());
    let leaf = cluster.start_deploy_leaf("production", &users).await;
    let anonymous = async_nats::ConnectOptions::new()
        .max_reconnects(1)
        .connect(leaf.url())
        .await;
    assert!(
        anonymous.is_err(),
        "the deploy leaf refuses a client without a user"
    );
    let mut system = System::on_servers_with_users(nats, 3);
    system.controller_config.jetstream_domain = Some(HUB_DOMAIN.to_owned());
    system.controller_config.leaf_domains =
        BTreeMap::from([("production".to_owned(), "production".to_owned())]);
    system.start_controller().await;
    let port = free_port();
    let mut config = system.agent_config("production", &[("web", port)]);
    assert_eq!(config.nats_user.as_deref(), Some("ferry-agent-production"));
    config.nats_url = leaf.url();
    config.stream_replicas = streams::Replicas::ONE;
    config.leaf = Some(streams::LeafDomains {
        leaf: streams::Domain::new("production").unwrap(),
        hub: streams::Domain::new(HUB_DOMAIN).unwrap(),
    });
    // Ready once its heartbeat, sourced from the leaf, is in the hub's bucket.
    system.start_agent_with(config).await;
    let hub = system.nats.client().await;
    let id = send_production(&system, &hub, deploy("1.0.0", &[], None)).await;
    wait_serving(port, "1.0.0", AFTER_HEAL).await;
    wait_history_within(&hub, id, "succeeded", AFTER_HEAL).await;
    assert_eq!(
        stored_env_outcomes(&hub, "production", id).await.len(),
        1,
        "one copy of the outcome at the hub"
    );
    system.stop_controller().await;
    system.shutdown().await;
}

/// A daemon's process with its standard error collected as it runs.
struct Daemon {
    child: tokio::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    fn spawn(binary: &str, config: &std::path::Path) -> Daemon {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(bin(binary))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Daemon { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Asserts the process has not exited.
    fn assert_running(&mut self, binary: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{binary} exited instead of waiting: {}",
            self.stderr()
        );
    }

    /// Polls until its log holds `wanted`, asserting it keeps running.
    async fn wait_logged(&mut self, binary: &str, wanted: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.stderr().contains(wanted) {
            self.assert_running(binary);
            assert!(
                tokio::time::Instant::now() < deadline,
                "{binary} did not log {wanted:?} within {WAIT:?}: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_agent_started_while_the_cluster_has_no_quorum_wait_and_come_up_when_it_returns(
) {
    let Some(cluster) = cluster("started_without_quorum").await else {
        return;
    };
    // Two of three nodes down: JetStream can place no R3 stream.
    cluster.kill(1);
    cluster.kill(2);
    let dir = tempfile::tempdir().unwrap();
    let (controller_config, agent_config) = daemon_configs(dir.path(), &cluster.urls());
    let waiting = "JetStream cannot serve ferry's streams yet";
    let mut controller = Daemon::spawn("ferry-controller", &controller_config);
    let mut agent = Daemon::spawn("ferry-agent", &agent_config);
    controller.wait_logged("ferry-controller", waiting).await;
    agent.wait_logged("ferry-agent", waiting).await;

    let client = async_nats::connect(cluster.url(0)).await.unwrap();
    let dev = ferry_protocol::EnvName::new("dev").unwrap();
    let mut heartbeats = client
        .subscribe(ferry_protocol::subject::agent_event(
            &dev,
            ferry_protocol::subject::AgentEventKind::Heartbeat,
        ))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let back = std::time::Instant::now();
    cluster.start_node(1).await;
    cluster.start_node(2).await;
    tokio::time::timeout(Duration::from_secs(90), heartbeats.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no heartbeat from the agent within 90 s of the quorum's return: {}",
                agent.stderr()
            )
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let status = std::process::Command::new(bin("ferry"))
            .args(["status", "--output", "json"])
            .env("FERRY_NATS_URL", cluster.url(0))
            .output()
            .unwrap();
        if status.status.success() {
            break;
        }
        controller.assert_running("ferry-controller");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller's API did not answer within 90 s of the quorum's return: {}\n{}",
            String::from_utf8_lossy(&status.stderr),
            controller.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "controller and agent up {:?} after the quorum's return began",
        back.elapsed()
    );
    let js = jetstream::new(client.clone());
    for stream in ferry_streams() {
        let mut found = js.get_stream(&stream).await.unwrap();
        assert_eq!(
            found.info().await.unwrap().config.num_replicas,
            3,
            "{stream}"
        );
    }
}
