//! The controller's request-reply API on `ferry.v1.api.<op>`, used by the CLI
//! and by any program that drives ferry. Requests and replies travel in the
//! same envelope as everything else.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::approval::{ApprovalKind, SignedApproval};
use crate::command::{ActionKind, MaintenanceMode, RollbackTarget};
use crate::event::{MaintenanceInfo, ServiceState};
use crate::names::{EnvName, HostName, ServiceName, Version};
use crate::release::Release;
use crate::rollout::{RolloutControl, RolloutOptions, Strategy};
use crate::subject::ApiOp;
use crate::Payload;

/// Most history records one request returns.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// A request to the controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ApiRequest {
    /// Live status, optionally of one environment.
    Status {
        /// Only this environment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<EnvName>,
    },
    /// History, newest last.
    History {
        /// Only this environment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<EnvName>,
        /// Only this service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<ServiceName>,
        /// At most this many records (capped at [`MAX_HISTORY_LIMIT`]).
        limit: u32,
        /// Only records by this actor.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        /// Only records at or after this time.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        since: Option<OffsetDateTime>,
        /// Only records of this action (`deploy`, `approve`, `promote`...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
    },
    /// Known releases, optionally of one service.
    Releases {
        /// Only this service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<ServiceName>,
    },
    /// Deploy a known release.
    Deploy {
        /// Where.
        environment: EnvName,
        /// Which service.
        service: ServiceName,
        /// Which version (must have been published as a release).
        version: Version,
        /// Replicas, if not the current count.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<u32>,
        /// Who asks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        /// Strategy and analysis overrides for this deploy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<Box<RolloutOptions>>,
        /// Take the short canary of a hotfix (also when the release is not
        /// marked as one).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hotfix: bool,
        /// Hosts moved at once after the canary host, when the environment
        /// has several (the environment's setting otherwise).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_parallel_hosts: Option<u32>,
    },
    /// Roll back.
    Rollback {
        /// Where.
        environment: EnvName,
        /// Which service.
        service: ServiceName,
        /// Previous or a named version.
        to: RollbackTarget,
        /// See [`crate::command::Action::Rollback`].
        #[serde(default)]
        force: bool,
        /// Change nothing; report the plan.
        #[serde(default)]
        dry_run: bool,
        /// Only these hosts of the environment; empty: every host.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hosts: Vec<HostName>,
        /// Who asks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// Scale.
    Scale {
        /// Where.
        environment: EnvName,
        /// Which service.
        service: ServiceName,
        /// New replica count.
        replicas: u32,
        /// Only these hosts of the environment; empty: every host.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hosts: Vec<HostName>,
        /// Who asks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// Maintenance on or off.
    Maintenance {
        /// Where.
        environment: EnvName,
        /// Which service.
        service: ServiceName,
        /// On with a message and duration, or off.
        mode: MaintenanceMode,
        /// Only these hosts of the environment; empty: every host.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hosts: Vec<HostName>,
        /// Who asks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// Record a reviewer's signed approval (signed by the CLI where the
    /// reviewer's key is; the seed never travels).
    Approve {
        /// The signed approval.
        approval: Box<SignedApproval>,
    },
    /// Reject a release in an environment: its promotion stops there.
    Reject {
        /// Where.
        environment: EnvName,
        /// Which service.
        service: ServiceName,
        /// Which version.
        version: Version,
        /// Why.
        reason: String,
        /// Who.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// Promotions waiting (or done), optionally of one environment or service.
    Approvals {
        /// Only this environment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<EnvName>,
        /// Only this service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<ServiceName>,
        /// Include finished promotions (deployed, rejected, superseded).
        #[serde(default)]
        all: bool,
    },
    /// Ask for a release to be promoted into an environment: it deploys as
    /// soon as it is eligible (previous environment healthy for the soak
    /// time) and approved.
    Promote {
        /// Where to.
        environment: EnvName,
        /// Which service.
        service: ServiceName,
        /// Which version.
        version: Version,
        /// Who asks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// What a deploy of a known release would do, computed by the
    /// controller without issuing anything (`ferry deploy --dry-run`).
    PlanDeploy {
        /// Where.
        environment: EnvName,
        /// Which service.
        service: ServiceName,
        /// Which version.
        version: Version,
        /// Replicas, if not the current count.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<u32>,
        /// Strategy and analysis overrides the deploy would carry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<Box<RolloutOptions>>,
        /// The hotfix path.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hotfix: bool,
        /// See [`ApiRequest::Deploy`]'s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_parallel_hosts: Option<u32>,
    },
    /// Pause, resume, promote or abort the rollout in progress.
    Rollout {
        /// Where.
        environment: EnvName,
        /// Which service.
        service: ServiceName,
        /// What to do.
        control: RolloutControl,
        /// Only these hosts of the environment; empty: every host.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hosts: Vec<HostName>,
        /// Who asks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// What the controller knows of the installation, for `ferry doctor`:
    /// its public signing key, its pipeline and each agent's last heartbeat.
    Installation {},
    /// Record a finished rollback drill in the audit trail.
    RecordDrill {
        /// What the drill did and measured.
        drill: Box<crate::doctor::DrillReport>,
        /// Who ran it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
}

impl ApiRequest {
    /// The API operation (and so the subject) this request goes to.
    pub fn op(&self) -> ApiOp {
        match self {
            ApiRequest::Status { .. } => ApiOp::Status,
            ApiRequest::History { .. } => ApiOp::History,
            ApiRequest::Releases { .. } => ApiOp::Releases,
            ApiRequest::Deploy { .. } => ApiOp::Deploy,
            ApiRequest::Rollback { .. } => ApiOp::Rollback,
            ApiRequest::Scale { .. } => ApiOp::Scale,
            ApiRequest::Maintenance { .. } => ApiOp::Maintenance,
            ApiRequest::Approve { .. } => ApiOp::Approve,
            ApiRequest::Reject { .. } => ApiOp::Reject,
            ApiRequest::Approvals { .. } => ApiOp::Approvals,
            ApiRequest::Promote { .. } => ApiOp::Promote,
            ApiRequest::Rollout { .. } => ApiOp::Rollout,
            ApiRequest::PlanDeploy { .. } => ApiOp::PlanDeploy,
            ApiRequest::Installation {} => ApiOp::Installation,
            ApiRequest::RecordDrill { .. } => ApiOp::RecordDrill,
        }
    }
}

impl Payload for ApiRequest {
    fn event_type(&self) -> &'static str {
        "ferry.v1.api.request"
    }
}

/// Every reply: success, a sentence, and the typed response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiReply<T> {
    /// Whether the request was carried out.
    pub success: bool,
    /// A sentence for people; the error when `success` is false.
    pub message: String,
    /// What was asked for, when `success`.
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub response: Option<T>,
}

impl<T> ApiReply<T> {
    /// A successful reply.
    pub fn ok(message: impl Into<String>, response: T) -> Self {
        ApiReply {
            success: true,
            message: message.into(),
            response: Some(response),
        }
    }

    /// A failed reply.
    pub fn error(message: impl Into<String>) -> Self {
        ApiReply {
            success: false,
            message: message.into(),
            response: None,
        }
    }
}

impl<T> Payload for ApiReply<T> {
    fn event_type(&self) -> &'static str {
        "ferry.v1.api.reply"
    }
}

/// The reply to deploy, rollback, scale and maintenance: the command was
/// stored in JetStream for the agent; follow its events to learn the outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandIssued {
    /// The command's id; every event about it carries it.
    pub command_id: Uuid,
    /// Its subject.
    pub subject: String,
    /// Where.
    pub environment: EnvName,
    /// Which service.
    pub service: ServiceName,
    /// Which action.
    pub action: ActionKind,
    /// A deploy that goes host by host: no event carries `command_id`;
    /// follow the wave in `ferry status` (each host's step has its own id).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wave: bool,
}

/// One row of `ferry status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRow {
    /// Environment.
    pub environment: EnvName,
    /// Service; null on an environment whose agent reported no services.
    #[serde(default)]
    pub service: Option<ServiceName>,
    /// Version serving.
    #[serde(default)]
    pub version: Option<Version>,
    /// Replicas wanted.
    pub replicas_desired: u32,
    /// Replicas healthy.
    pub replicas_healthy: u32,
    /// State; `unknown` when the agent is not heard from.
    pub state: ServiceState,
    /// Outcome of the last command: `succeeded`, `failed`, `refused`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    /// When that outcome was reported.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_outcome_at: Option<OffsetDateTime>,
    /// When the environment's agent was last heard from.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub agent_last_seen: Option<OffsetDateTime>,
    /// Whether the agent's last heartbeat is recent.
    pub agent_up: bool,
    /// Maintenance, if on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceInfo>,
    /// Stable address the agent serves the service on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The service's rollout in progress, or its last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
    /// Each host of the environment serving the service, when its agents
    /// name their hosts; the row's own figures sum them up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostStatus>,
    /// The environment's host-by-host deploy of the service in progress,
    /// or its last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<crate::wave::Wave>,
}

/// One host's part of a [`StatusRow`] (`ferry status --hosts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host.
    pub host: HostName,
    /// Version it serves.
    #[serde(default)]
    pub version: Option<Version>,
    /// Replicas wanted on it.
    pub replicas_desired: u32,
    /// Replicas healthy on it.
    pub replicas_healthy: u32,
    /// Its state; `unknown` when its agent is not heard from.
    pub state: ServiceState,
    /// When its agent was last heard from.
    #[serde(with = "time::serde::rfc3339")]
    pub agent_last_seen: OffsetDateTime,
    /// Whether its agent's last heartbeat is recent (a host that stopped
    /// sending them is down and not counted as healthy).
    pub agent_up: bool,
    /// Stable address its agent serves the service on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its rollout in progress, or its last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
    /// Its step in the wave shown on the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<crate::wave::StepState>,
}

