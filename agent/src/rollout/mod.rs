//! Progressive delivery, driven by the agent alone: one job, moving a new
//! version through its strategy's steps (canary weights, rolling batches, a
//! blue-green switch), weighing the new version's golden signals as they come
//! (the `ferry_analysis` crate), verifying a switched deploy for `verify_for`, and
//! rolling back by itself when the evidence says so. Nothing here needs NATS:
//! events go to the bounded sink, and a lost connection changes no decision.
//!
//! It decides when; what a strategy needs done (start the next version's
//! set, move a share of traffic to it, read its signals, promote it, take it
//! out) is a [`RolloutTarget`], which each runtime implements once.

use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::Alert;
use ferry_protocol::rollout::AnalysisMode;
use ferry_protocol::rollout::{
    AbortReason, BothFailing, Breach, RolloutControl, RolloutEvent, RolloutOptions, RolloutPhase,
    RolloutState, RolloutStatus, Strategy, StrategyKind,
};
use ferry_protocol::{ServiceName, Version};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics_provider::PrometheusProvider;
use crate::runtime::{Progress, RuntimeError};
use ferry_analysis::{Sequential, SetWindow, Thresholds, Verdict, Verdicts};

mod silence;
use silence::Silence;

/// What a strategy needs of a runtime: a stable set serving, a "next" set
/// beside it that takes a share of the traffic, and the signals of each.
#[async_trait]
pub trait RolloutTarget: Send + Sync {
    /// The service.
    fn name(&self) -> &ServiceName;
    /// Cancelled when the agent shuts down.
    fn shutdown_token(&self) -> CancellationToken;
    /// Where the rollout is, for snapshots and heartbeats.
    fn set_rollout_status(&self, status: Option<RolloutStatus>);
    /// Starts `replicas` of `release` beside the stable set, each healthy
    /// before it returns; they take no traffic yet.
    async fn start_next(
        &self,
        release: &ReleaseSpec,
        replicas: u32,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError>;
    /// Sends `weight` percent of the traffic to the next set. Returns the
    /// share actually reached where the runtime can only approximate it
    /// (`None`: exactly `weight`), or why the next set could not take it.
    async fn route_next(&self, weight: u8) -> Result<Option<u8>, RuntimeError>;
    /// Health-checks the next set: the first failure, if any.
    async fn check_next(&self) -> Option<String>;
    /// What the next set answered since the last call.
    fn take_next_window(&self) -> SetWindow;
    /// What the stable set answered since the last call.
    fn take_stable_window(&self) -> SetWindow;
    /// Takes the next set out of the path and stops it.
    async fn abort_next(&self);
    /// Makes the next set the stable one; the old stable set is stopped, or
    /// kept for `keep_old` (a rollback to it is then a switch back).
    async fn promote_next(&self, release: &ReleaseSpec, replicas: u32, keep_old: Option<Duration>);
    /// Replicas in the stable set.
    async fn stable_count(&self) -> u32;
    /// Stops `count` replicas of the stable set.
    async fn stop_stable(&self, count: u32);
    /// Brings the stable set back to its size before the rollout.
    async fn restore_stable(&self);
    /// Where analysis reads the new version's signals instead of the
    /// next/stable windows (`None`: from them, the proxy's).
    fn metrics_provider(&self) -> Option<&PrometheusProvider> {
        None
    }
}

pub use ferry_protocol::rollout::HOTFIX_STEPS;

/// What a deploy does: its strategy and its analysis.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPlan {
    /// The strategy.
    pub strategy: Strategy,
    /// The thresholds.
    pub thresholds: Thresholds,
}

impl RolloutPlan {
    /// The plan of one deploy: the service's configuration, the command's
    /// overrides, and the hotfix path (a short canary whose steps last one
    /// detection window each, analysis kept).
    pub fn resolve(
        configured: &Strategy,
        thresholds: &Thresholds,
        options: Option<&RolloutOptions>,
        hotfix: bool,
    ) -> RolloutPlan {
        let thresholds = match options.and_then(|o| o.analysis.as_ref()) {
            Some(o) => thresholds.with(o),
            None => thresholds.clone(),
        };
        let strategy = options
            .and_then(|o| o.strategy.clone())
            .unwrap_or_else(|| configured.clone());
        let strategy = if hotfix {
            let window = thresholds.interval * thresholds.failures_to_abort.max(1);
            Strategy::Canary {
                steps: HOTFIX_STEPS.to_vec(),
                step_secs: window.as_secs().max(1),
            }
        } else {
            strategy
        };
        RolloutPlan {
            strategy,
            thresholds,
        }
    }
}

