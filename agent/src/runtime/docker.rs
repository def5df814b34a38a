//! The Docker runtime: each replica is a container on the local engine, talked
//! to through bollard (the only module of ferry that knows bollard).
//!
//! A release's artifact is an image reference that must already be on the
//! engine (no registry is configured: images are built or loaded locally).
//! A container is named `ferry-<env>-<replica id>`, carries the `io.ferry.*`
//! labels, listens on the service's `container_port` (`$PORT`), and has that
//! port published on 127.0.0.1 at a port the engine picks; the replica's
//! address is read back from the engine. A supervisor task per container
//! waits for it to end or stops it on request, then removes it: a replacement
//! is always a new container.
//!
//! The agent touches only containers labelled `io.ferry.managed=true` for its
//! own environment: the ones it created, and at start-up those an earlier
//! agent left. Containers outlive the agent: a stopping agent lets go of them
//! (a dropped handle does not stop its container), and the next agent adopts
//! the running ones of the current version and removes the rest.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCpuStats, ContainerCreateBody, ContainerInspectResponse, ContainerStatsResponse,
    ContainerSummaryStateEnum, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StatsOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::ReplicaUsage;
use ferry_protocol::{EnvName, ServiceName};
use futures::future::join_all;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::{
    ferry_env, ExitInfo, Progress, ReplicaContext, ReplicaHandle, ReplicaRuntime, RuntimeError,
};
use crate::config::RuntimeKind;

/// Set to `true` on every container ferry creates.
pub const LABEL_MANAGED: &str = "io.ferry.managed";
/// The agent's environment.
pub const LABEL_ENVIRONMENT: &str = "io.ferry.environment";
/// The service.
pub const LABEL_SERVICE: &str = "io.ferry.service";
/// The release's version.
pub const LABEL_VERSION: &str = "io.ferry.version";
/// The replica id.
pub const LABEL_REPLICA: &str = "io.ferry.replica";

/// Time the engine has to answer the version handshake at connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before asking again when waiting on a container fails.
const WAIT_RETRY: Duration = Duration::from_secs(1);
/// Time one replica's stats sample may take (the engine samples for ~1s).
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of a container's output kept in the service log when it ends.
const LOG_TAIL: &str = "1000";

/// Runs replicas as containers on a Docker engine.
#[derive(Debug)]
pub struct DockerRuntime {
    /// The engine's client, or why the engine could not be reached: the agent
    /// keeps running without it and [`DockerRuntime::reconnect`] retries.
    engine: RwLock<Result<Docker, String>>,
}

fn unavailable(detail: String) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: "docker",
        detail,
    }
}

