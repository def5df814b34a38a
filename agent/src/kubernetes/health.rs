//! What the cluster says about a service's serving set: desired and ready
//! replicas of its Deployment, and per pod whether it is ready, how often its
//! containers restarted, and why one waits (the reasons that fail a deploy).

use ferry_protocol::event::{ReplicaHealth, ServiceHealth};
use ferry_protocol::Version;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::ResourceExt;

use super::{objects, ready, KubernetesService};

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

impl KubernetesService {
    /// The serving set's health, read from the cluster.
    pub(super) async fn read_health(&self) -> ServiceHealth {
        let Some((name, _, version)) = self.serving() else {
            return ServiceHealth {
                version: None,
                desired: 0,
                healthy: 0,
                replicas: Vec::new(),
            };
        };
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
        service_health(&version, deployment.as_ref(), &pods)
    }
}
