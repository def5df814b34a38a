//! The controller library's one error type.

use std::path::PathBuf;

use crate::config::ConfigProblem;

/// Everything that can stop the controller or fail one of its operations.
///
/// Bad input from the network (malformed events, bad API requests) is never an
/// `Error`: it is logged or answered and the controller carries on. These are
/// failures of the controller's own configuration or of NATS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be loaded (unreadable file, bad TOML, wrong types).
    #[error("could not load the configuration: {0}")]
    LoadConfig(#[source] config::ConfigError),
    /// The configuration loaded but broke one or more rules; every problem is listed.
    #[error("invalid configuration: {}", join_problems(.0))]
    InvalidConfig(Vec<ConfigProblem>),
    /// The NATS credentials file could not be used.
    #[error("could not use the NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The controller could not connect to NATS.
    #[error(
        "could not connect to NATS at {url}{}: {source}",
        if *.tls { " over TLS (check nats_tls_ca_file, the CA of the server's certificate, and nats_tls_cert_file/nats_tls_key_file, a client certificate the server trusts)" } else { "" }
    )]
    Connect {
        /// Whether TLS settings were configured (the error then says so).
        tls: bool,
        /// The server URL.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream or core NATS operation failed: creating a stream, bucket or
    /// consumer, publishing, reading or writing a key.
    #[error("could not {action}: {source}")]
    Nats {
        /// What the controller was doing, e.g. `create stream FERRY_COMMANDS`.
        action: String,
        /// The NATS client's error.
        #[source]
        source: async_nats::Error,
    },
    /// The `/metrics` address could not be bound.
    #[error("could not serve metrics on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key kept changing under concurrent writers (another controller
    /// instance) and the controller gave up after several attempts.
    #[error("key {key} in bucket {bucket} kept changing during {attempts} attempts to update it")]
    Contended {
        /// The bucket.
        bucket: &'static str,
        /// The key.
        key: String,
        /// How often it tried.
        attempts: u32,
    },
    /// Reading a stream stalled before it reached the end.
    #[error("timed out while reading {what}")]
    ReadTimeout {
        /// What was being read.
        what: String,
    },
    /// A live view of a bucket did not catch up with the bucket in time; it
    /// is rebuilt, and the read that needed it can be tried again.
    #[error(
        "the view of bucket {bucket} is behind it (at sequence {applied}, the bucket at {target}); \
         it is being rebuilt"
    )]
    ViewBehind {
        /// The bucket.
        bucket: &'static str,
        /// The bucket's last sequence when the read began.
        target: u64,
        /// How far the view had applied.
        applied: u64,
    },
    /// Too many whole-stream reads (history queries) were already running
    /// or waiting; each holds a consumer on the server, so they are bounded.
    #[error("too many {what} reads at once ({limit} run at a time); try again shortly")]
    Busy {
        /// What was being read.
        what: &'static str,
        /// How many may run at once.
        limit: usize,
    },
    /// A command failed the protocol's checks (replicas out of range, bad release...).
    #[error("invalid command: {0}")]
    InvalidCommand(#[source] ferry_protocol::Error),
    /// A message could not be encoded or signed.
    #[error("could not encode or sign a message: {0}")]
    Protocol(#[from] ferry_protocol::Error),
    /// A stored value could not be encoded.
    #[error("could not encode a value for bucket {bucket}: {source}")]
    Encode {
        /// The bucket.
        bucket: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Notifications could not be set up.
    #[error("notifications: {0}")]
    Notify(String),
    /// One of the controller's loops stopped although no shutdown was asked for.
    #[error("the {task} loop stopped unexpectedly")]
    TaskEnded {
        /// Which loop.
        task: &'static str,
    },
    /// One of the controller's loops panicked or was aborted.
    #[error("the {task} loop crashed: {reason}")]
    TaskCrashed {
        /// Which loop.
        task: &'static str,
        /// The panic or cancellation.
        reason: String,
    },
}

impl Error {
    /// Wraps a NATS client error with what the controller was doing.
    pub(crate) fn nats(action: impl Into<String>, source: impl Into<async_nats::Error>) -> Self {
        Error::Nats {
            action: action.into(),
            source: source.into(),
        }
    }
}

fn join_problems(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
