//! Production on a leaf node of the hub: live telemetry at the hub, a cut
//! link mid-canary and commands issued during the cut, and the deploy
//! leaf configurations.

use super::*;

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
    first_release_served(&mut watch, first, AFTER_HEAL, port).await;
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
