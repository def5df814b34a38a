//! A live, in-memory view of one key-value bucket, kept by one long-lived
//! watcher on the bucket's own change stream (in the spirit of a kube-rs
//! reflector), so that folding an event reads memory and creates no consumer.
//!
//! The view is a cache, never the truth: every write stays compare-and-set
//! against JetStream ([`crate::store`]), so two controllers still agree.
//! What the view guarantees is a *consistent read*: before answering, a read
//! asks JetStream for the bucket stream's last sequence and waits until the
//! view has applied at least that far (as Kubernetes serves consistent lists
//! from its watch cache). A read therefore sees every write acknowledged
//! before it began, this controller's and any other's. A view that does not
//! reach the sequence within [`BARRIER_WAIT`] is stale: the read fails with
//! [`Error::ViewBehind`] (the event that needed it is retried) and the
//! watcher is rebuilt from a fresh snapshot. A watcher that errors or ends is
//! rebuilt the same way, with backoff, and its failure is logged once per
//! reason.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;

/// Longest wait for the view to reach the bucket's last sequence before a
/// read gives up and the view is rebuilt. A live view lags its bucket by a
/// network round trip; seconds mean the watcher is stuck.
pub(crate) const BARRIER_WAIT: Duration = Duration::from_secs(2);
/// First pause before a failed watcher is rebuilt; doubled up to
/// [`REBUILD_BACKOFF_MAX`].
const REBUILD_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const REBUILD_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The key pattern that matches every key of a bucket.
const ALL_KEYS: &str = ">";

/// Decodes a stored value; `None` for a value this controller cannot read
/// (skipped, as a direct read would skip it).
pub(crate) type Decoder<T> = fn(bucket: &str, key: &str, bytes: &[u8]) -> Option<T>;

/// The current values of one bucket, by key, and how far they go.
pub(crate) struct BucketView<T> {
    bucket: &'static str,
    stream: stream::Stream,
    shared: Arc<Shared<T>>,
}

impl<T> Clone for BucketView<T> {
    fn clone(&self) -> Self {
        BucketView {
            bucket: self.bucket,
            stream: self.stream.clone(),
            shared: self.shared.clone(),
        }
    }
}

struct Shared<T> {
    entries: RwLock<BTreeMap<String, T>>,
    /// The highest stream sequence the entries reflect.
    applied: watch::Sender<u64>,
    /// A read found the view behind: rebuild it.
    resync: Notify,
}

impl<T> BucketView<T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Starts following `store` until `stop`; the view answers reads once its
    /// first snapshot is in.
    pub(crate) fn follow(
        bucket: &'static str,
        store: kv::Store,
        decode: Decoder<T>,
        stop: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared {
            entries: RwLock::new(BTreeMap::new()),
            applied: watch::Sender::new(0),
            resync: Notify::new(),
        });
        let view = BucketView {
            bucket,
            stream: store.stream.clone(),
            shared: shared.clone(),
        };
        let follower = Follower {
            bucket,
            store,
            decode,
            shared,
            _value: PhantomData,
        };
        tokio::spawn(follower.run(stop));
        view
    }

    /// Runs `read` over the entries once they reflect every write the bucket
    /// had acknowledged when this call began.
    pub(crate) async fn read<R>(
        &self,
        read: impl FnOnce(&BTreeMap<String, T>) -> R,
    ) -> Result<R, Error> {
        let target = self
            .stream
            .get_info()
            .await
            .map_err(|e| Error::nats(format!("read the last sequence of {}", self.bucket), e))?
            .state
            .last_sequence;
        let mut applied = self.shared.applied.subscribe();
        let reached = tokio::time::timeout(BARRIER_WAIT, applied.wait_for(|a| *a >= target))
            .await
            .is_ok_and(|waited| waited.is_ok());
        if !reached {
            let applied = *applied.borrow();
            self.shared.resync.notify_one();
            return Err(Error::ViewBehind {
                bucket: self.bucket,
                target,
                applied,
            });
        }
        let entries = self.shared.entries.read().await;
        Ok(read(&entries))
    }

    /// Every value, in key order.
    pub(crate) async fn values(&self) -> Result<Vec<T>, Error> {
        self.read(|entries| entries.values().cloned().collect())
            .await
    }

    /// The values whose keys start with `prefix`, in key order.
    pub(crate) async fn values_under(&self, prefix: &str) -> Result<Vec<T>, Error> {
        self.read(|entries| {
            entries
                .range(prefix.to_owned()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(_, value)| value.clone())
                .collect()
        })
        .await
    }
}

