//! The Kubernetes runtime's options of a service (`runtime = "kubernetes"`):
//! where its objects live, what they look like, and how the agent reaches
//! the cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Quantities, RawKubernetes, RawService};
use super::runtime_kind::RuntimeKind;

/// Label keys ferry sets itself on every object it creates.
pub const RESERVED_LABEL_PREFIXES: [&str; 2] = ["ferry.io/", "app.kubernetes.io/managed-by"];

/// Settings of a service with `runtime = "kubernetes"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// Namespace of the service's Deployments and Service.
    pub namespace: String,
    /// The port the container listens on (`$PORT`).
    pub container_port: u16,
    /// The Service's port.
    pub service_port: u16,
    /// The Service's type: ClusterIP, NodePort or LoadBalancer.
    pub service_type: String,
    /// Resource requests.
    pub requests: Quantities,
    /// Resource limits.
    pub limits: Quantities,
    /// Extra labels on every object (ferry's own keys are reserved).
    pub labels: BTreeMap<String, String>,
    /// Annotations on every object.
    pub annotations: BTreeMap<String, String>,
    /// Service account the pods run as.
    pub service_account: Option<String>,
    /// Secrets to pull images with.
    pub image_pull_secrets: Vec<String>,
    /// Image answering 503 during maintenance; maintenance is refused without it.
    pub maintenance_image: Option<String>,
    /// How long a Deployment may take to become ready before the deploy fails
    /// (the Deployment's `progressDeadlineSeconds` too).
    pub progress_deadline: Duration,
    /// Kubeconfig file; `None`: `kube::Config::infer` (in-cluster service
    /// account, then `$KUBECONFIG` / `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Context within the kubeconfig (its current one otherwise).
    pub context: Option<String>,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        KubernetesOptions {
            namespace: "default".into(),
            container_port: 8080,
            service_port: 80,
            service_type: "ClusterIP".into(),
            requests: Quantities::default(),
            limits: Quantities::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            service_account: None,
            image_pull_secrets: Vec::new(),
            maintenance_image: None,
            progress_deadline: Duration::from_secs(600),
            kubeconfig: None,
            context: None,
        }
    }
}

/// A DNS-1123 label: what namespaces, secret and account names must be.
pub fn dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A Kubernetes quantity as far as ferry checks it: digits with an optional
/// fraction and unit suffix.
fn quantity(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|v| v >= 0.0)
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

pub(super) fn kubernetes_options(
    problems: &mut Vec<String>,
    prefix: &str,
    runtime: RuntimeKind,
    service: &RawService,
) -> KubernetesOptions {
    let mut options = KubernetesOptions::default();
    if runtime != RuntimeKind::Kubernetes {
        if service.kubernetes.is_some() {
            problems.push(format!(
                "{prefix}.kubernetes: only used with runtime = \"kubernetes\""
            ));
        }
        return options;
    }
    let raw = service.kubernetes.as_ref();
    let raw_default = RawKubernetes::default();
    let raw = raw.unwrap_or(&raw_default);
    if let Some(ns) = &raw.namespace {
        if dns_label(ns) {
            options.namespace = ns.clone();
        } else {
            problems.push(format!(
                "{prefix}.kubernetes.namespace: {ns:?} is not a namespace name (a-z, 0-9, '-', at most 63)"
            ));
        }
    }
    match service.container_port {
        Some(0) => problems.push(format!("{prefix}.container_port: must not be 0")),
        Some(port) => options.container_port = port,
        None => {}
    }
    match raw.service_port {
        Some(0) => problems.push(format!("{prefix}.kubernetes.service_port: must not be 0")),
        Some(port) => options.service_port = port,
        None => {}
    }
    if let Some(kind) = &raw.service_type {
        if ["ClusterIP", "NodePort", "LoadBalancer"].contains(&kind.as_str()) {
            options.service_type = kind.clone();
        } else {
            problems.push(format!(
                "{prefix}.kubernetes.service_type: {kind:?} is not one of \"ClusterIP\", \"NodePort\", \"LoadBalancer\""
            ));
        }
    }
    for (table, q) in [("requests", &raw.requests), ("limits", &raw.limits)] {
        for (field, value) in [("cpu", &q.cpu), ("memory", &q.memory)] {
            if let Some(v) = value.as_deref().filter(|v| !quantity(v)) {
                problems.push(format!(
                    "{prefix}.kubernetes.{table}.{field}: {v:?} is not a quantity like \"250m\" or \"128Mi\""
                ));
            }
        }
    }
    options.requests = raw.requests.clone();
    options.limits = raw.limits.clone();
    for (key, value) in service.labels.iter().flatten() {
        if RESERVED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p)) {
            problems.push(format!(
                "{prefix}.labels: {key:?} is reserved (ferry.io/* and app.kubernetes.io/managed-by are set by ferry)"
            ));
        } else if key.trim().is_empty() {
            problems.push(format!("{prefix}.labels: a label key must not be empty"));
        } else {
            options.labels.insert(key.clone(), value.clone());
        }
    }
    options.annotations = raw.annotations.clone();
    if let Some(account) = &raw.service_account {
        if dns_label(account) {
            options.service_account = Some(account.clone());
        } else {
            problems.push(format!(
                "{prefix}.kubernetes.service_account: {account:?} is not a service account name"
            ));
        }
    }
    for secret in &raw.image_pull_secrets {
        if !dns_label(secret) {
            problems.push(format!(
                "{prefix}.kubernetes.image_pull_secrets: {secret:?} is not a secret name"
            ));
        }
    }
    options.image_pull_secrets = raw.image_pull_secrets.clone();
    if let Some(image) = raw.maintenance_image.as_deref() {
        if image.trim().is_empty() || image.contains(char::is_whitespace) {
            problems.push(format!(
                "{prefix}.kubernetes.maintenance_image: {image:?} is not an image reference"
            ));
        } else {
            options.maintenance_image = Some(image.to_owned());
        }
    }
    if let Some(text) = &raw.progress_deadline {
        match humantime::parse_duration(text) {
            Ok(d) if d.as_secs() >= 1 => options.progress_deadline = d,
            _ => problems.push(format!(
                "{prefix}.kubernetes.progress_deadline: {text:?} is not a duration of at least 1s"
            )),
        }
    }
    if let Some(path) = &raw.kubeconfig {
        if !path.is_file() {
            problems.push(format!(
                "{prefix}.kubernetes.kubeconfig: {} is not a readable file",
                path.display()
            ));
        }
        options.kubeconfig = Some(path.clone());
    }
    options.context = raw.context.clone();
    if service.command.is_some() {
        problems.push(format!(
            "{prefix}.command: not used by runtime \"kubernetes\" (the image's entrypoint runs); remove it"
        ));
    }
    options
}
