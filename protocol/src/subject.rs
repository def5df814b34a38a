//! Every NATS subject ferry uses, built and parsed here and nowhere else.
//!
//! ```text
//! ferry.v1.cmd.<env>.<service>            commands to one environment's agent (JetStream: FERRY_COMMANDS)
//! ferry.v1.evt.<env>.<service>.<kind>     agent events about one service (JetStream: FERRY_EVENTS)
//! ferry.v1.agent.<env>.<kind>             agent-wide events: heartbeat, refused (JetStream: FERRY_EVENTS)
//! ferry.v1.release.<service>              release events published by CI (JetStream: FERRY_RELEASES)
//! ferry.v1.api.<op>                       the controller's request-reply API for the CLI
//! ferry.v1.history.<env>.<service>        the controller's history records (JetStream: FERRY_HISTORY)
//! ```

use std::fmt;

use crate::names::{EnvName, ServiceName};
use crate::Error;

/// The prefix every ferry subject starts with; the version is part of it so a
/// v2 protocol can run beside v1 on the same NATS system.
pub const PREFIX: &str = "ferry.v1";

/// Kinds of per-service agent events, the last token of an event subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A command was accepted and will be carried out.
    Accepted,
    /// A command was refused: unsigned, expired, replayed, malformed...
    Refused,
    /// A step of a deployment, rollback or scale.
    Progress,
    /// The end of a command: succeeded, failed, rolled back, dry run.
    Outcome,
    /// Replica health, crashes and restarts.
    Health,
    /// Request counts, error rate and latency measured at the agent's proxy.
    Metrics,
    /// A running service crossed a threshold (published by the controller).
    Alert,
}

impl EventKind {
    /// Every kind, for tests and for subscribers that list them.
    pub const ALL: [EventKind; 7] = [
        EventKind::Accepted,
        EventKind::Refused,
        EventKind::Progress,
        EventKind::Outcome,
        EventKind::Health,
        EventKind::Metrics,
        EventKind::Alert,
    ];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Refused => "refused",
            EventKind::Progress => "progress",
            EventKind::Outcome => "outcome",
            EventKind::Health => "health",
            EventKind::Metrics => "metrics",
            EventKind::Alert => "alert",
        }
    }

    fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == token)
    }
}

/// Agent-wide event kinds, not tied to one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentEventKind {
    /// Periodic liveness, host metrics and a snapshot of every service.
    Heartbeat,
    /// A message the agent could not attribute to a service (bad subject or body).
    Refused,
}

impl AgentEventKind {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentEventKind::Heartbeat => "heartbeat",
            AgentEventKind::Refused => "refused",
        }
    }

    fn parse(token: &str) -> Option<Self> {
        match token {
            "heartbeat" => Some(AgentEventKind::Heartbeat),
            "refused" => Some(AgentEventKind::Refused),
            _ => None,
        }
    }
}

/// Operations of the controller's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiOp {
    /// Live status per environment and service.
    Status,
    /// Deployment history.
    History,
    /// Known releases.
    Releases,
    /// Deploy a known release to an environment.
    Deploy,
    /// Roll back a service in an environment.
    Rollback,
    /// Change a service's replica count.
    Scale,
    /// Turn maintenance on or off.
    Maintenance,
    /// Record a reviewer's signed approval.
    Approve,
    /// Reject a release in an environment.
    Reject,
    /// List promotions and what they wait for.
    Approvals,
    /// Ask for a promotion.
    Promote,
    /// Act on a rollout in progress.
    Rollout,
    /// Plan a deploy without issuing it (`ferry deploy --dry-run`).
    PlanDeploy,
    /// What the controller knows of the installation (`ferry doctor`).
    Installation,
    /// Record a rollback drill in the audit trail (`ferry drill`).
    RecordDrill,
}

impl ApiOp {
    /// Every operation.
    pub const ALL: [ApiOp; 15] = [
        ApiOp::Status,
        ApiOp::History,
        ApiOp::Releases,
        ApiOp::Deploy,
        ApiOp::Rollback,
        ApiOp::Scale,
        ApiOp::Maintenance,
        ApiOp::Approve,
        ApiOp::Reject,
        ApiOp::Approvals,
        ApiOp::Promote,
        ApiOp::Rollout,
        ApiOp::PlanDeploy,
        ApiOp::Installation,
        ApiOp::RecordDrill,
    ];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiOp::Status => "status",
            ApiOp::History => "history",
            ApiOp::Releases => "releases",
            ApiOp::Deploy => "deploy",
            ApiOp::Rollback => "rollback",
            ApiOp::Scale => "scale",
            ApiOp::Maintenance => "maintenance",
            ApiOp::Approve => "approve",
            ApiOp::Reject => "reject",
            ApiOp::Approvals => "approvals",
            ApiOp::Promote => "promote",
            ApiOp::Rollout => "rollout",
            ApiOp::PlanDeploy => "plan_deploy",
            ApiOp::Installation => "installation",
            ApiOp::RecordDrill => "record_drill",
        }
    }

    fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == token)
    }
}

