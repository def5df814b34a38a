//! Faults injected into a running agent: what it loses (nothing) and what it
//! leaves behind (nothing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_e2e::{
    free_port, sample_release, send_command, until, wait_serving, AgentProcess, EventWatch, System,
    WAIT,
};
use ferry_protocol::command::Action;
use ferry_protocol::event::EventBody;

/// A replica process as /proc shows it.
#[derive(Debug)]
struct Replica {
    pid: u32,
    parent: u32,
    version: String,
}

/// The running processes whose stdout is `log` (the service's log in the
/// agent's state directory) and whose environment names dev's `web`.
fn replicas_writing_to(log: &Path) -> Vec<Replica> {
    let log = std::fs::canonicalize(log).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let dir = PathBuf::from(format!("/proc/{pid}"));
            if std::fs::read_link(dir.join("fd/1")).ok()? != log {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            if fields.next()? == "Z" {
                return None;
            }
            let parent = fields.next()?.parse().ok()?;
            let environ = std::fs::read(dir.join("environ")).ok()?;
            let vars: BTreeMap<String, String> = environ
                .split(|b| *b == 0)
                .filter_map(|v| {
                    let (k, v) = std::str::from_utf8(v).ok()?.split_once('=')?;
                    Some((k.to_owned(), v.to_owned()))
                })
                .collect();
            if vars.get("FERRY_SERVICE")? != "web" || vars.get("FERRY_ENVIRONMENT")? != "dev" {
                return None;
            }
            Some(Replica {
                pid,
                parent,
                version: vars.get("FERRY_VERSION")?.clone(),
            })
        })
        .collect()
}

