//! The daemons as binaries: configuration errors, graceful shutdown, and
//! replicas that crash.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::*;
use ferry_protocol::command::ActionKind;
use ferry_protocol::event::EventBody;

#[test]
fn the_agent_lists_every_configuration_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "environment = \"Not Valid\"\ntrusted_keys = [\"nope\"]\n[services.web]\nreplicas = 0\n[services.web.health]\npath = \"health\"\n",
    )
    .unwrap();
    let out = Command::new(bin("ferry-agent"))
        .arg("--config")
        .arg(&config)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for problem in [
        "environment",
        "state_dir",
        "trusted_keys",
        "services.web.replicas",
        "services.web: needs port",
        "services.web.health.path",
    ] {
        assert!(
            stderr.contains(problem),
            "{problem:?} missing from:\n{stderr}"
        );
    }
}

#[test]
fn the_controller_lists_every_configuration_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        "signing_key_file = \"/nonexistent/key\"\nenvironments = [\"dev\", \"dev\", \"Prod\"]\ncommand_ttl = \"soon\"\n",
    )
    .unwrap();
    let out = Command::new(bin("ferry-controller"))
        .arg("--config")
        .arg(&config)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for problem in ["signing_key_file", "environments", "command_ttl"] {
        assert!(
            stderr.contains(problem),
            "{problem:?} missing from:\n{stderr}"
        );
    }
    assert!(
        stderr.matches("environments").count() >= 2,
        "both pipeline problems are listed:\n{stderr}"
    );
}

