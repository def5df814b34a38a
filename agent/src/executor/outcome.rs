//! What a command means and says, without doing it: the replicas a deploy
//! or rollback runs when it does not say, a rollback's dry-run plan, and the
//! details a succeeded outcome carries.

use std::time::Duration;

use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::EventBody;
use ferry_protocol::Version;

use crate::config::ServiceConfig;
use crate::state::ServiceRecord;

/// A succeeded deploy's detail with what its verification weighed.
pub(super) fn verified(
    succeeded: EventBody,
    over: Duration,
    requests: u64,
    conclusive: bool,
) -> EventBody {
    let over = humantime::format_duration(over);
    let how = if conclusive {
        format!("verified for {over} over {requests} requests")
    } else {
        format!(
            "verified for {over} on health checks alone ({requests} requests: too few for error rate and latency)"
        )
    };
    with_detail(succeeded, &how)
}

/// A succeeded outcome with `more` appended to its detail.
pub(super) fn with_detail(succeeded: EventBody, more: &str) -> EventBody {
    match succeeded {
        EventBody::Succeeded {
            action,
            version,
            replicas,
            detail,
        } => EventBody::Succeeded {
            action,
            version,
            replicas,
            detail: format!("{detail}; {more}"),
        },
        other => other,
    }
}

pub(super) fn default_replicas(record: &ServiceRecord, config: &ServiceConfig) -> u32 {
    if record.current.is_some() && record.replicas > 0 {
        record.replicas
    } else {
        config.replicas
    }
}

pub(super) fn rollback_plan(
    config: &ServiceConfig,
    current: Option<&Version>,
    target: &ReleaseSpec,
    replicas: u32,
    force: bool,
) -> Vec<String> {
    let service = &config.name;
    let health = &config.health;
    let current_text = current
        .map(|v| v.to_string())
        .unwrap_or_else(|| "nothing".into());
    let mut plan = vec![format!(
        "roll back {service} from {current_text} to {} ({})",
        target.version, target.artifact
    )];
    if current == Some(&target.version) && !force {
        plan.push(format!(
            "nothing to do: {} is already serving",
            target.version
        ));
        return plan;
    }
    if force {
        plan.push(format!(
            "stop the replicas of {current_text} first (--force)"
        ));
    }
    plan.push(format!("start {replicas} replicas of {}", target.version));
    plan.push(format!(
        "wait up to {} for {} to pass on each",
        humantime::format_duration(health.start_timeout),
        health.path
    ));
    plan.push(format!("switch {} to the new replicas", config.listen));
    if !force {
        plan.push(format!("stop the replicas of {current_text}; if {} fails its checks, {current_text} keeps serving", target.version));
    }
    plan.push("no change is made by a dry run".into());
    plan
}
