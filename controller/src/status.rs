//! Builds `ferry status` rows from the agents' last heartbeats and the
//! deployments bucket. Pure, so the merge rules are tested without a server.
//! Once an agent has reported, its heartbeat's services are the rows: the
//! deployments bucket adds outcomes to them, never services of its own.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferry_protocol::api::StatusRow;
use ferry_protocol::event::{ServiceSnapshot, ServiceState};
use ferry_protocol::{EnvName, ServiceName};
use time::OffsetDateTime;

use crate::records::{AgentRecord, DeploymentRecord};

/// One row per service per environment, in pipeline order then by service.
///
/// Every environment appears, even one never heard from (one row without a
/// service), so scripts reading `ferry status --output json` always see the
/// whole pipeline.
pub(crate) fn rows(
    environments: &[EnvName],
    agents: &HashMap<EnvName, AgentRecord>,
    deployments: &[DeploymentRecord],
    now: OffsetDateTime,
    agent_timeout: Duration,
) -> Vec<StatusRow> {
    let mut out = Vec::new();
    for env in environments {
        let agent = agents.get(env);
        let agent_last_seen = agent.map(|a| a.received_at);
        // A heartbeat stamped slightly in the future (server and controller
        // clocks differ) still counts as recent.
        let agent_up = agent_last_seen.is_some_and(|seen| now - seen <= agent_timeout);

        let mut services: BTreeMap<
            &ServiceName,
            (Option<&ServiceSnapshot>, Option<&DeploymentRecord>),
        > = BTreeMap::new();
        if let Some(agent) = agent {
            for snapshot in &agent.heartbeat.services {
                services.entry(&snapshot.service).or_default().0 = Some(snapshot);
            }
        }
        for record in deployments.iter().filter(|d| &d.environment == env) {
            match agent {
                // The agent says what it manages: a record of any other
                // service (a command to a name it never had) is no row.
                Some(_) => {
                    if let Some(entry) = services.get_mut(&record.service) {
                        entry.1 = Some(record);
                    }
                }
                None => services.entry(&record.service).or_default().1 = Some(record),
            }
        }

        if services.is_empty() {
            out.push(StatusRow {
                environment: env.clone(),
                service: None,
                version: None,
                replicas_desired: 0,
                replicas_healthy: 0,
                state: if agent_up {
                    ServiceState::Idle
                } else {
                    ServiceState::Unknown
                },
                last_outcome: None,
                last_outcome_at: None,
                agent_last_seen,
                agent_up,
                maintenance: None,
                address: None,
                rollout: None,
            });
            continue;
        }

        for (service, (snapshot, record)) in services {
            let version = snapshot
                .and_then(|s| s.version.clone())
                .or_else(|| record.and_then(|r| r.serving.clone()));
            let state = match snapshot {
                Some(s) if agent_up => s.state,
                // Not reported by a live agent, or the agent is silent: the
                // controller cannot vouch for anything.
                _ => ServiceState::Unknown,
            };
            out.push(StatusRow {
                environment: env.clone(),
                service: Some(service.clone()),
                version,
                replicas_desired: snapshot.map_or(0, |s| s.replicas_desired),
                // A silent agent's last count could be long stale; report none
                // healthy rather than a number nobody can confirm.
                replicas_healthy: if agent_up {
                    snapshot.map_or(0, |s| s.replicas_healthy)
                } else {
                    0
                },
                state,
                last_outcome: record.map(|r| r.state.as_str().to_owned()),
                last_outcome_at: record.map(|r| r.updated_at),
                agent_last_seen,
                agent_up,
                maintenance: snapshot.and_then(|s| s.maintenance.clone()),
                address: snapshot.and_then(|s| s.address.clone()),
                rollout: snapshot.and_then(|s| s.rollout.clone()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::event::{Heartbeat, HostMetrics};
    use ferry_protocol::Version;

    use crate::records::CommandState;

    fn env(name: &str) -> EnvName {
        EnvName::new(name).unwrap()
    }

    fn svc(name: &str) -> ServiceName {
        ServiceName::new(name).unwrap()
    }

    fn pipeline() -> Vec<EnvName> {
        vec![env("dev"), env("acceptance"), env("production")]
    }

    fn snapshot(service: &str, version: &str) -> ServiceSnapshot {
        ServiceSnapshot {
            service: svc(service),
            version: Some(Version::new(version).unwrap()),
            previous: None,
            replicas_desired: 2,
            replicas_healthy: 2,
            state: ServiceState::Running,
            maintenance: None,
            runtime: "process".into(),
            address: Some("127.0.0.1:8080".into()),
            rollout: None,
            strategy: None,
        }
    }

    fn agent(env_name: &str, seen: OffsetDateTime, services: Vec<ServiceSnapshot>) -> AgentRecord {
        AgentRecord {
            heartbeat: Heartbeat {
                host_name: None,
                agent_id: "a1".into(),
                environment: env(env_name),
                started_at: seen,
                interval_secs: 5,
                agent_version: "0.1.0".into(),
                host: HostMetrics::default(),
                services,
                gap: None,
                sent_at: None,
                trusted_keys: Vec::new(),
                reviewer_keys: Vec::new(),
                approvals_required: 0,
            },
            received_at: seen,
        }
    }

    fn record(env_name: &str, service: &str, state: CommandState) -> DeploymentRecord {
        DeploymentRecord {
            environment: env(env_name),
            service: svc(service),
            command_id: None,
            action: None,
            version: None,
            actor: None,
            state,
            detail: String::new(),
            updated_at: OffsetDateTime::UNIX_EPOCH,
            serving: Some(Version::new("0.9").unwrap()),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(15);

    #[test]
    fn nothing_known_still_lists_every_environment_in_order() {
        let rows = rows(
            &pipeline(),
            &HashMap::new(),
            &[],
            OffsetDateTime::now_utc(),
            TIMEOUT,
        );
        let envs: Vec<&str> = rows.iter().map(|r| r.environment.as_str()).collect();
        assert_eq!(envs, ["dev", "acceptance", "production"]);
        assert!(rows
            .iter()
            .all(|r| r.service.is_none() && r.state == ServiceState::Unknown && !r.agent_up));
    }

    #[test]
    fn heartbeats_and_outcomes_merge_per_service() {
        let now = OffsetDateTime::now_utc();
        let agents = HashMap::from([(
            env("dev"),
            agent(
                "dev",
                now,
                vec![snapshot("web", "1.1"), snapshot("api", "3.0")],
            ),
        )]);
        let deployments = [
            record("dev", "web", CommandState::Succeeded),
            // A command to a name dev's agent does not manage.
            record("dev", "webx", CommandState::Issued),
            // Known only from the bucket: acceptance never reported.
            record("acceptance", "worker", CommandState::Refused),
        ];
        let rows = rows(&pipeline(), &agents, &deployments, now, TIMEOUT);
        let dev: Vec<_> = rows
            .iter()
            .filter(|r| r.environment == env("dev"))
            .collect();
        let names: Vec<&str> = dev
            .iter()
            .map(|r| r.service.as_ref().unwrap().as_str())
            .collect();
        assert_eq!(names, ["api", "web"]);

        let web = dev[1];
        assert!(web.agent_up);
        assert_eq!(web.state, ServiceState::Running);
        assert_eq!(web.version.as_ref().unwrap().as_str(), "1.1");
        assert_eq!(web.replicas_healthy, 2);
        assert_eq!(web.last_outcome.as_deref(), Some("succeeded"));
        assert_eq!(web.address.as_deref(), Some("127.0.0.1:8080"));

        let api = dev[0];
        assert_eq!(api.last_outcome, None);

        // Known only from the deployments bucket: state unknown, last serving version.
        let worker = &rows[2];
        assert_eq!(worker.environment, env("acceptance"));
        assert_eq!(worker.state, ServiceState::Unknown);
        assert_eq!(worker.version.as_ref().unwrap().as_str(), "0.9");
        assert_eq!(worker.last_outcome.as_deref(), Some("refused"));

        assert_eq!(rows.len(), 4);
        assert!(rows[3].service.is_none());
    }

    #[test]
    fn a_silent_agent_makes_its_services_unknown() {
        let now = OffsetDateTime::now_utc();
        let seen = now - Duration::from_secs(16);
        let agents =
            HashMap::from([(env("dev"), agent("dev", seen, vec![snapshot("web", "1.1")]))]);
        let rows = rows(&[env("dev")], &agents, &[], now, TIMEOUT);
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].agent_up);
        assert_eq!(rows[0].agent_last_seen, Some(seen));
        assert_eq!(rows[0].state, ServiceState::Unknown);
        assert_eq!(rows[0].replicas_healthy, 0);
        assert_eq!(rows[0].version.as_ref().unwrap().as_str(), "1.1");
    }

    #[test]
    fn a_live_agent_without_services_is_idle() {
        let now = OffsetDateTime::now_utc();
        let agents = HashMap::from([(env("dev"), agent("dev", now, vec![]))]);
        let rows = rows(&[env("dev")], &agents, &[], now, TIMEOUT);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].agent_up);
        assert_eq!(rows[0].state, ServiceState::Idle);
        assert_eq!(rows[0].service, None);
    }
}
