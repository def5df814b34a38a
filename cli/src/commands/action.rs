//! `ferry deploy`, `rollback`, `scale` and `maintenance`: ask the controller
//! to issue a command, then print its id or, with `--wait`, follow it.

use std::time::Duration;

use ferry_protocol::api::{ApiRequest, CommandIssued, HostStatus, StatusRow};
use ferry_protocol::command::{MaintenanceMode, RollbackTarget};
use ferry_protocol::rollout::{
    AnalysisMode, AnalysisOverride, RolloutControl, RolloutOptions, RolloutState, Strategy,
};
use ferry_protocol::wave::WaveState;
use ferry_protocol::{EnvName, ServiceName};

use crate::args::{
    AnalysisModeArg, DeployArgs, GlobalOpts, MaintenanceArgs, OutputFormat, RollbackArgs,
    RolloutAction, RolloutArgs, ScaleArgs, StrategyArg, DEFAULT_MAINTENANCE,
};
use crate::client::{actor, Connection};
use crate::commands::dry_run;
use crate::error::{CliError, Result};
use crate::output;
use crate::wait::Follower;

/// `ferry deploy`
pub async fn deploy(global: &GlobalOpts, args: DeployArgs) -> Result<()> {
    let what = format!(
        "deploy of {} {} to {}",
        args.service, args.version, args.environment
    );
    let rollout = rollout_options(&args)?;
    if args.dry_run {
        let request = ApiRequest::PlanDeploy {
            environment: args.environment,
            service: args.service,
            version: args.version,
            replicas: args.replicas,
            rollout: rollout.map(Box::new),
            hotfix: args.hotfix,
            max_parallel_hosts: args.max_parallel_hosts,
        };
        return dry_run::deploy(global, request).await;
    }
    let request = ApiRequest::Deploy {
        environment: args.environment.clone(),
        service: args.service.clone(),
        version: args.version,
        replicas: args.replicas,
        actor: Some(actor()),
        rollout: rollout.map(Box::new),
        hotfix: args.hotfix,
        max_parallel_hosts: args.max_parallel_hosts,
    };
    let wait = args.wait.wait.then_some(args.wait.wait_timeout);
    issue(
        global,
        request,
        &args.environment,
        &args.service,
        &what,
        wait,
    )
    .await
}

/// The deploy's strategy and analysis overrides, if any flag set one.
fn rollout_options(args: &DeployArgs) -> Result<Option<RolloutOptions>> {
    let strategy = args.strategy.map(|kind| match kind {
        StrategyArg::Recreate => Strategy::Recreate,
        StrategyArg::Rolling => Strategy::Rolling {
            batch_size: args.batch_size.unwrap_or(1),
            max_unavailable: args.max_unavailable.unwrap_or(0),
        },
        StrategyArg::BlueGreen => Strategy::BlueGreen {
            keep_old_for_secs: args.keep_old_secs.unwrap_or(60),
        },
        StrategyArg::Canary => {
            let defaults = Strategy::default_canary();
            let (steps, step_secs) = match defaults {
                Strategy::Canary { steps, step_secs } => (steps, step_secs),
                _ => (Vec::new(), 30),
            };
            Strategy::Canary {
                steps: if args.steps.is_empty() {
                    steps
                } else {
                    args.steps.clone()
                },
                step_secs: args.step_secs.unwrap_or(step_secs),
            }
        }
    });
    let analysis = AnalysisOverride {
        error_rate_percent: args.max_error_rate,
        p95_ms: args.max_p95_ms,
        interval_ms: args
            .analysis_interval
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        mode: args.analysis_mode.map(|m| match m {
            AnalysisModeArg::Sequential => AnalysisMode::Sequential,
            AnalysisModeArg::Intervals => AnalysisMode::Intervals,
        }),
        verify_for_secs: args.verify_for.map(|d| d.as_secs()),
        ..Default::default()
    };
    let analysis = (analysis != AnalysisOverride::default()).then_some(analysis);
    if strategy.is_none() && analysis.is_none() {
        return Ok(None);
    }
    let options = RolloutOptions { strategy, analysis };
    options
        .validate()
        .map_err(|e| CliError::usage(e.to_string()))?;
    Ok(Some(options))
}

/// `ferry rollback`; a dry run always waits for the agent's plan.
pub async fn rollback(global: &GlobalOpts, args: RollbackArgs) -> Result<()> {
    let to = match args.version {
        Some(version) => RollbackTarget::Version(version),
        None => RollbackTarget::Previous,
    };
    let what = format!(
        "rollback{} of {} in {} to {to}",
        if args.dry_run { " dry run" } else { "" },
        args.service,
        args.environment
    );
    let request = ApiRequest::Rollback {
        environment: args.environment.clone(),
        service: args.service.clone(),
        to,
        force: args.force,
        dry_run: args.dry_run,
        actor: Some(actor()),
        hosts: args.hosts.hosts,
    };
    let wait = (args.wait.wait || args.dry_run).then_some(args.wait.wait_timeout);
    issue(
        global,
        request,
        &args.environment,
        &args.service,
        &what,
        wait,
    )
    .await
}

