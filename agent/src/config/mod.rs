//! The agent's configuration: a TOML file plus `FERRY_*` environment overrides,
//! read with the `config` crate, then checked as a whole so an operator sees
//! every problem at once. Its modules depend downward: `runtime_kind` and
//! `raw` (the file as read) at the bottom, each runtime's and the metrics
//! provider's options above them, `checked` (the result), then `resolve`
//! (turning one into the other).

mod checked;
mod docker;
mod kubernetes;
mod metrics;
mod raw;
mod resolve;
mod runtime_kind;
#[cfg(test)]
mod tests;

use std::path::Path;

use crate::Error;

pub use checked::{AgentConfig, HealthConfig, ServiceConfig};
pub use docker::{parse_memory, DockerOptions, RegistryAuth};
pub use kubernetes::{dns_label, KubernetesOptions};
pub use metrics::{
    default_error_rate_query, default_p95_query, default_request_rate_query, render_query,
    MetricsProvider, PrometheusConfig,
};
pub use raw::Quantities;
use raw::RawConfig;
pub use resolve::default_inbox_prefix;
use resolve::resolve;
pub use runtime_kind::RuntimeKind;

/// Prefix of environment overrides: `FERRY_NATS_URL`, `FERRY_SERVICES__WEB__PORT`...
pub const ENV_PREFIX: &str = "FERRY";

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
