//! The agent's configuration: a TOML file plus `FERRY_*` environment overrides,
//! read with the `config` crate, then checked as a whole so an operator sees
//! every problem at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_protocol::command::check_health_path;
use ferry_protocol::{EnvName, ServiceName, TrustedKeys};
use serde::Deserialize;

use crate::analysis::Thresholds;
use crate::Error;
use ferry_protocol::rollout::{AnalysisOverride, Strategy};

/// Prefix of environment overrides: `FERRY_NATS_URL`, `FERRY_SERVICES__WEB__PORT`...
pub const ENV_PREFIX: &str = "FERRY";

/// Which runtime runs a service's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Each replica is a child process of the agent.
    Process,
    /// Each replica is a container on the local Docker engine.
    Docker,
}

impl RuntimeKind {
    /// The name used in configuration and events.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
        }
    }
}

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

/// Container settings of a service with `runtime = "docker"`; unused (and
/// refused in configuration) otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerOptions {
    /// The port the service listens on inside its container (`$PORT`).
    pub container_port: u16,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit in billionths of a CPU (`cpus = 1.5` is 1_500_000_000).
    pub nano_cpus: Option<i64>,
    /// Docker network to attach containers to (the engine's default otherwise).
    pub network: Option<String>,
    /// Extra container labels; keys under `io.ferry.` are reserved.
    pub labels: BTreeMap<String, String>,
    /// Pull a release's image from its registry when the engine lacks it.
    pub pull: bool,
    /// Credentials for that registry, if it needs them.
    pub registry: Option<RegistryAuth>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            container_port: 8080,
            memory: None,
            nano_cpus: None,
            network: None,
            labels: BTreeMap::new(),
            pull: false,
            registry: None,
        }
    }
}

/// Registry credentials from configuration; the password is read from a file
/// so it never sits in the configuration itself, and is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// Registry address, e.g. `registry.example:5000` (the image's own when absent).
    pub server: Option<String>,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
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
    /// The stable address the agent's proxy serves the service on.
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
    /// How deploys replace the running version unless a command says
    /// otherwise (`recreate`: the health-gated replace).
    pub strategy: Strategy,
    /// Thresholds a new version is held to during canary steps.
    pub analysis: Thresholds,
}

/// The agent's whole configuration, checked.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The environment this agent serves.
    pub environment: EnvName,
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// NATS credentials file.
    pub nats_creds: Option<PathBuf>,
    /// NATS user name (with `nats_password_file`), for a server with
    /// per-role users such as `deploy/nats/nats-server.conf`.
    pub nats_user: Option<String>,
    /// File holding `nats_user`'s password; read at connect time, never logged.
    pub nats_password_file: Option<PathBuf>,
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

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    environment: Option<String>,
    nats_url: Option<String>,
    nats_creds: Option<PathBuf>,
    nats_user: Option<String>,
    nats_password_file: Option<PathBuf>,
    nats_inbox_prefix: Option<String>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    trusted_keys: Vec<String>,
    #[serde(default)]
    approvals_required: u32,
    #[serde(default)]
    reviewer_keys: Vec<String>,
    heartbeat_interval: Option<String>,
    metrics_interval: Option<String>,
    shutdown_grace: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
}

#[derive(Debug, Default, Deserialize)]
struct RawService {
    runtime: Option<String>,
    command: Option<Vec<String>>,
    listen: Option<String>,
    port: Option<u16>,
    replicas: Option<u32>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    health: RawHealth,
    stop_timeout: Option<String>,
    container_port: Option<u16>,
    memory: Option<String>,
    cpus: Option<f64>,
    network: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    pull: Option<bool>,
    registry_server: Option<String>,
    registry_username: Option<String>,
    registry_password_file: Option<PathBuf>,
    strategy: Option<Strategy>,
    analysis: Option<AnalysisOverride>,
}

#[derive(Debug, Default, Deserialize)]
struct RawHealth {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    failure_threshold: Option<u32>,
    start_timeout: Option<String>,
}

/// The reply-inbox prefix an environment's agent uses unless configured: the
/// one `deploy/nats/nats-server.conf` lets that agent subscribe to.
pub fn default_inbox_prefix(environment: &EnvName) -> String {
    format!("_INBOX_ferry_agent_{environment}")
}

