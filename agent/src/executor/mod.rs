//! Carries out one admitted command on one service: resolves what it means
//! against the agent's state (which version is "previous", how many replicas),
//! drives the service's backend, records the result in the ledger, and
//! returns the outcome for the intake to publish. It keeps the services'
//! backends and the control handles of the rollouts running now
//! ([`running`]); what a command means without doing it is [`outcome`].

mod outcome;
mod running;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::command::{
    Action, ActionKind, Command, MaintenanceMode, ReleaseSpec, RollbackTarget,
};
use ferry_protocol::event::{Alert, EventBody, MaintenanceInfo};
use ferry_protocol::rollout::{RolloutControl, RolloutEvent, Strategy};
use ferry_protocol::{ServiceName, Version};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::backend::ServiceBackend;
use crate::config::ServiceConfig;
use crate::events::{EventSink, Report};
use crate::ledger::{not_recorded, CommitFailed, Ledger};
use crate::rollout::{RolloutEnd, RolloutObserver, RolloutPlan, RolloutRequest, Verification};
use crate::runtime::{Progress, Replacement, RuntimeError};
use crate::state::ServiceRecord;
use outcome::{default_replicas, rollback_plan, verified, with_detail};
use running::RunningRollouts;

/// A managed service: its configuration and its backend.
#[derive(Clone)]
pub struct ManagedEntry {
    /// Configuration.
    pub config: ServiceConfig,
    /// Backend.
    pub backend: Arc<dyn ServiceBackend>,
}

/// Whether the command reached an end that may be acknowledged.
// One value per command, returned and consumed at once: the size of the
// report (rollout events carry their signals and limits) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Completion {
    /// Done and recorded; publish the report, then acknowledge.
    Done(Report),
    /// Cut short by shutdown before changing anything; leave it for redelivery.
    Interrupted,
}

/// Executes commands against the agent's services.
pub struct Executor {
    services: BTreeMap<ServiceName, ManagedEntry>,
    ledger: Arc<Ledger>,
    sink: EventSink,
    changed: Arc<tokio::sync::Notify>,
    rollouts: RunningRollouts,
}

struct CommandProgress<'a> {
    sink: &'a EventSink,
    service: &'a ServiceName,
    command_id: Uuid,
    action: ActionKind,
}

impl RolloutObserver for CommandProgress<'_> {
    fn event(&self, event: RolloutEvent) {
        self.sink.emit(
            self.service,
            Some(self.command_id),
            EventBody::Rollout(event),
        );
    }

    fn alert(&self, alert: Alert) {
        self.sink
            .emit(self.service, Some(self.command_id), EventBody::Alert(alert));
    }
}

impl Progress for CommandProgress<'_> {
    fn step(&self, step: &str, version: Option<&Version>, ready: u32, desired: u32) {
        self.sink.emit(
            self.service,
            Some(self.command_id),
            EventBody::Progress {
                action: self.action,
                step: step.to_owned(),
                version: version.cloned(),
                ready,
                desired,
            },
        );
    }
}

impl Executor {
    /// An executor over `services`.
    pub fn new(
        services: BTreeMap<ServiceName, ManagedEntry>,
        ledger: Arc<Ledger>,
        sink: EventSink,
    ) -> Self {
        Executor {
            services,
            ledger,
            sink,
            changed: Arc::new(tokio::sync::Notify::new()),
            rollouts: RunningRollouts::default(),
        }
    }

    /// Notified after every command, so a heartbeat can report the new state
    /// at once instead of at the next tick.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// The managed services.
    pub fn services(&self) -> &BTreeMap<ServiceName, ManagedEntry> {
        &self.services
    }

    /// The record of one service.
    pub fn record(&self, service: &ServiceName) -> ServiceRecord {
        self.ledger.record(service)
    }

