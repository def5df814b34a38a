//! The drill's own small load: `GET /` on the stable address, one request
//! at a time, counting those that fail (no answer or a 5xx).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Requests sent and failed, once the load has stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) requests: u64,
    pub(super) failed: u64,
}

/// A running load.
pub(super) struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Load {
    /// Starts sending `GET /` to `address` (host:port or a URL) every `interval`.
    pub(super) fn start(address: &str, interval: Duration) -> Result<Load, String> {
        let url = if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}/")
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, requests, failed) = (stop.clone(), requests.clone(), failed.clone());
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let ok = match client.get(&url).send().await {
                        Ok(response) => !response.status().is_server_error(),
                        Err(_) => false,
                    };
                    requests.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Load {
            stop,
            requests,
            failed,
            task,
        })
    }

    /// Stops after the request in flight and returns the counts.
    pub(super) async fn stop(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        // A panicked or cancelled task still leaves its counts.
        let _ = self.task.await;
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}