/// The agent binary, killed if the test fails before it exits (a failed
/// assertion must not leave a daemon and its replicas running).
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn new(child: std::process::Child) -> Self {
        KillOnDrop(Some(child))
    }

    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the daemon is still held")
    }

    /// SIGTERM, then everything the daemon wrote once it has exited.
    async fn stop_and_collect(mut self) -> std::process::Output {
        let child = self.0.take().expect("the daemon is still held");
        sigterm(child.id());
        tokio::time::timeout(
            WAIT,
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .expect("the daemon exits after SIGTERM")
        .unwrap()
        .unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Child processes of `pid`, whichever of its threads started them (Linux /proc).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Starts a dev agent process (heartbeat 200 ms, health checks every
/// 100 ms, plus `more_health` in the health table) with one service `web`
/// of `replicas` on a free port, publishes `web 1.0.0` and waits until the deploy succeeded and the
/// port serves it. Returns the agent, the watch on web's events and the port.
async fn agent_serving_1_0_0(
    system: &System,
    replicas: u32,
    more_health: &str,
) -> (KillOnDrop, EventWatch, u16) {
    let port = free_port();
    let config = system.dir.path().join("agent-dev.toml");
    std::fs::write(
        &config,
        system.agent_toml(
            "dev",
            &format!(
                "heartbeat_interval = \"200ms\"\n[services.web]\nport = {port}\n\
                 replicas = {replicas}\n[services.web.health]\ninterval = \"100ms\"\n{more_health}"
            ),
        ),
    )
    .unwrap();
    let agent = KillOnDrop::new(
        Command::new(bin("ferry-agent"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    // The agent is ready once it heartbeats; the release waits in JetStream until then anyway.
    system.publish_release("web", "1.0.0", &[]).await;
    watch
        .wait_for(WAIT, "deploy of 1.0.0 succeeded", |e| {
            matches!(
                &e.body,
                EventBody::Succeeded {
                    action: ActionKind::Deploy,
                    ..
                }
            )
        })
        .await;
    wait_serving(port, "1.0.0", WAIT).await;
    (agent, watch, port)
}

/// Waits until the agent exits after `signal`, and asserts it exited 0 and
/// none of `replicas` outlived it.
async fn exited_0_with_its_replicas(agent: &mut KillOnDrop, replicas: Vec<u32>, signal: &str) {
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = agent.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after {signal}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "clean exit after {signal}");
    for pid in replicas {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "replica {pid} outlived the agent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_agent_stops_its_replicas_and_exits_0() {
    let system = System::start().await;
    let (mut agent, _watch, port) = agent_serving_1_0_0(&system, 2, "").await;
    let replicas = children(agent.child().id());
    assert_eq!(replicas.len(), 2, "two replica processes: {replicas:?}");

    sigterm(agent.child().id());
    exited_0_with_its_replicas(&mut agent, replicas, "SIGTERM").await;
    assert!(get(port, "/").await.is_none(), "the stable port is closed");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replica_is_reported_and_restarted() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    // Each replica of this release exits with code 3 two seconds after it starts.
    system
        .publish_release("web", "1.0.0", &["SAMPLE_EXIT_AFTER_SECS=2"])
        .await;
    watch
        .wait_for(WAIT, "deploy succeeded", |e| {
            matches!(
                &e.body,
                EventBody::Succeeded {
                    action: ActionKind::Deploy,
                    ..
                }
            )
        })
        .await;
    let exited = watch
        .wait_for(WAIT, "a replica exit", |e| {
            matches!(&e.body, EventBody::ReplicaExited { .. })
        })
        .await;
    let EventBody::ReplicaExited { code, detail, .. } = &exited.body else {
        unreachable!()
    };
    assert_eq!(*code, Some(3), "{detail}");
    assert!(detail.contains("restarting"), "{detail}");
    watch
        .wait_for(WAIT, "a restarted replica healthy again", |e| {
            matches!(&e.body, EventBody::Health(h) if h.replicas.iter().any(|r| r.restarts >= 1 && r.healthy))
        })
        .await;
    system.shutdown().await;
}

/// Every line of `stderr` is one JSON object with a level and a message, and
/// the daemon said it was shutting down.
fn assert_json_log_lines(who: &str, stderr: &[u8]) {
    let text = String::from_utf8_lossy(stderr);
    let mut messages = Vec::new();
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{who} wrote a line that is not JSON ({e}): {line}"));
        let level = event["level"].as_str();
        assert!(
            matches!(level, Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR")),
            "{who}: no level in {line}"
        );
        let message = event["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{who}: no message in {line}"));
        messages.push(message.to_owned());
    }
    assert!(
        messages.iter().any(|m| m.starts_with("shutting down")),
        "{who} logged its shutdown: {messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_with_log_format_json_writes_one_json_object_per_line() {
    let system = System::without_controller();
    let config = system.dir.path().join("agent-dev.toml");
    std::fs::write(
        &config,
        system.agent_toml("dev", &format!("[services.web]\nport = {}\n", free_port())),
    )
    .unwrap();
    let client = system.nats.client().await;
    let mut heartbeats = ferry_e2e::events::subscribe_heartbeats(&client, "dev").await;
    let agent = KillOnDrop::new(
        Command::new(bin("ferry-agent"))
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .env_remove("FERRY_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    ferry_e2e::events::next_heartbeat(&mut heartbeats, WAIT).await;
    let out = agent.stop_and_collect().await;
    assert_eq!(out.status.code(), Some(0), "clean exit");
    assert_json_log_lines("ferry-agent", &out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_with_ferry_log_format_json_writes_one_json_object_per_line() {
    let system = System::without_controller();
    let dir = system.dir.path();
    let key_file = dir.join("controller.nk");
    std::fs::write(&key_file, system.controller_key.seed().unwrap()).unwrap();
    let toml = format!(
        "nats_url = \"{}\"\nsigning_key_file = \"{}\"\n{}",
        system.nats.url(),
        key_file.display(),
        system.credentials_toml("ferry-controller"),
    );
    let config = dir.join("controller.toml");
    std::fs::write(&config, toml).unwrap();
    // Set through the environment this time, as a systemd unit or a container would.
    let controller = KillOnDrop::new(
        Command::new(bin("ferry-controller"))
            .arg("--config")
            .arg(&config)
            .env("FERRY_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    until("the controller's API answering", || {
        system
            .cli(&["status", "--output", "json"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let out = controller.stop_and_collect().await;
    assert_eq!(out.status.code(), Some(0), "clean exit");
    assert_json_log_lines("ferry-controller", &out.stderr);
}

/// An agent configuration for dev on `nats_url`, with `web` on `port`.
fn agent_config_on(dir: &std::path::Path, nats_url: &str, port: u16) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "environment = \"dev\"\nnats_url = \"{nats_url}\"\nstate_dir = \"{}\"\ntrusted_keys = [\"{}\"]\n[services.web]\nport = {port}\n",
            dir.join("agent").display(),
            ferry_protocol::SigningKey::generate().public_key(),
        ),
    )
    .unwrap();
    config
}

#[test]
fn an_agent_whose_stable_port_is_taken_exits_naming_it_before_it_reaches_for_nats() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let port = holder.local_addr().unwrap().port();
    // Nothing listens on the NATS port: had the agent reached for NATS
    // first, it would have failed on that instead.
    let config = agent_config_on(
        dir.path(),
        &format!("nats://127.0.0.1:{}", free_port()),
        port,
    );
    let mut agent = KillOnDrop::new(
        Command::new(bin("ferry-agent"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(status) = agent.child().try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.child().stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve web on 127.0.0.1:{port}")),
        "the error names the service and its port: {stderr}"
    );
    assert!(
        !stderr.contains("NATS"),
        "the port is checked before NATS is reached: {stderr}"
    );
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_waiting_for_jetstream_holds_its_stable_port_and_answers_503_on_it() {
    let dir = tempfile::tempdir().unwrap();
    // A real nats-server without JetStream: the agent connects and waits.
    let nats_port = free_port();
    let _nats = KillOnDrop::new(
        Command::new(ferry_e2e::nats::nats_bin())
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let port = free_port();
    let config = agent_config_on(dir.path(), &format!("nats://127.0.0.1:{nats_port}"), port);
    let log = dir.path().join("agent.log");
    let mut agent = KillOnDrop::new(
        Command::new(bin("ferry-agent"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let waiting = "JetStream cannot serve ferry's streams yet";
    let deadline = Instant::now() + WAIT;
    loop {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.contains(waiting) {
            break;
        }
        assert!(
            agent.child().try_wait().unwrap().is_none(),
            "the agent exited: {logged}"
        );
        assert!(
            Instant::now() < deadline,
            "the agent did not wait: {logged}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken = std::net::TcpListener::bind(("127.0.0.1", port))
        .expect_err("the agent holds its stable port while it waits");
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    // A load balancer's health check reads the host as down, at once.
    let response = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .expect("the agent serves its stable port while it waits");
    assert_eq!(response.status().as_u16(), 503);
    let out = agent.stop_and_collect().await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Starts an agent process, deploys 1.0.0, then a 2.0.0 whose replicas never
/// become healthy (a deploy in hand for its 3 s start timeout), sends
/// `signal` once that deploy is accepted, and checks the claim: the command
/// in hand is brought to a known state (its outcome is published and stored
/// in FERRY_EVENTS before exit: NATS flushed), the replicas are stopped and
/// the agent exits 0.
async fn a_signal_mid_command_finishes_it_and_exits_0(signal: nix::sys::signal::Signal) {
    use async_nats::jetstream;
    use futures::StreamExt;

    let system = System::start().await;
    let (mut agent, mut watch, _port) =
        agent_serving_1_0_0(&system, 1, "start_timeout = \"3s\"\n").await;

    system
        .publish_release("web", "2.0.0", &["SAMPLE_HEALTHY=false"])
        .await;
    let accepted = watch
        .wait_for(WAIT, "the deploy of 2.0.0 accepted", |e| {
            matches!(
                &e.body,
                EventBody::Accepted {
                    action: ActionKind::Deploy
                }
            )
        })
        .await;
    let id = accepted.command_id.expect("a command's event");
    let replicas = children(agent.child().id());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child().id() as i32),
        signal,
    )
    .unwrap();
    exited_0_with_its_replicas(&mut agent, replicas, signal.as_ref()).await;

    // The command in hand has its outcome stored, published before the exit.
    let js = jetstream::new(system.nats.client().await);
    let consumer = js
        .get_stream("FERRY_EVENTS")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "ferry.v1.evt.dev.web.outcome".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    while let Some(Ok(message)) = batch.next().await {
        let event = ferry_protocol::Envelope::<ferry_protocol::event::ServiceEvent>::decode(
            &message.payload,
        )
        .unwrap()
        .data;
        if event.command_id == Some(id) {
            outcomes.push(event.body);
        }
    }
    assert_eq!(
        outcomes.len(),
        1,
        "the deploy in hand at {signal} has one stored outcome: {outcomes:?}"
    );
    assert!(
        matches!(
            &outcomes[0],
            EventBody::Failed {
                action: ActionKind::Deploy,
                ..
            } | EventBody::Succeeded {
                action: ActionKind::Deploy,
                ..
            }
        ),
        "{:?}",
        outcomes[0]
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_deploy_finishes_the_deploy_stores_its_outcome_and_exits_0() {
    a_signal_mid_command_finishes_it_and_exits_0(nix::sys::signal::Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_deploy_finishes_the_deploy_stores_its_outcome_and_exits_0() {
    a_signal_mid_command_finishes_it_and_exits_0(nix::sys::signal::Signal::SIGINT).await;
}