/// `ferry scale`
pub async fn scale(global: &GlobalOpts, args: ScaleArgs) -> Result<()> {
    let what = format!(
        "scale of {} in {} to {} replicas",
        args.service, args.environment, args.replicas
    );
    let request = ApiRequest::Scale {
        environment: args.environment.clone(),
        service: args.service.clone(),
        replicas: args.replicas,
        actor: Some(actor()),
        hosts: args.hosts.hosts,
    };
    let wait = args.wait.wait.then_some(args.wait.wait_timeout);
    issue(
        global,
        request,
        &args.environment,
        &args.service,
        &what,
        wait,
    )
    .await
}

/// `ferry rollout`: always waits, so the operator sees the effect.
pub async fn rollout(global: &GlobalOpts, args: RolloutArgs) -> Result<()> {
    let control = match args.action {
        RolloutAction::Pause => RolloutControl::Pause,
        RolloutAction::Resume => RolloutControl::Resume,
        RolloutAction::Promote => RolloutControl::Promote,
        RolloutAction::Abort => RolloutControl::Abort,
    };
    let what = format!(
        "{control} of the rollout of {} in {}",
        args.service, args.environment
    );
    let mut hosts = args.hosts.hosts;
    if hosts.is_empty() {
        // With several hosts, only those running a rollout (the canary host
        // of a wave) can act on one: address them, not every host.
        let connection = Connection::open(global).await?;
        let live = live_hosts(&connection, &args.environment, &args.service).await?;
        if live.len() > 1 {
            hosts = live
                .into_iter()
                .filter(|h| {
                    h.rollout.as_ref().is_some_and(|r| {
                        matches!(r.state, RolloutState::Progressing | RolloutState::Paused)
                    })
                })
                .map(|h| h.host)
                .collect();
        }
    }
    let request = ApiRequest::Rollout {
        environment: args.environment.clone(),
        service: args.service.clone(),
        control,
        actor: Some(actor()),
        hosts,
    };
    issue(
        global,
        request,
        &args.environment,
        &args.service,
        &what,
        Some(args.wait_timeout),
    )
    .await
}

/// `ferry maintenance`
pub async fn maintenance(global: &GlobalOpts, args: MaintenanceArgs) -> Result<()> {
    let mode = maintenance_mode(&args)?;
    let what = format!(
        "maintenance {} for {} in {}",
        if args.enable { "on" } else { "off" },
        args.service,
        args.environment
    );
    let request = ApiRequest::Maintenance {
        environment: args.environment.clone(),
        service: args.service.clone(),
        mode,
        actor: Some(actor()),
        hosts: args.hosts.hosts,
    };
    let wait = args.wait.wait.then_some(args.wait.wait_timeout);
    issue(
        global,
        request,
        &args.environment,
        &args.service,
        &what,
        wait,
    )
    .await
}

fn maintenance_mode(args: &MaintenanceArgs) -> Result<MaintenanceMode> {
    if !args.enable {
        return Ok(MaintenanceMode::Disable);
    }
    let message = args
        .message
        .clone()
        .ok_or_else(|| CliError::usage("--enable needs --message"))?;
    let duration = args.duration.unwrap_or(DEFAULT_MAINTENANCE);
    Ok(MaintenanceMode::Enable {
        message,
        duration_secs: whole_seconds(duration),
    })
}

/// Seconds, rounded up so `500ms` is not `until disabled`; zero is `None`.
fn whole_seconds(duration: Duration) -> Option<u64> {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    (secs > 0).then_some(secs)
}

/// Sends `request`; with `wait`, subscribes to the service's events first and
/// follows the command to its outcome.
async fn issue(
    global: &GlobalOpts,
    request: ApiRequest,
    environment: &EnvName,
    service: &ServiceName,
    what: &str,
    wait: Option<Duration>,
) -> Result<()> {
    let connection = Connection::open(global).await?;
    let named = match &request {
        ApiRequest::Rollback { hosts, .. }
        | ApiRequest::Scale { hosts, .. }
        | ApiRequest::Maintenance { hosts, .. }
        | ApiRequest::Rollout { hosts, .. } => hosts.len(),
        _ => 0,
    };
    let (follower, hosts) = match wait {
        Some(_) => {
            let hosts = match named {
                0 => live_hosts(&connection, environment, service).await?.len(),
                n => n,
            };
            let follower = Follower::subscribe(&connection, environment, service).await?;
            (Some(follower), hosts.max(1))
        }
        None => (None, 1),
    };
    let reply = connection.call::<CommandIssued>(request).await?;
    let issued = reply.response;
    if let (true, Some(timeout)) = (issued.wave, wait) {
        if global.output == OutputFormat::Table {
            output::emit(&output::issued(&reply.message, &issued))?;
        }
        return follow_wave(&connection, &issued, what, timeout, global.output).await;
    }
    match (follower, wait) {
        (Some(follower), Some(timeout)) => {
            if global.output == OutputFormat::Table {
                output::emit(&output::issued(&reply.message, &issued))?;
            }
            follower
                .follow(issued.command_id, what, timeout, global.output, hosts)
                .await
        }
        _ => output::emit(&match global.output {
            OutputFormat::Json => output::json(&issued)?,
            OutputFormat::Table => output::issued(&reply.message, &issued),
        }),
    }
}

