//! The Kubernetes runtime: a Deployment per version and a Service routing to
//! the serving one, through kube-rs. The cluster owns the replicas and routes
//! the traffic, so [`KubernetesService`] implements the executor's
//! `ServiceBackend` directly; the agent's proxy is not in the path. ferry
//! touches only objects labelled `app.kubernetes.io/managed-by=ferry`, and a
//! restarted agent adopts what it finds.

pub mod objects;
pub mod ready;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::{
    MaintenanceInfo, ReplicaHealth, ServiceHealth, ServiceMetrics, ServiceSnapshot,
};
use ferry_protocol::{EnvName, Version};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::backend::{service_state, ServiceBackend};
use crate::config::{KubernetesOptions, RuntimeKind, ServiceConfig};
use crate::rollout::{ControlRequest, RolloutEnd, RolloutObserver, RolloutPlan};
use crate::runtime::{Progress, Replacement, RuntimeError};
use ferry_protocol::rollout::Strategy;
use tokio::sync::mpsc;

use objects::{check_managed, deployment_name, is_managed, version_label, version_selector};
use ready::{wait_rolled_out, WaitError, Watched};

const RUNTIME: &str = "kubernetes";

fn api_error(what: &str, e: kube::Error) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: RUNTIME,
        detail: format!("{what}: {e}"),
    }
}

/// A client for the cluster the options name: their kubeconfig and context,
/// else `kube::Config::infer` (the pod's service account in a cluster, then
/// `$KUBECONFIG` or `~/.kube/config`). Nothing is sent until it is used.
pub async fn connect(options: &KubernetesOptions) -> Result<Client, RuntimeError> {
    let unavailable = |detail: String| RuntimeError::Unavailable {
        runtime: RUNTIME,
        detail,
    };
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| unavailable(format!("kubeconfig {}: {e}", path.display())))?;
            let chosen = KubeConfigOptions {
                context: options.context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &chosen)
                .await
                .map_err(|e| unavailable(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| unavailable(format!("no cluster configuration found: {e}")))?,
    };
    Client::try_from(config).map_err(|e| unavailable(format!("client: {e}")))
}

#[derive(Default)]
struct Known {
    current: Option<ReleaseSpec>,
    previous: Option<Version>,
    maintenance: Option<MaintenanceInfo>,
}

/// One service on a cluster.
pub struct KubernetesService {
    environment: EnvName,
    config: ServiceConfig,
    deployments: Api<Deployment>,
    services: Api<Service>,
    pods: Api<Pod>,
    known: Arc<Mutex<Known>>,
    op: tokio::sync::Mutex<()>,
    busy: AtomicBool,
    shutdown: CancellationToken,
}

impl KubernetesService {
    /// The service `config` of `environment` on the cluster `client` reaches.
    pub fn new(
        environment: EnvName,
        config: ServiceConfig,
        client: Client,
        shutdown: CancellationToken,
    ) -> Self {
        let namespace = config.kubernetes.namespace.clone();
        KubernetesService {
            environment,
            deployments: Api::namespaced(client.clone(), &namespace),
            services: Api::namespaced(client.clone(), &namespace),
            pods: Api::namespaced(client, &namespace),
            config,
            known: Arc::new(Mutex::new(Known::default())),
            op: tokio::sync::Mutex::new(()),
            busy: AtomicBool::new(false),
            shutdown,
        }
    }

    fn namespace(&self) -> &str {
        &self.config.kubernetes.namespace
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This service's Deployments that ferry created.
    async fn managed_deployments(&self) -> Result<Vec<Deployment>, RuntimeError> {
        let selector =
            objects::selector_string(&objects::service_labels(&self.environment, &self.config));
        let list = self
            .deployments
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error("listing Deployments", e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|d| is_managed(d.labels()))
            .collect())
    }

    /// The Deployment called `name`, if any, refusing one ferry did not create.
    async fn managed_deployment(&self, name: &str) -> Result<Option<Deployment>, RuntimeError> {
        let found = self
            .deployments
            .get_opt(name)
            .await
            .map_err(|e| api_error("reading a Deployment", e))?;
        if let Some(d) = &found {
            check_managed("Deployment", d.labels(), name, self.namespace())?;
        }
        Ok(found)
    }

    async fn delete_deployment(&self, name: &str) {
        if let Err(e) = self
            .deployments
            .delete(name, &DeleteParams::background())
            .await
        {
            tracing::warn!(deployment = name, error = %e, "could not remove a Deployment");
        }
    }

