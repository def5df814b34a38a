//! The Docker runtime's options of a service, and memory sizes.

use std::collections::BTreeMap;

use super::raw::RawService;
use super::runtime_kind::RuntimeKind;

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
pub(super) const MIN_MEMORY: i64 = 6 << 20;

pub(super) fn docker_options(
    problems: &mut Vec<String>,
    prefix: &str,
    runtime: RuntimeKind,
    service: &RawService,
) -> DockerOptions {
    let mut options = DockerOptions::default();
    if runtime != RuntimeKind::Docker {
        // Kubernetes shares the container port and labels.
        let shared = runtime == RuntimeKind::Kubernetes;
        let set = [
            (
                "container_port",
                service.container_port.is_some() && !shared,
            ),
            ("memory", service.memory.is_some()),
            ("cpus", service.cpus.is_some()),
            ("network", service.network.is_some()),
            ("labels", service.labels.is_some() && !shared),
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