/// An operator's control action on its way to the running rollout, with
/// where to send what it did.
#[derive(Debug)]
pub struct ControlRequest {
    /// The action.
    pub control: RolloutControl,
    /// Answered once the action took effect (a sentence), or why it could not.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// How a rollout ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RolloutEnd {
    /// The new version serves everything.
    Promoted {
        /// A sentence for people.
        detail: String,
    },
    /// The stable version serves everything again.
    Aborted(AbortReason),
}

/// One progressive rollout as a backend is asked to run it: `release` at
/// `replicas` per `plan`, taking operator `controls` while it runs, reporting
/// its steps to `progress` and its rollout events to `observer`.
pub struct RolloutRequest<'a> {
    /// The release rolled out.
    pub release: &'a ReleaseSpec,
    /// Replicas of the new version once it serves everything.
    pub replicas: u32,
    /// The strategy and the thresholds it is held to.
    pub plan: &'a RolloutPlan,
    /// Operator control actions (pause, resume, promote, abort).
    pub controls: &'a mut mpsc::Receiver<ControlRequest>,
    /// Where the steps of the command are reported.
    pub progress: &'a dyn Progress,
    /// Where rollout events and alerts are reported.
    pub observer: &'a dyn RolloutObserver,
}

/// Where a rollout reports its events.
pub trait RolloutObserver: Send + Sync {
    /// One rollout event.
    fn event(&self, event: RolloutEvent);
    /// An alert for people (the controller notifies on it): the stable and
    /// the new version fail alike, and the rollout is held.
    fn alert(&self, alert: Alert);
}

struct Driver<'a> {
    service: &'a dyn RolloutTarget,
    observer: &'a dyn RolloutObserver,
    status: RolloutStatus,
}

impl Driver<'_> {
    fn emit(&mut self, phase: RolloutPhase) {
        self.service.set_rollout_status(Some(self.status.clone()));
        self.observer.event(RolloutEvent {
            status: self.status.clone(),
            phase,
        });
    }

    async fn abort(&mut self, reason: AbortReason) -> RolloutEnd {
        self.service.abort_next().await;
        self.status.state = RolloutState::Aborted;
        self.status.weight_percent = 0;
        self.status.weight_reached_percent = None;
        tracing::warn!(service = %self.service.name(), version = %self.status.version, %reason, "rollout aborted; the stable version serves everything");
        self.emit(RolloutPhase::Aborted {
            reason: reason.clone(),
        });
        RolloutEnd::Aborted(reason)
    }

    /// Starts the new version's set beside the stable one. `Ok(Some(end))`:
    /// it could not become healthy, and the rollout was aborted.
    async fn start_next_set(
        &mut self,
        release: &ReleaseSpec,
        replicas: u32,
        step: &str,
        progress: &dyn Progress,
    ) -> Result<Option<RolloutEnd>, RuntimeError> {
        progress.step(step, Some(&release.version), 0, replicas);
        match self.service.start_next(release, replicas, progress).await {
            Ok(()) => Ok(None),
            Err(RuntimeError::Interrupted) => Err(RuntimeError::Interrupted),
            Err(e) => Ok(Some(
                self.abort(AbortReason::Unhealthy {
                    detail: e.to_string(),
                })
                .await,
            )),
        }
    }

    /// Moves `weight` percent of the traffic to the next set, recording the
    /// share reached. `Some(end)`: the next set could not take it, and the
    /// rollout was aborted.
    async fn route(&mut self, weight: u8) -> Option<RolloutEnd> {
        self.status.weight_percent = weight;
        match self.service.route_next(weight).await {
            Ok(reached) => {
                self.status.weight_reached_percent = reached;
                None
            }
            Err(e) => Some(
                self.abort(AbortReason::Unhealthy {
                    detail: e.to_string(),
                })
                .await,
            ),
        }
    }

    fn promoted(&mut self) {
        self.status.state = RolloutState::Promoted;
        self.status.weight_percent = 100;
        self.status.weight_reached_percent = None;
        self.emit(RolloutPhase::Promoted);
    }
}

