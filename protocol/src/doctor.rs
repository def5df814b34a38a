//! What `ferry doctor` asks the controller about an installation, and the
//! rollback drill `ferry drill rollback` records in the audit trail.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::Heartbeat;
use crate::names::{EnvName, ServiceName, Version};

/// The reply to [`crate::api::ApiRequest::Installation`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Installation {
    /// The controller's public signing key: every agent must trust it.
    pub signing_key: String,
    /// The controller's clock when it answered.
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
    /// How long a command stays valid after it is signed.
    pub command_ttl_secs: u64,
    /// How long after its last heartbeat an agent counts as down.
    pub agent_timeout_secs: u64,
    /// The pipeline, in order.
    pub environments: Vec<EnvironmentSetup>,
}

/// One environment of the controller's pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentSetup {
    /// Its name.
    pub environment: EnvName,
    /// Deploy approvals it needs (0: not gated).
    pub approvals_required: u32,
    /// Public keys of its reviewers, as the controller is configured.
    pub reviewer_keys: Vec<String>,
    /// Its agent's last heartbeat, if any was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSighting>,
}

/// An agent's last heartbeat and when the server stored it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentSighting {
    /// When JetStream stored it (the server's clock).
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The heartbeat.
    pub heartbeat: Heartbeat,
}

/// A finished rollback drill: back to the previous version and forward again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillReport {
    /// Where.
    pub environment: EnvName,
    /// Which service.
    pub service: ServiceName,
    /// The version serving before the drill (and after it, when it succeeded).
    pub serving: Version,
    /// The version it rolled back to.
    pub previous: Version,
    /// Milliseconds the health-gated rollback took; absent if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_ms: Option<u64>,
    /// Milliseconds the health-gated roll forward took; absent if it failed
    /// or did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_ms: Option<u64>,
    /// Requests the drill's own load sent to the stable address.
    pub requests: u64,
    /// Those that failed (connection error or a 5xx status).
    pub failed_requests: u64,
    /// Whether both legs succeeded.
    pub succeeded: bool,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl DrillReport {
    /// The drill in one sentence, as the audit trail shows it.
    pub fn sentence(&self) -> String {
        let leg = |ms: Option<u64>| match ms {
            Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
            None => "did not finish".to_owned(),
        };
        let mut text = format!(
            "rollback drill {} -> {} -> {}: back {}, forward {}, {} of {} requests failed",
            self.serving,
            self.previous,
            self.serving,
            leg(self.back_ms),
            leg(self.forward_ms),
            self.failed_requests,
            self.requests
        );
        if let Some(problem) = &self.problem {
            text.push_str(": ");
            text.push_str(problem);
        }
        text
    }
}

/// One check of `ferry doctor`, as `--output json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorCheck {
    /// The group: `nats`, `jetstream`, `streams`, `controller`, `agents`...
    pub group: String,
    /// What was checked, e.g. `stream FERRY_HISTORY` or `agent dev`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Everything `ferry doctor` checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// Whether every check passed.
    pub ok: bool,
    /// The checks, in the order they ran.
    pub checks: Vec<DoctorCheck>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiRequest;
    use crate::event::HostMetrics;

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            host_name: None,
            agent_id: "a1".into(),
            environment: EnvName::new("dev").unwrap(),
            started_at: OffsetDateTime::UNIX_EPOCH,
            interval_secs: 5,
            agent_version: "0.1.0".into(),
            host: HostMetrics::default(),
            services: Vec::new(),
            gap: None,
            sent_at: Some(OffsetDateTime::UNIX_EPOCH),
            trusted_keys: vec!["UCONTROLLER".into()],
            reviewer_keys: vec!["UREVIEWER".into()],
            approvals_required: 1,
        }
    }

    #[test]
    fn heartbeat_keys_and_clock_round_trip_and_an_older_heartbeat_decodes() {
        let beat = heartbeat();
        let json = serde_json::to_value(&beat).unwrap();
        assert_eq!(json["trusted_keys"][0], "UCONTROLLER");
        assert_eq!(serde_json::from_value::<Heartbeat>(json).unwrap(), beat);

        let mut older = serde_json::to_value(&beat).unwrap();
        for field in [
            "sent_at",
            "trusted_keys",
            "reviewer_keys",
            "approvals_required",
        ] {
            older.as_object_mut().unwrap().remove(field);
        }
        let read: Heartbeat = serde_json::from_value(older).unwrap();
        assert_eq!(read.sent_at, None);
        assert!(read.trusted_keys.is_empty() && read.reviewer_keys.is_empty());
        assert_eq!(read.approvals_required, 0);
    }

    #[test]
    fn installation_and_drill_requests_round_trip() {
        let installation = Installation {
            signing_key: "UCONTROLLER".into(),
            now: OffsetDateTime::UNIX_EPOCH,
            command_ttl_secs: 3600,
            agent_timeout_secs: 15,
            environments: vec![EnvironmentSetup {
                environment: EnvName::new("dev").unwrap(),
                approvals_required: 0,
                reviewer_keys: Vec::new(),
                agent: Some(AgentSighting {
                    received_at: OffsetDateTime::UNIX_EPOCH,
                    heartbeat: heartbeat(),
                }),
            }],
        };
        let json = serde_json::to_value(&installation).unwrap();
        assert_eq!(
            serde_json::from_value::<Installation>(json).unwrap(),
            installation
        );

        let request: ApiRequest = serde_json::from_str(r#"{"op": "installation"}"#).unwrap();
        assert_eq!(request.op(), crate::subject::ApiOp::Installation);

        let drill = DrillReport {
            environment: EnvName::new("dev").unwrap(),
            service: ServiceName::new("web").unwrap(),
            serving: Version::new("1.1.0").unwrap(),
            previous: Version::new("1.0.0").unwrap(),
            back_ms: Some(1500),
            forward_ms: None,
            requests: 40,
            failed_requests: 0,
            succeeded: false,
            problem: Some("the roll forward failed".into()),
        };
        let request = ApiRequest::RecordDrill {
            drill: Box::new(drill.clone()),
            actor: Some("alice".into()),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["op"], "record_drill");
        assert!(json["drill"].get("forward_ms").is_none());
        assert_eq!(serde_json::from_value::<ApiRequest>(json).unwrap(), request);
        assert_eq!(
            drill.sentence(),
            "rollback drill 1.1.0 -> 1.0.0 -> 1.1.0: back 1.5 s, forward did not finish, \
             0 of 40 requests failed: the roll forward failed"
        );
    }
}
