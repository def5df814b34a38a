//! `ManagedService` as the executor's `ServiceBackend` and the rollout
//! driver's `RolloutTarget`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::{
    MaintenanceInfo, ReplicaHealth, ServiceHealth, ServiceMetrics, ServiceSnapshot,
};
use ferry_protocol::rollout::{RolloutStatus, StrategyKind};
use ferry_protocol::Version;
use tokio_util::sync::CancellationToken;

use crate::backend::{service_state, ServiceBackend};
use crate::config::RuntimeKind;
use crate::metrics_provider::PrometheusProvider;
use crate::rollout::{RolloutEnd, RolloutObserver, RolloutRequest, RolloutTarget, Verification};
use crate::runtime::{Progress, Replacement, RuntimeError};
use ferry_analysis::{SetWindow, Thresholds};

use super::*;

#[async_trait]
impl ServiceBackend for ManagedService {
    fn runtime(&self) -> RuntimeKind {
        self.runtime.kind()
    }

    async fn deploy(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        replacement: Replacement,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let _op = self.op.lock().await;
        self.runtime.available()?;
        self.deploy_now(release, replicas, replacement, progress)
            .await
    }

    async fn scale(&self, replicas: u32, progress: &dyn Progress) -> Result<(), RuntimeError> {
        let _op = self.op.lock().await;
        self.runtime.available()?;
        self.scale_now(replicas, progress).await
    }

    async fn adopt(
        &self,
        release: Option<&ReleaseSpec>,
        replicas: u32,
    ) -> Result<u32, RuntimeError> {
        let _op = self.op.lock().await;
        self.runtime.available()?;
        self.adopt_now(release, replicas).await
    }

    fn set_maintenance(&self, maintenance: Option<MaintenanceInfo>) {
        self.proxy.set_maintenance(maintenance);
    }

