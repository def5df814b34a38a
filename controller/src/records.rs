//! What the controller keeps in its key-value buckets, and how events change it.
//!
//! These are storage, not wire: only the controller reads them. The
//! transitions are pure functions so they can be tested without a server, and
//! so that applying the same event twice (redelivery, a second controller
//! instance) leaves the same record.

use ferry_protocol::api::PromotionState;
use ferry_protocol::approval::SignedApproval;
use ferry_protocol::command::{Action, ActionKind, Command, RollbackTarget};
use ferry_protocol::event::{EventBody, Heartbeat, ServiceEvent};
use ferry_protocol::{EnvName, ServiceName, Version};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Where a command stands, as far as the controller has heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CommandState {
    /// Stored in JetStream for the agent.
    Issued,
    /// The agent accepted it and is carrying it out.
    Accepted,
    /// Finished as asked.
    Succeeded,
    /// Failed.
    Failed,
    /// The agent refused it.
    Refused,
    /// A dry run reported its plan.
    DryRun,
}

impl CommandState {
    /// The word used in status rows and history records.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CommandState::Issued => "issued",
            CommandState::Accepted => "accepted",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::Refused => "refused",
            CommandState::DryRun => "dry_run",
        }
    }

    fn is_final(self) -> bool {
        !matches!(self, CommandState::Issued | CommandState::Accepted)
    }
}

/// The last command to one service in one environment and how it went; the
/// value of `<env>.<service>` in the deployments bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeploymentRecord {
    /// Environment.
    pub environment: EnvName,
    /// Service.
    pub service: ServiceName,
    /// The last command's id, when known.
    pub command_id: Option<Uuid>,
    /// Its action, when known.
    pub action: Option<ActionKind>,
    /// The version it targets (deploy, rollback to a version) or reported.
    pub version: Option<Version>,
    /// Who asked for it.
    pub actor: Option<String>,
    /// Where it stands.
    pub state: CommandState,
    /// A sentence for people about the state.
    pub detail: String,
    /// When the state last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The version last reported serving, kept across commands.
    pub serving: Option<Version>,
}

impl DeploymentRecord {
    /// The record after `command` was issued as `id`. Issuing the same id again
    /// (a redelivered release, a retried request) changes nothing, so a late
    /// duplicate cannot turn a finished command back into `issued`.
    pub(crate) fn issued(
        previous: Option<DeploymentRecord>,
        id: Uuid,
        command: &Command,
        detail: String,
        at: OffsetDateTime,
    ) -> Option<DeploymentRecord> {
        if previous.as_ref().and_then(|p| p.command_id) == Some(id) {
            return None;
        }
        Some(DeploymentRecord {
            environment: command.environment.clone(),
            service: command.service.clone(),
            command_id: Some(id),
            action: Some(command.action.kind()),
            version: target_version(&command.action),
            actor: command.actor.clone(),
            state: CommandState::Issued,
            detail,
            updated_at: at,
            serving: previous.and_then(|p| p.serving),
        })
    }

    /// The record after an agent's accepted, refused or outcome `event`, or
    /// `None` when the event changes nothing.
    ///
    /// A refusal changes a record only as the verdict on the command the
    /// record awaits: the same id, still issued or accepted, and refused for
    /// a reason given after its signature verified. Anyone able to put bytes
    /// on a command subject gets refusals, so a refusal never starts a record
    /// (a status row) nor replaces a finished command's outcome; it is kept
    /// in history only.
    pub(crate) fn apply(
        previous: Option<DeploymentRecord>,
        event: &ServiceEvent,
        at: OffsetDateTime,
    ) -> Option<DeploymentRecord> {
        if let EventBody::Refused { reason, .. } = &event.body {
            let verdict_on_awaited = previous.as_ref().is_some_and(|record| {
                reason.follows_verification()
                    && !record.state.is_final()
                    && record.command_id.is_some()
                    && record.command_id == event.command_id
            });
            if !verdict_on_awaited {
                return None;
            }
        }
        let EventFacts {
            state,
            action,
            version,
            detail,
            serving,
        } = EventFacts::of(&event.body)?;

        let Some(mut record) = previous else {
            // The controller did not issue it, or its record was lost: start one.
            return Some(DeploymentRecord {
                environment: event.environment.clone(),
                service: event.service.clone(),
                command_id: event.command_id,
                action,
                version,
                actor: None,
                state,
                detail,
                updated_at: at,
                serving,
            });
        };

        let same_command = match (record.command_id, event.command_id) {
            (Some(recorded), Some(reported)) => recorded == reported,
            // An event without an id, or a record that lost its id, cannot
            // be told apart from the last command: take it as that command's.
            _ => true,
        };
        let mut changed = false;
        if serving.is_some() && serving != record.serving {
            // What serves is a fact whichever command brought it about.
            record.serving = serving;
            changed = true;
        }
        if !same_command {
            // A late event about an older command must not overwrite the
            // state of the newer one.
            return changed.then_some(record);
        }
        let regresses = record.state.is_final() && !state.is_final();
        let repeats = record.state == state && record.detail == detail;
        if regresses || repeats {
            return changed.then_some(record);
        }
        record.command_id = record.command_id.or(event.command_id);
        record.action = action.or(record.action);
        record.version = version.or(record.version);
        record.state = state;
        record.detail = detail;
        record.updated_at = at;
        Some(record)
    }
}