/// The task that keeps a view in step with its bucket.
struct Follower<T> {
    bucket: &'static str,
    store: kv::Store,
    decode: Decoder<T>,
    shared: Arc<Shared<T>>,
    _value: PhantomData<fn() -> T>,
}

impl<T> Follower<T>
where
    T: Clone + Send + Sync + 'static,
{
    async fn run(self, stop: CancellationToken) {
        let mut backoff = REBUILD_BACKOFF_FIRST;
        let mut last_failure: Option<String> = None;
        loop {
            let (stopped, went_live) = match self.follow_once(&stop).await {
                Ok(()) => (true, false),
                Err(Interrupted { reason, went_live }) => {
                    // Reported once per reason, so a server that keeps
                    // refusing does not flood the log.
                    if last_failure.as_deref() == Some(reason.as_str()) {
                        debug!(bucket = self.bucket, "rebuilding the view again: {reason}");
                    } else {
                        warn!(bucket = self.bucket, "rebuilding the view: {reason}");
                        last_failure = Some(reason);
                    }
                    (false, went_live)
                }
            };
            if stopped {
                return;
            }
            if went_live {
                backoff = REBUILD_BACKOFF_FIRST;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(REBUILD_BACKOFF_MAX);
        }
    }

    /// Takes a fresh snapshot and follows the bucket's changes until `stop`
    /// (`Ok`), or until the watcher fails or a read finds the view behind.
    async fn follow_once(&self, stop: &CancellationToken) -> Result<(), Interrupted> {
        let failed = |reason: String| Interrupted {
            reason,
            went_live: false,
        };
        // Taken before the watcher exists: every write up to `floor` is in
        // the snapshot the watcher delivers, whatever was superseded since.
        let floor = self
            .store
            .stream
            .get_info()
            .await
            .map_err(|e| failed(format!("could not read the bucket's stream: {e}")))?
            .state;
        // The last value of every key, then every change: `watch_all` would
        // start at new changes only.
        let mut watcher = self
            .store
            .watch_with_history(ALL_KEYS)
            .await
            .map_err(|e| failed(format!("could not watch the bucket: {e}")))?;
        let mut snapshot = BTreeMap::new();
        let mut live = false;
        if floor.messages == 0 {
            self.install(BTreeMap::new(), floor.last_sequence).await;
            live = true;
        }
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = self.shared.resync.notified() => {
                    return Err(Interrupted {
                        reason: "a read found the view behind its bucket".to_owned(),
                        went_live: live,
                    });
                }
                next = watcher.next() => next,
            };
            let entry = match next {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    return Err(Interrupted {
                        reason: format!("the watcher failed: {e}"),
                        went_live: live,
                    })
                }
                None => {
                    return Err(Interrupted {
                        reason: "the watcher ended".to_owned(),
                        went_live: live,
                    })
                }
            };
            let value = match entry.operation {
                Operation::Put => (self.decode)(self.bucket, &entry.key, &entry.value),
                Operation::Delete | Operation::Purge => None,
            };
            if live {
                let mut entries = self.shared.entries.write().await;
                apply(&mut entries, entry.key, value);
                drop(entries);
                self.shared
                    .applied
                    .send_if_modified(|applied| raise(applied, entry.revision));
            } else {
                apply(&mut snapshot, entry.key, value);
                // Nothing pending: the snapshot holds the bucket as of at
                // least `floor`.
                if entry.delta == 0 {
                    let reached = entry.revision.max(floor.last_sequence);
                    self.install(std::mem::take(&mut snapshot), reached).await;
                    live = true;
                }
            }
        }
    }

    async fn install(&self, snapshot: BTreeMap<String, T>, reached: u64) {
        let count = snapshot.len();
        *self.shared.entries.write().await = snapshot;
        self.shared
            .applied
            .send_if_modified(|applied| raise(applied, reached));
        info!(
            bucket = self.bucket,
            keys = count,
            sequence = reached,
            "view of the bucket is live"
        );
    }
}