fn answer(reply: oneshot::Sender<Result<String, String>>, result: Result<String, String>) {
    // The asker may have given up; the effect stands either way.
    let _ = reply.send(result);
}

/// Drives a rollout of `release` at `replicas` on `service` (whose stable set
/// is serving). Returns once the new version serves everything or the stable
/// one does again; `Err` only for failures before any traffic moved, and for
/// shutdown (after taking the new version out of the path).
pub async fn drive(
    service: &dyn RolloutTarget,
    request: RolloutRequest<'_>,
) -> Result<RolloutEnd, RuntimeError> {
    let RolloutRequest {
        release,
        replicas,
        plan,
        controls,
        progress,
        observer,
    } = request;
    let steps = match &plan.strategy {
        Strategy::Canary { steps, .. } => {
            let mut steps = steps.clone();
            if steps.last() != Some(&100) {
                steps.push(100);
            }
            steps
        }
        Strategy::BlueGreen { .. } => vec![100],
        Strategy::Rolling { batch_size, .. } => {
            vec![0; replicas.div_ceil((*batch_size).max(1)) as usize]
        }
        Strategy::Recreate => vec![100],
    };
    let mut driver = Driver {
        service,
        observer,
        status: RolloutStatus {
            strategy: plan.strategy.kind(),
            version: release.version.clone(),
            state: RolloutState::Progressing,
            step: 0,
            steps: u32::try_from(steps.len()).unwrap_or(u32::MAX),
            weight_percent: 0,
            weight_reached_percent: None,
        },
    };
    service.set_rollout_status(Some(driver.status.clone()));
    let result = match &plan.strategy {
        Strategy::Canary { step_secs, .. } => {
            canary(
                &mut driver,
                release,
                replicas,
                &steps,
                Duration::from_secs(*step_secs),
                &plan.thresholds,
                controls,
                progress,
            )
            .await
        }
        Strategy::BlueGreen { keep_old_for_secs } => {
            blue_green(
                &mut driver,
                release,
                replicas,
                Duration::from_secs(*keep_old_for_secs),
                progress,
            )
            .await
        }
        Strategy::Rolling {
            batch_size,
            max_unavailable,
        } => {
            rolling(
                &mut driver,
                release,
                replicas,
                *batch_size,
                *max_unavailable,
                progress,
            )
            .await
        }
        Strategy::Recreate => Err(RuntimeError::Unsupported(
            "recreate is not a progressive strategy".into(),
        )),
    };
    if let Err(e) = &result {
        service.abort_next().await;
        if !matches!(e, RuntimeError::Interrupted) {
            driver.status.state = RolloutState::Aborted;
            driver.emit(RolloutPhase::Aborted {
                reason: AbortReason::Unhealthy {
                    detail: e.to_string(),
                },
            });
        }
    }
    result
}

/// The analysis of one rollout or verification window, in either mode:
/// fed a batch at every tick, it reports what it measured once per
/// `interval` and says when to stop.
struct Watch<'t> {
    thresholds: &'t Thresholds,
    sequential: Sequential,
    verdicts: Verdicts,
    /// What the new version answered since the last report.
    report: SetWindow,
    reported: Instant,
}

/// What one look at the signals found.
enum Look {
    /// Keep going (with the signals to report, once per interval).
    Continue(Option<RolloutPhase>),
    /// Stop: this threshold is breached (the Analysed event to emit first).
    Breach(Breach, u32, RolloutPhase),
    /// Stop: clearly worse than the stable version.
    WorseThanStable(Breach, RolloutPhase),
    /// The stable version fails too.
    BothFailing(Breach, f64),
}

impl<'t> Watch<'t> {
    fn new(thresholds: &'t Thresholds) -> Self {
        Watch {
            thresholds,
            sequential: Sequential::new(thresholds),
            verdicts: Verdicts::default(),
            report: SetWindow::new(),
            reported: Instant::now(),
        }
    }

