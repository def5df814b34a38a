//! End-to-end tests of the Docker runtime against the real local engine: the
//! agent in-process with `runtime = "docker"`, replicas as containers of the
//! `ferry-sample` image (built by `scripts/build-sample-image`), HTTP through
//! the agent's stable port. Containers are inspected and killed with the
//! `docker` CLI, so only the runtime itself talks to the Engine API.
//!
//! Without an engine (or the image) the tests are skipped with the reason,
//! except under CI (`CI` set), where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_e2e::*;
use ferry_protocol::command::ActionKind;
use ferry_protocol::event::{EventBody, ServiceEvent};

const IMAGE: &str = "ferry-sample";

/// Whether the tests can run; panics under CI when they cannot.
fn engine_ready(test: &str) -> bool {
    docker_ready(test, &["ferry-sample:1.0.0"], "scripts/build-sample-image")
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A ferry container as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Container {
    id: String,
    name: String,
    version: String,
    running: bool,
}

/// Every container (running or not) ferry labelled for `service` in dev.
fn containers(service: &str) -> Vec<Container> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        "label=io.ferry.managed=true",
        "--filter",
        "label=io.ferry.environment=dev",
        "--filter",
        &format!("label=io.ferry.service={service}"),
        "--format",
        "{{.ID}} {{.Names}} {{.Label \"io.ferry.version\"}} {{.Status}}",
    ])
    .lines()
    .filter_map(|line| {
        let mut parts = line.split_whitespace();
        Some(Container {
            id: parts.next()?.to_owned(),
            name: parts.next()?.to_owned(),
            version: parts.next()?.to_owned(),
            running: parts.next() == Some("Up"),
        })
    })
    .collect()
}

