//! Rolling updates and canaries on a cluster without a service mesh.
//!
//! Rolling: the serving Deployment takes the new version in place, at the
//! pace of ferry's batches (`maxSurge`/`maxUnavailable`), judged as
//! `kubectl rollout status` judges it; a failure puts the old version back
//! in place (as `kubectl rollout undo`).
//!
//! Canary, as Argo Rollouts' basic canary: a second Deployment of the new
//! version behind the same Service, which selects every set of the service
//! while the canary runs, and the weight approximated by the ratio of ready
//! replicas (10 replicas at 10% = 1 canary and 9 stable). The rollout driver
//! decides when, through [`RolloutTarget`]; the metrics provider judges it,
//! since the agent's proxy sees none of the traffic. Promotion: the stable
//! Deployment takes the new version in place and the canary's is removed;
//! an abort removes the canary's and gives the stable one back its replicas.

use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::rollout::{
    AbortReason, RolloutEvent, RolloutPhase, RolloutState, RolloutStatus, StrategyKind,
};
use ferry_protocol::ServiceName;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{api_error, health, objects, Canary, KubernetesService};
use crate::metrics_provider::PrometheusProvider;
use crate::rollout::{RolloutEnd, RolloutObserver, RolloutRequest, RolloutTarget};
use crate::runtime::{NoProgress, Progress, Replacement, RuntimeError};
use ferry_analysis::SetWindow;
use objects::{version_label, DeploymentSpec};

/// Canary and stable replicas for `weight` percent of `total`: the canary's
/// share rounded, at least one canary and, below 100%, at least one stable
/// replica beside it (so 1 replica at 10% runs 1 and 1).
pub fn replica_split(total: u32, weight: u8) -> (u32, u32) {
    let total = total.max(1);
    if weight >= 100 {
        return (total, 0);
    }
    let canary = ((u64::from(total) * u64::from(weight) + 50) / 100).clamp(1, u64::from(total));
    let canary = u32::try_from(canary).unwrap_or(total);
    (canary, total.saturating_sub(canary).max(1))
}

/// The share of ready replicas `canary` of `canary + stable` is, rounded.
pub fn weight_reached(canary: u32, stable: u32) -> u8 {
    let all = u64::from(canary) + u64::from(stable);
    if all == 0 {
        return 0;
    }
    u8::try_from((u64::from(canary) * 100 + all / 2) / all).unwrap_or(100)
}

/// Why a canary cannot run on this service.
pub fn canary_refusal(service: &ServiceName) -> String {
    format!(
        "{service} runs on Kubernetes with the proxy metrics provider: the agent's proxy sees none of a cluster's traffic, so nothing could judge a canary; set [services.{service}.metrics] provider = \"prometheus\""
    )
}