    /// Carries out `command` (already verified and checked for replay).
    pub async fn execute(&self, id: Uuid, expires: OffsetDateTime, command: Command) -> Completion {
        let service = command.service.clone();
        let Some(entry) = self.services.get(&service) else {
            let refusal = ferry_protocol::Refusal::new(
                ferry_protocol::RefusalReason::UnknownService,
                format!("this agent does not manage a service named {service}"),
            );
            return Completion::Done(Report::refused(&service, Some(id), &refusal));
        };
        let action = command.action.kind();
        tracing::info!(%service, command_id = %id, %action, actor = ?command.actor, "executing command");
        let progress = CommandProgress {
            sink: &self.sink,
            service: &service,
            command_id: id,
            action,
        };
        entry
            .backend
            .set_busy(!matches!(command.action, Action::Maintenance(_)));
        let outcome = self.run(entry, command.action, &progress).await;
        entry.backend.set_busy(false);

        let body = match outcome {
            Err(RuntimeError::Interrupted) => {
                progress.step(
                    "interrupted by agent shutdown; the command runs again after restart",
                    None,
                    0,
                    0,
                );
                return Completion::Interrupted;
            }
            Ok(body) => body,
            Err(e) => EventBody::Failed {
                action,
                version: None,
                reason: e.to_string(),
                serving: self.record(&service).current.map(|r| r.version),
            },
        };
        match &body {
            EventBody::Failed { reason, .. } => {
                tracing::warn!(%service, command_id = %id, %reason, "command failed")
            }
            _ => tracing::info!(%service, command_id = %id, "command done"),
        }
        let body = match self.ledger.commit(id, expires).await {
            Ok(()) => body,
            Err(CommitFailed {
                error,
                records_lost: false,
            }) => {
                tracing::error!(%error, "could not record the executed command; it may run again after a restart");
                body
            }
            Err(CommitFailed {
                error,
                records_lost: true,
            }) => {
                tracing::error!(%error, "could not record the command's outcome");
                not_recorded(body, &error)
            }
        };
        self.changed.notify_one();
        Completion::Done(Report {
            service,
            command_id: Some(id),
            body,
        })
    }

    /// Carries out a rollout control action (verified and checked for
    /// replay): hands it to the service's running rollout and waits until it
    /// took effect. It never enters the service's command queue, whose worker
    /// is busy with the rollout itself.
    pub async fn control(
        &self,
        id: Uuid,
        expires: OffsetDateTime,
        service: ServiceName,
        control: RolloutControl,
    ) -> Report {
        let result = self.rollouts.send(&service, control).await;
        tracing::info!(%service, command_id = %id, %control, ?result, "rollout control");
        if let Err(CommitFailed { error: e, .. }) = self.ledger.commit(id, expires).await {
            tracing::error!(error = %e, "could not record the executed command");
        }
        let record = self.record(&service);
        let body = match result {
            Ok(detail) => EventBody::Succeeded {
                action: ActionKind::Rollout,
                version: record.current.map(|r| r.version),
                replicas: record.replicas,
                detail,
            },
            Err(reason) => EventBody::Failed {
                action: ActionKind::Rollout,
                version: None,
                reason,
                serving: record.current.map(|r| r.version),
            },
        };
        Report {
            service,
            command_id: Some(id),
            body,
        }
    }

