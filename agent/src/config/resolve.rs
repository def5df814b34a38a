//! Checking the configuration as read into an `AgentConfig`, collecting every
//! problem before failing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_protocol::command::check_health_path;
use ferry_protocol::{EnvName, HostName, ServiceName, TrustedKeys};

use crate::Error;
use ferry_analysis::Thresholds;

use super::checked::{AgentConfig, HealthConfig, ServiceConfig};
use super::docker::docker_options;
use super::kubernetes::kubernetes_options;
use super::metrics::metrics_provider;
use super::metrics::MetricsProvider;
use super::raw::RawConfig;
use super::runtime_kind::RuntimeKind;
use ferry_protocol::rollout::Strategy;

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

/// Why `path` cannot be read as a file, if it cannot.
fn unreadable(path: &Path) -> Option<String> {
    match std::fs::File::open(path) {
        Err(e) => Some(e.to_string()),
        Ok(_) if !path.is_file() => Some("not a file".to_owned()),
        Ok(_) => None,
    }
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

/// The configured host name, or the machine's: its hostname up to the first
/// dot, lowercased, with any other character outside a-z, 0-9 and '-' made a
/// '-', so `Web_3.prod.example.com` reports as `web-3` and an odd hostname
/// never stops an agent that was not given one (`localhost` if nothing is left).
fn resolve_host(configured: Option<&str>, problems: &mut Vec<String>) -> Option<HostName> {
    match configured {
        Some(name) => HostName::new(name)
            .map_err(|e| problems.push(format!("host: {e}")))
            .ok(),
        None => {
            let machine = sysinfo::System::host_name().unwrap_or_default();
            machine_host_name(&machine)
                .map_err(|e| problems.push(format!("host: missing, and the machine's hostname {machine:?} is not usable ({e}); set host = \"web-1\" or FERRY_HOST=web-1")))
                .ok()
        }
    }
}

/// A host name made from a machine's hostname (see [`resolve_host`]).
pub(super) fn machine_host_name(machine: &str) -> Result<HostName, ferry_protocol::Error> {
    let short: String = machine
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let short = short.trim_matches('-');
    HostName::new(if short.is_empty() { "localhost" } else { short })
}

pub(super) fn resolve(raw: RawConfig) -> Result<AgentConfig, Error> {
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
    let host = resolve_host(raw.host.as_deref(), &mut problems);
    let nats_url = raw
        .nats_url
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    if let Err(why) = ferry_protocol::streams::server_list(&nats_url) {
        problems.push(format!("nats_url: {why}"));
    }
    let stream_replicas = match raw.stream_replicas {
        None => ferry_protocol::streams::Replicas::ONE,
        Some(count) => ferry_protocol::streams::Replicas::new(count).unwrap_or_else(|why| {
            problems.push(format!("stream_replicas: {why}"));
            ferry_protocol::streams::Replicas::ONE
        }),
    };
    let leaf = leaf_domains(
        raw.jetstream_domain.as_deref(),
        raw.hub_domain.as_deref(),
        &mut problems,
    );
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
    let nats_tls = ferry_protocol::nats_tls::TlsFiles {
        ca_file: raw.nats_tls_ca_file,
        cert_file: raw.nats_tls_cert_file,
        key_file: raw.nats_tls_key_file,
    };
    problems.extend(
        nats_tls
            .problems(unreadable)
            .into_iter()
            .map(|(key, why)| format!("{key}: {why}")),
    );
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
        let runtime = match service.runtime.as_deref() {
            None => RuntimeKind::DEFAULT,
            Some(name) => RuntimeKind::from_name(name).unwrap_or_else(|| {
                problems.push(format!(
                    "{prefix}.runtime: {name:?} is not available in this build (supported: {})",
                    RuntimeKind::supported()
                ));
                RuntimeKind::DEFAULT
            }),
        };
        let docker = docker_options(&mut problems, &prefix, runtime, &service);
        let kubernetes = kubernetes_options(&mut problems, &prefix, runtime, &service);
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
            // A Service routes on Kubernetes; the agent listens for nothing.
            (None, None) if runtime == RuntimeKind::Kubernetes => {
                Some(SocketAddr::from(([0, 0, 0, 0], 0)))
            }
            (Some(_), _) | (_, Some(_)) if runtime == RuntimeKind::Kubernetes => {
                problems.push(format!(
                    "{prefix}: port and listen are not used by runtime \"kubernetes\" (set kubernetes.service_port); remove them"
                ));
                None
            }
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
        if let Some(addr) = listen.filter(|a| a.port() != 0) {
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
        let metrics =
            metrics_provider(service.metrics, &format!("{prefix}.metrics"), &mut problems);
        if runtime == RuntimeKind::Kubernetes
            && matches!(strategy, Strategy::Canary { .. })
            && metrics == MetricsProvider::Proxy
        {
            problems.push(format!(
                "{prefix}.strategy: a canary on runtime \"kubernetes\" needs [{prefix}.metrics] provider = \"prometheus\" (the agent's proxy sees none of a cluster's traffic, so nothing could judge it)"
            ));
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
                    kubernetes,
                    strategy,
                    analysis,
                    metrics,
                },
            );
        }
    }

    match (environment, host) {
        (Some(environment), Some(host)) if problems.is_empty() => Ok(AgentConfig {
            host,
            nats_inbox_prefix: raw
                .nats_inbox_prefix
                .unwrap_or_else(|| default_inbox_prefix(&environment)),
            environment,
            nats_url,
            stream_replicas,
            leaf,
            nats_creds: raw.nats_creds,
            nats_user: raw.nats_user,
            nats_password_file: raw.nats_password_file,
            nats_tls,
            state_dir,
            trusted_keys: raw.trusted_keys,
            approvals_required: raw.approvals_required,
            reviewer_keys: raw.reviewer_keys,
            heartbeat_interval,
            metrics_interval,
            shutdown_grace,
            clock_offset_secs: raw.clock_offset_secs,
            services,
        }),
        _ => Err(Error::Config(problems)),
    }
}

/// `jetstream_domain` and `hub_domain`: both or neither. A leaf's agent
/// needs the hub's domain to source its commands from, and a hub domain
/// alone would leave the agent on a domain it does not name.
fn leaf_domains(
    leaf: Option<&str>,
    hub: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<ferry_protocol::streams::LeafDomains> {
    use ferry_protocol::streams::{Domain, LeafDomains};
    let mut check = |field: &str, name: Option<&str>| {
        name.and_then(|name| {
            Domain::new(name)
                .map_err(|why| problems.push(format!("{field}: {why}")))
                .ok()
        })
    };
    let (leaf_domain, hub_domain) = (check("jetstream_domain", leaf), check("hub_domain", hub));
    match (leaf, hub) {
        (None, None) => None,
        (Some(_), None) => {
            problems.push(
                "jetstream_domain: set without hub_domain; a leaf's agent sources its \
                 commands from the hub's domain (hub_domain = \"hub\")"
                    .to_owned(),
            );
            None
        }
        (None, Some(_)) => {
            problems.push(
                "hub_domain: set without jetstream_domain, the domain of this environment's \
                 leaf node the agent connects to"
                    .to_owned(),
            );
            None
        }
        (Some(_), Some(_)) => match (leaf_domain, hub_domain) {
            (Some(leaf), Some(hub)) if leaf == hub => {
                problems.push(format!(
                    "hub_domain: {hub} is also jetstream_domain; the leaf node's domain must differ from the hub's"
                ));
                None
            }
            (Some(leaf), Some(hub)) => Some(LeafDomains { leaf, hub }),
            _ => None,
        },
    }
}
