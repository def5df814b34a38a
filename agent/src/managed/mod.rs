//! A service whose replicas the agent owns (process and Docker runtimes): the
//! agent's proxy is its stable address, the agent checks each replica's health,
//! restarts crashed replicas with backoff, and replaces releases health-gated.
//! What it offers the executor and the rollout driver is in `seams.rs`.

mod seams;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::EventBody;
use ferry_protocol::rollout::RolloutStatus;
use futures::future::join_all;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::events::EventSink;
use crate::metrics_provider::PrometheusProvider;
use crate::proxy::Proxy;
use crate::runtime::{
    NoProgress, Progress, Replacement, ReplicaContext, ReplicaHandle, ReplicaRuntime, RuntimeError,
};
use ferry_analysis::SetWindow;

/// Longest wait before restarting a crashed replica.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// The first pause between health checks of replicas that are starting; it
/// doubles up to the configured interval, so a replica ready in a few
/// milliseconds is seen within a few milliseconds, not a whole interval
/// later, and a slow one is not checked more often than configured for long.
pub const FIRST_START_CHECK: Duration = Duration::from_millis(5);

struct Slot {
    handle: ReplicaHandle,
    healthy: bool,
    failures: u32,
    restarts: u32,
    exit_reported: bool,
    restart_at: Option<Instant>,
}

impl Slot {
    fn new(handle: ReplicaHandle, healthy: bool, restarts: u32) -> Self {
        Slot {
            handle,
            healthy,
            failures: 0,
            restarts,
            exit_reported: false,
            restart_at: None,
        }
    }
}

#[derive(Default)]
struct ReplicaSet {
    release: Option<ReleaseSpec>,
    desired: u32,
    slots: Vec<Slot>,
}

impl ReplicaSet {
    fn healthy_addresses(&self) -> Vec<SocketAddr> {
        self.slots
            .iter()
            .filter(|s| s.healthy && s.handle.exited().is_none())
            .map(|s| s.handle.address)
            .collect()
    }
}

/// A service on a runtime where the agent owns the replicas.
pub struct ManagedService {
    ctx: ReplicaContext,
    runtime: Arc<dyn ReplicaRuntime>,
    proxy: Proxy,
    set: Mutex<ReplicaSet>,
    /// Serialises deploy, scale and adopt: a restore after the engine comes
    /// back runs beside the command worker.
    op: Mutex<()>,
    busy: AtomicBool,
    events: EventSink,
    http: reqwest::Client,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    /// The new version's replicas while a rollout runs (the proxy's canary set).
    next: Mutex<Vec<ReplicaHandle>>,
    /// The previous set, kept after a blue-green switch for an instant rollback.
    retired: Mutex<Option<Retired>>,
    retired_generation: AtomicU64,
    /// The rollout in progress, or the last one.
    rollout: std::sync::Mutex<Option<RolloutStatus>>,
    /// Where analysis reads signals when not from the proxy.
    metrics: Option<PrometheusProvider>,
    this: std::sync::OnceLock<std::sync::Weak<ManagedService>>,
}

/// A replica set kept running after a switch, until `keep_old_for` passes.
struct Retired {
    release: ReleaseSpec,
    desired: u32,
    slots: Vec<Slot>,
    generation: u64,
}

impl ManagedService {
    /// Starts the service's supervisor behind `proxy`, already serving its
    /// stable port; no replica runs yet.
    pub async fn start(
        ctx: ReplicaContext,
        proxy: Proxy,
        runtime: Arc<dyn ReplicaRuntime>,
        events: EventSink,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, crate::Error> {
        let http = reqwest::Client::builder()
            .timeout(ctx.service.health.timeout)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| RuntimeError::Start {
                replica: "-".into(),
                detail: format!("HTTP client: {e}"),
            })?;
        let service = Arc::new(ManagedService {
            metrics: PrometheusProvider::configured(
                &ctx.service.metrics,
                &ctx.environment,
                &ctx.service.name,
            ),
            ctx,
            runtime,
            proxy,
            set: Mutex::new(ReplicaSet::default()),
            op: Mutex::new(()),
            busy: AtomicBool::new(false),
            events,
            http,
            next_id: AtomicU64::new(1),
            shutdown,
            next: Mutex::new(Vec::new()),
            retired: Mutex::new(None),
            retired_generation: AtomicU64::new(0),
            rollout: std::sync::Mutex::new(None),
            this: std::sync::OnceLock::new(),
        });
        let _ = service.this.set(Arc::downgrade(&service));
        tokio::spawn(supervise(
            Arc::downgrade(&service),
            service.shutdown.clone(),
            service.ctx.service.health.interval,
        ));
        Ok(service)
    }

