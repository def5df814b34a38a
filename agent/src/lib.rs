//! The ferry agent: one per environment. It takes signed commands from
//! JetStream, carries them out on a runtime, serves each service on a stable
//! address through its proxy, and reports health, metrics and outcomes.
//!
//! See ARCHITECTURE.md for the map; [`agent::run`] is the entry point.

pub mod agent;
pub mod backend;
pub mod config;
mod error;
pub mod events;
pub mod executor;
pub mod intake;
pub mod kubernetes;
pub mod ledger;
pub mod link;
pub mod managed;
pub mod metrics_provider;
pub mod proxy;
pub mod rollout;
pub mod runtime;
pub mod runtime_registry;
pub mod state;
pub mod telemetry;

pub use agent::run;
pub use config::AgentConfig;
pub use error::Error;
/// The analysis engine, whose types (`Thresholds`, `SetWindow`) are part of
/// this crate's configuration and backends.
pub use ferry_analysis as analysis;
