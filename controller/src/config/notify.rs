//! Notification settings: sinks (Slack, PagerDuty, email, webhook) and the
//! per-environment routes that say which events go to which sink.

use std::path::PathBuf;
use std::time::Duration;

use ferry_protocol::EnvName;
use serde::Deserialize;

/// The events a route can name.
pub const EVENT_KINDS: [&str; 9] = [
    "deployment_started",
    "deployment_succeeded",
    "deployment_failed",
    "rolled_back",
    "approval_needed",
    "security_blocked",
    "promotion_rejected",
    "threshold_breached",
    "threshold_cleared",
];

/// The sinks a route can name.
pub const SINKS: [&str; 4] = ["slack", "pagerduty", "email", "webhook"];

/// Default PagerDuty Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// `[notify]` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct NotifyConfig {
    /// `[notify.slack]`.
    pub slack: Option<SlackSettings>,
    /// `[notify.pagerduty]`.
    pub pagerduty: Option<PagerDutySettings>,
    /// `[notify.email]`.
    pub email: Option<EmailSettings>,
    /// `[notify.webhook]`.
    pub webhook: Option<WebhookSettings>,
    /// `[[notify.routes]]`: which events of which environments go where.
    pub routes: Vec<RouteSettings>,
    /// Attempts per message before it is dropped (default 5).
    pub max_attempts: Option<u32>,
    /// First retry delay, doubling each attempt (default "1s").
    pub retry_backoff: Option<String>,
}

/// Slack incoming webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SlackSettings {
    /// The webhook URL (a secret); or `webhook_url_file`.
    pub webhook_url: Option<String>,
    /// File holding the webhook URL.
    pub webhook_url_file: Option<PathBuf>,
}

/// PagerDuty Events API v2.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PagerDutySettings {
    /// Integration (routing) key, a secret; or `routing_key_file`.
    pub routing_key: Option<String>,
    /// File holding the routing key.
    pub routing_key_file: Option<PathBuf>,
    /// Events endpoint (default [`PAGERDUTY_EVENTS_URL`]).
    pub events_url: Option<String>,
}

/// Email over SMTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EmailSettings {
    /// SMTP server host.
    pub smtp_host: String,
    /// Port (default 587 with STARTTLS, 25 without).
    pub smtp_port: Option<u16>,
    /// Upgrade the connection with STARTTLS (default true); only turn it off
    /// for a relay on loopback.
    pub starttls: Option<bool>,
    /// SMTP user.
    pub username: Option<String>,
    /// File holding the SMTP password.
    pub password_file: Option<PathBuf>,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
}

/// Generic webhook: JSON, HMAC-SHA256 signed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// Where to POST.
    pub url: String,
    /// HMAC secret; or `secret_file`.
    pub secret: Option<String>,
    /// File holding the HMAC secret.
    pub secret_file: Option<PathBuf>,
}

/// One route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RouteSettings {
    /// Environments it applies to (empty: all).
    pub environments: Vec<String>,
    /// Event kinds it applies to (empty: all), from [`EVENT_KINDS`].
    pub events: Vec<String>,
    /// Sinks, from [`SINKS`].
    pub sinks: Vec<String>,
}

/// A sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sink {
    /// Slack.
    Slack,
    /// PagerDuty.
    PagerDuty,
    /// Email.
    Email,
    /// Webhook.
    Webhook,
}

impl Sink {
    fn parse(name: &str) -> Option<Sink> {
        match name {
            "slack" => Some(Sink::Slack),
            "pagerduty" => Some(Sink::PagerDuty),
            "email" => Some(Sink::Email),
            "webhook" => Some(Sink::Webhook),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Slack => "slack",
            Sink::PagerDuty => "pagerduty",
            Sink::Email => "email",
            Sink::Webhook => "webhook",
        }
    }
}

/// A checked route.
#[derive(Clone, Debug)]
pub struct Route {
    environments: Vec<EnvName>,
    events: Vec<String>,
    sinks: Vec<Sink>,
}

/// Checked email settings.
#[derive(Clone)]
pub struct Email {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// STARTTLS.
    pub starttls: bool,
    /// User and password.
    pub credentials: Option<(String, String)>,
    /// Sender.
    pub from: lettre::message::Mailbox,
    /// Recipients.
    pub to: Vec<lettre::message::Mailbox>,
}

/// Checked notification settings. Secrets are held here and nowhere else;
/// `Debug` never prints them.
#[derive(Clone, Default)]
pub struct ResolvedNotify {
    /// Slack webhook URL.
    pub slack: Option<String>,
    /// PagerDuty routing key and events URL.
    pub pagerduty: Option<(String, String)>,
    /// Email.
    pub email: Option<Email>,
    /// Webhook URL and HMAC secret.
    pub webhook: Option<(String, String)>,
    /// Routes.
    pub routes: Vec<Route>,
    /// Attempts per message.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_backoff: Duration,
}

