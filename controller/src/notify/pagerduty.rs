//! PagerDuty Events API v2: trigger on failures, breaches and blocked
//! releases, resolve when a deploy succeeds, a rollback completes or a
//! threshold clears; one incident per environment and service (`dedup_key`).

use serde_json::{json, Value};

use super::notice::Notice;
use super::transport::{post_json, HttpClient, SendError};
use crate::config::notify::ResolvedNotify;

/// `trigger`, `resolve`, or `None` for kinds PagerDuty is not told about.
pub fn action(kind: &str) -> Option<&'static str> {
    match kind {
        "deployment_failed" | "threshold_breached" | "security_blocked" => Some("trigger"),
        "deployment_succeeded" | "rolled_back" | "threshold_cleared" => Some("resolve"),
        _ => None,
    }
}

/// The incident key: `ferry/<env>/<service>`.
pub fn dedup_key(notice: &Notice) -> String {
    format!("ferry/{}/{}", notice.env(), notice.service)
}

/// The Events API v2 body for `notice`, if PagerDuty is told about its kind.
pub fn event(routing_key: &str, notice: &Notice) -> Option<Value> {
    let action = action(notice.kind)?;
    let mut body = json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key(notice),
    });
    if action == "trigger" {
        let severity = match notice.kind {
            "security_blocked" => "warning",
            _ if notice.env() == "production" => "critical",
            _ => "error",
        };
        body["payload"] = json!({
            "summary": notice.headline(),
            "source": format!("ferry/{}", notice.env()),
            "severity": severity,
            "timestamp": notice.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "component": notice.service.as_str(),
            "group": notice.env(),
            "class": notice.kind,
            "custom_details": {
                "detail": notice.detail,
                "version": notice.version.as_ref().map(|v| v.as_str()),
                "actor": notice.actor,
                "command_id": notice.command_id.map(|id| id.to_string()),
            }
        });
    }
    Some(body)
}

pub(super) async fn send(
    client: &HttpClient,
    settings: &ResolvedNotify,
    notice: &Notice,
) -> Result<(), SendError> {
    let Some((key, url)) = &settings.pagerduty else {
        return Ok(());
    };
    let Some(body) = event(key, notice) else {
        return Ok(());
    };
    let body = serde_json::to_vec(&body).map_err(|e| SendError::permanent(e.to_string()))?;
    post_json(client, url, body, &[]).await
}
