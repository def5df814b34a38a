//! The controller's state, all of it in JetStream: the streams, the five
//! key-value buckets and the history stream. Every write is compare-and-set
//! against JetStream, so a restarted or second controller sees exactly the
//! same state. Listings of a bucket read a live view of it
//! ([`crate::bucket_view`]), consistent with every write acknowledged before
//! the read began, so folding an event creates no consumer; only history
//! queries read a stream, a bounded number at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use ferry_protocol::api::{HistoryRecord, ReleaseRecord};
use ferry_protocol::streams::{self, Replicas, StreamSpec};
use ferry_protocol::{subject, EnvName, Envelope, ServiceName, Version};
use ferry_waves::WaveRecord;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::bucket_view::BucketView;
use crate::config::ConfigProblem;
use crate::records::{AgentRecord, DeploymentRecord, PromotionRecord};
use crate::{Error, SOURCE};

/// Attempts at a compare-and-set update before giving up; more than two
/// controller instances racing on one key is not expected.
const CAS_ATTEMPTS: u32 = 8;
/// Longest wait for the next message while reading a stream to its end.
const READ_STALL: Duration = Duration::from_secs(5);
/// History queries reading the stream at once: each holds an ephemeral
/// consumer on the server while it reads, so they are bounded however many
/// requests arrive (the views add one consumer per bucket, so a controller
/// holds at most five watchers plus this many readers).
pub const HISTORY_READERS: usize = 4;
/// How long a history query waits for a reader slot before it is refused.
const HISTORY_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Handles to every stream and bucket the controller uses.
#[derive(Clone)]
pub(crate) struct Store {
    js: Context,
    releases: kv::Store,
    deployments: kv::Store,
    agents: kv::Store,
    promotions: kv::Store,
    waves: kv::Store,
    history: stream::Stream,
    views: Views,
    history_readers: Arc<Semaphore>,
}

/// A live view of every bucket, for listings; they stop following their
/// buckets when the last handle to the store is dropped.
#[derive(Clone)]
struct Views {
    releases: BucketView<ReleaseRecord>,
    deployments: BucketView<DeploymentRecord>,
    agents: BucketView<AgentRecord>,
    promotions: BucketView<PromotionRecord>,
    waves: BucketView<WaveRecord>,
    _stop: Arc<DropGuard>,
}

impl Views {
    fn follow(
        releases: &kv::Store,
        deployments: &kv::Store,
        agents: &kv::Store,
        promotions: &kv::Store,
        waves: &kv::Store,
    ) -> Self {
        let stop = CancellationToken::new();
        Views {
            releases: BucketView::follow(
                streams::RELEASES_BUCKET,
                releases.clone(),
                decode,
                stop.clone(),
            ),
            deployments: BucketView::follow(
                streams::DEPLOYMENTS_BUCKET,
                deployments.clone(),
                decode,
                stop.clone(),
            ),
            agents: BucketView::follow(
                streams::AGENTS_BUCKET,
                agents.clone(),
                decode,
                stop.clone(),
            ),
            promotions: BucketView::follow(
                streams::PROMOTIONS_BUCKET,
                promotions.clone(),
                decode,
                stop.clone(),
            ),
            waves: BucketView::follow(streams::WAVES_BUCKET, waves.clone(), decode, stop.clone()),
            _stop: Arc::new(stop.drop_guard()),
        }
    }
}

/// Which history records to read.
#[derive(Clone, Debug, Default)]
pub(crate) struct HistoryFilter {
    /// Only this environment.
    pub environment: Option<EnvName>,
    /// Only this service.
    pub service: Option<ServiceName>,
    /// Only records by this actor.
    pub actor: Option<String>,
    /// Only records at or after this time.
    pub since: Option<time::OffsetDateTime>,
    /// Only this action.
    pub action: Option<String>,
}

/// What storing a release found.
pub(crate) enum StoredRelease {
    /// First time this version was seen.
    New,
    /// The same release was stored before (a redelivery or a CI retry).
    Same(ReleaseRecord),
    /// The version exists with different content; versions are immutable.
    Conflict(ReleaseRecord),
}

