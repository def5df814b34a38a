//! The controller's configuration: loaded from an optional TOML file and
//! `FERRY_*` environment variables, then validated into a [`ResolvedConfig`]
//! with every problem reported at once.

pub mod dashboard;
pub mod notify;
mod problem;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{streams, wave, EnvName, SigningKey, TrustedKeys};
use serde::Deserialize;

use ferry_protocol::config_keys::{deserialize_strict, SettingVariables};

use crate::Error;

pub use problem::ConfigProblem;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "FERRY";
/// Overrides `nats_url`.
pub const ENV_NATS_URL: &str = "FERRY_NATS_URL";
/// Overrides `nats_creds`.
pub const ENV_NATS_CREDS: &str = "FERRY_NATS_CREDS";
/// The controller's reply-inbox prefix unless configured.
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX_ferry_controller";
/// Overrides `signing_key_file`.
pub const ENV_SIGNING_KEY_FILE: &str = "FERRY_SIGNING_KEY_FILE";
/// Overrides `environments`, comma-separated.
pub const ENV_ENVIRONMENTS: &str = "FERRY_ENVIRONMENTS";
/// Overrides `command_ttl`.
pub const ENV_COMMAND_TTL: &str = "FERRY_COMMAND_TTL";
/// Overrides `agent_timeout`.
pub const ENV_AGENT_TIMEOUT: &str = "FERRY_AGENT_TIMEOUT";

/// The configuration as written: plain values, checked by [`ControllerConfig::validate`].
///
/// Durations are humantime strings (`"1h"`, `"15s"`) so that a bad one is
/// reported together with every other problem rather than failing the load.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct ControllerConfig {
    /// NATS server URL, or several separated by commas (the nodes of a
    /// cluster): the controller connects to one and reconnects to any other.
    pub nats_url: String,
    /// Copies of every stream and bucket the controller creates (default 1;
    /// 3 on a 3-node cluster), the same as the agents'; one found with
    /// another count stops the start as bad configuration.
    pub stream_replicas: u32,
    /// The JetStream domain of the hub cluster the controller runs on
    /// (`jetstream { domain: hub }` of its servers), when environments run
    /// leaf nodes; absent on a single server or a cluster without leaves.
    pub jetstream_domain: Option<String>,
    /// The environments that run their own nats-server as a leaf node of
    /// the hub, each with its leaf's JetStream domain
    /// (`[leaf_domains] production = "production"`): the hub's
    /// `FERRY_EVENTS` sources each leaf's events stream. Needs
    /// `jetstream_domain`.
    pub leaf_domains: BTreeMap<String, String>,
    /// NATS credentials file (`.creds`), if the server requires one.
    pub nats_creds: Option<PathBuf>,
    /// NATS user name (with `nats_password_file`), for a server with per-role
    /// users such as `deploy/nats/nats-server.conf`.
    pub nats_user: Option<String>,
    /// File holding `nats_user`'s password; read at connect time, never logged.
    pub nats_password_file: Option<PathBuf>,
    /// PEM file of the CA that signed nats-server's certificate: the server
    /// is verified against it, and TLS is required.
    pub nats_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to a server that verifies clients
    /// (`tls { verify: true }`), with `nats_tls_key_file`.
    pub nats_tls_cert_file: Option<PathBuf>,
    /// PEM private key of `nats_tls_cert_file`; read at connect time, shown
    /// by path only.
    pub nats_tls_key_file: Option<PathBuf>,
    /// Prefix of the controller's reply subjects (default
    /// `_INBOX_ferry_controller`, what the server's permissions allow).
    pub nats_inbox_prefix: String,
    /// File holding the nkey seed every command is signed with.
    pub signing_key_file: PathBuf,
    /// The pipeline, in promotion order; new releases go to the first.
    pub environments: Vec<String>,
    /// How long an issued command stays valid.
    pub command_ttl: String,
    /// How long after its last heartbeat an agent counts as down.
    pub agent_timeout: String,
    /// Longest validity of a reviewer's approval (default 72h).
    pub approval_ttl: String,
    /// Security override approvals from distinct reviewers a release with
    /// critical vulnerabilities needs in each environment (default 2).
    pub security_override_approvals: u32,
    /// How often each instance looks for promotions that became eligible
    /// (soak times elapsing).
    pub promotion_check_interval: String,
    /// Per-environment promotion settings, keyed by environment name.
    pub pipeline: BTreeMap<String, StageSettings>,
    /// Notification sinks and routes.
    pub notify: notify::NotifyConfig,
    /// Where to serve Prometheus metrics on `/metrics`, e.g. `127.0.0.1:9464`;
    /// off when absent.
    pub metrics_listen: Option<String>,
    /// Where to serve the web dashboard, e.g. `127.0.0.1:9080`; off when absent.
    pub dashboard_listen: Option<String>,
    /// The dashboard's operators (`[[dashboard.operators]]`).
    pub dashboard: dashboard::DashboardConfig,
    /// Alert when a running service's error rate passes this, percent.
    pub alert_error_rate_percent: f64,
    /// Alert when a running service's p95 latency passes this, ms.
    pub alert_p95_ms: f64,
    /// Alert when a running service's availability falls below this, percent.
    pub alert_availability_percent: f64,
    /// Requests an interval needs before error rate and latency can alert.
    pub alert_min_requests: u64,
}