impl KubernetesService {
    pub(super) async fn scale_to(&self, name: &str, replicas: u32) -> Result<(), RuntimeError> {
        let patch = json!({ "spec": { "replicas": replicas } });
        self.deployments
            .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| api_error("scaling a Deployment", e))
    }

    async fn replicas_of(&self, name: &str) -> u32 {
        self.deployments
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|d| d.spec.replicas)
            .map_or(0, |n| u32::try_from(n).unwrap_or(0))
    }

    fn canary_state(&self) -> Result<Canary, RuntimeError> {
        self.known()
            .canary
            .clone()
            .ok_or_else(|| RuntimeError::Unsupported("no canary is running".into()))
    }

    /// Rolls `release` out in place on the serving Deployment at `pace`
    /// (batch size, max unavailable).
    pub(super) async fn roll_in_place(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        pace: (u32, u32),
        progress: &dyn Progress,
        observer: &dyn RolloutObserver,
    ) -> Result<RolloutEnd, RuntimeError> {
        let serving = self.serving();
        let current = self.known().current.clone();
        let (Some((set, _, was)), Some(current)) = (serving, current) else {
            self.deploy_locked(release, replicas, Replacement::HealthGated, None, progress)
                .await?;
            return Ok(RolloutEnd::Promoted {
                detail: format!(
                    "{} is the first version; deployed health-gated without a rolling update",
                    release.version
                ),
            });
        };
        let mut status = RolloutStatus {
            strategy: StrategyKind::Rolling,
            version: release.version.clone(),
            state: RolloutState::Progressing,
            step: 1,
            steps: 1,
            weight_percent: 0,
            weight_reached_percent: None,
        };
        let emit = |status: &RolloutStatus, phase| {
            self.known().rollout = Some(status.clone());
            observer.event(RolloutEvent {
                status: status.clone(),
                phase,
            });
        };
        emit(&status, RolloutPhase::StepStarted);
        let strategy = objects::rolling_update(pace.0, pace.1);
        let before = self.replicas_of(&set).await;
        progress.step(
            &format!("rolling Deployment {set} in place"),
            Some(&release.version),
            0,
            replicas,
        );
        match self
            .apply_and_wait(
                &set,
                release,
                replicas,
                true,
                Some(strategy.clone()),
                progress,
            )
            .await
        {
            Ok(()) => {
                self.now_serving(release, &set);
                status.state = RolloutState::Promoted;
                status.weight_percent = 100;
                emit(&status, RolloutPhase::Promoted);
                let pace = &strategy["rollingUpdate"];
                Ok(RolloutEnd::Promoted {
                    detail: format!(
                        "rolling update of Deployment {set} to {} done in place (maxSurge {}, maxUnavailable {})",
                        release.version, pace["maxSurge"], pace["maxUnavailable"]
                    ),
                })
            }
            Err(RuntimeError::Interrupted) => Err(RuntimeError::Interrupted),
            Err(e) => {
                // As `kubectl rollout undo`: the old version back in place.
                let undo = self
                    .apply_and_wait(&set, &current, before, true, Some(strategy), &NoProgress)
                    .await;
                let detail = match undo {
                    Ok(()) => format!("{e}; Deployment {set} was rolled back in place to {was}"),
                    Err(undo) => {
                        format!("{e}; rolling Deployment {set} back to {was} failed: {undo}")
                    }
                };
                let reason = AbortReason::Unhealthy { detail };
                status.state = RolloutState::Aborted;
                emit(
                    &status,
                    RolloutPhase::Aborted {
                        reason: reason.clone(),
                    },
                );
                Ok(RolloutEnd::Aborted(reason))
            }
        }
    }

    /// Runs a canary of `release` beside the serving set, driven by the
    /// rollout driver.
    pub(super) async fn canary(
        &self,
        request: RolloutRequest<'_>,
    ) -> Result<RolloutEnd, RuntimeError> {
        let (release, replicas, progress) = (request.release, request.replicas, request.progress);
        if self.metrics.is_none() {
            return Err(RuntimeError::Unsupported(canary_refusal(&self.config.name)));
        }
        if self.known().maintenance.is_some() {
            return Err(RuntimeError::Unsupported(format!(
                "{} is in maintenance: its Service routes to the responder; end maintenance before a canary",
                self.config.name
            )));
        }
        let Some(stable) = self.serving() else {
            self.deploy_locked(release, replicas, Replacement::HealthGated, None, progress)
                .await?;
            return Ok(RolloutEnd::Promoted {
                detail: format!(
                    "{} is the first version; deployed health-gated without a canary",
                    release.version
                ),
            });
        };
        // A kept blue-green set would take traffic once the Service selects
        // every set of the service.
        for other in self.managed_deployments().await? {
            let name = kube::ResourceExt::name_any(&other);
            if name != stable.0 && !name.ends_with(&format!("-{}", objects::MAINTENANCE)) {
                self.delete_deployment(&name).await;
            }
        }
        let stable_before = self.replicas_of(&stable.0).await;
        self.known().canary = Some(Canary {
            name: objects::canary_name(self.config.name.as_str(), release.version.as_str()),
            release: release.clone(),
            total: replicas,
            stable,
            stable_before,
            stable_now: stable_before,
        });
        let end = crate::rollout::drive(self, request).await;
        self.known().canary = None;
        end
    }
}

#[async_trait]
impl RolloutTarget for KubernetesService {
    fn name(&self) -> &ServiceName {
        &self.config.name
    }

    fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    fn set_rollout_status(&self, status: Option<RolloutStatus>) {
        self.known().rollout = status;
    }

    /// The canary's Deployment at one replica, rolled out; the Service still
    /// selects the stable set only.
    async fn start_next(
        &self,
        release: &ReleaseSpec,
        _replicas: u32,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let canary = self.canary_state()?;
        let image = objects::image(release)?;
        let label = version_label(&release.version);
        let exists = self.managed_deployment(&canary.name).await?.is_some();
        let spec = DeploymentSpec {
            name: &canary.name,
            version_label: &label,
            release,
            image: &image,
            replicas: 1,
            canary: true,
        };
        self.apply(&spec, exists, None).await?;
        if let Err(e) = self
            .wait(&canary.name, &label, &release.version, 1, progress)
            .await
        {
            self.delete_deployment(&canary.name).await;
            return Err(e);
        }
        Ok(())
    }

    /// The canary scaled to its share first, the Service then selecting
    /// both sets, the stable set scaled down to the rest.
    async fn route_next(&self, weight: u8) -> Result<Option<u8>, RuntimeError> {
        let canary = self.canary_state()?;
        let (canary_n, stable_n) = replica_split(canary.total, weight);
        let label = version_label(&canary.release.version);
        self.scale_to(&canary.name, canary_n).await?;
        self.wait(
            &canary.name,
            &label,
            &canary.release.version,
            canary_n,
            &NoProgress,
        )
        .await?;
        self.select(objects::service_selector(&self.environment, &self.config))
            .await?;
        let (set, stable_label, stable_version) = &canary.stable;
        if canary.stable_now != stable_n {
            self.scale_to(set, stable_n).await?;
            self.wait(set, stable_label, stable_version, stable_n, &NoProgress)
                .await?;
            if let Some(c) = self.known().canary.as_mut() {
                c.stable_now = stable_n;
            }
        }
        let reached = weight_reached(canary_n, stable_n);
        tracing::info!(service = %self.config.name, weight, reached, canary = canary_n, stable = stable_n, "canary weight by replica ratio");
        Ok(Some(reached))
    }

