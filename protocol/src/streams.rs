//! Names and limits of the JetStream streams and key-value buckets ferry keeps,
//! so the agent and the controller create them identically (whichever starts
//! first creates them; `get_or_create` is idempotent). This module only builds
//! async-nats configuration values; it does no IO.

use std::time::Duration;

use crate::names::{EnvName, ServiceName, Version};

const DAY: u64 = 24 * 60 * 60;

/// A stream's name, subjects and retention limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: &'static str,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// Oldest message kept.
    pub max_age: Duration,
    /// Most bytes kept.
    pub max_bytes: i64,
    /// Most messages kept per subject.
    pub max_messages_per_subject: i64,
    /// Window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// Messages cannot be deleted and the stream cannot be purged through the
    /// API (the audit trail); only age and size limits remove old ones.
    pub append_only: bool,
}

impl StreamSpec {
    /// The JetStream configuration: file storage, limits retention, oldest
    /// messages discarded first.
    pub fn config(&self) -> async_nats::jetstream::stream::Config {
        use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
        Config {
            name: self.name.to_owned(),
            subjects: self.subjects.clone(),
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_messages_per_subject: self.max_messages_per_subject,
            duplicate_window: self.duplicate_window,
            deny_delete: self.append_only,
            deny_purge: self.append_only,
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            ..Default::default()
        }
    }
}

/// Commands to every agent: `ferry.v1.cmd.>`. Each agent reads its own
/// environment's subjects through a durable consumer.
pub fn commands() -> StreamSpec {
    StreamSpec {
        name: "FERRY_COMMANDS",
        subjects: vec![crate::subject::all_commands()],
        max_age: Duration::from_secs(7 * DAY),
        max_bytes: 256 * 1024 * 1024,
        max_messages_per_subject: 10_000,
        duplicate_window: Duration::from_secs(10 * 60),
        append_only: false,
    }
}

/// Agent events, per service and agent-wide.
pub fn events() -> StreamSpec {
    StreamSpec {
        name: "FERRY_EVENTS",
        subjects: vec![
            crate::subject::all_events(),
            crate::subject::all_agent_events(),
        ],
        max_age: Duration::from_secs(DAY),
        max_bytes: 512 * 1024 * 1024,
        max_messages_per_subject: 10_000,
        duplicate_window: Duration::from_secs(2 * 60),
        append_only: false,
    }
}

/// Release events from CI.
pub fn releases() -> StreamSpec {
    StreamSpec {
        name: "FERRY_RELEASES",
        subjects: vec![crate::subject::all_releases()],
        max_age: Duration::from_secs(365 * DAY),
        max_bytes: 256 * 1024 * 1024,
        max_messages_per_subject: 1_000,
        duplicate_window: Duration::from_secs(10 * 60),
        append_only: false,
    }
}

/// The controller's history records: the audit trail of every release,
/// promotion, approval, rejection, security gate decision, command and
/// outcome (who, what, when, why, outcome). Append-only: delete and purge are
/// denied.
pub fn history() -> StreamSpec {
    StreamSpec {
        name: "FERRY_HISTORY",
        subjects: vec![crate::subject::all_history()],
        max_age: Duration::from_secs(365 * DAY),
        max_bytes: 1024 * 1024 * 1024,
        max_messages_per_subject: 100_000,
        duplicate_window: Duration::from_secs(2 * 60),
        append_only: true,
    }
}

/// Key-value bucket of releases, keyed by [`release_key`].
pub const RELEASES_BUCKET: &str = "ferry_releases";
/// Key-value bucket of each environment's last command per service, keyed `<env>.<service>`.
pub const DEPLOYMENTS_BUCKET: &str = "ferry_deployments";
/// Key-value bucket of each environment's last heartbeat, keyed `<env>`.
pub const AGENTS_BUCKET: &str = "ferry_agents";

/// Key-value bucket of promotions (approvals, rejections, where each release
/// stands on its way into each environment), keyed by [`promotion_key`].
pub const PROMOTIONS_BUCKET: &str = "ferry_promotions";

/// A key-value bucket's name and how many values per key it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSpec {
    /// Bucket name.
    pub name: &'static str,
    /// Values kept per key.
    pub history: i64,
}

/// Every bucket ferry keeps, as the controller creates them.
pub const BUCKETS: [BucketSpec; 4] = [
    BucketSpec {
        name: RELEASES_BUCKET,
        history: 5,
    },
    BucketSpec {
        name: DEPLOYMENTS_BUCKET,
        history: 1,
    },
    BucketSpec {
        name: AGENTS_BUCKET,
        history: 1,
    },
    BucketSpec {
        name: PROMOTIONS_BUCKET,
        history: 5,
    },
];

/// Every stream ferry keeps.
pub fn all_streams() -> [StreamSpec; 4] {
    [commands(), events(), releases(), history()]
}

/// `<service>.<version>.<env>` (version as in [`release_key`]); version tokens
/// may hold dots, so read the service and environment from the ends.
pub fn promotion_key(service: &ServiceName, version: &Version, env: &EnvName) -> String {
    format!("{}.{env}", release_key(service, version))
}

/// `<service>.<version>` with `+` written as `=`: KV keys may not hold `+`,
/// and versions may not hold `=`, so the mapping is one-to-one.
pub fn release_key(service: &ServiceName, version: &Version) -> String {
    format!("{service}.{}", version.as_str().replace('+', "="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_keys_are_valid_kv_keys_and_distinct() {
        let svc = ServiceName::new("web").unwrap();
        let a = release_key(&svc, &Version::new("1.0+b1").unwrap());
        let b = release_key(&svc, &Version::new("1.0_b1").unwrap());
        assert_eq!(a, "web.1.0=b1");
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)));
    }
}
