//! Several hosts per environment, end to end: each host an agent in its own
//! container (`tests/src/fleet.rs`) on one network with a real nats-server,
//! the real controller and the real `ferry` CLI. A release to a production
//! of several hosts moves as a wave (the canary host first, the others in
//! batches, each gated on the last), stops at the first failing host and
//! sends the moved hosts back, and the controller keeps every live host on
//! the version the last wave settled on.
//!
//! They need the local Docker engine and the `ferry-agent` and
//! `ferry-nats` images (`FERRY_IMAGE_PROFILE=test-image
//! scripts/build-images`): skipped without them, failing under `CI`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ferry_e2e::fleet::{ControllerDaemon, Fleet, Stored, ARTIFACT, BUILD_HINT, IMAGES, SERVICE};
use ferry_e2e::rollout::{rollout_phase, wait_no_traffic_to};
use ferry_e2e::*;
use ferry_protocol::api::{CommandIssued, StatusRow};
use ferry_protocol::command::{Action, ActionKind, Command};
use ferry_protocol::event::{AgentEvent, EventBody, ServiceEvent};
use ferry_protocol::rollout::RolloutPhase;
use ferry_protocol::wave::{StepState, Wave, WaveState, WaveStep};
use ferry_protocol::{streams, Envelope, HostName};
use futures::StreamExt;
use uuid::Uuid;

/// The environment every test deploys to: the only one of its pipeline,
/// so a published release deploys there by itself, without approvals.
const ENV: &str = "production";
/// Three hosts; `web-1` is the canary host (the first by name).
const HOSTS: [&str; 3] = ["web-1", "web-2", "web-3"];
/// Bound on a whole wave of short canaries across three hosts.
const WAVE_WAIT: Duration = Duration::from_secs(120);

/// `[services.web]` keys of a canary of 50 % then 100 %, each step held
/// `step_secs` (a first deploy, with nothing to compare, is health-gated).
fn canary(step_secs: u64) -> String {
    format!(
        "\n[services.web.strategy]\ntype = \"canary\"\nsteps = [50, 100]\nstep_secs = {step_secs}\n"
    )
}

/// A canary whose steps last ten minutes, so only its analysis ends one:
/// judged every 500 ms once 5 requests are in, two breached intervals
/// abort it.
fn analysed_canary() -> String {
    "\n[services.web.strategy]\ntype = \"canary\"\nsteps = [10, 50, 100]\nstep_secs = 600\n\
     \n[services.web.analysis]\ninterval_ms = 500\nfailures_to_abort = 2\nmin_requests = 5\n"
        .to_owned()
}

/// The fleet and its system, or `None` (the test is skipped) without the
/// engine or the agent image outside CI.
async fn fleet(test: &str, service_toml: &str) -> Option<(Fleet, System)> {
    if !docker_ready(test, &IMAGES, BUILD_HINT) {
        return None;
    }
    Some(Fleet::launch(ENV, service_toml).await)
}

/// A production of `hosts` running web with `service_toml`, its
/// controller in-process; every host is known to the controller (its
/// heartbeat is in the agents bucket) when this returns.
async fn production(test: &str, service_toml: &str, hosts: &[&str]) -> Option<(Fleet, System)> {
    let (mut fleet, mut system) = fleet(test, service_toml).await?;
    system.start_controller().await;
    add_hosts(&mut fleet, hosts).await;
    Some((fleet, system))
}

