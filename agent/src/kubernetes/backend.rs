//! [`KubernetesService`] as the executor's `ServiceBackend`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::{MaintenanceInfo, ServiceHealth, ServiceMetrics, ServiceSnapshot};
use ferry_protocol::rollout::{Strategy, StrategyKind};
use ferry_protocol::Version;
use kube::api::{ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::{api_error, health, maintenance_refusal, objects, KubernetesService, RUNTIME};
use crate::backend::{service_state, ServiceBackend};
use crate::config::RuntimeKind;
use crate::rollout::{RolloutEnd, RolloutObserver, RolloutRequest, Verification};
use crate::runtime::{Progress, Replacement, RuntimeError};
use ferry_analysis::Thresholds;

#[async_trait]
impl ServiceBackend for KubernetesService {
    fn runtime(&self) -> RuntimeKind {
        RuntimeKind::Kubernetes
    }

    async fn deploy(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        replacement: Replacement,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let _op = self.op.lock().await;
        self.deploy_locked(release, replicas, replacement, None, progress)
            .await
    }

    /// Blue-green: the new version's Deployment beside the old, the
    /// Service switched in one patch once it is rolled out, the old one kept
    /// for `keep_old_for_secs`. Rolling: the serving Deployment takes the
    /// new version in place at the configured pace. Canary: a second
    /// Deployment behind the same Service, weighed by replica counts, judged
    /// by the metrics provider (see `rollouts`).
    async fn roll_out(&self, request: RolloutRequest<'_>) -> Result<RolloutEnd, RuntimeError> {
        let (release, replicas, progress, observer) = (
            request.release,
            request.replicas,
            request.progress,
            request.observer,
        );
        match request.plan.strategy {
            Strategy::BlueGreen { keep_old_for_secs } => {
                let _op = self.op.lock().await;
                let keep = Duration::from_secs(keep_old_for_secs);
                self.deploy_locked(
                    release,
                    replicas,
                    Replacement::HealthGated,
                    Some(keep),
                    progress,
                )
                .await?;
                Ok(RolloutEnd::Promoted {
                    detail: format!(
                        "{} {} serves everything; the Service was switched in one patch and the old Deployment is kept for {}",
                        self.config.name,
                        release.version,
                        humantime::format_duration(keep)
                    ),
                })
            }
            Strategy::Rolling {
                batch_size,
                max_unavailable,
            } => {
                let _op = self.op.lock().await;
                self.roll_in_place(
                    release,
                    replicas,
                    (batch_size, max_unavailable),
                    progress,
                    observer,
                )
                .await
            }
            Strategy::Canary { .. } => {
                let _op = self.op.lock().await;
                self.canary(request).await
            }
            Strategy::Recreate => Err(RuntimeError::Unsupported(
                "recreate is not a progressive strategy".into(),
            )),
        }
    }

    /// The verification window after a switch, judged by the metrics
    /// provider (the agent's proxy sees none of a cluster's traffic).
    async fn verify(
        &self,
        version: &Version,
        strategy: StrategyKind,
        thresholds: &Thresholds,
        observer: &dyn RolloutObserver,
    ) -> Result<Verification, RuntimeError> {
        if self.metrics.is_none() {
            return Err(RuntimeError::Unsupported(
                "the kubernetes runtime verifies a deploy only with a Prometheus metrics provider (its traffic does not pass the agent)".into(),
            ));
        }
        crate::rollout::verify(self, version, strategy, thresholds, observer).await
    }

    async fn scale(&self, replicas: u32, progress: &dyn Progress) -> Result<(), RuntimeError> {
        let _op = self.op.lock().await;
        let Some((name, label, version)) = self.serving() else {
            return Ok(());
        };
        let patch = json!({ "spec": { "replicas": replicas } });
        self.deployments
            .patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error("scaling the Deployment", e))?;
        self.wait(&name, &label, &version, replicas, progress).await
    }

    fn set_maintenance(&self, maintenance: Option<MaintenanceInfo>) {
        self.known().maintenance = maintenance;
    }

    fn maintenance_refusal(&self, on: bool) -> Option<String> {
        (on && self.config.kubernetes.maintenance_image.is_none())
            .then(|| maintenance_refusal(&self.config))
    }

    async fn apply_maintenance(
        &self,
        maintenance: Option<MaintenanceInfo>,
    ) -> Result<(), RuntimeError> {
        self.set_maintenance_on_cluster(maintenance.clone()).await?;
        self.known().maintenance = maintenance;
        Ok(())
    }

    async fn adopt(
        &self,
        release: Option<&ReleaseSpec>,
        replicas: u32,
    ) -> Result<u32, RuntimeError> {
        let _op = self.op.lock().await;
        let Some(release) = release else {
            // No record (a lost state directory): the cluster keeps serving
            // what it serves; ferry removes nothing it cannot account for.
            return Ok(0);
        };
        let found = self.managed_deployments().await?;
        let routed = self
            .services
            .get_opt(self.config.name.as_str())
            .await
            .map_err(|e| api_error("reading the Service", e))?
            .map(|svc| objects::routed(&svc))
            .unwrap_or_default();
        // The Deployment running the recorded release (not a canary's, which
        // a rollout the last agent did not finish left behind), the one the
        // Service routes to first: its name need not be the version's.
        let keep = found
            .iter()
            .filter(|d| !objects::is_canary(d) && replicas > 0)
            .filter(|d| objects::recorded_release(d).is_some_and(|r| r.version == release.version))
            .max_by_key(|d| routed.get(objects::SET) == Some(&d.name_any()))
            .map(|d| d.name_any());
        let mut adopted = 0;
        for d in &found {
            let name = d.name_any();
            if Some(&name) == keep.as_ref() {
                adopted = d.spec.replicas.map_or(0, |n| u32::try_from(n).unwrap_or(0));
            } else if !name.ends_with(&format!("-{}", objects::MAINTENANCE)) {
                tracing::info!(deployment = %name, "removing a Deployment the state file does not name");
                self.delete_deployment(&name).await;
            }
        }
        if let Some(set) = &keep {
            // A canary the last agent did not finish left the stable
            // Deployment scaled down beside it (removed above): back to the
            // recorded count, so the service serves at full strength.
            if adopted > 0 && adopted != replicas {
                tracing::info!(deployment = %set, from = adopted, to = replicas, "scaling the adopted Deployment back to the recorded replicas");
                self.scale_to(set, replicas).await?;
                adopted = replicas;
            }
        }
        if let (Some(set), true) = (keep, adopted > 0) {
            self.now_serving(release, &set);
            self.route_serving().await?;
        }
        Ok(adopted)
    }

    async fn health(&self) -> ServiceHealth {
        self.read_health().await
    }

    async fn take_metrics(&self) -> Option<ServiceMetrics> {
        None
    }

    async fn snapshot(&self) -> ServiceSnapshot {
        let health = self.health().await;
        let (maintenance, previous) = {
            let known = self.known();
            (known.maintenance.clone(), known.previous.clone())
        };
        let state = service_state(
            self.busy.load(Ordering::Relaxed),
            maintenance.is_some(),
            &health,
        );
        let k = &self.config.kubernetes;
        ServiceSnapshot {
            service: self.config.name.clone(),
            version: health.version,
            previous,
            replicas_desired: health.desired,
            replicas_healthy: health.healthy,
            state,
            maintenance,
            runtime: RUNTIME.to_owned(),
            address: Some(format!(
                "{}.{}.svc:{}",
                self.config.name, k.namespace, k.service_port
            )),
            rollout: self.known().rollout.clone(),
            strategy: Some(self.config.strategy.clone()),
        }
    }

    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    async fn shutdown(&self) {
        // The cluster keeps serving; the next agent adopts what it finds.
    }
}

impl KubernetesService {
    /// The serving set's health, from the watches (read from the API
    /// server until they have synced).
    pub(super) async fn read_health(&self) -> ServiceHealth {
        let Some((name, _, version)) = self.serving() else {
            return ServiceHealth {
                version: None,
                desired: 0,
                healthy: 0,
                replicas: Vec::new(),
            };
        };
        if let Some(health) = self.view.health(&name, &version) {
            return health;
        }
        let deployment = self.deployments.get_opt(&name).await.ok().flatten();
        let selector = objects::selector_string(&objects::set_selector(
            &self.environment,
            &self.config,
            &name,
        ));
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        health::service_health(&version, deployment.as_ref(), &pods)
    }
}