/// A parsed ferry subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `ferry.v1.cmd.<env>.<service>`
    Command { env: EnvName, service: ServiceName },
    /// `ferry.v1.evt.<env>.<service>.<kind>`
    Event {
        env: EnvName,
        service: ServiceName,
        kind: EventKind,
    },
    /// `ferry.v1.agent.<env>.<kind>`
    Agent { env: EnvName, kind: AgentEventKind },
    /// `ferry.v1.release.<service>`
    Release { service: ServiceName },
    /// `ferry.v1.api.<op>`
    Api { op: ApiOp },
    /// `ferry.v1.history.<env>.<service>`
    History { env: EnvName, service: ServiceName },
}

impl Subject {
    /// Parses a subject, refusing anything that is not exactly one of ferry's.
    pub fn parse(subject: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidSubject(subject.chars().take(200).collect());
        let rest = subject
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(bad)?;
        let tokens: Vec<&str> = rest.split('.').collect();
        let env = |t: &str| EnvName::new(t).map_err(|_| bad());
        let svc = |t: &str| ServiceName::new(t).map_err(|_| bad());
        match tokens.as_slice() {
            ["cmd", e, s] => Ok(Subject::Command {
                env: env(e)?,
                service: svc(s)?,
            }),
            ["evt", e, s, k] => Ok(Subject::Event {
                env: env(e)?,
                service: svc(s)?,
                kind: EventKind::parse(k).ok_or_else(bad)?,
            }),
            ["agent", e, k] => Ok(Subject::Agent {
                env: env(e)?,
                kind: AgentEventKind::parse(k).ok_or_else(bad)?,
            }),
            ["release", s] => Ok(Subject::Release { service: svc(s)? }),
            ["api", op] => Ok(Subject::Api {
                op: ApiOp::parse(op).ok_or_else(bad)?,
            }),
            ["history", e, s] => Ok(Subject::History {
                env: env(e)?,
                service: svc(s)?,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Command { env, service } => write!(f, "{PREFIX}.cmd.{env}.{service}"),
            Subject::Event { env, service, kind } => {
                write!(f, "{PREFIX}.evt.{env}.{service}.{}", kind.as_str())
            }
            Subject::Agent { env, kind } => write!(f, "{PREFIX}.agent.{env}.{}", kind.as_str()),
            Subject::Release { service } => write!(f, "{PREFIX}.release.{service}"),
            Subject::Api { op } => write!(f, "{PREFIX}.api.{}", op.as_str()),
            Subject::History { env, service } => write!(f, "{PREFIX}.history.{env}.{service}"),
        }
    }
}

/// `ferry.v1.cmd.<env>.<service>`
pub fn command(env: &EnvName, service: &ServiceName) -> String {
    Subject::Command {
        env: env.clone(),
        service: service.clone(),
    }
    .to_string()
}

/// `ferry.v1.cmd.<env>.>`: every command for one environment's agent.
pub fn commands_for_env(env: &EnvName) -> String {
    format!("{PREFIX}.cmd.{env}.>")
}

/// `ferry.v1.cmd.>`: the subjects of the commands stream.
pub fn all_commands() -> String {
    format!("{PREFIX}.cmd.>")
}

/// `ferry.v1.evt.<env>.<service>.<kind>`
pub fn event(env: &EnvName, service: &ServiceName, kind: EventKind) -> String {
    Subject::Event {
        env: env.clone(),
        service: service.clone(),
        kind,
    }
    .to_string()
}

/// `ferry.v1.evt.<env>.<service>.>`: every event about one service.
pub fn events_for_service(env: &EnvName, service: &ServiceName) -> String {
    format!("{PREFIX}.evt.{env}.{service}.>")
}

/// `ferry.v1.evt.<env>.>`: every per-service event of one environment.
pub fn events_for_env(env: &EnvName) -> String {
    format!("{PREFIX}.evt.{env}.>")
}

/// `ferry.v1.evt.<env>.*.<kind>`: one kind of event of every service of an environment.
pub fn events_of_kind(env: &EnvName, kind: EventKind) -> String {
    format!("{PREFIX}.evt.{env}.*.{}", kind.as_str())
}

/// `ferry.v1.evt.*.*.<kind>`: one kind of event of every service everywhere.
pub fn all_events_of_kind(kind: EventKind) -> String {
    format!("{PREFIX}.evt.*.*.{}", kind.as_str())
}

/// `ferry.v1.evt.>`: every per-service event.
pub fn all_events() -> String {
    format!("{PREFIX}.evt.>")
}

/// `ferry.v1.agent.<env>.<kind>`
pub fn agent_event(env: &EnvName, kind: AgentEventKind) -> String {
    Subject::Agent {
        env: env.clone(),
        kind,
    }
    .to_string()
}

/// `ferry.v1.agent.>`: every agent-wide event.
pub fn all_agent_events() -> String {
    format!("{PREFIX}.agent.>")
}

/// `ferry.v1.release.<service>`
pub fn release(service: &ServiceName) -> String {
    Subject::Release {
        service: service.clone(),
    }
    .to_string()
}

/// `ferry.v1.release.>`
pub fn all_releases() -> String {
    format!("{PREFIX}.release.>")
}

/// `ferry.v1.api.<op>`
pub fn api(op: ApiOp) -> String {
    Subject::Api { op }.to_string()
}

/// `ferry.v1.api.>`
pub fn all_api() -> String {
    format!("{PREFIX}.api.>")
}

/// `ferry.v1.history.<env>.<service>`
pub fn history(env: &EnvName, service: &ServiceName) -> String {
    Subject::History {
        env: env.clone(),
        service: service.clone(),
    }
    .to_string()
}

/// `ferry.v1.history.>`
pub fn all_history() -> String {
    format!("{PREFIX}.history.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> EnvName {
        EnvName::new("dev").unwrap()
    }
    fn svc() -> ServiceName {
        ServiceName::new("web").unwrap()
    }

    #[test]
    fn every_subject_round_trips() {
        let mut all = vec![
            Subject::Command {
                env: env(),
                service: svc(),
            },
            Subject::Release { service: svc() },
            Subject::History {
                env: env(),
                service: svc(),
            },
            Subject::Agent {
                env: env(),
                kind: AgentEventKind::Heartbeat,
            },
            Subject::Agent {
                env: env(),
                kind: AgentEventKind::Refused,
            },
        ];
        all.extend(EventKind::ALL.map(|kind| Subject::Event {
            env: env(),
            service: svc(),
            kind,
        }));
        all.extend(ApiOp::ALL.map(|op| Subject::Api { op }));
        for subject in all {
            let text = subject.to_string();
            assert!(text.starts_with("ferry.v1."), "{text}");
            assert_eq!(Subject::parse(&text).unwrap(), subject, "{text}");
        }
    }

    #[test]
    fn builders_match_the_documented_layout() {
        assert_eq!(command(&env(), &svc()), "ferry.v1.cmd.dev.web");
        assert_eq!(
            event(&env(), &svc(), EventKind::Outcome),
            "ferry.v1.evt.dev.web.outcome"
        );
        assert_eq!(
            agent_event(&env(), AgentEventKind::Heartbeat),
            "ferry.v1.agent.dev.heartbeat"
        );
        assert_eq!(release(&svc()), "ferry.v1.release.web");
        assert_eq!(api(ApiOp::Status), "ferry.v1.api.status");
        assert_eq!(commands_for_env(&env()), "ferry.v1.cmd.dev.>");
        assert_eq!(events_for_env(&env()), "ferry.v1.evt.dev.>");
    }

    #[test]
    fn refuses_foreign_and_malformed_subjects() {
        for bad in [
            "",
            "ferry.v2.cmd.dev.web",
            "ferry.v1",
            "ferry.v1.cmd.dev",
            "ferry.v1.cmd.dev.web.extra",
            "ferry.v1.cmd.Dev.web",
            "ferry.v1.cmd.*.web",
            "ferry.v1.evt.dev.web.nonsense",
            "ferry.v1.api.drop_tables",
            "ferry.v1.cmdx.dev.web",
            "other.v1.cmd.dev.web",
        ] {
            assert!(Subject::parse(bad).is_err(), "{bad:?}");
        }
    }
}
