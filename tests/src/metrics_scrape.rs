//! Reading a ferry `/metrics` endpoint (the controller's) as Prometheus
//! would: fetched over HTTP and parsed as the text exposition format.

/// `/metrics` on 127.0.0.1:`port`, as text and parsed; `None` while it does
/// not answer 200. Panics on text Prometheus could not parse.
pub async fn scrape_metrics(port: u16) -> Option<(String, prometheus_parse::Scrape)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    Some((text, scrape))
}

/// The value of gauge (or untyped) `name` with every one of `labels`.
pub fn gauge(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}