    async fn run(
        &self,
        entry: &ManagedEntry,
        action: Action,
        progress: &CommandProgress<'_>,
    ) -> Result<EventBody, RuntimeError> {
        let service = &entry.config.name;
        let record = self.record(service);
        let kind = action.kind();
        match action {
            Action::Deploy {
                release,
                replicas,
                rollout,
                hotfix,
                ..
            } => {
                let replicas = replicas.unwrap_or_else(|| default_replicas(&record, &entry.config));
                let plan = RolloutPlan::resolve(
                    &entry.config.strategy,
                    &entry.config.analysis,
                    rollout.as_deref(),
                    hotfix,
                );
                let version = release.version.clone();
                let outcome = if plan.strategy == Strategy::Recreate {
                    self.replace(
                        entry,
                        &record,
                        release,
                        replicas,
                        Replacement::HealthGated,
                        kind,
                        progress,
                    )
                    .await?
                } else {
                    self.roll_out(entry, &record, release, replicas, &plan, progress)
                        .await?
                };
                // A canary's last step already analysed the version at 100%;
                // a hotfix's short canary did not, and every switch did not.
                let switched = hotfix || !matches!(plan.strategy, Strategy::Canary { .. });
                // A first deploy has nothing to roll back to: not verified.
                if !switched
                    || plan.thresholds.verify_for.is_zero()
                    || record.current.is_none()
                    || !matches!(outcome, EventBody::Succeeded { .. })
                {
                    return Ok(outcome);
                }
                self.verify(entry, &record, &version, &plan, outcome, progress)
                    .await
            }
            Action::Rollback { to, force, dry_run } => {
                let target =
                    match &to {
                        RollbackTarget::Previous => record.previous.clone().ok_or_else(|| {
                            RuntimeError::NothingDeployed(format!(
                                "{service} has no previous version to roll back to"
                            ))
                        })?,
                        RollbackTarget::Version(v) => {
                            record.find(v).cloned().ok_or_else(|| {
                                let known: Vec<&str> =
                                    record.known.iter().map(|r| r.version.as_str()).collect();
                                RuntimeError::NothingDeployed(format!(
                            "version {v} of {service} is not known to this agent (known: {})",
                            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                        ))
                            })?
                        }
                    };
                let replicas = default_replicas(&record, &entry.config);
                let current = record.current.as_ref().map(|r| r.version.clone());
                if dry_run {
                    return Ok(EventBody::DryRun {
                        action: kind,
                        plan: rollback_plan(
                            &entry.config,
                            current.as_ref(),
                            &target,
                            replicas,
                            force,
                        ),
                    });
                }
                if current.as_ref() == Some(&target.version) && !force {
                    return Ok(EventBody::Succeeded {
                        action: kind,
                        version: Some(target.version.clone()),
                        replicas,
                        detail: format!("{} is already serving; nothing to do (use --force to replace it anyway)", target.version),
                    });
                }
                let replacement = if force {
                    Replacement::StopFirst
                } else {
                    Replacement::HealthGated
                };
                self.replace(
                    entry,
                    &record,
                    target,
                    replicas,
                    replacement,
                    kind,
                    progress,
                )
                .await
            }
            Action::Scale { replicas } => {
                entry.backend.scale(replicas, progress).await?;
                self.ledger
                    .change_record(service, |r| r.replicas = replicas)?;
                let detail = match &record.current {
                    Some(current) => format!("{service} {} scaled to {replicas} replicas", current.version),
                    None => format!("nothing deployed yet; the next deploy of {service} uses {replicas} replicas"),
                };
                Ok(EventBody::Succeeded {
                    action: kind,
                    version: record.current.map(|r| r.version),
                    replicas,
                    detail,
                })
            }
            Action::Rollout { control } => Err(RuntimeError::Unsupported(format!(
                "{control} reached the command queue; rollout control goes to the running rollout"
            ))),
            Action::Maintenance(mode) => {
                let (info, detail) = match mode {
                    MaintenanceMode::Enable {
                        message,
                        duration_secs,
                    } => {
                        let until = duration_secs
                            .map(|s| OffsetDateTime::now_utc() + Duration::from_secs(s));
                        let detail = match duration_secs {
                            Some(s) => format!(
                                "maintenance on for {}",
                                humantime::format_duration(Duration::from_secs(s))
                            ),
                            None => "maintenance on until disabled".to_owned(),
                        };
                        (Some(MaintenanceInfo { message, until }), detail)
                    }
                    MaintenanceMode::Disable => (None, "maintenance off".to_owned()),
                };
                if let Some(why) = entry.backend.maintenance_refusal(info.is_some()) {
                    return Err(RuntimeError::Unsupported(why));
                }
                entry.backend.apply_maintenance(info.clone()).await?;
                self.ledger
                    .change_record(service, |r| r.maintenance = info)?;
                Ok(EventBody::Succeeded {
                    action: kind,
                    version: record.current.map(|r| r.version),
                    replicas: record.replicas,
                    detail,
                })
            }
        }
    }

    async fn roll_out(
        &self,
        entry: &ManagedEntry,
        record: &ServiceRecord,
        release: ReleaseSpec,
        replicas: u32,
        plan: &RolloutPlan,
        progress: &CommandProgress<'_>,
    ) -> Result<EventBody, RuntimeError> {
        let service = &entry.config.name;
        let was = record.current.as_ref().map(|r| r.version.clone());
        let mut controls = self.rollouts.start(service);
        let result = entry
            .backend
            .roll_out(RolloutRequest {
                release: &release,
                replicas,
                plan,
                controls: &mut controls,
                progress,
                observer: progress,
            })
            .await;
        self.rollouts.end(service, controls);
        match result {
            Ok(RolloutEnd::Promoted { detail }) => {
                let version = release.version.clone();
                self.ledger.change_record(service, |r| {
                    r.promote(release);
                    r.replicas = replicas;
                })?;
                Ok(EventBody::Succeeded {
                    action: ActionKind::Deploy,
                    version: Some(version),
                    replicas,
                    detail: format!("{service}: {detail}"),
                })
            }
            Ok(RolloutEnd::Aborted(reason)) => Ok(EventBody::Failed {
                action: ActionKind::Deploy,
                version: Some(release.version),
                reason: format!("rolled back: {} aborted: {reason}", plan.strategy.kind()),
                serving: was,
            }),
            Err(RuntimeError::Interrupted) => Err(RuntimeError::Interrupted),
            Err(e) => Ok(EventBody::Failed {
                action: ActionKind::Deploy,
                version: Some(release.version),
                reason: e.to_string(),
                serving: was,
            }),
        }
    }

