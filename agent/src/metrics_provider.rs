//! The Prometheus metrics provider: a version's golden signals over one
//! analysis interval, read from a Prometheus server's HTTP API
//! (`/api/v1/query`) with the service's PromQL templates, as a `SetWindow`
//! the analysis judges like the proxy's. A failed query, an error answer or
//! an empty result is no verdict (`Error::NoVerdict`), never a pass.

use std::time::Duration;

use ferry_protocol::{EnvName, ServiceName, Version};

use crate::config::{render_query, MetricsProvider, PrometheusConfig};
use crate::Error;
use ferry_analysis::SetWindow;

/// Asks one Prometheus server about one service.
#[derive(Clone, Debug)]
pub struct PrometheusProvider {
    config: PrometheusConfig,
    environment: EnvName,
    service: ServiceName,
    http: reqwest::Client,
}

impl PrometheusProvider {
    /// A provider for `service` in `environment`.
    pub fn new(config: PrometheusConfig, environment: EnvName, service: ServiceName) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_default();
        PrometheusProvider {
            config,
            environment,
            service,
            http,
        }
    }

    /// The provider `configured` for `service`, if not the proxy.
    pub fn configured(
        configured: &MetricsProvider,
        environment: &EnvName,
        service: &ServiceName,
    ) -> Option<Self> {
        match configured {
            MetricsProvider::Proxy => None,
            MetricsProvider::Prometheus(config) => Some(PrometheusProvider::new(
                config.clone(),
                environment.clone(),
                service.clone(),
            )),
        }
    }

    /// Names the provider in logs and abort reasons.
    pub fn describe(&self) -> String {
        format!("prometheus at {}", self.config.url)
    }

    fn no_verdict(&self, detail: impl Into<String>) -> Error {
        Error::NoVerdict {
            provider: self.describe(),
            detail: detail.into(),
        }
    }

    /// What `version` answered over the last `interval`.
    pub async fn window(&self, version: &Version, interval: Duration) -> Result<SetWindow, Error> {
        let rate = self
            .query(
                "request rate",
                &self.config.request_rate_query,
                version,
                interval,
            )
            .await?;
        let requests = (rate.max(0.0) * interval.as_secs_f64()).round() as u64;
        if requests == 0 {
            // 0/0 error rates and quantiles of nothing are NaN: no traffic is
            // an answer (inconclusive under min_requests), not an error.
            return Ok(SetWindow::measured(0, 0, 0.0));
        }
        let error_rate = self
            .query(
                "error rate",
                &self.config.error_rate_query,
                version,
                interval,
            )
            .await?;
        let p95_secs = self
            .query("p95 latency", &self.config.p95_query, version, interval)
            .await?;
        if error_rate.is_nan() || p95_secs.is_nan() {
            return Err(self.no_verdict(format!(
                "{requests} requests but no error rate or p95 (NaN)"
            )));
        }
        let errors = (error_rate.clamp(0.0, 1.0) * requests as f64).round() as u64;
        Ok(SetWindow::measured(
            requests,
            errors,
            p95_secs.max(0.0) * 1000.0,
        ))
    }

    /// The single value `template` evaluates to for `version`.
    async fn query(
        &self,
        what: &str,
        template: &str,
        version: &Version,
        interval: Duration,
    ) -> Result<f64, Error> {
        let promql = render_query(
            template,
            self.environment.as_str(),
            self.service.as_str(),
            version.as_str(),
            interval,
        );
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.config.url),
            [("query", promql.as_str())],
        )
        .map_err(|e| self.no_verdict(format!("bad URL: {e}")))?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.no_verdict(format!("{what} query failed: {e}")))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| {
            self.no_verdict(format!("{what} query: unreadable answer ({status}): {e}"))
        })?;
        parse_value(&body)
            .map_err(|detail| self.no_verdict(format!("{what} query {promql:?}: {detail}")))
    }
}

/// The one sample of an instant query's answer.
fn parse_value(body: &serde_json::Value) -> Result<f64, String> {
    if body["status"] != "success" {
        return Err(format!(
            "Prometheus answered {}: {}",
            body["errorType"].as_str().unwrap_or("an error"),
            body["error"].as_str().unwrap_or("no detail")
        ));
    }
    let data = &body["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([]) | None => return Err("empty result (no matching series)".into()),
            Some([one]) => &one["value"],
            Some(many) => {
                return Err(format!(
                    "{} series; the query must aggregate to one (e.g. sum(...))",
                    many.len()
                ))
            }
        },
        Some("scalar") => &data["result"],
        other => return Err(format!("unexpected result type {other:?}")),
    };
    sample[1]
        .as_str()
        .and_then(|text| text.parse::<f64>().ok())
        .ok_or_else(|| format!("not a sample: {sample}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{default_error_rate_query, render_query};

    #[test]
    fn a_vector_of_one_sample_is_its_value() {
        let body = json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [1.5, "0.25"]}]}});
        assert_eq!(parse_value(&body), Ok(0.25));
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1.5, "NaN"]}});
        assert!(parse_value(&scalar).unwrap().is_nan());
    }

    #[test]
    fn empty_results_errors_and_several_series_are_no_verdict() {
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert!(parse_value(&empty).unwrap_err().contains("empty result"));
        let error = json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert!(parse_value(&error)
            .unwrap_err()
            .contains("bad_data: parse error"));
        let two = json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]}});
        assert!(parse_value(&two).unwrap_err().contains("2 series"));
    }

    #[test]
    fn templates_are_filled_with_the_version_and_the_interval() {
        let q = render_query(
            &default_error_rate_query(),
            "dev",
            "web",
            "2.0.0",
            Duration::from_secs(3),
        );
        assert!(
            q.contains(r#"environment="dev",service="web",version="2.0.0""#),
            "{q}"
        );
        assert!(q.contains("[3000ms]"), "{q}");
        assert!(!q.contains("{interval}") && !q.contains("{version}"), "{q}");
    }

    #[test]
    fn a_measured_window_is_judged_like_the_proxys() {
        use ferry_analysis::Thresholds;
        use ferry_protocol::rollout::Metric;
        let t = Thresholds::default();
        let (signals, breaches, conclusive) = t.judge(&SetWindow::measured(100, 20, 2500.0));
        assert!(conclusive);
        assert_eq!(signals.error_rate_percent, 20.0);
        assert_eq!((signals.p95_ms, signals.p99_ms), (2500.0, 2500.0));
        let metrics: Vec<Metric> = breaches.iter().map(|b| b.metric).collect();
        assert_eq!(
            metrics,
            vec![
                Metric::ErrorRate,
                Metric::P95,
                Metric::P99,
                Metric::Availability
            ]
        );
        // Under min_requests, error rate and latency give no verdict.
        let (_, breaches, conclusive) = t.judge(&SetWindow::measured(10, 5, 2500.0));
        assert!(!conclusive);
        assert!(breaches.iter().all(|b| b.metric == Metric::Availability));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_no_verdict() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let provider = PrometheusProvider::new(
            PrometheusConfig {
                url: format!("http://127.0.0.1:{port}"),
                error_rate_query: default_error_rate_query(),
                p95_query: "1".into(),
                request_rate_query: "1".into(),
                timeout: Duration::from_secs(1),
            },
            EnvName::new("dev").unwrap(),
            ServiceName::new("web").unwrap(),
        );
        let err = provider
            .window(&Version::new("2.0.0").unwrap(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::NoVerdict { provider, .. } if provider.contains("prometheus at http://127.0.0.1")),
            "{err}"
        );
    }
}
