//! The objects ferry keeps on a cluster for one service: their names, the
//! labels that mark them as ferry's, and their specs.

use std::collections::BTreeMap;

use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::{EnvName, Version};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::config::ServiceConfig;
use crate::runtime::RuntimeError;

/// The label that marks an object as ferry's; ferry touches no object without it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const FERRY: &str = "ferry";
/// The environment label.
pub const ENVIRONMENT: &str = "ferry.io/environment";
/// The service label.
pub const SERVICE: &str = "ferry.io/service";
/// The version label (sanitised to a label value).
pub const VERSION: &str = "ferry.io/version";
/// Annotation holding the release a Deployment runs, as JSON, so a restarted
/// agent knows exactly what it found.
pub const RELEASE: &str = "ferry.io/release";
/// The `ferry.io/version` value of the maintenance responder.
pub const MAINTENANCE: &str = "maintenance";
/// The set label: the name of the Deployment a pod belongs to. Deployments
/// select their pods by it, not by version, so a Deployment can take a new
/// version in place (a rolling update, a canary's promotion); the Service
/// selects one set, or every set of the service while a canary runs.
pub const SET: &str = "ferry.io/set";
/// The track label: `canary` on a canary's Deployment and pods.
pub const TRACK: &str = "ferry.io/track";
/// Its value on a canary.
pub const CANARY: &str = "canary";

/// `version` as a DNS label fragment: lower case, `[a-z0-9-]`.
pub fn sanitise(version: &str) -> String {
    let mapped: String = version
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').to_owned()
}

/// The Deployment of `version`: `<service>-<version-sanitised>`, at most 63 characters.
pub fn deployment_name(service: &str, version: &str) -> String {
    let mut name = format!("{service}-{}", sanitise(version));
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// Whether ferry created `labels`' object.
pub fn is_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(MANAGED_BY).map(String::as_str) == Some(FERRY)
}

/// Whether a found object is ferry's, else the error that refuses to touch it.
pub fn check_managed(
    kind: &str,
    labels: &BTreeMap<String, String>,
    name: &str,
    namespace: &str,
) -> Result<(), RuntimeError> {
    if is_managed(labels) {
        Ok(())
    } else {
        Err(RuntimeError::Unsupported(format!(
            "{kind} {namespace}/{name} exists but was not created by ferry (no {MANAGED_BY}={FERRY} label); ferry leaves it alone: rename or remove it"
        )))
    }
}

/// Label selector (`k=v,k=v`) of the pods of one version.
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The labels of every object of the service (no version).
pub fn service_labels(environment: &EnvName, service: &ServiceConfig) -> BTreeMap<String, String> {
    let mut labels = service.kubernetes.labels.clone();
    labels.insert(MANAGED_BY.into(), FERRY.into());
    labels.insert(ENVIRONMENT.into(), environment.to_string());
    labels.insert(SERVICE.into(), service.name.to_string());
    labels
}

/// What selects every pod of the service (both sets while a canary runs).
pub fn service_selector(
    environment: &EnvName,
    service: &ServiceConfig,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), FERRY.to_owned()),
        (ENVIRONMENT.to_owned(), environment.to_string()),
        (SERVICE.to_owned(), service.name.to_string()),
    ])
}

/// What selects the pods of the Deployment `set`.
pub fn set_selector(
    environment: &EnvName,
    service: &ServiceConfig,
    set: &str,
) -> BTreeMap<String, String> {
    let mut selector = service_selector(environment, service);
    selector.insert(SET.to_owned(), set.to_owned());
    selector
}

/// The pods of the Deployment `set` running `version_label` (during an
/// in-place update, the new ones).
pub fn pods_of(
    environment: &EnvName,
    service: &ServiceConfig,
    set: &str,
    version_label: &str,
) -> String {
    let mut selector = set_selector(environment, service, set);
    selector.insert(VERSION.to_owned(), version_label.to_owned());
    selector_string(&selector)
}

/// The canary Deployment of `version`.
pub fn canary_name(service: &str, version: &str) -> String {
    deployment_name(service, &format!("{version}-{CANARY}"))
}