impl Store {
    /// Creates (or finds) every stream and bucket with `replicas` copies.
    /// Idempotent, and safe to run from several processes at once: agents
    /// create the same streams. Every stream or bucket found with another
    /// count is listed as bad configuration, never changed.
    /// `events` is the spec of `FERRY_EVENTS` ([`streams::hub_events`]):
    /// with leaf nodes it sources their events streams, and a stream found
    /// without one of those sources is given it (the only change ever made
    /// to a stream found).
    pub(crate) async fn open(
        js: Context,
        replicas: Replicas,
        events: &StreamSpec,
    ) -> Result<Self, Error> {
        let mut mismatches = Vec::new();
        let mut check = |name: &str, found: usize| {
            if let Some(message) = replicas.mismatch(name, found) {
                mismatches.push(ConfigProblem {
                    field: "stream_replicas".to_owned(),
                    message,
                });
            }
        };
        for spec in [streams::commands(), events.clone(), streams::releases()] {
            let stream = ensure_stream(&js, &spec, replicas).await?;
            check(spec.name, stream.cached_info().config.num_replicas);
            ensure_sources(&js, &spec, stream).await?;
        }
        let history = ensure_stream(&js, &streams::history(), replicas).await?;
        check(
            streams::history().name,
            history.cached_info().config.num_replicas,
        );
        let [releases, deployments, agents, promotions, waves] = streams::BUCKETS;
        let mut bucket = async |spec: streams::BucketSpec| {
            let (store, found) = ensure_bucket(&js, spec, replicas).await?;
            check(&spec.stream_name(), found);
            Ok::<_, Error>(store)
        };
        let releases = bucket(releases).await?;
        let deployments = bucket(deployments).await?;
        let agents = bucket(agents).await?;
        let promotions = bucket(promotions).await?;
        let waves = bucket(waves).await?;
        if !mismatches.is_empty() {
            return Err(Error::InvalidConfig(mismatches));
        }
        let views = Views::follow(&releases, &deployments, &agents, &promotions, &waves);
        Ok(Store {
            js,
            releases,
            deployments,
            agents,
            promotions,
            waves,
            history,
            views,
            history_readers: Arc::new(Semaphore::new(HISTORY_READERS)),
        })
    }

    /// The JetStream context, for publishing commands.
    pub(crate) fn js(&self) -> &Context {
        &self.js
    }

