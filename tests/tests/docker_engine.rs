//! The Docker engine unreachable at agent start: the agent keeps running
//! (its other services work), the docker service's commands fail with the
//! reason, and once the engine answers the service is restored from state by
//! adopting its containers. A binary of its own because it points
//! `DOCKER_HOST` (process-wide) at a socket the test opens and closes: a
//! forwarder to the real engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_agent::config::RuntimeKind;
use ferry_e2e::*;
use ferry_protocol::command::ActionKind;
use ferry_protocol::event::EventBody;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// The real engine's socket, if the test can run; under `CI` a test that
/// cannot run fails, whatever the reason.
fn engine_socket() -> Option<PathBuf> {
    let found = match std::env::var("DOCKER_HOST") {
        Ok(host) => match host.strip_prefix("unix://") {
            Some(path) => usable(PathBuf::from(path)),
            None => Err(format!(
                "DOCKER_HOST is {host}, not a unix:// socket the test can forward"
            )),
        },
        Err(_) => usable(PathBuf::from("/var/run/docker.sock")),
    };
    let reason = match found {
        Ok(socket) => return Some(socket),
        Err(reason) => reason,
    };
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (CI is set, so the Docker tests must run)");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// `socket` if its engine answers and has the sample image, else why not.
fn usable(socket: PathBuf) -> Result<PathBuf, String> {
    match docker_cli(&socket, &["image", "inspect", "ferry-sample:1.0.0"]) {
        Some(out) if out.status.success() => Ok(socket),
        Some(out) => Err(format!(
            "the engine at {} has no ferry-sample:1.0.0: {}",
            socket.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        None => Err("the docker CLI could not be run".to_owned()),
    }
}

fn docker_cli(socket: &Path, args: &[&str]) -> Option<std::process::Output> {
    Command::new("docker")
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .ok()
}

/// Ids of the running containers ferry labelled for `service`, sorted.
fn running(socket: &Path, service: &str) -> Vec<String> {
    let filter = format!("label=io.ferry.service={service}");
    let out = docker_cli(socket, &["ps", "-q", "--no-trunc", "--filter", &filter]).unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Forwards connections on `at` to the engine's socket until aborted.
fn forward(at: &Path, engine: &Path) -> JoinHandle<()> {
    let _ = std::fs::remove_file(at);
    let listener = UnixListener::bind(at).expect("bind forwarder");
    let engine = engine.to_path_buf();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let engine = engine.clone();
            tokio::spawn(async move {
                if let Ok(mut upstream) = UnixStream::connect(&engine).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    })
}

/// Removes the test's containers however it ends (never panics: it may run
/// while a failed test unwinds).
struct Cleanup {
    engine: PathBuf,
    service: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=io.ferry.service={}", self.service);
        let ids = docker_cli(&self.engine, &["ps", "-aq", "--filter", &filter])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = docker_cli(&self.engine, &args);
        }
    }
}

/// Closes the forwarder: its socket file goes, so new connections fail.
fn close(forwarder: JoinHandle<()>, at: &Path) {
    forwarder.abort();
    let _ = std::fs::remove_file(at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_fails_its_service_only_until_it_answers_again() {
    let Some(engine) = engine_socket() else {
        return;
    };
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("docker.sock");
    // Before any thread reads the environment: this binary has one test.
    std::env::set_var("DOCKER_HOST", format!("unix://{}", socket.display()));
    let service = format!("web-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let other = format!("proc-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup {
        engine: engine.clone(),
        service: service.clone(),
    };

    let mut forwarder = forward(&socket, &engine);
    let mut system = System::start().await;
    let (port, other_port) = (free_port(), free_port());
    let mut config = system.agent_config("dev", &[(&service, port), (&other, other_port)]);
    for (name, svc) in config.services.iter_mut() {
        if name.as_str() == service {
            let service = svc;
            service.runtime = RuntimeKind::Docker;
            service.replicas = 3;
            service.env.insert("SAMPLE_BIND".into(), "0.0.0.0".into());
            service.health.start_timeout = Duration::from_secs(15);
        }
    }
    system.start_agent_with(config.clone()).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", &service).await;
    system
        .publish_artifact(&service, "1.0.0", "ferry-sample:1.0.0", &[])
        .await;
    watch
        .wait_for(WAIT, "deploy of 1.0.0", |e| {
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
    let before = running(&engine, &service);
    assert_eq!(before.len(), 3, "{before:?}");

    // The engine goes away while the agent restarts.
    system.stop_agent("dev").await;
    close(forwarder, &socket);
    let mut watch = EventWatch::new(&client, "dev", &service).await;
    system.start_agent_with(config).await;
    let event = watch
        .wait_for(WAIT, "runtime unavailable", |e| {
            matches!(&e.body, EventBody::RuntimeUnavailable { .. })
        })
        .await;
    let EventBody::RuntimeUnavailable { detail, .. } = &event.body else {
        unreachable!("matched above")
    };
    assert!(detail.contains("docker.sock"), "{detail}");

    // Its commands fail with the reason; the other service deploys.
    let out = system
        .cli_async(&["scale", &service, "2", "-e", "dev", "--wait"])
        .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("the Docker engine is unreachable"), "{text}");
    system.publish_release(&other, "1.0.0", &[]).await;
    wait_serving(other_port, "1.0.0", WAIT).await;

    // The engine answers again: the service is restored, its containers adopted.
    forwarder = forward(&socket, &engine);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/").await.map(|a| a.status) != Some(200) {
        assert!(Instant::now() < deadline, "the service was not restored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_serving(port, "1.0.0", WAIT).await;
    assert_eq!(running(&engine, &service), before, "the same containers");

    system.shutdown().await;
    close(forwarder, &socket);
}
