//! Turning results into text: tables and sentences for people, JSON for
//! programs. Everything here is pure except [`emit`].

use std::io::Write as _;

use comfy_table::{presets, ContentArrangement, Table};
use ferry_protocol::api::{CommandIssued, HistoryRecord, PromotionView, ReleaseRecord, StatusRow};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::wave::WaveState;
use serde::Serialize;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::error::{CliError, Result};

/// Writes `text` and a newline to stdout. A closed pipe (`ferry history | head`)
/// is not an error: the reader has what it wanted.
pub fn emit(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    let result = stdout
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                stdout.write_all(b"\n")
            }
        })
        .and_then(|()| stdout.flush());
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::failed(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// Pretty JSON of a whole result.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))
}

/// One-line JSON, for a stream of events.
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    // Flush left, two spaces between columns, like kubectl.
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`; a time in the future (clock skew) is `just now`.
pub fn ago(now: OffsetDateTime, then: OffsetDateTime) -> String {
    let secs = (now - then).whole_seconds();
    match secs {
        s if s < 1 => "just now".to_owned(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// `2024-06-01 12:00:00Z`.
pub fn timestamp(t: OffsetDateTime) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    t.to_offset(UtcOffset::UTC)
        .format(format)
        .unwrap_or_else(|_| t.to_string())
}

/// A row's hosts summed up: "3/3 hosts on 1.4.0" when every live host
/// serves one version, else the versions side by side with their counts
/// ("1.4.0 on 1, 1.3.0 on 2 of 3 hosts"); a down host counts for none.
pub fn hosts_summary(row: &StatusRow) -> String {
    let total = row.hosts.len();
    let mut versions: Vec<(String, usize)> = Vec::new();
    for host in row.hosts.iter().filter(|h| h.agent_up) {
        let version = or_dash(host.version.as_ref());
        match versions.iter_mut().find(|(v, _)| *v == version) {
            Some((_, n)) => *n += 1,
            None => versions.push((version, 1)),
        }
    }
    match versions.as_slice() {
        [] => format!("0/{total} hosts up"),
        [(version, n)] => format!("{n}/{total} hosts on {version}"),
        several => {
            let side_by_side: Vec<String> =
                several.iter().map(|(v, n)| format!("{v} on {n}")).collect();
            format!("{} of {total} hosts", side_by_side.join(", "))
        }
    }
}

/// A line per service whose last wave is worth reading: running, or failed.
fn wave_lines(rows: &[StatusRow]) -> String {
    let mut text = String::new();
    for row in rows {
        let (Some(service), Some(wave)) = (&row.service, &row.wave) else {
            continue;
        };
        if wave.state == WaveState::Succeeded || wave.state == WaveState::Superseded {
            continue;
        }
        let steps: Vec<String> = wave
            .steps
            .iter()
            .map(|s| format!("{} {}", s.host, s.state))
            .collect();
        text.push_str(&format!(
            "\n{}/{service} wave to {}: {} ({})",
            row.environment,
            wave.version,
            wave.state,
            steps.join(", ")
        ));
        if !wave.detail.is_empty() {
            text.push_str(&format!(": {}", wave.detail));
        }
    }
    text
}

/// `ferry status --hosts`: one row per host of each environment and service.
pub fn hosts_table(rows: &[StatusRow], now: OffsetDateTime) -> String {
    if rows.is_empty() {
        return "No environment has reported yet: is a ferry-agent running?".to_owned();
    }
    let mut t = table(&[
        "ENVIRONMENT",
        "SERVICE",
        "HOST",
        "VERSION",
        "REPLICAS",
        "STATE",
        "WAVE STEP",
        "AGENT",
        "ADDRESS",
    ]);
    for row in rows {
        for host in &row.hosts {
            t.add_row(vec![
                row.environment.to_string(),
                or_dash(row.service.as_ref()),
                host.host.to_string(),
                or_dash(host.version.as_ref()),
                format!("{}/{}", host.replicas_healthy, host.replicas_desired),
                host.state.to_string(),
                or_dash(host.step.as_ref()),
                format!(
                    "{} {}",
                    if host.agent_up { "up" } else { "down" },
                    ago(now, host.agent_last_seen)
                ),
                or_dash(host.address.as_ref()),
            ]);
        }
    }
    let mut text = t.trim_fmt();
    text.push_str(&wave_lines(rows));
    text
}

/// The `ferry status` table.
pub fn status_table(rows: &[StatusRow], now: OffsetDateTime) -> String {
    if rows.is_empty() {
        return "No environment has reported yet: is a ferry-agent running?".to_owned();
    }
    let mut t = table(&[
        "ENVIRONMENT",
        "SERVICE",
        "VERSION",
        "REPLICAS",
        "STATE",
        "LAST OUTCOME",
        "AGENT",
        "ADDRESS",
    ]);
    for row in rows {
        let outcome = match (&row.last_outcome, row.last_outcome_at) {
            (Some(outcome), Some(at)) => format!("{outcome} {}", ago(now, at)),
            (Some(outcome), None) => outcome.clone(),
            (None, _) => "-".to_owned(),
        };
        let agent = format!(
            "{} {}",
            if row.agent_up { "up" } else { "down" },
            row.agent_last_seen
                .map_or_else(|| "(never seen)".to_owned(), |seen| ago(now, seen))
        );
        let version = if row.hosts.len() > 1 {
            hosts_summary(row)
        } else {
            or_dash(row.version.as_ref())
        };
        t.add_row(vec![
            row.environment.to_string(),
            or_dash(row.service.as_ref()),
            version,
            format!("{}/{}", row.replicas_healthy, row.replicas_desired),
            row.state.to_string(),
            outcome,
            agent,
            or_dash(row.address.as_ref()),
        ]);
    }
    let mut text = t.trim_fmt();
    text.push_str(&wave_lines(rows));
    for row in rows {
        if let (Some(service), Some(m)) = (&row.service, &row.maintenance) {
            let until = m
                .until
                .map(|u| format!(" (until {})", timestamp(u)))
                .unwrap_or_default();
            text.push_str(&format!(
                "\n{}/{service} in maintenance{until}: {}",
                row.environment, m.message
            ));
        }
    }
    for row in rows {
        if let (Some(service), Some(r)) = (&row.service, &row.rollout) {
            text.push_str(&format!(
                "\n{}/{service} {} of {}: step {}/{} ({} of traffic), {}",
                row.environment,
                r.strategy,
                r.version,
                r.step,
                r.steps,
                r.weight_text(),
                r.state
            ));
        }
    }
    text
}

/// The `ferry history` table.
pub fn history_table(records: &[HistoryRecord]) -> String {
    if records.is_empty() {
        return "No history yet.".to_owned();
    }
    let mut t = table(&[
        "TIME",
        "ENVIRONMENT",
        "SERVICE",
        "VERSION",
        "ACTION",
        "OUTCOME",
        "ACTOR",
        "DETAIL",
    ]);
    for r in records {
        t.add_row(vec![
            timestamp(r.time),
            or_dash(r.environment.as_ref()),
            r.service.to_string(),
            or_dash(r.version.as_ref()),
            r.action.clone(),
            r.outcome.clone(),
            or_dash(r.actor.as_ref()),
            r.detail.clone(),
        ]);
    }
    t.trim_fmt()
}

/// The `ferry approvals` table: what each promotion waits for, and for whom.
pub fn promotions_table(rows: &[PromotionView]) -> String {
    if rows.is_empty() {
        return "Nothing waits for approval.".to_owned();
    }
    let mut t = table(&[
        "SERVICE",
        "VERSION",
        "ENVIRONMENT",
        "STATE",
        "APPROVALS",
        "OVERRIDES",
        "APPROVED BY",
        "WAITING FOR",
        "DETAIL",
    ]);
    for r in rows {
        let approved: Vec<String> = r
            .approvals
            .iter()
            .map(|a| {
                if a.counts {
                    format!("{} ({})", a.reviewer_name, a.kind)
                } else {
                    format!("{} ({}, not counted)", a.reviewer_name, a.kind)
                }
            })
            .collect();
        t.add_row(vec![
            r.service.to_string(),
            r.version.to_string(),
            r.environment.to_string(),
            r.state.to_string(),
            format!("{}/{}", r.approvals_valid, r.approvals_required),
            if r.overrides_required == 0 {
                "-".to_owned()
            } else {
                format!("{}/{}", r.overrides_valid, r.overrides_required)
            },
            or_dash((!approved.is_empty()).then(|| approved.join(", "))),
            or_dash((!r.waiting_for.is_empty()).then(|| r.waiting_for.join(", "))),
            r.detail.clone(),
        ]);
    }
    t.trim_fmt()
}

/// At most `max` characters of `text`, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

/// The `ferry releases` table.
pub fn releases_table(records: &[ReleaseRecord]) -> String {
    if records.is_empty() {
        return "No releases published yet.".to_owned();
    }
    let mut t = table(&[
        "SERVICE", "VERSION", "ARTIFACT", "DIGEST", "HOTFIX", "AUTHOR", "COMMIT", "SCAN",
        "RECEIVED",
    ]);
    for r in records {
        let release = &r.release;
        t.add_row(vec![
            release.service.to_string(),
            release.version.to_string(),
            release.artifact.clone(),
            or_dash(release.digest.as_deref().map(|d| shorten(d, 19))),
            if release.hotfix { "yes" } else { "-" }.to_owned(),
            or_dash(release.author.as_ref()),
            or_dash(release.commit.as_deref().map(|c| shorten(c, 12))),
            scan_cell(release),
            timestamp(r.received_at),
        ]);
    }
    t.trim_fmt()
}

/// Critical ids the `ferry releases` table names before `+N more`
/// (`--output json` has every finding).
const SHOWN_CRITICAL_IDS: usize = 5;

/// The counts and, when there are any, the critical findings' ids:
/// `critical=2,high=1,medium=0,low=0 (critical: CVE-2023-38545)`.
fn scan_cell(release: &ferry_protocol::release::Release) -> String {
    let Some(scan) = release.scan else {
        return "-".to_owned();
    };
    let mut ids: Vec<&str> = Vec::new();
    for finding in release.critical_findings() {
        if !ids.contains(&finding.id.as_str()) {
            ids.push(&finding.id);
        }
    }
    if ids.is_empty() {
        return scan.to_string();
    }
    let more = ids.len().saturating_sub(SHOWN_CRITICAL_IDS);
    ids.truncate(SHOWN_CRITICAL_IDS);
    let more = if more > 0 {
        format!(", +{more} more")
    } else {
        String::new()
    };
    format!("{scan} (critical: {}{more})", ids.join(", "))
}

/// What `deploy`, `rollback`, `scale` and `maintenance` print without `--wait`.
pub fn issued(message: &str, issued: &CommandIssued) -> String {
    let mut text = String::new();
    if !message.trim().is_empty() {
        text.push_str(message.trim());
        text.push('\n');
    }
    text.push_str(&format!(
        "command {} on {}",
        issued.command_id, issued.subject
    ));
    text
}

/// One line (a few for a dry-run plan) per event of a command; `None` for
/// events `--wait` does not show (health, metrics).
pub fn event_line(event: &ServiceEvent) -> Option<String> {
    let version = |v: &Option<ferry_protocol::Version>| {
        v.as_ref().map(|v| format!(" {v}")).unwrap_or_default()
    };
    let (label, text) = match &event.body {
        EventBody::Accepted { action } => (
            "accepted",
            format!(
                "{action} of {} accepted by the {} agent",
                event.service, event.environment
            ),
        ),
        EventBody::Progress {
            step,
            ready,
            desired,
            version: v,
            ..
        } => (
            "progress",
            format!("{step}{} ({ready}/{desired})", version(v)),
        ),
        EventBody::Succeeded {
            action,
            version: v,
            replicas,
            detail,
        } => (
            "succeeded",
            format!(
                "{action}{}: {replicas} healthy replica{}; {detail}",
                version(v),
                if *replicas == 1 { "" } else { "s" }
            ),
        ),
        EventBody::Failed {
            action,
            version: v,
            reason,
            serving,
        } => (
            "failed",
            format!(
                "{action}{}: {reason}; serving {}",
                version(v),
                serving
                    .as_ref()
                    .map_or_else(|| "nothing".to_owned(), ToString::to_string)
            ),
        ),
        EventBody::Refused { reason, detail } => ("refused", format!("{reason}: {detail}")),
        EventBody::DryRun { action, plan } => {
            let mut text = format!("{action} would:");
            if plan.is_empty() {
                text.push_str(" do nothing");
            }
            for (i, step) in plan.iter().enumerate() {
                text.push_str(&format!("\n  {}. {step}", i + 1));
            }
            ("dry run", text)
        }
        EventBody::ReplicaExited {
            replica,
            version,
            code,
            detail,
            ..
        } => (
            "exited",
            format!(
                "replica {replica} ({version}) exited{}: {detail}",
                code.map(|c| format!(" with code {c}")).unwrap_or_default()
            ),
        ),
        EventBody::RuntimeUnavailable { runtime, detail } => (
            "down",
            format!("the {runtime} runtime is unreachable: {detail}"),
        ),
        EventBody::Rollout(rollout) => ("rollout", rollout_line(rollout)),
        EventBody::Alert(alert) => (
            "alert",
            format!(
                "{} {}{}",
                if alert.raised { "raised:" } else { "cleared:" },
                alert.breach,
                version(&alert.version)
            ),
        ),
        EventBody::Health(_) | EventBody::Metrics(_) => return None,
    };
    Some(format!("{label:<9}  {text}"))
}

/// One line for a rollout event: where it is and what happened.
pub fn rollout_line(event: &ferry_protocol::rollout::RolloutEvent) -> String {
    use ferry_protocol::rollout::RolloutPhase;
    let s = &event.status;
    let at = format!(
        "{} {} step {}/{} ({})",
        s.strategy,
        s.version,
        s.step,
        s.steps,
        s.weight_text()
    );
    match &event.phase {
        RolloutPhase::StepStarted => format!("{at}: step started"),
        RolloutPhase::Analysed {
            signals,
            breaches,
            conclusive,
            ..
        } => {
            let verdict = if !breaches.is_empty() {
                let list: Vec<String> = breaches.iter().map(ToString::to_string).collect();
                format!("BREACH {}", list.join(", "))
            } else if *conclusive {
                "pass".to_owned()
            } else {
                "too few requests; health only".to_owned()
            };
            format!(
                "{at}: {} req, errors {:.1}%, p95 {:.0} ms, p99 {:.0} ms, availability {:.1}%: {verdict}",
                signals.requests,
                signals.error_rate_percent,
                signals.p95_ms,
                signals.p99_ms,
                signals.availability_percent
            )
        }
        RolloutPhase::BothFailing {
            canary,
            stable_value,
        } => format!(
            "{at}: STABLE FAILS TOO ({} {stable_value:.1}{}): likely a dependency outage, not this release; new version: {canary}",
            canary.metric,
            canary.metric.unit()
        ),
        RolloutPhase::Paused => format!("{at}: paused"),
        RolloutPhase::Resumed => format!("{at}: resumed"),
        RolloutPhase::Promoted => format!("{at}: promoted"),
        RolloutPhase::Aborted { reason } => format!("{at}: ABORTED: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_protocol::command::ActionKind;
    use ferry_protocol::event::{MaintenanceInfo, ServiceState};
    use ferry_protocol::release::{Release, ScanFinding, ScanSummary, Severity};
    use ferry_protocol::{EnvName, ServiceName, Version};
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2024-06-01 12:00:00 UTC);

    fn row() -> StatusRow {
        StatusRow {
            environment: EnvName::new("production").unwrap(),
            service: Some(ServiceName::new("web").unwrap()),
            version: Some(Version::new("1.4.2").unwrap()),
            replicas_desired: 3,
            replicas_healthy: 2,
            state: ServiceState::Degraded,
            last_outcome: Some("succeeded".into()),
            last_outcome_at: Some(NOW - Duration::from_secs(120)),
            agent_last_seen: Some(NOW - Duration::from_secs(4)),
            agent_up: true,
            maintenance: None,
            address: Some("127.0.0.1:8080".into()),
            rollout: None,
            hosts: Vec::new(),
            wave: None,
        }
    }

    fn on_host(name: &str, version: &str, up: bool) -> ferry_protocol::api::HostStatus {
        ferry_protocol::api::HostStatus {
            host: ferry_protocol::HostName::new(name).unwrap(),
            version: Some(Version::new(version).unwrap()),
            replicas_desired: 1,
            replicas_healthy: u32::from(up),
            state: if up {
                ServiceState::Running
            } else {
                ServiceState::Unknown
            },
            agent_last_seen: NOW - Duration::from_secs(if up { 2 } else { 90 }),
            agent_up: up,
            address: Some(format!("{name}:8080")),
            rollout: None,
            step: Some(ferry_protocol::wave::StepState::Succeeded),
        }
    }

    #[test]
    fn several_hosts_are_summed_up_in_the_row_and_listed_with_hosts() {
        let mut fleet = row();
        fleet.hosts = vec![
            on_host("web-1", "1.4.2", true),
            on_host("web-2", "1.4.2", true),
            on_host("web-3", "1.4.2", true),
        ];
        assert_eq!(hosts_summary(&fleet), "3/3 hosts on 1.4.2");
        assert!(status_table(&[fleet.clone()], NOW).contains("3/3 hosts on 1.4.2"));
        fleet.hosts[0] = on_host("web-1", "1.5.0", true);
        fleet.hosts[2] = on_host("web-3", "1.4.2", false);
        assert_eq!(hosts_summary(&fleet), "1.5.0 on 1, 1.4.2 on 1 of 3 hosts");
        let table = hosts_table(&[fleet], NOW);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("HOST") && lines[0].contains("WAVE STEP"),
            "{table}"
        );
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].contains("web-1")
                && lines[1].contains("1.5.0")
                && lines[1].contains("succeeded")
        );
        assert!(
            lines[3].contains("web-3") && lines[3].contains("down 1m ago"),
            "{table}"
        );
    }

    #[test]
    fn status_shows_a_rollout_in_progress_below_the_table() {
        let mut canary = row();
        canary.rollout = Some(ferry_protocol::rollout::RolloutStatus {
            strategy: ferry_protocol::rollout::StrategyKind::Canary,
            version: Version::new("1.5.0").unwrap(),
            state: ferry_protocol::rollout::RolloutState::Progressing,
            step: 2,
            steps: 5,
            weight_percent: 35,
            weight_reached_percent: None,
        });
        let text = status_table(&[canary], NOW);
        assert!(
            text.ends_with(
                "production/web canary of 1.5.0: step 2/5 (35% of traffic), progressing"
            ),
            "{text}"
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(NOW, NOW), "just now");
        assert_eq!(ago(NOW, NOW + Duration::from_secs(30)), "just now");
        assert_eq!(ago(NOW, NOW - Duration::from_secs(59)), "59s ago");
        assert_eq!(ago(NOW, NOW - Duration::from_secs(61)), "1m ago");
        assert_eq!(ago(NOW, NOW - Duration::from_secs(7200)), "2h ago");
        assert_eq!(ago(NOW, NOW - Duration::from_secs(3 * 86_400)), "3d ago");
        assert_eq!(timestamp(NOW), "2024-06-01 12:00:00Z");
    }

    #[test]
    fn status_table_has_every_column() {
        let mut idle = row();
        idle.environment = EnvName::new("dev").unwrap();
        idle.service = None;
        idle.version = None;
        idle.replicas_desired = 0;
        idle.replicas_healthy = 0;
        idle.state = ServiceState::Unknown;
        idle.last_outcome = None;
        idle.last_outcome_at = None;
        idle.agent_up = false;
        idle.agent_last_seen = None;
        idle.address = None;
        let text = status_table(&[row(), idle], NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for column in [
            "ENVIRONMENT",
            "SERVICE",
            "VERSION",
            "REPLICAS",
            "STATE",
            "LAST OUTCOME",
            "AGENT",
            "ADDRESS",
        ] {
            assert!(lines[0].contains(column), "{column} missing: {text}");
        }
        for cell in [
            "production",
            "web",
            "1.4.2",
            "2/3",
            "degraded",
            "succeeded 2m ago",
            "up 4s ago",
            "127.0.0.1:8080",
        ] {
            assert!(lines[1].contains(cell), "{cell} missing: {text}");
        }
        for cell in ["dev", "0/0", "unknown", "down (never seen)"] {
            assert!(lines[2].contains(cell), "{cell} missing: {text}");
        }
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn maintenance_is_spelled_out_under_the_table() {
        let mut r = row();
        r.state = ServiceState::Maintenance;
        r.maintenance = Some(MaintenanceInfo {
            message: "back at 14:00".into(),
            until: Some(NOW + Duration::from_secs(600)),
        });
        let text = status_table(&[r], NOW);
        assert!(
            text.ends_with(
                "production/web in maintenance (until 2024-06-01 12:10:00Z): back at 14:00"
            ),
            "{text}"
        );
    }

    #[test]
    fn empty_results_say_so() {
        assert!(status_table(&[], NOW).contains("No environment"));
        assert_eq!(history_table(&[]), "No history yet.");
        assert_eq!(releases_table(&[]), "No releases published yet.");
    }

    #[test]
    fn status_json_is_an_array_of_rows() {
        let text = json(&vec![row()]).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let first = &value.as_array().unwrap()[0];
        assert_eq!(first["environment"], "production");
        assert_eq!(first["service"], "web");
        assert_eq!(first["replicas_desired"], 3);
        assert_eq!(first["replicas_healthy"], 2);
        assert_eq!(first["state"], "degraded");
    }

    #[test]
    fn history_and_releases_tables() {
        let record = HistoryRecord {
            time: NOW,
            environment: Some(EnvName::new("dev").unwrap()),
            service: ServiceName::new("web").unwrap(),
            version: Some(Version::new("1.0").unwrap()),
            action: "deploy".into(),
            outcome: "succeeded".into(),
            detail: "2 replicas healthy".into(),
            command_id: None,
            actor: Some("alice".into()),
        };
        let text = history_table(&[record]);
        let line = text.lines().nth(1).unwrap();
        for cell in [
            "2024-06-01 12:00:00Z",
            "dev",
            "web",
            "1.0",
            "deploy",
            "succeeded",
            "alice",
            "2 replicas healthy",
        ] {
            assert!(line.contains(cell), "{cell}: {text}");
        }

        let release = ReleaseRecord {
            release: Release {
                service: ServiceName::new("web").unwrap(),
                version: Version::new("1.0").unwrap(),
                artifact: "/opt/web".into(),
                digest: Some(format!("sha256:{}", "a".repeat(64))),
                env: Default::default(),
                secret_env: Default::default(),
                author: None,
                commit: Some("0123456789abcdef0123".into()),
                hotfix: true,
                scan: None,
                scan_findings: Vec::new(),
            },
            received_at: NOW,
        };
        let text = releases_table(std::slice::from_ref(&release));
        let line = text.lines().nth(1).unwrap();
        for cell in [
            "web",
            "1.0",
            "/opt/web",
            "sha256:aaaaaaaaaaa…",
            "yes",
            "0123456789a…",
        ] {
            assert!(line.contains(cell), "{cell}: {text}");
        }

        // A scanned release names its criticals, each id once.
        let finding = |id: &str, package: &str, severity| ScanFinding {
            id: id.into(),
            severity,
            package: Some(package.into()),
            installed_version: None,
            fixed_version: None,
        };
        let mut scanned = release.clone();
        scanned.release.scan = Some(ScanSummary {
            critical: 3,
            high: 1,
            ..Default::default()
        });
        scanned.release.scan_findings = vec![
            finding("CVE-2023-38545", "curl", Severity::Critical),
            finding("CVE-2023-38545", "libcurl", Severity::Critical),
            finding("CVE-2024-0001", "zlib", Severity::Critical),
            finding("CVE-2023-5363", "libssl3", Severity::High),
        ];
        let text = releases_table(&[scanned]);
        assert!(
            text.contains(
                "critical=3,high=1,medium=0,low=0 (critical: CVE-2023-38545, CVE-2024-0001)"
            ),
            "{text}"
        );
        assert!(!text.contains("CVE-2023-5363"), "{text}");
    }

    fn event(body: EventBody) -> ServiceEvent {
        ServiceEvent {
            host: None,
            environment: EnvName::new("dev").unwrap(),
            service: ServiceName::new("web").unwrap(),
            command_id: None,
            body,
        }
    }

    #[test]
    fn event_lines() {
        let v = Some(Version::new("1.1").unwrap());
        let line = |body| event_line(&event(body)).unwrap();
        assert_eq!(
            line(EventBody::Accepted {
                action: ActionKind::Deploy
            }),
            "accepted   deploy of web accepted by the dev agent"
        );
        assert_eq!(
            line(EventBody::Progress {
                action: ActionKind::Deploy,
                step: "waiting for health".into(),
                version: v.clone(),
                ready: 1,
                desired: 2
            }),
            "progress   waiting for health 1.1 (1/2)"
        );
        assert_eq!(
            line(EventBody::Succeeded {
                action: ActionKind::Deploy,
                version: v.clone(),
                replicas: 2,
                detail: "done".into()
            }),
            "succeeded  deploy 1.1: 2 healthy replicas; done"
        );
        assert_eq!(
            line(EventBody::Failed {
                action: ActionKind::Deploy,
                version: v,
                reason: "health checks failed".into(),
                serving: Some(Version::new("1.0").unwrap())
            }),
            "failed     deploy 1.1: health checks failed; serving 1.0"
        );
        assert_eq!(
            line(EventBody::DryRun {
                action: ActionKind::Rollback,
                plan: vec!["start 1.0".into(), "stop 1.1".into()]
            }),
            "dry run    rollback would:\n  1. start 1.0\n  2. stop 1.1"
        );
        assert!(event_line(&event(EventBody::Metrics(Default::default()))).is_none());
    }
}
