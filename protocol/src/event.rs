//! Events agents publish: per service on `ferry.v1.evt.<env>.<service>.<kind>`,
//! agent-wide on `ferry.v1.agent.<env>.<kind>`.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::command::ActionKind;
use crate::names::{EnvName, HostName, ServiceName, Version};
use crate::rollout::{Breach, RolloutEvent, RolloutStatus, Strategy};
use crate::subject::EventKind;
use crate::{Payload, RefusalReason};

/// An event about one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceEvent {
    /// The agent's environment.
    pub environment: EnvName,
    /// The service.
    pub service: ServiceName,
    /// The command this event belongs to, if any (health and metrics have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// The host whose agent reports it (absent from agents before hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostName>,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened to a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventBody {
    /// The command passed every check and will be carried out.
    Accepted {
        /// Which action.
        action: ActionKind,
    },
    /// The command was refused and nothing changed.
    Refused {
        /// Machine-readable reason.
        reason: RefusalReason,
        /// What exactly was wrong.
        detail: String,
    },
    /// A step of a command in progress.
    Progress {
        /// Which action.
        action: ActionKind,
        /// e.g. `starting`, `waiting for health`, `stopping old replicas`.
        step: String,
        /// The version being brought up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<Version>,
        /// Replicas of that version ready so far.
        ready: u32,
        /// Replicas wanted.
        desired: u32,
    },
    /// The command finished as asked.
    Succeeded {
        /// Which action.
        action: ActionKind,
        /// The version now serving.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<Version>,
        /// Healthy replicas now serving.
        replicas: u32,
        /// A sentence for people.
        detail: String,
    },
    /// The command failed; `serving` says what is serving now.
    Failed {
        /// Which action.
        action: ActionKind,
        /// The version the command tried to bring up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<Version>,
        /// Why.
        reason: String,
        /// The version still (or again) serving.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serving: Option<Version>,
    },
    /// A dry run: what the command would do.
    DryRun {
        /// Which action.
        action: ActionKind,
        /// The steps it would take.
        plan: Vec<String>,
    },
    /// Periodic health of the service's replicas.
    Health(ServiceHealth),
    /// A replica exited by itself.
    ReplicaExited {
        /// Replica id.
        replica: String,
        /// Its version.
        version: Version,
        /// Exit code, if it exited rather than being killed by a signal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        /// Restarts of this replica slot so far.
        restarts: u32,
        /// A sentence for people.
        detail: String,
    },
    /// Traffic measured at the agent's proxy.
    Metrics(ServiceMetrics),
    /// A step of a progressive rollout (canary, blue-green, rolling).
    Rollout(RolloutEvent),
    /// A running service crossed a threshold outside any rollout (raised),
    /// or came back within it (cleared). Published by the controller.
    Alert(Alert),
    /// The service's runtime cannot be reached (its engine is down); commands
    /// for the service fail until the agent reconnects and restores it.
    RuntimeUnavailable {
        /// Which runtime.
        runtime: String,
        /// Why, and what the agent does about it.
        detail: String,
    },
}

impl EventBody {
    /// The subject kind this body is published under.
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::Accepted { .. } => EventKind::Accepted,
            EventBody::Refused { .. } => EventKind::Refused,
            EventBody::Progress { .. } => EventKind::Progress,
            EventBody::Succeeded { .. } | EventBody::Failed { .. } | EventBody::DryRun { .. } => {
                EventKind::Outcome
            }
            EventBody::Health(_)
            | EventBody::ReplicaExited { .. }
            | EventBody::RuntimeUnavailable { .. } => EventKind::Health,
            EventBody::Metrics(_) => EventKind::Metrics,
            EventBody::Rollout(_) => EventKind::Progress,
            EventBody::Alert(_) => EventKind::Alert,
        }
    }

    /// Whether this body ends a command (the CLI's `--wait` stops on it).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            EventBody::Refused { .. }
                | EventBody::Succeeded { .. }
                | EventBody::Failed { .. }
                | EventBody::DryRun { .. }
        )
    }
}

impl Payload for ServiceEvent {
    fn event_type(&self) -> &'static str {
        match self.body {
            EventBody::Accepted { .. } => "ferry.v1.event.accepted",
            EventBody::Refused { .. } => "ferry.v1.event.refused",
            EventBody::Progress { .. } => "ferry.v1.event.progress",
            EventBody::Succeeded { .. } => "ferry.v1.event.succeeded",
            EventBody::Failed { .. } => "ferry.v1.event.failed",
            EventBody::DryRun { .. } => "ferry.v1.event.dry_run",
            EventBody::Health(_) => "ferry.v1.event.health",
            EventBody::ReplicaExited { .. } => "ferry.v1.event.replica_exited",
            EventBody::Metrics(_) => "ferry.v1.event.metrics",
            EventBody::RuntimeUnavailable { .. } => "ferry.v1.event.runtime_unavailable",
            EventBody::Rollout(_) => "ferry.v1.event.rollout",
            EventBody::Alert(_) => "ferry.v1.event.alert",
        }
    }
}