/// A usable inbox prefix: non-empty subject tokens, no wildcards or spaces.
fn valid_inbox_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && !token.contains(['*', '>'])
                && !token.chars().any(char::is_whitespace)
        })
}

/// What is wrong with the NATS authentication settings: a password file
/// without a user (or the reverse), one that cannot be read, or both a
/// credentials file and a user.
fn nats_auth_problems(
    creds: bool,
    user: Option<&str>,
    password_file: Option<&Path>,
) -> Vec<String> {
    let mut problems = Vec::new();
    match (user, password_file) {
        (Some(user), Some(file)) => {
            if user.trim().is_empty() {
                problems.push("nats_user: must not be empty".into());
            }
            if !file.is_file() {
                problems.push(format!(
                    "nats_password_file: {} is not a readable file",
                    file.display()
                ));
            }
            if creds {
                problems
                    .push("nats_creds and nats_user: set one way to authenticate, not both".into());
            }
        }
        (Some(_), None) => problems
            .push("nats_user: set nats_password_file (the file holding its password)".into()),
        (None, Some(_)) => {
            problems.push("nats_password_file: set nats_user (whose password it holds)".into())
        }
        (None, None) => {}
    }
    problems
}

/// Loads the configuration from `file` (if any) and `FERRY_*` variables.
pub fn load(file: Option<&Path>) -> Result<AgentConfig, Error> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(
            config::File::from(path.to_path_buf())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("trusted_keys")
            .with_list_parse_key("reviewer_keys")
            .try_parsing(true),
    );
    let raw: RawConfig = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| Error::Config(vec![e.to_string()]))?;
    resolve(raw)
}

/// Parses TOML text (no environment overrides); for tests and tools.
pub fn from_toml(text: &str) -> Result<AgentConfig, Error> {
    let raw: RawConfig = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| Error::Config(vec![e.to_string()]))?;
    resolve(raw)
}

fn duration(
    problems: &mut Vec<String>,
    field: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                problems.push(format!("{field}: must be greater than zero"));
                default
            }
            Err(e) => {
                problems.push(format!(
                    "{field}: {text:?} is not a duration like \"500ms\" or \"30s\": {e}"
                ));
                default
            }
        },
    }
}

/// Parses a memory size: bytes, or a number with `k`, `m` or `g` (binary
/// units, as Docker reads them), optionally followed by `b`: "256m", "1GB".
pub fn parse_memory(text: &str) -> Option<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, unit) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1_i64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        _ => (lower, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok()?.checked_mul(unit)
}

/// Docker's own floor for a memory limit.
const MIN_MEMORY: i64 = 6 << 20;

