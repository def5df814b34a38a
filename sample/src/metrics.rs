//! What `/metrics` exposes, in Prometheus's text format: requests by status
//! code and a latency histogram, each labelled with the service, environment
//! and version, so a Prometheus can tell a canary from the stable version.
//! Written by hand (a few counters) to keep the sample free of dependencies
//! beyond hyper and tokio.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, seconds.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
];

/// Counts of the requests answered, by status code, and their latencies.
pub struct RequestMetrics {
    labels: String,
    by_code: Mutex<BTreeMap<u16, u64>>,
    /// Requests at or under each bound of `BUCKETS` (not cumulative yet).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl RequestMetrics {
    /// Metrics labelled `service`, `environment` and `version`.
    pub fn new(service: &str, environment: &str, version: &str) -> Self {
        RequestMetrics {
            labels: format!(
                "service=\"{}\",environment=\"{}\",version=\"{}\"",
                escape(service),
                escape(environment),
                escape(version)
            ),
            by_code: Mutex::new(BTreeMap::new()),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// One request answered with `code` after `took`.
    pub fn record(&self, code: u16, took: Duration) {
        if let Ok(mut by_code) = self.by_code.lock() {
            *by_code.entry(code).or_insert(0) += 1;
        }
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&bound| secs <= bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let labels = &self.labels;
        let mut out = String::new();
        out.push_str("# HELP ferry_sample_requests_total Requests answered, by status code.\n");
        out.push_str("# TYPE ferry_sample_requests_total counter\n");
        // Both codes the sample answers are always present, so an error-rate
        // query has a series for the 500s even before the first one.
        let mut by_code = self.by_code.lock().map(|m| m.clone()).unwrap_or_default();
        by_code.entry(200).or_insert(0);
        by_code.entry(500).or_insert(0);
        for (code, n) in by_code {
            let _ = writeln!(
                out,
                "ferry_sample_requests_total{{{labels},code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP ferry_sample_request_duration_seconds Time to answer a request.\n");
        out.push_str("# TYPE ferry_sample_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "ferry_sample_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "ferry_sample_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "ferry_sample_request_duration_seconds_sum{{{labels}}} {sum}"
        );
        let _ = writeln!(
            out,
            "ferry_sample_request_duration_seconds_count{{{labels}}} {count}"
        );
        out
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_code_with_a_cumulative_histogram() {
        let m = RequestMetrics::new("web", "dev", "2.0.0");
        m.record(200, Duration::from_millis(3));
        m.record(200, Duration::from_millis(30));
        m.record(500, Duration::from_millis(300));
        let text = m.render();
        let labels = r#"service="web",environment="dev",version="2.0.0""#;
        for line in [
            format!("ferry_sample_requests_total{{{labels},code=\"200\"}} 2"),
            format!("ferry_sample_requests_total{{{labels},code=\"500\"}} 1"),
            format!("ferry_sample_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("ferry_sample_request_duration_seconds_bucket{{{labels},le=\"0.05\"}} 2"),
            format!("ferry_sample_request_duration_seconds_bucket{{{labels},le=\"0.25\"}} 2"),
            format!("ferry_sample_request_duration_seconds_bucket{{{labels},le=\"0.5\"}} 3"),
            format!("ferry_sample_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("ferry_sample_request_duration_seconds_count{{{labels}}} 3"),
            format!("ferry_sample_request_duration_seconds_sum{{{labels}}} 0.333"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn the_500s_series_exists_before_the_first_error_and_labels_are_escaped() {
        let text = RequestMetrics::new("web", "dev", "1.0\"x").render();
        assert!(text.contains(r#"version="1.0\"x",code="500"} 0"#), "{text}");
    }
}