/// One environment's promotion settings, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StageSettings {
    /// Open a promotion into this environment by itself once the previous
    /// environment runs the release successfully (the first environment:
    /// deploy every new release). Default: true for the first environment,
    /// false for the others (they wait for `ferry promote`).
    pub auto_deploy: Option<bool>,
    /// How long the previous environment must have run the release
    /// successfully before it is eligible here, e.g. "30m" (default "0s").
    pub soak: Option<String>,
    /// Approvals from distinct reviewers a deploy here needs (default 0).
    pub approvals_required: u32,
    /// Who may approve here.
    pub reviewers: Vec<ReviewerSettings>,
    /// Rollout strategy of deploys the pipeline issues here (`recreate`,
    /// `rolling`, `blue-green`, `canary`, with their default settings);
    /// absent: the agent's configured strategy for the service.
    pub strategy: Option<String>,
    /// When the environment has several hosts: how many move at once after
    /// the canary host (default 1; a deploy may say otherwise).
    pub max_parallel_hosts: Option<u32>,
}

/// A reviewer: a name and the public nkey their approvals are signed with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ReviewerSettings {
    /// Name, as in the release author field (an author cannot approve).
    pub name: String,
    /// Public nkey (`U...`), printed by `ferry keygen`.
    pub key: String,
}

/// A reviewer, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewer {
    /// Name.
    pub name: String,
    /// Public nkey.
    pub key: String,
}

/// One environment's promotion settings, checked.
#[derive(Clone, Debug)]
pub struct Stage {
    /// See [`StageSettings::auto_deploy`].
    pub auto_deploy: bool,
    /// See [`StageSettings::soak`].
    pub soak: Duration,
    /// See [`StageSettings::approvals_required`].
    pub approvals_required: u32,
    /// Who may approve here.
    pub reviewers: Vec<Reviewer>,
    /// Their keys, for verifying signatures.
    pub reviewer_keys: Arc<TrustedKeys>,
    /// See [`StageSettings::strategy`].
    pub strategy: Option<ferry_protocol::rollout::StrategyKind>,
    /// See [`StageSettings::max_parallel_hosts`].
    pub max_parallel_hosts: u32,
    /// Who may give security overrides here: the environment's reviewers,
    /// or, where it has none (dev, typically), every reviewer of the pipeline.
    pub override_reviewers: Vec<Reviewer>,
    /// Their keys.
    pub override_keys: Arc<TrustedKeys>,
}

impl Stage {
    /// The configured reviewer (deploy or override) with `key`.
    pub fn reviewer(&self, key: &str) -> Option<&Reviewer> {
        self.reviewers
            .iter()
            .chain(&self.override_reviewers)
            .find(|r| r.key == key)
    }

