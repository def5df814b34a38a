//! Where a service's golden signals come from during analysis
//! (`[services.NAME.metrics]`): the agent's own proxy (the default), or a
//! Prometheus server queried with PromQL templates, for services whose
//! traffic does not pass through the agent.

use std::time::Duration;

use serde::Deserialize;

/// ferry-sample's series, selected for one version of one service.
const SAMPLE_SELECTOR: &str =
    r#"environment="{environment}",service="{service}",version="{version}""#;

/// Default error-rate query: the share (0 to 1) of 5xx answers.
pub fn default_error_rate_query() -> String {
    format!(
        r#"sum(rate(ferry_sample_requests_total{{{SAMPLE_SELECTOR},code=~"5.."}}[{{interval}}])) / sum(rate(ferry_sample_requests_total{{{SAMPLE_SELECTOR}}}[{{interval}}]))"#
    )
}

/// Default p95 query, in seconds.
pub fn default_p95_query() -> String {
    format!(
        r#"histogram_quantile(0.95, sum by (le) (rate(ferry_sample_request_duration_seconds_bucket{{{SAMPLE_SELECTOR}}}[{{interval}}])))"#
    )
}

/// Default request-rate query, requests per second.
pub fn default_request_rate_query() -> String {
    format!(r#"sum(rate(ferry_sample_requests_total{{{SAMPLE_SELECTOR}}}[{{interval}}]))"#)
}

/// A service's metrics provider.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum MetricsProvider {
    /// What the agent's proxy measured (the proxy must be in the path).
    #[default]
    Proxy,
    /// A Prometheus server.
    Prometheus(PrometheusConfig),
}

/// How to ask a Prometheus server for a version's signals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// The server's base URL (`http://prometheus:9090`).
    pub url: String,
    /// PromQL for the error rate, a share from 0 to 1.
    pub error_rate_query: String,
    /// PromQL for the p95 latency, seconds.
    pub p95_query: String,
    /// PromQL for the request rate, requests per second.
    pub request_rate_query: String,
    /// Time one query may take.
    pub timeout: Duration,
}

/// `[services.NAME.metrics]` as read.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawMetrics {
    provider: Option<String>,
    url: Option<String>,
    error_rate_query: Option<String>,
    p95_query: Option<String>,
    request_rate_query: Option<String>,
    timeout: Option<String>,
}

/// Checks `raw` (at `prefix`, e.g. `services.web.metrics`), adding what is
/// wrong to `problems`.
pub(super) fn metrics_provider(
    raw: Option<RawMetrics>,
    prefix: &str,
    problems: &mut Vec<String>,
) -> MetricsProvider {
    let Some(raw) = raw else {
        return MetricsProvider::Proxy;
    };
    match raw.provider.as_deref().unwrap_or("proxy") {
        "proxy" => {
            if raw.url.is_some() {
                problems.push(format!(
                    "{prefix}.url: only the prometheus provider has a URL (set provider = \"prometheus\")"
                ));
            }
            MetricsProvider::Proxy
        }
        "prometheus" => {
            let url = match raw.url {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    url.trim_end_matches('/').to_owned()
                }
                Some(url) => {
                    problems.push(format!(
                        "{prefix}.url: {url:?} is not an http:// or https:// URL"
                    ));
                    String::new()
                }
                None => {
                    problems.push(format!(
                        "{prefix}.url: required with provider = \"prometheus\" (e.g. \"http://prometheus:9090\")"
                    ));
                    String::new()
                }
            };
            let mut query = |field: &str, value: Option<String>, default: fn() -> String| {
                let query = value.unwrap_or_else(default);
                if query.trim().is_empty() {
                    problems.push(format!("{prefix}.{field}: must not be empty"));
                }
                query
            };
            let error_rate_query = query(
                "error_rate_query",
                raw.error_rate_query,
                default_error_rate_query,
            );
            let p95_query = query("p95_query", raw.p95_query, default_p95_query);
            let request_rate_query = query(
                "request_rate_query",
                raw.request_rate_query,
                default_request_rate_query,
            );
            let timeout = match raw.timeout.as_deref().map(humantime::parse_duration) {
                None => Duration::from_secs(2),
                Some(Ok(d)) if !d.is_zero() => d,
                Some(_) => {
                    problems.push(format!(
                        "{prefix}.timeout: not a duration above zero (e.g. \"2s\")"
                    ));
                    Duration::from_secs(2)
                }
            };
            MetricsProvider::Prometheus(PrometheusConfig {
                url,
                error_rate_query,
                p95_query,
                request_rate_query,
                timeout,
            })
        }
        other => {
            problems.push(format!(
                "{prefix}.provider: {other:?} is not a metrics provider (proxy or prometheus)"
            ));
            MetricsProvider::Proxy
        }
    }
}

/// `template` with its placeholders filled in.
pub fn render_query(
    template: &str,
    environment: &str,
    service: &str,
    version: &str,
    interval: Duration,
) -> String {
    // PromQL durations take whole milliseconds.
    let interval = format!("{}ms", interval.as_millis().max(1));
    template
        .replace("{environment}", environment)
        .replace("{service}", service)
        .replace("{version}", version)
        .replace("{interval}", &interval)
}
