//! Builds `ferry status` rows from the agents' last heartbeats and the
//! deployments bucket. Pure, so the merge rules are tested without a server.
//! Once an agent has reported, its heartbeat's services are the rows: the
//! deployments bucket adds outcomes to them, never services of its own.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferry_protocol::api::{HostStatus, StatusRow};
use ferry_protocol::event::{ServiceSnapshot, ServiceState};
use ferry_protocol::{EnvName, ServiceName, Version};
use ferry_waves::WaveRecord;
use time::OffsetDateTime;

use crate::records::{AgentRecord, DeploymentRecord};

/// What one service's row is made of: each host's snapshot of it (with the
/// heartbeat it came in) and the deployments bucket's record.
type ServiceSources<'a> = (
    Vec<(&'a AgentRecord, &'a ServiceSnapshot)>,
    Option<&'a DeploymentRecord>,
);

/// One row per service per environment, in pipeline order then by service.
///
/// Every environment appears, even one never heard from (one row without a
/// service), so scripts reading `ferry status --output json` always see the
/// whole pipeline. With several hosts, a row sums up the live ones (the
/// version most of them serve, replicas added up) and lists each in
/// `hosts`; a host whose agent is silent is shown down and counts for
/// nothing.
pub(crate) fn rows(
    environments: &[EnvName],
    hosts: &HashMap<EnvName, Vec<AgentRecord>>,
    deployments: &[DeploymentRecord],
    waves: &[WaveRecord],
    now: OffsetDateTime,
    agent_timeout: Duration,
) -> Vec<StatusRow> {
    let mut out = Vec::new();
    for env in environments {
        let agents: &[AgentRecord] = hosts.get(env).map(Vec::as_slice).unwrap_or_default();
        // A heartbeat stamped slightly in the future (server and controller
        // clocks differ) still counts as recent.
        let is_up = |a: &AgentRecord| now - a.received_at <= agent_timeout;
        let agent_last_seen = agents.iter().map(|a| a.received_at).max();
        let agent_up = agents.iter().any(is_up);

        let mut services: BTreeMap<&ServiceName, ServiceSources> = BTreeMap::new();
        for agent in agents {
            for snapshot in &agent.heartbeat.services {
                services
                    .entry(&snapshot.service)
                    .or_default()
                    .0
                    .push((agent, snapshot));
            }
        }
        for record in deployments.iter().filter(|d| &d.environment == env) {
            if agents.is_empty() {
                services.entry(&record.service).or_default().1 = Some(record);
            } else if let Some(entry) = services.get_mut(&record.service) {
                // The agents say what they manage: a record of any other
                // service (a command to a name they never had) is no row.
                entry.1 = Some(record);
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
                hosts: Vec::new(),
                wave: None,
            });
            continue;
        }

        for (service, (snapshots, record)) in services {
            let wave = waves
                .iter()
                .find(|w| &w.environment == env && &w.service == service)
                .map(|w| w.wave.clone());
            let live: Vec<&ServiceSnapshot> = snapshots
                .iter()
                .filter(|(agent, _)| is_up(agent))
                .map(|(_, s)| *s)
                .collect();
            // What the row sums up: the live hosts, or (none live) the
            // last word of any, so a silent agent's version still shows.
            let shown: Vec<&ServiceSnapshot> = if live.is_empty() {
                snapshots.iter().map(|(_, s)| *s).collect()
            } else {
                live.clone()
            };
            let version = most_served(&shown).or_else(|| record.and_then(|r| r.serving.clone()));
            let state = if live.is_empty() {
                // Not reported by a live agent, or the agent is silent: the
                // controller cannot vouch for anything.
                ServiceState::Unknown
            } else {
                live.iter()
                    .map(|s| s.state)
                    .find(|state| *state != ServiceState::Running)
                    .unwrap_or(ServiceState::Running)
            };
            let host_rows = snapshots
                .iter()
                .filter_map(|(agent, snapshot)| {
                    let host = agent.heartbeat.host_name.clone()?;
                    let up = is_up(agent);
                    Some(HostStatus {
                        step: wave.as_ref().and_then(|w| w.step(&host)).map(|s| s.state),
                        host,
                        version: snapshot.version.clone(),
                        replicas_desired: snapshot.replicas_desired,
                        replicas_healthy: if up { snapshot.replicas_healthy } else { 0 },
                        state: if up {
                            snapshot.state
                        } else {
                            ServiceState::Unknown
                        },
                        agent_last_seen: agent.received_at,
                        agent_up: up,
                        address: snapshot.address.clone(),
                        rollout: snapshot.rollout.clone(),
                    })
                })
                .collect();
            out.push(StatusRow {
                environment: env.clone(),
                service: Some(service.clone()),
                version,
                replicas_desired: shown.iter().map(|s| s.replicas_desired).sum(),
                // A silent agent's last count could be long stale; report none
                // healthy rather than a number nobody can confirm.
                replicas_healthy: live.iter().map(|s| s.replicas_healthy).sum(),
                state,
                last_outcome: record.map(|r| r.state.as_str().to_owned()),
                last_outcome_at: record.map(|r| r.updated_at),
                agent_last_seen,
                agent_up,
                maintenance: shown.iter().find_map(|s| s.maintenance.clone()),
                address: shown.iter().find_map(|s| s.address.clone()),
                rollout: shown
                    .iter()
                    .filter_map(|s| s.rollout.clone())
                    .find(|r| {
                        matches!(
                            r.state,
                            ferry_protocol::rollout::RolloutState::Progressing
                                | ferry_protocol::rollout::RolloutState::Paused
                        )
                    })
                    .or_else(|| shown.iter().find_map(|s| s.rollout.clone())),
                hosts: host_rows,
                wave,
            });
        }
    }
    out
}

