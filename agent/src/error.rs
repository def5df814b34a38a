//! The agent library's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration has problems; all of them are listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// A metrics provider gave no usable answer (no verdict).
    #[error("no verdict from {provider}: {detail}")]
    NoVerdict {
        /// Which provider (`prometheus at http://...`).
        provider: String,
        /// What went wrong: unreachable, an error, an empty result.
        detail: String,
    },
    /// A protocol-level error (names, encoding, keys).
    #[error(transparent)]
    Protocol(#[from] ferry_protocol::Error),
    /// Could not connect to NATS.
    #[error("could not connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream operation failed.
    #[error("JetStream {what} failed: {detail}")]
    JetStream {
        /// Which operation.
        what: &'static str,
        /// The server's or client's words.
        detail: String,
    },
    /// Publishing failed.
    #[error("publishing to {subject} failed: {detail}")]
    Publish {
        /// Where.
        subject: String,
        /// Why.
        detail: String,
    },
    /// Reading or writing the state file failed.
    #[error("state file {path}: {source}")]
    State {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but cannot be understood.
    #[error("state file {path} is corrupt: {detail}")]
    CorruptState {
        /// Which file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A thread panicked while holding the state; it can no longer be trusted.
    #[error("the agent's state was poisoned by a panic; restart the agent")]
    StatePoisoned,
    /// The task writing the state to disk died.
    #[error("the state writer stopped: {0}")]
    StateWriter(String),
    /// The proxy could not bind its stable address.
    #[error("cannot serve {service} on {address}: {source}")]
    Bind {
        /// Which service.
        service: String,
        /// Which address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}