    /// Stores a release unless its version is already known.
    pub(crate) async fn record_release(
        &self,
        record: &ReleaseRecord,
    ) -> Result<StoredRelease, Error> {
        let key = streams::release_key(&record.release.service, &record.release.version);
        let bytes = encode(streams::RELEASES_BUCKET, record)?;
        match self.releases.create(&key, bytes.into()).await {
            Ok(_) => Ok(StoredRelease::New),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self
                    .release(&record.release.service, &record.release.version)
                    .await?
                {
                    Some(existing) if existing.release == record.release => {
                        Ok(StoredRelease::Same(existing))
                    }
                    Some(existing) => Ok(StoredRelease::Conflict(existing)),
                    None => Err(Error::nats(
                        format!("store release {key}"),
                        "the key exists but holds no readable release",
                    )),
                }
            }
            Err(e) => Err(Error::nats(format!("store release {key}"), e)),
        }
    }

    /// One release, if it was published.
    pub(crate) async fn release(
        &self,
        service: &ServiceName,
        version: &Version,
    ) -> Result<Option<ReleaseRecord>, Error> {
        let key = streams::release_key(service, version);
        let value = self
            .releases
            .get(&key)
            .await
            .map_err(|e| Error::nats(format!("read release {key}"), e))?;
        Ok(value.and_then(|v| decode(streams::RELEASES_BUCKET, &key, &v)))
    }

    /// Every release, or one service's, oldest first.
    pub(crate) async fn releases(
        &self,
        service: Option<&ServiceName>,
    ) -> Result<Vec<ReleaseRecord>, Error> {
        // Service names hold no '.', so `<service>.` starts exactly its versions.
        let mut out = match service {
            Some(service) => {
                self.views
                    .releases
                    .values_under(&format!("{service}."))
                    .await?
            }
            None => self.views.releases.values().await?,
        };
        out.sort_by(|a, b| {
            (&a.release.service, a.received_at).cmp(&(&b.release.service, b.received_at))
        });
        Ok(out)
    }

    /// Changes `<env>.<service>` in the deployments bucket with `change`
    /// (compare-and-set, retried on a concurrent write). Returns the record
    /// as it stands afterwards.
    pub(crate) async fn update_deployment(
        &self,
        env: &EnvName,
        service: &ServiceName,
        change: impl FnMut(Option<DeploymentRecord>) -> Option<DeploymentRecord>,
    ) -> Result<Option<DeploymentRecord>, Error> {
        let key = format!("{env}.{service}");
        modify(&self.deployments, streams::DEPLOYMENTS_BUCKET, &key, change).await
    }

    /// One deployment record.
    pub(crate) async fn deployment(
        &self,
        env: &EnvName,
        service: &ServiceName,
    ) -> Result<Option<DeploymentRecord>, Error> {
        let key = format!("{env}.{service}");
        let value = self
            .deployments
            .get(&key)
            .await
            .map_err(|e| Error::nats(format!("read deployment {key}"), e))?;
        Ok(value.and_then(|v| decode(streams::DEPLOYMENTS_BUCKET, &key, &v)))
    }

    /// Changes a promotion with `change` (compare-and-set: of two controllers
    /// racing on one promotion, one write wins and the other re-reads).
    pub(crate) async fn update_promotion(
        &self,
        service: &ServiceName,
        version: &Version,
        env: &EnvName,
        change: impl FnMut(Option<PromotionRecord>) -> Option<PromotionRecord>,
    ) -> Result<Option<PromotionRecord>, Error> {
        let key = streams::promotion_key(service, version, env);
        modify(&self.promotions, streams::PROMOTIONS_BUCKET, &key, change).await
    }

    /// One promotion.
    pub(crate) async fn promotion(
        &self,
        service: &ServiceName,
        version: &Version,
        env: &EnvName,
    ) -> Result<Option<PromotionRecord>, Error> {
        let key = streams::promotion_key(service, version, env);
        let value = self
            .promotions
            .get(&key)
            .await
            .map_err(|e| Error::nats(format!("read promotion {key}"), e))?;
        Ok(value.and_then(|v| decode(streams::PROMOTIONS_BUCKET, &key, &v)))
    }

    /// Every promotion.
    pub(crate) async fn promotions(&self) -> Result<Vec<PromotionRecord>, Error> {
        self.views.promotions.values().await
    }

    /// Every deployment record.
    pub(crate) async fn deployments(&self) -> Result<Vec<DeploymentRecord>, Error> {
        self.views.deployments.values().await
    }

    /// Changes a host's key in the agents bucket ([`streams::agent_key`])
    /// with `change`.
    pub(crate) async fn update_agent(
        &self,
        key: &str,
        change: impl FnMut(Option<AgentRecord>) -> Option<AgentRecord>,
    ) -> Result<Option<AgentRecord>, Error> {
        modify(&self.agents, streams::AGENTS_BUCKET, key, change).await
    }

    /// The last heartbeat of every host of each of `environments` that has
    /// one (an agent from before hosts is one host without a name), by host
    /// name.
    pub(crate) async fn hosts(
        &self,
        environments: &[EnvName],
    ) -> Result<HashMap<EnvName, Vec<AgentRecord>>, Error> {
        let per_env = self
            .views
            .agents
            .read(|entries| {
                environments
                    .iter()
                    .map(|env| {
                        let prefix = format!("{env}.");
                        // An agent from before hosts is keyed by the bare
                        // environment name.
                        let hosts: Vec<AgentRecord> = entries
                            .get(env.as_str())
                            .into_iter()
                            .chain(
                                entries
                                    .range(prefix.clone()..)
                                    .take_while(|(key, _)| key.starts_with(&prefix))
                                    .map(|(_, record)| record),
                            )
                            .filter(|r| &r.heartbeat.environment == env)
                            .cloned()
                            .collect();
                        (env.clone(), hosts)
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        let mut out: HashMap<EnvName, Vec<AgentRecord>> = HashMap::new();
        for (env, mut hosts) in per_env {
            hosts.sort_by(|a, b| a.heartbeat.host_name.cmp(&b.heartbeat.host_name));
            if !hosts.is_empty() {
                out.insert(env, hosts);
            }
        }
        Ok(out)
    }

    /// The latest heartbeat of each of `environments` that has one, from
    /// whichever of its hosts sent it last: what environment-wide views
    /// (doctor, a deploy's plan) read.
    pub(crate) async fn agents(
        &self,
        environments: &[EnvName],
    ) -> Result<HashMap<EnvName, AgentRecord>, Error> {
        Ok(self
            .hosts(environments)
            .await?
            .into_iter()
            .filter_map(|(env, hosts)| {
                hosts
                    .into_iter()
                    .max_by_key(|r| r.received_at)
                    .map(|latest| (env, latest))
            })
            .collect())
    }

    /// How far the durable consumer `consumer` of `FERRY_EVENTS` has read:
    /// now when nothing is pending, else when the stream stored the last
    /// event it acknowledged. The agents bucket reflects heartbeats up to
    /// then, so a heartbeat is only stale against that time: a controller
    /// catching up on a backlog (or waiting out the ack wait of an event
    /// handed to an instance that died) must not find hosts lost.
    pub(crate) async fn events_read_up_to(
        &self,
        consumer: &str,
    ) -> Result<time::OffsetDateTime, Error> {
        let name = streams::events().name;
        let stream = self
            .js
            .get_stream(name)
            .await
            .map_err(|e| Error::nats(format!("find stream {name}"), e))?;
        let info = stream
            .consumer_info(consumer)
            .await
            .map_err(|e| Error::nats(format!("read consumer {consumer}"), e))?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(time::OffsetDateTime::now_utc());
        }
        let sequence = info.ack_floor.stream_sequence;
        if sequence == 0 {
            return Ok(time::OffsetDateTime::UNIX_EPOCH);
        }
        match stream.get_raw_message(sequence).await {
            Ok(message) => Ok(message.time),
            // Gone by the stream's limits: older than anything it holds.
            Err(e) => {
                debug!("event {sequence} of {name} unreadable ({e}); judging no host lost");
                Ok(time::OffsetDateTime::UNIX_EPOCH)
            }
        }
    }

    /// The last wave of `service` in `env` and its revision, for
    /// [`Store::replace_wave`].
    pub(crate) async fn wave_entry(
        &self,
        env: &EnvName,
        service: &ServiceName,
    ) -> Result<Option<(WaveRecord, u64)>, Error> {
        let key = format!("{env}.{service}");
        let entry = self
            .waves
            .entry(key.as_str())
            .await
            .map_err(|e| Error::nats(format!("read wave {key}"), e))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| decode(streams::WAVES_BUCKET, &key, &e.value).map(|r| (r, e.revision))))
    }

    /// Writes `record` as the wave of its environment and service if the
    /// key is still at `revision` (0: never written). `false` when another
    /// write came first: read again and decide again.
    pub(crate) async fn replace_wave(
        &self,
        record: &WaveRecord,
        revision: u64,
    ) -> Result<bool, Error> {
        let key = format!("{}.{}", record.environment, record.service);
        let bytes = encode(streams::WAVES_BUCKET, record)?;
        match self
            .waves
            .update(key.as_str(), bytes.into(), revision)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(Error::nats(
                format!("write {key} to {}", streams::WAVES_BUCKET),
                e,
            )),
        }
    }

    /// The last wave of `service` in `env`.
    pub(crate) async fn wave(
        &self,
        env: &EnvName,
        service: &ServiceName,
    ) -> Result<Option<WaveRecord>, Error> {
        let key = format!("{env}.{service}");
        let value = self
            .waves
            .get(&key)
            .await
            .map_err(|e| Error::nats(format!("read wave {key}"), e))?;
        Ok(value.and_then(|v| decode(streams::WAVES_BUCKET, &key, &v)))
    }

    /// Every environment's last wave of every service.
    pub(crate) async fn waves(&self) -> Result<Vec<WaveRecord>, Error> {
        self.views.waves.values().await
    }

    /// Appends `record` to the history stream under `env`'s subject, with
    /// `id` as its `Nats-Msg-Id` so that writing it twice keeps one copy.
    pub(crate) async fn append_history(
        &self,
        env: &EnvName,
        record: HistoryRecord,
        id: Uuid,
    ) -> Result<(), Error> {
        let subject = subject::history(env, &record.service);
        let bytes = Envelope::with_id(id, SOURCE, record).to_bytes()?;
        publish_deduplicated(&self.js, subject, id, bytes).await
    }

    /// The last `limit` history records matching the filters, oldest first.
    ///
    /// This reads every matching record from the start of the stream and
    /// keeps the last `limit`: O(n) in the matching history. JetStream cannot
    /// count back from the end of a filtered subset; if history grows large,
    /// a start time or sequence cursor in the request is the remedy.
    pub(crate) async fn history(
        &self,
        which: &HistoryFilter,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, Error> {
        let filter = format!(
            "{}.history.{}.{}",
            subject::PREFIX,
            which.environment.as_ref().map_or("*", EnvName::as_str),
            which.service.as_ref().map_or("*", ServiceName::as_str)
        );
        let deliver = match which.since {
            Some(start_time) => DeliverPolicy::ByStartTime { start_time },
            None => DeliverPolicy::All,
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let _reader = tokio::time::timeout(HISTORY_QUEUE_WAIT, self.history_readers.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(Error::Busy {
                what: "history",
                limit: HISTORY_READERS,
            })?;
        let mut last = VecDeque::with_capacity(limit.min(1024));
        read_to_end(&self.history, filter, deliver, "history", |msg| {
            match Envelope::<HistoryRecord>::decode(&msg.payload) {
                Ok(envelope) => {
                    let record = &envelope.data;
                    let wanted = which
                        .actor
                        .as_ref()
                        .is_none_or(|a| record.actor.as_ref() == Some(a))
                        && which.action.as_ref().is_none_or(|a| &record.action == a)
                        && which.since.is_none_or(|t| record.time >= t);
                    if !wanted {
                        return;
                    }
                    if last.len() == limit {
                        last.pop_front();
                    }
                    last.push_back(envelope.data);
                }
                Err(e) => warn!(subject = %msg.subject, "skipping unreadable history record: {e}"),
            }
        })
        .await?;
        Ok(last.into())
    }
}

/// Publishes to JetStream with a `Nats-Msg-Id` and waits for the stream's ack,
/// so the caller knows the message is stored (or was a duplicate).
pub(crate) async fn publish_deduplicated(
    js: &Context,
    subject: String,
    id: Uuid,
    payload: Vec<u8>,
) -> Result<(), Error> {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.to_string().as_str());
    let action = || format!("publish to {subject}");
    js.publish_with_headers(subject.clone(), headers, payload.into())
        .await
        .map_err(|e| Error::nats(action(), e))?
        .await
        .map_err(|e| Error::nats(action(), e))?;
    Ok(())
}

async fn ensure_stream(
    js: &Context,
    spec: &StreamSpec,
    replicas: Replicas,
) -> Result<stream::Stream, Error> {
    js.get_or_create_stream(spec.replicated(replicas.get()))
        .await
        .map_err(|e| Error::nats(format!("create stream {}", spec.name), e))
}

/// Adds to `stream` the sources of `spec` it lacks (found created by an
/// agent, or before a leaf was configured), keeping those it has.
async fn ensure_sources(
    js: &Context,
    spec: &StreamSpec,
    stream: stream::Stream,
) -> Result<(), Error> {
    let mut config = stream.cached_info().config.clone();
    let found = config.sources.clone().unwrap_or_default();
    if spec.sources_present(&found) {
        return Ok(());
    }
    let mut sources = found.clone();
    for wanted in &spec.sources {
        let single = StreamSpec {
            sources: vec![wanted.clone()],
            ..spec.clone()
        };
        if !single.sources_present(&found) {
            sources.push(wanted.config());
        }
    }
    config.sources = Some(sources);
    tracing::info!(
        stream = spec.name,
        "adding the leaf nodes' streams it sources"
    );
    js.update_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| Error::nats(format!("add the leaf sources to stream {}", spec.name), e))
}

