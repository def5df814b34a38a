//! The configuration once checked: what the rest of the agent reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry_protocol::rollout::Strategy;
use ferry_protocol::{EnvName, HostName, ServiceName, TrustedKeys};

use crate::Error;
use ferry_analysis::Thresholds;

use super::docker::DockerOptions;
use super::kubernetes::KubernetesOptions;
use super::metrics::MetricsProvider;
use super::runtime_kind::RuntimeKind;

/// How a service's replicas are health-checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// HTTP path polled on each replica.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive failed checks after which a running replica counts as unhealthy.
    pub failure_threshold: u32,
    /// Time new replicas have to become healthy during a deploy.
    pub start_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/health".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            failure_threshold: 3,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// One managed service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    /// Its name.
    pub name: ServiceName,
    /// Its runtime.
    pub runtime: RuntimeKind,
    /// Command template; `{artifact}`, `{port}`, `{version}`, `{service}` and
    /// `{environment}` are substituted in each argument. No shell is involved.
    pub command: Vec<String>,
    /// The stable address the agent's proxy serves the service on
    /// (`0.0.0.0:0` and unused on Kubernetes, where a Service routes).
    pub listen: SocketAddr,
    /// Replicas when a deploy does not say.
    pub replicas: u32,
    /// Variables every replica gets (a release's own variables win).
    pub env: BTreeMap<String, String>,
    /// Health checking.
    pub health: HealthConfig,
    /// Time a replica has to exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// Container settings (docker runtime only).
    pub docker: DockerOptions,
    /// Cluster settings (kubernetes runtime only).
    pub kubernetes: KubernetesOptions,
    /// How deploys replace the running version unless a command says
    /// otherwise (`recreate`: the health-gated replace).
    pub strategy: Strategy,
    /// Thresholds a new version is held to during canary steps.
    pub analysis: Thresholds,
    /// Where analysis reads the new version's signals.
    pub metrics: MetricsProvider,
}

/// The agent's whole configuration, checked.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The environment this agent serves.
    pub environment: EnvName,
    /// This agent's host among the environment's (`host`; default the
    /// machine's hostname up to its first dot, lowercased): heartbeats and
    /// events name it.
    pub host: HostName,
    /// NATS server URL(s), comma-separated: the agent connects to one and
    /// reconnects to any other.
    pub nats_url: String,
    /// Copies of each stream the agent creates (`stream_replicas`, default
    /// 1; 3 on a 3-node cluster), the same as the controller's; a stream
    /// found with another count stops the start as bad configuration.
    pub stream_replicas: ferry_protocol::streams::Replicas,
    /// When the environment runs its own nats-server as a leaf node of the
    /// hub cluster (`jetstream_domain` and `hub_domain`): the agent's
    /// JetStream context is the leaf's domain, its commands stream sources
    /// the hub's, its events stream is local. `None`: one domain, as on a
    /// single server or a plain cluster.
    pub leaf: Option<ferry_protocol::streams::LeafDomains>,
    /// NATS credentials file.
    pub nats_creds: Option<PathBuf>,
    /// NATS user name (with `nats_password_file`), for a server with
    /// per-role users such as `deploy/nats/nats-server.conf`.
    pub nats_user: Option<String>,
    /// File holding `nats_user`'s password; read at connect time, never logged.
    pub nats_password_file: Option<PathBuf>,
    /// TLS to nats-server (`nats_tls_ca_file`, `nats_tls_cert_file`,
    /// `nats_tls_key_file`): the CA the server's certificate is verified
    /// against and the client certificate presented; paths only.
    pub nats_tls: ferry_protocol::nats_tls::TlsFiles,
    /// Prefix of the agent's reply subjects (default
    /// `_INBOX_ferry_agent_<environment>`, what the server's permissions allow).
    pub nats_inbox_prefix: String,
    /// Where the state file and replica logs live.
    pub state_dir: PathBuf,
    /// Public nkeys whose signed commands are accepted.
    pub trusted_keys: Vec<String>,
    /// Approvals from distinct reviewers a deploy to this environment must
    /// carry (0: none, the environment is not approval-gated).
    pub approvals_required: u32,
    /// Public nkeys of the reviewers whose approvals count here.
    pub reviewer_keys: Vec<String>,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Time between metrics and health events.
    pub metrics_interval: Duration,
    /// Time a shutdown waits for a command in progress.
    pub shutdown_grace: Duration,
    /// Seconds added to the clock the heartbeat reports: a test setting that
    /// simulates a skewed host clock for `ferry doctor` (0 in production).
    pub clock_offset_secs: i64,
    /// Managed services.
    pub services: BTreeMap<ServiceName, ServiceConfig>,
}

impl AgentConfig {
    /// The trusted keys, parsed.
    pub fn trusted(&self) -> Result<TrustedKeys, Error> {
        TrustedKeys::new(&self.trusted_keys).map_err(Error::Protocol)
    }

    /// The reviewer keys, parsed.
    pub fn reviewers(&self) -> Result<TrustedKeys, Error> {
        TrustedKeys::new(&self.reviewer_keys).map_err(Error::Protocol)
    }
}
