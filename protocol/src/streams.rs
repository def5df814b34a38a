//! Names and limits of the JetStream streams and key-value buckets ferry keeps,
//! so the agent and the controller create them identically (whichever starts
//! first creates them; `get_or_create` is idempotent). This module only builds
//! async-nats configuration values; it does no IO.

use std::time::Duration;

use crate::names::{EnvName, HostName, ServiceName, Version};

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
    /// Streams of other JetStream domains it copies in (a leaf's commands
    /// from the hub, the hub's events from each leaf); empty for the
    /// single-server layout.
    pub sources: Vec<SourceSpec>,
}

/// One stream another stream sources, in another JetStream domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    /// The sourced stream's name (in its own domain).
    pub name: &'static str,
    /// Only its messages on this subject, when set.
    pub filter: Option<String>,
    /// The domain it lives in, reached through `$JS.<domain>.API`.
    pub domain: Domain,
}

impl SourceSpec {
    /// The async-nats value of this source.
    pub fn config(&self) -> async_nats::jetstream::stream::Source {
        async_nats::jetstream::stream::Source {
            name: self.name.to_owned(),
            filter_subject: self.filter.clone(),
            external: Some(async_nats::jetstream::stream::External {
                api_prefix: self.domain.api_prefix(),
                delivery_prefix: None,
            }),
            ..Default::default()
        }
    }
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
            sources: (!self.sources.is_empty())
                .then(|| self.sources.iter().map(SourceSpec::config).collect()),
            ..Default::default()
        }
    }

    /// Whether a stream found with `sources` already sources everything
    /// this spec does (by name, filter and external API prefix).
    pub fn sources_present(&self, found: &[async_nats::jetstream::stream::Source]) -> bool {
        self.sources.iter().all(|wanted| {
            let wanted = wanted.config();
            found.iter().any(|f| {
                f.name == wanted.name
                    && f.filter_subject.as_deref().unwrap_or("")
                        == wanted.filter_subject.as_deref().unwrap_or("")
                    && f.external.as_ref().map(|e| e.api_prefix.as_str())
                        == wanted.external.as_ref().map(|e| e.api_prefix.as_str())
            })
        })
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
        sources: Vec::new(),
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
        sources: Vec::new(),
    }
}