/// Health of one replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaHealth {
    /// Replica id.
    pub replica: String,
    /// Its version.
    pub version: Version,
    /// Where it listens (`127.0.0.1:PORT` for processes).
    pub address: String,
    /// Whether its last health checks passed.
    pub healthy: bool,
    /// Restarts of this replica slot.
    pub restarts: u32,
    /// Why it is not healthy, where the runtime says (Kubernetes: a
    /// container's waiting reason, `CrashLoopBackOff: ...`); absent
    /// otherwise, and from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Health of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// The version serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// Replicas wanted.
    pub desired: u32,
    /// Replicas healthy.
    pub healthy: u32,
    /// Each replica.
    pub replicas: Vec<ReplicaHealth>,
}

/// Traffic through the agent's proxy over one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceMetrics {
    /// Length of the interval, seconds.
    pub interval_secs: f64,
    /// Requests answered in the interval.
    pub requests: u64,
    /// Of which failed (5xx or no upstream).
    pub errors: u64,
    /// errors / requests, 0 when idle.
    pub error_rate: f64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile latency, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Successful requests and health checks over all of them, percent;
    /// absent from agents that do not measure it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_percent: Option<f64>,
    /// What each replica uses, where the runtime measures it (Docker);
    /// absent from the JSON otherwise, so older readers are unaffected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaUsage>,
}

/// What one replica uses, as its runtime measures it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaUsage {
    /// Replica id.
    pub replica: String,
    /// CPU over the engine's sampling interval, percent of one CPU (may pass 100).
    pub cpu_percent: f64,
    /// Memory in use, bytes (page cache that can be reclaimed left out).
    pub memory_bytes: u64,
    /// Times the agent restarted this replica's slot after it ended.
    pub restarts: u32,
}

/// The state of a service on its agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Nothing deployed yet.
    Idle,
    /// All desired replicas healthy.
    Running,
    /// Fewer healthy replicas than desired.
    Degraded,
    /// A command is changing it.
    Deploying,
    /// Answering 503 with a maintenance message.
    Maintenance,
    /// Scaled to zero.
    Stopped,
    /// Agent not heard from (set by the controller, never by an agent).
    Unknown,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceState::Idle => "idle",
            ServiceState::Running => "running",
            ServiceState::Degraded => "degraded",
            ServiceState::Deploying => "deploying",
            ServiceState::Maintenance => "maintenance",
            ServiceState::Stopped => "stopped",
            ServiceState::Unknown => "unknown",
        })
    }
}

/// Maintenance in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceInfo {
    /// Shown to callers.
    pub message: String,
    /// When it ends by itself, if it does.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub until: Option<OffsetDateTime>,
}

/// One service as its agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    /// The service.
    pub service: ServiceName,
    /// Version serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// Version that served before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Version>,
    /// Replicas wanted.
    pub replicas_desired: u32,
    /// Replicas healthy.
    pub replicas_healthy: u32,
    /// Overall state.
    pub state: ServiceState,
    /// Maintenance, if on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceInfo>,
    /// Runtime name: `process`, `docker`, `kubernetes`.
    pub runtime: String,
    /// The stable address the agent serves it on, if it proxies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The rollout in progress (or last finished), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The strategy a deploy without overrides takes (the service's
    /// configuration); absent from agents that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

/// A threshold crossed (or recovered): by a running service, outside
/// rollouts (raised by the controller), or by the stable and the new version
/// alike during a canary (raised by the agent, which holds the rollout
/// instead of blaming the new version).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// True when raised, false when cleared.
    pub raised: bool,
    /// What crossed which threshold (the last value measured when cleared).
    pub breach: Breach,
    /// The version serving (during a canary: the new version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// During a canary: the stable version's value of the same signal over
    /// the same window, which fails as well (a dependency outage, not the
    /// release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<f64>,
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = self.breach.metric.unit();
        match (self.raised, self.stable_value) {
            (true, Some(stable)) => write!(
                f,
                "{} on the new version and {stable:.1}{unit} on the stable one: both fail alike, \
                 so a dependency outage rather than this release; the rollout is held",
                self.breach
            ),
            (true, None) => write!(f, "{}", self.breach),
            (false, Some(_)) => f.write_str(
                "the stable and the new version no longer fail alike; the rollout goes on",
            ),
            (false, None) => write!(
                f,
                "{} back within its threshold ({:.1}{unit})",
                self.breach.metric, self.breach.value
            ),
        }
    }
}

/// Host resources, from sysinfo.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    /// CPU use across cores, percent.
    pub cpu_percent: f32,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory in all, bytes.
    pub memory_total_bytes: u64,
    /// Disk in use where the state directory lives, bytes.
    pub disk_used_bytes: u64,
    /// Disk in all there, bytes.
    pub disk_total_bytes: u64,
}

/// An agent-wide event.
// Heartbeats are nearly every agent event and each is decoded once then
// dropped: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Liveness, host metrics and every service's snapshot.
    Heartbeat(Heartbeat),
    /// A message on a command subject that could not be attributed to a service.
    Refused {
        /// The subject it arrived on (truncated).
        subject: String,
        /// Machine-readable reason.
        reason: RefusalReason,
        /// What was wrong.
        detail: String,
    },
}

