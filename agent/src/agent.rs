//! The agent's top level: connects, restores its services from the state file,
//! takes commands, reports telemetry, and shuts down in order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use ferry_protocol::streams;
use futures::future::join_all;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, RuntimeKind, ServiceConfig};
use crate::events::EventPublisher;
use crate::executor::{Executor, ManagedEntry};
use crate::managed::ManagedService;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{NoProgress, Replacement, ReplicaContext, ReplicaRuntime, RuntimeError};
use crate::state::State;
use crate::telemetry::Telemetry;
use crate::{intake, Error};

/// Connects to NATS with the configured URL and credentials.
pub async fn connect(config: &AgentConfig) -> Result<async_nats::Client, Error> {
    let options = match &config.nats_creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|e| Error::Config(vec![format!("nats_creds: {}: {e}", path.display())]))?,
        None => async_nats::ConnectOptions::new(),
    };
    options
        .name(format!("ferry-agent-{}", config.environment))
        .event_callback(|event| async move {
            tracing::info!(%event, "NATS connection event");
        })
        .connect(config.nats_url.as_str())
        .await
        .map_err(|source| Error::Connect {
            url: config.nats_url.clone(),
            source,
        })
}

/// The runtime a service runs on. The Docker engine is connected to once, for
/// the first docker service; an engine that cannot be reached stops the agent
/// from starting (with the reason), rather than leaving a service that cannot
/// run anything. Containers an earlier agent left are adopted or removed when
/// the service is restored.
async fn runtime_for(
    service: &ServiceConfig,
    docker: &mut Option<Arc<DockerRuntime>>,
) -> Result<Arc<dyn ReplicaRuntime>, Error> {
    match service.runtime {
        RuntimeKind::Process => Ok(Arc::new(ProcessRuntime)),
        RuntimeKind::Docker => {
            let runtime = match docker {
                Some(runtime) => runtime.clone(),
                None => {
                    // Not a configuration error (exit 64): the engine may
                    // come back, and a supervisor should restart the agent.
                    let runtime =
                        Arc::new(DockerRuntime::connect().await.map_err(|e| match e {
                            RuntimeError::Unavailable { runtime, detail } => {
                                RuntimeError::Unavailable {
                                    runtime,
                                    detail: format!(
                                        "{detail} (needed by service {})",
                                        service.name
                                    ),
                                }
                            }
                            other => other,
                        })?);
                    *docker = Some(runtime.clone());
                    runtime
                }
            };
            Ok(runtime)
        }
    }
}

/// Runs the agent until `shutdown` is cancelled or a fatal error occurs.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let trusted = Arc::new(config.trusted()?);
    let client = connect(&config).await?;
    let js = jetstream::new(client.clone());
    intake::ensure_stream(&js, &streams::events()).await?;
    let state = Arc::new(Mutex::new(State::load(&config.state_dir)?));

    let publisher = EventPublisher::new(client.clone(), config.environment.clone());
    // The event queue outlives the services so their last events are sent.
    let sink_shutdown = CancellationToken::new();
    let (sink, sink_task) = publisher.spawn_sink(sink_shutdown.clone());
    let services_shutdown = shutdown.child_token();

    let mut entries = BTreeMap::new();
    let mut docker = None;
    for (name, service) in &config.services {
        let runtime = match runtime_for(service, &mut docker).await {
            Ok(runtime) => runtime,
            Err(e) => {
                services_shutdown.cancel();
                return Err(e);
            }
        };
        let ctx = ReplicaContext {
            environment: config.environment.clone(),
            service: service.clone(),
            log_dir: config.state_dir.join("logs"),
        };
        match ManagedService::start(ctx, runtime, sink.clone(), services_shutdown.child_token())
            .await
        {
            Ok(backend) => {
                entries.insert(
                    name.clone(),
                    ManagedEntry {
                        config: service.clone(),
                        backend,
                    },
                );
            }
            Err(e) => {
                services_shutdown.cancel();
                return Err(e);
            }
        }
    }
    restore(&entries, &state).await;

    let executor = Arc::new(Executor::new(
        config.environment.clone(),
        entries.clone(),
        state.clone(),
        publisher.clone(),
        sink.clone(),
    ));
    let (ready_tx, ready_rx) = oneshot::channel();
    let intake_task = tokio::spawn(intake::run(
        client.clone(),
        executor.clone(),
        trusted,
        publisher.clone(),
        services_shutdown.clone(),
        ready_tx,
    ));
    // Heartbeats start once commands are being taken, so the first one means "ready".
    let telemetry = if ready_rx.await.is_ok() {
        let telemetry = Telemetry {
            agent_id: uuid::Uuid::new_v4().to_string(),
            environment: config.environment.clone(),
            started_at: OffsetDateTime::now_utc(),
            heartbeat_interval: config.heartbeat_interval,
            metrics_interval: config.metrics_interval,
            state_dir: config.state_dir.clone(),
        };
        Some(tokio::spawn(telemetry.run(
            executor.clone(),
            publisher.clone(),
            sink.clone(),
            services_shutdown.clone(),
        )))
    } else {
        None
    };

    let result = match intake_task.await {
        Ok(result) => result,
        Err(e) => Err(Error::JetStream {
            what: "command intake",
            detail: format!("task failed: {e}"),
        }),
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "command intake failed; shutting down");
    }
    services_shutdown.cancel();
    if let Some(telemetry) = telemetry {
        let _ = telemetry.await;
    }
    join_all(entries.values().map(|e| e.backend.shutdown())).await;
    sink_shutdown.cancel();
    let _ = sink_task.await;
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "could not flush NATS before exit");
    }
    tracing::info!("agent stopped");
    result
}

/// Brings every service back to what the state file says was serving: first
/// by adopting the replicas an earlier agent left running (containers), else
/// by deploying afresh.
async fn restore(
    entries: &BTreeMap<ferry_protocol::ServiceName, ManagedEntry>,
    state: &Mutex<State>,
) {
    let records: Vec<_> = match state.lock() {
        Ok(state) => entries
            .keys()
            .map(|name| (name.clone(), state.service(name)))
            .collect(),
        Err(_) => return,
    };
    let restores = records.into_iter().filter_map(|(name, record)| {
        let entry = entries.get(&name)?.clone();
        Some(async move {
            entry.backend.set_maintenance(record.maintenance.clone());
            match entry.backend.adopt(record.current.as_ref(), record.replicas).await {
                Ok(0) => {}
                Ok(adopted) => {
                    tracing::info!(service = %name, adopted, replicas = record.replicas, "restored by adopting running replicas");
                    return;
                }
                Err(e) => {
                    tracing::error!(service = %name, error = %e, "could not adopt the running replicas");
                    return;
                }
            }
            let Some(current) = record.current.clone() else { return };
            if record.replicas == 0 {
                return;
            }
            tracing::info!(service = %name, version = %current.version, replicas = record.replicas, "restoring");
            if let Err(e) = entry.backend.deploy(&current, record.replicas, Replacement::HealthGated, &NoProgress).await {
                tracing::error!(service = %name, error = %e, "could not restore the service");
            }
        })
    });
    join_all(restores).await;
}