    fn replica_id(&self, release: &ReleaseSpec) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "{}-{}-{n}-{}",
            self.ctx.service.name,
            release.version,
            &suffix[..6]
        )
    }

    async fn check(&self, address: SocketAddr) -> Result<(), String> {
        let url = format!("http://{address}{}", self.ctx.service.health.path);
        match self.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Err(format!(
                "no answer within {:?}",
                self.ctx.service.health.timeout
            )),
            Err(e) if e.is_connect() => Err("connection refused".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Starts `count` replicas of `release` side by side; when one fails,
    /// those started are stopped and the first error is returned.
    async fn start_replicas(
        &self,
        release: &ReleaseSpec,
        count: u32,
    ) -> Result<Vec<ReplicaHandle>, RuntimeError> {
        // Side by side: a replica's start does not wait for the one before.
        let ids: Vec<String> = (0..count).map(|_| self.replica_id(release)).collect();
        let results = join_all(
            ids.iter()
                .map(|id| self.runtime.start(&self.ctx, release, id)),
        )
        .await;
        let mut started = Vec::with_capacity(results.len());
        let mut first_error = None;
        for result in results {
            match result {
                Ok(handle) => started.push(handle),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            self.stop_all(started).await;
            return Err(e);
        }
        Ok(started)
    }

    async fn stop_all(&self, handles: Vec<ReplicaHandle>) {
        let grace = self.ctx.service.stop_timeout;
        join_all(handles.iter().map(|h| h.stop(grace))).await;
    }

    /// Waits until every replica in `handles` passes its health check, one
    /// exits, the start timeout passes, or the agent shuts down.
    async fn wait_healthy(
        &self,
        handles: &[ReplicaHandle],
        release: &ReleaseSpec,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let health = &self.ctx.service.health;
        let deadline = Instant::now() + health.start_timeout;
        let total = u32::try_from(handles.len()).unwrap_or(u32::MAX);
        let mut healthy = vec![false; handles.len()];
        let mut last_error = String::from("not checked yet");
        let mut reported = u32::MAX;
        let mut pause = FIRST_START_CHECK.min(health.interval);
        loop {
            for handle in handles {
                if let Some(exit) = handle.exited() {
                    return Err(RuntimeError::Unhealthy(format!(
                        "replica {} of {} {} before becoming healthy",
                        handle.id, release.version, exit.detail
                    )));
                }
            }
            let pending: Vec<usize> = (0..handles.len()).filter(|i| !healthy[*i]).collect();
            let results = join_all(pending.iter().map(|i| self.check(handles[*i].address))).await;
            for (i, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => healthy[i] = true,
                    Err(e) => last_error = e,
                }
            }
            let ready = u32::try_from(healthy.iter().filter(|h| **h).count()).unwrap_or(0);
            if ready != reported {
                progress.step(
                    "waiting for health checks",
                    Some(&release.version),
                    ready,
                    total,
                );
                reported = ready;
            }
            if ready == total {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Unhealthy(format!(
                    "{} of {total} replicas of {} did not pass {} within {} (last check: {last_error})",
                    total - ready,
                    release.version,
                    health.path,
                    humantime::format_duration(health.start_timeout),
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.cancelled() => return Err(RuntimeError::Interrupted),
            }
            pause = (pause * 2).min(health.interval);
        }
    }

    /// Keeps the adopted replicas that pass a health check (retried up to the
    /// failure threshold, an interval apart) and stops the others.
    async fn keep_healthy(&self, adopted: Vec<ReplicaHandle>) -> Vec<ReplicaHandle> {
        let health = &self.ctx.service.health;
        let mut pending = adopted;
        let mut healthy = Vec::new();
        for attempt in 1..=health.failure_threshold.max(1) {
            let results = join_all(pending.iter().map(|h| self.check(h.address))).await;
            let mut failed = Vec::new();
            for (handle, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => healthy.push(handle),
                    Err(e) if attempt == health.failure_threshold.max(1) => {
                        tracing::warn!(replica = %handle.id, error = %e, "adopted replica is unhealthy; stopping it");
                        failed.push(handle);
                    }
                    Err(_) => failed.push(handle),
                }
            }
            pending = failed;
            if pending.is_empty() {
                break;
            }
            if attempt < health.failure_threshold.max(1) {
                tokio::time::sleep(health.interval).await;
            }
        }
        self.stop_all(pending).await;
        healthy
    }

    /// [`ServiceBackend::deploy`], under the operation lock.
    async fn deploy_now(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        replacement: Replacement,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        if replacement == Replacement::HealthGated && self.reinstate(release, progress).await {
            return Ok(());
        }
        self.runtime.prepare(&self.ctx, release, progress).await?;
        if replacement == Replacement::StopFirst {
            let old = {
                let mut set = self.set.lock().await;
                self.proxy.set_backends(Vec::new());
                set.release = None;
                std::mem::take(&mut set.slots)
            };
            progress.step(
                "stopping current replicas first (forced)",
                None,
                0,
                replicas,
            );
            self.stop_all(old.into_iter().map(|s| s.handle).collect())
                .await;
        }
        progress.step("starting replicas", Some(&release.version), 0, replicas);
        let new = self.start_replicas(release, replicas).await?;
        if let Err(e) = self.wait_healthy(&new, release, progress).await {
            progress.step(
                "stopping the new replicas",
                Some(&release.version),
                0,
                replicas,
            );
            self.stop_all(new).await;
            return Err(e);
        }
        let old = {
            let mut set = self.set.lock().await;
            let addresses: Vec<SocketAddr> = new.iter().map(|h| h.address).collect();
            let slots = new.into_iter().map(|h| Slot::new(h, true, 0)).collect();
            let old = std::mem::replace(&mut set.slots, slots);
            set.release = Some(release.clone());
            set.desired = replicas;
            self.proxy.set_backends(addresses);
            old
        };
        if !old.is_empty() {
            progress.step(
                "stopping previous replicas",
                Some(&release.version),
                replicas,
                replicas,
            );
            self.stop_all(old.into_iter().map(|s| s.handle).collect())
                .await;
        }
        Ok(())
    }

    /// The service's name.
    pub fn name(&self) -> &ferry_protocol::ServiceName {
        &self.ctx.service.name
    }

    /// Cancelled when the agent shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Records where the rollout is, for snapshots.
    pub fn set_rollout_status(&self, status: Option<RolloutStatus>) {
        if let Ok(mut guard) = self.rollout.lock() {
            *guard = status;
        }
    }

    /// Starts `count` replicas of `release` into the next set, health-gated;
    /// on failure the ones started are stopped and nothing else changes.
    pub async fn start_next(
        &self,
        release: &ReleaseSpec,
        count: u32,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        self.runtime.prepare(&self.ctx, release, progress).await?;
        let new = self.start_replicas(release, count).await?;
        if let Err(e) = self.wait_healthy(&new, release, progress).await {
            self.stop_all(new).await;
            return Err(e);
        }
        self.next.lock().await.extend(new);
        Ok(())
    }

    /// Sends `weight` percent of requests to the next set's live replicas.
    pub async fn route_next(&self, weight: u8) {
        let next = self.next.lock().await;
        let live = next
            .iter()
            .filter(|h| h.exited().is_none())
            .map(|h| h.address)
            .collect();
        self.proxy.set_canary(live, weight);
    }

    /// Health-checks the next set once, counting each check toward its
    /// availability; a replica that exited counts as a failed check. Returns
    /// the first failure.
    pub async fn check_next(&self) -> Option<String> {
        let targets: Vec<(String, SocketAddr, Option<String>)> = self
            .next
            .lock()
            .await
            .iter()
            .map(|h| (h.id.clone(), h.address, h.exited().map(|e| e.detail)))
            .collect();
        let results = join_all(targets.iter().map(|(_, address, exited)| async move {
            match exited {
                Some(detail) => Err(detail.clone()),
                None => self.check(*address).await,
            }
        }))
        .await;
        let mut first = None;
        for ((id, _, _), result) in targets.iter().zip(results) {
            self.proxy.record_canary_check(result.is_ok());
            if let (Err(e), None) = (result, &first) {
                first = Some(format!("replica {id}: {e}"));
            }
        }
        first
    }

    /// What the next set answered since the last call.
    pub fn take_next_window(&self) -> SetWindow {
        self.proxy.take_canary_window()
    }

    /// What the stable set answered since the last call.
    pub fn take_stable_window(&self) -> SetWindow {
        self.proxy.take_stable_window()
    }

    /// Takes the next set out of the path at once, then stops it.
    pub async fn abort_next(&self) {
        self.proxy.set_canary(Vec::new(), 0);
        let next = std::mem::take(&mut *self.next.lock().await);
        self.stop_all(next).await;
    }

    /// Replicas in the stable set.
    pub async fn stable_count(&self) -> u32 {
        u32::try_from(self.set.lock().await.slots.len()).unwrap_or(u32::MAX)
    }

    /// Takes `count` replicas of the stable set out of the path and stops them.
    pub async fn stop_stable(&self, count: u32) {
        if count == 0 {
            return;
        }
        let removed: Vec<Slot> = {
            let mut set = self.set.lock().await;
            let keep = set.slots.len().saturating_sub(count as usize);
            let removed = set.slots.drain(keep..).collect();
            self.proxy.set_backends(set.healthy_addresses());
            removed
        };
        self.stop_all(removed.into_iter().map(|s| s.handle).collect())
            .await;
    }

    /// Brings the stable set back to its desired count (after a failed
    /// rolling batch stopped some of it).
    pub async fn restore_stable(&self) {
        let desired = self.set.lock().await.desired;
        if let Err(e) = self.scale_now(desired, &NoProgress).await {
            tracing::error!(service = %self.ctx.service.name, error = %e, "could not bring the stable set back to its size");
        }
    }

    /// Makes the next set the stable one in one proxy switch. The old set is
    /// stopped, or kept for `keep_old` (blue-green) so that a rollback to it
    /// is a switch back.
    pub async fn promote_next(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        keep_old: Option<Duration>,
    ) {
        let new = std::mem::take(&mut *self.next.lock().await);
        let (old, old_release, old_desired) = {
            let mut set = self.set.lock().await;
            let slots = new.into_iter().map(|h| Slot::new(h, true, 0)).collect();
            let old = std::mem::replace(&mut set.slots, slots);
            let old_release = set.release.replace(release.clone());
            let old_desired = std::mem::replace(&mut set.desired, replicas);
            self.proxy.set_backends(set.healthy_addresses());
            self.proxy.set_canary(Vec::new(), 0);
            (old, old_release, old_desired)
        };
        match (keep_old, old_release) {
            (Some(keep), Some(old_release)) if !old.is_empty() && !keep.is_zero() => {
                self.retire(old, old_release, old_desired, keep).await
            }
            _ => {
                self.stop_all(old.into_iter().map(|s| s.handle).collect())
                    .await
            }
        }
    }

    async fn retire(&self, slots: Vec<Slot>, release: ReleaseSpec, desired: u32, keep: Duration) {
        let generation = self.retired_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let earlier = self.retired.lock().await.replace(Retired {
            release,
            desired,
            slots,
            generation,
        });
        if let Some(earlier) = earlier {
            self.stop_all(earlier.slots.into_iter().map(|s| s.handle).collect())
                .await;
        }
        let Some(service) = self.weak_self() else {
            return;
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(keep) => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(service) = service.upgrade() else {
                return;
            };
            let expired = {
                let mut retired = service.retired.lock().await;
                match retired.as_ref() {
                    Some(r) if r.generation == generation => retired.take(),
                    _ => None,
                }
            };
            if let Some(expired) = expired {
                tracing::info!(service = %service.ctx.service.name, version = %expired.release.version, "stopping the previous set kept after the switch");
                service
                    .stop_all(expired.slots.into_iter().map(|s| s.handle).collect())
                    .await;
            }
        });
    }

    fn weak_self(&self) -> Option<std::sync::Weak<ManagedService>> {
        self.this.get().cloned()
    }

    /// A rollback to the set kept after a blue-green switch: switch back to
    /// it at once if all its replicas still run.
    async fn reinstate(&self, release: &ReleaseSpec, progress: &dyn Progress) -> bool {
        let kept = {
            let mut retired = self.retired.lock().await;
            match retired.as_ref() {
                Some(r)
                    if r.release.version == release.version
                        && r.slots.iter().all(|s| s.handle.exited().is_none()) =>
                {
                    retired.take()
                }
                _ => None,
            }
        };
        let Some(kept) = kept else {
            return false;
        };
        progress.step(
            "switching back to the kept previous set",
            Some(&release.version),
            kept.desired,
            kept.desired,
        );
        let old = {
            let mut set = self.set.lock().await;
            let old = std::mem::replace(&mut set.slots, kept.slots);
            set.release = Some(kept.release);
            set.desired = kept.desired;
            self.proxy.set_backends(set.healthy_addresses());
            old
        };
        self.stop_all(old.into_iter().map(|s| s.handle).collect())
            .await;
        true
    }

    /// [`ServiceBackend::scale`], under the operation lock.
    async fn scale_now(&self, replicas: u32, progress: &dyn Progress) -> Result<(), RuntimeError> {
        let (release, current) = {
            let mut set = self.set.lock().await;
            if set.release.is_none() {
                set.desired = replicas;
                return Ok(());
            }
            (
                set.release.clone(),
                u32::try_from(set.slots.len()).unwrap_or(u32::MAX),
            )
        };
        let Some(release) = release else {
            return Ok(());
        };
        if replicas > current {
            let extra = replicas - current;
            progress.step(
                "starting replicas",
                Some(&release.version),
                current,
                replicas,
            );
            let new = self.start_replicas(&release, extra).await?;
            if let Err(e) = self.wait_healthy(&new, &release, progress).await {
                self.stop_all(new).await;
                return Err(e);
            }
            let mut set = self.set.lock().await;
            set.slots
                .extend(new.into_iter().map(|h| Slot::new(h, true, 0)));
            set.desired = replicas;
            self.proxy.set_backends(set.healthy_addresses());
        } else if replicas < current {
            let removed = {
                let mut set = self.set.lock().await;
                let keep = replicas as usize;
                let removed: Vec<Slot> = set.slots.drain(keep..).collect();
                set.desired = replicas;
                self.proxy.set_backends(set.healthy_addresses());
                removed
            };
            progress.step(
                "stopping replicas",
                Some(&release.version),
                replicas,
                replicas,
            );
            self.stop_all(removed.into_iter().map(|s| s.handle).collect())
                .await;
        } else {
            self.set.lock().await.desired = replicas;
        }
        Ok(())
    }

    /// [`ServiceBackend::adopt`], under the operation lock.
    async fn adopt_now(
        &self,
        release: Option<&ReleaseSpec>,
        replicas: u32,
    ) -> Result<u32, RuntimeError> {
        // Nothing to run: the runtime removes every leftover.
        let release = release.filter(|_| replicas > 0);
        let adopted = self.runtime.adopt(&self.ctx, release).await?;
        let Some(release) = release else {
            self.stop_all(adopted).await;
            return Ok(0);
        };
        let mut kept = self.keep_healthy(adopted).await;
        if kept.is_empty() {
            return Ok(0);
        }
        // Surplus first, so the set never runs more than asked.
        let surplus = kept.split_off(kept.len().min(replicas as usize));
        self.stop_all(surplus).await;
        let count = u32::try_from(kept.len()).unwrap_or(u32::MAX);
        {
            let mut set = self.set.lock().await;
            set.slots = kept.into_iter().map(|h| Slot::new(h, true, 0)).collect();
            set.release = Some(release.clone());
            // Desired is the recorded count even if starting the missing
            // ones fails: the service then shows as degraded.
            set.desired = replicas;
            self.proxy.set_backends(set.healthy_addresses());
        }
        tracing::info!(service = %self.ctx.service.name, version = %release.version, adopted = count, "adopted running replicas");
        // The missing ones are started as a scale-up would, health-gated.
        self.scale_now(replicas, &NoProgress).await?;
        Ok(count)
    }

    /// One round of supervision: health checks, crash detection, restarts.
    async fn supervise_once(&self) {
        let targets: Vec<(String, SocketAddr)> = {
            let set = self.set.lock().await;
            set.slots
                .iter()
                .filter(|s| s.handle.exited().is_none())
                .map(|s| (s.handle.id.clone(), s.handle.address))
                .collect()
        };
        let results = join_all(targets.iter().map(|(_, a)| self.check(*a))).await;
        let results: HashMap<String, bool> = targets
            .into_iter()
            .map(|(id, _)| id)
            .zip(results.into_iter().map(|r| r.is_ok()))
            .collect();
        // Health checks count toward the service's availability.
        for ok in results.values() {
            self.proxy.record_check(*ok);
        }

        let mut set = self.set.lock().await;
        let threshold = self.ctx.service.health.failure_threshold;
        let release = set.release.clone();
        let now = Instant::now();
        for slot in set.slots.iter_mut() {
            if let Some(exit) = slot.handle.exited() {
                slot.healthy = false;
                if !slot.exit_reported {
                    slot.exit_reported = true;
                    let backoff = restart_backoff(slot.restarts);
                    slot.restart_at = Some(now + backoff);
                    tracing::warn!(replica = %slot.handle.id, exit = %exit.detail, ?backoff, "replica exited; restarting");
                    if let Some(release) = &release {
                        self.events.emit(
                            &self.ctx.service.name,
                            None,
                            EventBody::ReplicaExited {
                                replica: slot.handle.id.clone(),
                                version: release.version.clone(),
                                code: exit.code,
                                restarts: slot.restarts,
                                detail: format!(
                                    "{}; restarting in {}",
                                    exit.detail,
                                    humantime::format_duration(backoff)
                                ),
                            },
                        );
                    }
                }
                if let (Some(at), Some(release)) = (slot.restart_at, &release) {
                    if at <= now {
                        let id = self.replica_id(release);
                        match self.runtime.start(&self.ctx, release, &id).await {
                            Ok(handle) => *slot = Slot::new(handle, false, slot.restarts + 1),
                            Err(e) => {
                                slot.restarts += 1;
                                slot.restart_at = Some(now + restart_backoff(slot.restarts));
                                tracing::error!(error = %e, "replica restart failed");
                            }
                        }
                    }
                }
                continue;
            }
            match results.get(&slot.handle.id) {
                Some(true) => {
                    slot.healthy = true;
                    slot.failures = 0;
                }
                Some(false) => {
                    slot.failures += 1;
                    if slot.failures >= threshold {
                        slot.healthy = false;
                    }
                }
                None => {}
            }
        }
        self.proxy.set_backends(set.healthy_addresses());
    }
}

fn restart_backoff(restarts: u32) -> Duration {
    Duration::from_secs(1u64 << restarts.min(5)).min(MAX_RESTART_BACKOFF)
}

async fn supervise(
    service: std::sync::Weak<ManagedService>,
    shutdown: CancellationToken,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(service) = service.upgrade() else {
            return;
        };
        service.supervise_once().await;
    }
}