/// Connects with bollard's defaults and agrees on an API version with the
/// engine, which also proves it answers.
async fn handshake() -> Result<Docker, String> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    let docker = Docker::connect_with_defaults().map_err(|e| format!("{host}: {e}"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
        .await
        .map_err(|_| {
            format!("{host}: no answer within {CONNECT_TIMEOUT:?}; is the engine running?")
        })?
        .map_err(|e| format!("{host}: {e}; is the engine running?"))
}

/// A 404 from the engine: no such image or container.
fn not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerRuntime {
    /// Connects to the local engine with bollard's defaults (`DOCKER_HOST`,
    /// else the Unix socket). An engine that does not answer is not fatal:
    /// the runtime starts unreachable, every use fails with the reason, and
    /// [`DockerRuntime::reconnect`] tries again.
    pub async fn connect() -> Self {
        DockerRuntime {
            engine: RwLock::new(handshake().await),
        }
    }

    /// Why the engine cannot be reached, if it cannot.
    pub fn unreachable(&self) -> Option<String> {
        match self.engine.read() {
            Ok(engine) => engine.as_ref().err().cloned(),
            Err(_) => Some("the engine client's lock is poisoned".to_owned()),
        }
    }

    /// Tries the engine again; on success every later use goes to it.
    pub async fn reconnect(&self) -> Result<(), String> {
        let docker = handshake().await?;
        if let Ok(mut engine) = self.engine.write() {
            *engine = Ok(docker);
        }
        Ok(())
    }

    /// The engine's client, or why it cannot be reached.
    /// Pulls `image` through the engine, with the service's registry
    /// credentials, reporting the engine's progress at most once a second.
    async fn pull(
        &self,
        docker: &Docker,
        image: &str,
        ctx: &ReplicaContext,
        release: &ReleaseSpec,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let failed = |detail: String| RuntimeError::Artifact {
            artifact: image.to_owned(),
            detail: format!("pulling {image} failed: {detail}"),
        };
        let credentials = ctx
            .service
            .docker
            .registry
            .as_ref()
            .map(|auth| DockerCredentials {
                username: Some(auth.username.clone()),
                password: Some(auth.password.clone()),
                serveraddress: auth.server.clone(),
                ..Default::default()
            });
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut stream = docker.create_image(Some(options), None, credentials);
        progress.step(&format!("pulling {image}"), Some(&release.version), 0, 0);
        let mut reported = std::time::Instant::now();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| failed(e.to_string()))?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                return Err(failed(message));
            }
            if reported.elapsed() >= Duration::from_secs(1) {
                if let Some(status) = info.status {
                    progress.step(
                        &format!("pulling {image}: {status}"),
                        Some(&release.version),
                        0,
                        0,
                    );
                    reported = std::time::Instant::now();
                }
            }
        }
        Ok(())
    }

    fn docker(&self) -> Result<Docker, RuntimeError> {
        let reason = match self.engine.read() {
            Ok(engine) => match &*engine {
                Ok(docker) => return Ok(docker.clone()),
                Err(reason) => reason.clone(),
            },
            Err(_) => "the engine client's lock is poisoned".to_owned(),
        };
        Err(RuntimeError::EngineUnreachable {
            engine: "Docker",
            detail: reason,
        })
    }

    /// Every container (running or not) with ferry's labels for exactly this
    /// environment and service, as (id, labels, running).
    async fn leftovers(
        &self,
        environment: &EnvName,
        service: &ServiceName,
    ) -> Result<Vec<(String, HashMap<String, String>, bool)>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_ENVIRONMENT}={environment}"),
                format!("{LABEL_SERVICE}={service}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker()?
            .list_containers(Some(options))
            .await
            .map_err(|e| unavailable(format!("listing containers: {e}")))?;
        Ok(found
            .into_iter()
            .filter_map(|container| {
                let id = container.id?;
                let labels = container.labels.unwrap_or_default();
                let running = container.state == Some(ContainerSummaryStateEnum::RUNNING);
                // The filter is the engine's; check the labels again before touching anything.
                ours(&labels, environment, service).then_some((id, labels, running))
            })
            .collect())
    }

    /// Rebuilds the handle of a running container left by an earlier agent:
    /// its address from the published port, and a new supervisor.
    async fn adopt_one(
        &self,
        ctx: &ReplicaContext,
        id: &str,
        replica_id: &str,
    ) -> Result<ReplicaHandle, String> {
        let docker = self.docker().map_err(|e| e.to_string())?;
        let inspected = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| format!("inspecting container {id}: {e}"))?;
        let address = published_address(&inspected, ctx.service.docker.container_port)
            .ok_or_else(|| format!("container {id} has no published port"))?;
        // The supervisor works by name, as for the containers it starts.
        let name = inspected
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| id.to_owned());
        Ok(supervised(docker, ctx, name, replica_id, address))
    }
}

