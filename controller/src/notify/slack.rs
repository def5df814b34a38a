//! Slack: an incoming webhook, a Block Kit message.

use serde_json::{json, Value};

use super::notice::Notice;
use super::transport::{post_json, HttpClient, SendError};
use crate::config::notify::ResolvedNotify;

/// The Block Kit message for `notice`: a header, the sentence with the
/// environment, service, version and actor as fields, and a context line.
pub fn message(notice: &Notice) -> Value {
    let headline = format!("{} {}", notice.icon(), notice.headline());
    let field =
        |name: &str, value: &str| json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")});
    json!({
        "text": headline,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": notice.headline(), "emoji": true}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": notice.detail},
                "fields": [
                    field("Environment", notice.env()),
                    field("Service", notice.service.as_str()),
                    field("Version", notice.version.as_ref().map_or("-", |v| v.as_str())),
                    field("By", notice.actor.as_deref().unwrap_or("-")),
                ]
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": format!(
                    "ferry · {} · {}",
                    notice.kind,
                    notice.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
                )}]
            }
        ]
    })
}

pub(super) async fn send(
    client: &HttpClient,
    settings: &ResolvedNotify,
    notice: &Notice,
) -> Result<(), SendError> {
    let Some(url) = &settings.slack else {
        return Ok(());
    };
    let body =
        serde_json::to_vec(&message(notice)).map_err(|e| SendError::permanent(e.to_string()))?;
    post_json(client, url, body, &[]).await
}
