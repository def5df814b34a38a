//! What the cluster says about a service's serving set: desired and ready
//! replicas of its Deployment, and per pod whether it is ready, how often its
//! containers restarted, and why one waits (the reasons that fail a deploy).
//! A [`ClusterView`] keeps the service's Deployments and pods as watches
//! report them (`kube::runtime::reflector`), so the agent's periodic health
//! events read a cache instead of polling the API server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferry_protocol::event::{ReplicaHealth, ServiceHealth};
use ferry_protocol::Version;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{objects, ready};

/// A service's Deployments and pods, as their watches last reported them.
#[derive(Clone)]
pub struct ClusterView {
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    /// Both watches have listed everything once.
    synced: Arc<AtomicBool>,
}

impl ClusterView {
    /// Watches the Deployments and pods `selector` selects until `shutdown`.
    pub fn watch(
        deployments: Api<Deployment>,
        pods: Api<Pod>,
        selector: &str,
        shutdown: CancellationToken,
    ) -> ClusterView {
        let config = watcher::Config::default().labels(selector);
        let (deployment_store, deployment_writer) = reflector::store();
        let (pod_store, pod_writer) = reflector::store();
        let deployment_events =
            reflector::reflector(deployment_writer, watcher(deployments, config.clone()))
                .default_backoff()
                .touched_objects();
        let pod_events = reflector::reflector(pod_writer, watcher(pods, config))
            .default_backoff()
            .touched_objects();
        let synced = Arc::new(AtomicBool::new(false));
        let view = ClusterView {
            deployments: deployment_store,
            pods: pod_store,
            synced: synced.clone(),
        };
        let stores = view.clone();
        tokio::spawn(async move {
            let watched = async {
                futures::join!(
                    deployment_events.for_each(|event| async move {
                        if let Err(e) = event {
                            tracing::warn!(error = %e, "watching the cluster's Deployments");
                        }
                    }),
                    pod_events.for_each(|event| async move {
                        if let Err(e) = event {
                            tracing::warn!(error = %e, "watching the cluster's pods");
                        }
                    }),
                )
            };
            let ready = async {
                let (d, p) = futures::join!(
                    stores.deployments.wait_until_ready(),
                    stores.pods.wait_until_ready()
                );
                if d.is_ok() && p.is_ok() {
                    synced.store(true, Ordering::Relaxed);
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = watched => {}
                () = ready => {}
            }
        });
        view
    }

    /// The health of `serving` from Deployment `set`, if the watches have
    /// synced (else the caller reads the API server).
    pub fn health(&self, set: &str, serving: &Version) -> Option<ServiceHealth> {
        if !self.synced.load(Ordering::Relaxed) {
            return None;
        }
        let deployment = self.deployments.find(|d| d.name_any() == set);
        let mut pods: Vec<Pod> = self
            .pods
            .state_filter(|p| p.labels().get(objects::SET).map(String::as_str) == Some(set))
            .iter()
            .map(|p| Pod::clone(p))
            .collect();
        pods.sort_by_key(|p| p.name_any());
        Some(service_health(serving, deployment.as_deref(), &pods))
    }
}

fn count(n: Option<i32>) -> u32 {
    n.map_or(0, |n| u32::try_from(n).unwrap_or(0))
}

/// Whether `pod` is ready.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Restarts of all of `pod`'s containers.
pub fn pod_restarts(pod: &Pod) -> u32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| {
            c.iter()
                .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
                .sum()
        })
}

/// One pod as a replica: its version is the one its template recorded
/// (`serving` if it recorded none).
pub fn replica(pod: &Pod, serving: &Version) -> ReplicaHealth {
    let version = pod
        .annotations()
        .get(objects::VERSION)
        .and_then(|v| Version::new(v).ok())
        .unwrap_or_else(|| serving.clone());
    ReplicaHealth {
        replica: pod.name_any(),
        version,
        address: pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default(),
        healthy: pod_ready(pod),
        restarts: pod_restarts(pod),
        reason: ready::waiting_reason(pod),
    }
}

/// The health of `serving` from its Deployment and pods.
pub fn service_health(
    serving: &Version,
    deployment: Option<&Deployment>,
    pods: &[Pod],
) -> ServiceHealth {
    ServiceHealth {
        version: Some(serving.clone()),
        desired: count(deployment.and_then(|d| d.spec.replicas)),
        healthy: count(deployment.and_then(|d| d.status.as_ref()?.ready_replicas)),
        replicas: pods.iter().map(|p| replica(p, serving)).collect(),
    }
}

/// The pods of `pods` that wait for a reason that will not heal (a pull
/// failure, a crash loop): each reason with the container's message.
pub fn pod_problems(pods: &[Pod]) -> Vec<String> {
    pods.iter().filter_map(ready::pod_failure).collect()
}