/// One record of history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Environment, absent for a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvName>,
    /// Service.
    pub service: ServiceName,
    /// Version concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// `release`, `deploy`, `rollback`, `scale`, `maintenance`.
    pub action: String,
    /// `published`, `issued`, `succeeded`, `failed`, `refused`, `dry_run`.
    pub outcome: String,
    /// A sentence for people.
    pub detail: String,
    /// The command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl Payload for HistoryRecord {
    fn event_type(&self) -> &'static str {
        "ferry.v1.history.record"
    }
}

/// A release as the controller stored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The release event's data.
    pub release: Release,
    /// When the controller received it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// Where a promotion of one release into one environment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionState {
    /// Waiting for the previous environment, the soak time or approvals.
    Waiting,
    /// Held by the security gate: critical vulnerabilities, no override quorum.
    Blocked,
    /// The deploy command was issued.
    Issued,
    /// A reviewer rejected it; it goes no further.
    Rejected,
    /// A newer release of the service took its place before it went in:
    /// it goes no further (`superseded_by` says which).
    Superseded,
}

impl std::fmt::Display for PromotionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PromotionState::Waiting => "waiting",
            PromotionState::Blocked => "blocked",
            PromotionState::Issued => "issued",
            PromotionState::Rejected => "rejected",
            PromotionState::Superseded => "superseded",
        })
    }
}