/// The environment's live hosts serving `service` (from `ferry status`), with
/// the rollout each runs; empty for agents that name no host.
async fn live_hosts(
    connection: &Connection,
    environment: &EnvName,
    service: &ServiceName,
) -> Result<Vec<HostStatus>> {
    let rows: Vec<StatusRow> = connection
        .call(ApiRequest::Status {
            environment: Some(environment.clone()),
        })
        .await?
        .response;
    Ok(rows
        .into_iter()
        .filter(|r| r.service.as_ref() == Some(service))
        .flat_map(|r| r.hosts)
        .filter(|h| h.agent_up)
        .collect())
}

/// `--wait` on a deploy that goes host by host: reads the wave from
/// `ferry status` until it ends, printing each host's step as it changes
/// (a JSON line per change with `--output json`).
async fn follow_wave(
    connection: &Connection,
    issued: &CommandIssued,
    what: &str,
    timeout: Duration,
    format: OutputFormat,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown: Vec<(String, String)> = Vec::new();
    loop {
        let rows: Vec<StatusRow> = connection
            .call(ApiRequest::Status {
                environment: Some(issued.environment.clone()),
            })
            .await?
            .response;
        let wave = rows
            .into_iter()
            .filter(|r| r.service.as_ref() == Some(&issued.service))
            .find_map(|r| r.wave)
            .filter(|w| w.id == issued.command_id);
        if let Some(wave) = wave {
            for step in &wave.steps {
                let now = (step.host.to_string(), step.state.to_string());
                if !shown.contains(&now) {
                    let line = match format {
                        OutputFormat::Json => output::json(step)?,
                        OutputFormat::Table => format!("{}: {}", step.host, step.state),
                    };
                    output::emit(&line)?;
                    shown.retain(|(host, _)| host != &now.0);
                    shown.push(now);
                }
            }
            match wave.state {
                WaveState::Running => {}
                WaveState::Succeeded => {
                    return output::emit(&format!("{what} succeeded: {}", wave.detail))
                }
                _ => {
                    return Err(CliError::failed(format!(
                        "{what} {}: {}",
                        wave.state, wave.detail
                    )))
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::wait_timed_out(format!(
                "{what}: no end to the wave within {}",
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(WAVE_POLL).await;
    }
}

/// How often `--wait` reads a wave's progress.
const WAVE_POLL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Args, Command};

    fn mode(line: &[&str]) -> MaintenanceMode {
        let args = Args::try_parse_from(
            ["ferry", "maintenance", "web", "-e", "dev"]
                .iter()
                .chain(line),
        )
        .unwrap();
        let Command::Maintenance(args) = args.command else {
            panic!("not maintenance")
        };
        maintenance_mode(&args).unwrap()
    }

    #[test]
    fn maintenance_durations() {
        assert_eq!(
            mode(&["--enable", "-m", "x"]),
            MaintenanceMode::Enable {
                message: "x".into(),
                duration_secs: Some(3600)
            }
        );
        assert_eq!(
            mode(&["--enable", "-m", "x", "--duration", "0s"]),
            MaintenanceMode::Enable {
                message: "x".into(),
                duration_secs: None
            }
        );
        assert_eq!(
            mode(&["--enable", "-m", "x", "--duration", "1500ms"]),
            MaintenanceMode::Enable {
                message: "x".into(),
                duration_secs: Some(2)
            }
        );
        assert_eq!(mode(&["--disable"]), MaintenanceMode::Disable);
    }

    #[test]
    fn verify_for_and_the_analysis_mode_reach_the_deploys_rollout_options() {
        let args = Args::try_parse_from([
            "ferry",
            "deploy",
            "web",
            "1.0.0",
            "-e",
            "dev",
            "--verify-for",
            "45s",
            "--analysis-mode",
            "intervals",
        ])
        .unwrap();
        let Command::Deploy(args) = args.command else {
            panic!("not deploy")
        };
        let options = rollout_options(&args).unwrap().unwrap();
        let analysis = options.analysis.unwrap();
        assert_eq!(analysis.verify_for_secs, Some(45));
        assert_eq!(analysis.mode, Some(AnalysisMode::Intervals));
        assert_eq!(options.strategy, None, "the service's strategy stays");
    }
}