fn deploy(version: &str, env: &[(&str, &str)]) -> Action {
    Action::Deploy {
        release: sample_release(version, env),
        replicas: Some(2),
        health: None,
        approvals: Vec::new(),
        rollout: None,
        hotfix: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_deploy_restarts_on_one_version_with_no_orphaned_replicas() {
    let system = System::without_controller();
    let port = free_port();
    let mut agent = AgentProcess::start(
        &system,
        &format!(
            "[services.web]\ncommand = [\"{{artifact}}\"]\nport = {port}\nreplicas = 2\nstop_timeout = \"2s\"\n\n[services.web.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nfailure_threshold = 2\nstart_timeout = \"30s\"\n"
        ),
    )
    .await;
    let log = system.dir.path().join("agent-dev/logs/web.log");
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let key = &system.controller_key;

    let first = send_command(&client, key, "dev", "web", deploy("1.0.0", &[])).await;
    let outcome = watch.outcome(first, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;

    // 2.0.0 never turns healthy, so the agent is still waiting on it, with
    // both versions' replicas running, when it is killed.
    let interrupted = send_command(
        &client,
        key,
        "dev",
        "web",
        deploy("2.0.0", &[("SAMPLE_HEALTHY", "false")]),
    )
    .await;
    until("two 2.0.0 replicas starting", || {
        let running = replicas_writing_to(&log);
        (running.iter().filter(|r| r.version == "2.0.0").count() == 2).then_some(())
    })
    .await;
    let killed = agent.pid();
    agent.kill_hard();
    let killed_at = std::time::Instant::now();
    let orphans = replicas_writing_to(&log);
    assert_eq!(
        orphans.len(),
        4,
        "both versions' replicas outlive a SIGKILLed agent: {orphans:?}"
    );
    assert!(orphans.iter().all(|r| r.parent != killed), "{orphans:?}");

    agent.start_again().await;
    let restarted = agent.pid();
    let converged = until(
        "the restarted agent running exactly two 1.0.0 replicas of its own",
        || {
            let running = replicas_writing_to(&log);
            (running.len() == 2
                && running
                    .iter()
                    .all(|r| r.version == "1.0.0" && r.parent == restarted))
            .then_some(running)
        },
    )
    .await;
    for orphan in &orphans {
        assert!(
            converged.iter().all(|r| r.pid != orphan.pid),
            "orphan {orphan:?} survived the restart"
        );
    }
    wait_serving(port, "1.0.0", WAIT).await;

    // The interrupted deploy was never acknowledged: JetStream delivers it
    // again after the consumer's ack wait (15 s) and the restarted agent
    // runs it (accepted a second time, its replicas starting again), not
    // refused as a replay.
    let accepted = std::cell::Cell::new(0);
    let again_at = std::cell::Cell::new(None);
    watch
        .wait_for(
            Duration::from_secs(60),
            "the interrupted deploy delivered again and starting its replicas",
            |e| {
                if e.command_id != Some(interrupted) {
                    return false;
                }
                assert!(
                    !matches!(e.body, EventBody::Refused { .. }),
                    "the redelivered deploy was refused: {e:?}"
                );
                if matches!(e.body, EventBody::Accepted { .. }) {
                    accepted.set(accepted.get() + 1);
                    if accepted.get() == 2 {
                        again_at.set(Some(killed_at.elapsed()));
                    }
                }
                accepted.get() == 2 && matches!(e.body, EventBody::Progress { .. })
            },
        )
        .await;
    let after = again_at.get().unwrap();
    assert!(
        after >= Duration::from_secs(14),
        "delivered again {after:?} after the kill, before the 15 s ack wait"
    );
}

/// SIGKILL right after a command's outcome is published: the restarted
/// agent's journal (`executed.log`) already has the command, so the same
/// command delivered again is refused as `replayed`, never run twice. (The
/// journal line is written before the outcome is published and the message
/// acknowledged; the fsync under it is not observable without a power cut.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_right_after_an_outcome_has_journaled_the_command_and_refuses_it_again() {
    use async_nats::jetstream;
    use ferry_protocol::command::Command;
    use ferry_protocol::{EnvName, Envelope, RefusalReason, ServiceName};

    let system = System::without_controller();
    let port = free_port();
    let mut agent = AgentProcess::start(
        &system,
        &format!(
            "[services.web]\ncommand = [\"{{artifact}}\"]\nport = {port}\nreplicas = 1\nstop_timeout = \"2s\"\n\n[services.web.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nfailure_threshold = 2\nstart_timeout = \"30s\"\n"
        ),
    )
    .await;
    let client = system.nats.client().await;
    let js = jetstream::new(client.clone());
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let command = Envelope::new(
        "/ferry/controller",
        Command {
            environment: EnvName::new("dev").unwrap(),
            service: ServiceName::new("web").unwrap(),
            actor: Some("e2e".into()),
            hosts: Vec::new(),
            action: deploy("1.0.0", &[]),
        },
    )
    .expiring_in(Duration::from_secs(3600))
    .sign(&system.controller_key)
    .unwrap();
    let bytes = command.to_bytes().unwrap();
    js.publish("ferry.v1.cmd.dev.web", bytes.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let outcome = watch.outcome(command.id, WAIT).await;
    agent.kill_hard();
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "{outcome:?}"
    );
    let journal =
        std::fs::read_to_string(system.dir.path().join("agent-dev/executed.log")).unwrap();
    assert!(
        journal.contains(&command.id.to_string()),
        "executed.log lacks {} after a SIGKILL right after its outcome: {journal}",
        command.id
    );

    agent.start_again().await;
    wait_serving(port, "1.0.0", WAIT).await;
    watch.seen.clear();
    js.publish("ferry.v1.cmd.dev.web", bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = watch.outcome(command.id, WAIT).await;
    assert!(
        matches!(
            again.body,
            EventBody::Refused {
                reason: RefusalReason::Replayed,
                ..
            }
        ),
        "{again:?}"
    );
}

/// Commands whose outcome `watch` has seen, of each kind: succeeded, refused.
fn outcomes_of(watch: &EventWatch, id: uuid::Uuid) -> (usize, usize) {
    let of_id = watch.seen.iter().filter(|e| e.command_id == Some(id));
    let succeeded = of_id
        .clone()
        .filter(|e| matches!(e.body, EventBody::Succeeded { .. }))
        .count();
    let refused = of_id
        .filter(|e| matches!(e.body, EventBody::Refused { .. }))
        .count();
    (succeeded, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_delivered_again_by_jetstream_runs_once() {
    let mut system = System::without_controller();
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let key =
        ferry_protocol::SigningKey::from_seed(&system.controller_key.seed().unwrap()).unwrap();
    let mut ids = Vec::new();
    for action in [deploy("1.0.0", &[]), Action::Scale { replicas: 3 }] {
        let id = send_command(&client, &key, "dev", "web", action).await;
        let outcome = watch.outcome(id, WAIT).await;
        assert!(
            matches!(outcome.body, EventBody::Succeeded { .. }),
            "{outcome:?}"
        );
        ids.push(id);
    }
    wait_serving(port, "1.0.0", WAIT).await;
    let log = system.dir.path().join("agent-dev/logs/web.log");
    let before: Vec<u32> = replicas_writing_to(&log).iter().map(|r| r.pid).collect();
    assert_eq!(before.len(), 3);

    // The agent's consumer is deleted while it is down: the new one it
    // creates starts from the first message, so JetStream hands it every
    // command again, as it would after losing the consumer's state.
    system.stop_agent("dev").await;
    let stream = async_nats::jetstream::new(client.clone())
        .get_stream("FERRY_COMMANDS")
        .await
        .unwrap();
    let config = system.agents["dev"].config.clone();
    let consumer = ferry_protocol::streams::agent_consumer(&config.environment, &config.host);
    assert_eq!(
        consumer, "ferry-agent-dev-dev-1",
        "the harness's dev host is dev-1"
    );
    stream.delete_consumer(&consumer).await.unwrap();
    system.start_agent_with(config).await;

    for id in &ids {
        watch
            .wait_for(WAIT, "the replay refused as replayed", |e| {
                e.command_id == Some(*id)
                    && matches!(
                        e.body,
                        EventBody::Refused {
                            reason: ferry_protocol::RefusalReason::Replayed,
                            ..
                        }
                    )
            })
            .await;
        assert_eq!(outcomes_of(&watch, *id), (1, 1), "command {id} ran once");
    }
    // A later command still runs, after the replays, on the same service.
    let later = send_command(&client, &key, "dev", "web", Action::Scale { replicas: 2 }).await;
    let outcome = watch.outcome(later, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { replicas: 2, .. }),
        "{outcome:?}"
    );
    wait_serving(port, "1.0.0", WAIT).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_that_cannot_be_written_fails_the_command_with_the_reason_and_the_agent_goes_on(
) {
    let mut system = System::without_controller();
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let key =
        ferry_protocol::SigningKey::from_seed(&system.controller_key.seed().unwrap()).unwrap();
    let id = send_command(&client, &key, "dev", "web", deploy("1.0.0", &[])).await;
    assert!(matches!(
        watch.outcome(id, WAIT).await.body,
        EventBody::Succeeded { .. }
    ));

    // The journal cannot be appended to (a directory is in its place;
    // permissions would not stop root). The journal is set aside, not lost.
    let state_dir = system.dir.path().join("agent-dev");
    let journal = state_dir.join("executed.log");
    let set_aside = state_dir.join("executed.log.aside");
    std::fs::rename(&journal, &set_aside).unwrap();
    std::fs::create_dir(&journal).unwrap();
    let id = send_command(&client, &key, "dev", "web", Action::Scale { replicas: 3 }).await;
    let outcome = watch.outcome(id, WAIT).await;
    let EventBody::Failed { reason, .. } = &outcome.body else {
        panic!("the scale should fail to be recorded: {outcome:?}")
    };
    assert!(
        reason.contains("the change is live but was not recorded")
            && reason.contains("executed.log"),
        "the reason names the state's journal: {reason}"
    );
    std::fs::remove_dir(&journal).unwrap();
    std::fs::rename(&set_aside, &journal).unwrap();
    // What a restarted agent would restore: the last recorded state.
    let recorded = ferry_agent::state::State::read(&state_dir).unwrap();
    let web = ferry_protocol::ServiceName::new("web").unwrap();
    assert_eq!(
        recorded.service(&web).replicas,
        2,
        "the last good state is intact"
    );
    wait_serving(port, "1.0.0", WAIT).await;

    // Once the disk is fixed, the next command is recorded.
    let id = send_command(&client, &key, "dev", "web", Action::Scale { replicas: 1 }).await;
    let outcome = watch.outcome(id, WAIT).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { replicas: 1, .. }),
        "{outcome:?}"
    );
    let recorded = ferry_agent::state::State::read(&state_dir).unwrap();
    assert_eq!(recorded.service(&web).replicas, 1);
    assert!(recorded.was_executed(&id));
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_nats_keeps_serving_and_its_next_heartbeat_marks_the_gap() {
    let mut system = System::without_controller();
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let key =
        ferry_protocol::SigningKey::from_seed(&system.controller_key.seed().unwrap()).unwrap();
    let id = send_command(&client, &key, "dev", "web", deploy("1.0.0", &[])).await;
    assert!(matches!(
        watch.outcome(id, WAIT).await.body,
        EventBody::Succeeded { .. }
    ));
    wait_serving(port, "1.0.0", WAIT).await;

    system.nats.kill();
    let cut = time::OffsetDateTime::now_utc();
    // Two seconds of traffic with NATS gone: every request is served.
    let outage = std::time::Instant::now();
    let mut served = 0;
    while outage.elapsed() < Duration::from_secs(2) {
        let answer = ferry_e2e::get(port, "/").await;
        assert!(
            answer
                .as_ref()
                .is_some_and(|a| a.status == 200 && a.version.as_deref() == Some("1.0.0")),
            "request {served} failed while NATS was gone: {answer:?}"
        );
        served += 1;
    }
    assert!(served > 10, "only {served} requests in two seconds");

    system.nats.restart();
    let client = system.nats.client().await;
    let mut heartbeats = client
        .subscribe("ferry.v1.agent.dev.heartbeat")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let gap = loop {
        let heartbeat = ferry_e2e::events::next_heartbeat(&mut heartbeats, WAIT).await;
        if let Some(gap) = heartbeat.gap {
            break gap;
        }
    };
    let restarted = time::OffsetDateTime::now_utc();
    assert!(
        gap.from >= cut - time::Duration::seconds(1)
            && gap.from <= cut + time::Duration::seconds(1),
        "the gap starts when NATS went away ({cut}): {gap:?}"
    );
    assert!(
        gap.to > gap.from + time::Duration::seconds(2) && gap.to <= restarted,
        "the gap ends when NATS was back: {gap:?}"
    );

    // Commands flow again.
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let id = send_command(&client, &key, "dev", "web", Action::Scale { replicas: 3 }).await;
    assert!(
        matches!(
            watch.outcome(id, WAIT).await.body,
            EventBody::Succeeded { replicas: 3, .. }
        ),
        "a command after the outage runs"
    );
    system.shutdown().await;
}