struct Interrupted {
    reason: String,
    /// The view had caught up before it stopped (its backoff starts over).
    went_live: bool,
}

fn apply<T>(entries: &mut BTreeMap<String, T>, key: String, value: Option<T>) {
    match value {
        Some(value) => {
            entries.insert(key, value);
        }
        None => {
            entries.remove(&key);
        }
    }
}

/// Moves `applied` up to `reached`; never back (a rebuilt view starts from a
/// later floor than any sequence it had applied).
fn raise(applied: &mut u64, reached: u64) -> bool {
    if reached > *applied {
        *applied = reached;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view of a bucket on a real nats-server (`TEST_NATS_BIN`, else
    /// `nats-server` on PATH), the server killed when the test ends.
    mod against_nats {
        use std::process::{Child, Command, Stdio};

        use super::*;

        struct Server {
            child: Child,
            _store: tempfile::TempDir,
        }

        impl Drop for Server {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }

        async fn bucket() -> (Server, kv::Store) {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let bin = std::env::var("TEST_NATS_BIN").unwrap_or_else(|_| "nats-server".into());
            let child = Command::new(bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server must be on PATH (or set TEST_NATS_BIN)");
            let server = Server { child, _store: dir };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let client = loop {
                if let Ok(client) = async_nats::connect(format!("127.0.0.1:{port}")).await {
                    break client;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nats-server did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let store = async_nats::jetstream::new(client)
                .create_key_value(kv::Config {
                    bucket: "view_test".into(),
                    history: 5,
                    ..Default::default()
                })
                .await
                .unwrap();
            (server, store)
        }

        fn number(_bucket: &str, _key: &str, bytes: &[u8]) -> Option<u32> {
            std::str::from_utf8(bytes).ok()?.parse().ok()
        }

        #[tokio::test]
        async fn a_view_over_a_filled_bucket_sees_each_write_acknowledged_before_a_read() {
            let (_server, store) = bucket().await;
            // Values, a replaced value and a deleted key before the view exists.
            for (key, value) in [("a.1", "1"), ("a.2", "2"), ("b.1", "3"), ("a.1", "4")] {
                store.put(key, value.into()).await.unwrap();
            }
            store.put("c.1", "5".into()).await.unwrap();
            store.delete("c.1").await.unwrap();
            let stop = CancellationToken::new();
            let view = BucketView::follow("view_test", store.clone(), number, stop.clone());
            assert_eq!(view.values().await.unwrap(), vec![4, 2, 3]);
            assert_eq!(view.values_under("a.").await.unwrap(), vec![4, 2]);
            // Each write is seen by the very next read: the read waits for
            // the view to reach the bucket's last sequence.
            for round in 0..50u32 {
                store.put("b.1", round.to_string().into()).await.unwrap();
                assert_eq!(view.values_under("b.").await.unwrap(), vec![round]);
            }
            store.purge("a.2").await.unwrap();
            assert_eq!(view.values_under("a.").await.unwrap(), vec![4]);
            // An unreadable value is skipped, not an error.
            store.put("a.3", "not a number".into()).await.unwrap();
            assert_eq!(view.values_under("a.").await.unwrap(), vec![4]);
            stop.cancel();
        }
    }

    #[test]
    fn applied_only_moves_forward() {
        let mut applied = 5;
        assert!(!raise(&mut applied, 3));
        assert_eq!(applied, 5);
        assert!(raise(&mut applied, 9));
        assert_eq!(applied, 9);
    }

    #[test]
    fn a_delete_removes_the_key_and_a_put_replaces_it() {
        let mut entries = BTreeMap::new();
        apply(&mut entries, "a".to_owned(), Some(1));
        apply(&mut entries, "a".to_owned(), Some(2));
        apply(&mut entries, "b".to_owned(), Some(3));
        apply(&mut entries, "b".to_owned(), None);
        assert_eq!(
            entries.into_iter().collect::<Vec<_>>(),
            vec![("a".to_owned(), 2)]
        );
    }
}
