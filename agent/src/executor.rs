//! Carries out one verified command on one service: resolves what it means
//! against the agent's state (which version is "previous", how many replicas),
//! drives the service's backend, records the result, and reports the outcome.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::command::{
    Action, ActionKind, Command, MaintenanceMode, ReleaseSpec, RollbackTarget,
};
use ferry_protocol::event::{Alert, EventBody, MaintenanceInfo};
use ferry_protocol::{EnvName, ServiceName, Version};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::backend::ServiceBackend;
use crate::config::ServiceConfig;
use crate::events::{EventPublisher, EventSink};
use crate::rollout::{
    ControlRequest, RolloutEnd, RolloutObserver, RolloutPlan, RolloutRequest, Verification,
};
use crate::runtime::{Progress, Replacement, RuntimeError};
use crate::state::{ServiceRecord, State};
use ferry_protocol::rollout::{RolloutControl, RolloutEvent, Strategy};
use tokio::sync::{mpsc, oneshot};

/// A managed service: its configuration and its backend.
#[derive(Clone)]
pub struct ManagedEntry {
    /// Configuration.
    pub config: ServiceConfig,
    /// Backend.
    pub backend: Arc<dyn ServiceBackend>,
}

/// A command's final event, recorded and ready to publish.
#[derive(Debug)]
pub struct Report {
    /// The service.
    pub service: ServiceName,
    /// The command.
    pub command_id: Option<Uuid>,
    /// Succeeded, failed, refused or dry run.
    pub body: EventBody,
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
    environment: EnvName,
    services: BTreeMap<ServiceName, ManagedEntry>,
    state: Arc<Mutex<State>>,
    publisher: EventPublisher,
    sink: EventSink,
    changed: Arc<tokio::sync::Notify>,
    disk_order: tokio::sync::Mutex<()>,
    /// Control handles of the rollouts running now, by service.
    controls: Mutex<HashMap<ServiceName, mpsc::Sender<ControlRequest>>>,
}

