//! `ferry drill rollback`: back to the previous version and forward again,
//! each leg health-gated and timed, under a small load of its own, recorded
//! in the audit trail.

mod load;

use std::time::Instant;

use ferry_protocol::api::{ApiRequest, CommandIssued, HistoryRecord, PromotionView};
use ferry_protocol::command::RollbackTarget;
use ferry_protocol::doctor::{DrillReport, Installation};
use ferry_protocol::event::ServiceSnapshot;
use ferry_protocol::{EnvName, ServiceName, Version};

use crate::args::{DrillRollbackArgs, GlobalOpts, OutputFormat};
use crate::client::{actor, Connection};
use crate::error::{CliError, Result};
use crate::output;
use crate::wait::Follower;

/// What the drill will do, from the agent's last heartbeat.
struct Plan {
    environment: EnvName,
    service: ServiceName,
    serving: Version,
    previous: Version,
    address: String,
}

/// `ferry drill rollback`
pub async fn rollback(global: &GlobalOpts, args: &DrillRollbackArgs) -> Result<()> {
    let connection = Connection::open(global).await?;
    let installation = connection
        .call::<Installation>(ApiRequest::Installation {})
        .await?
        .response;
    let snapshot = serving_snapshot(&installation, args)?;
    // Before anything else about the service: a gated environment without
    // valid approvals is the first thing to say.
    check_approvals(&connection, &installation, args, &snapshot).await?;
    let plan = plan(args, snapshot)?;
    if args.dry_run {
        return output::emit(&match global.output {
            OutputFormat::Json => output::json(&serde_json::json!({
                "environment": plan.environment,
                "service": plan.service,
                "serving": plan.serving,
                "previous": plan.previous,
                "address": plan.address,
                "steps": steps(&plan, args),
            }))?,
            OutputFormat::Table => format!(
                "Rollback drill of {} in {} (dry run, nothing changed):\n{}",
                plan.service,
                plan.environment,
                steps(&plan, args)
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("  {}. {s}", i + 1))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        });
    }

    let load = load::Load::start(&plan.address, args.load_interval).map_err(CliError::failed)?;
    let back = leg(&connection, global, args, &plan, &plan.previous).await;
    let forward = match &back {
        Ok(_) => Some(leg(&connection, global, args, &plan, &plan.serving).await),
        Err(_) => None,
    };
    let counts = load.stop().await;
    let problem = match (&back, &forward) {
        (Err(e), _) => Some(format!("the rollback to {} failed: {e}", plan.previous)),
        (Ok(_), Some(Err(e))) => Some(format!("the roll forward to {} failed: {e}", plan.serving)),
        _ => None,
    };
    let report = DrillReport {
        environment: plan.environment.clone(),
        service: plan.service.clone(),
        serving: plan.serving.clone(),
        previous: plan.previous.clone(),
        back_ms: back.as_ref().ok().copied(),
        forward_ms: forward.as_ref().and_then(|f| f.as_ref().ok().copied()),
        requests: counts.requests,
        failed_requests: counts.failed,
        succeeded: problem.is_none(),
        problem,
    };
    let recorded = connection
        .call::<HistoryRecord>(ApiRequest::RecordDrill {
            drill: Box::new(report.clone()),
            actor: Some(actor()),
        })
        .await?;
    output::emit(&match global.output {
        // One line, like the events before it: the output is JSON lines.
        OutputFormat::Json => output::json_line(&report)?,
        OutputFormat::Table => format!("{} ({})", report.sentence(), recorded.message),
    })?;
    match (back, forward) {
        (Err(e), _) | (Ok(_), Some(Err(e))) => Err(e),
        _ => Ok(()),
    }
}

