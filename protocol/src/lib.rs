//! ferry's wire protocol: every message type and every NATS subject the agent,
//! the controller, the CLI and CI exchange. This crate does no IO; it is the
//! only crate in ferry that derives `Serialize` for the wire.

pub mod api;
pub mod approval;
pub mod command;
pub mod config_keys;
pub mod doctor;
pub mod envelope;
mod error;
pub mod event;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod keys;
pub mod limits;
pub mod names;
pub mod nats_tls;
mod refusal;
pub mod release;
pub mod rollout;
pub mod streams;
pub mod subject;
pub mod wave;

pub use envelope::{Envelope, Payload};
pub use error::Error;
pub use keys::{SigningKey, TrustedKeys};
pub use names::{EnvName, HostName, ServiceName, Version};
pub use refusal::{Refusal, RefusalReason, MAX_REFUSAL_DETAIL};
