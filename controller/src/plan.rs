//! `ferry deploy --dry-run`: what a deploy would do, from what the
//! controller knows (the release, the pipeline's configuration, the approvals
//! recorded, the agent's last heartbeat), without issuing anything: no
//! command, no history record, no bucket written.

use ferry_protocol::api::{DeployPlan, GateVerdict, PlannedApprovals};
use ferry_protocol::approval::SignedApproval;
use ferry_protocol::command::{Action, Command};
use ferry_protocol::release::Release;
use ferry_protocol::rollout::{RolloutOptions, Strategy, HOTFIX_STEPS};
use ferry_protocol::{EnvName, HostName, ServiceName, Version};
use time::OffsetDateTime;

use crate::{promotion, waves, Shared};

/// The deploy of `release` that `ferry deploy` issues, and this plans.
pub(crate) fn deploy_action(
    release: &Release,
    replicas: Option<u32>,
    approvals: Vec<SignedApproval>,
    rollout: Option<Box<RolloutOptions>>,
    hotfix: bool,
) -> Action {
    Action::Deploy {
        release: release.spec(),
        replicas,
        health: None,
        approvals,
        rollout,
        hotfix: hotfix || release.hotfix,
    }
}

/// The published release a deploy names, or the sentence `ferry deploy`
/// answers when there is none.
pub(crate) async fn published_release(
    shared: &Shared,
    service: &ServiceName,
    version: &Version,
) -> Result<Release, String> {
    shared
        .store
        .release(service, version)
        .await
        .map_err(|e| format!("the controller could not read the releases: {e}"))?
        .map(|record| record.release)
        .ok_or_else(|| {
            format!(
                "unknown release {service} {version}: publish it first with ferry release publish"
            )
        })
}

/// What a deploy would be asked for.
pub(crate) struct Request {
    pub environment: EnvName,
    pub service: ServiceName,
    pub version: Version,
    pub replicas: Option<u32>,
    pub rollout: Option<Box<RolloutOptions>>,
    pub hotfix: bool,
    pub max_parallel_hosts: Option<u32>,
}

