//! The end-to-end harness: a real nats-server per test, the controller and
//! agents running in-process (as wasmCloud's tests run their host), the real
//! `ferry` CLI and `ferry-sample` binaries, and loopback HTTP.

// Test support: a harness that cannot start its servers must fail the test
// loudly, so panicking helpers are its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod agent_process;
pub mod bars;
pub mod bins;
pub mod controller_process;
pub mod deploy_bench;
pub mod docker;
pub mod events;
pub mod fake_apiserver;
pub mod fleet;
pub mod fleet_bench;
pub mod footprint;
pub mod http_inbox;
pub mod ingest;
pub mod load;
pub mod metrics_scrape;
pub mod nats;
pub mod nats_cluster;
pub mod prometheus;
pub mod rollout;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use ferry_agent::config::{AgentConfig, DockerOptions, HealthConfig, RuntimeKind, ServiceConfig};
use ferry_protocol::{EnvName, ServiceName, SigningKey};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use agent_process::AgentProcess;
pub use bins::{bin, static_bin};
pub use controller_process::ControllerProcess;
pub use docker::docker_ready;
pub use events::EventWatch;
pub use http_inbox::{http_receiver, posts, Inbox, Received};
pub use load::{Load, LoadStats};
pub use nats::NatsServer;

/// The pipeline every test system runs.
pub const ENVIRONMENTS: [&str; 3] = ["dev", "acceptance", "production"];

/// Generous bound for anything that should take a second or two.
pub const WAIT: Duration = Duration::from_secs(30);

/// Installs a tracing subscriber once, honouring RUST_LOG.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A free loopback port, never one this process has handed out before.
///
/// A port is free only until something binds it, and a test often names a
/// port long before its daemon binds it (an agent waiting for a JetStream
/// quorum binds its web port last) or frees one it will bind again (a
/// nats-server node killed and restarted). The tests of one binary run in
/// parallel, so each port is handed out once per process: another test can
/// never draw a port that is reserved but not yet, or no longer, bound.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::{Mutex, OnceLock};
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut handed_out = HANDED_OUT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Below the kernel's ephemeral range (32768 and up), and below the
    // agent's replica ports (20000 and up): a client polling a port before
    // its server binds it can never be handed that port as its own source
    // port and connect to itself, and a test's ports never collide with the
    // replicas' ports.
    for _ in 0..256 {
        let draw = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 10_000 + (draw % 10_000) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!(
        "no free loopback port between 10000 and 19999 after 256 draws ({} handed out)",
        handed_out.len()
    )
}

struct Running {
    token: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        tokio::time::timeout(WAIT, self.task).await??
    }
}

/// One environment's agent as the harness runs it.
pub struct AgentSlot {
    /// Its configuration (state dir survives restarts).
    pub config: AgentConfig,
    running: Option<Running>,
}

/// A whole ferry system for one test.
pub struct System {
    /// The test's own nats-server.
    pub nats: NatsServer,
    /// The controller's signing key.
    pub controller_key: SigningKey,
    /// Files that must outlive the system's parts.
    pub dir: tempfile::TempDir,
    controller: Option<Running>,
    /// The controller's configuration (NATS URL and key file are filled in
    /// at start); change it before `start_controller` to configure the pipeline.
    pub controller_config: ferry_controller::ControllerConfig,
    /// Port the controller serves `/metrics` on, when set before it starts.
    pub metrics_port: Option<u16>,
    /// Agents by environment.
    pub agents: BTreeMap<String, AgentSlot>,
}

impl System {
    /// Starts nats-server and the controller.
    pub async fn start() -> System {
        let mut system = System::without_controller();
        system.start_controller().await;
        system
    }

    /// Starts nats-server with the deployment configuration
    /// (`deploy/nats/nats-server.conf`) and the controller; every part then
    /// authenticates as its role's user: the controller as `ferry-controller`,
    /// each agent as `ferry-agent-<env>`, the CLI as `ferry-cli` and releases
    /// as `ferry-ci`.
    pub async fn start_with_permissions() -> System {
        let mut system = System::with_nats(NatsServer::start_with_permissions());
        system.start_controller().await;
        system
    }