/// Finds or creates a bucket; returns it with the replica count of the
/// stream it lives in.
async fn ensure_bucket(
    js: &Context,
    spec: streams::BucketSpec,
    replicas: Replicas,
) -> Result<(kv::Store, usize), Error> {
    let bucket = spec.name;
    let store = match js.get_key_value(bucket).await {
        Ok(store) => store,
        Err(_) => match js.create_key_value(spec.replicated(replicas.get())).await {
            Ok(store) => store,
            // Another process may have created it between the two calls.
            Err(create_error) => js
                .get_key_value(bucket)
                .await
                .map_err(|_| Error::nats(format!("create bucket {bucket}"), create_error))?,
        },
    };
    let mut stream = js
        .get_stream(spec.stream_name())
        .await
        .map_err(|e| Error::nats(format!("read bucket {bucket}"), e))?;
    let found = stream
        .info()
        .await
        .map_err(|e| Error::nats(format!("read bucket {bucket}"), e))?
        .config
        .num_replicas;
    Ok((store, found))
}

fn encode<T: Serialize>(bucket: &'static str, value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|source| Error::Encode { bucket, source })
}

fn decode<T: DeserializeOwned>(bucket: &str, key: &str, bytes: &[u8]) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Some(value),
        Err(e) => {
            // A value written by a newer or broken controller: skip it rather
            // than fail every status request; the next write replaces it.
            warn!(bucket, key, "ignoring unreadable value: {e}");
            None
        }
    }
}