/// Plans `request`: a sentence and the plan, or why there is nothing to plan.
pub(crate) async fn plan(
    shared: &Shared,
    request: Request,
) -> Result<(String, DeployPlan), String> {
    let Request {
        environment: env,
        service,
        version,
        replicas,
        rollout,
        hotfix,
        max_parallel_hosts,
    } = request;
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: crate::Error| format!("the controller could not read {what}: {e}")
    };
    let release = published_release(shared, &service, &version).await?;
    let agents = shared
        .store
        .agents(std::slice::from_ref(&env))
        .await
        .map_err(failed("the agents' heartbeats"))?;
    let agent = agents.get(&env);
    let snapshot = agent.and_then(|a| a.heartbeat.services.iter().find(|s| s.service == service));
    let serving = match snapshot.and_then(|s| s.version.clone()) {
        Some(version) => Some(version),
        None => shared
            .store
            .deployment(&env, &service)
            .await
            .map_err(failed("the deployments"))?
            .and_then(|d| d.serving),
    };
    let recorded = shared
        .store
        .promotion(&service, &version, &env)
        .await
        .map_err(failed("the promotions"))?
        .map(|r| r.approvals)
        .unwrap_or_default();

    let hotfix = hotfix || release.hotfix;
    let (strategy, strategy_from) = match (hotfix, rollout.as_ref().and_then(|o| o.strategy.clone()), snapshot.and_then(|s| s.strategy.clone())) {
        (true, _, _) => (None, "the hotfix path: a short canary, each step held one detection window of the agent's analysis".to_owned()),
        (false, Some(strategy), _) => (Some(strategy), "this deploy's --strategy".to_owned()),
        (false, None, Some(strategy)) => (Some(strategy), format!("{env}'s configuration of {service}, as its agent reports it")),
        (false, None, None) => (None, format!("{env}'s configuration of {service}, which its agent has not reported")),
    };
    let replicas = replicas.or(snapshot.map(|s| s.replicas_desired).filter(|n| *n > 0));
    let mut steps = steps(
        strategy.as_ref(),
        hotfix,
        replicas,
        &version,
        serving.as_ref(),
    );
    // The order `waves::deploy` would take: the canary host first by name.
    let mut hosts: Vec<HostName> = waves::live_hosts(shared, &env, OffsetDateTime::now_utc())
        .await
        .map_err(failed("the agents' heartbeats"))?
        .into_iter()
        .filter(|(_, r)| r.heartbeat.services.iter().any(|s| s.service == service))
        .map(|(host, _)| host)
        .collect();
    hosts.sort();
    let parallel = (hosts.len() > 1).then(|| {
        max_parallel_hosts
            .or_else(|| shared.config.stage(&env).map(|s| s.max_parallel_hosts))
            .unwrap_or(ferry_protocol::wave::DEFAULT_MAX_PARALLEL_HOSTS)
    });
    if let (Some(parallel), [canary, rest @ ..]) = (parallel, hosts.as_slice()) {
        let rest: Vec<&str> = rest.iter().map(HostName::as_str).collect();
        steps.insert(
            0,
            format!(
                "host by host: {canary} first (the canary host) with the steps below; then {}, {parallel} at a time, each batch only after the previous one succeeded; a host that fails stops the wave and the hosts already moved go back to what they ran",
                rest.join(", ")
            ),
        );
    } else {
        hosts.clear();
    }

    let now = OffsetDateTime::now_utc();
    let (approvals, gate) = match shared.config.stage(&env) {
        Some(stage) => {
            let tally = promotion::tally(&release, &env, stage, &recorded, now);
            let present: Vec<String> = tally
                .deploy
                .iter()
                .map(|a| promotion::reviewer_name(stage, &a.data.reviewer, &a.data.reviewer_name))
                .collect();
            let missing = stage
                .approvals_required
                .saturating_sub(present.len() as u32);
            let critical = ferry_gate::criticals(&release);
            let overrides_required = if critical > 0 {
                shared.config.security_override_approvals()
            } else {
                0
            };
            let overrides_valid = tally.overrides as u32;
            let passes = overrides_valid >= overrides_required;
            let detail = match (critical, passes) {
                (0, _) => "passes: the scan found no critical vulnerabilities".to_owned(),
                (n, true) => format!("passes: {n} critical vulnerabilities, overridden by {overrides_valid} reviewers"),
                (n, false) => format!("blocks: {n} critical vulnerabilities, {overrides_valid} of {overrides_required} security override approvals"),
            };
            (
                PlannedApprovals {
                    required: stage.approvals_required,
                    present,
                    missing,
                    may_approve: if missing > 0 {
                        tally.waiting_for
                    } else {
                        Vec::new()
                    },
                },
                GateVerdict {
                    passes,
                    critical,
                    overrides_required,
                    overrides_valid,
                    detail,
                },
            )
        }
        None => (PlannedApprovals::default(), GateVerdict::default()),
    };

    // The same checks, in the same order, as the deploy itself.
    let mut problems = Vec::new();
    let mut would_issue = true;
    match promotion::approvals_for_deploy(shared, &release, &env).await {
        Ok(approvals) => {
            let command = Command {
                environment: env.clone(),
                service: service.clone(),
                actor: None,
                hosts: Vec::new(),
                action: deploy_action(&release, replicas, approvals, rollout, hotfix),
            };
            if let Err(e) = command.validate() {
                would_issue = false;
                problems.push(format!("the command would be invalid: {e}"));
            }
        }
        Err(refusal) => {
            would_issue = false;
            problems.push(refusal);
        }
    }
    match agent {
        None => problems.push(format!(
            "{env}'s agent has never reported: the command would wait in the stream for it"
        )),
        Some(_) if snapshot.is_none() => problems.push(format!(
            "{env}'s agent does not manage {service}: it would refuse the command (unknown_service)"
        )),
        Some(a) if now - a.received_at > shared.config.agent_timeout() => problems.push(format!(
            "{env}'s agent has been silent since {}: the command would wait in the stream for it",
            a.received_at
        )),
        Some(_) => {}
    }

    let sentence = if would_issue {
        format!("dry run: the deploy of {service} {version} to {env} would be issued; nothing was")
    } else {
        format!("dry run: the deploy of {service} {version} to {env} would be refused; nothing was issued")
    };
    Ok((
        sentence,
        DeployPlan {
            environment: env,
            service,
            version,
            artifact: release.artifact.clone(),
            serving,
            strategy,
            strategy_from,
            steps,
            replicas,
            approvals,
            gate,
            would_issue,
            problems,
            hosts,
            max_parallel_hosts: parallel,
        },
    ))
}