impl std::fmt::Debug for ResolvedNotify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedNotify")
            .field("slack", &self.slack.is_some())
            .field("pagerduty", &self.pagerduty.is_some())
            .field("email", &self.email.as_ref().map(|e| (&e.host, e.port)))
            .field("webhook", &self.webhook.is_some())
            .field("routes", &self.routes)
            .finish()
    }
}

impl ResolvedNotify {
    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        !self.routes.is_empty()
    }

    /// The sinks an event of `kind` in `env` goes to.
    pub fn sinks_for(&self, env: Option<&EnvName>, kind: &str) -> Vec<Sink> {
        let mut sinks: Vec<Sink> = self
            .routes
            .iter()
            .filter(|r| {
                r.environments.is_empty() || env.is_some_and(|e| r.environments.contains(e))
            })
            .filter(|r| r.events.is_empty() || r.events.iter().any(|k| k == kind))
            .flat_map(|r| r.sinks.iter().copied())
            .collect();
        sinks.sort();
        sinks.dedup();
        sinks
    }

    /// Every secret the notifier holds, so messages can be checked to carry none.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.slack.clone());
        if let Some((key, _)) = &self.pagerduty {
            out.push(key.clone());
        }
        if let Some((_, secret)) = &self.webhook {
            out.push(secret.clone());
        }
        if let Some((_, password)) = self.email.as_ref().and_then(|e| e.credentials.as_ref()) {
            out.push(password.clone());
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

fn secret(
    problems: &mut Vec<(&'static str, String)>,
    field: &'static str,
    inline: Option<&String>,
    file: Option<&PathBuf>,
) -> Option<String> {
    match (inline, file) {
        (Some(value), None) => Some(value.trim().to_owned()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) => {
                problems.push((field, format!("cannot read {}: {e}", path.display())));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push((field, "set the value or its _file, not both".into()));
            None
        }
        (None, None) => {
            problems.push((field, "missing".into()));
            None
        }
    }
}

fn check_url(problems: &mut Vec<(&'static str, String)>, field: &'static str, url: &str) {
    // Never echo the URL: it may be a secret (Slack's is).
    let ok = url
        .parse::<hyper::Uri>()
        .ok()
        .filter(|u| u.host().is_some())
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
    if !ok {
        problems.push((field, "not an http(s) URL".into()));
    }
}

impl NotifyConfig {
    /// Checks every setting; returns every problem found.
    pub fn validate(
        &self,
        environments: &[EnvName],
    ) -> Result<ResolvedNotify, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let mut out = ResolvedNotify {
            max_attempts: self.max_attempts.unwrap_or(5).clamp(1, 20),
            retry_backoff: Duration::from_secs(1),
            ..Default::default()
        };
        if let Some(text) = &self.retry_backoff {
            match humantime::parse_duration(text) {
                Ok(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(600) => {
                    out.retry_backoff = d
                }
                _ => problems.push((
                    "notify.retry_backoff",
                    format!("{text:?} is not a duration from 10ms to 10m"),
                )),
            }
        }
        if let Some(slack) = &self.slack {
            if let Some(url) = secret(
                &mut problems,
                "notify.slack.webhook_url",
                slack.webhook_url.as_ref(),
                slack.webhook_url_file.as_ref(),
            ) {
                check_url(&mut problems, "notify.slack.webhook_url", &url);
                out.slack = Some(url);
            }
        }
        if let Some(pd) = &self.pagerduty {
            let url = pd
                .events_url
                .clone()
                .unwrap_or_else(|| PAGERDUTY_EVENTS_URL.to_owned());
            check_url(&mut problems, "notify.pagerduty.events_url", &url);
            if let Some(key) = secret(
                &mut problems,
                "notify.pagerduty.routing_key",
                pd.routing_key.as_ref(),
                pd.routing_key_file.as_ref(),
            ) {
                out.pagerduty = Some((key, url));
            }
        }
        if let Some(email) = &self.email {
            let starttls = email.starttls.unwrap_or(true);
            let credentials = match (&email.username, &email.password_file) {
                (Some(user), Some(file)) => match std::fs::read_to_string(file) {
                    Ok(p) => Some((user.clone(), p.trim().to_owned())),
                    Err(e) => {
                        problems.push((
                            "notify.email.password_file",
                            format!("cannot read {}: {e}", file.display()),
                        ));
                        None
                    }
                },
                (None, None) => None,
                _ => {
                    problems.push((
                        "notify.email.username",
                        "set both username and password_file, or neither".into(),
                    ));
                    None
                }
            };
            if email.smtp_host.trim().is_empty() {
                problems.push(("notify.email.smtp_host", "missing".into()));
            }
            let from = email.from.parse().map_err(|e| {
                problems.push((
                    "notify.email.from",
                    format!("{:?} is not an address: {e}", email.from),
                ))
            });
            let mut to = Vec::new();
            for addr in &email.to {
                match addr.parse() {
                    Ok(a) => to.push(a),
                    Err(e) => problems.push((
                        "notify.email.to",
                        format!("{addr:?} is not an address: {e}"),
                    )),
                }
            }
            if email.to.is_empty() {
                problems.push(("notify.email.to", "no recipients".into()));
            }
            if let Ok(from) = from {
                out.email = Some(Email {
                    host: email.smtp_host.trim().to_owned(),
                    port: email.smtp_port.unwrap_or(if starttls { 587 } else { 25 }),
                    starttls,
                    credentials,
                    from,
                    to,
                });
            }
        }
        if let Some(hook) = &self.webhook {
            check_url(&mut problems, "notify.webhook.url", &hook.url);
            if let Some(key) = secret(
                &mut problems,
                "notify.webhook.secret",
                hook.secret.as_ref(),
                hook.secret_file.as_ref(),
            ) {
                if key.len() < 16 {
                    problems.push((
                        "notify.webhook.secret",
                        "must be at least 16 characters".into(),
                    ));
                }
                out.webhook = Some((hook.url.clone(), key));
            }
        }
        for route in &self.routes {
            let mut envs = Vec::new();
            for e in &route.environments {
                match EnvName::new(e) {
                    Ok(env) if environments.contains(&env) => envs.push(env),
                    _ => problems.push((
                        "notify.routes.environments",
                        format!("{e:?} is not an environment of the pipeline"),
                    )),
                }
            }
            for k in &route.events {
                if !EVENT_KINDS.contains(&k.as_str()) {
                    problems.push((
                        "notify.routes.events",
                        format!("{k:?} is not one of {}", EVENT_KINDS.join(", ")),
                    ));
                }
            }
            let mut sinks = Vec::new();
            for s in &route.sinks {
                let configured = match Sink::parse(s) {
                    Some(Sink::Slack) => self.slack.is_some(),
                    Some(Sink::PagerDuty) => self.pagerduty.is_some(),
                    Some(Sink::Email) => self.email.is_some(),
                    Some(Sink::Webhook) => self.webhook.is_some(),
                    None => {
                        problems.push((
                            "notify.routes.sinks",
                            format!("{s:?} is not one of {}", SINKS.join(", ")),
                        ));
                        continue;
                    }
                };
                if !configured {
                    problems.push((
                        "notify.routes.sinks",
                        format!("{s} is routed to but [notify.{s}] is not configured"),
                    ));
                }
                sinks.extend(Sink::parse(s));
            }
            out.routes.push(Route {
                environments: envs,
                events: route.events.clone(),
                sinks,
            });
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_pick_sinks_by_environment_and_event() {
        let envs = [
            EnvName::new("dev").unwrap(),
            EnvName::new("production").unwrap(),
        ];
        let config = NotifyConfig {
            slack: Some(SlackSettings {
                webhook_url: Some("https://hooks.slack.com/services/T/B/X".into()),
                ..Default::default()
            }),
            pagerduty: Some(PagerDutySettings {
                routing_key: Some("key".into()),
                ..Default::default()
            }),
            routes: vec![
                RouteSettings {
                    sinks: vec!["slack".into()],
                    ..Default::default()
                },
                RouteSettings {
                    environments: vec!["production".into()],
                    events: vec!["deployment_failed".into()],
                    sinks: vec!["pagerduty".into()],
                },
            ],
            ..Default::default()
        };
        let resolved = config.validate(&envs).unwrap();
        assert_eq!(
            resolved.sinks_for(Some(&envs[1]), "deployment_failed"),
            [Sink::Slack, Sink::PagerDuty]
        );
        assert_eq!(
            resolved.sinks_for(Some(&envs[0]), "deployment_failed"),
            [Sink::Slack]
        );
        assert_eq!(
            resolved.sinks_for(Some(&envs[1]), "deployment_started"),
            [Sink::Slack]
        );
        assert!(
            !format!("{resolved:?}").contains("hooks.slack.com"),
            "Debug shows a secret"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let envs = [EnvName::new("dev").unwrap()];
        let config = NotifyConfig {
            webhook: Some(WebhookSettings {
                url: "ftp://x".into(),
                secret: Some("short".into()),
                ..Default::default()
            }),
            routes: vec![RouteSettings {
                environments: vec!["staging".into()],
                events: vec!["deployed".into()],
                sinks: vec!["email".into(), "pager".into()],
            }],
            ..Default::default()
        };
        let problems = config.validate(&envs).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            [
                "notify.webhook.url",
                "notify.webhook.secret",
                "notify.routes.environments",
                "notify.routes.events",
                "notify.routes.sinks",
                "notify.routes.sinks"
            ],
            "{problems:?}"
        );
    }
}
