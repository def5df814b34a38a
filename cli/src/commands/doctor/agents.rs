//! Each environment of the controller's pipeline: a live agent, trusting
//! the controller's key and (where gated) the pipeline's reviewer keys,
//! with a clock close to the server's, and per service a previous version
//! to roll back to.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_protocol::doctor::{AgentSighting, EnvironmentSetup, Installation};

use super::checks::Checks;

/// Adds the agent checks of every environment.
pub(super) fn check(checks: &mut Checks, installation: &Installation, max_skew: Duration) {
    for env in &installation.environments {
        let name = format!("agent {}", env.environment);
        let Some(agent) = &env.agent else {
            checks.problem(
                "agents",
                name,
                "no heartbeat was ever stored",
                start_agent_fix(env),
            );
            continue;
        };
        let age = installation.now - agent.received_at;
        if age.whole_seconds() as u64 > installation.agent_timeout_secs {
            checks.problem(
                "agents",
                name,
                format!(
                    "last heartbeat {}s ago (down after {}s)",
                    age.whole_seconds(),
                    installation.agent_timeout_secs
                ),
                start_agent_fix(env),
            );
            continue;
        }
        checks.ok(
            "agents",
            name,
            format!(
                "{} heard {}s ago, ferry-agent {}",
                agent.heartbeat.agent_id,
                age.whole_seconds().max(0),
                agent.heartbeat.agent_version
            ),
        );
        trust(checks, installation, env, agent);
        reviewers(checks, env, agent);
        clock(checks, installation, env, agent, max_skew);
        rollbacks(checks, env, agent);
    }
}

fn start_agent_fix(env: &EnvironmentSetup) -> String {
    format!(
        "start ferry-agent with environment = \"{}\" and check that it reaches this NATS server \
         (`journalctl -u ferry-agent`)",
        env.environment
    )
}

fn trust(
    checks: &mut Checks,
    installation: &Installation,
    env: &EnvironmentSetup,
    agent: &AgentSighting,
) {
    let name = format!("trust {}", env.environment);
    let key = &installation.signing_key;
    if agent.heartbeat.trusted_keys.contains(key) {
        checks.ok("keys", name, "the agent trusts the controller's key");
    } else if agent.heartbeat.trusted_keys.is_empty() {
        checks.problem(
            "keys",
            name,
            "the agent does not report its trusted keys (older than this ferry)",
            "upgrade ferry-agent",
        );
    } else {
        checks.problem(
            "keys",
            name,
            format!(
                "the agent does not trust the controller's key {key}: it refuses every command \
                 (it trusts {})",
                agent.heartbeat.trusted_keys.join(", ")
            ),
            format!(
                "add \"{key}\" to trusted_keys in the {} agent's configuration and restart it",
                env.environment
            ),
        );
    }
}

fn reviewers(checks: &mut Checks, env: &EnvironmentSetup, agent: &AgentSighting) {
    let gated = env.approvals_required > 0 || agent.heartbeat.approvals_required > 0;
    if !gated {
        return;
    }
    let name = format!("reviewers {}", env.environment);
    let controller: BTreeSet<&String> = env.reviewer_keys.iter().collect();
    let agent_keys: BTreeSet<&String> = agent.heartbeat.reviewer_keys.iter().collect();
    let mut problems = Vec::new();
    let missing: Vec<&str> = controller
        .difference(&agent_keys)
        .map(|k| k.as_str())
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "the agent does not accept the approvals of {}",
            missing.join(", ")
        ));
    }
    let extra: Vec<&str> = agent_keys
        .difference(&controller)
        .map(|k| k.as_str())
        .collect();
    if !extra.is_empty() {
        problems.push(format!(
            "the agent accepts keys the pipeline does not list: {}",
            extra.join(", ")
        ));
    }
    if env.approvals_required != agent.heartbeat.approvals_required {
        problems.push(format!(
            "the controller asks for {} approvals, the agent for {}",
            env.approvals_required, agent.heartbeat.approvals_required
        ));
    }
    if problems.is_empty() {
        checks.ok(
            "keys",
            name,
            format!(
                "{} reviewer keys, {} approvals, as the pipeline",
                controller.len(),
                env.approvals_required
            ),
        );
    } else {
        checks.problem(
            "keys",
            name,
            problems.join("; "),
            format!(
                "make reviewer_keys and approvals_required in the {env} agent's configuration the \
                 reviewers' keys and approvals_required of [pipeline.{env}] in the controller's",
                env = env.environment
            ),
        );
    }
}

