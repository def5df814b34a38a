//! The agent's top level: connects, restores its services from the state file,
//! takes commands, reports telemetry, and shuts down in order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use ferry_protocol::event::EventBody;
use ferry_protocol::streams;
use futures::future::join_all;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, RuntimeKind};
use crate::events::{EventPublisher, EventSink};
use crate::executor::{Executor, ManagedEntry};
use crate::ledger::Ledger;
use crate::link::LinkWatch;
use crate::proxy::Proxy;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::{NoProgress, Replacement};
use crate::runtime_registry::{start_service, Engines, ServiceStart};
use crate::state::State;
use crate::telemetry::{ReportedTrust, Telemetry};
use crate::{intake, Error};

/// Connects to NATS with the configured URL and credentials.
pub async fn connect(config: &AgentConfig) -> Result<async_nats::Client, Error> {
    let options = match &config.nats_creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|e| Error::Config(vec![format!("nats_creds: {}: {e}", path.display())]))?,
        None => async_nats::ConnectOptions::new(),
    };
    let options = match (&config.nats_user, &config.nats_password_file) {
        (Some(user), Some(file)) => {
            let password = read_password(file)?;
            options.user_and_password(user.clone(), password)
        }
        _ => options,
    };
    let options = config.nats_tls.apply(options);
    let servers = streams::server_list(&config.nats_url)
        .map_err(|why| Error::Config(vec![format!("nats_url: {why}")]))?;
    options
        .name(format!("ferry-agent-{}", config.environment))
        .custom_inbox_prefix(&config.nats_inbox_prefix)
        .ping_interval(streams::PING_INTERVAL)
        .event_callback(|event| async move {
            tracing::info!(%event, "NATS connection event");
        })
        .connect(servers)
        .await
        .map_err(|source| Error::Connect {
            tls: config.nats_tls.is_set(),
            url: config.nats_url.clone(),
            source,
        })
}

/// Reads a NATS password file: its first line, without the line end. The
/// error names the file, never its content.
fn read_password(file: &std::path::Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Config(vec![format!("nats_password_file: {}: {e}", file.display())]))?;
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        return Err(Error::Config(vec![format!(
            "nats_password_file: {} is empty",
            file.display()
        )]));
    }
    Ok(password)
}

/// First wait before trying an unreachable engine again; it doubles up to
/// [`MAX_RECONNECT_BACKOFF`].
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between tries of an unreachable engine.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// The Docker engine did not answer at start: says so (log and an event per
/// docker service, whose commands fail with the reason meanwhile), retries
/// with backoff, and once the engine answers restores those services from
/// the state file. The other services are not held up.
async fn reconnect_docker(
    runtime: Arc<DockerRuntime>,
    reason: String,
    entries: BTreeMap<ferry_protocol::ServiceName, ManagedEntry>,
    state: Arc<Mutex<State>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let names: Vec<String> = entries.keys().map(|n| n.to_string()).collect();
    tracing::error!(error = %reason, services = ?names, "the Docker engine is unreachable; its services wait for it");
    for name in entries.keys() {
        sink.emit(
            name,
            None,
            EventBody::RuntimeUnavailable {
                runtime: RuntimeKind::Docker.as_str().to_owned(),
                detail: format!("{reason}; the agent keeps trying and restores the service when the engine answers"),
            },
        );
    }
    let mut backoff = RECONNECT_BACKOFF;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        match runtime.reconnect().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff * 2, "the Docker engine is still unreachable");
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
            }
        }
    }
    tracing::info!(services = ?names, "the Docker engine answers again; restoring its services");
    restore(&entries, &state).await;
}

