//! Periodic reports: a heartbeat with host metrics and every service's
//! snapshot, and per service its health and the traffic its proxy measured.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::event::{AgentEvent, EventBody, Heartbeat, HostMetrics};
use ferry_protocol::{EnvName, HostName, ServiceName};
use sysinfo::{Disks, System};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::events::{EventPublisher, EventSink};
use crate::executor::Executor;
use crate::link::LinkWatch;

/// What the telemetry loop needs.
pub struct Telemetry {
    /// Unique per agent process.
    pub agent_id: String,
    /// The environment.
    pub environment: EnvName,
    /// The host it runs on.
    pub host: HostName,
    /// When the agent started.
    pub started_at: OffsetDateTime,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Health and metrics period.
    pub metrics_interval: Duration,
    /// Where the state lives (its disk is the one reported).
    pub state_dir: PathBuf,
    /// The NATS connection's outages, marked on the next heartbeat.
    pub link: LinkWatch,
    /// What the heartbeat reports of the agent's trust, for `ferry doctor`.
    pub trust: ReportedTrust,
    /// Added to the clock the heartbeat reports (`clock_offset_secs`, a
    /// test setting that simulates a skewed host clock).
    pub clock_offset: time::Duration,
}

/// The keys an agent reports in its heartbeat: public keys only.
#[derive(Clone, Debug, Default)]
pub struct ReportedTrust {
    /// Keys whose signed commands are accepted.
    pub trusted_keys: Vec<String>,
    /// Reviewer keys whose approvals count.
    pub reviewer_keys: Vec<String>,
    /// Approvals a deploy must carry.
    pub approvals_required: u32,
}

impl Telemetry {
    /// Runs until `shutdown`.
    pub async fn run(
        self,
        executor: Arc<Executor>,
        publisher: EventPublisher,
        sink: EventSink,
        shutdown: CancellationToken,
    ) {
        // Host metrics are read on the blocking pool (sysinfo walks /proc and
        // every mount) and only on the periodic tick; the heartbeat sent right
        // after a command reuses the last reading, so commands never wait on it.
        let system = Arc::new(std::sync::Mutex::new(System::new()));
        let mut host = HostMetrics::default();
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        let mut metrics = tokio::time::interval(self.metrics_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        metrics.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        metrics.tick().await;
        let changed = executor.changed();
        let link_back = self.link.back();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = heartbeat.tick() => {
                    host = self.read_host(&system).await.unwrap_or(host);
                    let event = self.heartbeat(&executor, host.clone()).await;
                    publisher.publish_agent(AgentEvent::Heartbeat(event)).await;
                }
                _ = metrics.tick() => self.service_reports(&executor, &sink).await,
                // A heartbeat at once after an outage, carrying its window.
                _ = link_back.notified() => {
                    let event = self.heartbeat(&executor, host.clone()).await;
                    publisher.publish_agent(AgentEvent::Heartbeat(event)).await;
                    heartbeat.reset();
                }
                _ = changed.notified() => {
                    let event = self.heartbeat(&executor, host.clone()).await;
                    publisher.publish_agent(AgentEvent::Heartbeat(event)).await;
                    heartbeat.reset();
                }
            }
        }
    }

    async fn read_host(&self, system: &Arc<std::sync::Mutex<System>>) -> Option<HostMetrics> {
        let system = system.clone();
        let state_dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut system = system.lock().ok()?;
            Some(host_metrics(&mut system, &state_dir))
        })
        .await
        .ok()
        .flatten()
    }

    async fn heartbeat(&self, executor: &Executor, host: HostMetrics) -> Heartbeat {
        let mut services = Vec::with_capacity(executor.services().len());
        for (name, entry) in executor.services() {
            let mut snapshot = entry.backend.snapshot().await;
            snapshot.previous = executor.record(name).previous.map(|r| r.version);
            services.push(snapshot);
        }
        Heartbeat {
            host_name: Some(self.host.clone()),
            agent_id: self.agent_id.clone(),
            environment: self.environment.clone(),
            started_at: self.started_at,
            interval_secs: self.heartbeat_interval.as_secs().max(1),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            host,
            services,
            gap: self.link.take_gap(),
            sent_at: Some(OffsetDateTime::now_utc() + self.clock_offset),
            trusted_keys: self.trust.trusted_keys.clone(),
            reviewer_keys: self.trust.reviewer_keys.clone(),
            approvals_required: self.trust.approvals_required,
        }
    }

    async fn service_reports(&self, executor: &Executor, sink: &EventSink) {
        let services: BTreeMap<&ServiceName, _> = executor.services().iter().collect();
        for (name, entry) in services {
            sink.emit(name, None, EventBody::Health(entry.backend.health().await));
            if let Some(metrics) = entry.backend.take_metrics().await {
                sink.emit(name, None, EventBody::Metrics(metrics));
            }
        }
    }
}

fn host_metrics(system: &mut System, state_dir: &std::path::Path) -> HostMetrics {
    system.refresh_cpu_usage();
    system.refresh_memory();
    let disks = Disks::new_with_refreshed_list();
    // The disk holding the state directory: the longest mount point that prefixes it.
    let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let disk = disks
        .list()
        .iter()
        .filter(|d| state_dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len());
    HostMetrics {
        cpu_percent: system.global_cpu_usage(),
        memory_used_bytes: system.used_memory(),
        memory_total_bytes: system.total_memory(),
        disk_used_bytes: disk
            .map(|d| d.total_space().saturating_sub(d.available_space()))
            .unwrap_or(0),
        disk_total_bytes: disk.map(|d| d.total_space()).unwrap_or(0),
    }
}
