//! The compose stack (`deploy/compose/docker-compose.yml`) on the real local
//! engine, driven by the real `docker-compose` binary: ferry's own images
//! (built by `scripts/build-images`), a release published with the CLI from
//! the host, dev serving it on its published stable port, and `down`
//! leaving no container, network or volume of the project behind; and,
//! without Docker, that the stack's configuration files are valid and trust
//! exactly its demo keys.
//!
//! Without an engine, `docker-compose` or the images the test is skipped
//! with the reason, except under CI (`CI` set), where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use ferry_e2e::*;

const IMAGES: [&str; 4] = [
    "ferry-nats:latest",
    "ferry-controller:latest",
    "ferry-agent:latest",
    "ferry:latest",
];

/// The label compose puts on every container, network and volume it makes.
const PROJECT_LABEL: &str = "com.docker.compose.project";

/// Containers starting (and the agents waiting for nats-server) on a busy
/// machine take longer than [`WAIT`].
const STACK_WAIT: Duration = Duration::from_secs(90);

fn compose_ready(test: &str) -> bool {
    let compose = Command::new("docker-compose").arg("version").output();
    if !compose.as_ref().is_ok_and(|o| o.status.success()) {
        let reason = format!("docker-compose cannot run: {compose:?}");
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {reason} (CI is set, so the compose test must run)");
        }
        eprintln!("SKIPPED {test}: {reason}");
        return false;
    }
    docker_ready(test, &IMAGES, "scripts/build-images")
}

/// Host ports the stack publishes on 127.0.0.1, chosen free for this run.
struct Ports {
    nats: u16,
    dev: u16,
    acceptance: u16,
    production: u16,
    metrics: u16,
}

/// One compose project of the stack; `down -v --remove-orphans` on drop,
/// passed or failed (with the services' logs when the test failed).
struct Stack {
    project: String,
    file: PathBuf,
    ports: Ports,
    down: bool,
}

impl Stack {
    fn up() -> Stack {
        let stack = Stack {
            project: format!(
                "ferry-e2e-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            file: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/compose/docker-compose.yml"),
            ports: Ports {
                nats: free_port(),
                dev: free_port(),
                acceptance: free_port(),
                production: free_port(),
                metrics: free_port(),
            },
            down: false,
        };
        let out = stack.compose(&["up", "-d"]);
        assert_ok(&out, "docker-compose up -d");
        stack
    }

    fn compose(&self, args: &[&str]) -> Output {
        let ports = &self.ports;
        Command::new("docker-compose")
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .env("FERRY_COMPOSE_NATS_PORT", ports.nats.to_string())
            .env("FERRY_COMPOSE_DEV_PORT", ports.dev.to_string())
            .env(
                "FERRY_COMPOSE_ACCEPTANCE_PORT",
                ports.acceptance.to_string(),
            )
            .env(
                "FERRY_COMPOSE_PRODUCTION_PORT",
                ports.production.to_string(),
            )
            .env("FERRY_COMPOSE_METRICS_PORT", ports.metrics.to_string())
            .output()
            .expect("run docker-compose")
    }

    /// The host's `ferry` CLI, talking to the stack's published NATS port.
    fn ferry(&self, args: &[&str]) -> Output {
        Command::new(bin("ferry"))
            .args(args)
            .env(
                "FERRY_NATS_URL",
                format!("nats://127.0.0.1:{}", self.ports.nats),
            )
            .env("FERRY_ACTOR", "compose-test")
            .output()
            .expect("run ferry")
    }

    fn down(&mut self) -> Output {
        self.down = true;
        self.compose(&["down", "-v", "--remove-orphans", "--timeout", "20"])
    }

