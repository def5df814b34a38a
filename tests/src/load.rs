//! A load generator for the stable port: a few tasks sending `GET /` in a
//! loop, counting answers per version (`x-version`) and failures, so a test
//! can tell who served what and when.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the load generator saw.
#[derive(Clone, Debug, Default)]
pub struct LoadStats {
    /// Answers per version (any status).
    pub by_version: BTreeMap<String, u64>,
    /// Failed answers (5xx or none) per version; `"-"` for no answer.
    pub failed_by_version: BTreeMap<String, u64>,
    /// Requests sent and answered.
    pub total: u64,
    /// 5xx answers or no answer at all.
    pub failed: u64,
    /// When each version last answered.
    pub last_seen: BTreeMap<String, Instant>,
    /// When each version first answered.
    pub first_seen: BTreeMap<String, Instant>,
}

/// A running load generator.
/// How a load worker spaces its requests.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// This long after each answer.
    Pause(Duration),
    /// One request per period, whatever the answers take.
    Every(Duration),
}

pub struct Load {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    stats: Arc<Mutex<LoadStats>>,
}

impl Load {
    /// Starts `workers` tasks sending `GET /` to `127.0.0.1:port`, each
    /// pausing `pause` between requests.
    pub fn start(port: u16, workers: usize, pause: Duration) -> Load {
        Load::spawn(port, workers, Pace::Pause(pause))
    }

    /// Sends `per_sec` requests a second (four workers, each on its own
    /// ticker, so a slow answer delays only its worker's next request).
    pub fn at_rate(port: u16, per_sec: u32) -> Load {
        const WORKERS: u32 = 4;
        let period = Duration::from_secs_f64(f64::from(WORKERS) / f64::from(per_sec.max(1)));
        Load::spawn(port, WORKERS as usize, Pace::Every(period))
    }

    fn spawn(port: u16, workers: usize, pace: Pace) -> Load {
        let stop = CancellationToken::new();
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let mut tasks = JoinSet::new();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        for _ in 0..workers {
            let (stop, stats, client) = (stop.clone(), stats.clone(), client.clone());
            let url = format!("http://127.0.0.1:{port}/");
            tasks.spawn(async move {
                let mut ticker = match pace {
                    Pace::Every(period) => {
                        let mut t = tokio::time::interval(period);
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        Some(t)
                    }
                    Pace::Pause(_) => None,
                };
                while !stop.is_cancelled() {
                    if let Some(t) = ticker.as_mut() {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = t.tick() => {}
                        }
                    }
                    let answer = client.get(&url).send().await;
                    let now = Instant::now();
                    let (version, failed) = match answer {
                        Ok(r) => {
                            let version = r
                                .headers()
                                .get("x-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned();
                            let failed = r.status().is_server_error();
                            let _ = r.bytes().await;
                            (version, failed)
                        }
                        Err(_) => ("-".to_owned(), true),
                    };
                    {
                        let mut s = stats.lock().unwrap();
                        s.total += 1;
                        *s.by_version.entry(version.clone()).or_default() += 1;
                        if failed {
                            s.failed += 1;
                            *s.failed_by_version.entry(version.clone()).or_default() += 1;
                        }
                        s.first_seen.entry(version.clone()).or_insert(now);
                        s.last_seen.insert(version, now);
                    }
                    if let Pace::Pause(pause) = pace {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            });
        }
        Load { stop, tasks, stats }
    }

    /// What it saw so far.
    pub fn stats(&self) -> LoadStats {
        self.stats.lock().unwrap().clone()
    }

    /// Forgets what it saw so far.
    pub fn reset(&self) {
        *self.stats.lock().unwrap() = LoadStats::default();
    }

    /// Stops it and returns what it saw.
    pub async fn stop(mut self) -> LoadStats {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.stats()
    }
}
