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

use ferry_protocol::config_keys::{deserialize_strict, unknown_after_round_trip, SettingVariables};

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
/// What stands for a dot in a variable's name: `FERRY_SERVICES__WEB__PORT`
/// sets `services.web.port`.
pub const ENV_SEPARATOR: &str = "__";

/// Loads the configuration from `file` (if any) and `FERRY_*` variables.
/// A key of either that matches no setting is a problem like any other.
pub fn load(file: Option<&Path>) -> Result<AgentConfig, Error> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(
            config::File::from(path.to_path_buf())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let variables = SettingVariables::from_vars(std::env::vars(), Some(ENV_SEPARATOR));
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator(ENV_SEPARATOR)
            .list_separator(",")
            .with_list_parse_key("trusted_keys")
            .with_list_parse_key("reviewer_keys")
            .try_parsing(true)
            .source(Some(
                variables
                    .values()
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect(),
            )),
    );
    read(builder, &variables)
}

/// Parses TOML text (no environment overrides); for tests and tools.
pub fn from_toml(text: &str) -> Result<AgentConfig, Error> {
    let builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    read(builder, &SettingVariables::default())
}

/// Reads what `builder` gathered into the raw configuration, refusing keys
/// that match no setting, and checks it; every problem is reported at once.
fn read(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    variables: &SettingVariables,
) -> Result<AgentConfig, Error> {
    let gathered = builder
        .build()
        .map_err(|e| Error::Config(vec![e.to_string()]))?;
    let written: serde_json::Value = gathered.clone().try_deserialize().unwrap_or_default();
    let (raw, unknown) = deserialize_strict::<RawConfig, _>(gathered, variables);
    let mut problems: Vec<String> = unknown.iter().map(ToString::to_string).collect();
    let raw: RawConfig = match raw {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(e.to_string());
            return Err(Error::Config(problems));
        }
    };
    // A strategy is an internally tagged enum: serde reads it from buffered
    // content, where unknown keys escape `deserialize_strict`.
    for (name, service) in &raw.services {
        if let (Some(strategy), Some(table)) = (
            &service.strategy,
            written.pointer(&format!("/services/{name}/strategy")),
        ) {
            problems.extend(
                unknown_after_round_trip(
                    &format!("services.{name}.strategy"),
                    table,
                    strategy,
                    variables,
                )
                .iter()
                .map(ToString::to_string),
            );
        }
    }
    match resolve(raw) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(Error::Config(problems)),
        Err(Error::Config(more)) => {
            problems.extend(more);
            Err(Error::Config(problems))
        }
        Err(other) => Err(other),
    }
}
