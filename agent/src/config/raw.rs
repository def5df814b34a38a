//! The configuration as read, before it is checked: every field optional.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use ferry_protocol::rollout::{AnalysisOverride, Strategy};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawConfig {
    pub(super) environment: Option<String>,
    pub(super) host: Option<String>,
    pub(super) nats_url: Option<String>,
    pub(super) nats_creds: Option<PathBuf>,
    pub(super) nats_user: Option<String>,
    pub(super) nats_password_file: Option<PathBuf>,
    pub(super) nats_tls_ca_file: Option<PathBuf>,
    pub(super) nats_tls_cert_file: Option<PathBuf>,
    pub(super) nats_tls_key_file: Option<PathBuf>,
    pub(super) nats_inbox_prefix: Option<String>,
    pub(super) stream_replicas: Option<u32>,
    pub(super) jetstream_domain: Option<String>,
    pub(super) hub_domain: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) trusted_keys: Vec<String>,
    #[serde(default)]
    pub(super) approvals_required: u32,
    #[serde(default)]
    pub(super) reviewer_keys: Vec<String>,
    pub(super) heartbeat_interval: Option<String>,
    pub(super) metrics_interval: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    #[serde(default)]
    pub(super) clock_offset_secs: i64,
    #[serde(default)]
    pub(super) services: BTreeMap<String, RawService>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawService {
    pub(super) runtime: Option<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) listen: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) replicas: Option<u32>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) health: RawHealth,
    pub(super) stop_timeout: Option<String>,
    pub(super) container_port: Option<u16>,
    pub(super) memory: Option<String>,
    pub(super) cpus: Option<f64>,
    pub(super) network: Option<String>,
    pub(super) labels: Option<BTreeMap<String, String>>,
    pub(super) pull: Option<bool>,
    pub(super) registry_server: Option<String>,
    pub(super) registry_username: Option<String>,
    pub(super) registry_password_file: Option<PathBuf>,
    pub(super) strategy: Option<Strategy>,
    pub(super) analysis: Option<AnalysisOverride>,
    pub(super) metrics: Option<super::metrics::RawMetrics>,
    pub(super) kubernetes: Option<RawKubernetes>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawHealth {
    pub(super) path: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) failure_threshold: Option<u32>,
    pub(super) start_timeout: Option<String>,
}

/// The `[services.NAME.kubernetes]` table as read.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawKubernetes {
    pub(super) namespace: Option<String>,
    pub(super) service_port: Option<u16>,
    pub(super) service_type: Option<String>,
    #[serde(default)]
    pub(super) requests: Quantities,
    #[serde(default)]
    pub(super) limits: Quantities,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
    pub(super) service_account: Option<String>,
    #[serde(default)]
    pub(super) image_pull_secrets: Vec<String>,
    pub(super) maintenance_image: Option<String>,
    pub(super) progress_deadline: Option<String>,
    pub(super) kubeconfig: Option<PathBuf>,
    pub(super) context: Option<String>,
}

/// CPU and memory quantities, as Kubernetes writes them ("250m", "128Mi").
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Quantities {
    /// CPU, e.g. "250m" or "1".
    pub cpu: Option<String>,
    /// Memory, e.g. "128Mi".
    pub memory: Option<String>,
}