/// The reply to [`ApiRequest::PlanDeploy`]: what `ferry deploy` would do.
/// Nothing was issued to compute it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPlan {
    /// Where.
    pub environment: EnvName,
    /// Which service.
    pub service: ServiceName,
    /// Which version.
    pub version: Version,
    /// What would run: executable path or image.
    pub artifact: String,
    /// The version running there now, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<Version>,
    /// The strategy the agent would take; absent when only the agent knows
    /// it (its service configuration, never reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Where the strategy comes from, in words.
    pub strategy_from: String,
    /// The strategy's steps, in words.
    #[serde(default)]
    pub steps: Vec<String>,
    /// Replicas it would run; absent when the count is the agent's to keep
    /// and was never reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The environment's deploy approvals.
    pub approvals: PlannedApprovals,
    /// The security gate's verdict.
    pub gate: GateVerdict,
    /// Whether `ferry deploy` would issue the command.
    pub would_issue: bool,
    /// Why it would not be issued, or would be refused by the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// With several live hosts: the order they would move in (the canary
    /// host first); empty when the deploy is one command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostName>,
    /// With several live hosts: how many would move at once after the
    /// canary host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_hosts: Option<u32>,
}

/// A planned deploy's approvals: what the environment needs, what is recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedApprovals {
    /// Deploy approvals the environment needs (0: not gated).
    pub required: u32,
    /// Reviewers whose valid approvals are recorded for this release there.
    #[serde(default)]
    pub present: Vec<String>,
    /// How many more are needed.
    pub missing: u32,
    /// Reviewers who may still approve.
    #[serde(default)]
    pub may_approve: Vec<String>,
}

/// The security gate's verdict on a release in an environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// Whether it lets the release through.
    pub passes: bool,
    /// Critical findings of the release's scan.
    pub critical: u32,
    /// Security override approvals needed (0 without criticals).
    pub overrides_required: u32,
    /// Valid security override approvals recorded.
    pub overrides_valid: u32,
    /// A sentence for people.
    pub detail: String,
}

/// One approval as `ferry approvals` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    /// Reviewer name.
    pub reviewer_name: String,
    /// Reviewer public key.
    pub reviewer: String,
    /// Deploy or security override.
    pub kind: ApprovalKind,
    /// When it stops counting.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Whether it counts now (not expired).
    pub counts: bool,
}