/// Spawns the supervisor of container `name` and returns its handle.
fn supervised(
    docker: Docker,
    ctx: &ReplicaContext,
    name: String,
    replica_id: &str,
    address: SocketAddr,
) -> ReplicaHandle {
    let (exit_tx, exit_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = mpsc::channel(1);
    let log = ctx
        .log_dir
        .join(format!("{}.log", ctx.service.name.as_str()));
    tokio::spawn(supervise(docker, name, log, stop_rx, exit_tx));
    ReplicaHandle::new(replica_id.to_owned(), address, exit_rx, stop_tx)
}

/// Whether `labels` are ferry's for exactly this environment and service.
fn ours(labels: &HashMap<String, String>, environment: &EnvName, service: &ServiceName) -> bool {
    labels.get(LABEL_MANAGED).map(String::as_str) == Some("true")
        && labels.get(LABEL_ENVIRONMENT).map(String::as_str) == Some(environment.as_str())
        && labels.get(LABEL_SERVICE).map(String::as_str) == Some(service.as_str())
}

/// The loopback address the engine published the container port on.
fn published_address(
    inspected: &ContainerInspectResponse,
    container_port: u16,
) -> Option<SocketAddr> {
    let key = port_key(container_port);
    let port = inspected
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .and_then(|ports| ports.get(&key))
        .and_then(Option::as_ref)
        .into_iter()
        .flatten()
        .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()))?;
    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

#[async_trait]
impl ReplicaRuntime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    async fn prepare(
        &self,
        ctx: &ReplicaContext,
        release: &ReleaseSpec,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let image = &release.artifact;
        let bad = |detail: String| RuntimeError::Artifact {
            artifact: image.clone(),
            detail,
        };
        check_image_reference(image).map_err(bad)?;
        let docker = self.docker()?;
        let found = match docker.inspect_image(image).await {
            Ok(found) => found,
            Err(e) if not_found(&e) && ctx.service.docker.pull => {
                self.pull(&docker, image, ctx, release, progress).await?;
                docker.inspect_image(image).await.map_err(|e| {
                    bad(format!("image {image} is still missing after the pull: {e}"))
                })?
            }
            Err(e) if not_found(&e) => {
                return Err(bad(format!(
                    "image {image} is not present on the engine and pulling is off (pull = true in the service's configuration turns it on)"
                )))
            }
            Err(e) => return Err(unavailable(format!("inspecting image {image}: {e}"))),
        };
        if let Some(digest) = &release.digest {
            let matches = found.id.as_deref() == Some(digest.as_str())
                || found
                    .repo_digests
                    .iter()
                    .flatten()
                    .any(|d| d.rsplit_once('@').is_some_and(|(_, d)| d == digest));
            if !matches {
                return Err(bad(format!(
                    "image {image} is {}, not the release's {digest}",
                    found.id.as_deref().unwrap_or("of unknown id")
                )));
            }
        }
        Ok(())
    }

    async fn start(
        &self,
        ctx: &ReplicaContext,
        release: &ReleaseSpec,
        replica_id: &str,
    ) -> Result<ReplicaHandle, RuntimeError> {
        let fail = |detail: String| RuntimeError::Start {
            replica: replica_id.to_owned(),
            detail,
        };
        let name = container_name(&ctx.environment, replica_id);
        let body = container_body(ctx, release, replica_id);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let docker = self.docker()?;
        // A failed create leaves nothing of ours behind; a name clash is
        // someone else's container, which is not touched.
        docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| fail(format!("creating container {name}: {e}")))?;
        let address = match started_address(&docker, ctx, &name).await {
            Ok(address) => address,
            Err(detail) => {
                if let Err(e) = remove(&docker, &name).await {
                    tracing::warn!(container = %name, error = %e, "could not remove a container that failed to start");
                }
                return Err(fail(detail));
            }
        };

        Ok(supervised(docker, ctx, name, replica_id, address))
    }

    fn available(&self) -> Result<(), RuntimeError> {
        self.docker().map(|_| ())
    }

    fn replicas_outlive_agent(&self) -> bool {
        true
    }

    async fn adopt(
        &self,
        ctx: &ReplicaContext,
        release: Option<&ReleaseSpec>,
    ) -> Result<Vec<ReplicaHandle>, RuntimeError> {
        let service = &ctx.service.name;
        let version = release.map(|r| r.version.to_string());
        let docker = self.docker()?;
        let mut adopted = Vec::new();
        for (id, labels, running) in self.leftovers(&ctx.environment, service).await? {
            let replica = labels.get(LABEL_REPLICA).cloned().unwrap_or_default();
            let current = version.is_some() && labels.get(LABEL_VERSION) == version.as_ref();
            if running && current && !replica.is_empty() {
                match self.adopt_one(ctx, &id, &replica).await {
                    Ok(handle) => {
                        tracing::info!(container = %id, %replica, %service, "adopted a running container");
                        adopted.push(handle);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(container = %id, error = %e, "could not adopt a container; removing it")
                    }
                }
            }
            match remove(&docker, &id).await {
                Ok(()) => {
                    tracing::warn!(container = %id, %service, "removed a container left by an earlier agent")
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "could not remove a leftover container")
                }
            }
        }
        Ok(adopted)
    }

    async fn usage(&self, ctx: &ReplicaContext, replica_ids: &[String]) -> Vec<ReplicaUsage> {
        let Ok(docker) = self.docker() else {
            return Vec::new();
        };
        let docker = &docker;
        let measured = join_all(replica_ids.iter().map(|replica| async move {
            let name = container_name(&ctx.environment, replica);
            match tokio::time::timeout(STATS_TIMEOUT, stats(docker, &name)).await {
                Ok(Ok(stats)) => Some(usage_of(replica, &stats)),
                Ok(Err(e)) => {
                    tracing::debug!(container = %name, error = %e, "no stats");
                    None
                }
                Err(_) => {
                    tracing::debug!(container = %name, "no stats within {STATS_TIMEOUT:?}");
                    None
                }
            }
        }))
        .await;
        measured.into_iter().flatten().collect()
    }
}