    /// Starts nats-server only; agents create the streams they need. With
    /// `FERRY_E2E_NATS=deploy` in the environment the server runs with the
    /// deployment configuration, as in [`System::start_with_permissions`].
    pub fn without_controller() -> System {
        if std::env::var("FERRY_E2E_NATS").is_ok_and(|mode| mode == "deploy") {
            return System::with_nats(NatsServer::start_with_permissions());
        }
        System::with_nats(NatsServer::start())
    }

    /// A system on servers the test runs itself (a cluster of containers),
    /// with every stream and bucket kept `replicas` times; the controller is
    /// not started. Agents and controller connect with every URL of `urls`.
    pub fn on_servers(urls: String, replicas: u32) -> System {
        let mut system = System::with_nats(NatsServer::external(urls));
        system.controller_config.stream_replicas = replicas;
        system
    }

    /// [`System::on_servers`] on servers with the deployment's users (see
    /// [`NatsServer::external_with_users`]): every part authenticates as its
    /// role's user.
    pub fn on_servers_with_users(nats: NatsServer, replicas: u32) -> System {
        let mut system = System::with_nats(nats);
        system.controller_config.stream_replicas = replicas;
        system
    }

    /// A system on `nats` (a server the test configured itself, say with
    /// TLS); the controller is not started.
    pub fn with_nats(nats: NatsServer) -> System {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let controller_key = SigningKey::generate();
        let (nats_user, nats_password_file) = if nats.has_permissions() {
            (
                Some("ferry-controller".to_owned()),
                Some(nats.password_file("ferry-controller")),
            )
        } else {
            (None, None)
        };
        // Carries the controller's NATS user, so a second instance built
        // from it authenticates too.
        let controller_config = ferry_controller::ControllerConfig {
            environments: ENVIRONMENTS.iter().map(|e| e.to_string()).collect(),
            agent_timeout: "5s".into(),
            promotion_check_interval: "100ms".into(),
            nats_user,
            nats_password_file,
            ..Default::default()
        };
        System {
            nats,
            controller_key,
            dir,
            controller: None,
            controller_config,
            metrics_port: None,
            agents: BTreeMap::new(),
        }
    }

