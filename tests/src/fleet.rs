//! Several hosts of one environment, each a container of its own on the
//! local Docker engine: an environment with more than one agent, as
//! production runs it.
//!
//! A [`Fleet`] has its own network, on which a real nats-server runs in a
//! container (the `ferry-nats` image of `scripts/build-images`, the static
//! nats-server; network alias `nats`), its client port published on
//! 127.0.0.1 for the test process: the controller (in-process through
//! [`System`], or a [`ControllerDaemon`]) and the CLI. Each host is a
//! container of the `ferry-agent` image (`scripts/build-images`: it holds
//! `/ferry-agent` and `/ferry-sample`) on that network, with its own
//! address and host name (`FERRY_HOST`), running the agent on the process
//! runtime: releases of service [`SERVICE`] carry the artifact
//! [`ARTIFACT`], and the agent's stable port for it (8080 inside) is
//! published on 127.0.0.1 at a port the engine picks, read again each time
//! the host starts. Killing a host (`docker kill`) ends its agent and every
//! replica; starting it again restarts the same container, whose state
//! directory survives.
//!
//! Everything carries the label [`LABEL`] and the fleet's own
//! `ferry.test.fleet=<id>`, and is removed on drop, passed or failed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use ferry_protocol::event::{AgentEvent, ServiceEvent};
use ferry_protocol::{streams, subject, EnvName, Envelope, HostName};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::nats_cluster::docker;
use crate::{bin, get, System, WAIT};

/// The agent image every host runs (`scripts/build-images`).
pub const AGENT_IMAGE: &str = "ferry-agent:latest";
/// The nats-server image (`scripts/build-images`).
pub const NATS_IMAGE: &str = "ferry-nats:latest";
/// Every image a fleet needs, for [`crate::docker_ready`].
pub const IMAGES: [&str; 2] = [AGENT_IMAGE, NATS_IMAGE];
/// What builds [`IMAGES`], for the skip (or CI failure) message.
pub const BUILD_HINT: &str = "FERRY_IMAGE_PROFILE=test-image scripts/build-images";
/// The label every container and network of a fleet carries.
pub const LABEL: &str = "ferry.test=fleet";
/// The one service every host runs.
pub const SERVICE: &str = "web";
/// A release's artifact: the sample inside the agent image.
pub const ARTIFACT: &str = "/ferry-sample";
/// The agent's stable port for [`SERVICE`] inside each container.
const SERVICE_PORT: u16 = 8080;
/// Containers starting on a busy machine take longer than [`WAIT`].
pub const START_WAIT: Duration = Duration::from_secs(90);

/// One host: its container and, while it runs, the host port its stable
/// port is published on.
struct Host {
    container: String,
    port: Option<u16>,
}

/// An environment's hosts as containers, with their nats-server.
pub struct Fleet {
    id: String,
    network: String,
    environment: EnvName,
    nats_container: String,
    nats_port: u16,
    client: Option<async_nats::Client>,
    /// The controller key the agents trust.
    trusted_key: String,
    /// TOML appended to each host's `[services.web]` table: strategy,
    /// analysis.
    service_toml: String,
    dir: tempfile::TempDir,
    hosts: BTreeMap<String, Host>,
}

/// A message stored in a stream, with its sequence there (the order in
/// which the server stored it, across subjects).
#[derive(Clone, Debug)]
pub struct Stored<T> {
    /// Its stream sequence.
    pub sequence: u64,
    /// The message.
    pub envelope: Envelope<T>,
}