    /// The reviewers who may give approvals of `kind`, and their keys.
    pub fn reviewers_for(
        &self,
        kind: ferry_protocol::approval::ApprovalKind,
    ) -> (&[Reviewer], &TrustedKeys) {
        match kind {
            ferry_protocol::approval::ApprovalKind::Deploy => {
                (&self.reviewers, &self.reviewer_keys)
            }
            ferry_protocol::approval::ApprovalKind::SecurityOverride => {
                (&self.override_reviewers, &self.override_keys)
            }
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            stream_replicas: 1,
            jetstream_domain: None,
            leaf_domains: BTreeMap::new(),
            nats_creds: None,
            nats_user: None,
            nats_password_file: None,
            nats_tls_ca_file: None,
            nats_tls_cert_file: None,
            nats_tls_key_file: None,
            nats_inbox_prefix: DEFAULT_INBOX_PREFIX.to_owned(),
            signing_key_file: PathBuf::new(),
            environments: vec!["dev".into(), "acceptance".into(), "production".into()],
            command_ttl: "1h".to_owned(),
            agent_timeout: "15s".to_owned(),
            approval_ttl: "72h".to_owned(),
            security_override_approvals: 2,
            promotion_check_interval: "5s".to_owned(),
            pipeline: BTreeMap::new(),
            notify: notify::NotifyConfig::default(),
            metrics_listen: None,
            dashboard_listen: None,
            dashboard: dashboard::DashboardConfig::default(),
            alert_error_rate_percent: 5.0,
            alert_p95_ms: 2000.0,
            alert_availability_percent: 95.0,
            alert_min_requests: 20,
        }
    }
}

/// A configuration that passed validation: names parsed, key loaded, durations
/// resolved. Only [`ControllerConfig::validate`] makes one, so its invariants
/// (a non-empty pipeline without duplicates, a usable key) always hold.
#[derive(Clone, Debug)]
pub struct ResolvedConfig {
    nats_url: String,
    stream_replicas: streams::Replicas,
    jetstream_domain: Option<streams::Domain>,
    leaf_domains: Vec<(EnvName, streams::Domain)>,
    nats_creds: Option<PathBuf>,
    nats_user: Option<String>,
    nats_password_file: Option<PathBuf>,
    nats_tls: ferry_protocol::nats_tls::TlsFiles,
    nats_inbox_prefix: String,
    signing_key: Arc<SigningKey>,
    first_environment: EnvName,
    environments: Vec<EnvName>,
    command_ttl: Duration,
    agent_timeout: Duration,
    approval_ttl: Duration,
    security_override_approvals: u32,
    promotion_check_interval: Duration,
    stages: Vec<Stage>,
    notify: notify::ResolvedNotify,
    metrics_listen: Option<SocketAddr>,
    dashboard: dashboard::ResolvedDashboard,
    alerts: AlertThresholds,
}

/// When a running service raises an alert (the seed's thresholds by default).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertThresholds {
    /// Error rate above this, percent.
    pub error_rate_percent: f64,
    /// p95 latency above this, ms.
    pub p95_ms: f64,
    /// Availability below this, percent.
    pub availability_percent: f64,
    /// Requests an interval needs before error rate and latency count.
    pub min_requests: u64,
}

impl ResolvedConfig {
    /// The promotion settings of `env`, if it is in the pipeline.
    pub fn stage(&self, env: &EnvName) -> Option<&Stage> {
        let i = self.environments.iter().position(|e| e == env)?;
        self.stages.get(i)
    }

    /// The environment before `env` in the pipeline.
    pub fn previous_environment(&self, env: &EnvName) -> Option<&EnvName> {
        let i = self.environments.iter().position(|e| e == env)?;
        i.checked_sub(1).and_then(|p| self.environments.get(p))
    }

    /// The environment after `env` in the pipeline.
    pub fn next_environment(&self, env: &EnvName) -> Option<&EnvName> {
        let i = self.environments.iter().position(|e| e == env)?;
        self.environments.get(i + 1)
    }

    /// Longest validity of an approval.
    pub fn approval_ttl(&self) -> Duration {
        self.approval_ttl
    }

    /// Security override approvals needed per environment.
    pub fn security_override_approvals(&self) -> u32 {
        self.security_override_approvals
    }

    /// How often promotions are re-checked.
    pub fn promotion_check_interval(&self) -> Duration {
        self.promotion_check_interval
    }

    /// Notification settings.
    pub fn notify(&self) -> &notify::ResolvedNotify {
        &self.notify
    }