    /// The verification window after a switch: on a breach, the version
    /// that served before (`before`) is brought back, health-gated (on
    /// blue-green, a switch back to the kept set), and the deploy fails.
    async fn verify(
        &self,
        entry: &ManagedEntry,
        before: &ServiceRecord,
        version: &Version,
        plan: &RolloutPlan,
        succeeded: EventBody,
        progress: &CommandProgress<'_>,
    ) -> Result<EventBody, RuntimeError> {
        let service = &entry.config.name;
        let strategy = plan.strategy.kind();
        progress.step(
            &format!(
                "verifying {version} for {}",
                humantime::format_duration(plan.thresholds.verify_for)
            ),
            Some(version),
            0,
            0,
        );
        let breach = match entry
            .backend
            .verify(version, strategy, &plan.thresholds, progress)
            .await
        {
            Ok(Verification {
                breach: Some(breach),
                ..
            }) => breach,
            Ok(Verification {
                requests,
                conclusive,
                ..
            }) => {
                return Ok(verified(
                    succeeded,
                    plan.thresholds.verify_for,
                    requests,
                    conclusive,
                ))
            }
            Err(RuntimeError::Interrupted) => return Err(RuntimeError::Interrupted),
            Err(e) => {
                tracing::warn!(%service, %version, "no verification: {e}");
                return Ok(with_detail(succeeded, &format!("not verified: {e}")));
            }
        };
        tracing::warn!(%service, %version, %breach, "verification after the switch breached; rolling back");
        let Some(previous) = before.current.clone() else {
            // Not reached: a first deploy is not verified.
            return Ok(succeeded);
        };
        let replicas = default_replicas(before, &entry.config);
        let back = previous.version.clone();
        match entry
            .backend
            .deploy(&previous, replicas, Replacement::HealthGated, progress)
            .await
        {
            Ok(()) => {
                let (current, earlier) = (before.current.clone(), before.previous.clone());
                self.ledger.change_record(service, |r| {
                    r.current = current;
                    r.previous = earlier;
                    r.replicas = replicas;
                })?;
                let how = if strategy == ferry_protocol::rollout::StrategyKind::BlueGreen {
                    format!("switched back to the kept {back} set")
                } else {
                    format!("rolled back to {back}")
                };
                Ok(EventBody::Failed {
                    action: ActionKind::Deploy,
                    version: Some(version.clone()),
                    reason: format!("verification after the {strategy} switch: {breach}; {how}"),
                    serving: Some(back),
                })
            }
            Err(RuntimeError::Interrupted) => Err(RuntimeError::Interrupted),
            Err(e) => Ok(EventBody::Failed {
                action: ActionKind::Deploy,
                version: Some(version.clone()),
                reason: format!(
                    "verification after the {strategy} switch: {breach}; rolling back to {back} failed: {e}"
                ),
                serving: Some(version.clone()),
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        entry: &ManagedEntry,
        record: &ServiceRecord,
        release: ReleaseSpec,
        replicas: u32,
        replacement: Replacement,
        kind: ActionKind,
        progress: &CommandProgress<'_>,
    ) -> Result<EventBody, RuntimeError> {
        let service = &entry.config.name;
        let was = record.current.as_ref().map(|r| r.version.clone());
        match entry
            .backend
            .deploy(&release, replicas, replacement, progress)
            .await
        {
            Ok(()) => {
                let version = release.version.clone();
                self.ledger.change_record(service, |r| {
                    r.promote(release);
                    r.replicas = replicas;
                })?;
                let detail = match was {
                    Some(was) if was != version => format!(
                        "{service} {version} serving with {replicas} healthy replicas (was {was})"
                    ),
                    _ => format!("{service} {version} serving with {replicas} healthy replicas"),
                };
                Ok(EventBody::Succeeded {
                    action: kind,
                    version: Some(version),
                    replicas,
                    detail,
                })
            }
            Err(RuntimeError::Interrupted) => Err(RuntimeError::Interrupted),
            Err(e) => {
                let serving = if replacement == Replacement::StopFirst {
                    None
                } else {
                    was
                };
                Ok(EventBody::Failed {
                    action: kind,
                    version: Some(release.version),
                    reason: e.to_string(),
                    serving,
                })
            }
        }
    }
}