/// Compare-and-set: reads `key`, lets `change` compute the new value (or
/// `None` for no change) and writes it only if nobody wrote in between.
async fn modify<T, F>(
    store: &kv::Store,
    bucket: &'static str,
    key: &str,
    mut change: F,
) -> Result<Option<T>, Error>
where
    T: Serialize + DeserializeOwned + Clone,
    F: FnMut(Option<T>) -> Option<T>,
{
    for _ in 0..CAS_ATTEMPTS {
        let entry = store
            .entry(key)
            .await
            .map_err(|e| Error::nats(format!("read {key} from {bucket}"), e))?;
        let (current, revision) = match entry {
            Some(entry) if entry.operation == Operation::Put => {
                (decode::<T>(bucket, key, &entry.value), entry.revision)
            }
            Some(entry) => (None, entry.revision),
            // Revision 0 tells JetStream "only if the key has never been written".
            None => (None, 0),
        };
        let Some(next) = change(current.clone()) else {
            return Ok(current);
        };
        let bytes = encode(bucket, &next)?;
        match store.update(key, bytes.into(), revision).await {
            Ok(_) => return Ok(Some(next)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(Error::nats(format!("write {key} to {bucket}"), e)),
        }
    }
    Err(Error::Contended {
        bucket,
        key: key.to_owned(),
        attempts: CAS_ATTEMPTS,
    })
}

/// Reads every message of `stream` matching `filter` with an ephemeral
/// ordered consumer until it has caught up with the stream's end.
async fn read_to_end(
    stream: &stream::Stream,
    filter: String,
    deliver_policy: DeliverPolicy,
    what: &str,
    mut each: impl FnMut(&jetstream::Message),
) -> Result<(), Error> {
    let action = || format!("read {what}");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats(action(), e))?;
    // Without this check an empty selection would wait for a message forever.
    if consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let name = consumer.cached_info().name.clone();
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats(action(), e))?;
    let result = loop {
        let next = match tokio::time::timeout(READ_STALL, messages.next()).await {
            Ok(next) => next,
            Err(_) => {
                break Err(Error::ReadTimeout {
                    what: what.to_owned(),
                })
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => break Err(Error::nats(action(), e)),
            None => break Ok(()),
        };
        let pending = message.info().map_or(0, |info| info.pending);
        each(&message);
        if pending == 0 {
            break Ok(());
        }
    };
    drop(messages);
    // The server would drop it after its inactivity threshold anyway; deleting
    // it now keeps frequent readers from piling up idle consumers.
    if let Err(e) = stream.delete_consumer(&name).await {
        debug!(consumer = %name, "could not delete a reader consumer: {e}");
    }
    result
}
