//! The Kubernetes runtime: a Deployment per version and a Service routing to
//! the serving one, through kube-rs. The cluster owns the replicas and routes
//! the traffic, so [`KubernetesService`] implements the executor's
//! `ServiceBackend` directly; the agent's proxy is not in the path. ferry
//! touches only objects labelled `app.kubernetes.io/managed-by=ferry`, and a
//! restarted agent adopts what it finds.

mod backend;
pub mod health;
pub mod objects;
pub mod ready;
mod rollouts;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::MaintenanceInfo;
use ferry_protocol::rollout::{RolloutStatus, Strategy};
use ferry_protocol::{EnvName, Version};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{KubernetesOptions, ServiceConfig};
use crate::metrics_provider::PrometheusProvider;
use crate::runtime::{Progress, Replacement, RuntimeError};

use objects::{check_managed, deployment_name, is_managed, version_label, DeploymentSpec};
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

/// A canary in progress.
#[derive(Clone, Debug)]
struct Canary {
    /// Its Deployment.
    name: String,
    /// The release it runs.
    release: ReleaseSpec,
    /// The replicas of both sets together.
    total: u32,
    /// The stable Deployment, its pods' version label and version.
    stable: (String, String, Version),
    /// The stable Deployment's replicas before the canary, and now.
    stable_before: u32,
    stable_now: u32,
}

#[derive(Default)]
struct Known {
    current: Option<ReleaseSpec>,
    /// The Deployment running `current`. Not always named after it: a
    /// rolling update or a canary's promotion gives a Deployment a new
    /// version in place.
    serving: Option<String>,
    previous: Option<Version>,
    maintenance: Option<MaintenanceInfo>,
    rollout: Option<RolloutStatus>,
    canary: Option<Canary>,
}

/// One service on a cluster.
pub struct KubernetesService {
    environment: EnvName,
    config: ServiceConfig,
    deployments: Api<Deployment>,
    services: Api<Service>,
    pods: Api<Pod>,
    known: Arc<Mutex<Known>>,
    view: health::ClusterView,
    metrics: Option<PrometheusProvider>,
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
        let deployments = Api::namespaced(client.clone(), &namespace);
        let pods = Api::namespaced(client.clone(), &namespace);
        let view = health::ClusterView::watch(
            Api::clone(&deployments),
            Api::clone(&pods),
            &objects::selector_string(&objects::service_selector(&environment, &config)),
            shutdown.clone(),
        );
        KubernetesService {
            view,
            metrics: PrometheusProvider::configured(&config.metrics, &environment, &config.name),
            environment,
            deployments,
            services: Api::namespaced(client.clone(), &namespace),
            pods,
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

    /// Points the Service at the Deployment `set`'s pods in one patch,
    /// creating it first.
    async fn route_to(&self, set: &str) -> Result<(), RuntimeError> {
        self.select(objects::set_selector(&self.environment, &self.config, set))
            .await
    }

    /// Points the Service at the pods `selector` selects in one patch (a
    /// no-op when it already does), creating it first.
    async fn select(&self, selector: BTreeMap<String, String>) -> Result<(), RuntimeError> {
        let name = self.config.name.as_str();
        let found = self
            .services
            .get_opt(name)
            .await
            .map_err(|e| api_error("reading the Service", e))?;
        match found {
            None => {
                let svc = objects::service(&self.environment, &self.config, &selector)?;
                self.services
                    .create(&PostParams::default(), &svc)
                    .await
                    .map_err(|e| api_error("creating the Service", e))?;
            }
            Some(svc) => {
                check_managed("Service", svc.labels(), name, self.namespace())?;
                let routed = objects::routed(&svc);
                if routed != selector {
                    // A merge patch: keys the new selector lacks are nulled.
                    let mut patch: serde_json::Map<String, serde_json::Value> = routed
                        .keys()
                        .map(|k| (k.clone(), serde_json::Value::Null))
                        .collect();
                    patch.extend(selector.into_iter().map(|(k, v)| (k, json!(v))));
                    self.services
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(&json!({ "spec": { "selector": patch } })),
                        )
                        .await
                        .map_err(|e| api_error("switching the Service", e))?;
                }
            }
        }
        Ok(())
    }

    /// Points the Service at the serving set, unless maintenance holds it.
    async fn route_serving(&self) -> Result<(), RuntimeError> {
        let (serving, maintenance) = {
            let known = self.known();
            (known.serving.clone(), known.maintenance.is_some())
        };
        match serving {
            Some(set) if !maintenance => self.route_to(&set).await,
            _ => Ok(()),
        }
    }