    async fn check_next(&self) -> Option<String> {
        let canary = self.canary_state().ok()?;
        let selector = objects::selector_string(&objects::set_selector(
            &self.environment,
            &self.config,
            &canary.name,
        ));
        let pods = self
            .pods
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        health::pod_problems(&pods).into_iter().next().or_else(|| {
            pods.iter()
                .find(|p| !health::pod_ready(p))
                .map(|p| format!("pod {} is not ready", kube::ResourceExt::name_any(p)))
        })
    }

    /// Nothing: the proxy is not in the path; the provider is asked instead.
    fn take_next_window(&self) -> SetWindow {
        SetWindow::new()
    }

    fn take_stable_window(&self) -> SetWindow {
        SetWindow::new()
    }

    /// The Service back on the stable set at once, the canary's Deployment
    /// removed, the stable one given back its replicas.
    async fn abort_next(&self) {
        let Ok(canary) = self.canary_state() else {
            return;
        };
        if let Err(e) = self.route_serving().await {
            tracing::warn!(service = %self.config.name, error = %e, "could not switch the Service back to the stable set");
        }
        self.delete_deployment(&canary.name).await;
        let (set, label, version) = &canary.stable;
        if canary.stable_now != canary.stable_before {
            let restored = match self.scale_to(set, canary.stable_before).await {
                Ok(()) => {
                    self.wait(set, label, version, canary.stable_before, &NoProgress)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = restored {
                tracing::warn!(deployment = %set, error = %e, "could not give the stable set back its replicas");
            }
        }
        if let Some(c) = self.known().canary.as_mut() {
            c.stable_now = c.stable_before;
        }
    }

    /// The stable Deployment takes the new version in place at all the
    /// replicas (the canary's serving beside it meanwhile), then the Service
    /// selects it alone and the canary's Deployment goes.
    async fn promote_next(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        _keep_old: Option<Duration>,
    ) {
        let Ok(canary) = self.canary_state() else {
            return;
        };
        let set = canary.stable.0.clone();
        let pace = self.in_place_pace();
        match self
            .apply_and_wait(&set, release, replicas, true, pace, &NoProgress)
            .await
        {
            Ok(()) => {
                self.now_serving(release, &set);
                if let Err(e) = self.route_serving().await {
                    tracing::warn!(service = %self.config.name, error = %e, "could not point the Service at the promoted set");
                    return;
                }
                self.delete_deployment(&canary.name).await;
            }
            // The canary's Deployment, at every replica by now, keeps
            // serving beside it; the next deploy replaces both.
            Err(e) => {
                tracing::error!(deployment = %set, error = %e, "the stable Deployment did not take the promoted version; the canary's keeps serving")
            }
        }
    }

    async fn stable_count(&self) -> u32 {
        self.canary_state().map_or(0, |c| c.stable_now)
    }

    async fn stop_stable(&self, count: u32) {
        let Ok(canary) = self.canary_state() else {
            return;
        };
        let now = canary.stable_now.saturating_sub(count);
        if let Err(e) = self.scale_to(&canary.stable.0, now).await {
            tracing::warn!(error = %e, "could not scale the stable set down");
            return;
        }
        if let Some(c) = self.known().canary.as_mut() {
            c.stable_now = now;
        }
    }

    async fn restore_stable(&self) {
        let Ok(canary) = self.canary_state() else {
            return;
        };
        if let Err(e) = self.scale_to(&canary.stable.0, canary.stable_before).await {
            tracing::warn!(error = %e, "could not give the stable set back its replicas");
            return;
        }
        if let Some(c) = self.known().canary.as_mut() {
            c.stable_now = c.stable_before;
        }
    }

    fn metrics_provider(&self) -> Option<&PrometheusProvider> {
        self.metrics.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_is_a_ratio_of_replicas_with_at_least_one_canary() {
        assert_eq!(replica_split(10, 10), (1, 9));
        assert_eq!(replica_split(10, 25), (3, 7), "2.5 rounds up");
        assert_eq!(weight_reached(3, 7), 30);
        assert_eq!(replica_split(3, 10), (1, 2), "never no canary");
        assert_eq!(weight_reached(1, 2), 33);
        assert_eq!(
            replica_split(3, 90),
            (3, 1),
            "a stable replica beside it below 100%"
        );
        assert_eq!(replica_split(1, 50), (1, 1));
        assert_eq!(weight_reached(1, 1), 50);
        assert_eq!(replica_split(4, 100), (4, 0));
        assert_eq!(weight_reached(4, 0), 100);
    }
}