fn docker_options(
    problems: &mut Vec<String>,
    prefix: &str,
    runtime: RuntimeKind,
    service: &RawService,
) -> DockerOptions {
    let mut options = DockerOptions::default();
    if runtime != RuntimeKind::Docker {
        let set = [
            ("container_port", service.container_port.is_some()),
            ("memory", service.memory.is_some()),
            ("cpus", service.cpus.is_some()),
            ("network", service.network.is_some()),
            ("labels", service.labels.is_some()),
            ("pull", service.pull.is_some()),
            ("registry_server", service.registry_server.is_some()),
            ("registry_username", service.registry_username.is_some()),
            (
                "registry_password_file",
                service.registry_password_file.is_some(),
            ),
        ];
        for (field, _) in set.iter().filter(|(_, set)| *set) {
            problems.push(format!(
                "{prefix}.{field}: only used with runtime = \"docker\""
            ));
        }
        return options;
    }
    match service.container_port {
        Some(0) => problems.push(format!("{prefix}.container_port: must not be 0")),
        Some(port) => options.container_port = port,
        None => {}
    }
    if let Some(text) = &service.memory {
        match parse_memory(text) {
            Some(bytes) if bytes >= MIN_MEMORY => options.memory = Some(bytes),
            Some(_) => problems.push(format!(
                "{prefix}.memory: {text:?} is below Docker's minimum of 6m"
            )),
            None => problems.push(format!(
                "{prefix}.memory: {text:?} is not a size like \"256m\" or \"1g\""
            )),
        }
    }
    if let Some(cpus) = service.cpus {
        if (0.01..=1024.0).contains(&cpus) {
            // In range, so the product fits an i64 with room to spare.
            let nano = (cpus * 1e9).round() as i64;
            options.nano_cpus = Some(nano);
        } else {
            problems.push(format!("{prefix}.cpus: {cpus} is outside 0.01..=1024"));
        }
    }
    if let Some(network) = &service.network {
        if network.trim().is_empty() {
            problems.push(format!("{prefix}.network: must not be empty"));
        } else {
            options.network = Some(network.clone());
        }
    }
    options.pull = service.pull.unwrap_or(false);
    match (&service.registry_username, &service.registry_password_file) {
        (Some(username), Some(file)) => match std::fs::read_to_string(file) {
            Ok(password) if !password.trim().is_empty() => {
                options.registry = Some(RegistryAuth {
                    server: service.registry_server.clone(),
                    username: username.clone(),
                    password: password.trim().to_owned(),
                })
            }
            Ok(_) => problems.push(format!(
                "{prefix}.registry_password_file: {} is empty",
                file.display()
            )),
            Err(e) => problems.push(format!(
                "{prefix}.registry_password_file: {}: {e}",
                file.display()
            )),
        },
        (None, None) => {}
        _ => problems.push(format!(
            "{prefix}: registry_username and registry_password_file go together"
        )),
    }
    if options.registry.is_some() && !options.pull {
        problems.push(format!(
            "{prefix}: registry credentials are set but pull = true is not"
        ));
    }
    for (key, value) in service.labels.iter().flatten() {
        if key.starts_with("io.ferry.") {
            problems.push(format!(
                "{prefix}.labels: {key:?} is reserved (io.ferry.* labels are set by ferry)"
            ));
        } else if key.trim().is_empty() {
            problems.push(format!("{prefix}.labels: a label key must not be empty"));
        } else {
            options.labels.insert(key.clone(), value.clone());
        }
    }
    options
}