/// The agent's periodic heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Unique per agent process.
    pub agent_id: String,
    /// Its environment.
    pub environment: EnvName,
    /// The host it runs on (absent from agents before hosts); `host` below
    /// is that host's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<HostName>,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Seconds between heartbeats, so a reader can tell when one is late.
    pub interval_secs: u64,
    /// ferry version of the agent.
    pub agent_version: String,
    /// Host resources.
    pub host: HostMetrics,
    /// Every managed service.
    pub services: Vec<ServiceSnapshot>,
    /// Set on the first heartbeat after the agent lost NATS and got it back:
    /// the window in which its periodic events (health, metrics, progress)
    /// may be missing. Outcomes are not: they are retried until stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
    /// The agent's clock when it sent this heartbeat, so a reader can
    /// measure the skew against the server's clock (`ferry doctor`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub sent_at: Option<OffsetDateTime>,
    /// Public keys whose signed commands the agent accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Public keys of the reviewers whose approvals count at the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviewer_keys: Vec<String>,
    /// Approvals a deploy must carry at the agent (0: not gated).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approvals_required: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A time the agent was cut off from NATS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// When the connection was lost.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// When it was back.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
}

impl Payload for AgentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AgentEvent::Heartbeat(_) => "ferry.v1.agent.heartbeat",
            AgentEvent::Refused { .. } => "ferry.v1.agent.refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_usage_is_optional_on_the_wire() {
        let bare = serde_json::to_value(ServiceMetrics::default()).unwrap();
        assert!(bare.get("replicas").is_none(), "{bare}");
        let older = serde_json::json!({
            "interval_secs": 1.0, "requests": 0, "errors": 0, "error_rate": 0.0,
            "requests_per_sec": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0
        });
        let read: ServiceMetrics = serde_json::from_value(older).unwrap();
        assert!(read.replicas.is_empty());
        let with = ServiceMetrics {
            replicas: vec![ReplicaUsage {
                replica: "web-1.0.0-1-abcdef".into(),
                cpu_percent: 1.5,
                memory_bytes: 4096,
                restarts: 2,
            }],
            ..Default::default()
        };
        let back: ServiceMetrics =
            serde_json::from_value(serde_json::to_value(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }

    #[test]
    fn a_service_event_names_its_host_and_older_events_have_none() {
        let older = serde_json::json!({
            "environment": "production", "service": "web",
            "command_id": "6b0f7c1e-3c1a-4d5e-9f00-0123456789ab",
            "event": "accepted", "action": "deploy"
        });
        let mut read: ServiceEvent = serde_json::from_value(older.clone()).unwrap();
        assert_eq!(read.host, None);
        assert!(serde_json::to_value(&read).unwrap().get("host").is_none());
        read.host = Some(HostName::new("web-2").unwrap());
        let json = serde_json::to_value(&read).unwrap();
        assert_eq!(json["host"], "web-2");
        let back: ServiceEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, read);
        let mut bad = older;
        bad["host"] = "Web_2".into();
        assert!(serde_json::from_value::<ServiceEvent>(bad).is_err());
    }

    #[test]
    fn a_replica_s_reason_is_optional_on_the_wire() {
        let mut replica = ReplicaHealth {
            replica: "web-1-0-0-00001".into(),
            version: Version::new("1.0.0").unwrap(),
            address: "10.0.0.1".into(),
            healthy: false,
            restarts: 4,
            reason: Some("CrashLoopBackOff: back-off 40s restarting".into()),
        };
        let json = serde_json::to_value(&replica).unwrap();
        assert_eq!(json["reason"], "CrashLoopBackOff: back-off 40s restarting");
        let back: ReplicaHealth = serde_json::from_value(json).unwrap();
        assert_eq!(back, replica);
        replica.reason = None;
        let json = serde_json::to_value(&replica).unwrap();
        assert!(json.get("reason").is_none(), "{json}");
        let back: ReplicaHealth = serde_json::from_value(json).unwrap();
        assert_eq!(back, replica);
    }

    #[test]
    fn an_alert_round_trips_and_older_alerts_have_no_stable_value() {
        let breach = Breach {
            metric: crate::rollout::Metric::ErrorRate,
            value: 30.2,
            threshold: 5.0,
            evidence: None,
        };
        let outage = Alert {
            raised: true,
            breach: breach.clone(),
            version: Some(Version::new("2.0.0").unwrap()),
            stable_value: Some(29.7),
        };
        let back: Alert = serde_json::from_value(serde_json::to_value(&outage).unwrap()).unwrap();
        assert_eq!(back, outage);
        assert!(outage.to_string().contains("dependency outage"), "{outage}");
        let older = serde_json::json!({
            "raised": true,
            "breach": serde_json::to_value(&breach).unwrap(),
        });
        let read: Alert = serde_json::from_value(older).unwrap();
        assert_eq!(read.stable_value, None);
        assert_eq!(read.to_string(), "error rate 30.2% > 5.0%");
    }
}
