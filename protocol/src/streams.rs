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
    /// The JetStream configuration on a single server (one replica).
    pub fn config(&self) -> async_nats::jetstream::stream::Config {
        self.replicated(1)
    }

    /// The JetStream configuration with `replicas` copies (see
    /// [`Replicas`]): file storage, limits retention, oldest messages
    /// discarded first.
    pub fn replicated(&self, replicas: usize) -> async_nats::jetstream::stream::Config {
        use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
        Config {
            num_replicas: replicas,
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

impl BucketSpec {
    /// The key-value configuration with `replicas` copies: file storage.
    pub fn replicated(&self, replicas: usize) -> async_nats::jetstream::kv::Config {
        async_nats::jetstream::kv::Config {
            bucket: self.name.to_owned(),
            history: self.history,
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }
    }

    /// The name of the stream JetStream keeps the bucket in.
    pub fn stream_name(&self) -> String {
        format!("KV_{}", self.name)
    }
}

/// How many servers keep a copy of every stream and bucket ferry creates
/// (`stream_replicas`, the same for the agent and the controller): 1 on a
/// single server, 3 (or 5) on a cluster, so the loss of one server (two)
/// loses nothing acknowledged. JetStream allows 1 to 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas(usize);

impl Replicas {
    /// The single-server default.
    pub const ONE: Replicas = Replicas(1);

    /// Checks a configured count: 1 to 5.
    pub fn new(count: u32) -> Result<Replicas, String> {
        match count {
            1..=5 => Ok(Replicas(count as usize)),
            _ => Err(format!(
                "{count} is not a replica count JetStream allows (1 to 5; 3 on a 3-node cluster)"
            )),
        }
    }

    /// The count.
    pub fn get(self) -> usize {
        self.0
    }

    /// Why `stream`, found with `found` replicas, does not match this count;
    /// `None` when it does. The server reports 0 for a stream created
    /// without a count, which means 1. Never changed silently: moving a
    /// stream to another count is an operator's decision (`nats stream edit`).
    pub fn mismatch(self, stream: &str, found: usize) -> Option<String> {
        let found = found.max(1);
        (found != self.0).then(|| {
            format!(
                "{} configured, but stream {stream} has {found} replica(s) on the server: \
                 set stream_replicas = {found}, or change the stream with \
                 `nats stream edit {stream} --replicas {}`",
                self.0, self.0
            )
        })
    }
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas::ONE
    }
}

/// How often the daemons ping their NATS server. A server that stops
/// answering (frozen, or its host unreachable without a reset) is left after
/// three unanswered pings, 15 s, for another node of the cluster; the client
/// default, a minute per ping, kept an agent on a paused node for minutes.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// How long a daemon waits before trying again to create or find its streams
/// when JetStream cannot serve them yet (a cluster still electing its meta
/// leader, a node of the placement down, a server restarting): the first
/// pause, doubled after each failure up to [`SETUP_RETRY_MAX`]. The wait
/// ends only when the streams are there or the daemon is told to stop; a
/// stream kept with another replica count is bad configuration and ends it
/// at once.
pub const SETUP_RETRY_FIRST: Duration = Duration::from_millis(250);

/// The longest pause between two attempts at creating the streams.
pub const SETUP_RETRY_MAX: Duration = Duration::from_secs(5);

/// The pause after `pause` in the stream set-up's retry schedule.
pub fn next_setup_retry(pause: Duration) -> Duration {
    (pause * 2).min(SETUP_RETRY_MAX)
}

/// Parses a list of NATS server URLs separated by commas
/// (`nats://a:4222,nats://b:4222`); clients connect to one and reconnect to
/// any other when it goes away.
pub fn server_list(text: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let urls: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(format!(
            "{text:?} holds no NATS URL (e.g. nats://127.0.0.1:4222, or several separated by commas)"
        ));
    }
    urls.iter()
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{url:?} is not a NATS URL: {e}"))
        })
        .collect()
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
    fn the_setup_retry_doubles_from_a_quarter_second_up_to_five() {
        let mut pause = SETUP_RETRY_FIRST;
        let mut seen = vec![pause];
        for _ in 0..6 {
            pause = next_setup_retry(pause);
            seen.push(pause);
        }
        let millis: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn replicas_are_one_to_five_and_mismatches_name_the_fix() {
        assert!(Replicas::new(0).is_err());
        assert!(Replicas::new(6).is_err());
        let three = Replicas::new(3).unwrap();
        assert_eq!(three.get(), 3);
        assert_eq!(three.mismatch("FERRY_COMMANDS", 3), None);
        let why = three.mismatch("FERRY_COMMANDS", 1).unwrap();
        assert!(why.contains("FERRY_COMMANDS has 1 replica"), "{why}");
        assert!(why.contains("--replicas 3"), "{why}");
        // 0 is what a server reports for a stream created without a count.
        assert_eq!(Replicas::ONE.mismatch("FERRY_EVENTS", 0), None);
        assert_eq!(commands().replicated(3).num_replicas, 3);
        assert_eq!(BUCKETS[0].replicated(3).num_replicas, 3);
        assert_eq!(BUCKETS[0].stream_name(), "KV_ferry_releases");
    }

    #[test]
    fn server_lists_split_on_commas_and_reject_bad_urls() {
        let list = server_list("nats://a:4222, nats://b:4223,").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].port(), 4223);
        assert_eq!(server_list("nats://127.0.0.1:4222").unwrap().len(), 1);
        assert!(server_list(" , ").is_err());
        assert!(server_list("nats://a:4222,nats://b:notaport").is_err());
    }

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