/// What an accepted, refused or final agent event says about its command;
/// the one reading of an event body that records and history share.
pub(crate) struct EventFacts {
    /// The command's state after the event.
    pub(crate) state: CommandState,
    /// The action, when the event names it.
    pub(crate) action: Option<ActionKind>,
    /// The version concerned, when the event names it.
    pub(crate) version: Option<Version>,
    /// A sentence for people.
    pub(crate) detail: String,
    /// The version serving afterwards, when the event says.
    pub(crate) serving: Option<Version>,
}

impl EventFacts {
    /// `None` for progress, health and metrics: not part of a command's record.
    pub(crate) fn of(body: &EventBody) -> Option<EventFacts> {
        let facts = |state, action, version, detail, serving| EventFacts {
            state,
            action,
            version,
            detail,
            serving,
        };
        Some(match body {
            EventBody::Accepted { action } => facts(
                CommandState::Accepted,
                Some(*action),
                None,
                format!("{action} accepted by the agent"),
                None,
            ),
            EventBody::Refused { reason, detail } => facts(
                CommandState::Refused,
                None,
                None,
                format!("{reason}: {detail}"),
                None,
            ),
            EventBody::Succeeded {
                action,
                version,
                detail,
                ..
            } => facts(
                CommandState::Succeeded,
                Some(*action),
                version.clone(),
                detail.clone(),
                version.clone(),
            ),
            EventBody::Failed {
                action,
                version,
                reason,
                serving,
            } => facts(
                CommandState::Failed,
                Some(*action),
                version.clone(),
                reason.clone(),
                serving.clone(),
            ),
            EventBody::DryRun { action, plan } => facts(
                CommandState::DryRun,
                Some(*action),
                None,
                format!("would: {}", plan.join("; ")),
                None,
            ),
            _ => return None,
        })
    }
}

/// The version a command brings up, when it names one.
pub(crate) fn target_version(action: &Action) -> Option<Version> {
    match action {
        Action::Deploy { release, .. } => Some(release.version.clone()),
        Action::Rollback {
            to: RollbackTarget::Version(v),
            ..
        } => Some(v.clone()),
        _ => None,
    }
}

/// An environment's last heartbeat; the value of `<env>` in the agents bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct AgentRecord {
    /// The heartbeat as the agent sent it.
    pub heartbeat: Heartbeat,
    /// When JetStream stored it. The server's clock, not the agent's and not
    /// the time the controller read it, so that replaying a backlog after a
    /// controller outage does not make dead agents look alive.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// A reviewer's rejection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rejection {
    /// Who.
    pub by: Option<String>,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One release on its way into one environment: the value of
/// `<service>.<version>.<env>` in the promotions bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PromotionRecord {
    pub service: ServiceName,
    pub version: Version,
    pub environment: EnvName,
    pub state: PromotionState,
    /// Asked for: by the pipeline (`auto_deploy`) or `ferry promote`.
    pub requested: bool,
    pub requested_by: Option<String>,
    /// When the previous environment's soak ends (known once it succeeded).
    #[serde(with = "time::serde::rfc3339::option")]
    pub eligible_at: Option<OffsetDateTime>,
    /// Approvals as received (each verified on receipt and again on use).
    pub approvals: Vec<SignedApproval>,
    pub rejection: Option<Rejection>,
    pub command_id: Option<Uuid>,
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The newer release that superseded it (see `supersession`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<Version>,
}