    /// NATS server URL.
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// NATS credentials file, if any.
    pub fn nats_creds(&self) -> Option<&Path> {
        self.nats_creds.as_deref()
    }

    /// TLS to nats-server: the CA file and client certificate, if set.
    pub fn nats_tls(&self) -> &ferry_protocol::nats_tls::TlsFiles {
        &self.nats_tls
    }

    /// NATS user and the file holding its password, if set.
    pub fn nats_user(&self) -> Option<(&str, &Path)> {
        match (&self.nats_user, &self.nats_password_file) {
            (Some(user), Some(file)) => Some((user, file)),
            _ => None,
        }
    }

    /// Prefix of the controller's reply subjects.
    pub fn nats_inbox_prefix(&self) -> &str {
        &self.nats_inbox_prefix
    }

    /// Copies of every stream and bucket.
    pub fn stream_replicas(&self) -> streams::Replicas {
        self.stream_replicas
    }

    /// The hub's JetStream domain, when configured.
    pub fn jetstream_domain(&self) -> Option<&streams::Domain> {
        self.jetstream_domain.as_ref()
    }

    /// The environments on leaf nodes, with their leaf's domain.
    pub fn leaf_domains(&self) -> &[(EnvName, streams::Domain)] {
        &self.leaf_domains
    }

    /// The key every command is signed with.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The pipeline, in promotion order, never empty.
    pub fn environments(&self) -> &[EnvName] {
        &self.environments
    }

    /// The first environment of the pipeline, where new releases go.
    pub fn first_environment(&self) -> &EnvName {
        &self.first_environment
    }

    /// How long an issued command stays valid.
    pub fn command_ttl(&self) -> Duration {
        self.command_ttl
    }

    /// How long after its last heartbeat an agent counts as down.
    pub fn agent_timeout(&self) -> Duration {
        self.agent_timeout
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics_listen
    }

    /// The dashboard's address and operators.
    pub fn dashboard(&self) -> &dashboard::ResolvedDashboard {
        &self.dashboard
    }

    /// Alert thresholds.
    pub fn alerts(&self) -> &AlertThresholds {
        &self.alerts
    }

    /// Whether `env` is part of the pipeline.
    pub fn has_environment(&self, env: &EnvName) -> bool {
        self.environments.contains(env)
    }