/// Polls until `service`'s containers are exactly `count` running ones of
/// `version`, and returns them.
async fn wait_containers(service: &str, count: usize, version: &str) -> Vec<Container> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = containers(service);
        if now.len() == count && now.iter().all(|c| c.running && c.version == version) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {count} running containers of {version}; last: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the test's containers when it ends, passed or failed: ferry's (by
/// label, for this test's own service) and the named foreign ones.
struct Cleanup {
    service: String,
    foreign: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Never panics: this may run while a failed test unwinds.
        let listed = Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=io.ferry.managed=true"])
            .args([
                "--filter",
                &format!("label=io.ferry.service={}", self.service),
            ])
            .output();
        let mut ids: Vec<String> = listed
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        ids.extend(self.foreign.iter().cloned());
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// A service name of its own per test, so parallel tests (and parallel runs
/// on one engine) never see each other's containers.
fn unique_service() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("web-{}", &id[..8])
}

fn image(version: &str) -> String {
    format!("{IMAGE}:{version}")
}

fn finished(e: &ServiceEvent, version: &str) -> bool {
    matches!(&e.body, EventBody::Succeeded { action: ActionKind::Deploy, version: Some(v), .. } if v.as_str() == version)
        || matches!(&e.body, EventBody::Failed { version: Some(v), .. } if v.as_str() == version)
}

/// Publishes `version` (image tag `tag`) and waits for its deploy's outcome.
async fn release(
    system: &System,
    service: &str,
    version: &str,
    tag: &str,
    env_vars: &[&str],
) -> ServiceEvent {
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", service).await;
    system
        .publish_artifact(service, version, &image(tag), env_vars)
        .await;
    watch
        .wait_for(WAIT, &format!("outcome of deploying {version}"), |e| {
            finished(e, version)
        })
        .await
}

async fn deployed(system: &System, service: &str, port: u16, version: &str) {
    let outcome = release(system, service, version, version, &[]).await;
    assert!(
        matches!(outcome.body, EventBody::Succeeded { .. }),
        "deploy of {version}: {outcome:#?}"
    );
    wait_serving(port, version, WAIT).await;
}

fn failure_reason(outcome: &ServiceEvent) -> (String, Option<String>) {
    match &outcome.body {
        EventBody::Failed {
            reason, serving, ..
        } => (reason.clone(), serving.as_ref().map(|v| v.to_string())),
        other => panic!("expected a failure, got {other:#?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_deploy_upgrade_fail_and_roll_back_and_foreign_ones_are_left_alone() {
    if !engine_ready("containers_deploy_upgrade_fail_and_roll_back_and_foreign_ones_are_left_alone")
    {
        return;
    }
    let service = unique_service();
    let foreign = format!("not-ferry-{service}");
    let _cleanup = Cleanup {
        service: service.clone(),
        foreign: vec![foreign.clone()],
    };
    // A container ferry did not create, of the same image, named like ferry's.
    docker(&[
        "run",
        "-d",
        "--name",
        &foreign,
        "-e",
        "PORT=8080",
        &image("1.0.0"),
    ]);

    let mut system = System::start().await;
    let port = free_port();
    let config = system.docker_agent_config("dev", &service, port);
    system.start_agent_with(config).await;

    deployed(&system, &service, port, "1.0.0").await;
    let v1 = wait_containers(&service, 3, "1.0.0").await;
    for c in &v1 {
        assert!(
            c.name.starts_with(&format!("ferry-dev-{service}-1.0.0-")),
            "{c:?}"
        );
    }
    let env = docker(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &v1[0].id,
    ]);
    for expected in ["PORT=8080", "FERRY_VERSION=1.0.0", "FERRY_ENVIRONMENT=dev"] {
        assert!(env.lines().any(|l| l == expected), "{expected} in {env}");
    }
    let binding = docker(&["port", &v1[0].id, "8080/tcp"]);
    assert!(
        binding.starts_with("127.0.0.1:"),
        "published on loopback: {binding}"
    );

    // Upgrade: three new containers, the old ones gone.
    deployed(&system, &service, port, "2.0.0").await;
    let v2 = wait_containers(&service, 3, "2.0.0").await;
    assert!(v2.iter().all(|c| !v1.contains(c)));

    // A release whose image is not on the engine fails before anything is touched.
    let outcome = release(&system, &service, "9.0.0", "9", &[]).await;
    let (reason, serving) = failure_reason(&outcome);
    assert!(
        reason.contains("image ferry-sample:9 is not present on the engine and pulling is off"),
        "{reason}"
    );
    assert_eq!(serving.as_deref(), Some("2.0.0"));
    assert_eq!(wait_containers(&service, 3, "2.0.0").await, v2);

    // A release that never turns healthy fails; 2.0.0 keeps serving.
    let outcome = release(
        &system,
        &service,
        "3.0.0",
        "3.0.0",
        &["SAMPLE_HEALTHY=false"],
    )
    .await;
    let (reason, serving) = failure_reason(&outcome);
    assert!(reason.contains("/health"), "{reason}");
    assert_eq!(serving.as_deref(), Some("2.0.0"));
    let answer = get(port, "/").await.expect("stable port answers");
    assert_eq!(answer.version.as_deref(), Some("2.0.0"));
    assert_eq!(wait_containers(&service, 3, "2.0.0").await, v2);

    let out = system
        .cli_async(&[
            "rollback", &service, "-e", "dev", "--to", "previous", "--wait",
        ])
        .await;
    assert_ok(&out, "rollback to previous");
    wait_serving(port, "1.0.0", WAIT).await;
    let v1 = wait_containers(&service, 3, "1.0.0").await;

    // Containers outlive the agent: shutdown leaves them (and the foreign one) running.
    system.shutdown().await;
    assert_eq!(wait_containers(&service, 3, "1.0.0").await, v1);
    let state = docker(&["inspect", "--format", "{{.State.Running}}", &foreign]);
    assert_eq!(state.trim(), "true", "the foreign container still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_scale_and_one_killed_from_outside_is_replaced() {
    if !engine_ready("containers_scale_and_one_killed_from_outside_is_replaced") {
        return;
    }
    let service = unique_service();
    let _cleanup = Cleanup {
        service: service.clone(),
        foreign: vec![],
    };
    let mut system = System::start().await;
    let port = free_port();
    let mut config = system.docker_agent_config("dev", &service, port);
    for service in config.services.values_mut() {
        service.docker.pull = true;
    }
    system.start_agent_with(config).await;
    deployed(&system, &service, port, "1.0.0").await;
    wait_containers(&service, 3, "1.0.0").await;

    // With pulling on, a missing image is pulled through the engine; from a
    // registry that does not answer, the pull fails with the engine's reason
    // and 1.0.0 keeps serving.
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", &service).await;
    let unreachable = format!("127.0.0.1:{}/ferry-sample:9.9.9", free_port());
    system
        .publish_artifact(&service, "9.9.9", &unreachable, &[])
        .await;
    let outcome = watch
        .wait_for(WAIT, "outcome of the pull", |e| finished(e, "9.9.9"))
        .await;
    let (reason, serving) = failure_reason(&outcome);
    assert!(
        reason.contains(&format!("pulling {unreachable} failed")),
        "{reason}"
    );
    assert_eq!(serving.as_deref(), Some("1.0.0"));
    assert!(
        watch.seen.iter().any(
            |e| matches!(&e.body, EventBody::Progress { step, .. } if step.starts_with("pulling"))
        ),
        "the pull was reported as progress"
    );
    wait_containers(&service, 3, "1.0.0").await;
    wait_serving(port, "1.0.0", WAIT).await;

    for (replicas, label) in [("5", "scale to 5"), ("1", "scale to 1")] {
        let out = system
            .cli_async(&["scale", &service, replicas, "-e", "dev", "--wait"])
            .await;
        assert_ok(&out, label);
        wait_containers(&service, replicas.parse().unwrap(), "1.0.0").await;
        wait_serving(port, "1.0.0", WAIT).await;
    }

    let before = wait_containers(&service, 1, "1.0.0").await;
    docker(&["kill", &before[0].id]);
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let now = containers(&service);
        if now.len() == 1 && now[0].running && now[0].id != before[0].id {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the killed container was not replaced; last: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after[0].version, "1.0.0");
    wait_serving(port, "1.0.0", WAIT).await;

    system.shutdown().await;
    assert_eq!(wait_containers(&service, 1, "1.0.0").await, after);
}

/// `(id, StartedAt, RestartCount)` of each container, sorted by id.
fn started(containers: &[Container]) -> Vec<(String, String, String)> {
    let mut rows: Vec<_> = containers
        .iter()
        .map(|c| {
            let out = docker(&[
                "inspect",
                "--format",
                "{{.State.StartedAt}} {{.RestartCount}}",
                &c.id,
            ]);
            let (at, restarts) = out.trim().split_once(' ').expect("two fields");
            (c.id.clone(), at.to_owned(), restarts.to_owned())
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_adopts_the_running_containers_without_restarting_them() {
    if !engine_ready("an_agent_restart_adopts_the_running_containers_without_restarting_them") {
        return;
    }
    let service = unique_service();
    let _cleanup = Cleanup {
        service: service.clone(),
        foreign: vec![],
    };
    let mut system = System::start().await;
    let port = free_port();
    let config = system.docker_agent_config("dev", &service, port);
    system.start_agent_with(config).await;
    deployed(&system, &service, port, "1.0.0").await;
    let before = started(&wait_containers(&service, 3, "1.0.0").await);

    // Metrics events carry what each container uses, measured by the engine:
    // under load, some CPU (an idle container may measure 0).
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", &service).await;
    let load = Load::start(port, 4, Duration::from_millis(1));
    let event = watch
        .wait_for(
            WAIT,
            "metrics with usage of 3 replicas, CPU measured under load",
            |e| {
                matches!(&e.body, EventBody::Metrics(m) if m.replicas.len() == 3
                    && m.replicas.iter().any(|u| u.cpu_percent > 0.0))
            },
        )
        .await;
    load.stop().await;
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    let EventBody::Metrics(metrics) = event.body else {
        unreachable!("matched above")
    };
    for usage in &metrics.replicas {
        assert!(usage.memory_bytes > 0, "{usage:?}");
        assert!(
            usage.cpu_percent.is_finite() && (0.0..=100.0 * cores).contains(&usage.cpu_percent),
            "{usage:?}"
        );
        assert_eq!(usage.restarts, 0, "{usage:?}");
        assert!(
            usage.replica.starts_with(&format!("{service}-1.0.0-")),
            "{usage:?}"
        );
    }

    system.restart_agent("dev").await;
    wait_serving(port, "1.0.0", WAIT).await;
    let after = started(&wait_containers(&service, 3, "1.0.0").await);
    assert_eq!(after, before, "the same containers, never restarted");

    let deadline = Instant::now() + WAIT;
    loop {
        let out = system.cli_async(&["status", "--output", "json"]).await;
        assert_ok(&out, "ferry status");
        let rows = json(&out);
        let row = rows
            .as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|r| r["environment"] == "dev" && r["service"] == service.as_str())
            })
            .cloned();
        if row.as_ref().is_some_and(|r| {
            r["replicas_healthy"] == 3 && r["replicas_desired"] == 3 && r["state"] == "running"
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed 3/3 running; last: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        started(&containers(&service)),
        before,
        "still the same containers"
    );
    system.shutdown().await;
}