    /// Points the Service at `label`'s pods in one patch, creating it first.
    async fn route_to(&self, label: &str) -> Result<(), RuntimeError> {
        let name = self.config.name.as_str();
        let found = self
            .services
            .get_opt(name)
            .await
            .map_err(|e| api_error("reading the Service", e))?;
        match found {
            None => {
                let svc = objects::service(&self.environment, &self.config, label)?;
                self.services
                    .create(&PostParams::default(), &svc)
                    .await
                    .map_err(|e| api_error("creating the Service", e))?;
            }
            Some(svc) => {
                check_managed("Service", svc.labels(), name, self.namespace())?;
                if objects::routed_version(&svc).as_deref() != Some(label) {
                    let patch = json!({ "spec": { "selector": version_selector(&self.environment, &self.config, label) } });
                    self.services
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| api_error("switching the Service", e))?;
                }
            }
        }
        Ok(())
    }

    /// Waits for Deployment `name` of `label` to be rolled out at `desired`.
    async fn wait(
        &self,
        name: &str,
        label: &str,
        version: &Version,
        desired: u32,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let selector =
            objects::selector_string(&version_selector(&self.environment, &self.config, label));
        let timeout = self
            .config
            .health
            .start_timeout
            .max(std::time::Duration::from_secs(1));
        let timeout = timeout.min(self.config.kubernetes.progress_deadline);
        let watched = Watched {
            deployments: &self.deployments,
            pods: &self.pods,
            name,
            pod_selector: &selector,
        };
        wait_rolled_out(watched, desired, timeout, &self.shutdown, |ready| {
            progress.step(
                "waiting for the Deployment to roll out",
                Some(version),
                ready,
                desired,
            )
        })
        .await
        .map_err(|e| match e {
            WaitError::Interrupted => RuntimeError::Interrupted,
            WaitError::Failed(why) => RuntimeError::Unhealthy(format!(
                "{} {version} did not become ready: {why}; the previous version keeps serving",
                self.config.name
            )),
        })
    }

    async fn deploy_locked(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        replacement: Replacement,
        keep_old: Option<Duration>,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let image = objects::image(release)?;
        let name = deployment_name(self.config.name.as_str(), release.version.as_str());
        let label = version_label(&release.version);
        let existing = self.managed_deployment(&name).await?;
        let serving = self.known().current.as_ref().map(|c| c.version.clone());
        let others: Vec<String> = self
            .managed_deployments()
            .await?
            .into_iter()
            .map(|d| d.name_any())
            .filter(|n| *n != name && !n.ends_with(&format!("-{}", objects::MAINTENANCE)))
            .collect();
        if replacement == Replacement::StopFirst {
            for other in &others {
                self.delete_deployment(other).await;
            }
        }
        let wanted = objects::deployment(
            &self.environment,
            &self.config,
            &name,
            &label,
            release,
            &image,
            replicas,
        )?;
        progress.step(
            "applying the Deployment",
            Some(&release.version),
            0,
            replicas,
        );
        let applied = match existing {
            None => {
                self.deployments
                    .create(&PostParams::default(), &wanted)
                    .await
            }
            Some(_) => {
                // A kept or earlier set of this version: its recorded spec re-applied.
                let patch = json!({ "metadata": { "annotations": wanted.metadata.annotations }, "spec": wanted.spec });
                self.deployments
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            }
        };
        applied.map_err(|e| api_error("applying the Deployment", e))?;
        if let Err(e) = self
            .wait(&name, &label, &release.version, replicas, progress)
            .await
        {
            if serving.as_ref() != Some(&release.version) {
                self.delete_deployment(&name).await;
            }
            return Err(e);
        }
        progress.step(
            "switching the Service",
            Some(&release.version),
            replicas,
            replicas,
        );
        self.route_to(&label).await?;
        match (replacement, keep_old) {
            (Replacement::StopFirst, _) => {}
            (Replacement::HealthGated, None) => {
                for other in &others {
                    self.delete_deployment(other).await;
                }
            }
            (Replacement::HealthGated, Some(keep)) => self.retire_later(others, keep),
        }
        let mut known = self.known();
        if serving.as_ref() != Some(&release.version) {
            known.previous = serving;
        }
        known.current = Some(release.clone());
        Ok(())
    }

    /// Removes the Deployments `names` after `keep` (blue-green's old set,
    /// kept so that a rollback meanwhile is a switch back), except the one
    /// serving by then.
    fn retire_later(&self, names: Vec<String>, keep: Duration) {
        let deployments = self.deployments.clone();
        let known = self.known.clone();
        let service = self.config.name.to_string();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(keep) => {}
            }
            let serving = known.lock().ok().and_then(|k| {
                k.current
                    .as_ref()
                    .map(|c| deployment_name(&service, c.version.as_str()))
            });
            for name in names.into_iter().filter(|n| Some(n) != serving.as_ref()) {
                if let Err(e) = deployments.delete(&name, &DeleteParams::background()).await {
                    tracing::warn!(deployment = %name, error = %e, "could not remove a kept Deployment");
                }
            }
        });
    }

    /// The serving Deployment's name and version label, if something serves.
    fn serving(&self) -> Option<(String, String, Version)> {
        let known = self.known();
        let current = known.current.as_ref()?;
        Some((
            deployment_name(self.config.name.as_str(), current.version.as_str()),
            version_label(&current.version),
            current.version.clone(),
        ))
    }

    async fn set_maintenance_on_cluster(
        &self,
        on: Option<MaintenanceInfo>,
    ) -> Result<(), RuntimeError> {
        let _op = self.op.lock().await;
        let name = deployment_name(self.config.name.as_str(), objects::MAINTENANCE);
        match on {
            Some(info) => {
                let Some(image) = &self.config.kubernetes.maintenance_image else {
                    return Err(RuntimeError::Unsupported(maintenance_refusal(&self.config)));
                };
                let mut config = self.config.clone();
                config
                    .env
                    .insert("FERRY_MAINTENANCE_MESSAGE".into(), info.message.clone());
                let release = ReleaseSpec {
                    version: Version::new(objects::MAINTENANCE)
                        .map_err(|e| RuntimeError::Unsupported(e.to_string()))?,
                    artifact: image.clone(),
                    digest: None,
                    env: Default::default(),
                };
                let wanted = objects::deployment(
                    &self.environment,
                    &config,
                    &name,
                    objects::MAINTENANCE,
                    &release,
                    image,
                    1,
                )?;
                if self.managed_deployment(&name).await?.is_none() {
                    self.deployments
                        .create(&PostParams::default(), &wanted)
                        .await
                        .map_err(|e| api_error("creating the maintenance responder", e))?;
                }
                self.wait(
                    &name,
                    objects::MAINTENANCE,
                    &release.version,
                    1,
                    &crate::runtime::NoProgress,
                )
                .await?;
                self.route_to(objects::MAINTENANCE).await
            }
            None => {
                if let Some((_, label, _)) = self.serving() {
                    self.route_to(&label).await?;
                }
                if self.managed_deployment(&name).await?.is_some() {
                    self.delete_deployment(&name).await;
                }
                Ok(())
            }
        }
    }
}

