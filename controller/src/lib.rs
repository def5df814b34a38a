//! The ferry controller: takes CI's release events and deploys each new
//! release to the first environment of the pipeline, issues signed commands
//! to agents (on release and on API request), builds a live status from the
//! agents' events, and answers the CLI.
//!
//! **All state lives in JetStream** (key-value buckets and the history
//! stream); the process holds none that matters. Several instances can run at
//! once: they share durable consumers and one API queue group, and issue
//! commands under deterministic ids that JetStream de-duplicates.
//!
//! Entry points: [`ControllerConfig::load`] and [`ControllerConfig::validate`]
//! for configuration, [`run`] for the daemon.

#![warn(missing_docs)]

mod alerts;
pub mod api;
mod audit;
mod bucket_view;
pub mod config;
mod consumer;
mod context;
mod convergence;
pub mod dashboard;
pub mod error;
pub mod events;
mod follow;
mod ids;
mod installation;
mod issue;
mod metrics;
pub mod notify;
mod plan;
mod promotion;
mod records;
pub mod releases;
mod status;
mod store;
mod supersession;
mod supervisor;
mod sweep;
mod waves;

pub use config::{ConfigProblem, ControllerConfig, ResolvedConfig};
pub use error::Error;
pub use ids::SOURCE;
pub use store::HISTORY_READERS;
pub use supervisor::run;

pub(crate) use context::Shared;