/// The version most of `snapshots` serve (ties: the first host's).
fn most_served(snapshots: &[&ServiceSnapshot]) -> Option<Version> {
    let versions: Vec<&Version> = snapshots
        .iter()
        .filter_map(|s| s.version.as_ref())
        .collect();
    let count = |v: &Version| versions.iter().filter(|x| **x == v).count();
    versions
        .iter()
        .copied()
        .max_by(|a, b| count(a).cmp(&count(b)).then(std::cmp::Ordering::Greater))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::CommandState;
    use ferry_protocol::event::{Heartbeat, HostMetrics};

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
            vec![agent(
                "dev",
                now,
                vec![snapshot("web", "1.1"), snapshot("api", "3.0")],
            )],
        )]);
        let deployments = [
            record("dev", "web", CommandState::Succeeded),
            // A command to a name dev's agent does not manage.
            record("dev", "webx", CommandState::Issued),
            // Known only from the bucket: acceptance never reported.
            record("acceptance", "worker", CommandState::Refused),
        ];
        let rows = rows(&pipeline(), &agents, &deployments, &[], now, TIMEOUT);
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
        let agents = HashMap::from([(
            env("dev"),
            vec![agent("dev", seen, vec![snapshot("web", "1.1")])],
        )]);
        let rows = rows(&[env("dev")], &agents, &[], &[], now, TIMEOUT);
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
        let agents = HashMap::from([(env("dev"), vec![agent("dev", now, vec![])])]);
        let rows = rows(&[env("dev")], &agents, &[], &[], now, TIMEOUT);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].agent_up);
        assert_eq!(rows[0].state, ServiceState::Idle);
        assert_eq!(rows[0].service, None);
    }

    fn on_host(name: &str, seen: OffsetDateTime, version: &str) -> AgentRecord {
        let mut record = agent("production", seen, vec![snapshot("web", version)]);
        record.heartbeat.host_name = Some(ferry_protocol::HostName::new(name).unwrap());
        record
    }

    #[test]
    fn several_hosts_sum_up_in_one_row_and_a_silent_host_counts_for_nothing() {
        let now = OffsetDateTime::now_utc();
        let silent = now - Duration::from_secs(60);
        let hosts = HashMap::from([(
            env("production"),
            vec![
                on_host("web-1", now, "1.4.0"),
                on_host("web-2", now, "1.4.0"),
                on_host("web-3", silent, "1.3.0"),
            ],
        )]);
        let rows = rows(&[env("production")], &hosts, &[], &[], now, TIMEOUT);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.version.as_ref().unwrap().as_str(), "1.4.0");
        assert_eq!(row.replicas_desired, 4);
        assert_eq!(row.replicas_healthy, 4);
        assert_eq!(row.state, ServiceState::Running);
        let shown: Vec<(&str, bool, u32)> = row
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.agent_up, h.replicas_healthy))
            .collect();
        assert_eq!(
            shown,
            [("web-1", true, 2), ("web-2", true, 2), ("web-3", false, 0)]
        );
        assert_eq!(row.hosts[2].state, ServiceState::Unknown);
    }
}