impl Fleet {
    /// Starts the fleet's network and nats-server for `environment`, and
    /// returns it with a [`System`] on that server, not started: its
    /// controller configured for a pipeline of `environment` alone (so a
    /// release deploys there by itself, without approvals), with a 3 s
    /// `agent_timeout` and a 1 s `promotion_check_interval` (the sweep).
    /// Every host added later trusts the system's controller key and runs
    /// [`SERVICE`] with `service_toml` added to its table (keys of
    /// `[services.web]`, then its sub-tables such as
    /// `[services.web.strategy]`).
    pub async fn launch(environment: &str, service_toml: &str) -> (Fleet, System) {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let network = format!("ferry-fleet-{id}");
        let fleet_label = format!("ferry.test.fleet={id}");
        docker(&[
            "network",
            "create",
            "--label",
            LABEL,
            "--label",
            &fleet_label,
            &network,
        ]);
        let mut fleet = Fleet {
            nats_container: format!("{network}-nats"),
            id,
            network,
            environment: EnvName::new(environment).expect("environment name"),
            nats_port: 0,
            client: None,
            trusted_key: String::new(),
            service_toml: service_toml.to_owned(),
            dir: tempfile::tempdir().expect("fleet config dir"),
            hosts: BTreeMap::new(),
        };
        docker(&[
            "run",
            "--detach",
            "--name",
            &fleet.nats_container,
            "--hostname",
            "nats",
            "--network",
            &fleet.network,
            "--network-alias",
            "nats",
            "--label",
            LABEL,
            "--label",
            &fleet_label,
            "-p",
            "127.0.0.1::4222",
            "-p",
            "127.0.0.1::8222",
            NATS_IMAGE,
            "--jetstream",
            "--store_dir",
            "/data",
            "--server_name",
            "nats",
            "--port",
            "4222",
            "--http_port",
            "8222",
        ]);
        fleet.nats_port = published_port(&fleet.nats_container, 4222);
        let monitor = published_port(&fleet.nats_container, 8222);
        fleet.wait_nats_ready(monitor).await;
        fleet.client = Some(
            async_nats::connect(fleet.nats_url())
                .await
                .expect("connect to the fleet's nats-server"),
        );

        let mut system = System::on_servers(fleet.nats_url(), 1);
        system.controller_config.environments = vec![environment.to_owned()];
        system.controller_config.agent_timeout = "3s".into();
        system.controller_config.promotion_check_interval = "1s".into();
        fleet.trusted_key = system.controller_key.public_key();
        (fleet, system)
    }

    /// Waits until the nats-server answers `/healthz` on host port `monitor`.
    async fn wait_nats_ready(&self, monitor: u16) {
        crate::nats_cluster::wait_healthz(monitor, START_WAIT, || {
            format!(
                "the fleet's nats-server was not healthy within {START_WAIT:?}\n{}",
                container_logs(&self.nats_container)
            )
        })
        .await;
    }

    /// The client URL of the fleet's nats-server, on 127.0.0.1.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    /// A client of the fleet's nats-server.
    pub fn client(&self) -> &async_nats::Client {
        self.client.as_ref().expect("connected at start")
    }

    /// The environment its hosts serve.
    pub fn environment(&self) -> &EnvName {
        &self.environment
    }

    /// This fleet's id, as in its `ferry.test.fleet` label.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Every host's agent configuration (its host name comes from
    /// `FERRY_HOST`): heartbeats every 500 ms, the sample on the process
    /// runtime, 2 replicas health-checked every 100 ms.
    fn agent_toml(&self) -> String {
        format!(
            "environment = \"{env}\"\n\
             nats_url = \"nats://nats:4222\"\n\
             state_dir = \"/var/lib/ferry\"\n\
             trusted_keys = [\"{key}\"]\n\
             heartbeat_interval = \"500ms\"\n\
             metrics_interval = \"1s\"\n\
             shutdown_grace = \"5s\"\n\
             \n\
             [services.{SERVICE}]\n\
             runtime = \"process\"\n\
             command = [\"{{artifact}}\"]\n\
             # Every interface inside the container, for the published port;\n\
             # the replicas stay on loopback.\n\
             listen = \"0.0.0.0:{SERVICE_PORT}\"\n\
             replicas = 2\n\
             {extra}\n\
             \n\
             [services.{SERVICE}.health]\n\
             path = \"/health\"\n\
             interval = \"100ms\"\n\
             timeout = \"1s\"\n\
             failure_threshold = 2\n\
             start_timeout = \"15s\"\n",
            env = self.environment,
            key = self.trusted_key,
            extra = self.service_toml,
        )
    }

