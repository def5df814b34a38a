//! The agent library's errors: [`Error`], and [`RuntimeError`], what
//! runtimes and backends report about one service's replicas (kept here,
//! at the bottom, so that every layer can name it).

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
    #[error(
        "could not connect to NATS at {url}{}: {source}",
        if *.tls { " over TLS (check nats_tls_ca_file, the CA of the server's certificate, and nats_tls_cert_file/nats_tls_key_file, a client certificate the server trusts)" } else { "" }
    )]
    Connect {
        /// Whether TLS settings were configured (the error then says so).
        tls: bool,
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
    Runtime(#[from] RuntimeError),
}

/// Errors of runtimes and backends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The artifact is not there or cannot run; nothing running was touched.
    #[error("artifact {artifact:?} cannot be used: {detail}")]
    Artifact {
        /// The artifact.
        artifact: String,
        /// Why.
        detail: String,
    },
    /// A replica could not be started.
    #[error("could not start replica {replica}: {detail}")]
    Start {
        /// Replica id.
        replica: String,
        /// Why.
        detail: String,
    },
    /// The change is live but the state file could not record it: a
    /// restarted agent would go back to the last recorded state.
    #[error("the change is live but was not recorded ({0}); a restarted agent returns to the last recorded state until a later command is recorded")]
    NotRecorded(String),
    /// New replicas did not become healthy; the previous version keeps serving.
    #[error("{0}")]
    Unhealthy(String),
    /// Nothing is deployed to act on.
    #[error("{0}")]
    NothingDeployed(String),
    /// The runtime's engine cannot be reached or used.
    #[error("the {runtime} runtime is unavailable: {detail}")]
    Unavailable {
        /// Which runtime.
        runtime: &'static str,
        /// Why.
        detail: String,
    },
    /// The runtime's engine did not answer; the agent keeps trying to reach it
    /// in the background and restores the service when it does.
    #[error("the {engine} engine is unreachable: {detail}")]
    EngineUnreachable {
        /// Which engine ("Docker").
        engine: &'static str,
        /// Why.
        detail: String,
    },
    /// The backend cannot do what was asked (a strategy it has no means for).
    #[error("{0}")]
    Unsupported(String),
    /// The operation was cut short by shutdown; the previous state was kept.
    #[error("interrupted by agent shutdown; the previous version keeps serving")]
    Interrupted,
}