/// One stats sample. Not one-shot: the engine then samples twice, about
/// a second apart, which is what a CPU percentage needs.
async fn stats(docker: &Docker, name: &str) -> Result<ContainerStatsResponse, String> {
    let options = StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(false)
        .build();
    match docker.stats(name, Some(options)).next().await {
        Some(Ok(stats)) => Ok(stats),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the engine sent no stats".to_owned()),
    }
}

/// Starts the created container `name` and reads back the host port the
/// engine published its container port on.
async fn started_address(
    docker: &Docker,
    ctx: &ReplicaContext,
    name: &str,
) -> Result<SocketAddr, String> {
    docker
        .start_container(name, None::<StartContainerOptions>)
        .await
        .map_err(|e| format!("starting container {name}: {e}"))?;
    let inspected = docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .map_err(|e| format!("inspecting container {name}: {e}"))?;
    let port = ctx.service.docker.container_port;
    published_address(&inspected, port).ok_or_else(|| {
        format!(
            "container {name} has no host port published for {}",
            port_key(port)
        )
    })
}

/// CPU percent (of one CPU, as `docker stats` shows it) and memory in use
/// (without the reclaimable page cache, as `docker stats` does).
fn usage_of(replica: &str, stats: &ContainerStatsResponse) -> ReplicaUsage {
    let total = |s: Option<&ContainerCpuStats>| {
        s.and_then(|s| s.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let system = |s: Option<&ContainerCpuStats>| s.and_then(|s| s.system_cpu_usage).unwrap_or(0);
    let (now, before) = (stats.cpu_stats.as_ref(), stats.precpu_stats.as_ref());
    let cpu_delta = total(now).saturating_sub(total(before));
    let system_delta = system(now).saturating_sub(system(before));
    let cpus = now.and_then(|s| s.online_cpus).unwrap_or(1).max(1);
    let cpu_percent = if system_delta == 0 {
        0.0
    } else {
        cpu_delta as f64 / system_delta as f64 * f64::from(cpus) * 100.0
    };
    let memory = stats.memory_stats.as_ref();
    let used = memory.and_then(|m| m.usage).unwrap_or(0);
    // cgroup v2 names it inactive_file, v1 total_inactive_file.
    let cache = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|s| {
            s.get("inactive_file")
                .or_else(|| s.get("total_inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    ReplicaUsage {
        replica: replica.to_owned(),
        cpu_percent,
        memory_bytes: used.saturating_sub(cache),
        restarts: 0,
    }
}

/// `ferry-<env>-<replica id>`, with anything Docker does not take in a name
/// (a `+` in a version) replaced by `-`.
fn container_name(environment: &EnvName, replica_id: &str) -> String {
    format!("ferry-{environment}-{replica_id}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn port_key(port: u16) -> String {
    format!("{port}/tcp")
}

/// Image references become part of Engine API paths, so only the characters
/// of `[registry/]name[:tag][@digest]` pass, and no `..`.
fn check_image_reference(image: &str) -> Result<(), String> {
    let ok = !image.is_empty()
        && image.len() <= 512
        && image.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':' | b'@')
        })
        && image
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && !image.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{image:?} is not an image reference like ferry-sample:1.0.0"
        ))
    }
}