    /// The pipeline as `dev, acceptance, production`, for messages.
    pub fn pipeline(&self) -> String {
        self.environments
            .iter()
            .map(EnvName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ControllerConfig {
    /// Loads the configuration: defaults, then the TOML `file` if given, then
    /// `FERRY_*` variables. `env` replaces the process environment (for tests).
    /// A key of the file or a variable that matches no setting fails the load
    /// with [`Error::InvalidConfig`], listing it with every other problem.
    pub fn load(
        file: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, Error> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let variables = SettingVariables::from_vars(
            match env {
                Some(env) => env.into_iter().collect::<Vec<_>>(),
                None => std::env::vars().collect(),
            },
            None,
        );
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("environments")
                .source(Some(
                    variables
                        .values()
                        .map(|(name, value)| (name.to_owned(), value.to_owned()))
                        .collect(),
                )),
        );
        let gathered = builder.build().map_err(Error::LoadConfig)?;
        let (config, unknown) = deserialize_strict::<Self, _>(gathered, &variables);
        if unknown.is_empty() {
            return config.map_err(Error::LoadConfig);
        }
        let mut problems: Vec<ConfigProblem> = unknown
            .iter()
            .map(|key| ConfigProblem {
                field: key.name().to_owned(),
                message: key.message(),
            })
            .collect();
        match config {
            Ok(config) => problems.extend(config.validate().err().unwrap_or_default()),
            Err(e) => problems.push(ConfigProblem {
                field: "configuration".to_owned(),
                message: e.to_string(),
            }),
        }
        Err(Error::InvalidConfig(problems))
    }

    /// Checks every setting and returns the resolved configuration, or every
    /// problem found (not just the first), so one run shows all there is to fix.
    pub fn validate(&self) -> Result<ResolvedConfig, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: &'static str, message: String| {
            problems.push(ConfigProblem {
                field: field.to_owned(),
                message,
            });
        };

        let nats_url = self.nats_url.trim();
        if let Err(why) = streams::server_list(nats_url) {
            problem("nats_url", why);
        }
        let stream_replicas = streams::Replicas::new(self.stream_replicas).unwrap_or_else(|why| {
            problem("stream_replicas", why);
            streams::Replicas::ONE
        });

        if let Some(creds) = &self.nats_creds {
            if let Err(e) = std::fs::File::open(creds) {
                problem(
                    "nats_creds",
                    format!("cannot read {}: {e}", creds.display()),
                );
            }
        }

        let nats_tls = ferry_protocol::nats_tls::TlsFiles {
            ca_file: self.nats_tls_ca_file.clone(),
            cert_file: self.nats_tls_cert_file.clone(),
            key_file: self.nats_tls_key_file.clone(),
        };
        for (key, why) in nats_tls.problems(|path| match std::fs::File::open(path) {
            Err(e) => Some(e.to_string()),
            Ok(_) if !path.is_file() => Some("not a file".to_owned()),
            Ok(_) => None,
        }) {
            problem(key, why);
        }

        match (&self.nats_user, &self.nats_password_file) {
            (Some(user), Some(file)) => {
                if user.trim().is_empty() {
                    problem("nats_user", "must not be empty".to_owned());
                }
                if let Err(e) = std::fs::File::open(file) {
                    problem(
                        "nats_password_file",
                        format!("cannot read {}: {e}", file.display()),
                    );
                }
                if self.nats_creds.is_some() {
                    problem(
                        "nats_user",
                        "set nats_creds or nats_user, not both".to_owned(),
                    );
                }
            }
            (Some(_), None) => problem(
                "nats_user",
                "set nats_password_file (the file holding its password)".to_owned(),
            ),
            (None, Some(_)) => problem(
                "nats_password_file",
                "set nats_user (whose password it holds)".to_owned(),
            ),
            (None, None) => {}
        }
        let prefix = &self.nats_inbox_prefix;
        if prefix.is_empty()
            || prefix.split('.').any(|t| {
                t.is_empty() || t.contains(['*', '>']) || t.chars().any(char::is_whitespace)
            })
        {
            problem(
                "nats_inbox_prefix",
                format!("{prefix:?} is not a NATS subject prefix without wildcards or spaces"),
            );
        }

        let signing_key = if self.signing_key_file.as_os_str().is_empty() {
            problem(
                "signing_key_file",
                format!("not set; point it (or {ENV_SIGNING_KEY_FILE}) at a file holding the controller's nkey seed"),
            );
            None
        } else {
            match std::fs::read_to_string(&self.signing_key_file) {
                Ok(seed) => match SigningKey::from_seed(&seed) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        problem(
                            "signing_key_file",
                            format!(
                                "{} does not hold a valid nkey seed: {e}",
                                self.signing_key_file.display()
                            ),
                        );
                        None
                    }
                },
                Err(e) => {
                    problem(
                        "signing_key_file",
                        format!("cannot read {}: {e}", self.signing_key_file.display()),
                    );
                    None
                }
            }
        };

        let mut environments = Vec::new();
        let mut seen = BTreeSet::new();
        if self.environments.is_empty() {
            problem(
                "environments",
                "the pipeline is empty; list at least one environment, e.g. [\"dev\"]".into(),
            );
        }
        for raw in &self.environments {
            match EnvName::new(raw.trim()) {
                Ok(env) => {
                    if seen.insert(env.clone()) {
                        environments.push(env);
                    } else {
                        problem("environments", format!("{env} is listed twice"));
                    }
                }
                Err(e) => problem("environments", e.to_string()),
            }
        }

        let jetstream_domain = self.jetstream_domain.as_deref().and_then(|name| {
            streams::Domain::new(name.trim())
                .map_err(|why| problem("jetstream_domain", why))
                .ok()
        });
        if !self.leaf_domains.is_empty() && self.jetstream_domain.is_none() {
            problem(
                "leaf_domains",
                "set jetstream_domain too: the hub's domain, which the leaves source their commands from".into(),
            );
        }
        let mut leaf_domains = Vec::new();
        let mut domains_seen = BTreeSet::new();
        domains_seen.extend(jetstream_domain.clone());
        for (env, domain) in &self.leaf_domains {
            let env = match EnvName::new(env.trim()) {
                Ok(env) if seen.contains(&env) => Some(env),
                Ok(env) => {
                    problem(
                        "leaf_domains",
                        format!("{env} is not an environment of the pipeline"),
                    );
                    None
                }
                Err(e) => {
                    problem("leaf_domains", e.to_string());
                    None
                }
            };
            let domain = match streams::Domain::new(domain.trim()) {
                Ok(domain) if !domains_seen.insert(domain.clone()) => {
                    problem(
                        "leaf_domains",
                        format!("{domain} is the domain of the hub or of another leaf; each needs its own"),
                    );
                    None
                }
                Ok(domain) => Some(domain),
                Err(why) => {
                    problem("leaf_domains", why);
                    None
                }
            };
            if let (Some(env), Some(domain)) = (env, domain) {
                leaf_domains.push((env, domain));
            }
        }

        // A command that outlives the commands stream would be gone before it expires.
        let max_ttl = streams::commands().max_age;
        let command_ttl = parse_duration(&self.command_ttl, Duration::from_secs(1), max_ttl)
            .map_err(|m| problem("command_ttl", m))
            .ok();
        let agent_timeout = parse_duration(
            &self.agent_timeout,
            Duration::from_secs(1),
            Duration::from_secs(24 * 60 * 60),
        )
        .map_err(|m| problem("agent_timeout", m))
        .ok();

        let approval_ttl = parse_duration(
            &self.approval_ttl,
            Duration::from_secs(1),
            Duration::from_secs(365 * 24 * 60 * 60),
        )
        .map_err(|m| problem("approval_ttl", m))
        .ok();
        let promotion_check_interval = parse_duration(
            &self.promotion_check_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )
        .map_err(|m| problem("promotion_check_interval", m))
        .ok();
        for name in self.pipeline.keys() {
            if !environments.iter().any(|e| e.as_str() == name) {
                problem(
                    "pipeline",
                    format!(
                        "{name} is not one of the environments ({})",
                        self.environments.join(", ")
                    ),
                );
            }
        }
        let mut stages = Vec::new();
        for (i, env) in environments.iter().enumerate() {
            let settings = self.pipeline.get(env.as_str()).cloned().unwrap_or_default();
            let soak = parse_duration(
                settings.soak.as_deref().unwrap_or("0s"),
                Duration::ZERO,
                Duration::from_secs(30 * 24 * 60 * 60),
            )
            .map_err(|m| problem("pipeline.soak", format!("{env}: {m}")))
            .unwrap_or_default();
            let mut reviewers = Vec::new();
            for r in &settings.reviewers {
                let name = r.name.trim();
                if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                    problem(
                        "pipeline.reviewers",
                        format!(
                            "{env}: reviewer name {:?} must be 1 to 128 printable characters",
                            r.name
                        ),
                    );
                }
                if let Err(e) = TrustedKeys::new([&r.key]) {
                    problem("pipeline.reviewers", format!("{env}: reviewer {name}: {e}"));
                } else if signing_key
                    .as_ref()
                    .is_some_and(|k| k.public_key() == r.key.trim())
                {
                    problem("pipeline.reviewers", format!("{env}: reviewer {name} holds the controller's own key; a reviewer key must be the reviewer's alone"));
                } else if reviewers.iter().any(|x: &Reviewer| x.key == r.key.trim()) {
                    problem(
                        "pipeline.reviewers",
                        format!("{env}: key of {name} is listed twice"),
                    );
                } else {
                    reviewers.push(Reviewer {
                        name: name.to_owned(),
                        key: r.key.trim().to_owned(),
                    });
                }
            }
            if settings.approvals_required as usize > reviewers.len() {
                problem(
                    "pipeline.approvals_required",
                    format!(
                        "{env}: {} approvals cannot be given by {} reviewers",
                        settings.approvals_required,
                        reviewers.len()
                    ),
                );
            }
            let reviewer_keys =
                TrustedKeys::new(reviewers.iter().map(|r| r.key.as_str())).unwrap_or_default();
            let max_parallel_hosts = settings
                .max_parallel_hosts
                .unwrap_or(wave::DEFAULT_MAX_PARALLEL_HOSTS);
            if !(1..=wave::MAX_PARALLEL_HOSTS).contains(&max_parallel_hosts) {
                problem(
                    "pipeline.max_parallel_hosts",
                    format!(
                        "{env}: {max_parallel_hosts} is outside 1..={}",
                        wave::MAX_PARALLEL_HOSTS
                    ),
                );
            }
            stages.push(Stage {
                max_parallel_hosts,
                auto_deploy: settings.auto_deploy.unwrap_or(i == 0),
                soak,
                approvals_required: settings.approvals_required,
                reviewers,
                reviewer_keys: Arc::new(reviewer_keys),
                strategy: settings.strategy.as_deref().and_then(|name| {
                    name.parse()
                        .map_err(|e| problem("pipeline.strategy", format!("{env}: {e}")))
                        .ok()
                }),
                override_reviewers: Vec::new(),
                override_keys: Arc::default(),
            });
        }
        let mut everyone: Vec<Reviewer> = Vec::new();
        for r in stages.iter().flat_map(|s| &s.reviewers) {
            if !everyone.iter().any(|x| x.key == r.key) {
                everyone.push(r.clone());
            }
        }
        for stage in &mut stages {
            stage.override_reviewers = if stage.reviewers.is_empty() {
                everyone.clone()
            } else {
                stage.reviewers.clone()
            };
            stage.override_keys = Arc::new(
                TrustedKeys::new(stage.override_reviewers.iter().map(|r| r.key.as_str()))
                    .unwrap_or_default(),
            );
        }
        let notify = self
            .notify
            .validate(&environments)
            .map_err(|found| {
                for (field, message) in found {
                    problem(field, message);
                }
            })
            .ok();
        let metrics_listen =
            dashboard::parse_listen(self.metrics_listen.as_deref(), "127.0.0.1:9464")
                .unwrap_or_else(|e| {
                    problem("metrics_listen", e);
                    None
                });
        let dashboard = self
            .dashboard
            .validate(self.dashboard_listen.as_deref())
            .map_err(|found| found.into_iter().for_each(|(f, m)| problem(f, m)))
            .unwrap_or_default();
        let alerts = AlertThresholds {
            error_rate_percent: self.alert_error_rate_percent,
            p95_ms: self.alert_p95_ms,
            availability_percent: self.alert_availability_percent,
            min_requests: self.alert_min_requests,
        };
        for (field, value) in [
            ("alert_error_rate_percent", alerts.error_rate_percent),
            ("alert_availability_percent", alerts.availability_percent),
        ] {
            if !(0.0..=100.0).contains(&value) {
                problem(field, format!("{value} is not a percentage from 0 to 100"));
            }
        }
        if !(alerts.p95_ms.is_finite() && alerts.p95_ms > 0.0) {
            problem(
                "alert_p95_ms",
                format!("{} is not a positive number of milliseconds", alerts.p95_ms),
            );
        }

        match (
            signing_key,
            environments.first().cloned(),
            command_ttl,
            agent_timeout,
            (approval_ttl, promotion_check_interval, notify),
        ) {
            (
                Some(key),
                Some(first_environment),
                Some(command_ttl),
                Some(agent_timeout),
                (Some(approval_ttl), Some(promotion_check_interval), Some(notify)),
            ) if problems.is_empty() => Ok(ResolvedConfig {
                nats_url: nats_url.to_owned(),
                stream_replicas,
                jetstream_domain,
                leaf_domains,
                nats_creds: self.nats_creds.clone(),
                nats_user: self.nats_user.clone(),
                nats_password_file: self.nats_password_file.clone(),
                nats_tls,
                nats_inbox_prefix: self.nats_inbox_prefix.clone(),
                signing_key: Arc::new(key),
                first_environment,
                environments,
                command_ttl,
                agent_timeout,
                approval_ttl,
                security_override_approvals: self.security_override_approvals,
                promotion_check_interval,
                stages,
                notify,
                metrics_listen,
                dashboard,
                alerts,
            }),
            _ => Err(problems),
        }
    }
}

fn parse_duration(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let value = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as \"15s\" or \"1h\": {e}"))?;
    if value < min || value > max {
        return Err(format!(
            "{text:?} is outside {} to {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