/// Why maintenance cannot be turned on for `config`, if it cannot.
pub fn maintenance_refusal(config: &ServiceConfig) -> String {
    format!(
        "{} runs on Kubernetes without kubernetes.maintenance_image: there is no responder to switch its Service to; configure one (an image answering 503)",
        config.name
    )
}

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

    /// Blue-green only: the new version's Deployment beside the old, the
    /// Service switched in one patch once it is rolled out, the old one kept
    /// for `keep_old_for_secs`. Canary and rolling need a `RolloutTarget`
    /// this runtime does not have yet.
    async fn roll_out(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        plan: &RolloutPlan,
        _controls: &mut mpsc::Receiver<ControlRequest>,
        progress: &dyn Progress,
        _observer: &dyn RolloutObserver,
    ) -> Result<RolloutEnd, RuntimeError> {
        let Strategy::BlueGreen { keep_old_for_secs } = plan.strategy else {
            return Err(RuntimeError::Unsupported(format!(
                "the kubernetes runtime does not support {} deploys yet (blue-green and recreate only)",
                plan.strategy.kind()
            )));
        };
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
        let Some(keep) =
            release.map(|r| deployment_name(self.config.name.as_str(), r.version.as_str()))
        else {
            // No record (a lost state directory): the cluster keeps serving
            // what it serves; ferry removes nothing it cannot account for.
            return Ok(0);
        };
        let keep = Some(keep);
        let mut adopted = 0;
        for found in self.managed_deployments().await? {
            let name = found.name_any();
            if Some(&name) == keep.as_ref() && replicas > 0 {
                adopted = found
                    .spec
                    .replicas
                    .map_or(0, |n| u32::try_from(n).unwrap_or(0));
            } else if !name.ends_with(&format!("-{}", objects::MAINTENANCE)) {
                tracing::info!(deployment = %name, "removing a Deployment the state file does not name");
                self.delete_deployment(&name).await;
            }
        }
        if let (Some(release), true) = (release, adopted > 0) {
            if self.known().maintenance.is_none() {
                self.route_to(&version_label(&release.version)).await?;
            }
            self.known().current = Some(release.clone());
        }
        Ok(adopted)
    }

    async fn health(&self) -> ServiceHealth {
        let Some((name, label, version)) = self.serving() else {
            return ServiceHealth {
                version: None,
                desired: 0,
                healthy: 0,
                replicas: Vec::new(),
            };
        };
        let deployment = self.deployments.get_opt(&name).await.ok().flatten();
        let desired = deployment
            .as_ref()
            .and_then(|d| d.spec.replicas)
            .map_or(0, |n| u32::try_from(n).unwrap_or(0));
        let selector =
            objects::selector_string(&version_selector(&self.environment, &self.config, &label));
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let replicas: Vec<ReplicaHealth> = pods
            .iter()
            .map(|pod| {
                let status = pod.status.as_ref();
                let ready = status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let restarts = status
                    .and_then(|s| s.container_statuses.as_ref())
                    .map_or(0, |c| {
                        c.iter()
                            .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
                            .sum()
                    });
                ReplicaHealth {
                    replica: pod.name_any(),
                    version: version.clone(),
                    address: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
                    healthy: ready,
                    restarts,
                }
            })
            .collect();
        let healthy = deployment
            .as_ref()
            .and_then(|d| d.status.as_ref()?.ready_replicas)
            .map_or(0, |n| u32::try_from(n).unwrap_or(0));
        ServiceHealth {
            version: Some(version),
            desired,
            healthy,
            replicas,
        }
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
            rollout: None,
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