    /// Starts (or restarts) the in-process controller and waits until it answers.
    pub async fn start_controller(&mut self) {
        let key_file = self.dir.path().join("controller.nk");
        std::fs::write(&key_file, self.controller_key.seed().expect("seed")).expect("write key");
        let config = ferry_controller::ControllerConfig {
            nats_url: self.nats.url(),
            signing_key_file: key_file,
            metrics_listen: self
                .metrics_port
                .map(|p| format!("127.0.0.1:{p}"))
                .or_else(|| self.controller_config.metrics_listen.clone()),
            ..self.controller_config.clone()
        };
        let resolved = config
            .validate()
            .unwrap_or_else(|p| panic!("controller config: {p:?}"));
        let token = CancellationToken::new();
        let run_token = token.clone();
        let task = tokio::spawn(async move {
            ferry_controller::run(resolved, run_token)
                .await
                .map_err(anyhow::Error::from)
        });
        self.controller = Some(Running { token, task });
        // Ready when the API answers.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let status = self.cli(&["status", "--output", "json"]);
            if status.status.success() {
                return;
            }
            if let Some(Running { task, .. }) = &mut self.controller {
                if task.is_finished() {
                    let ended = task.await;
                    panic!("the controller stopped before its API answered: {ended:?}");
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller API did not answer within {WAIT:?}; the last `ferry status` said: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the controller.
    pub async fn stop_controller(&mut self) {
        if let Some(running) = self.controller.take() {
            running.stop().await.expect("controller stopped cleanly");
        }
    }

    /// `user` and its password file on a server with permissions; none on an open one.
    pub fn credentials(&self, user: &str) -> (Option<String>, Option<PathBuf>) {
        if self.nats.has_permissions() {
            (Some(user.to_owned()), Some(self.nats.password_file(user)))
        } else {
            (None, None)
        }
    }

    /// TOML lines giving `env`'s agent its NATS user on a server with
    /// permissions (nothing on an open one), for agent config files.
    pub fn agent_credentials_toml(&self, env: &str) -> String {
        self.credentials_toml(&format!("ferry-agent-{env}"))
    }

    /// TOML lines giving a daemon the NATS `user` on a server with
    /// permissions (nothing on an open one), for its config file.
    pub fn credentials_toml(&self, user: &str) -> String {
        match self.credentials(user) {
            (Some(user), Some(file)) => format!(
                "nats_user = \"{user}\"\nnats_password_file = \"{}\"\n",
                file.display()
            ),
            _ => String::new(),
        }
    }

    /// A `ferry-agent` configuration file's text for `env` on this system's
    /// NATS (as the agent's own user under permissions), trusting the
    /// controller's key, with its state in the system's directory, followed
    /// by `rest` (more settings, then the `[services...]` tables).
    pub fn agent_toml(&self, env: &str, rest: &str) -> String {
        format!(
            "environment = \"{env}\"\nhost = \"{env}-1\"\nnats_url = \"{}\"\n{}state_dir = \"{}\"\ntrusted_keys = [\"{}\"]\n{rest}",
            self.nats.url(),
            self.agent_credentials_toml(env),
            self.dir.path().join(format!("agent-{env}")).display(),
            self.controller_key.public_key(),
        )
    }

    /// Configuration of an agent for `env` managing one sample service `service` on `port`.
    pub fn agent_config(&self, env: &str, services: &[(&str, u16)]) -> AgentConfig {
        let services = services
            .iter()
            .map(|(name, port)| {
                let name = ServiceName::new(*name).expect("service name");
                let config = ServiceConfig {
                    name: name.clone(),
                    runtime: RuntimeKind::Process,
                    command: vec!["{artifact}".into()],
                    listen: SocketAddr::from(([127, 0, 0, 1], *port)),
                    replicas: 2,
                    env: BTreeMap::new(),
                    health: HealthConfig {
                        path: "/health".into(),
                        interval: Duration::from_millis(100),
                        timeout: Duration::from_secs(1),
                        failure_threshold: 2,
                        start_timeout: Duration::from_secs(10),
                    },
                    stop_timeout: Duration::from_secs(5),
                    docker: DockerOptions::default(),
                    kubernetes: Default::default(),
                    strategy: ferry_protocol::rollout::Strategy::Recreate,
                    analysis: ferry_agent::analysis::Thresholds::default(),
                    metrics: ferry_agent::config::MetricsProvider::Proxy,
                };
                (name, config)
            })
            .collect();
        let (nats_user, nats_password_file) = self.credentials(&format!("ferry-agent-{env}"));
        AgentConfig {
            environment: EnvName::new(env).expect("env name"),
            host: ferry_protocol::HostName::new(format!("{env}-1")).expect("host name"),
            nats_url: self.nats.url(),
            stream_replicas: ferry_protocol::streams::Replicas::new(
                self.controller_config.stream_replicas,
            )
            .expect("stream_replicas"),
            leaf: None,
            nats_creds: None,
            nats_user,
            nats_password_file,
            nats_tls: Default::default(),
            nats_inbox_prefix: format!("_INBOX_ferry_agent_{env}"),
            state_dir: self.dir.path().join(format!("agent-{env}")),
            trusted_keys: vec![self.controller_key.public_key()],
            approvals_required: 0,
            reviewer_keys: Vec::new(),
            heartbeat_interval: Duration::from_millis(500),
            metrics_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            clock_offset_secs: 0,
            services,
        }
    }

    /// Configuration of an agent for `env` running one sample service as
    /// containers on the local Docker engine (3 replicas; the sample binds
    /// 0.0.0.0 inside its container so the published port reaches it).
    pub fn docker_agent_config(&self, env: &str, service: &str, port: u16) -> AgentConfig {
        let mut config = self.agent_config(env, &[(service, port)]);
        for service in config.services.values_mut() {
            service.runtime = RuntimeKind::Docker;
            service.replicas = 3;
            service.env.insert("SAMPLE_BIND".into(), "0.0.0.0".into());
            service.health.start_timeout = Duration::from_secs(15);
        }
        config
    }

    /// Starts an agent with `config` and waits for its first heartbeat.
    pub async fn start_agent_with(&mut self, config: AgentConfig) {
        let env = config.environment.to_string();
        if config.leaf.is_some() && self.nats.has_permissions() {
            return self.start_leaf_agent_with_users(config).await;
        }
        // A leaf's agent: its heartbeats stay on its leaf node (the hub has
        // them only through its events stream's source).
        let client = match &config.leaf {
            Some(_) => async_nats::connect(config.nats_url.as_str())
                .await
                .expect("connect to the agent's leaf node"),
            None => self.nats.client().await,
        };
        let mut heartbeats = client
            .subscribe(ferry_protocol::subject::agent_event(
                &config.environment,
                ferry_protocol::subject::AgentEventKind::Heartbeat,
            ))
            .await
            .expect("subscribe heartbeats");
        client.flush().await.expect("flush");
        self.spawn_agent(config);
        let deadline = tokio::time::Instant::now() + WAIT;
        tokio::time::timeout_at(deadline, heartbeats.next())
            .await
            .unwrap_or_else(|_| panic!("agent {env} sent no heartbeat within {WAIT:?}"))
            .expect("heartbeat subscription open");
    }

    /// Runs an in-process agent on `config`, kept under its environment.
    fn spawn_agent(&mut self, config: AgentConfig) {
        let token = CancellationToken::new();
        let run_token = token.clone();
        let run_config = config.clone();
        let task = tokio::spawn(async move {
            ferry_agent::run(run_config, run_token)
                .await
                .map_err(anyhow::Error::from)
        });
        self.agents.insert(
            config.environment.to_string(),
            AgentSlot {
                config,
                running: Some(Running { token, task }),
            },
        );
    }

    /// Starts an agent on a leaf node whose only user is the agent's own:
    /// ready once the controller at the hub has its heartbeat (sourced from
    /// the leaf) in the agents bucket, within two minutes: the hub's source
    /// of a leaf stream that did not exist yet (the agent creates it) is
    /// retried after 10 s, then 20 s.
    async fn start_leaf_agent_with_users(&mut self, config: AgentConfig) {
        let env = ferry_protocol::streams::agent_key(&config.environment, Some(&config.host));
        self.spawn_agent(config);
        let js = async_nats::jetstream::new(self.nats.client().await);
        let wait = Duration::from_secs(120);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let bucket = js
                .get_key_value(ferry_protocol::streams::AGENTS_BUCKET)
                .await;
            if let Ok(bucket) = bucket {
                if let Ok(Some(_)) = bucket.get(&env).await {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hub had no heartbeat of agent {env} within {wait:?} (agents bucket key)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts an agent for `env` with one service `web` on `port`.
    pub async fn start_agent(&mut self, env: &str, port: u16) {
        let config = self.agent_config(env, &[("web", port)]);
        self.start_agent_with(config).await;
    }

    /// Stops `env`'s agent gracefully (its state stays for a restart).
    pub async fn stop_agent(&mut self, env: &str) {
        let running = self.agents.get_mut(env).and_then(|a| a.running.take());
        if let Some(running) = running {
            running.stop().await.expect("agent stopped cleanly");
        }
    }

    /// Restarts `env`'s agent with the same configuration and state.
    pub async fn restart_agent(&mut self, env: &str) {
        self.stop_agent(env).await;
        let config = self
            .agents
            .get(env)
            .expect("agent was started")
            .config
            .clone();
        self.start_agent_with(config).await;
    }

    /// Runs the `ferry` CLI against this system's NATS.
    /// On a server with permissions, as the user of the role that runs
    /// that command (see [`cli_user`]).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(cli_user(args), args)
            .output()
            .expect("run ferry")
    }

    /// The `ferry` CLI with `args` against this system's NATS, authenticated
    /// as `user` (`ferry-cli`, or `ferry-ci` with its inbox prefix) when the
    /// server has permissions.
    pub fn cli_command(&self, user: &str, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(bin("ferry"));
        command
            .args(args)
            .env("FERRY_NATS_URL", self.nats.url())
            .env("FERRY_ACTOR", "e2e-test")
            .env_remove("FERRY_OUTPUT")
            .env_remove("FERRY_NATS_USER")
            .env_remove("FERRY_NATS_PASSWORD_FILE")
            .env_remove("FERRY_NATS_INBOX_PREFIX");
        if let (Some(name), Some(file)) = self.credentials(user) {
            command
                .env("FERRY_NATS_USER", name)
                .env("FERRY_NATS_PASSWORD_FILE", file);
            if user == "ferry-ci" {
                command.env("FERRY_NATS_INBOX_PREFIX", "_INBOX_ferry_ci");
            }
        }
        command
    }

    /// Runs the CLI off the async runtime's threads (it may block for a while).
    pub async fn cli_async(&self, args: &[&str]) -> Output {
        self.cli_async_as(cli_user(args), args).await
    }

    /// [`System::cli_async`] as `user` (see [`System::cli_command`]).
    pub async fn cli_async_as(&self, user: &str, args: &[&str]) -> Output {
        let mut command = self.cli_command(user, args);
        tokio::task::spawn_blocking(move || command.output().expect("run ferry"))
            .await
            .expect("cli task")
    }

    /// Publishes a release of the sample service through the CLI, as CI would.
    pub async fn publish_release(&self, service: &str, version: &str, env_vars: &[&str]) {
        let sample = bin("ferry-sample");
        let sample = sample.to_str().expect("utf-8 path");
        self.publish_artifact(service, version, sample, env_vars)
            .await;
    }

    /// Publishes a release with `artifact` (a path, an image) through the CLI.
    pub async fn publish_artifact(
        &self,
        service: &str,
        version: &str,
        artifact: &str,
        env_vars: &[&str],
    ) {
        let mut args = vec![
            "release",
            "publish",
            "--service",
            service,
            "--version",
            version,
            "--artifact",
            artifact,
            "--author",
            "ci-bot",
        ];
        for var in env_vars {
            args.push("--env");
            args.push(var);
        }
        let out = self.cli_async(&args).await;
        assert_ok(&out, "ferry release publish");
    }

    /// Stops everything in order.
    pub async fn shutdown(mut self) {
        let envs: Vec<String> = self.agents.keys().cloned().collect();
        for env in envs {
            self.stop_agent(&env).await;
        }
        self.stop_controller().await;
    }
}

/// The NATS user of the role that runs `ferry args`: CI publishes releases
/// (`ferry-ci`), people run everything else (`ferry-cli`).
pub fn cli_user(args: &[&str]) -> &'static str {
    if args.starts_with(&["release", "publish"]) {
        "ferry-ci"
    } else {
        "ferry-cli"
    }
}

/// Asserts a CLI run succeeded, showing its output otherwise.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// stdout of a CLI run parsed as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// An HTTP answer from a stable address.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// `x-version` header, if any.
    pub version: Option<String>,
    /// `retry-after` header, if any.
    pub retry_after: Option<String>,
}

/// GET `http://127.0.0.1:{port}{path}`; `None` when nothing answers.
pub async fn get(port: u16, path: &str) -> Option<Answer> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (version, retry_after) = (header("x-version"), header("retry-after"));
    let status = response.status().as_u16();
    let body = response.text().await.ok()?;
    Some(Answer {
        status,
        body,
        version,
        retry_after,
    })
}

/// Polls `port` until it serves `version` (status 200), or panics after `timeout`.
pub async fn wait_serving(port: u16, version: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(answer) = get(port, "/").await {
            if answer.status == 200 && answer.version.as_deref() == Some(version) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} did not serve {version} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Location of the state directory of a test system's agent.
pub fn state_dir(system: &System, env: &str) -> PathBuf {
    system.dir.path().join(format!("agent-{env}"))
}

/// Signs `action` for `env`/`service` with the controller's key, as the
/// controller would, and stores it in the commands stream; returns its id.
pub async fn send_command(
    client: &async_nats::Client,
    key: &SigningKey,
    env: &str,
    service: &str,
    action: ferry_protocol::command::Action,
) -> uuid::Uuid {
    send_command_expiring(client, key, env, service, action, Duration::from_secs(3600)).await
}

/// [`send_command`] of a command that expires `ttl` from now.
pub async fn send_command_expiring(
    client: &async_nats::Client,
    key: &SigningKey,
    env: &str,
    service: &str,
    action: ferry_protocol::command::Action,
    ttl: Duration,
) -> uuid::Uuid {
    let environment = EnvName::new(env).unwrap();
    let service = ServiceName::new(service).unwrap();
    let subject = ferry_protocol::subject::command(&environment, &service);
    let command = ferry_protocol::command::Command {
        environment,
        service,
        actor: Some("test".into()),
        hosts: Vec::new(),
        action,
    };
    let envelope = ferry_protocol::Envelope::new("/ferry/controller", command)
        .expiring_in(ttl)
        .sign(key)
        .unwrap();
    // Under its id, as the controller publishes (a repeat is a duplicate,
    // stored once), and again while the stream has no leader (a cluster
    // electing one answers no responders for a moment).
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        envelope.id.to_string().as_str(),
    );
    let payload: bytes::Bytes = envelope.to_bytes().unwrap().into();
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored = async {
            js.publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await?
                .await
        };
        match stored.await {
            Ok(_) => return envelope.id,
            Err(e)
                if e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("storing command {}: {e}", envelope.id),
        }
    }
}

/// A release of the sample service on the process runtime: the
/// `ferry-sample` binary as its artifact, `env` as its environment.
pub fn sample_release(version: &str, env: &[(&str, &str)]) -> ferry_protocol::command::ReleaseSpec {
    ferry_protocol::command::ReleaseSpec {
        version: ferry_protocol::Version::new(version).unwrap(),
        artifact: bin("ferry-sample").to_str().unwrap().to_owned(),
        digest: None,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// A release of the sample service on the Docker runtime: the image
/// `ferry-sample:VERSION` (`scripts/build-sample-image`), `env` as its
/// environment.
pub fn sample_image_release(
    version: &str,
    env: &[(&str, &str)],
) -> ferry_protocol::command::ReleaseSpec {
    ferry_protocol::command::ReleaseSpec {
        artifact: format!("ferry-sample:{version}"),
        ..sample_release(version, env)
    }
}

/// Polls `probe` every 50 ms until it returns something, failing the test
/// with `what` after [`WAIT`].
pub async fn until<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    until_within(what, WAIT, probe).await
}

/// [`until`] with its own bound, for what takes longer (containers starting).
pub async fn until_within<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ferry status --output json`'s row for `service` in `env`, if any.
pub async fn status_row(system: &System, env: &str, service: &str) -> Option<serde_json::Value> {
    let out = system.cli_async(&["status", "--output", "json"]).await;
    assert_ok(&out, "ferry status");
    json(&out)
        .as_array()?
        .iter()
        .find(|r| r["environment"] == env && r["service"] == service)
        .cloned()
}

/// Polls `ferry status` until `pred` holds for the row, or panics.
pub async fn wait_status(
    system: &System,
    env: &str,
    service: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = status_row(system, env, service).await;
        if let Some(row) = row.as_ref().filter(|r| pred(r)) {
            return row.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed {what}; last row: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