/// Whether `deployment` is a canary's.
pub fn is_canary(deployment: &Deployment) -> bool {
    deployment.labels().get(TRACK).map(String::as_str) == Some(CANARY)
}

/// A rolling update's pace: ferry's batch size and max unavailable as the
/// Deployment's `maxSurge`/`maxUnavailable`. A batch of `batch_size` new
/// pods with up to `max_unavailable` old ones stopped first is, per step,
/// `batch_size - unavailable` surge pods and `unavailable` missing ones.
pub fn rolling_update(batch_size: u32, max_unavailable: u32) -> Value {
    let batch = batch_size.max(1);
    let unavailable = max_unavailable.min(batch);
    json!({
        "type": "RollingUpdate",
        "rollingUpdate": { "maxSurge": batch - unavailable, "maxUnavailable": unavailable },
    })
}

/// The release a Deployment records, if it does.
pub fn recorded_release(deployment: &Deployment) -> Option<ReleaseSpec> {
    serde_json::from_str(deployment.annotations().get(RELEASE)?).ok()
}

/// The image a release runs: the artifact, pinned to the release's digest
/// when CI gave one (an artifact naming another digest is refused).
pub fn image(release: &ReleaseSpec) -> Result<String, RuntimeError> {
    match (&release.digest, release.artifact.rsplit_once('@')) {
        (None, _) => Ok(release.artifact.clone()),
        (Some(digest), Some((_, named))) if named == digest => Ok(release.artifact.clone()),
        (Some(digest), Some((_, named))) => Err(RuntimeError::Artifact {
            artifact: release.artifact.clone(),
            detail: format!("the image names digest {named}, not the release's {digest}"),
        }),
        (Some(digest), None) => Ok(format!("{}@{digest}", release.artifact)),
    }
}

fn probe(service: &ServiceConfig) -> Value {
    let health = &service.health;
    json!({
        "httpGet": { "path": health.path, "port": service.kubernetes.container_port },
        "periodSeconds": health.interval.as_secs().max(1),
        "timeoutSeconds": health.timeout.as_secs().max(1),
        "failureThreshold": health.failure_threshold,
    })
}

fn resources(service: &ServiceConfig) -> Value {
    let k = &service.kubernetes;
    let quantities = |q: &crate::config::Quantities| {
        let mut map = serde_json::Map::new();
        if let Some(cpu) = &q.cpu {
            map.insert("cpu".into(), json!(cpu));
        }
        if let Some(memory) = &q.memory {
            map.insert("memory".into(), json!(memory));
        }
        Value::Object(map)
    };
    json!({ "requests": quantities(&k.requests), "limits": quantities(&k.limits) })
}

/// What a Deployment is: its name, its pods' version label, the release and
/// image they run, how many, and whether it is a canary.
pub struct DeploymentSpec<'a> {
    /// The Deployment's name (also its pods' set label).
    pub name: &'a str,
    /// The pods' version label.
    pub version_label: &'a str,
    /// The release.
    pub release: &'a ReleaseSpec,
    /// The image the pods run.
    pub image: &'a str,
    /// Replicas.
    pub replicas: u32,
    /// A canary's Deployment.
    pub canary: bool,
}