/// Adds `hosts` and waits until the controller has each one's heartbeat
/// in the agents bucket (so the next deploy counts them).
async fn add_hosts(fleet: &mut Fleet, hosts: &[&str]) {
    for host in hosts {
        fleet.add_host(host).await;
    }
    let js = async_nats::jetstream::new(fleet.client().clone());
    let env = fleet.environment().clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    for host in hosts {
        let key = streams::agent_key(&env, Some(&HostName::new(*host).unwrap()));
        loop {
            let known = match js.get_key_value(streams::AGENTS_BUCKET).await {
                Ok(bucket) => matches!(bucket.get(&key).await, Ok(Some(_))),
                Err(_) => false,
            };
            if known {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the controller never stored {key} in {}",
                streams::AGENTS_BUCKET
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `ferry status [extra] --output json`, parsed into the protocol's rows.
async fn status_rows(system: &System, extra: &[&str]) -> Vec<StatusRow> {
    let mut args = vec!["status"];
    args.extend_from_slice(extra);
    args.extend(["--output", "json"]);
    let out = system.cli_async(&args).await;
    assert_ok(&out, &format!("ferry {}", args.join(" ")));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferry status rows ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// web's row of `ferry status --hosts --output json`.
async fn web_row(system: &System) -> StatusRow {
    status_rows(system, &["--hosts"])
        .await
        .into_iter()
        .find(|r| {
            r.environment.as_str() == ENV
                && r.service.as_ref().is_some_and(|s| s.as_str() == SERVICE)
        })
        .expect("a status row of production/web")
}

/// Polls `ferry status --hosts` until the row's wave is of `version` and
/// `done` holds for it; panics with the last row after `timeout`, or as
/// soon as a deploy of `version` went out to every host as one command
/// (the environment has several hosts: that deploy is not a wave).
async fn wait_wave(
    system: &System,
    fleet: &Fleet,
    version: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Wave) -> bool,
) -> Wave {
    let deadline = tokio::time::Instant::now() + timeout;
    for round in 0.. {
        let row = web_row(system).await;
        if let Some(wave) = row.wave.as_ref().filter(|w| w.version.as_str() == version) {
            if done(wave) {
                return wave.clone();
            }
        }
        if round % 10 == 0 {
            let commands = fleet.stored_commands().await;
            let to_all: Vec<&Command> = deploys_of(&commands, version)
                .into_iter()
                .filter(|c| c.hosts.is_empty())
                .collect();
            assert!(
                to_all.is_empty(),
                "the deploy of {version} to {} hosts went to every host as one command, not as a wave: {to_all:#?}; row: {row:#?}",
                fleet.running().len()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wave of {version} was never {what} within {timeout:?}; last row: {row:#?}\n{}",
            fleet.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("polled without end")
}

/// Polls `ferry status --hosts` until `pred` holds for web's row (host
/// lines follow heartbeats, a beat behind what the hosts serve).
async fn wait_row(system: &System, what: &str, pred: impl Fn(&StatusRow) -> bool) -> StatusRow {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = web_row(system).await;
        if pred(&row) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ferry status --hosts never showed {what} within {WAIT:?}; last row: {row:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `row` lists exactly `hosts`, each up and on `version`.
fn all_on(row: &StatusRow, hosts: &[&str], version: &str) -> bool {
    let listed: Vec<&str> = row.hosts.iter().map(|h| h.host.as_str()).collect();
    listed == hosts
        && row
            .hosts
            .iter()
            .all(|h| h.agent_up && h.version.as_ref().is_some_and(|v| v.as_str() == version))
}

/// Publishes web `version` (the sample in the agent image, `env_vars`) as CI would.
async fn publish(system: &System, version: &str, env_vars: &[&str]) {
    system
        .publish_artifact(SERVICE, version, ARTIFACT, env_vars)
        .await;
}

/// Publishes `version` and waits until its wave succeeded and every host
/// serves it with nothing left to run.
async fn release_everywhere(fleet: &Fleet, system: &System, version: &str) -> Wave {
    publish(system, version, &[]).await;
    let wave = wait_wave(system, fleet, version, "over", WAVE_WAIT, |w| {
        w.state != WaveState::Running
    })
    .await;
    assert_eq!(wave.state, WaveState::Succeeded, "{wave:#?}");
    fleet.wait_converged(version, WAIT).await;
    wave
}

/// `host`'s step of `wave`.
fn step<'a>(wave: &'a Wave, host: &str) -> &'a WaveStep {
    wave.steps
        .iter()
        .find(|s| s.host.as_str() == host)
        .unwrap_or_else(|| panic!("no step of {host}: {wave:#?}"))
}

/// Each step's host and state, in the wave's order.
fn picture(wave: &Wave) -> Vec<(String, StepState)> {
    wave.steps
        .iter()
        .map(|s| (s.host.to_string(), s.state))
        .collect()
}

fn is_host(event: &ServiceEvent, host: &str) -> bool {
    event.host.as_ref().is_some_and(|h| h.as_str() == host)
}

fn is_accepted(event: &ServiceEvent) -> bool {
    matches!(event.body, EventBody::Accepted { .. })
}

fn is_succeeded(event: &ServiceEvent) -> bool {
    matches!(event.body, EventBody::Succeeded { .. })
}

/// The stored events of command `id`.
fn of_command(events: &[Stored<ServiceEvent>], id: Uuid) -> Vec<&Stored<ServiceEvent>> {
    events
        .iter()
        .filter(|s| s.envelope.data.command_id == Some(id))
        .collect()
}

/// The stream sequence of the one event of `id` from `host` that `kind` picks.
fn sequence_of(
    events: &[Stored<ServiceEvent>],
    id: Uuid,
    host: &str,
    kind: fn(&ServiceEvent) -> bool,
) -> u64 {
    let found: Vec<u64> = of_command(events, id)
        .into_iter()
        .filter(|s| is_host(&s.envelope.data, host) && kind(&s.envelope.data))
        .map(|s| s.sequence)
        .collect();
    assert_eq!(found.len(), 1, "events of {id} from {host}: {found:?}");
    found[0]
}

/// Asserts that the command `id` ran exactly once on `host` (one
/// `accepted` and one `succeeded`, nothing else) and on no other host.
fn assert_ran_once_on(events: &[Stored<ServiceEvent>], id: Uuid, host: &str, what: &str) {
    let of_id = of_command(events, id);
    let mine: Vec<&EventBody> = of_id
        .iter()
        .filter(|s| is_host(&s.envelope.data, host))
        .map(|s| &s.envelope.data.body)
        .collect();
    let others: Vec<&ServiceEvent> = of_id
        .iter()
        .map(|s| &s.envelope.data)
        .filter(|e| !is_host(e, host))
        .collect();
    assert!(
        mine.len() == 2
            && matches!(mine[0], EventBody::Accepted { .. })
            && matches!(mine[1], EventBody::Succeeded { .. }),
        "{what} ({id}) on {host}: {mine:#?}"
    );
    assert!(
        others.is_empty(),
        "{what} ({id}) reached other hosts: {others:#?}"
    );
}

/// Asserts that every command stored for production/web ran exactly once
/// on each host it is for (one `accepted`, one `succeeded`, no refusal:
/// no replay) and never on another. Waits first until every host has
/// drained its commands.
async fn assert_every_command_ran_once_per_host(fleet: &Fleet) {
    for host in fleet.running() {
        let deadline = tokio::time::Instant::now() + WAVE_WAIT;
        while !fleet.drained(&host).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{host} never drained its commands\n{}",
                fleet.logs(&host)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let commands = fleet.stored_commands().await;
    assert!(!commands.is_empty(), "no command stored");
    let events = fleet
        .stored_events(&["accepted", "refused", "outcome"])
        .await;
    for command in &commands {
        let id = command.envelope.id;
        for host in fleet.hosts() {
            let name = HostName::new(host.as_str()).unwrap();
            let bodies: Vec<&EventBody> = of_command(&events, id)
                .into_iter()
                .filter(|s| is_host(&s.envelope.data, &host))
                .map(|s| &s.envelope.data.body)
                .collect();
            if command.envelope.data.is_for(&name) {
                assert!(
                    bodies.len() == 2
                        && matches!(bodies[0], EventBody::Accepted { .. })
                        && matches!(bodies[1], EventBody::Succeeded { .. }),
                    "command {id} ({:?}) on {host}: {bodies:#?}",
                    command.envelope.data.action.kind()
                );
            } else {
                assert!(
                    bodies.is_empty(),
                    "command {id} for {:?} reached {host}: {bodies:#?}",
                    command.envelope.data.hosts
                );
            }
        }
    }
}

/// The deploy commands of web `version` stored for production.
fn deploys_of<'a>(commands: &'a [Stored<Command>], version: &str) -> Vec<&'a Command> {
    commands
        .iter()
        .map(|c| &c.envelope.data)
        .filter(|c| matches!(&c.action, Action::Deploy { release, .. } if release.version.as_str() == version))
        .collect()
}

/// `hosts` as a command names them.
fn host_names(hosts: &[&str]) -> Vec<HostName> {
    hosts.iter().map(|h| HostName::new(*h).unwrap()).collect()
}

/// Polls `ferry status` (the table) until it says `text`.
async fn wait_table(system: &System, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = system.cli_async(&["status"]).await;
        assert_ok(&out, "ferry status");
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        if table.contains(text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ferry status never said {text:?}; it says:\n{table}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What one test took, for the report.
fn took(test: &str, started: Instant) {
    eprintln!("{test}: {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_to_three_hosts_goes_to_the_canary_host_first_then_to_the_others_one_at_a_time() {
    let test = "release_goes_to_the_canary_host_first";
    let started = Instant::now();
    let Some((fleet, system)) = production(test, &canary(3), &HOSTS).await else {
        return;
    };
    let before = release_everywhere(&fleet, &system, "1.3.0").await;
    publish(&system, "1.4.0", &[]).await;

    // Every distinct picture `ferry status --hosts` gave of the wave, in order.
    let mut seen: Vec<Vec<(String, StepState)>> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAVE_WAIT;
    let wave = loop {
        let row = web_row(&system).await;
        if let Some(wave) = row.wave.as_ref().filter(|w| w.version.as_str() == "1.4.0") {
            let now = picture(wave);
            // Each host's own line shows its step as the wave does.
            for host in &row.hosts {
                let step = wave.step(&host.host).map(|s| s.state);
                assert_eq!(host.step, step, "{row:#?}");
            }
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if wave.state != WaveState::Running {
                break wave.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wave of 1.4.0 did not end within {WAVE_WAIT:?}; seen {seen:#?}\n{}",
            fleet.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(wave.state, WaveState::Succeeded, "{wave:#?}");
    assert_ne!(wave.id, before.id, "a wave of its own");
    assert_eq!(wave.canary_host().map(|h| h.as_str()), Some("web-1"));
    assert_eq!(wave.max_parallel_hosts, 1, "the default batch");
    assert_eq!(wave.settled.as_ref().map(|v| v.as_str()), Some("1.4.0"));
    for s in &wave.steps {
        assert_eq!(
            s.previous.as_ref().map(|v| v.as_str()),
            Some("1.3.0"),
            "{s:?}"
        );
    }

    // The order: the canary host alone first, the others planned; then
    // one host at a time, in name order, each after the last succeeded.
    use StepState::{Issued as I, Planned as P, Succeeded as S};
    let allowed: Vec<Vec<StepState>> = vec![
        vec![P, P, P],
        vec![I, P, P],
        vec![S, P, P],
        vec![S, I, P],
        vec![S, S, P],
        vec![S, S, I],
        vec![S, S, S],
    ];
    let states: Vec<Vec<StepState>> = seen
        .iter()
        .map(|p| {
            let hosts: Vec<&str> = p.iter().map(|(h, _)| h.as_str()).collect();
            assert_eq!(hosts, HOSTS, "steps in name order, canary host first");
            p.iter().map(|(_, s)| *s).collect()
        })
        .collect();
    let positions: Vec<usize> = states
        .iter()
        .map(|s| {
            allowed
                .iter()
                .position(|a| a == s)
                .unwrap_or_else(|| panic!("a picture out of order: {s:?}; seen {seen:#?}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "pictures out of order: {seen:#?}"
    );
    for key in [vec![I, P, P], vec![S, I, P], vec![S, S, I], vec![S, S, S]] {
        assert!(states.contains(&key), "never saw {key:?}: {seen:#?}");
    }

    // One deploy of 1.4.0 per host, each addressed to that host alone, in
    // the wave's order.
    let commands = fleet.stored_commands().await;
    let addressed: Vec<Vec<HostName>> = deploys_of(&commands, "1.4.0")
        .into_iter()
        .map(|c| c.hosts.clone())
        .collect();
    let expected: Vec<Vec<HostName>> = HOSTS.iter().map(|h| host_names(&[h])).collect();
    assert_eq!(addressed, expected);

    // The agents agree: each step ran once on its host, each host began
    // only after the one before it had succeeded.
    let events = fleet
        .stored_events(&["accepted", "refused", "outcome"])
        .await;
    for s in &wave.steps {
        assert_ran_once_on(&events, s.command_id, s.host.as_str(), "its step");
    }
    for pair in wave.steps.windows(2) {
        let (first, next) = (&pair[0], &pair[1]);
        let done = sequence_of(&events, first.command_id, first.host.as_str(), is_succeeded);
        let began = sequence_of(&events, next.command_id, next.host.as_str(), is_accepted);
        assert!(
            done < began,
            "{} accepted its step before {} succeeded",
            next.host,
            first.host
        );
    }

    let row = wait_row(&system, "every host up on 1.4.0", |r| {
        all_on(r, &HOSTS, "1.4.0")
    })
    .await;
    assert_eq!(row.version.as_ref().map(|v| v.as_str()), Some("1.4.0"));
    for host in &row.hosts {
        assert_eq!(host.step, Some(StepState::Succeeded), "{host:?}");
    }
    wait_table(&system, "3/3 hosts on 1.4.0").await;
    for host in HOSTS {
        assert_eq!(
            fleet.version(host).await.as_deref(),
            Some("1.4.0"),
            "{host}"
        );
    }
    system.shutdown().await;
    took(test, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_failing_its_canary_analysis_on_the_canary_host_never_reaches_the_other_hosts() {
    let test = "failing_canary_never_reaches_the_other_hosts";
    let started = Instant::now();
    let Some((fleet, system)) = production(test, &analysed_canary(), &HOSTS).await else {
        return;
    };
    release_everywhere(&fleet, &system, "1.3.0").await;
    // Traffic on the canary host's stable port, for its analysis.
    let load = Load::start(fleet.port("web-1"), 4, Duration::from_millis(2));
    publish(&system, "1.4.0", &["SAMPLE_ERROR_RATE=0.2"]).await;
    let wave = wait_wave(&system, &fleet, "1.4.0", "failed", WAVE_WAIT, |w| {
        w.state != WaveState::Running
    })
    .await;
    assert_eq!(wave.state, WaveState::Failed, "{wave:#?}");
    assert_eq!(
        picture(&wave),
        [
            ("web-1".to_owned(), StepState::Failed),
            ("web-2".to_owned(), StepState::Skipped),
            ("web-3".to_owned(), StepState::Skipped),
        ],
        "{wave:#?}"
    );
    assert!(
        wave.detail.contains("web-1"),
        "the detail names the canary host: {wave:#?}"
    );
    assert_eq!(wave.settled.as_ref().map(|v| v.as_str()), Some("1.3.0"));

    // The canary host's analysis failed it, and it went back by itself.
    let canary_step = step(&wave, "web-1").command_id;
    let events = fleet
        .stored_events(&["accepted", "refused", "outcome"])
        .await;
    let outcomes: Vec<&EventBody> = of_command(&events, canary_step)
        .into_iter()
        .filter(|s| is_host(&s.envelope.data, "web-1") && s.envelope.data.body.is_final())
        .map(|s| &s.envelope.data.body)
        .collect();
    match outcomes.as_slice() {
        [EventBody::Failed {
            reason, serving, ..
        }] => {
            assert!(reason.contains("error rate"), "{reason}");
            assert_eq!(serving.as_ref().map(|v| v.as_str()), Some("1.3.0"));
        }
        other => panic!("the canary host's outcome: {other:#?}"),
    }
    wait_no_traffic_to(&load, "1.4.0", 200, WAIT).await;
    let stats = load.stop().await;
    assert!(
        stats.by_version.get("1.4.0").copied().unwrap_or(0) > 0,
        "the canary did get traffic: {stats:?}"
    );

    // Nothing of 1.4.0 ever went to the other two.
    fleet.wait_converged("1.3.0", WAIT).await;
    let commands = fleet.stored_commands().await;
    let deploys = deploys_of(&commands, "1.4.0");
    assert!(!deploys.is_empty());
    for deploy in &deploys {
        assert_eq!(deploy.hosts, host_names(&["web-1"]), "{deploy:#?}");
    }
    let events = fleet
        .stored_events(&["accepted", "refused", "outcome"])
        .await;
    let ids: Vec<Uuid> = commands
        .iter()
        .filter(|c| matches!(&c.envelope.data.action, Action::Deploy { release, .. } if release.version.as_str() == "1.4.0"))
        .map(|c| c.envelope.id)
        .chain(wave.steps.iter().map(|s| s.command_id))
        .collect();
    for host in ["web-2", "web-3"] {
        let accepted: Vec<&ServiceEvent> = events
            .iter()
            .map(|s| &s.envelope.data)
            .filter(|e| is_host(e, host) && is_accepted(e))
            .filter(|e| e.command_id.is_some_and(|id| ids.contains(&id)))
            .collect();
        assert!(accepted.is_empty(), "{host} accepted 1.4.0: {accepted:#?}");
    }
    for host in HOSTS {
        assert_eq!(
            fleet.version(host).await.as_deref(),
            Some("1.3.0"),
            "{host}"
        );
    }
    system.shutdown().await;
    took(test, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_wave_stops_it_and_the_environment_converges_on_one_version() {
    let test = "host_killed_mid_wave";
    let started = Instant::now();
    let Some((mut fleet, system)) = production(test, &canary(4), &HOSTS).await else {
        return;
    };
    release_everywhere(&fleet, &system, "1.3.0").await;
    let mut watch = EventWatch::new(fleet.client(), ENV, SERVICE).await;
    publish(&system, "1.4.0", &[]).await;
    let wave = wait_wave(&system, &fleet, "1.4.0", "planned", WAIT, |_| true).await;
    let second = step(&wave, "web-2").command_id;
    // The second host in the middle of its step: its canary's first step.
    watch
        .wait_for(WAVE_WAIT, "web-2's first canary step", |e| {
            e.command_id == Some(second)
                && is_host(e, "web-2")
                && matches!(rollout_phase(e), Some(RolloutPhase::StepStarted))
        })
        .await;
    let row = web_row(&system).await;
    let during = row.wave.expect("the wave");
    assert_eq!(
        picture(&during),
        [
            ("web-1".to_owned(), StepState::Succeeded),
            ("web-2".to_owned(), StepState::Issued),
            ("web-3".to_owned(), StepState::Planned),
        ],
        "{during:#?}"
    );
    fleet.kill("web-2");

    // Its heartbeat stops: the wave stops, the canary host goes back.
    let wave = wait_wave(
        &system,
        &fleet,
        "1.4.0",
        "failed and reverted",
        WAVE_WAIT,
        |w| {
            w.state != WaveState::Running
                && !w.steps.iter().any(|s| s.state == StepState::Reverting)
        },
    )
    .await;
    assert_eq!(wave.state, WaveState::Failed, "{wave:#?}");
    assert_eq!(
        picture(&wave),
        [
            ("web-1".to_owned(), StepState::Reverted),
            ("web-2".to_owned(), StepState::Failed),
            ("web-3".to_owned(), StepState::Skipped),
        ],
        "{wave:#?}"
    );
    assert!(
        wave.detail.contains("web-2"),
        "the detail names the host: {wave:#?}"
    );
    assert_eq!(wave.settled.as_ref().map(|v| v.as_str()), Some("1.3.0"));
    let revert = step(&wave, "web-1")
        .revert_id
        .expect("the canary host's revert");
    // Every live host on one version.
    fleet.wait_converged("1.3.0", WAIT).await;
    let events = fleet
        .stored_events(&["accepted", "refused", "outcome"])
        .await;
    assert_ran_once_on(&events, revert, "web-1", "the revert");
    wait_row(&system, "web-2 down", |r| {
        r.hosts
            .iter()
            .any(|h| h.host.as_str() == "web-2" && !h.agent_up)
    })
    .await;

    // Back, it is brought to the version the environment settled on
    // (whatever it finds to run again on the way).
    fleet.start("web-2").await;
    fleet
        .wait_converged("1.3.0", Duration::from_secs(180))
        .await;
    let row = wait_row(&system, "every host up on 1.3.0", |r| {
        all_on(r, &HOSTS, "1.3.0")
    })
    .await;
    let last = row.wave.expect("the wave");
    assert_eq!(
        (last.id, last.state),
        (wave.id, WaveState::Failed),
        "{last:#?}"
    );
    system.shutdown().await;
    took(test, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_host_joining_an_environment_on_1_4_0_starts_serving_1_4_0_by_itself() {
    let test = "fourth_host_joins";
    let started = Instant::now();
    let Some((mut fleet, system)) = production(test, "", &HOSTS).await else {
        return;
    };
    let wave = release_everywhere(&fleet, &system, "1.4.0").await;
    wait_table(&system, "3/3 hosts on 1.4.0").await;

    add_hosts(&mut fleet, &["web-4"]).await;
    fleet.wait_serving("web-4", "1.4.0", WAVE_WAIT).await;
    fleet.wait_converged("1.4.0", WAIT).await;
    wait_table(&system, "4/4 hosts on 1.4.0").await;

    // One deploy of 1.4.0 addressed to it alone, run once; no operator
    // command, no new wave.
    let commands = fleet.stored_commands().await;
    let to_it: Vec<&Stored<Command>> = commands
        .iter()
        .filter(|c| c.envelope.data.hosts == host_names(&["web-4"]))
        .collect();
    assert_eq!(to_it.len(), 1, "{to_it:#?}");
    assert!(
        matches!(&to_it[0].envelope.data.action, Action::Deploy { release, .. } if release.version.as_str() == "1.4.0"),
        "{:#?}",
        to_it[0]
    );
    let events = fleet
        .stored_events(&["accepted", "refused", "outcome"])
        .await;
    assert_ran_once_on(
        &events,
        to_it[0].envelope.id,
        "web-4",
        "the deploy to the new host",
    );
    let row = wait_row(&system, "four hosts up on 1.4.0", |r| {
        all_on(r, &["web-1", "web-2", "web-3", "web-4"], "1.4.0")
    })
    .await;
    let last = row.wave.expect("the wave");
    assert_eq!(last.id, wave.id, "no new wave: {last:#?}");
    assert_eq!(last.steps.len(), 3, "{last:#?}");
    system.shutdown().await;
    took(test, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_wave_resumes_it_after_a_restart_and_every_step_runs_once() {
    let test = "controller_restarted_mid_wave";
    let started = Instant::now();
    let Some((mut fleet, system)) = fleet(test, &canary(3)).await else {
        return;
    };
    let mut controller = ControllerDaemon::start(&system).await;
    add_hosts(&mut fleet, &HOSTS).await;
    release_everywhere(&fleet, &system, "1.3.0").await;
    let mut watch = EventWatch::new(fleet.client(), ENV, SERVICE).await;
    publish(&system, "1.4.0", &[]).await;
    let wave = wait_wave(&system, &fleet, "1.4.0", "at web-2", WAVE_WAIT, |w| {
        step(w, "web-2").state == StepState::Issued
    })
    .await;
    controller.kill();

    // The wave's next move waits for a controller: web-2 finishes its step
    // meanwhile, and web-3 gets nothing.
    let second = step(&wave, "web-2").command_id;
    let third = step(&wave, "web-3").command_id;
    let outcome = watch.outcome(second, WAVE_WAIT).await;
    assert!(is_succeeded(&outcome), "{outcome:#?}");
    assert!(
        !watch.seen.iter().any(|e| e.command_id == Some(third)),
        "web-3's step went out with no controller: {:#?}",
        watch.seen
    );

    controller.restart(&system).await;
    let wave = wait_wave(&system, &fleet, "1.4.0", "over", WAVE_WAIT, |w| {
        w.state != WaveState::Running
    })
    .await;
    assert_eq!(
        wave.state,
        WaveState::Succeeded,
        "{wave:#?}\n{}",
        controller.logs()
    );
    fleet.wait_converged("1.4.0", WAIT).await;
    let events = fleet
        .stored_events(&["accepted", "refused", "outcome"])
        .await;
    for s in &wave.steps {
        assert_ran_once_on(&events, s.command_id, s.host.as_str(), "its step");
    }
    assert_every_command_ran_once_per_host(&fleet).await;
    drop(controller);
    system.shutdown().await;
    took(test, started);
}

/// Waits until `host`'s stored events hold an outcome of command `id`.
async fn wait_outcome_on(fleet: &Fleet, id: Uuid, host: &str) {
    let deadline = tokio::time::Instant::now() + WAVE_WAIT;
    loop {
        let events = fleet.stored_events(&["refused", "outcome"]).await;
        if of_command(&events, id)
            .iter()
            .any(|s| is_host(&s.envelope.data, host))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no outcome of {id} from {host} within {WAVE_WAIT:?}\n{}",
            fleet.logs(host)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `ferry args --output json` (an operator's command to the whole
/// environment), waits until every host reported its outcome, and returns
/// the command's id.
async fn command_everywhere(system: &System, fleet: &Fleet, args: &[&str]) -> Uuid {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let out = system.cli_async(&args).await;
    assert_ok(&out, &format!("ferry {}", args.join(" ")));
    let issued: CommandIssued = serde_json::from_slice(&out.stdout).expect("CommandIssued");
    for host in fleet.hosts() {
        wait_outcome_on(fleet, issued.command_id, &host).await;
    }
    issued.command_id
}

/// Waits until a heartbeat of each of `hosts` shows web as `pred` has it.
async fn wait_heartbeats(
    fleet: &Fleet,
    hosts: &[&str],
    what: &str,
    pred: impl Fn(&ferry_protocol::event::ServiceSnapshot) -> bool,
) {
    let mut heartbeats = ferry_e2e::events::subscribe_heartbeats(fleet.client(), ENV).await;
    let mut pending: Vec<&str> = hosts.to_vec();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !pending.is_empty() {
        let message = tokio::time::timeout_at(deadline, heartbeats.next())
            .await
            .unwrap_or_else(|_| panic!("{pending:?} never showed {what} within {WAIT:?}"))
            .expect("heartbeats");
        let Ok(Envelope {
            data: AgentEvent::Heartbeat(hb),
            ..
        }) = Envelope::<AgentEvent>::decode(&message.payload)
        else {
            continue;
        };
        let shows = hb
            .services
            .iter()
            .any(|s| s.service.as_str() == SERVICE && pred(s));
        if let (Some(host), true) = (hb.host_name, shows) {
            pending.retain(|h| *h != host.as_str());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_of_one_environment_each_run_every_command_once() {
    let test = "two_agents_each_run_every_command_once";
    let started = Instant::now();
    let two = ["web-1", "web-2"];
    let Some((fleet, system)) = production(test, "", &two).await else {
        return;
    };
    publish(&system, "1.0.0", &[]).await;
    fleet.wait_converged("1.0.0", WAVE_WAIT).await;

    // A dry run says the deploy would go host by host, in which order.
    let out = system
        .cli_async(&[
            "deploy",
            SERVICE,
            "1.0.0",
            "-e",
            ENV,
            "--dry-run",
            "--max-parallel-hosts",
            "2",
            "--output",
            "json",
        ])
        .await;
    assert_ok(&out, "ferry deploy --dry-run");
    let plan: ferry_protocol::api::DeployPlan =
        serde_json::from_slice(&out.stdout).expect("a deploy plan");
    assert_eq!(plan.hosts, host_names(&two), "{plan:#?}");
    assert_eq!(plan.max_parallel_hosts, Some(2), "{plan:#?}");
    assert!(
        plan.steps[0].starts_with("host by host: web-1 first (the canary host)"),
        "{plan:#?}"
    );

    // A scale to the environment, naming no host: both run it.
    let scale = command_everywhere(&system, &fleet, &["scale", SERVICE, "3", "-e", ENV]).await;
    wait_heartbeats(&fleet, &two, "3 healthy replicas", |s| {
        s.replicas_desired == 3 && s.replicas_healthy == 3
    })
    .await;

    // Maintenance on, then off: both hosts answer 503, then serve again.
    let on = command_everywhere(
        &system,
        &fleet,
        &[
            "maintenance",
            SERVICE,
            "-e",
            ENV,
            "--enable",
            "--message",
            "Moving the database",
        ],
    )
    .await;
    for host in two {
        let answer = get(fleet.port(host), "/").await.expect("an answer");
        assert_eq!(answer.status, 503, "{host} in maintenance: {answer:?}");
        assert!(answer.retry_after.is_some(), "{host}: {answer:?}");
    }
    let off = command_everywhere(
        &system,
        &fleet,
        &["maintenance", SERVICE, "-e", ENV, "--disable"],
    )
    .await;
    fleet.wait_converged("1.0.0", WAIT).await;

    let events = fleet
        .stored_events(&["accepted", "refused", "outcome"])
        .await;
    for (what, id) in [
        ("the scale", scale),
        ("maintenance on", on),
        ("maintenance off", off),
    ] {
        for host in two {
            let bodies: Vec<&EventBody> = of_command(&events, id)
                .into_iter()
                .filter(|s| is_host(&s.envelope.data, host))
                .map(|s| &s.envelope.data.body)
                .collect();
            assert!(
                bodies.len() == 2
                    && matches!(bodies[0], EventBody::Accepted { .. })
                    && matches!(bodies[1], EventBody::Succeeded { .. }),
                "{what} on {host}: {bodies:#?}"
            );
        }
        let kinds: Vec<ActionKind> = fleet
            .stored_commands()
            .await
            .iter()
            .filter(|c| c.envelope.id == id)
            .map(|c| c.envelope.data.action.kind())
            .collect();
        assert_eq!(kinds.len(), 1, "{what} stored once: {kinds:?}");
    }
    // The release too, and everything else: once per host it is for.
    assert_every_command_ran_once_per_host(&fleet).await;
    system.shutdown().await;
    took(test, started);
}