/// The container's labels: the configured ones, then ferry's (which win).
fn labels(
    ctx: &ReplicaContext,
    release: &ReleaseSpec,
    replica_id: &str,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = ctx
        .service
        .docker
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_ENVIRONMENT.to_owned(), ctx.environment.to_string()),
        (LABEL_SERVICE.to_owned(), ctx.service.name.to_string()),
        (LABEL_VERSION.to_owned(), release.version.to_string()),
        (LABEL_REPLICA.to_owned(), replica_id.to_owned()),
    ]);
    labels
}

/// The container's environment: configuration, then the release, then
/// ferry's own variables last, as the process runtime does.
fn environment(ctx: &ReplicaContext, release: &ReleaseSpec, replica_id: &str) -> Vec<String> {
    let mut env: BTreeMap<String, String> = ctx.service.env.clone();
    env.extend(release.env.clone());
    let port = ctx.service.docker.container_port;
    env.extend(
        ferry_env(ctx, release, replica_id, port)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn container_body(
    ctx: &ReplicaContext,
    release: &ReleaseSpec,
    replica_id: &str,
) -> ContainerCreateBody {
    let docker = &ctx.service.docker;
    let key = port_key(docker.container_port);
    let bindings = HashMap::from([(
        key.clone(),
        Some(vec![PortBinding {
            host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
            // Empty: the engine picks a free port, read back after start.
            host_port: Some(String::new()),
        }]),
    )]);
    ContainerCreateBody {
        image: Some(release.artifact.clone()),
        env: Some(environment(ctx, release, replica_id)),
        labels: Some(labels(ctx, release, replica_id)),
        exposed_ports: Some(vec![key]),
        host_config: Some(HostConfig {
            port_bindings: Some(bindings),
            memory: docker.memory,
            nano_cpus: docker.nano_cpus,
            network_mode: docker.network.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Removes a container, running or not; one already gone is fine.
async fn remove(docker: &Docker, name: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(name, Some(options)).await {
        Err(e) if !not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Returns once the container has ended (or is gone).
async fn wait_until_ended(docker: &Docker, name: &str) {
    loop {
        let mut wait = docker.wait_container(name, None::<WaitContainerOptions>);
        match wait.next().await {
            // A non-zero exit arrives as an error carrying the code.
            Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. })) => return,
            Some(Err(e)) if not_found(&e) => return,
            other => {
                let error = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "the engine closed the wait".to_owned(),
                };
                tracing::warn!(container = %name, %error, "waiting on a container failed; asking again");
                tokio::time::sleep(WAIT_RETRY).await;
            }
        }
    }
}

/// Grace period in whole seconds, rounded up, as the engine takes it.
fn grace_seconds(grace: Duration) -> i32 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

async fn supervise(
    docker: Docker,
    name: String,
    log: PathBuf,
    mut stop: mpsc::Receiver<Duration>,
    exit: watch::Sender<Option<ExitInfo>>,
) {
    let requested = tokio::select! {
        () = wait_until_ended(&docker, &name) => false,
        grace = stop.recv() => {
            // A dropped handle (None) lets go of the container: it keeps
            // running for the next agent to adopt.
            let Some(grace) = grace else { return };
            let options = StopContainerOptionsBuilder::default().t(grace_seconds(grace)).build();
            // The engine sends SIGTERM, then SIGKILL after `t` seconds.
            let stopped = tokio::time::timeout(
                grace + Duration::from_secs(10),
                docker.stop_container(&name, Some(options)),
            )
            .await;
            if !matches!(stopped, Ok(Ok(()))) {
                tracing::warn!(container = %name, "stop did not complete; killing");
                let kill = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                let _ = docker.kill_container(&name, Some(kill)).await;
            }
            wait_until_ended(&docker, &name).await;
            true
        }
    };
    let info = match docker
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await
    {
        Ok(inspected) => describe(&inspected, requested),
        Err(e) => ExitInfo {
            code: None,
            detail: format!("container disappeared: {e}"),
            requested,
        },
    };
    keep_output(&docker, &name, &log).await;
    if let Err(e) = remove(&docker, &name).await {
        tracing::warn!(container = %name, error = %e, "could not remove an ended container");
    }
    let _ = exit.send(Some(info));
}

/// Appends the last lines of the container's output to the service's log
/// file before the container (and the engine's copy) is removed.
async fn keep_output(docker: &Docker, name: &str, log: &Path) {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(LOG_TAIL)
        .build();
    let mut output = docker.logs(name, Some(options));
    let mut text = Vec::new();
    while let Some(Ok(chunk)) = output.next().await {
        text.extend_from_slice(&chunk.into_bytes());
    }
    if text.is_empty() {
        return;
    }
    let written = async {
        if let Some(dir) = log.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await?;
        file.write_all(&text).await?;
        file.flush().await
    }
    .await;
    if let Err(e) = written {
        tracing::warn!(container = %name, log = %log.display(), error = %e, "could not keep container output");
    }
}

fn describe(inspected: &ContainerInspectResponse, requested: bool) -> ExitInfo {
    let state = inspected.state.as_ref();
    let code = state
        .and_then(|s| s.exit_code)
        .and_then(|c| i32::try_from(c).ok());
    let oom = state.and_then(|s| s.oom_killed).unwrap_or(false);
    let detail = match code {
        _ if oom => "killed: out of memory".to_owned(),
        Some(c) if (129..=192).contains(&c) => {
            format!("killed by signal {} (exit code {c})", c - 128)
        }
        Some(c) => format!("exited with code {c}"),
        None => "ended".to_owned(),
    };
    ExitInfo {
        code,
        detail,
        requested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;

    fn ctx() -> ReplicaContext {
        let key = ferry_protocol::SigningKey::generate().public_key();
        let cfg = crate::config::from_toml(&format!(
            r#"
            environment = "dev"
            state_dir = "/tmp/x"
            trusted_keys = ["{key}"]
            [services.web]
            runtime = "docker"
            port = 18080
            env = {{ A = "config", PORT = "1", SAMPLE_BIND = "0.0.0.0" }}
            labels = {{ team = "checkout" }}
            "#
        ));
        let service: ServiceConfig = match cfg {
            Ok(cfg) => cfg.services.into_values().next().unwrap(),
            Err(e) => panic!("{e}"),
        };
        ReplicaContext {
            environment: EnvName::new("dev").unwrap(),
            service,
            log_dir: PathBuf::from("/tmp"),
        }
    }

    fn release() -> ReleaseSpec {
        ReleaseSpec {
            version: ferry_protocol::Version::new("1.0.0+build.7").unwrap(),
            artifact: "ferry-sample:1.0.0".into(),
            digest: None,
            env: BTreeMap::from([
                ("A".into(), "release".into()),
                ("FERRY_VERSION".into(), "forged".into()),
            ]),
        }
    }

    #[test]
    fn ferry_variables_and_labels_win() {
        let (ctx, release) = (ctx(), release());
        let env = environment(&ctx, &release, "web-1.0.0-1-abcdef");
        for expected in [
            "A=release",
            "PORT=8080",
            "SAMPLE_BIND=0.0.0.0",
            "FERRY_VERSION=1.0.0+build.7",
            "FERRY_ENVIRONMENT=dev",
            "FERRY_SERVICE=web",
            "FERRY_REPLICA=web-1.0.0-1-abcdef",
        ] {
            assert!(env.iter().any(|e| e == expected), "{expected} in {env:?}");
        }
        let labels = labels(&ctx, &release, "web-1.0.0-1-abcdef");
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_ENVIRONMENT], "dev");
        assert_eq!(labels[LABEL_SERVICE], "web");
        assert_eq!(labels[LABEL_VERSION], "1.0.0+build.7");
        assert_eq!(labels["team"], "checkout");
        let body = container_body(&ctx, &release, "r");
        let host = body.host_config.unwrap();
        let binding = &host.port_bindings.unwrap()["8080/tcp"];
        assert_eq!(
            binding.as_ref().unwrap()[0].host_ip.as_deref(),
            Some("127.0.0.1")
        );
    }

    #[test]
    fn names_and_references_are_safe() {
        let env = EnvName::new("dev").unwrap();
        assert_eq!(
            container_name(&env, "web-1.0.0+b7-3-abcdef"),
            "ferry-dev-web-1.0.0-b7-3-abcdef"
        );
        for good in [
            "ferry-sample:1.0.0",
            "registry.local:5000/team/app@sha256:abc",
        ] {
            assert!(check_image_reference(good).is_ok(), "{good}");
        }
        for bad in ["", "../containers/x", "a/../../b", "-x", "a b", "a?b", "/x"] {
            assert!(check_image_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usage_is_computed_as_docker_stats_does() {
        let cpu = |total: u64, system: u64| bollard::models::ContainerCpuStats {
            cpu_usage: Some(bollard::models::ContainerCpuUsage {
                total_usage: Some(total),
                ..Default::default()
            }),
            system_cpu_usage: Some(system),
            online_cpus: Some(2),
            ..Default::default()
        };
        let stats = ContainerStatsResponse {
            cpu_stats: Some(cpu(1_500, 20_000)),
            precpu_stats: Some(cpu(1_000, 10_000)),
            memory_stats: Some(bollard::models::ContainerMemoryStats {
                usage: Some(10_000),
                stats: Some(HashMap::from([("inactive_file".to_owned(), 4_000)])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let usage = usage_of("r", &stats);
        assert!((usage.cpu_percent - 10.0).abs() < 1e-9, "{usage:?}");
        assert_eq!(usage.memory_bytes, 6_000);
        let empty = usage_of("r", &ContainerStatsResponse::default());
        assert_eq!((empty.cpu_percent, empty.memory_bytes), (0.0, 0));
    }

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_seconds(Duration::ZERO), 0);
        assert_eq!(grace_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(grace_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn exits_are_described() {
        let with = |code: i64, oom: bool| ContainerInspectResponse {
            state: Some(bollard::models::ContainerState {
                exit_code: Some(code),
                oom_killed: Some(oom),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            describe(&with(3, false), false).detail,
            "exited with code 3"
        );
        assert_eq!(
            describe(&with(137, false), false).detail,
            "killed by signal 9 (exit code 137)"
        );
        let oom = describe(&with(137, true), false);
        assert_eq!(oom.detail, "killed: out of memory");
        assert_eq!(oom.code, Some(137));
    }
}