/// Control actions queued for one running rollout.
const CONTROL_QUEUE: usize = 8;
/// How long a control action waits for the rollout to act on it.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

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
        environment: EnvName,
        services: BTreeMap<ServiceName, ManagedEntry>,
        state: Arc<Mutex<State>>,
        publisher: EventPublisher,
        sink: EventSink,
    ) -> Self {
        Executor {
            environment,
            services,
            state,
            publisher,
            sink,
            changed: Arc::new(tokio::sync::Notify::new()),
            disk_order: tokio::sync::Mutex::new(()),
            controls: Mutex::new(HashMap::new()),
        }
    }

    /// Notified after every command, so a heartbeat can report the new state
    /// at once instead of at the next tick.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// The agent's environment.
    pub fn environment(&self) -> &EnvName {
        &self.environment
    }

    /// The managed services.
    pub fn services(&self) -> &BTreeMap<ServiceName, ManagedEntry> {
        &self.services
    }

    /// The record of one service.
    pub fn record(&self, service: &ServiceName) -> ServiceRecord {
        self.state
            .lock()
            .map(|s| s.service(service))
            .unwrap_or_default()
    }

    /// Whether `id` was already executed.
    pub fn was_executed(&self, id: &Uuid) -> bool {
        self.state
            .lock()
            .map(|s| s.was_executed(id))
            .unwrap_or(false)
    }

    /// Logs a refusal and returns its report.
    pub fn refuse(
        &self,
        service: &ServiceName,
        command_id: Option<Uuid>,
        refusal: &ferry_protocol::Refusal,
    ) -> Report {
        tracing::warn!(%service, ?command_id, reason = %refusal.reason, detail = %refusal.detail, "command refused");
        Report {
            service: service.clone(),
            command_id,
            body: EventBody::Refused {
                reason: refusal.reason,
                detail: refusal.detail.clone(),
            },
        }
    }

    /// Publishes a report durably (`--wait` and history rely on it).
    pub async fn publish(&self, report: Report) {
        self.publisher
            .publish_durable(&report.service, report.command_id, report.body)
            .await;
    }

    /// Publishes that a command was accepted, straight away rather than through
    /// the event queue: it is what a waiting operator sees first.
    pub async fn accepted(&self, service: &ServiceName, command_id: Uuid, action: ActionKind) {
        self.publisher
            .publish_now(service, Some(command_id), EventBody::Accepted { action })
            .await;
    }

    /// Carries out `command` (already verified and checked for replay).
    pub async fn execute(&self, id: Uuid, expires: OffsetDateTime, command: Command) -> Completion {
        let service = command.service.clone();
        let Some(entry) = self.services.get(&service) else {
            let refusal = ferry_protocol::Refusal::new(
                ferry_protocol::RefusalReason::UnknownService,
                format!("this agent does not manage a service named {service}"),
            );
            return Completion::Done(self.refuse(&service, Some(id), &refusal));
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
        let body = match self.commit(id, expires).await {
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
        let handle = self
            .controls
            .lock()
            .ok()
            .and_then(|c| c.get(&service).cloned());
        let result = match handle {
            None => Err(format!("no rollout of {service} is in progress")),
            Some(tx) => {
                let (reply, answer) = oneshot::channel();
                match tx.try_send(ControlRequest { control, reply }) {
                    Err(_) => Err(format!("the rollout of {service} has ended")),
                    Ok(()) => match tokio::time::timeout(CONTROL_TIMEOUT, answer).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(_)) => Err(format!("the rollout of {service} ended first")),
                        Err(_) => Err(format!(
                            "the rollout of {service} did not act within {CONTROL_TIMEOUT:?}"
                        )),
                    },
                }
            }
        };
        tracing::info!(%service, command_id = %id, %control, ?result, "rollout control");
        if let Err(CommitFailed { error: e, .. }) = self.commit(id, expires).await {
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

    /// Records command `id` as executed, together with every record changed
    /// since the last commit, in one synced write on the blocking pool.
    /// Writes happen in the order their commits were made (`disk_order`),
    /// and the state's lock is never held across one.
    async fn commit(&self, id: Uuid, expires: OffsetDateTime) -> Result<(), CommitFailed> {
        let _in_order = self.disk_order.lock().await;
        let commit = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| CommitFailed::records_lost(crate::Error::StatePoisoned))?;
            state.commit(id, expires, OffsetDateTime::now_utc())
        }
        .map_err(CommitFailed::records_lost)?;
        let Some(write) = commit.write else {
            return Ok(());
        };
        let written = tokio::task::spawn_blocking(move || write.perform())
            .await
            .map_err(|e| crate::Error::StateWriter(e.to_string()))
            .and_then(|written| written);
        match written {
            Ok(()) => Ok(()),
            Err(error) => {
                let records_lost = !commit.services.is_empty();
                if let Ok(mut state) = self.state.lock() {
                    state.not_written(commit.services);
                }
                Err(CommitFailed {
                    error,
                    records_lost,
                })
            }
        }
    }

    /// Changes `service`'s record in memory, where status and heartbeats
    /// read it; the command's commit makes it durable with the command's
    /// executed mark. A crash before then restarts from the record before
    /// the command, and JetStream delivers the command again.
    fn change_record(
        &self,
        service: &ServiceName,
        change: impl FnOnce(&mut ServiceRecord),
    ) -> Result<(), RuntimeError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| RuntimeError::NotRecorded(crate::Error::StatePoisoned.to_string()))?;
        let mut record = state.service(service);
        change(&mut record);
        state.set_service(service, record);
        Ok(())
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
                        plan: rollback_plan(entry, current.as_ref(), &target, replicas, force),
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
                self.change_record(service, |r| r.replicas = replicas)?;
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
                self.change_record(service, |r| r.maintenance = info)?;
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
        let (tx, mut rx) = mpsc::channel(CONTROL_QUEUE);
        if let Ok(mut controls) = self.controls.lock() {
            controls.insert(service.clone(), tx);
        }
        let result = entry
            .backend
            .roll_out(RolloutRequest {
                release: &release,
                replicas,
                plan,
                controls: &mut rx,
                progress,
                observer: progress,
            })
            .await;
        if let Ok(mut controls) = self.controls.lock() {
            controls.remove(service);
        }
        // Control actions that arrived as it ended get their answer.
        rx.close();
        while let Ok(request) = rx.try_recv() {
            let _ = request
                .reply
                .send(Err(format!("the rollout of {service} has ended")));
        }
        match result {
            Ok(RolloutEnd::Promoted { detail }) => {
                let version = release.version.clone();
                self.change_record(service, |r| {
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
                self.change_record(service, |r| {
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
                self.change_record(service, |r| {
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

/// A succeeded deploy's detail with what its verification weighed.
fn verified(succeeded: EventBody, over: Duration, requests: u64, conclusive: bool) -> EventBody {
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
fn with_detail(succeeded: EventBody, more: &str) -> EventBody {
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

/// An outcome whose record changes could not be written: live, but a
/// restarted agent would return to the state before the command.
/// A commit that did not reach the disk.
struct CommitFailed {
    error: crate::Error,
    /// Record changes went with it (not only the executed mark): the
    /// outcome must say the change is live but not recorded.
    records_lost: bool,
}

impl CommitFailed {
    fn records_lost(error: crate::Error) -> CommitFailed {
        CommitFailed {
            error,
            records_lost: true,
        }
    }
}

fn not_recorded(body: EventBody, error: &crate::Error) -> EventBody {
    let why = RuntimeError::NotRecorded(error.to_string()).to_string();
    match body {
        EventBody::Succeeded {
            action, version, ..
        } => EventBody::Failed {
            action,
            version: version.clone(),
            reason: why,
            serving: version,
        },
        EventBody::Failed {
            action,
            version,
            reason,
            serving,
        } => EventBody::Failed {
            action,
            version,
            reason: format!("{reason}; {why}"),
            serving,
        },
        other => other,
    }
}

fn default_replicas(record: &ServiceRecord, config: &ServiceConfig) -> u32 {
    if record.current.is_some() && record.replicas > 0 {
        record.replicas
    } else {
        config.replicas
    }
}

fn rollback_plan(
    entry: &ManagedEntry,
    current: Option<&Version>,
    target: &ReleaseSpec,
    replicas: u32,
    force: bool,
) -> Vec<String> {
    let service = &entry.config.name;
    let health = &entry.config.health;
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
    plan.push(format!(
        "switch {} to the new replicas",
        entry.config.listen
    ));
    if !force {
        plan.push(format!("stop the replicas of {current_text}; if {} fails its checks, {current_text} keeps serving", target.version));
    }
    plan.push("no change is made by a dry run".into());
    plan
}