    /// Every container, network and volume that still carries the project's
    /// label, as `kind name` lines.
    fn leftovers(&self) -> Vec<String> {
        let filter = format!("label={PROJECT_LABEL}={}", self.project);
        let listings: [(&str, &[&str]); 3] = [
            ("container", &["ps", "-a", "--format", "{{.Names}}"]),
            ("network", &["network", "ls", "--format", "{{.Name}}"]),
            ("volume", &["volume", "ls", "--format", "{{.Name}}"]),
        ];
        listings
            .iter()
            .flat_map(|(kind, args)| {
                let out = Command::new("docker")
                    .args(*args)
                    .args(["--filter", &filter])
                    .output()
                    .expect("run docker");
                assert_ok(&out, &format!("docker {args:?}"));
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|line| !line.trim().is_empty())
                    .map(|name| format!("{kind} {name}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail", "60"]);
            eprintln!(
                "logs of compose project {}:\n{}{}",
                self.project,
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        if !self.down {
            let out = self.down();
            if !out.status.success() {
                eprintln!(
                    "docker-compose down of {} failed: {}",
                    self.project,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Environments whose agent `ferry status` shows up.
fn agents_up(stack: &Stack) -> Option<Vec<String>> {
    let out = stack.ferry(&["status", "--output", "json"]);
    if !out.status.success() {
        return None;
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut up: Vec<String> = rows
        .as_array()?
        .iter()
        .filter(|row| row["agent_up"] == true)
        .filter_map(|row| row["environment"].as_str().map(str::to_owned))
        .collect();
    up.sort();
    up.dedup();
    Some(up)
}

#[tokio::test]
async fn the_compose_stack_serves_a_published_release_in_dev_and_leaves_nothing_behind() {
    let test = "the_compose_stack_serves_a_published_release_in_dev_and_leaves_nothing_behind";
    if !compose_ready(test) {
        return;
    }
    let mut stack = Stack::up();

    // Ports are published on the host's loopback only.
    for (service, port) in [
        ("nats", 4222),
        ("controller", 9464),
        ("agent-dev", 8080),
        ("agent-acceptance", 8080),
        ("agent-production", 8080),
    ] {
        let out = stack.compose(&["port", service, &port.to_string()]);
        assert_ok(&out, &format!("docker-compose port {service}"));
        let published = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            published.starts_with("127.0.0.1:"),
            "{service}:{port} is published on {published:?}, not on 127.0.0.1"
        );
    }

    // The agents (static binaries in FROM-scratch images) resolve the
    // service name `nats` inside the compose network and report in.
    until_within("the three agents up in ferry status", STACK_WAIT, || {
        agents_up(&stack).filter(|up| up.len() == ENVIRONMENTS.len())
    })
    .await;

    let out = stack.ferry(&[
        "release",
        "publish",
        "--service",
        "web",
        "--version",
        "2.0.0",
        "--artifact",
        "/ferry-sample",
        "--author",
        "compose-test",
    ]);
    assert_ok(&out, "ferry release publish");

    // The controller deploys it to dev at once; dev's agent serves it on its
    // stable port, published on the host.
    wait_serving(stack.ports.dev, "2.0.0", STACK_WAIT).await;
    let answer = get(stack.ports.dev, "/").await.expect("dev answers");
    assert_eq!(answer.body.trim(), "ferry-sample 2.0.0");

    let out = stack.down();
    assert_ok(&out, "docker-compose down -v --remove-orphans");
    let leftovers = stack.leftovers();
    assert!(
        leftovers.is_empty(),
        "compose project {} left behind: {leftovers:?}",
        stack.project
    );
}

/// The stack's configuration files, as the containers read them.
fn compose_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose")
}

/// Public key of the demo seed `name` in `deploy/compose/demo-keys/`.
fn demo_key(name: &str) -> String {
    let path = compose_dir().join(format!("demo-keys/{name}.nk"));
    let seed = std::fs::read_to_string(&path).unwrap();
    ferry_protocol::SigningKey::from_seed(&seed)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .public_key()
}

#[test]
fn the_stacks_configurations_are_valid_and_trust_its_demo_keys() {
    let dir = compose_dir();
    let (controller_key, alice, bob) = (demo_key("controller"), demo_key("alice"), demo_key("bob"));

    // The controller, with the key file where the compose file mounts it.
    let mut controller = ferry_controller::ControllerConfig::load(
        Some(&dir.join("controller.toml")),
        Some(Default::default()),
    )
    .unwrap();
    controller.signing_key_file = dir.join("demo-keys/controller.nk");
    let controller = controller.validate().unwrap();
    assert_eq!(controller.signing_key().public_key(), controller_key);
    for (env, required) in [("dev", 0), ("acceptance", 1), ("production", 2)] {
        let stage = controller
            .stage(&ferry_protocol::EnvName::new(env).unwrap())
            .unwrap();
        assert_eq!(stage.approvals_required, required, "{env}");
        let (reviewers, _) = stage.reviewers_for(ferry_protocol::approval::ApprovalKind::Deploy);
        let reviewers: Vec<(&str, &str)> = reviewers
            .iter()
            .map(|r| (r.name.as_str(), r.key.as_str()))
            .collect();
        let expected: &[(&str, &str)] = if required > 0 {
            &[("alice", &alice), ("bob", &bob)]
        } else {
            &[]
        };
        assert_eq!(reviewers, expected, "{env}");
    }

    // Each agent trusts the controller's key and, where gated, the reviewers.
    for (env, required) in [("dev", 0), ("acceptance", 1), ("production", 2)] {
        let path = dir.join(format!("agent-{env}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let agent = ferry_agent::config::from_toml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(agent.environment.as_str(), env);
        assert_eq!(
            agent.trusted_keys,
            std::slice::from_ref(&controller_key),
            "{env}"
        );
        assert_eq!(agent.approvals_required, required, "{env}");
        let reviewers: &[String] = if required > 0 {
            &[alice.clone(), bob.clone()]
        } else {
            &[]
        };
        assert_eq!(agent.reviewer_keys, reviewers, "{env}");
    }
}