/// The service's snapshot in the environment's last heartbeat, with a
/// version serving.
fn serving_snapshot(
    installation: &Installation,
    args: &DrillRollbackArgs,
) -> Result<ServiceSnapshot> {
    let env = installation
        .environments
        .iter()
        .find(|e| e.environment == args.environment)
        .ok_or_else(|| {
            CliError::failed(format!(
                "{} is not an environment of the controller's pipeline",
                args.environment
            ))
        })?;
    let agent = env.agent.as_ref().ok_or_else(|| {
        CliError::failed(format!(
            "no agent of {} was ever heard from (ferry doctor)",
            args.environment
        ))
    })?;
    let snapshot = agent
        .heartbeat
        .services
        .iter()
        .find(|s| s.service == args.service)
        .ok_or_else(|| {
            CliError::failed(format!(
                "the {} agent does not manage {}",
                args.environment, args.service
            ))
        })?;
    if snapshot.version.is_none() {
        return Err(refuse(args, "nothing is deployed"));
    }
    Ok(snapshot.clone())
}

fn refuse(args: &DrillRollbackArgs, why: &str) -> CliError {
    CliError::failed(format!(
        "cannot drill a rollback of {} in {}: {why}",
        args.service, args.environment
    ))
}

fn plan(args: &DrillRollbackArgs, snapshot: ServiceSnapshot) -> Result<Plan> {
    let refuse = |why: &str| refuse(args, why);
    let serving = snapshot
        .version
        .ok_or_else(|| refuse("nothing is deployed"))?;
    let previous = snapshot
        .previous
        .ok_or_else(|| refuse("the agent knows no previous version to roll back to"))?;
    let address = snapshot
        .address
        .ok_or_else(|| refuse("the agent reports no stable address to send the load to"))?;
    Ok(Plan {
        environment: args.environment.clone(),
        service: args.service.clone(),
        serving,
        previous,
        address,
    })
}

/// In an approval-gated environment the drill redeploys only a version
/// whose recorded approvals still count.
async fn check_approvals(
    connection: &Connection,
    installation: &Installation,
    args: &DrillRollbackArgs,
    snapshot: &ServiceSnapshot,
) -> Result<()> {
    let Some(serving) = &snapshot.version else {
        return Ok(());
    };
    let required = installation
        .environments
        .iter()
        .find(|e| e.environment == args.environment)
        .map_or(0, |e| e.approvals_required);
    if required == 0 {
        return Ok(());
    }
    let promotions = connection
        .call::<Vec<PromotionView>>(ApiRequest::Approvals {
            environment: Some(args.environment.clone()),
            service: Some(args.service.clone()),
            all: true,
        })
        .await?
        .response;
    let valid = promotions
        .iter()
        .find(|p| &p.version == serving)
        .map_or(0, |p| p.approvals_valid);
    if valid >= required {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "{} is approval-gated and {} {} has {valid} valid recorded approvals of the {required} \
             needed (expired or never given): the drill would redeploy it without them; approve \
             it again (ferry approve) first",
            args.environment, args.service, serving
        )))
    }
}

fn steps(plan: &Plan, args: &DrillRollbackArgs) -> Vec<String> {
    let timeout = humantime::format_duration(args.wait_timeout);
    vec![
        format!(
            "send GET http://{}/ every {} and count failed requests",
            plan.address,
            humantime::format_duration(args.load_interval)
        ),
        format!(
            "roll back {} -> {}, health-gated, within {timeout}",
            plan.serving, plan.previous
        ),
        format!(
            "roll forward {} -> {}, health-gated, within {timeout}",
            plan.previous, plan.serving
        ),
        "record the drill and both timings in the audit trail (ferry audit --action drill)"
            .to_owned(),
    ]
}

/// One health-gated leg to `version`; its duration in milliseconds.
async fn leg(
    connection: &Connection,
    global: &GlobalOpts,
    args: &DrillRollbackArgs,
    plan: &Plan,
    version: &Version,
) -> Result<u64> {
    let started = Instant::now();
    let follower = Follower::subscribe(connection, &plan.environment, &plan.service).await?;
    let issued = connection
        .call::<CommandIssued>(ApiRequest::Rollback {
            environment: plan.environment.clone(),
            service: plan.service.clone(),
            to: RollbackTarget::Version(version.clone()),
            force: false,
            dry_run: false,
            actor: Some(actor()),
            hosts: Vec::new(),
        })
        .await?
        .response;
    let what = format!(
        "drill rollback of {} in {} to {version}",
        plan.service, plan.environment
    );
    follower
        .follow(
            issued.command_id,
            &what,
            args.wait_timeout,
            global.output,
            1,
        )
        .await?;
    Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}
