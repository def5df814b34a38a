//! `ferry monitor -e ENV`: the seed's monitoring script as a live table.
//! It listens to the environment's metrics events (what each agent's proxy
//! measured) and heartbeats (versions, replicas, rollouts), redraws a table
//! in place every interval (one line per service and tick when stdout is not
//! a terminal), prints a summary at the end, and exits 5 when a threshold
//! was breached.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use ferry_protocol::event::{AgentEvent, EventBody, ServiceEvent, ServiceMetrics, ServiceSnapshot};
use ferry_protocol::rollout::{Breach, Metric};
use ferry_protocol::subject::{self, AgentEventKind, EventKind};
use ferry_protocol::Envelope;
use futures::StreamExt;
use tokio::time::Instant;

use crate::args::{GlobalOpts, MonitorArgs};
use crate::client::Connection;
use crate::error::{CliError, Exit, Result};

#[derive(Default)]
struct Row {
    snapshot: Option<ServiceSnapshot>,
    metrics: Option<ServiceMetrics>,
    samples: u64,
    requests: u64,
    worst_error_rate: f64,
    worst_p95: f64,
    worst_availability: Option<f64>,
    breaches: Vec<Breach>,
}

fn breaches(m: &ServiceMetrics, args: &MonitorArgs) -> Vec<Breach> {
    let mut found = Vec::new();
    if m.requests > 0 {
        let error_rate = m.error_rate * 100.0;
        if error_rate > args.error_threshold {
            found.push(Breach {
                metric: Metric::ErrorRate,
                value: error_rate,
                threshold: args.error_threshold,
                evidence: None,
            });
        }
        if m.p95_ms > args.response_threshold {
            found.push(Breach {
                metric: Metric::P95,
                value: m.p95_ms,
                threshold: args.response_threshold,
                evidence: None,
            });
        }
    }
    if let Some(a) = m.availability_percent {
        if a < args.availability_threshold {
            found.push(Breach {
                metric: Metric::Availability,
                value: a,
                threshold: args.availability_threshold,
                evidence: None,
            });
        }
    }
    found
}

fn rollout_text(s: Option<&ServiceSnapshot>) -> String {
    match s.and_then(|s| s.rollout.as_ref()) {
        Some(r) => format!(
            "{} {} {}/{} {}% {}",
            r.strategy, r.version, r.step, r.steps, r.weight_percent, r.state
        ),
        None => "-".into(),
    }
}

fn cells(service: &str, row: &Row) -> [String; 8] {
    let s = row.snapshot.as_ref();
    let m = row.metrics.as_ref();
    [
        service.to_owned(),
        s.and_then(|s| s.version.as_ref())
            .map_or("-".into(), ToString::to_string),
        s.map_or("-".into(), |s| {
            format!("{}/{}", s.replicas_healthy, s.replicas_desired)
        }),
        m.map_or("-".into(), |m| format!("{:.1}", m.requests_per_sec)),
        m.map_or("-".into(), |m| format!("{:.2}%", m.error_rate * 100.0)),
        m.map_or("-".into(), |m| format!("{:.0} ms", m.p95_ms)),
        m.and_then(|m| m.availability_percent)
            .map_or("-".into(), |a| format!("{a:.2}%")),
        rollout_text(s),
    ]
}

const HEADERS: [&str; 8] = [
    "SERVICE",
    "VERSION",
    "REPLICAS",
    "REQ/S",
    "ERRORS",
    "P95",
    "AVAILABILITY",
    "ROLLOUT",
];