    async fn health(&self) -> ServiceHealth {
        let set = self.set.lock().await;
        let replicas: Vec<ReplicaHealth> = set
            .release
            .as_ref()
            .map(|release| {
                set.slots
                    .iter()
                    .map(|s| ReplicaHealth {
                        replica: s.handle.id.clone(),
                        version: release.version.clone(),
                        address: s.handle.address.to_string(),
                        healthy: s.healthy && s.handle.exited().is_none(),
                        restarts: s.restarts,
                        reason: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ServiceHealth {
            version: set.release.as_ref().map(|r| r.version.clone()),
            desired: set.desired,
            healthy: u32::try_from(replicas.iter().filter(|r| r.healthy).count()).unwrap_or(0),
            replicas,
        }
    }

    async fn take_metrics(&self) -> Option<ServiceMetrics> {
        let mut metrics = self.proxy.take_metrics();
        let (ids, restarts): (Vec<String>, HashMap<String, u32>) = {
            let set = self.set.lock().await;
            let live = set.slots.iter().filter(|s| s.handle.exited().is_none());
            let ids = live.clone().map(|s| s.handle.id.clone()).collect();
            let restarts = live.map(|s| (s.handle.id.clone(), s.restarts)).collect();
            (ids, restarts)
        };
        metrics.replicas = self.runtime.usage(&self.ctx, &ids).await;
        // The agent, not the engine, restarts replicas (as new containers),
        // so the count is the slot's.
        for usage in &mut metrics.replicas {
            usage.restarts = restarts.get(&usage.replica).copied().unwrap_or(0);
        }
        Some(metrics)
    }

    async fn snapshot(&self) -> ServiceSnapshot {
        let health = self.health().await;
        let maintenance = self.proxy.maintenance();
        let state = service_state(
            self.busy.load(Ordering::Relaxed),
            maintenance.is_some(),
            &health,
        );
        ServiceSnapshot {
            service: self.ctx.service.name.clone(),
            version: health.version,
            previous: None,
            replicas_desired: health.desired,
            replicas_healthy: health.healthy,
            state,
            maintenance,
            runtime: self.runtime.kind().as_str().to_owned(),
            address: Some(self.ctx.service.listen.to_string()),
            rollout: self.rollout.lock().ok().and_then(|r| r.clone()),
            strategy: Some(self.ctx.service.strategy.clone()),
        }
    }

    async fn roll_out(&self, request: RolloutRequest<'_>) -> Result<RolloutEnd, RuntimeError> {
        let (release, replicas, plan, progress) = (
            request.release,
            request.replicas,
            request.plan,
            request.progress,
        );
        let _op = self.op.lock().await;
        self.runtime.available()?;
        let serving = self.set.lock().await.release.is_some();
        if !serving {
            // Nothing to compare with or fall back to: a plain health-gated deploy.
            self.deploy_now(release, replicas, Replacement::HealthGated, progress)
                .await?;
            return Ok(RolloutEnd::Promoted {
                detail: format!(
                    "{} is the first version; deployed health-gated without a {}",
                    release.version,
                    plan.strategy.kind()
                ),
            });
        }
        crate::rollout::drive(self, request).await
    }

    async fn verify(
        &self,
        version: &Version,
        strategy: StrategyKind,
        thresholds: &Thresholds,
        observer: &dyn RolloutObserver,
    ) -> Result<Verification, RuntimeError> {
        crate::rollout::verify(self, version, strategy, thresholds, observer).await
    }

    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    async fn shutdown(&self) {
        self.shutdown.cancel();
        let next = std::mem::take(&mut *self.next.lock().await);
        self.stop_all(next).await;
        if let Some(retired) = self.retired.lock().await.take() {
            self.stop_all(retired.slots.into_iter().map(|s| s.handle).collect())
                .await;
        }
        let slots = std::mem::take(&mut self.set.lock().await.slots);
        self.proxy.set_backends(Vec::new());
        if self.runtime.replicas_outlive_agent() {
            // Dropping the handles lets go of the replicas; they keep serving
            // and the next agent adopts them.
            tracing::info!(service = %self.ctx.service.name, replicas = slots.len(), "leaving replicas running for the next agent");
            return;
        }
        self.stop_all(slots.into_iter().map(|s| s.handle).collect())
            .await;
    }
}

/// The rollout driver's view of the agent-owned replicas: the proxy weighs
/// the traffic between the stable and the next set.
#[async_trait]
impl RolloutTarget for ManagedService {
    fn metrics_provider(&self) -> Option<&PrometheusProvider> {
        self.metrics.as_ref()
    }

    fn name(&self) -> &ferry_protocol::ServiceName {
        ManagedService::name(self)
    }

    fn shutdown_token(&self) -> CancellationToken {
        ManagedService::shutdown_token(self)
    }

    fn set_rollout_status(&self, status: Option<RolloutStatus>) {
        ManagedService::set_rollout_status(self, status);
    }

    async fn start_next(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        ManagedService::start_next(self, release, replicas, progress).await
    }

    async fn route_next(&self, weight: u8) -> Result<Option<u8>, RuntimeError> {
        // The proxy weighs requests exactly.
        ManagedService::route_next(self, weight).await;
        Ok(None)
    }

    async fn check_next(&self) -> Option<String> {
        ManagedService::check_next(self).await
    }

    fn take_next_window(&self) -> SetWindow {
        ManagedService::take_next_window(self)
    }

    fn take_stable_window(&self) -> SetWindow {
        ManagedService::take_stable_window(self)
    }

    async fn abort_next(&self) {
        ManagedService::abort_next(self).await;
    }

    async fn promote_next(&self, release: &ReleaseSpec, replicas: u32, keep_old: Option<Duration>) {
        ManagedService::promote_next(self, release, replicas, keep_old).await;
    }

    async fn stable_count(&self) -> u32 {
        ManagedService::stable_count(self).await
    }

    async fn stop_stable(&self, count: u32) {
        ManagedService::stop_stable(self, count).await;
    }

    async fn restore_stable(&self) {
        ManagedService::restore_stable(self).await;
    }
}