fn resolve(raw: RawConfig) -> Result<AgentConfig, Error> {
    let mut problems = Vec::new();

    let environment = match raw.environment.as_deref() {
        None => {
            problems.push(
                "environment: missing (e.g. environment = \"dev\" or FERRY_ENVIRONMENT=dev)".into(),
            );
            None
        }
        Some(name) => match EnvName::new(name) {
            Ok(env) => Some(env),
            Err(e) => {
                problems.push(format!("environment: {e}"));
                None
            }
        },
    };
    let nats_url = raw
        .nats_url
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    if nats_url.trim().is_empty() {
        problems.push("nats_url: must not be empty".into());
    }
    if let Some(creds) = &raw.nats_creds {
        if !creds.is_file() {
            problems.push(format!(
                "nats_creds: {} is not a readable file",
                creds.display()
            ));
        }
    }
    problems.extend(nats_auth_problems(
        raw.nats_creds.is_some(),
        raw.nats_user.as_deref(),
        raw.nats_password_file.as_deref(),
    ));
    if let Some(prefix) = &raw.nats_inbox_prefix {
        if !valid_inbox_prefix(prefix) {
            problems.push(format!(
                "nats_inbox_prefix: {prefix:?} is not a NATS subject prefix without wildcards or spaces"
            ));
        }
    }
    let state_dir = match raw.state_dir {
        Some(dir) => dir,
        None => {
            problems.push(
                "state_dir: missing (a directory the agent may write, e.g. /var/lib/ferry)".into(),
            );
            PathBuf::new()
        }
    };
    if raw.trusted_keys.is_empty() {
        problems.push(
            "trusted_keys: empty; list the controller's public key (ferry keygen prints one), or every command will be refused"
                .into(),
        );
    }
    for key in &raw.trusted_keys {
        if let Err(e) = TrustedKeys::new([key]) {
            problems.push(format!("trusted_keys: {e}"));
        }
    }
    for key in &raw.reviewer_keys {
        if let Err(e) = TrustedKeys::new([key]) {
            problems.push(format!("reviewer_keys: {e}"));
        }
    }
    if raw
        .reviewer_keys
        .iter()
        .any(|k| raw.trusted_keys.contains(k))
    {
        problems.push(
            "reviewer_keys: a key is both a reviewer and a trusted command signer; a reviewer's key must be the reviewer's alone, or the controller could approve its own commands"
                .into(),
        );
    }
    let distinct_reviewers = raw
        .reviewer_keys
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if raw.approvals_required as usize > distinct_reviewers {
        problems.push(format!(
            "approvals_required: {} approvals cannot be given by {distinct_reviewers} reviewer keys; list the reviewers' public keys (ferry keygen) in reviewer_keys",
            raw.approvals_required
        ));
    }
    let heartbeat_interval = duration(
        &mut problems,
        "heartbeat_interval",
        raw.heartbeat_interval.as_deref(),
        Duration::from_secs(5),
    );
    let metrics_interval = duration(
        &mut problems,
        "metrics_interval",
        raw.metrics_interval.as_deref(),
        Duration::from_secs(5),
    );
    let shutdown_grace = duration(
        &mut problems,
        "shutdown_grace",
        raw.shutdown_grace.as_deref(),
        Duration::from_secs(30),
    );

    if raw.services.is_empty() {
        problems.push("services: none configured; add a [services.NAME] table".into());
    }
    let mut services = BTreeMap::new();
    let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (name, service) in raw.services {
        let prefix = format!("services.{name}");
        let Ok(service_name) = ServiceName::new(&name) else {
            problems.push(format!(
                "{prefix}: {name:?} is not a valid service name (a-z, 0-9 and '-')"
            ));
            continue;
        };
        let runtime = match service.runtime.as_deref().unwrap_or("process") {
            "process" => RuntimeKind::Process,
            "docker" => RuntimeKind::Docker,
            other => {
                problems.push(format!(
                    "{prefix}.runtime: {other:?} is not available in this build (supported: \"process\", \"docker\")"
                ));
                RuntimeKind::Process
            }
        };
        let docker = docker_options(&mut problems, &prefix, runtime, &service);
        if runtime == RuntimeKind::Docker && service.command.is_some() {
            problems.push(format!(
                "{prefix}.command: not used by runtime \"docker\" (the image's entrypoint runs); remove it"
            ));
        }
        let command = service.command.unwrap_or_else(|| vec!["{artifact}".into()]);
        if command.first().is_none_or(|c| c.trim().is_empty()) {
            problems.push(format!(
                "{prefix}.command: must name a program, e.g. [\"{{artifact}}\"]"
            ));
        }
        let listen = match (service.listen.as_deref(), service.port) {
            (Some(addr), _) => match addr.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!(
                        "{prefix}.listen: {addr:?} is not an address like 127.0.0.1:8080"
                    ));
                    None
                }
            },
            (None, Some(0)) => {
                problems.push(format!("{prefix}.port: must not be 0"));
                None
            }
            (None, Some(port)) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
            (None, None) => {
                problems.push(format!(
                    "{prefix}: needs port = N (or listen = \"ADDR:PORT\") for its stable address"
                ));
                None
            }
        };
        if let Some(addr) = listen {
            if let Some(other) = listens.insert(addr, name.clone()) {
                problems.push(format!(
                    "{prefix}: listens on {addr}, as does services.{other}"
                ));
            }
        }
        let replicas = service.replicas.unwrap_or(1);
        if replicas == 0 || replicas > ferry_protocol::command::MAX_REPLICAS {
            problems.push(format!(
                "{prefix}.replicas: {replicas} is outside 1..={}",
                ferry_protocol::command::MAX_REPLICAS
            ));
        }
        let defaults = HealthConfig::default();
        let health = HealthConfig {
            path: service.health.path.unwrap_or(defaults.path),
            interval: duration(
                &mut problems,
                &format!("{prefix}.health.interval"),
                service.health.interval.as_deref(),
                defaults.interval,
            ),
            timeout: duration(
                &mut problems,
                &format!("{prefix}.health.timeout"),
                service.health.timeout.as_deref(),
                defaults.timeout,
            ),
            failure_threshold: service
                .health
                .failure_threshold
                .unwrap_or(defaults.failure_threshold),
            start_timeout: duration(
                &mut problems,
                &format!("{prefix}.health.start_timeout"),
                service.health.start_timeout.as_deref(),
                defaults.start_timeout,
            ),
        };
        if let Err(e) = check_health_path(&health.path) {
            problems.push(format!("{prefix}.health.path: {e}"));
        }
        if health.failure_threshold == 0 {
            problems.push(format!(
                "{prefix}.health.failure_threshold: must be at least 1"
            ));
        }
        let strategy = service.strategy.clone().unwrap_or(Strategy::Recreate);
        if let Err(e) = strategy.validate() {
            problems.push(format!("{prefix}.strategy: {e}"));
        }
        let mut analysis = Thresholds::default();
        if let Some(o) = &service.analysis {
            match o.validate() {
                Ok(()) => analysis = analysis.with(o),
                Err(e) => problems.push(format!("{prefix}.analysis: {e}")),
            }
        }
        let stop_timeout = duration(
            &mut problems,
            &format!("{prefix}.stop_timeout"),
            service.stop_timeout.as_deref(),
            Duration::from_secs(10),
        );
        if let Some(listen) = listen {
            services.insert(
                service_name.clone(),
                ServiceConfig {
                    name: service_name,
                    runtime,
                    command,
                    listen,
                    replicas,
                    env: service.env,
                    health,
                    stop_timeout,
                    docker,
                    strategy,
                    analysis,
                },
            );
        }
    }

    match environment {
        Some(environment) if problems.is_empty() => Ok(AgentConfig {
            nats_inbox_prefix: raw
                .nats_inbox_prefix
                .unwrap_or_else(|| default_inbox_prefix(&environment)),
            environment,
            nats_url,
            nats_creds: raw.nats_creds,
            nats_user: raw.nats_user,
            nats_password_file: raw.nats_password_file,
            state_dir,
            trusted_keys: raw.trusted_keys,
            approvals_required: raw.approvals_required,
            reviewer_keys: raw.reviewer_keys,
            heartbeat_interval,
            metrics_interval,
            shutdown_grace,
            services,
        }),
        _ => Err(Error::Config(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_user_needs_a_readable_password_file_and_the_inbox_defaults_per_environment() {
        let key = ferry_protocol::SigningKey::generate().public_key();
        let base = format!(
            "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n[services.web]\nport = 18080\n"
        );
        let cfg = from_toml(&base).expect("no NATS user is fine");
        assert_eq!(cfg.nats_inbox_prefix, "_INBOX_ferry_agent_production");
        assert_eq!(cfg.nats_user, None);

        let Err(Error::Config(problems)) =
            from_toml(&format!("nats_user = \"ferry-agent-production\"\n{base}"))
        else {
            panic!("accepted a user without a password file");
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("nats_user: set nats_password_file")),
            "{problems:?}"
        );

        let Err(Error::Config(problems)) = from_toml(&format!(
            "nats_user = \"u\"\nnats_password_file = \"/nonexistent/pw\"\nnats_inbox_prefix = \"_INBOX.>\"\n{base}"
        )) else {
            panic!("accepted a missing password file and a wildcard prefix");
        };
        let joined = problems.join("\n");
        assert!(
            joined.contains("nats_password_file: /nonexistent/pw is not a readable file"),
            "{joined}"
        );
        assert!(
            joined.contains("nats_inbox_prefix: \"_INBOX.>\""),
            "{joined}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        let cfg = from_toml(&format!(
            "nats_user = \"ferry-agent-production\"\nnats_password_file = {:?}\n{base}",
            file.display().to_string()
        ))
        .expect("user and password file");
        assert_eq!(cfg.nats_user.as_deref(), Some("ferry-agent-production"));
        assert!(
            !format!("{cfg:?}").contains("s3cret-value"),
            "the configuration holds the path, never the password"
        );
    }

    #[test]
    fn approval_gate_settings_are_checked() {
        let controller = ferry_protocol::SigningKey::generate().public_key();
        let reviewer = ferry_protocol::SigningKey::generate().public_key();
        let text = format!(
            "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{controller}\"]\napprovals_required = 2\nreviewer_keys = [\"{reviewer}\", \"{controller}\", \"nope\"]\n"
        );
        let Err(Error::Config(problems)) = from_toml(&text) else {
            panic!("accepted a bad approval gate");
        };
        let joined = problems.join("\n");
        assert!(
            joined.contains("reviewer_keys: key error: \"nope\""),
            "{joined}"
        );
        assert!(joined.contains("both a reviewer"), "{joined}");
        let text = format!(
            "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{controller}\"]\napprovals_required = 2\nreviewer_keys = [\"{reviewer}\"]\n"
        );
        let Err(Error::Config(problems)) = from_toml(&text) else {
            panic!("accepted 2 approvals from 1 reviewer");
        };
        assert!(
            problems[0].starts_with("approvals_required"),
            "{problems:?}"
        );
        let other = ferry_protocol::SigningKey::generate().public_key();
        let text = format!(
            "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{controller}\"]\napprovals_required = 2\nreviewer_keys = [\"{reviewer}\", \"{other}\"]\n[services.web]\nruntime = \"docker\"\nport = 18080\n"
        );
        let config = from_toml(&text).unwrap();
        assert_eq!(config.approvals_required, 2);
        assert_eq!(config.reviewers().unwrap().len(), 2);
    }

    #[test]
    fn a_complete_file_resolves() {
        let key = ferry_protocol::SigningKey::generate().public_key();
        let cfg = from_toml(&format!(
            r#"
            environment = "dev"
            state_dir = "/tmp/x"
            trusted_keys = ["{key}"]
            [services.web]
            command = ["{{artifact}}", "--port", "{{port}}"]
            port = 18080
            replicas = 2
            [services.web.health]
            path = "/healthz"
            start_timeout = "5s"
            "#
        ))
        .unwrap();
        let web = &cfg.services[&ServiceName::new("web").unwrap()];
        assert_eq!(web.replicas, 2);
        assert_eq!(web.listen.port(), 18080);
        assert_eq!(web.health.path, "/healthz");
        assert_eq!(web.health.start_timeout, Duration::from_secs(5));
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(5));
    }

    #[test]
    fn strategy_and_analysis_resolve_per_service_with_the_seeds_defaults() {
        let key = ferry_protocol::SigningKey::generate().public_key();
        let cfg = from_toml(&format!(
            r#"
            environment = "production"
            state_dir = "/tmp/x"
            trusted_keys = ["{key}"]
            [services.web]
            port = 18080
            [services.web.strategy]
            type = "canary"
            steps = [10, 35, 60, 85, 100]
            step_secs = 30
            [services.web.analysis]
            error_rate_percent = 2.0
            interval_ms = 2000
            [services.api]
            port = 18081
            [services.api.strategy]
            type = "blue_green"
            "#
        ))
        .unwrap();
        let web = &cfg.services[&ServiceName::new("web").unwrap()];
        assert_eq!(web.strategy, Strategy::default_canary());
        assert_eq!(web.analysis.error_rate_percent, 2.0);
        assert_eq!(web.analysis.interval, Duration::from_secs(2));
        assert_eq!(web.analysis.p95_ms, 2000.0, "the rest keeps the defaults");
        let api = &cfg.services[&ServiceName::new("api").unwrap()];
        assert_eq!(
            api.strategy,
            Strategy::BlueGreen {
                keep_old_for_secs: 60
            }
        );
        assert_eq!(api.analysis, Thresholds::default());

        let bad = from_toml(&format!(
            r#"
            environment = "production"
            state_dir = "/tmp/x"
            trusted_keys = ["{key}"]
            [services.web]
            port = 18080
            [services.web.strategy]
            type = "canary"
            steps = [50, 10]
            "#
        ))
        .unwrap_err();
        assert!(bad.to_string().contains("services.web.strategy"), "{bad}");
    }

    #[test]
    fn a_docker_service_resolves_its_container_settings() {
        let key = ferry_protocol::SigningKey::generate().public_key();
        let cfg = from_toml(&format!(
            r#"
            environment = "dev"
            state_dir = "/tmp/x"
            trusted_keys = ["{key}"]
            [services.web]
            runtime = "docker"
            port = 18080
            container_port = 9000
            memory = "256m"
            cpus = 1.5
            network = "ferry"
            labels = {{ team = "checkout" }}
            [services.api]
            runtime = "docker"
            port = 18081
            "#
        ))
        .unwrap();
        let web = &cfg.services[&ServiceName::new("web").unwrap()];
        assert_eq!(web.runtime, RuntimeKind::Docker);
        assert_eq!(web.docker.container_port, 9000);
        assert_eq!(web.docker.memory, Some(256 << 20));
        assert_eq!(web.docker.nano_cpus, Some(1_500_000_000));
        assert_eq!(web.docker.network.as_deref(), Some("ferry"));
        assert_eq!(web.docker.labels["team"], "checkout");
        let api = &cfg.services[&ServiceName::new("api").unwrap()];
        assert_eq!(api.docker, DockerOptions::default());
        assert_eq!(api.docker.container_port, 8080);
    }

    #[test]
    fn memory_sizes_parse_in_binary_units() {
        assert_eq!(parse_memory("1048576"), Some(1 << 20));
        assert_eq!(parse_memory("512k"), Some(512 << 10));
        assert_eq!(parse_memory("256m"), Some(256 << 20));
        assert_eq!(parse_memory("256MB"), Some(256 << 20));
        assert_eq!(parse_memory("2g"), Some(2 << 30));
        for bad in ["", "m", "-1m", "1.5g", "12x", "99999999999999999g"] {
            assert_eq!(parse_memory(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn docker_settings_problems_are_listed_at_once() {
        let key = ferry_protocol::SigningKey::generate().public_key();
        let err = from_toml(&format!(
            r#"
            environment = "dev"
            state_dir = "/tmp/x"
            trusted_keys = ["{key}"]
            [services.web]
            runtime = "docker"
            port = 18080
            command = ["x"]
            container_port = 0
            memory = "lots"
            cpus = 0.0
            network = ""
            labels = {{ "io.ferry.service" = "other" }}
            [services.proc]
            port = 18081
            memory = "256m"
            "#
        ))
        .unwrap_err();
        let Error::Config(problems) = err else {
            panic!("{err}")
        };
        let text = problems.join("\n");
        for expected in [
            "services.web.command: not used",
            "services.web.container_port",
            "services.web.memory",
            "services.web.cpus",
            "services.web.network",
            "services.web.labels: \"io.ferry.service\" is reserved",
            "services.proc.memory: only used with runtime = \"docker\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = from_toml(
            r#"
            environment = "Dev Env"
            heartbeat_interval = "soon"
            trusted_keys = ["not-a-key"]
            [services.web]
            runtime = "mainframe"
            replicas = 0
            [services.web.health]
            path = "health"
            [services."Bad.Name"]
            port = 1
            "#,
        )
        .unwrap_err();
        let Error::Config(problems) = err else {
            panic!("{err}")
        };
        let text = problems.join("\n");
        for expected in [
            "environment:",
            "state_dir: missing",
            "trusted_keys:",
            "heartbeat_interval",
            "services.web.runtime",
            "services.web.replicas",
            "services.web: needs port",
            "services.web.health.path",
            "not a valid service name",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(problems.len() >= 9, "{text}");
    }

    #[test]
    fn registry_credentials_come_from_a_file_and_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("registry.pass");
        std::fs::write(&secret, "s3cret-token\n").unwrap();
        let key = ferry_protocol::SigningKey::generate().public_key();
        let base = format!(
            "environment = \"dev\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n[services.web]\nruntime = \"docker\"\nport = 18080\n"
        );
        let cfg = from_toml(&format!(
            "{base}pull = true\nregistry_username = \"ci\"\nregistry_password_file = \"{}\"\n",
            secret.display()
        ))
        .unwrap();
        let web = &cfg.services[&ServiceName::new("web").unwrap()];
        let auth = web.docker.registry.as_ref().unwrap();
        assert_eq!(auth.password, "s3cret-token");
        assert!(
            !format!("{cfg:?}").contains("s3cret"),
            "the password is redacted"
        );

        let Err(Error::Config(problems)) =
            from_toml(&format!("{base}registry_username = \"ci\"\n"))
        else {
            panic!("a user name without a password file is refused")
        };
        assert!(
            problems.iter().any(|p| p.contains("go together")),
            "{problems:?}"
        );
    }
}