fn clock(
    checks: &mut Checks,
    installation: &Installation,
    env: &EnvironmentSetup,
    agent: &AgentSighting,
    max_skew: Duration,
) {
    let name = format!("clock {}", env.environment);
    let Some(sent_at) = agent.heartbeat.sent_at else {
        return checks.problem(
            "clocks",
            name,
            "the agent does not report its clock (older than this ferry)",
            "upgrade ferry-agent",
        );
    };
    // Against the server's clock, which stamped the heartbeat on arrival.
    let skew = (sent_at - agent.received_at).abs();
    let skew_secs = skew.as_seconds_f64();
    if skew_secs <= max_skew.as_secs_f64() {
        checks.ok(
            "clocks",
            name,
            format!("{skew_secs:.1}s from the NATS server's clock"),
        );
    } else {
        checks.problem(
            "clocks",
            name,
            format!(
                "the agent's clock is {skew_secs:.0}s off the NATS server's (at most {}s; \
                 commands expire {}s after they are signed, by the agent's clock)",
                max_skew.as_secs(),
                installation.command_ttl_secs
            ),
            format!(
                "synchronise the {} agent host's clock (chrony or systemd-timesyncd)",
                env.environment
            ),
        );
    }
}

fn rollbacks(checks: &mut Checks, env: &EnvironmentSetup, agent: &AgentSighting) {
    for service in &agent.heartbeat.services {
        let name = format!("rollback {}/{}", env.environment, service.service);
        match (&service.version, &service.previous) {
            (None, _) => checks.ok("rollbacks", name, "not deployed yet"),
            (Some(version), Some(previous)) => checks.ok(
                "rollbacks",
                name,
                format!("{version} can roll back to {previous}"),
            ),
            (Some(version), None) => checks.problem(
                "rollbacks",
                name,
                format!("{version} runs and the agent knows no previous version to roll back to"),
                format!(
                    "deploy {} once more after another version (the agent keeps the one before)",
                    service.service
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::event::{Heartbeat, HostMetrics};
    use ferry_protocol::EnvName;
    use time::OffsetDateTime;

    use super::*;

    fn installation(skew_secs: i64, reviewer_keys: Vec<String>) -> Installation {
        let now = OffsetDateTime::now_utc();
        Installation {
            signing_key: "UCONTROLLER".into(),
            now,
            command_ttl_secs: 3600,
            agent_timeout_secs: 15,
            environments: vec![EnvironmentSetup {
                environment: EnvName::new("production").unwrap(),
                approvals_required: 1,
                reviewer_keys: vec!["UALICE".into()],
                agent: Some(AgentSighting {
                    received_at: now,
                    heartbeat: Heartbeat {
                        host_name: None,
                        agent_id: "a1".into(),
                        environment: EnvName::new("production").unwrap(),
                        started_at: now,
                        interval_secs: 5,
                        agent_version: "0.1.0".into(),
                        host: HostMetrics::default(),
                        services: Vec::new(),
                        gap: None,
                        sent_at: Some(now + time::Duration::seconds(skew_secs)),
                        trusted_keys: vec!["UCONTROLLER".into()],
                        reviewer_keys,
                        approvals_required: 1,
                    },
                }),
            }],
        }
    }

    fn failed(installation: &Installation) -> Vec<String> {
        let mut checks = Checks::default();
        check(&mut checks, installation, Duration::from_secs(30));
        checks
            .0
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn matching_keys_and_a_close_clock_pass() {
        assert!(failed(&installation(-2, vec!["UALICE".into()])).is_empty());
    }

    #[test]
    fn a_skewed_clock_either_way_and_other_reviewer_keys_are_problems() {
        let problems = failed(&installation(-120, vec!["UBOB".into()]));
        assert_eq!(problems, ["reviewers production", "clock production"]);
        let problems = failed(&installation(120, vec!["UALICE".into()]));
        assert_eq!(problems, ["clock production"]);
    }
}