/// The steps of a deploy of `version` by `strategy`, in words.
fn steps(
    strategy: Option<&Strategy>,
    hotfix: bool,
    replicas: Option<u32>,
    version: &Version,
    serving: Option<&Version>,
) -> Vec<String> {
    let count = replicas.map_or_else(
        || "the configured number of replicas".to_owned(),
        |n| format!("{n} replica(s)"),
    );
    let old = serving.map_or_else(
        || "the old replicas".to_owned(),
        |v| format!("{v}'s replicas"),
    );
    let canary = |weights: &[u8], held: String| {
        let mut out = vec![format!("start {count} of {version} beside {old}")];
        for weight in weights {
            out.push(format!(
                "send {weight} % of requests to {version} for {held}, analysed; a breach rolls back"
            ));
        }
        if weights.last().is_some_and(|w| *w < 100) {
            out.push(format!("send all requests to {version}"));
        }
        out.push(format!("stop {old}"));
        out
    };
    if hotfix {
        return canary(&HOTFIX_STEPS, "one detection window".to_owned());
    }
    match strategy {
        None => vec![format!(
            "deploy {count} of {version} as the agent's configured strategy says"
        )],
        Some(Strategy::Recreate) => vec![
            format!("start {count} of {version} beside {old}"),
            "wait until every one passes its health checks".to_owned(),
            format!("switch all requests to {version}"),
            format!("stop {old}"),
        ],
        Some(Strategy::Rolling {
            batch_size,
            max_unavailable,
        }) => vec![
            format!("replace {old} with {count} of {version}, {batch_size} at a time"),
            format!("each batch gated on health; at most {max_unavailable} old replica(s) stopped before their replacements are healthy"),
        ],
        Some(Strategy::BlueGreen { keep_old_for_secs }) => vec![
            format!("start {count} of {version} (green) beside {old} (blue)"),
            "verify green's health".to_owned(),
            format!("switch all requests to {version} at once"),
            format!("keep {old} for {keep_old_for_secs} s for an instant rollback, then stop them"),
        ],
        Some(Strategy::Canary { steps, step_secs }) => canary(steps, format!("{step_secs} s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::new(s).unwrap()
    }

    #[test]
    fn a_canary_lists_each_weight_and_ends_with_everything() {
        let canary = Strategy::Canary {
            steps: vec![10, 50],
            step_secs: 30,
        };
        let steps = steps(
            Some(&canary),
            false,
            Some(3),
            &v("1.1.0"),
            Some(&v("1.0.0")),
        );
        assert_eq!(
            steps,
            [
                "start 3 replica(s) of 1.1.0 beside 1.0.0's replicas",
                "send 10 % of requests to 1.1.0 for 30 s, analysed; a breach rolls back",
                "send 50 % of requests to 1.1.0 for 30 s, analysed; a breach rolls back",
                "send all requests to 1.1.0",
                "stop 1.0.0's replicas",
            ]
        );
    }

    #[test]
    fn a_hotfix_takes_the_short_canary_whatever_the_strategy() {
        let steps = steps(Some(&Strategy::Recreate), true, None, &v("1.0.1"), None);
        assert!(steps[1].starts_with("send 25 %"), "{steps:?}");
        assert!(steps[2].starts_with("send 100 %"), "{steps:?}");
        assert!(steps[0].contains("the configured number of replicas"));
    }

    #[test]
    fn every_strategy_says_what_it_does() {
        for strategy in [
            Strategy::Recreate,
            Strategy::defaults(ferry_protocol::rollout::StrategyKind::Rolling),
            Strategy::defaults(ferry_protocol::rollout::StrategyKind::BlueGreen),
        ] {
            let steps = steps(Some(&strategy), false, Some(2), &v("2.0.0"), None);
            assert!(steps.len() >= 2, "{strategy:?}: {steps:?}");
            assert!(steps[0].contains("2 replica(s) of 2.0.0"), "{steps:?}");
        }
        let unknown = steps(None, false, None, &v("2.0.0"), None);
        assert_eq!(unknown.len(), 1);
        assert!(unknown[0].contains("configured strategy"));
    }
}