    /// How often to look.
    fn period(&self) -> Duration {
        match self.thresholds.mode {
            AnalysisMode::Sequential => self.thresholds.decide_every.min(self.thresholds.interval),
            AnalysisMode::Intervals => self.thresholds.interval,
        }
    }

    /// Starts over (after a pause, or at a new step in intervals mode).
    fn restart(&mut self) {
        self.sequential = Sequential::new(self.thresholds);
        self.report = SetWindow::new();
        self.reported = Instant::now();
    }

    /// Whether an interval has passed since the last report.
    fn report_due(&self) -> bool {
        self.thresholds.mode == AnalysisMode::Intervals
            || self.reported.elapsed() + self.period() / 2 >= self.thresholds.interval
    }

    fn analysed(&mut self, breaches: Vec<Breach>) -> RolloutPhase {
        let report = std::mem::take(&mut self.report);
        self.reported = Instant::now();
        let conclusive = match self.thresholds.mode {
            AnalysisMode::Sequential => {
                self.sequential.requests() >= self.thresholds.min_requests.max(1)
            }
            AnalysisMode::Intervals => report.requests >= self.thresholds.min_requests.max(1),
        };
        let t = self.thresholds;
        RolloutPhase::Analysed {
            signals: report.signals(),
            breaches,
            conclusive,
            limits: Some(ferry_protocol::rollout::Limits {
                error_rate_percent: t.error_rate_percent,
                p95_ms: t.p95_ms,
                p99_ms: t.p99_ms,
                availability_percent: t.availability_percent,
                min_requests: t.min_requests,
            }),
        }
    }

