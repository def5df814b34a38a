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

/// What selects the pods of `version_label`.
pub fn version_selector(
    environment: &EnvName,
    service: &ServiceConfig,
    version_label: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), FERRY.to_owned()),
        (ENVIRONMENT.to_owned(), environment.to_string()),
        (SERVICE.to_owned(), service.name.to_string()),
        (VERSION.to_owned(), version_label.to_owned()),
    ])
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

/// The Deployment running `release` (`version_label` its pods' version label;
/// `image` what they run) at `replicas`.
pub fn deployment(
    environment: &EnvName,
    service: &ServiceConfig,
    name: &str,
    version_label: &str,
    release: &ReleaseSpec,
    image: &str,
    replicas: u32,
) -> Result<Deployment, RuntimeError> {
    let k = &service.kubernetes;
    let mut labels = service_labels(environment, service);
    labels.insert(VERSION.into(), version_label.to_owned());
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
            "selector": { "matchLabels": version_selector(environment, service, version_label) },
            "template": {
                "metadata": { "labels": labels, "annotations": k.annotations },
                "spec": pod_spec,
            },
        },
    });
    serde_json::from_value(value).map_err(|e| RuntimeError::Start {
        replica: name.to_owned(),
        detail: format!("building the Deployment: {e}"),
    })
}

/// The Service routing to the pods of `version_label`.
pub fn service(
    environment: &EnvName,
    service: &ServiceConfig,
    version_label: &str,
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
            "selector": version_selector(environment, service, version_label),
            "ports": [{ "name": "http", "port": k.service_port, "targetPort": k.container_port }],
        },
    });
    serde_json::from_value(value).map_err(|e| RuntimeError::Start {
        replica: service.name.to_string(),
        detail: format!("building the Service: {e}"),
    })
}

/// The version label a Service currently routes to.
pub fn routed_version(svc: &Service) -> Option<String> {
    svc.spec.as_ref()?.selector.as_ref()?.get(VERSION).cloned()
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
}
