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
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_agent_stops_its_replicas_and_exits_0() {
    let system = System::start().await;
    let port = free_port();
    let dir = system.dir.path();
    let config = dir.join("agent-dev.toml");
    std::fs::write(
        &config,
        format!(
            "environment = \"dev\"\nnats_url = \"{}\"\n{}state_dir = \"{}\"\ntrusted_keys = [\"{}\"]\nheartbeat_interval = \"200ms\"\n[services.web]\nport = {port}\nreplicas = 2\n[services.web.health]\ninterval = \"100ms\"\n",
            system.nats.url(),
            system.agent_credentials_toml("dev"),
            dir.join("state-dev").display(),
            system.controller_key.public_key()
        ),
    )
    .unwrap();
    let mut agent = KillOnDrop(
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
    wait_serving(port, "1.0.0", WAIT).await;
    let replicas = children(agent.0.id());
    assert_eq!(replicas.len(), 2, "two replica processes: {replicas:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "clean exit");
    for pid in replicas {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "replica {pid} outlived the agent"
        );
    }
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