/// The Deployment of `spec`; its pods are selected by their set label.
pub fn deployment(
    environment: &EnvName,
    service: &ServiceConfig,
    spec: &DeploymentSpec<'_>,
) -> Result<Deployment, RuntimeError> {
    let DeploymentSpec {
        name,
        version_label,
        release,
        image,
        replicas,
        canary,
    } = *spec;
    let k = &service.kubernetes;
    let mut labels = service_labels(environment, service);
    labels.insert(VERSION.into(), version_label.to_owned());
    labels.insert(SET.into(), name.to_owned());
    if canary {
        labels.insert(TRACK.into(), CANARY.into());
    }
    let mut pod_annotations = k.annotations.clone();
    // The version as given (the label is sanitised), for health reports.
    pod_annotations.insert(VERSION.into(), release.version.to_string());
    let mut annotations = k.annotations.clone();
    annotations.insert(
        RELEASE.into(),
        serde_json::to_string(release).map_err(|e| RuntimeError::Start {
            replica: name.to_owned(),
            detail: format!("recording the release: {e}"),
        })?,
    );
    // Configuration, then the release's own variables, then ferry's.
    let mut env: BTreeMap<String, String> = service.env.clone();
    env.extend(release.env.clone());
    env.insert("PORT".into(), k.container_port.to_string());
    env.insert("FERRY_ENVIRONMENT".into(), environment.to_string());
    env.insert("FERRY_SERVICE".into(), service.name.to_string());
    env.insert("FERRY_VERSION".into(), release.version.to_string());
    let mut env: Vec<Value> = env
        .into_iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    env.push(json!({ "name": "FERRY_REPLICA", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }));
    let mut pod_spec = json!({
        "containers": [{
            "name": service.name.as_str(),
            "image": image,
            "ports": [{ "containerPort": k.container_port, "name": "http" }],
            "env": env,
            "readinessProbe": probe(service),
            "livenessProbe": probe(service),
            "resources": resources(service),
        }],
        "terminationGracePeriodSeconds": service.stop_timeout.as_secs(),
        "imagePullSecrets": k.image_pull_secrets.iter().map(|s| json!({ "name": s })).collect::<Vec<_>>(),
    });
    if let Some(account) = &k.service_account {
        pod_spec["serviceAccountName"] = json!(account);
    }
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": k.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": k.progress_deadline.as_secs(),
            "selector": { "matchLabels": set_selector(environment, service, name) },
            "template": {
                "metadata": { "labels": labels, "annotations": pod_annotations },
                "spec": pod_spec,
            },
        },
    });
    serde_json::from_value(value).map_err(|e| RuntimeError::Start {
        replica: name.to_owned(),
        detail: format!("building the Deployment: {e}"),
    })
}

/// The Service routing to the pods `selector` selects.
pub fn service(
    environment: &EnvName,
    service: &ServiceConfig,
    selector: &BTreeMap<String, String>,
) -> Result<Service, RuntimeError> {
    let k = &service.kubernetes;
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service.name.as_str(),
            "namespace": k.namespace,
            "labels": service_labels(environment, service),
            "annotations": k.annotations,
        },
        "spec": {
            "type": k.service_type,
            "selector": selector,
            "ports": [{ "name": "http", "port": k.service_port, "targetPort": k.container_port }],
        },
    });
    serde_json::from_value(value).map_err(|e| RuntimeError::Start {
        replica: service.name.to_string(),
        detail: format!("building the Service: {e}"),
    })
}

/// What a Service currently selects.
pub fn routed(svc: &Service) -> BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// The label value of `version`.
pub fn version_label(version: &Version) -> String {
    let mut label = sanitise(version.as_str());
    label.truncate(63);
    label.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(
            deployment_name("web", "2.0.0-RC.1+build"),
            "web-2-0-0-rc-1-build"
        );
        assert!(deployment_name("web", &"9".repeat(80)).len() <= 63);
    }

    #[test]
    fn a_digest_pins_the_image_and_a_different_one_is_refused() {
        let mut release = ReleaseSpec {
            version: Version::new("1.0.0").unwrap(),
            artifact: "registry/app:1".into(),
            digest: Some("sha256:ab".into()),
            env: BTreeMap::new(),
        };
        assert_eq!(image(&release).unwrap(), "registry/app:1@sha256:ab");
        release.artifact = "registry/app@sha256:cd".into();
        assert!(image(&release).is_err());
    }

    #[test]
    fn a_batch_maps_to_surge_and_unavailable_pods() {
        let pace = |b, u| {
            let v = rolling_update(b, u);
            (
                v["rollingUpdate"]["maxSurge"].as_u64().unwrap(),
                v["rollingUpdate"]["maxUnavailable"].as_u64().unwrap(),
            )
        };
        assert_eq!(pace(1, 0), (1, 0), "one new pod before an old one goes");
        assert_eq!(pace(3, 1), (2, 1));
        assert_eq!(pace(2, 5), (0, 2), "never more missing than a batch");
        assert_eq!(pace(0, 0), (1, 0), "never both zero");
    }
}
