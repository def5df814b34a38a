//! What the command executor drives: one service on one runtime
//! ([`ServiceBackend`]): deploy a release health-gated, roll it out, verify
//! it after a switch, scale, maintenance, snapshot, stop. Runtimes where the
//! agent owns the replicas (processes, Docker) implement it once, in
//! `ManagedService` (in `managed/`), which adds the agent's proxy, health
//! checks and crash restarts on top of a `ReplicaRuntime`.
//! A runtime where a cluster owns the replicas and routes the traffic
//! (Kubernetes: a Deployment and a Service) implements [`ServiceBackend`]
//! directly, and its rollouts through the rollout driver's `RolloutTarget`.

use async_trait::async_trait;
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::{
    MaintenanceInfo, ServiceHealth, ServiceMetrics, ServiceSnapshot, ServiceState,
};
use ferry_protocol::rollout::StrategyKind;
use ferry_protocol::Version;

use crate::config::RuntimeKind;
use crate::rollout::{RolloutEnd, RolloutObserver, RolloutRequest, Verification};
use crate::runtime::{Progress, Replacement, RuntimeError};
use ferry_analysis::Thresholds;

/// The state a snapshot reports, the same for every backend: a command in
/// progress first, then maintenance, then what the replicas say.
pub fn service_state(busy: bool, maintenance: bool, health: &ServiceHealth) -> ServiceState {
    if busy {
        ServiceState::Deploying
    } else if maintenance {
        ServiceState::Maintenance
    } else if health.version.is_none() {
        ServiceState::Idle
    } else if health.desired == 0 {
        ServiceState::Stopped
    } else if health.healthy < health.desired {
        ServiceState::Degraded
    } else {
        ServiceState::Running
    }
}

/// One service as the command executor drives it.
#[async_trait]
pub trait ServiceBackend: Send + Sync {
    /// Runtime name for snapshots.
    fn runtime(&self) -> RuntimeKind;

    /// Replaces the running release with `release` at `replicas`. On failure
    /// the previous release keeps serving (with [`Replacement::HealthGated`]).
    async fn deploy(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        replacement: Replacement,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError>;

    /// Rolls `release` out progressively (canary, blue-green, rolling) per
    /// `plan`, taking operator `controls` while it runs. Backends without
    /// the agent's proxy in the path (Kubernetes) cannot weigh traffic, and
    /// refuse with [`RuntimeError::Unsupported`] by default.
    async fn roll_out(&self, request: RolloutRequest<'_>) -> Result<RolloutEnd, RuntimeError> {
        Err(RuntimeError::Unsupported(format!(
            "the {} runtime does not support {} deploys (it has no agent proxy to weigh traffic)",
            self.runtime().as_str(),
            request.plan.strategy.kind()
        )))
    }

    /// Watches `version`, which now serves everything, for
    /// `thresholds.verify_for` after a switch (rolling back on a breach is
    /// the caller's). Backends that cannot see the traffic
    /// refuse with [`RuntimeError::Unsupported`] by default.
    async fn verify(
        &self,
        _version: &Version,
        _strategy: StrategyKind,
        _thresholds: &Thresholds,
        _observer: &dyn RolloutObserver,
    ) -> Result<Verification, RuntimeError> {
        Err(RuntimeError::Unsupported(format!(
            "the {} runtime cannot verify a deploy (it sees none of the traffic)",
            self.runtime().as_str()
        )))
    }

    /// Changes the replica count of the running release.
    async fn scale(&self, replicas: u32, progress: &dyn Progress) -> Result<(), RuntimeError>;

    /// Turns maintenance on (`Some`) or off.
    fn set_maintenance(&self, maintenance: Option<MaintenanceInfo>);

    /// Why maintenance cannot be turned on (`on`) or off here, if it cannot.
    fn maintenance_refusal(&self, _on: bool) -> Option<String> {
        None
    }

    /// Turns maintenance on or off for a command, where that takes work
    /// outside the agent (switching a Kubernetes Service to a responder).
    async fn apply_maintenance(
        &self,
        maintenance: Option<MaintenanceInfo>,
    ) -> Result<(), RuntimeError> {
        self.set_maintenance(maintenance);
        Ok(())
    }

    /// Takes over what an earlier agent left running of `release` at
    /// `replicas` (`None` or 0: nothing is to run, leftovers are removed).
    /// Returns how many replicas were adopted; 0 means the caller deploys
    /// afresh. Backends whose replicas end with the agent adopt nothing.
    async fn adopt(
        &self,
        _release: Option<&ReleaseSpec>,
        _replicas: u32,
    ) -> Result<u32, RuntimeError> {
        Ok(0)
    }

    /// Health of every replica.
    async fn health(&self) -> ServiceHealth;

    /// Traffic since the last call, if this backend sees the traffic, with
    /// what each replica uses where the runtime measures it.
    async fn take_metrics(&self) -> Option<ServiceMetrics>;

    /// The service's state for heartbeats and status.
    async fn snapshot(&self) -> ServiceSnapshot;

    /// Marks a command in progress (for the `deploying` state).
    fn set_busy(&self, busy: bool);

    /// Stops the proxy and supervision, and every replica unless replicas
    /// outlive the agent (then they keep serving and the next agent adopts them).
    async fn shutdown(&self);
}
