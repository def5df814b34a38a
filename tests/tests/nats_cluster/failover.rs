//! Nodes lost under a running pipeline: a stream leader killed mid-canary,
//! a node down while a release is promoted, two controllers on different
//! nodes, and the node an agent is connected to cut off or paused.

use super::*;

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
    first_release_served(&mut watch, first, WAIT, port).await;

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
    first_release_served(&mut watch, first, WAIT, port).await;

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