/// One row of `ferry approvals`: a release on its way into an environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionView {
    /// Environment.
    pub environment: EnvName,
    /// Service.
    pub service: ServiceName,
    /// Version.
    pub version: Version,
    /// Where it stands.
    pub state: PromotionState,
    /// Deploy approvals the environment needs.
    pub approvals_required: u32,
    /// Valid deploy approvals so far.
    pub approvals_valid: u32,
    /// Security override approvals needed (0 unless the scan found criticals).
    pub overrides_required: u32,
    /// Valid security override approvals so far.
    pub overrides_valid: u32,
    /// Reviewers who may still approve.
    pub waiting_for: Vec<String>,
    /// Every approval recorded.
    pub approvals: Vec<ApprovalView>,
    /// When it becomes eligible (previous environment healthy plus the soak
    /// time), once known.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub eligible_at: Option<OffsetDateTime>,
    /// A sentence: what it waits for, why it is blocked or rejected.
    pub detail: String,
    /// The newer release that superseded it, when `state` is `superseded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<Version>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: PromotionState, superseded_by: Option<&str>) -> PromotionView {
        PromotionView {
            environment: EnvName::new("acceptance").unwrap(),
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            state,
            approvals_required: 1,
            approvals_valid: 0,
            overrides_required: 0,
            overrides_valid: 0,
            waiting_for: Vec::new(),
            approvals: Vec::new(),
            eligible_at: None,
            detail: "superseded by web 1.1.0".into(),
            superseded_by: superseded_by.map(|v| Version::new(v).unwrap()),
        }
    }

    #[test]
    fn a_superseded_promotion_round_trips_and_an_older_view_still_decodes() {
        let superseded = view(PromotionState::Superseded, Some("1.1.0"));
        let json = serde_json::to_value(&superseded).unwrap();
        assert_eq!(json["state"], "superseded");
        assert_eq!(json["superseded_by"], "1.1.0");
        let back: PromotionView = serde_json::from_value(json).unwrap();
        assert_eq!(back, superseded);

        // Written before supersession existed: no superseded_by at all.
        let mut older = serde_json::to_value(view(PromotionState::Waiting, None)).unwrap();
        assert!(older.get("superseded_by").is_none());
        older.as_object_mut().unwrap().remove("superseded_by");
        let back: PromotionView = serde_json::from_value(older).unwrap();
        assert_eq!(back.superseded_by, None);
        assert_eq!(PromotionState::Superseded.to_string(), "superseded");
    }

    #[test]
    fn a_deploy_plan_request_and_its_plan_round_trip() {
        let request = ApiRequest::PlanDeploy {
            environment: EnvName::new("production").unwrap(),
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.1.0").unwrap(),
            replicas: Some(3),
            rollout: None,
            hotfix: true,
            max_parallel_hosts: Some(2),
        };
        assert_eq!(request.op(), ApiOp::PlanDeploy);
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["op"], "plan_deploy");
        assert_eq!(serde_json::from_value::<ApiRequest>(json).unwrap(), request);
        // The least a program must send.
        let least: ApiRequest = serde_json::from_str(
            r#"{"op": "plan_deploy", "environment": "dev", "service": "web", "version": "1.0"}"#,
        )
        .unwrap();
        assert!(matches!(
            least,
            ApiRequest::PlanDeploy {
                replicas: None,
                rollout: None,
                hotfix: false,
                ..
            }
        ));

        let plan = DeployPlan {
            environment: EnvName::new("production").unwrap(),
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.1.0").unwrap(),
            artifact: "/bin/web".into(),
            serving: None,
            strategy: Some(Strategy::Recreate),
            strategy_from: "flags".into(),
            steps: vec!["start".into()],
            replicas: None,
            approvals: PlannedApprovals {
                required: 2,
                present: vec!["alice".into()],
                missing: 1,
                may_approve: vec!["bob".into()],
            },
            gate: GateVerdict {
                passes: false,
                critical: 1,
                overrides_required: 2,
                overrides_valid: 0,
                detail: "blocks".into(),
            },
            would_issue: false,
            problems: vec!["needs 2 approvals".into()],
            hosts: vec![
                HostName::new("web-1").unwrap(),
                HostName::new("web-2").unwrap(),
            ],
            max_parallel_hosts: Some(1),
        };
        let json = serde_json::to_value(&plan).unwrap();
        assert!(json.get("serving").is_none() && json.get("replicas").is_none());
        assert_eq!(json["hosts"], serde_json::json!(["web-1", "web-2"]));
        assert_eq!(serde_json::from_value::<DeployPlan>(json).unwrap(), plan);
    }
}