    /// Weighs what the new version (and the stable one beside it, if any)
    /// answered since the last look.
    fn look(&mut self, new: SetWindow, stable: Option<&SetWindow>) -> Look {
        let t = self.thresholds;
        match t.mode {
            AnalysisMode::Intervals => {
                let (_, breaches, _) = t.judge(&new);
                self.report = new;
                let verdict = self.verdicts.observe(&breaches, t.failures_to_abort);
                let phase = self.analysed(breaches);
                match verdict {
                    Some((breach, intervals)) => Look::Breach(breach, intervals, phase),
                    None => Look::Continue(Some(phase)),
                }
            }
            AnalysisMode::Sequential => {
                let verdict = self.sequential.observe(&new, stable);
                self.report.merge(&new);
                match verdict {
                    Verdict::Continue => {
                        Look::Continue(self.report_due().then(|| self.analysed(Vec::new())))
                    }
                    Verdict::Breach(b) => {
                        let phase = self.analysed(vec![b.clone()]);
                        Look::Breach(b, 1, phase)
                    }
                    Verdict::WorseThanStable(b) => {
                        let phase = self.analysed(vec![b.clone()]);
                        Look::WorseThanStable(b, phase)
                    }
                    Verdict::BothFailing {
                        breach,
                        stable_value,
                    } => Look::BothFailing(breach, stable_value),
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn canary(
    driver: &mut Driver<'_>,
    release: &ReleaseSpec,
    replicas: u32,
    steps: &[u8],
    hold: Duration,
    thresholds: &Thresholds,
    controls: &mut mpsc::Receiver<ControlRequest>,
    progress: &dyn Progress,
) -> Result<RolloutEnd, RuntimeError> {
    let service = driver.service;
    if let Some(end) = driver
        .start_next_set(release, replicas, "starting canary replicas", progress)
        .await?
    {
        return Ok(end);
    }
    let provider = service.metrics_provider();
    let provider_thresholds;
    let thresholds = match provider {
        // A provider's answers are judged by the fixed rule, once per
        // interval, on the new version alone.
        Some(_) => {
            provider_thresholds = thresholds.for_provider();
            &provider_thresholds
        }
        None => thresholds,
    };
    let mut silence = Silence::default();
    let mut watch = Watch::new(thresholds);
    let mut paused = false;
    // Set while held because the stable version fails too (reported and
    // alerted once, cleared on resume): the canary's breach and the stable
    // version's value.
    let mut outage: Option<(Breach, f64)> = None;
    let mut promote_now = false;
    let mut tick = tokio::time::interval_at(Instant::now() + watch.period(), watch.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checked = Instant::now();
    let shutdown = service.shutdown_token();
    let mut index = 0;
    while index < steps.len() {
        let weight = if promote_now { 100 } else { steps[index] };
        driver.status.step = u32::try_from(index + 1).unwrap_or(u32::MAX);
        if let Some(end) = driver.route(weight).await {
            return Ok(end);
        }
        if index == 0 {
            // Only what answered since traffic moved counts.
            service.take_next_window();
            service.take_stable_window();
        }
        tracing::info!(service = %service.name(), version = %release.version, step = index + 1, weight, "canary step");
        progress.step(
            &format!(
                "canary step {} of {}: {weight}% of traffic",
                index + 1,
                steps.len()
            ),
            Some(&release.version),
            replicas,
            replicas,
        );
        driver.emit(RolloutPhase::StepStarted);
        silence.step_started();
        let mut deadline = Instant::now() + hold;
        loop {
            let step_over = tokio::time::sleep_until(deadline);
            tokio::select! {
                _ = shutdown.cancelled() => return Err(RuntimeError::Interrupted),
                _ = tick.tick() => {
                    if checked.elapsed() + watch.period() / 2 >= thresholds.interval {
                        // Health checks feed the canary's availability.
                        service.check_next().await;
                        checked = Instant::now();
                    }
                    let new = service.take_next_window();
                    let stable = service.take_stable_window();
                    let step = driver.status.step;
                    let new = match provider {
                        None => new,
                        Some(provider) => match provider.window(&release.version, thresholds.interval).await {
                            Ok(window) => {
                                silence.answered();
                                window
                            }
                            Err(e) => {
                                tracing::warn!(service = %service.name(), version = %release.version, step, error = %e, "no verdict this interval");
                                if let Some(reason) = silence.failed(provider, e, hold.max(thresholds.interval), step) {
                                    return Ok(driver.abort(reason).await);
                                }
                                continue;
                            }
                        },
                    };
                    // At 100% no stable traffic runs beside the canary.
                    let beside = (thresholds.compare_to_stable && weight < 100).then_some(&stable);
                    match watch.look(new, beside) {
                        Look::Continue(phase) => {
                            if let Some(phase) = phase {
                                driver.emit(phase);
                            }
                        }
                        Look::Breach(breach, intervals, phase) => {
                            driver.emit(phase);
                            return Ok(driver.abort(AbortReason::Threshold {
                                breach,
                                step,
                                weight_percent: weight,
                                intervals,
                            }).await);
                        }
                        Look::WorseThanStable(breach, phase) => {
                            driver.emit(phase);
                            return Ok(driver.abort(AbortReason::WorseThanStable {
                                breach,
                                step,
                                weight_percent: weight,
                            }).await);
                        }
                        Look::BothFailing(breach, stable_value) => {
                            if thresholds.on_both_failing == BothFailing::Abort {
                                return Ok(driver.abort(AbortReason::BothFailing {
                                    breach,
                                    stable_value,
                                    step,
                                }).await);
                            }
                            if outage.is_none() {
                                outage = Some((breach.clone(), stable_value));
                                tracing::warn!(service = %service.name(), version = %release.version, %breach, stable_value, "the stable version fails too: holding the rollout, not blaming the new version");
                                driver.observer.alert(Alert {
                                    raised: true,
                                    breach: breach.clone(),
                                    version: Some(release.version.clone()),
                                    stable_value: Some(stable_value),
                                });
                                driver.emit(RolloutPhase::BothFailing { canary: breach, stable_value });
                                paused = true;
                                driver.status.state = RolloutState::Paused;
                                driver.emit(RolloutPhase::Paused);
                            }
                            watch.restart();
                        }
                    }
                }
                request = controls.recv() => {
                    let Some(ControlRequest { control, reply }) = request else { continue };
                    match control {
                        RolloutControl::Pause => {
                            paused = true;
                            driver.status.state = RolloutState::Paused;
                            driver.emit(RolloutPhase::Paused);
                            answer(reply, Ok(format!("rollout of {} paused at step {} ({weight}%)", release.version, driver.status.step)));
                        }
                        RolloutControl::Resume => {
                            let was = paused;
                            paused = false;
                            if let Some((breach, stable_value)) = outage.take() {
                                driver.observer.alert(Alert {
                                    raised: false,
                                    breach,
                                    version: Some(release.version.clone()),
                                    stable_value: Some(stable_value),
                                });
                            }
                            // Evidence from before the pause does not carry over.
                            watch.restart();
                            driver.status.state = RolloutState::Progressing;
                            driver.emit(RolloutPhase::Resumed);
                            answer(reply, Ok(if was { format!("rollout of {} resumed at step {}", release.version, driver.status.step) } else { "the rollout was not paused".into() }));
                        }
                        RolloutControl::Abort => {
                            let step = driver.status.step;
                            let end = driver.abort(AbortReason::Operator { step }).await;
                            answer(reply, Ok(format!("rollout of {} aborted at step {step}; the stable version serves everything", release.version)));
                            return Ok(end);
                        }
                        RolloutControl::Promote => {
                            promote_now = true;
                            if let Some(end) = driver.route(100).await {
                                answer(reply, Err(format!("{} could not take all traffic", release.version)));
                                return Ok(end);
                            }
                            driver.status.state = RolloutState::Progressing;
                            answer(reply, Ok(format!("{} promoted: it takes all traffic", release.version)));
                            index = steps.len();
                            break;
                        }
                    }
                }
                _ = step_over, if !paused => {
                    if let Some(reason) = provider.and_then(|p| silence.step_over(p, driver.status.step)) {
                        return Ok(driver.abort(reason).await);
                    }
                    break;
                }
            }
            if paused {
                // A paused step is held until resumed, then runs a full hold.
                deadline = Instant::now() + hold;
            }
        }
        index += 1;
    }
    service.promote_next(release, replicas, None).await;
    driver.promoted();
    Ok(RolloutEnd::Promoted {
        detail: format!(
            "canary of {} passed {} step{} and serves all traffic",
            release.version,
            if promote_now {
                driver.status.step
            } else {
                driver.status.steps
            },
            if driver.status.steps == 1 { "" } else { "s" }
        ),
    })
}

/// What a verification window found.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    /// The breach that ended it early, if any (rolling back is the caller's).
    pub breach: Option<Breach>,
    /// Requests weighed.
    pub requests: u64,
    /// Whether there were enough requests for error rate and latency
    /// (otherwise only health checks counted).
    pub conclusive: bool,
}

/// Watches the version that now serves everything for `thresholds.verify_for`
/// after a switch (recreate, rolling, blue-green, a hotfix's canary), analysed
/// like a canary step at 100%. Emits its analysis as rollout events of
/// `strategy`.
pub async fn verify(
    target: &dyn RolloutTarget,
    version: &Version,
    strategy: StrategyKind,
    thresholds: &Thresholds,
    observer: &dyn RolloutObserver,
) -> Result<Verification, RuntimeError> {
    let mut status = RolloutStatus {
        strategy,
        version: version.clone(),
        state: RolloutState::Progressing,
        step: 1,
        steps: 1,
        weight_percent: 100,
        weight_reached_percent: None,
    };
    let emit = |status: &RolloutStatus, phase| {
        target.set_rollout_status(Some(status.clone()));
        observer.event(RolloutEvent {
            status: status.clone(),
            phase,
        });
    };
    // What answered before the switch is not this version's.
    target.take_stable_window();
    let provider = target.metrics_provider();
    let provider_thresholds;
    let thresholds = match provider {
        Some(_) => {
            provider_thresholds = thresholds.for_provider();
            &provider_thresholds
        }
        None => thresholds,
    };
    let mut watch = Watch::new(thresholds);
    let mut tick = tokio::time::interval_at(Instant::now() + watch.period(), watch.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = target.shutdown_token();
    let over = tokio::time::sleep(thresholds.verify_for);
    tokio::pin!(over);
    let mut requests = 0;
    let breached = |breach, requests| Verification {
        breach: Some(breach),
        requests,
        conclusive: true,
    };
    tracing::info!(service = %target.name(), %version, verify_for = ?thresholds.verify_for, "verifying after the switch");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Err(RuntimeError::Interrupted),
            _ = &mut over => break,
            _ = tick.tick() => {
                let window = target.take_stable_window();
                let window = match provider {
                    None => window,
                    // No verdict weighs nothing: the verification ends
                    // inconclusive if the provider never answers.
                    Some(provider) => match provider.window(version, thresholds.interval).await {
                        Ok(window) => window,
                        Err(e) => {
                            tracing::warn!(service = %target.name(), %version, error = %e, "no verdict this interval");
                            continue;
                        }
                    },
                };
                requests += window.requests;
                match watch.look(window, None) {
                    Look::Continue(phase) => {
                        if let Some(phase) = phase {
                            emit(&status, phase);
                        }
                    }
                    Look::Breach(breach, _, phase) | Look::WorseThanStable(breach, phase) => {
                        emit(&status, phase);
                        status.state = RolloutState::Aborted;
                        target.set_rollout_status(Some(status));
                        return Ok(breached(breach, requests));
                    }
                    // Nothing runs beside it to compare with.
                    Look::BothFailing(breach, _) => {
                        status.state = RolloutState::Aborted;
                        target.set_rollout_status(Some(status));
                        return Ok(breached(breach, requests));
                    }
                }
            }
        }
    }
    status.state = RolloutState::Promoted;
    emit(&status, RolloutPhase::Promoted);
    Ok(Verification {
        breach: None,
        requests,
        conclusive: requests >= thresholds.min_requests.max(1),
    })
}

async fn blue_green(
    driver: &mut Driver<'_>,
    release: &ReleaseSpec,
    replicas: u32,
    keep_old: Duration,
    progress: &dyn Progress,
) -> Result<RolloutEnd, RuntimeError> {
    let service = driver.service;
    driver.status.step = 1;
    driver.emit(RolloutPhase::StepStarted);
    if let Some(end) = driver
        .start_next_set(
            release,
            replicas,
            "starting the green set beside the blue one",
            progress,
        )
        .await?
    {
        return Ok(end);
    }
    // Verified once more just before the switch: a replica that died after
    // passing its start check must not receive traffic.
    if let Some(failure) = service.check_next().await {
        return Ok(driver
            .abort(AbortReason::Unhealthy { detail: failure })
            .await);
    }
    progress.step(
        "switching all traffic to the green set",
        Some(&release.version),
        replicas,
        replicas,
    );
    service
        .promote_next(release, replicas, Some(keep_old))
        .await;
    driver.promoted();
    Ok(RolloutEnd::Promoted {
        detail: format!(
            "blue-green switch to {} done; the previous set stays {} for an instant rollback",
            release.version,
            humantime::format_duration(keep_old)
        ),
    })
}

async fn rolling(
    driver: &mut Driver<'_>,
    release: &ReleaseSpec,
    replicas: u32,
    batch_size: u32,
    max_unavailable: u32,
    progress: &dyn Progress,
) -> Result<RolloutEnd, RuntimeError> {
    let service = driver.service;
    let batch_size = batch_size.max(1);
    let mut started = 0;
    while started < replicas {
        let batch = batch_size.min(replicas - started);
        driver.status.step += 1;
        // Up to max_unavailable old replicas go first, the rest after the
        // batch is healthy.
        let early = max_unavailable.min(batch);
        service.stop_stable(early).await;
        progress.step(
            &format!(
                "rolling batch {} of {}",
                driver.status.step, driver.status.steps
            ),
            Some(&release.version),
            started,
            replicas,
        );
        if let Err(e) = service.start_next(release, batch, progress).await {
            if matches!(e, RuntimeError::Interrupted) {
                service.restore_stable().await;
                return Err(e);
            }
            let end = driver
                .abort(AbortReason::Unhealthy {
                    detail: e.to_string(),
                })
                .await;
            service.restore_stable().await;
            return Ok(end);
        }
        started += batch;
        let remaining_old = service.stable_count().await;
        let weight =
            u8::try_from((u64::from(started) * 100) / u64::from(started + remaining_old).max(1))
                .unwrap_or(100);
        if let Some(end) = driver.route(weight).await {
            service.restore_stable().await;
            return Ok(end);
        }
        driver.emit(RolloutPhase::StepStarted);
        service.stop_stable(batch - early).await;
    }
    service.promote_next(release, replicas, None).await;
    driver.promoted();
    Ok(RolloutEnd::Promoted {
        detail: format!(
            "rolling update to {} done in {} batch{}",
            release.version,
            driver.status.steps,
            if driver.status.steps == 1 { "" } else { "es" }
        ),
    })
}