    /// Adds host `name` (a DNS label): creates its container on the
    /// fleet's network, starts it and waits until its agent's first
    /// heartbeat (sent once it takes commands).
    pub async fn add_host(&mut self, name: &str) {
        HostName::new(name).expect("host name");
        assert!(!self.hosts.contains_key(name), "host {name} exists already");
        let container = format!("{}-{name}", self.network);
        let fleet_label = format!("ferry.test.fleet={}", self.id);
        let host_variable = format!("FERRY_HOST={name}");
        let publish = format!("127.0.0.1::{SERVICE_PORT}");
        docker(&[
            "create",
            "--name",
            &container,
            "--hostname",
            name,
            "--network",
            &self.network,
            "--label",
            LABEL,
            "--label",
            &fleet_label,
            "-p",
            &publish,
            "-e",
            &host_variable,
            "-e",
            "RUST_LOG=info",
            AGENT_IMAGE,
            "--config",
            "/agent.toml",
        ]);
        // Registered before anything else can fail, so drop removes it.
        self.hosts.insert(
            name.to_owned(),
            Host {
                container: container.clone(),
                port: None,
            },
        );
        let local = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&local, self.agent_toml()).expect("agent config");
        docker(&[
            "cp",
            local.to_str().expect("utf-8 path"),
            &format!("{container}:/agent.toml"),
        ]);
        self.start(name).await;
    }

    /// Starts host `name`'s container (again, after [`Fleet::kill`]: the
    /// same container, its state directory as it was) and waits until its
    /// agent's first heartbeat.
    pub async fn start(&mut self, name: &str) {
        let container = self.host(name).container.clone();
        let mut heartbeats = self
            .client()
            .subscribe(subject::agent_event(
                &self.environment,
                subject::AgentEventKind::Heartbeat,
            ))
            .await
            .expect("subscribe to heartbeats");
        self.client().flush().await.expect("flush");
        docker(&["start", &container]);
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, heartbeats.next()).await;
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => panic!("heartbeat subscription closed"),
                Err(_) => panic!(
                    "host {name} sent no heartbeat within {START_WAIT:?}\n{}",
                    container_logs(&container)
                ),
            };
            let from_it = Envelope::<AgentEvent>::decode(&message.payload).is_ok_and(|e| {
                matches!(&e.data, AgentEvent::Heartbeat(hb)
                    if hb.host_name.as_ref().is_some_and(|h| h.as_str() == name))
            });
            if from_it {
                break;
            }
        }
        let port = published_port(&container, SERVICE_PORT);
        self.hosts.get_mut(name).expect("known host").port = Some(port);
    }

    /// Kills host `name` (SIGKILL to its container: its agent and every
    /// replica end at once, nothing is drained or reported).
    pub fn kill(&mut self, name: &str) {
        let container = self.host(name).container.clone();
        docker(&["kill", &container]);
        self.hosts.get_mut(name).expect("known host").port = None;
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not a host of this fleet"))
    }

    /// Every host's name, in name order.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.keys().cloned().collect()
    }

    /// The hosts running now (not killed), in name order.
    pub fn running(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.port.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The host port (127.0.0.1) of host `name`'s stable port for
    /// [`SERVICE`]; panics while it is killed.
    pub fn port(&self, name: &str) -> u16 {
        self.host(name)
            .port
            .unwrap_or_else(|| panic!("host {name} is not running"))
    }

    /// `http://127.0.0.1:<port>` of host `name`'s stable port.
    pub fn host_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(name))
    }

    /// The version host `name` serves (`GET /` answered 200, its
    /// `x-version`); `None` when it answers otherwise or not at all.
    pub async fn version(&self, name: &str) -> Option<String> {
        let answer = get(self.port(name), "/").await?;
        (answer.status == 200).then_some(answer.version).flatten()
    }

    /// What each running host serves ([`Fleet::version`]), by host.
    pub async fn versions(&self) -> BTreeMap<String, Option<String>> {
        let mut versions = BTreeMap::new();
        for name in self.running() {
            let version = self.version(&name).await;
            versions.insert(name, version);
        }
        versions
    }

    /// Polls until host `name` serves `version`, or panics after `timeout`.
    pub async fn wait_serving(&self, name: &str, version: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let serving = self.version(name).await;
            if serving.as_deref() == Some(version) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "host {name} did not serve {version} within {timeout:?} (it serves {serving:?})\n{}",
                self.logs(name)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until every running host serves `version`, or panics.
    pub async fn wait_all_serving(&self, version: &str, timeout: Duration) {
        for name in self.running() {
            self.wait_serving(&name, version, timeout).await;
        }
    }

    /// Whether host `name`'s durable consumer of commands has nothing left
    /// to deliver and nothing delivered unacknowledged: every command for
    /// the environment is done there (an agent acks a command only after
    /// its outcome is stored).
    pub async fn drained(&self, name: &str) -> bool {
        let host = HostName::new(name).expect("host name");
        let consumer_name = streams::agent_consumer(&self.environment, &host);
        let js = jetstream::new(self.client().clone());
        let Ok(stream) = js.get_stream(streams::commands().name).await else {
            return false;
        };
        let Ok(mut consumer) = stream
            .get_consumer::<consumer::pull::Config>(&consumer_name)
            .await
        else {
            return false;
        };
        consumer
            .info()
            .await
            .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
    }

    /// Polls until every running host serves `version` with its commands
    /// drained ([`Fleet::drained`]): the environment is at rest on one
    /// version. Panics after `timeout` with what each host serves.
    pub async fn wait_converged(&self, version: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let versions = self.versions().await;
            let mut at_rest = versions.values().all(|v| v.as_deref() == Some(version));
            if at_rest {
                for name in versions.keys() {
                    at_rest &= self.drained(name).await;
                }
            }
            if at_rest {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hosts did not come to rest on {version} within {timeout:?}: {versions:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The service events of [`SERVICE`] stored in `FERRY_EVENTS` whose
    /// kind is one of `kinds` (`accepted`, `refused`, `outcome`, ...), in
    /// the order they were stored.
    pub async fn stored_events(&self, kinds: &[&str]) -> Vec<Stored<ServiceEvent>> {
        let filters = kinds
            .iter()
            .map(|kind| format!("ferry.v1.evt.{}.{SERVICE}.{kind}", self.environment))
            .collect();
        stored(self.client(), streams::events().name, filters).await
    }

    /// The commands for [`SERVICE`] in the environment stored in
    /// `FERRY_COMMANDS`, in order.
    pub async fn stored_commands(&self) -> Vec<Stored<ferry_protocol::command::Command>> {
        let environment = &self.environment;
        let service = ferry_protocol::ServiceName::new(SERVICE).expect("service name");
        let filter = subject::command(environment, &service);
        stored(self.client(), streams::commands().name, vec![filter]).await
    }

    /// The last lines host `name` logged, for failure messages.
    pub fn logs(&self, name: &str) -> String {
        format!(
            "--- {name} ---\n{}",
            container_logs(&self.host(name).container)
        )
    }

    /// Every host's last lines, for failure messages.
    pub fn all_logs(&self) -> String {
        self.hosts
            .keys()
            .map(|name| self.logs(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Fleet {
    /// Removes every container and the network of this fleet, found by
    /// label, so that a failed test leaves nothing behind either.
    fn drop(&mut self) {
        // Closed first, so it does not retry a server that is going away.
        drop(self.client.take());
        crate::docker::remove_containers(&[format!("label=ferry.test.fleet={}", self.id)]);
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// The host port (on 127.0.0.1) the engine published `container`'s
/// `port`/tcp on, as `docker port` says.
fn published_port(container: &str, port: u16) -> u16 {
    let listed = docker(&["port", container, &format!("{port}/tcp")]);
    listed
        .lines()
        .find_map(|line| line.trim().strip_prefix("127.0.0.1:")?.parse().ok())
        .unwrap_or_else(|| panic!("{container} publishes {port} nowhere on 127.0.0.1: {listed:?}"))
}

/// The last lines `container` wrote (stdout and stderr).
fn container_logs(container: &str) -> String {
    Command::new("docker")
        .args(["logs", "--tail", "40", container])
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default()
}

/// Every message stored in `stream` under any of `filters`, decoded as
/// envelopes of `T` (those that are not are skipped), read by an
/// ephemeral consumer up to the count it had pending when created.
pub async fn stored<T: DeserializeOwned>(
    client: &async_nats::Client,
    stream: &str,
    filters: Vec<String>,
) -> Vec<Stored<T>> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    let mut reader = stream
        .create_consumer(consumer::pull::Config {
            filter_subjects: filters,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let total = reader.info().await.expect("consumer info").num_pending as usize;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut read = 0;
    let mut found = Vec::new();
    while read < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {read} of {total} stored messages within {WAIT:?}"
        );
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = batch.next().await {
            let message = message.expect("stored message");
            read += 1;
            let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            if let Ok(envelope) = Envelope::<T>::decode(&message.payload) {
                found.push(Stored { sequence, envelope });
            }
        }
    }
    found
}

/// The `[pipeline.<env>]` tables of a controller configuration file for
/// `pipeline`.
fn pipeline_toml(pipeline: &BTreeMap<String, ferry_controller::config::StageSettings>) -> String {
    let mut text = String::new();
    for (env, stage) in pipeline {
        text += &format!(
            "\n[pipeline.{env}]\napprovals_required = {}\n",
            stage.approvals_required
        );
        if let Some(auto) = stage.auto_deploy {
            text += &format!("auto_deploy = {auto}\n");
        }
        if let Some(soak) = &stage.soak {
            text += &format!("soak = \"{soak}\"\n");
        }
        if let Some(strategy) = &stage.strategy {
            text += &format!("strategy = \"{strategy}\"\n");
        }
        if let Some(parallel) = stage.max_parallel_hosts {
            text += &format!("max_parallel_hosts = {parallel}\n");
        }
        for reviewer in &stage.reviewers {
            text += &format!(
                "[[pipeline.{env}.reviewers]]\nname = \"{}\"\nkey = \"{}\"\n",
                reviewer.name, reviewer.key
            );
        }
    }
    text
}

/// The real `ferry-controller` binary as its own process on a fleet's
/// NATS, configured as the [`System`]'s in-process controller would be
/// (its environments, pipeline, agent timeout, sweep interval and command
/// TTL), with
/// the system's signing key: a controller that can be SIGKILLed mid-work
/// and started again. Killed on drop.
pub struct ControllerDaemon {
    child: Option<std::process::Child>,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl ControllerDaemon {
    /// Writes the configuration, starts the controller and waits until its
    /// API answers.
    pub async fn start(system: &System) -> ControllerDaemon {
        let key_file = system.dir.path().join("controller-daemon.nk");
        std::fs::write(&key_file, system.controller_key.seed().expect("seed")).expect("key file");
        let settings = &system.controller_config;
        let environments: Vec<String> = settings
            .environments
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let config = system.dir.path().join("controller-daemon.toml");
        std::fs::write(
            &config,
            format!(
                "nats_url = \"{}\"\n{}signing_key_file = \"{}\"\nenvironments = [{}]\n\
                 agent_timeout = \"{}\"\npromotion_check_interval = \"{}\"\ncommand_ttl = \"{}\"\n\
                 stream_replicas = {}\n{}",
                system.nats.url(),
                system.credentials_toml("ferry-controller"),
                key_file.display(),
                environments.join(", "),
                settings.agent_timeout,
                settings.promotion_check_interval,
                settings.command_ttl,
                settings.stream_replicas,
                pipeline_toml(&settings.pipeline),
            ),
        )
        .expect("controller config");
        let mut daemon = ControllerDaemon {
            child: None,
            config,
            log: system.dir.path().join("controller-daemon.log"),
        };
        daemon.spawn();
        daemon.wait_answering(system).await;
        daemon
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("controller log");
        let child = Command::new(bin("ferry-controller"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ferry-controller");
        self.child = Some(child);
    }

    async fn wait_answering(&mut self, system: &System) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if system
                .cli_async(&["status", "--output", "json"])
                .await
                .status
                .success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ferry-controller exited ({status}) before its API answered\n{}",
                    self.logs()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ferry-controller's API did not answer within {WAIT:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the controller ends at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the controller again on the same configuration and waits
    /// until its API answers.
    pub async fn restart(&mut self, system: &System) {
        self.kill();
        self.spawn();
        self.wait_answering(system).await;
    }

    /// The controller's log (both runs), for failure messages.
    pub fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for ControllerDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}
