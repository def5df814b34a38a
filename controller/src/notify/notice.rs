//! What a notification says: the history records people are told about,
//! and the words every sink renders them with.

use ferry_protocol::api::HistoryRecord;
use ferry_protocol::{EnvName, ServiceName, Version};

/// One transition to tell people about.
#[derive(Clone, Debug)]
pub struct Notice {
    /// One of [`EVENT_KINDS`](crate::config::notify::EVENT_KINDS).
    pub kind: &'static str,
    /// Environment.
    pub environment: Option<EnvName>,
    /// Service.
    pub service: ServiceName,
    /// Version.
    pub version: Option<Version>,
    /// History action and outcome.
    pub action: String,
    /// Outcome.
    pub outcome: String,
    /// Who.
    pub actor: Option<String>,
    /// The sentence from history, secrets redacted.
    pub detail: String,
    /// When.
    pub time: time::OffsetDateTime,
    /// The command, if any.
    pub command_id: Option<uuid::Uuid>,
}

impl Notice {
    /// The event kind of a history record, if it is one people are told about.
    pub fn classify(record: &HistoryRecord) -> Option<&'static str> {
        match (record.action.as_str(), record.outcome.as_str()) {
            ("deploy", "issued") => Some("deployment_started"),
            ("deploy", "succeeded") => Some("deployment_succeeded"),
            ("deploy", "failed" | "refused") => Some("deployment_failed"),
            ("rollback", "succeeded") => Some("rolled_back"),
            ("promote", "awaiting_approval") => Some("approval_needed"),
            ("gate", "blocked") => Some("security_blocked"),
            ("reject", "rejected") => Some("promotion_rejected"),
            // Written by the rollout analysis: any action, these outcomes.
            (_, "threshold_breached" | "breached") => Some("threshold_breached"),
            (_, "threshold_cleared" | "cleared") => Some("threshold_cleared"),
            _ => None,
        }
    }

    /// A notice of `record`, with every secret in `secrets` blanked out.
    pub fn of(record: &HistoryRecord, secrets: &[String]) -> Option<Notice> {
        let kind = Self::classify(record)?;
        Some(Notice {
            kind,
            environment: record.environment.clone(),
            service: record.service.clone(),
            version: record.version.clone(),
            action: record.action.clone(),
            outcome: record.outcome.clone(),
            actor: record.actor.as_deref().map(|a| redact(a, secrets)),
            detail: redact(&record.detail, secrets),
            time: record.time,
            command_id: record.command_id,
        })
    }

    /// `web 1.4.2` or `web`.
    pub(crate) fn what(&self) -> String {
        match &self.version {
            Some(v) => format!("{} {v}", self.service),
            None => self.service.to_string(),
        }
    }

    pub(crate) fn env(&self) -> &str {
        self.environment.as_ref().map_or("-", EnvName::as_str)
    }

    /// One line for people.
    pub fn headline(&self) -> String {
        let (what, env) = (self.what(), self.env());
        match self.kind {
            "deployment_started" => format!("Deploying {what} to {env}"),
            "deployment_succeeded" => format!("{what} is live in {env}"),
            "deployment_failed" => format!("Deploy of {what} to {env} failed"),
            "rolled_back" => format!(
                "{} rolled back in {env} to {}",
                self.service,
                self.version.as_ref().map_or("-", Version::as_str)
            ),
            "approval_needed" => format!("{what} needs approval for {env}"),
            "security_blocked" => format!("{what} blocked by the security gate in {env}"),
            "promotion_rejected" => format!("{what} rejected for {env}"),
            "threshold_breached" => format!("Threshold breached: {what} in {env}"),
            "threshold_cleared" => format!("Threshold cleared: {what} in {env}"),
            other => format!("{other}: {what} in {env}"),
        }
    }

    /// An emoji for chat.
    pub(crate) fn icon(&self) -> &'static str {
        match self.kind {
            "deployment_started" => ":rocket:",
            "deployment_succeeded" | "threshold_cleared" => ":white_check_mark:",
            "deployment_failed" | "threshold_breached" => ":x:",
            "rolled_back" => ":leftwards_arrow_with_hook:",
            "approval_needed" => ":raising_hand:",
            "security_blocked" | "promotion_rejected" => ":no_entry:",
            _ => ":information_source:",
        }
    }
}

/// Blanks every secret out of `text`.
fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "[redacted]"))
}