fn table(rows: &BTreeMap<String, Row>) -> Vec<String> {
    let all: Vec<[String; 8]> = std::iter::once(HEADERS.map(str::to_owned))
        .chain(rows.iter().map(|(name, row)| cells(name, row)))
        .collect();
    let mut widths = [0usize; 8];
    for line in &all {
        for (i, cell) in line.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    all.iter()
        .map(|line| {
            line.iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect()
}

/// A row's name: the service, or `service@host` once the environment has
/// shown more than one host.
fn row_key(hosts: &BTreeSet<String>, service: &str, host: Option<&str>) -> String {
    match host {
        Some(host) if hosts.len() > 1 => format!("{service}@{host}"),
        _ => service.to_owned(),
    }
}

/// `ferry monitor`
pub async fn run(global: &GlobalOpts, args: MonitorArgs) -> Result<()> {
    let conn = Connection::open(global).await?;
    let client = conn.client();
    let subscribe = |subject: String| async move {
        client
            .subscribe(subject.clone())
            .await
            .map_err(|e| CliError::unreachable(format!("cannot subscribe to {subject}: {e}")))
    };
    let mut metrics = subscribe(subject::events_of_kind(
        &args.environment,
        EventKind::Metrics,
    ))
    .await?;
    let mut heartbeats = subscribe(subject::agent_event(
        &args.environment,
        AgentEventKind::Heartbeat,
    ))
    .await?;
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "monitoring {} every {} {}; thresholds: errors > {}%, p95 > {} ms, availability < {}%",
        args.environment,
        humantime::format_duration(Duration::from_secs(args.interval)),
        if args.continuous {
            "until interrupted".to_owned()
        } else {
            format!(
                "for {}",
                humantime::format_duration(Duration::from_secs(args.duration))
            )
        },
        args.error_threshold,
        args.response_threshold,
        args.availability_threshold
    );
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    // Hosts heard from: with more than one, a row per service and host.
    let mut hosts: BTreeSet<String> = BTreeSet::new();
    let started = Instant::now();
    let end = (!args.continuous).then(|| started + Duration::from_secs(args.duration));
    let interval = Duration::from_secs(args.interval.max(1));
    let mut tick = tokio::time::interval_at(started + interval, interval);
    let mut drawn = 0usize;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let finished = async {
            match end {
                Some(end) => tokio::time::sleep_until(end).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut interrupted => break,
            _ = finished => break,
            Some(message) = metrics.next() => {
                let Ok(event) = Envelope::<ServiceEvent>::decode(&message.payload) else { continue };
                let event = event.data;
                if let EventBody::Metrics(m) = event.body {
                    let key = row_key(&hosts, event.service.as_str(), event.host.as_ref().map(|h| h.as_str()));
                    let row = rows.entry(key).or_default();
                    row.samples += 1;
                    row.requests += m.requests;
                    if m.requests > 0 {
                        row.worst_error_rate = row.worst_error_rate.max(m.error_rate * 100.0);
                        row.worst_p95 = row.worst_p95.max(m.p95_ms);
                    }
                    if let Some(a) = m.availability_percent {
                        row.worst_availability = Some(row.worst_availability.map_or(a, |w: f64| w.min(a)));
                    }
                    row.breaches.extend(breaches(&m, &args));
                    row.metrics = Some(m);
                }
            }
            Some(message) = heartbeats.next() => {
                let Ok(event) = Envelope::<AgentEvent>::decode(&message.payload) else { continue };
                if let AgentEvent::Heartbeat(hb) = event.data {
                    let host = hb.host_name.as_ref().map(|h| h.to_string());
                    if let Some(host) = &host {
                        if hosts.insert(host.clone()) && hosts.len() == 2 {
                            // Rows so far were per service: from now on per host.
                            rows.clear();
                        }
                    }
                    for snapshot in hb.services {
                        let key = row_key(&hosts, snapshot.service.as_str(), host.as_deref());
                        rows.entry(key).or_default().snapshot = Some(snapshot);
                    }
                }
            }
            _ = tick.tick() => {
                let lines = table(&rows);
                if tty {
                    if drawn > 0 {
                        // Back over the last table, then clear to the end.
                        let _ = write!(out, "\x1b[{drawn}A\x1b[J");
                    }
                    for line in &lines {
                        let _ = writeln!(out, "{line}");
                    }
                    drawn = lines.len();
                } else {
                    let at = started.elapsed().as_secs();
                    for (name, row) in &rows {
                        let c = cells(name, row);
                        let _ = writeln!(
                            out,
                            "t={at}s service={} version={} replicas={} req_per_sec={} errors={} p95={} availability={} rollout={}",
                            c[0], c[1], c[2], c[3], c[4], c[5].replace(' ', ""), c[6], c[7].replace(' ', "_")
                        );
                    }
                }
                let _ = out.flush();
            }
        }
    }
    let _ = writeln!(
        out,
        "\nsummary after {}:",
        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
    );
    let mut breached = 0usize;
    for (name, row) in &rows {
        let verdict = match row.breaches.first() {
            Some(first) => {
                breached += 1;
                format!("BREACHED {} time(s), first: {first}", row.breaches.len())
            }
            None => "ok".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {name}: {} samples, {} requests, worst error rate {:.2}%, worst p95 {:.0} ms, lowest availability {}: {verdict}",
            row.samples,
            row.requests,
            row.worst_error_rate,
            row.worst_p95,
            row.worst_availability.map_or("-".into(), |a| format!("{a:.2}%"))
        );
    }
    if rows.is_empty() {
        let _ = writeln!(out, "  no service of {} reported metrics", args.environment);
    }
    let _ = out.flush();
    if breached > 0 {
        return Err(CliError::new(
            Exit::ThresholdBreached,
            anyhow::anyhow!(
                "{breached} service(s) of {} breached a threshold",
                args.environment
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_per_service_until_a_second_host_shows_then_per_host() {
        let mut hosts = BTreeSet::new();
        assert_eq!(row_key(&hosts, "web", None), "web");
        hosts.insert("web-1".to_owned());
        assert_eq!(row_key(&hosts, "web", Some("web-1")), "web");
        hosts.insert("web-2".to_owned());
        assert_eq!(row_key(&hosts, "web", Some("web-2")), "web@web-2");
        assert_eq!(row_key(&hosts, "web", None), "web");
    }
}