    /// Waits for Deployment `name` to be rolled out at `desired` pods of
    /// `version` (its label `label`), failing at once on a pod of it that
    /// cannot start.
    async fn wait(
        &self,
        name: &str,
        label: &str,
        version: &Version,
        desired: u32,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let selector = objects::pods_of(&self.environment, &self.config, name, label);
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

    /// Creates the Deployment `spec` describes, or gives the existing one
    /// its spec (with `strategy`, if any, as its pace): a kept set's spec
    /// re-applied, or a new version in place.
    async fn apply(
        &self,
        spec: &DeploymentSpec<'_>,
        exists: bool,
        strategy: Option<serde_json::Value>,
    ) -> Result<(), RuntimeError> {
        let wanted = objects::deployment(&self.environment, &self.config, spec)?;
        let applied = if exists {
            let mut patch = json!({
                "metadata": { "labels": wanted.metadata.labels, "annotations": wanted.metadata.annotations },
                "spec": wanted.spec,
            });
            if let Some(strategy) = strategy {
                patch["spec"]["strategy"] = strategy;
            }
            self.deployments
                .patch(spec.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        } else {
            self.deployments
                .create(&PostParams::default(), &wanted)
                .await
        };
        applied
            .map(|_| ())
            .map_err(|e| api_error("applying the Deployment", e))
    }

    /// The pace of an in-place update: the configured rolling batches, else
    /// the Deployment's own default.
    fn in_place_pace(&self) -> Option<serde_json::Value> {
        match self.config.strategy {
            Strategy::Rolling {
                batch_size,
                max_unavailable,
            } => Some(objects::rolling_update(batch_size, max_unavailable)),
            _ => None,
        }
    }

    /// Gives Deployment `name` `release` at `replicas` and waits for it.
    async fn apply_and_wait(
        &self,
        name: &str,
        release: &ReleaseSpec,
        replicas: u32,
        exists: bool,
        strategy: Option<serde_json::Value>,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let image = objects::image(release)?;
        let label = version_label(&release.version);
        let spec = DeploymentSpec {
            name,
            version_label: &label,
            release,
            image: &image,
            replicas,
            canary: false,
        };
        self.apply(&spec, exists, strategy).await?;
        self.wait(name, &label, &release.version, replicas, progress)
            .await
    }

    /// Records `release` as serving from Deployment `set`.
    fn now_serving(&self, release: &ReleaseSpec, set: &str) {
        let mut known = self.known();
        let was = known.current.as_ref().map(|c| c.version.clone());
        if was.as_ref() != Some(&release.version) {
            known.previous = was;
        }
        known.current = Some(release.clone());
        known.serving = Some(set.to_owned());
    }

    async fn deploy_locked(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        replacement: Replacement,
        keep_old: Option<Duration>,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        objects::image(release)?;
        let name = deployment_name(self.config.name.as_str(), release.version.as_str());
        let existing = self.managed_deployment(&name).await?;
        let (serving, serving_set) = {
            let known = self.known();
            (known.current.clone(), known.serving.clone())
        };
        // The serving Deployment itself (named after this version, running
        // another since a rolling update): the version goes back in place.
        let in_place = serving_set.as_deref() == Some(name.as_str());
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
        progress.step(
            "applying the Deployment",
            Some(&release.version),
            0,
            replicas,
        );
        let pace = in_place.then(|| self.in_place_pace()).flatten();
        if let Err(e) = self
            .apply_and_wait(&name, release, replicas, existing.is_some(), pace, progress)
            .await
        {
            match (&serving, in_place) {
                // As `kubectl rollout undo`: the serving release back in place.
                (Some(current), true) if current.version != release.version => {
                    if let Err(undo) = self
                        .apply_and_wait(&name, current, replicas, true, None, progress)
                        .await
                    {
                        tracing::warn!(deployment = %name, error = %undo, "could not undo the in-place update");
                    }
                }
                _ if serving.as_ref().map(|c| &c.version) != Some(&release.version) => {
                    self.delete_deployment(&name).await;
                }
                _ => {}
            }
            return Err(e);
        }
        progress.step(
            "switching the Service",
            Some(&release.version),
            replicas,
            replicas,
        );
        self.now_serving(release, &name);
        self.route_serving().await?;
        match (replacement, keep_old) {
            (Replacement::StopFirst, _) => {}
            (Replacement::HealthGated, None) => {
                for other in &others {
                    self.delete_deployment(other).await;
                }
            }
            (Replacement::HealthGated, Some(keep)) => self.retire_later(others, keep),
        }
        Ok(())
    }

    /// Removes the Deployments `names` after `keep` (blue-green's old set,
    /// kept so that a rollback meanwhile is a switch back), except the one
    /// serving by then.
    fn retire_later(&self, names: Vec<String>, keep: Duration) {
        let deployments = self.deployments.clone();
        let known = self.known.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(keep) => {}
            }
            let serving = known.lock().ok().and_then(|k| k.serving.clone());
            for name in names.into_iter().filter(|n| Some(n) != serving.as_ref()) {
                if let Err(e) = deployments.delete(&name, &DeleteParams::background()).await {
                    tracing::warn!(deployment = %name, error = %e, "could not remove a kept Deployment");
                }
            }
        });
    }

    /// The serving Deployment's name, its pods' version label and the
    /// version, if something serves.
    fn serving(&self) -> Option<(String, String, Version)> {
        let known = self.known();
        let current = known.current.as_ref()?;
        Some((
            known.serving.clone()?,
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
                    &DeploymentSpec {
                        name: &name,
                        version_label: objects::MAINTENANCE,
                        release: &release,
                        image,
                        replicas: 1,
                        canary: false,
                    },
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
                self.route_to(&name).await
            }
            None => {
                if let Some((set, _, _)) = self.serving() {
                    self.route_to(&set).await?;
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