/// Serves the stable port of every service the agent proxies (all but
/// Kubernetes ones, which a Service fronts) before anything waits on NATS or
/// JetStream: a port in use ends the start at once, naming the service, and
/// nothing can take the port while the agent waits. Until the service is
/// restored its proxy has no replica and answers 503, which a load
/// balancer's health check reads as down.
async fn serve_stable_ports(
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<BTreeMap<ferry_protocol::ServiceName, Proxy>, Error> {
    let mut proxies = BTreeMap::new();
    for (name, service) in &config.services {
        if !service.runtime.proxied() {
            continue;
        }
        let proxy = Proxy::serve(name.as_str(), service.listen, shutdown.child_token()).await?;
        proxies.insert(name.clone(), proxy);
    }
    Ok(proxies)
}

/// Runs the agent until `shutdown` is cancelled or a fatal error occurs.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let trusted = Arc::new(intake::Trust {
        commands: config.trusted()?,
        reviewers: config.reviewers()?,
        approvals_required: config.approvals_required as usize,
    });
    let services_shutdown = shutdown.child_token();
    // Also stops the proxies when the start fails part way.
    let _services_stop = services_shutdown.clone().drop_guard();
    let mut proxies = serve_stable_ports(&config, &services_shutdown).await?;
    let served: Vec<Proxy> = proxies.values().cloned().collect();
    let client = connect(&config).await?;
    // On a leaf node, the leaf's domain: its streams and the agent's
    // consumer are local, so a cut link to the hub stops nothing here.
    let (js, layout) = match &config.leaf {
        Some(leaf) => (
            jetstream::with_domain(client.clone(), leaf.leaf.as_str()),
            intake::StreamLayout::Leaf {
                env: config.environment.clone(),
                hub: leaf.hub.clone(),
            },
        ),
        None => (jetstream::new(client.clone()), intake::StreamLayout::Shared),
    };
    // Daemons of a cluster start in any order: wait for JetStream rather
    // than exit (a replica-count mismatch still ends the start, exit 64).
    let ready = intake::until_jetstream_ready(
        "JetStream cannot serve ferry's streams yet",
        &shutdown,
        || intake::ensure_streams(&js, config.stream_replicas, &layout),
    )
    .await?;
    if ready.is_none() {
        tracing::info!("agent stopped before its streams were ready");
        return Ok(());
    }
    let state = Arc::new(Mutex::new(State::load(&config.state_dir)?));

    let publisher = EventPublisher::new(
        client.clone(),
        config.environment.clone(),
        config.host.clone(),
    )
    .with_shutdown(shutdown.clone());
    // The event queue outlives the services so their last events are sent.
    let sink_shutdown = CancellationToken::new();
    let (sink, sink_task) = publisher.spawn_sink(sink_shutdown.clone());

    let mut entries = BTreeMap::new();
    let mut engines = Engines::default();
    for (name, service) in &config.services {
        let start = ServiceStart {
            environment: &config.environment,
            service,
            // Served above; served when started only if it was not.
            proxy: proxies.remove(name),
            log_dir: config.state_dir.join("logs"),
            sink: &sink,
            shutdown: &services_shutdown,
        };
        match start_service(start, &mut engines).await {
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
    // Services on an unreachable engine are restored once it answers.
    let unreachable = engines.unreachable_docker();
    let (waiting, ready): (BTreeMap<_, _>, BTreeMap<_, _>) = entries
        .clone()
        .into_iter()
        .partition(|(_, e)| unreachable.is_some() && e.config.runtime == RuntimeKind::Docker);
    restore(&ready, &state).await;
    let reconnect = unreachable.map(|(runtime, reason)| {
        tokio::spawn(reconnect_docker(
            runtime,
            reason,
            waiting,
            state.clone(),
            sink.clone(),
            services_shutdown.clone(),
        ))
    });

    let ledger = Arc::new(Ledger::new(state.clone()));
    let executor = Arc::new(Executor::new(entries.clone(), ledger.clone(), sink.clone()));
    let (ready_tx, ready_rx) = oneshot::channel();
    let intake_task = tokio::spawn(intake::run(
        intake::Intake {
            js: js.clone(),
            environment: config.environment.clone(),
            host: config.host.clone(),
            trust: trusted,
            ledger,
            executor: executor.clone(),
            publisher: publisher.clone(),
        },
        services_shutdown.clone(),
        ready_tx,
    ));
    // Heartbeats start once commands are being taken, so the first one means "ready".
    let link = LinkWatch::default();
    let link_task = tokio::spawn(link.clone().run(client.clone(), services_shutdown.clone()));
    let telemetry = if ready_rx.await.is_ok() {
        let telemetry = Telemetry {
            agent_id: uuid::Uuid::new_v4().to_string(),
            environment: config.environment.clone(),
            host: config.host.clone(),
            started_at: OffsetDateTime::now_utc(),
            heartbeat_interval: config.heartbeat_interval,
            metrics_interval: config.metrics_interval,
            state_dir: config.state_dir.clone(),
            link,
            trust: ReportedTrust {
                trusted_keys: config.trusted_keys.clone(),
                reviewer_keys: config.reviewer_keys.clone(),
                approvals_required: config.approvals_required,
            },
            clock_offset: time::Duration::seconds(config.clock_offset_secs),
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
    let _ = link_task.await;
    if let Some(reconnect) = reconnect {
        let _ = reconnect.await;
    }
    join_all(entries.values().map(|e| e.backend.shutdown())).await;
    // The ports are free once `run` returns: an agent started again in the
    // same process binds them at once.
    join_all(served.iter().map(Proxy::closed)).await;
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