impl PromotionRecord {
    pub(crate) fn new(
        service: &ServiceName,
        version: &Version,
        env: &EnvName,
        now: OffsetDateTime,
    ) -> Self {
        PromotionRecord {
            service: service.clone(),
            version: version.clone(),
            environment: env.clone(),
            state: PromotionState::Waiting,
            requested: false,
            requested_by: None,
            eligible_at: None,
            approvals: Vec::new(),
            rejection: None,
            command_id: None,
            detail: "not requested yet".to_owned(),
            updated_at: now,
            superseded_by: None,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        !matches!(
            self.state,
            PromotionState::Waiting | PromotionState::Blocked
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::command::ReleaseSpec;
    use ferry_protocol::RefusalReason;

    fn deploy(version: &str) -> Command {
        Command {
            environment: EnvName::new("dev").unwrap(),
            service: ServiceName::new("web").unwrap(),
            actor: Some("ci".into()),
            hosts: Vec::new(),
            action: Action::Deploy {
                release: ReleaseSpec {
                    version: Version::new(version).unwrap(),
                    artifact: "/bin/web".into(),
                    digest: None,
                    env: Default::default(),
                },
                replicas: None,
                health: None,
                approvals: Vec::new(),
                rollout: None,
                hotfix: false,
            },
        }
    }

    fn event(id: Uuid, body: EventBody) -> ServiceEvent {
        ServiceEvent {
            host: None,
            environment: EnvName::new("dev").unwrap(),
            service: ServiceName::new("web").unwrap(),
            command_id: Some(id),
            body,
        }
    }

    fn succeeded(version: &str) -> EventBody {
        EventBody::Succeeded {
            action: ActionKind::Deploy,
            version: Some(Version::new(version).unwrap()),
            replicas: 2,
            detail: "2 replicas healthy".into(),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_command_goes_from_issued_to_its_outcome() {
        let id = Uuid::new_v4();
        let issued = DeploymentRecord::issued(None, id, &deploy("1.0"), "x".into(), now()).unwrap();
        assert_eq!(issued.state, CommandState::Issued);
        let accepted = DeploymentRecord::apply(
            Some(issued),
            &event(
                id,
                EventBody::Accepted {
                    action: ActionKind::Deploy,
                },
            ),
            now(),
        )
        .unwrap();
        assert_eq!(accepted.state, CommandState::Accepted);
        let done =
            DeploymentRecord::apply(Some(accepted), &event(id, succeeded("1.0")), now()).unwrap();
        assert_eq!(done.state, CommandState::Succeeded);
        assert_eq!(done.serving.as_ref().unwrap().as_str(), "1.0");
        assert_eq!(done.actor.as_deref(), Some("ci"));

        // Redelivered: no change, and a late "accepted" does not regress it.
        assert!(
            DeploymentRecord::apply(Some(done.clone()), &event(id, succeeded("1.0")), now())
                .is_none()
        );
        let late = event(
            id,
            EventBody::Accepted {
                action: ActionKind::Deploy,
            },
        );
        assert!(DeploymentRecord::apply(Some(done.clone()), &late, now()).is_none());
        // Issuing the same id again does not reset it either.
        assert!(
            DeploymentRecord::issued(Some(done), id, &deploy("1.0"), "x".into(), now()).is_none()
        );
    }

    #[test]
    fn a_late_outcome_of_an_older_command_keeps_the_newer_state() {
        let old = Uuid::new_v4();
        let new = Uuid::new_v4();
        let issued =
            DeploymentRecord::issued(None, new, &deploy("2.0"), "x".into(), now()).unwrap();
        let after =
            DeploymentRecord::apply(Some(issued), &event(old, succeeded("1.0")), now()).unwrap();
        assert_eq!(after.command_id, Some(new));
        assert_eq!(after.state, CommandState::Issued);
        assert_eq!(after.serving.unwrap().as_str(), "1.0");
    }

    fn refusal(id: Option<Uuid>, reason: RefusalReason) -> ServiceEvent {
        ServiceEvent {
            host: None,
            command_id: id,
            ..event(
                Uuid::nil(),
                EventBody::Refused {
                    reason,
                    detail: "no".into(),
                },
            )
        }
    }

    #[test]
    fn a_refusal_never_starts_a_record() {
        for reason in [RefusalReason::UnknownService, RefusalReason::Expired] {
            let refused = refusal(Some(Uuid::new_v4()), reason);
            assert!(DeploymentRecord::apply(None, &refused, now()).is_none());
        }
    }

    #[test]
    fn a_refusal_of_anything_but_the_awaited_signed_command_changes_nothing() {
        let id = Uuid::new_v4();
        let issued = DeploymentRecord::issued(None, id, &deploy("1.0"), "x".into(), now()).unwrap();
        let done =
            DeploymentRecord::apply(Some(issued.clone()), &event(id, succeeded("1.0")), now())
                .unwrap();
        for refused in [
            // Garbage (no id), a stranger's unsigned command, another id.
            refusal(None, RefusalReason::Malformed),
            refusal(Some(id), RefusalReason::Unsigned),
            refusal(Some(id), RefusalReason::BadSignature),
            refusal(Some(Uuid::new_v4()), RefusalReason::Expired),
        ] {
            assert!(DeploymentRecord::apply(Some(issued.clone()), &refused, now()).is_none());
            assert!(DeploymentRecord::apply(Some(done.clone()), &refused, now()).is_none());
        }
        // A replay of the finished command keeps its outcome.
        let replayed = refusal(Some(id), RefusalReason::Replayed);
        assert!(DeploymentRecord::apply(Some(done), &replayed, now()).is_none());
    }

    #[test]
    fn a_verified_refusal_of_the_awaited_command_is_its_outcome() {
        let id = Uuid::new_v4();
        let issued = DeploymentRecord::issued(None, id, &deploy("1.0"), "x".into(), now()).unwrap();
        let refused = refusal(Some(id), RefusalReason::ApprovalsMissing);
        let record = DeploymentRecord::apply(Some(issued), &refused, now()).unwrap();
        assert_eq!(record.state, CommandState::Refused);
        assert_eq!(record.detail, "approvals_missing: no");
        assert_eq!(record.command_id, Some(id));
    }

    #[test]
    fn progress_changes_nothing() {
        let progress = event(
            Uuid::new_v4(),
            EventBody::Progress {
                action: ActionKind::Deploy,
                step: "starting".into(),
                version: None,
                ready: 0,
                desired: 1,
            },
        );
        assert!(DeploymentRecord::apply(None, &progress, now()).is_none());
    }
}
