//! `ferry deploy --dry-run`: asks the controller to plan the deploy
//! (`ferry.v1.api.plan_deploy`, which issues nothing) and prints the plan.
//! Exits 1 when the deploy would be refused, as the deploy itself would.

use ferry_protocol::api::{ApiRequest, DeployPlan};
use ferry_protocol::rollout::Strategy;

use crate::args::{GlobalOpts, OutputFormat};
use crate::client::Connection;
use crate::error::{CliError, Result};
use crate::output;

/// Sends the plan request and prints the plan.
pub async fn deploy(global: &GlobalOpts, request: ApiRequest) -> Result<()> {
    let connection = Connection::open(global).await?;
    let reply = connection.call::<DeployPlan>(request).await?;
    let plan = reply.response;
    output::emit(&match global.output {
        OutputFormat::Json => output::json(&plan)?,
        OutputFormat::Table => text(&reply.message, &plan),
    })?;
    if plan.would_issue {
        Ok(())
    } else {
        Err(CliError::failed(plan.problems.join("; ")))
    }
}

/// The strategy in a few words.
fn strategy_words(strategy: &Strategy) -> String {
    match strategy {
        Strategy::Recreate => "recreate".to_owned(),
        Strategy::Rolling {
            batch_size,
            max_unavailable,
        } => format!("rolling (batches of {batch_size}, at most {max_unavailable} unavailable)"),
        Strategy::BlueGreen { keep_old_for_secs } => {
            format!("blue-green (old set kept {keep_old_for_secs} s)")
        }
        Strategy::Canary { steps, step_secs } => {
            let weights: Vec<String> = steps.iter().map(|w| format!("{w} %")).collect();
            format!("canary ({}, {step_secs} s each)", weights.join(", "))
        }
    }
}

/// The plan for people.
fn text(message: &str, plan: &DeployPlan) -> String {
    let mut out = vec![message.trim().to_owned()];
    let serving = plan
        .serving
        .as_ref()
        .map_or_else(|| "nothing".to_owned(), |v| v.to_string());
    out.push(format!(
        "  release:   {} {} ({}); {} runs {serving} now",
        plan.service, plan.version, plan.artifact, plan.environment
    ));
    out.push(format!(
        "  strategy:  {} — from {}",
        plan.strategy
            .as_ref()
            .map_or_else(|| "as configured".to_owned(), strategy_words),
        plan.strategy_from
    ));
    out.push(format!(
        "  replicas:  {}",
        plan.replicas
            .map_or_else(|| "the configured count".to_owned(), |n| n.to_string())
    ));
    out.push("  steps:".to_owned());
    for (i, step) in plan.steps.iter().enumerate() {
        out.push(format!("    {}. {step}", i + 1));
    }
    let a = &plan.approvals;
    out.push(if a.required == 0 {
        format!("  approvals: none needed in {}", plan.environment)
    } else {
        let present = if a.present.is_empty() {
            "none".to_owned()
        } else {
            a.present.join(", ")
        };
        let missing = if a.missing == 0 {
            "none missing".to_owned()
        } else {
            format!(
                "{} missing (may approve: {})",
                a.missing,
                if a.may_approve.is_empty() {
                    "nobody".to_owned()
                } else {
                    a.may_approve.join(", ")
                }
            )
        };
        format!(
            "  approvals: {} of {} present ({present}); {missing}",
            a.present.len(),
            a.required
        )
    });
    out.push(format!("  gate:      {}", plan.gate.detail));
    for problem in &plan.problems {
        out.push(format!("  problem:   {problem}"));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::api::{GateVerdict, PlannedApprovals};
    use ferry_protocol::{EnvName, ServiceName, Version};

    fn plan() -> DeployPlan {
        DeployPlan {
            environment: EnvName::new("production").unwrap(),
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.1.0").unwrap(),
            artifact: "/bin/web".into(),
            serving: Some(Version::new("1.0.0").unwrap()),
            strategy: Some(Strategy::Canary {
                steps: vec![10, 100],
                step_secs: 30,
            }),
            strategy_from: "this deploy's --strategy".into(),
            steps: vec!["start 3 replica(s)".into(), "stop the old".into()],
            replicas: Some(3),
            approvals: PlannedApprovals {
                required: 2,
                present: vec!["alice".into()],
                missing: 1,
                may_approve: vec!["bob".into()],
            },
            gate: GateVerdict {
                passes: true,
                detail: "passes: the scan found no critical vulnerabilities".into(),
                ..GateVerdict::default()
            },
            would_issue: false,
            problems: vec!["production needs 2 approvals".into()],
            hosts: Vec::new(),
            max_parallel_hosts: None,
        }
    }

    #[test]
    fn the_text_names_strategy_steps_replicas_approvals_and_the_gate() {
        let text = text("dry run: would be refused", &plan());
        for expected in [
            "dry run: would be refused",
            "web 1.1.0 (/bin/web); production runs 1.0.0 now",
            "canary (10 %, 100 %, 30 s each) — from this deploy's --strategy",
            "replicas:  3",
            "    1. start 3 replica(s)",
            "    2. stop the old",
            "approvals: 1 of 2 present (alice); 1 missing (may approve: bob)",
            "gate:      passes",
            "problem:   production needs 2 approvals",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
    }
}