/// A JetStream domain (`jetstream { domain: ... }` of a server): the hub
/// cluster's, or an environment's leaf node's. A name of letters, digits,
/// `-` and `_`, at most 64 characters: it becomes a subject token of
/// `$JS.<domain>.API`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Checks a configured domain name.
    pub fn new(name: &str) -> Result<Domain, String> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if valid {
            Ok(Domain(name.to_owned()))
        } else {
            Err(format!(
                "{name:?} is not a JetStream domain name (1 to 64 letters, digits, '-' or '_', \
                 as in the server's `jetstream {{ domain: ... }}`)"
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject prefix of this domain's JetStream API, `$JS.<domain>.API`.
    pub fn api_prefix(&self) -> String {
        format!("$JS.{}.API", self.0)
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent whose environment runs its own nats-server as a leaf node of
/// the hub cluster: the leaf's domain (where the agent's streams and
/// consumer live) and the hub's (where the controller issues commands).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafDomains {
    /// The leaf node's domain (`jetstream_domain`).
    pub leaf: Domain,
    /// The hub cluster's domain (`hub_domain`).
    pub hub: Domain,
}

/// The commands stream of a leaf node: `FERRY_COMMANDS` in the leaf's
/// domain, capturing no subject, sourcing the hub's `FERRY_COMMANDS`
/// filtered to `env`'s commands. The agent's durable consumer reads it
/// locally, so a cut link only delays commands; the source resumes where
/// it stopped once the link is back.
pub fn leaf_commands(env: &EnvName, hub: &Domain) -> StreamSpec {
    StreamSpec {
        subjects: Vec::new(),
        sources: vec![SourceSpec {
            name: commands().name,
            filter: Some(crate::subject::commands_for_env(env)),
            domain: hub.clone(),
        }],
        ..commands()
    }
}

/// The events stream of a leaf node: `FERRY_EVENTS` in the leaf's domain,
/// capturing `env`'s service and agent events, where the agent's
/// publishes are acknowledged while the link to the hub is down. The hub's
/// `FERRY_EVENTS` sources it ([`hub_events`]).
pub fn leaf_events(env: &EnvName) -> StreamSpec {
    StreamSpec {
        subjects: leaf_event_subjects(env),
        ..events()
    }
}

/// `env`'s event subjects: what its leaf's events stream captures, and what
/// its leaf link denies in both directions, so the hub's `FERRY_EVENTS`
/// receives them only through its source (never twice), and a message on
/// them published at the hub (a controller's alert) is not copied back.
pub fn leaf_event_subjects(env: &EnvName) -> Vec<String> {
    vec![
        crate::subject::events_for_env(env),
        format!("{}.agent.{env}.>", crate::subject::PREFIX),
    ]
}

/// The hub's events stream: [`events`], sourcing the events stream of each
/// environment's leaf node in `leaves` (environment, leaf domain).
pub fn hub_events(leaves: &[(EnvName, Domain)]) -> StreamSpec {
    StreamSpec {
        sources: leaves
            .iter()
            .map(|(_, domain)| SourceSpec {
                name: events().name,
                filter: None,
                domain: domain.clone(),
            })
            .collect(),
        ..events()
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
        sources: Vec::new(),
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
        sources: Vec::new(),
    }
}

/// The durable consumer through which the agent on `host` reads `env`'s
/// commands: one per host, so every host of an environment gets every
/// command (a shared one would hand each command to one of them).
pub fn agent_consumer(env: &EnvName, host: &HostName) -> String {
    format!("ferry-agent-{env}-{host}")
}

/// Key-value bucket of releases, keyed by [`release_key`].
pub const RELEASES_BUCKET: &str = "ferry_releases";
/// Key-value bucket of each environment's last command per service, keyed `<env>.<service>`.
pub const DEPLOYMENTS_BUCKET: &str = "ferry_deployments";
/// Key-value bucket of each host's last heartbeat, keyed by [`agent_key`].
pub const AGENTS_BUCKET: &str = "ferry_agents";

/// Key-value bucket of host-by-host deploys (waves), keyed
/// `<env>.<service>`: where the environment's last wave stands, so any
/// controller instance can carry it on.
pub const WAVES_BUCKET: &str = "ferry_waves";

/// The agents bucket's key of a heartbeat: `<env>.<host>`, or `<env>` for
/// an agent from before hosts (its heartbeat names none).
pub fn agent_key(env: &EnvName, host: Option<&HostName>) -> String {
    match host {
        Some(host) => format!("{env}.{host}"),
        None => env.to_string(),
    }
}

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
pub const BUCKETS: [BucketSpec; 5] = [
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
    BucketSpec {
        name: WAVES_BUCKET,
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
    fn domains_are_subject_tokens() {
        assert_eq!(Domain::new("hub").unwrap().api_prefix(), "$JS.hub.API");
        assert!(Domain::new("prod-eu_1").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", &"x".repeat(65)] {
            assert!(Domain::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_leaf_sources_its_commands_from_the_hub_and_the_hub_its_events_from_each_leaf() {
        let production = EnvName::new("production").unwrap();
        let hub = Domain::new("hub").unwrap();
        let leaf = Domain::new("production").unwrap();
        let commands = leaf_commands(&production, &hub).replicated(1);
        assert_eq!(commands.name, "FERRY_COMMANDS");
        assert!(commands.subjects.is_empty(), "captures nothing itself");
        let sources = commands.sources.unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].name, "FERRY_COMMANDS");
        assert_eq!(
            sources[0].filter_subject.as_deref(),
            Some("ferry.v1.cmd.production.>")
        );
        assert_eq!(
            sources[0].external.as_ref().unwrap().api_prefix,
            "$JS.hub.API"
        );

        let leaf_stream = leaf_events(&production).replicated(1);
        assert_eq!(leaf_stream.name, "FERRY_EVENTS");
        assert_eq!(
            leaf_stream.subjects,
            ["ferry.v1.evt.production.>", "ferry.v1.agent.production.>"]
        );
        assert!(leaf_stream.sources.is_none());

        let spec = hub_events(&[(production.clone(), leaf)]);
        let config = spec.replicated(3);
        assert_eq!(config.subjects, events().subjects);
        let sources = config.sources.clone().unwrap();
        assert_eq!(sources[0].name, "FERRY_EVENTS");
        assert_eq!(
            sources[0].external.as_ref().unwrap().api_prefix,
            "$JS.production.API"
        );
        assert!(spec.sources_present(&sources));
        assert!(!spec.sources_present(&[]));
        // Without leaves, nothing changes.
        assert_eq!(hub_events(&[]).replicated(1).sources, None);
        assert_eq!(events().replicated(1).sources, None);
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
