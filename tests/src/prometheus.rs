//! A real Prometheus server for a test (Debian's `prometheus`, or
//! `$TEST_PROMETHEUS_BIN`): started on a free loopback port with a generated
//! configuration that scrapes every second either the targets of a file_sd
//! file the test keeps up to date (process replicas) or a service's
//! containers found through the Docker engine (`docker_sd_configs`); killed
//! and its store removed on drop.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::free_port;

/// The prometheus binary: `$TEST_PROMETHEUS_BIN`, else `prometheus` on PATH.
pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("TEST_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prometheus"))
}

/// How Prometheus finds the replicas to scrape.
pub enum Discovery {
    /// The targets of [`Prometheus::targets_file`] (see [`follow_replicas`]).
    File,
    /// The containers the agent labelled `io.ferry.service=NAME`, at their
    /// published loopback ports.
    Docker(String),
}

/// One running Prometheus.
pub struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus and waits until it is ready. Panics with what to
    /// install when the binary is missing: these tests never pass without it.
    pub async fn start(discovery: Discovery) -> Prometheus {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let targets = dir.path().join("targets.json");
        std::fs::write(&targets, "[]").expect("targets file");
        let discovery: Vec<String> = match discovery {
            Discovery::File => vec![
                "    file_sd_configs:".into(),
                format!("      - files: ['{}']", targets.display()),
                "        refresh_interval: 1s".into(),
            ],
            Discovery::Docker(service) => vec![
                "    docker_sd_configs:".into(),
                "      - host: unix:///var/run/docker.sock".into(),
                "        refresh_interval: 1s".into(),
                "        filters:".into(),
                "          - name: label".into(),
                format!("            values: ['io.ferry.service={service}']"),
                // One target per published port, scraped where it is published.
                "    relabel_configs:".into(),
                "      - source_labels: [__meta_docker_port_public]".into(),
                "        regex: ''".into(),
                "        action: drop".into(),
                "      - source_labels: [__meta_docker_port_public]".into(),
                "        target_label: __address__".into(),
                "        replacement: '127.0.0.1:$1'".into(),
            ],
        };
        let config = dir.path().join("prometheus.yml");
        let mut lines: Vec<String> = [
            "global:",
            "  scrape_interval: 1s",
            "  evaluation_interval: 1s",
            "scrape_configs:",
            "  - job_name: ferry-sample",
            "    scrape_timeout: 900ms",
        ]
        .map(String::from)
        .to_vec();
        lines.extend(discovery);
        std::fs::write(&config, lines.join("\n") + "\n").expect("prometheus config");
        let port = free_port();
        let bin = prometheus_bin();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install Debian's prometheus package (scripts/test does) or set TEST_PROMETHEUS_BIN",
                    bin.display()
                )
            });
        let server = Prometheus {
            child: Some(child),
            port,
            dir,
        };
        let ready = format!("{}/-/ready", server.url());
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(&ready).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "prometheus never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file_sd file it scrapes the targets of.
    pub fn targets_file(&self) -> PathBuf {
        self.dir.path().join("targets.json")
    }

    /// Kills it (as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Addresses process replicas of ferry-sample announced in `log`
/// (`ferry-sample 2.0.0 listening on http://127.0.0.1:PORT`), in order.
pub fn announced_addresses(log: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            line.split_once(" listening on http://")
                .map(|(_, a)| a.trim().to_owned())
        })
        .collect()
}

/// Keeps `targets` (a file_sd file) listing every replica address the agent's
/// replicas announced in `log`, until the returned task is aborted: the
/// process runtime gives replicas free ports, so Prometheus learns them here.
pub fn follow_replicas(log: PathBuf, targets: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut written = BTreeSet::new();
        loop {
            let now = announced_addresses(&log);
            if now != written {
                let list: Vec<&String> = now.iter().collect();
                let text = serde_json::json!([{ "targets": list }]).to_string();
                // Written aside and renamed, so Prometheus never reads half a file.
                let tmp = targets.with_extension("tmp");
                if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &targets).is_ok() {
                    written = now;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A ferry-sample process the test runs itself, labelled in `/metrics` as
/// one version of dev/`service`: where no agent runs the replicas (the
/// Kubernetes tests, whose cluster is a fake that runs no pods), these are
/// the real traffic Prometheus scrapes. Killed on drop.
pub struct Sample {
    child: Child,
    /// Its port on loopback.
    pub port: u16,
}

impl Sample {
    /// Starts ferry-sample as `version` of dev/`service` with the extra
    /// variables `env` (e.g. `SAMPLE_ERROR_RATE`) and waits until it answers.
    pub async fn start(service: &str, version: &str, env: &[(&str, &str)]) -> Sample {
        let port = free_port();
        let child = Command::new(crate::bins::bin("ferry-sample"))
            .env("PORT", port.to_string())
            .env("FERRY_VERSION", version)
            .env("FERRY_SERVICE", service)
            .env("FERRY_ENVIRONMENT", "dev")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ferry-sample");
        let sample = Sample { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while crate::get(port, "/health").await.map(|a| a.status) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "ferry-sample {version} never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sample
    }

    /// Its address, as a scrape target.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `prometheus` scrape `samples`.
pub fn scrape(prometheus: &Prometheus, samples: &[&Sample]) {
    let list: Vec<String> = samples.iter().map(|s| s.address()).collect();
    let text = serde_json::json!([{ "targets": list }]).to_string();
    let targets = prometheus.targets_file();
    let tmp = targets.with_extension("tmp");
    std::fs::write(&tmp, text).expect("targets");
    std::fs::rename(&tmp, &targets).expect("targets");
}
