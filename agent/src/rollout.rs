//! Progressive delivery, driven by the agent alone: one job, moving a new
//! version through its strategy's steps (canary weights, rolling batches, a
//! blue-green switch), analysing the new version's golden signals at the
//! proxy at every interval, and rolling back by itself when a threshold is
//! breached for enough consecutive intervals. Nothing here needs NATS: events
//! go to the bounded sink, and a lost connection changes no decision.
//!
//! The replica and proxy work is [`ManagedService`]'s; this module only
//! decides when to do what.

use std::time::Duration;

use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::rollout::{
    AbortReason, AnalysisOverride, Breach, Metric, RolloutControl, RolloutEvent, RolloutOptions,
    RolloutPhase, RolloutState, RolloutStatus, Signals, Strategy,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::managed::ManagedService;
use crate::proxy::CanaryWindow;
use crate::runtime::{Progress, RuntimeError};

pub use ferry_protocol::rollout::HOTFIX_STEPS;

/// Thresholds a new version is held to, with the seed's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Breach above this share of failed requests, percent.
    pub error_rate_percent: f64,
    /// Breach above this p95 latency, ms.
    pub p95_ms: f64,
    /// Breach above this p99 latency, ms.
    pub p99_ms: f64,
    /// Breach below this share of successful requests and health checks, percent.
    pub availability_percent: f64,
    /// Requests an interval needs before error rate and latency count.
    pub min_requests: u64,
    /// One analysis interval.
    pub interval: Duration,
    /// Consecutive breached intervals that abort.
    pub failures_to_abort: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            error_rate_percent: 5.0,
            p95_ms: 2000.0,
            p99_ms: 2000.0,
            availability_percent: 95.0,
            min_requests: 20,
            interval: Duration::from_secs(5),
            failures_to_abort: 2,
        }
    }
}

impl Thresholds {
    /// These thresholds with `o`'s fields in place of theirs.
    pub fn with(&self, o: &AnalysisOverride) -> Thresholds {
        Thresholds {
            error_rate_percent: o.error_rate_percent.unwrap_or(self.error_rate_percent),
            p95_ms: o.p95_ms.unwrap_or(self.p95_ms),
            p99_ms: o.p99_ms.unwrap_or(self.p99_ms),
            availability_percent: o.availability_percent.unwrap_or(self.availability_percent),
            min_requests: o.min_requests.unwrap_or(self.min_requests),
            interval: o
                .interval_ms
                .map(Duration::from_millis)
                .unwrap_or(self.interval),
            failures_to_abort: o.failures_to_abort.unwrap_or(self.failures_to_abort),
        }
    }

    /// The signals of one window and the thresholds they cross. Error rate
    /// and latency count only with at least `min_requests` requests
    /// (`conclusive`); availability counts whenever anything was measured,
    /// since health checks run even without traffic.
    pub fn judge(&self, window: &CanaryWindow) -> (Signals, Vec<Breach>, bool) {
        let m = &window.metrics;
        let signals = Signals {
            requests: m.requests,
            errors: m.errors,
            error_rate_percent: m.error_rate * 100.0,
            p95_ms: m.p95_ms,
            p99_ms: m.p99_ms,
            availability_percent: m.availability_percent.unwrap_or(100.0),
            health_checks: window.checks,
        };
        let conclusive = m.requests >= self.min_requests.max(1);
        let mut breaches = Vec::new();
        let mut above = |metric, value: f64, threshold: f64| {
            if value > threshold {
                breaches.push(Breach {
                    metric,
                    value,
                    threshold,
                });
            }
        };
        if conclusive {
            above(
                Metric::ErrorRate,
                signals.error_rate_percent,
                self.error_rate_percent,
            );
            above(Metric::P95, signals.p95_ms, self.p95_ms);
            above(Metric::P99, signals.p99_ms, self.p99_ms);
        }
        if m.availability_percent.is_some()
            && signals.availability_percent < self.availability_percent
        {
            breaches.push(Breach {
                metric: Metric::Availability,
                value: signals.availability_percent,
                threshold: self.availability_percent,
            });
        }
        (signals, breaches, conclusive)
    }
}

/// Counts consecutive breached intervals.
#[derive(Debug, Default)]
pub struct Verdicts {
    consecutive: u32,
}

impl Verdicts {
    /// Takes one interval's breaches; returns the breach that aborts, with
    /// the count of consecutive breached intervals, once it reaches `limit`.
    pub fn observe(&mut self, breaches: &[Breach], limit: u32) -> Option<(Breach, u32)> {
        match breaches.first() {
            None => {
                self.consecutive = 0;
                None
            }
            Some(first) => {
                self.consecutive += 1;
                (self.consecutive >= limit.max(1)).then(|| (first.clone(), self.consecutive))
            }
        }
    }
}

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

/// Where a rollout reports its events.
pub trait RolloutObserver: Send + Sync {
    /// One rollout event.
    fn event(&self, event: RolloutEvent);
}

struct Driver<'a> {
    service: &'a ManagedService,
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

    fn promoted(&mut self) {
        self.status.state = RolloutState::Promoted;
        self.status.weight_percent = 100;
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
    service: &ManagedService,
    release: &ReleaseSpec,
    replicas: u32,
    plan: &RolloutPlan,
    controls: &mut mpsc::Receiver<ControlRequest>,
    progress: &dyn Progress,
    observer: &dyn RolloutObserver,
) -> Result<RolloutEnd, RuntimeError> {
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
    let mut verdicts = Verdicts::default();
    let mut paused = false;
    let mut promote_now = false;
    let mut tick =
        tokio::time::interval_at(Instant::now() + thresholds.interval, thresholds.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = service.shutdown_token();
    let mut index = 0;
    while index < steps.len() {
        let weight = if promote_now { 100 } else { steps[index] };
        driver.status.step = u32::try_from(index + 1).unwrap_or(u32::MAX);
        driver.status.weight_percent = weight;
        service.route_next(weight).await;
        service.take_next_window();
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
        let mut deadline = Instant::now() + hold;
        loop {
            let step_over = tokio::time::sleep_until(deadline);
            tokio::select! {
                _ = shutdown.cancelled() => return Err(RuntimeError::Interrupted),
                _ = tick.tick() => {
                    service.check_next().await;
                    let window = service.take_next_window();
                    let (signals, breaches, conclusive) = thresholds.judge(&window);
                    let verdict = verdicts.observe(&breaches, thresholds.failures_to_abort);
                    driver.emit(RolloutPhase::Analysed { signals, breaches, conclusive });
                    if let Some((breach, intervals)) = verdict {
                        return Ok(driver.abort(AbortReason::Threshold {
                            breach,
                            step: driver.status.step,
                            weight_percent: weight,
                            intervals,
                        }).await);
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
                            service.route_next(100).await;
                            driver.status.weight_percent = 100;
                            driver.status.state = RolloutState::Progressing;
                            answer(reply, Ok(format!("{} promoted: it takes all traffic", release.version)));
                            index = steps.len();
                            break;
                        }
                    }
                }
                _ = step_over, if !paused => break,
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
        driver.status.weight_percent = weight;
        service.route_next(weight).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::event::ServiceMetrics;

    fn window(requests: u64, errors: u64, p95: f64, checks: u64) -> CanaryWindow {
        let attempts = requests + checks;
        CanaryWindow {
            metrics: ServiceMetrics {
                requests,
                errors,
                error_rate: if requests == 0 {
                    0.0
                } else {
                    errors as f64 / requests as f64
                },
                p95_ms: p95,
                p99_ms: p95,
                availability_percent: (attempts > 0)
                    .then(|| 100.0 * (attempts - errors) as f64 / attempts as f64),
                ..Default::default()
            },
            checks,
        }
    }

    #[test]
    fn defaults_are_the_seeds() {
        let t = Thresholds::default();
        assert_eq!(t.error_rate_percent, 5.0);
        assert_eq!(t.p95_ms, 2000.0);
        assert_eq!(t.availability_percent, 95.0);
        assert_eq!(t.interval, Duration::from_secs(5));
        assert_eq!(t.failures_to_abort, 2);
    }

    #[test]
    fn twenty_percent_errors_breach_error_rate_and_availability() {
        let (signals, breaches, conclusive) = Thresholds::default().judge(&window(100, 20, 5.0, 2));
        assert!(conclusive);
        assert_eq!(signals.error_rate_percent, 20.0);
        let metrics: Vec<Metric> = breaches.iter().map(|b| b.metric).collect();
        assert_eq!(metrics, vec![Metric::ErrorRate, Metric::Availability]);
    }

    #[test]
    fn too_few_requests_judge_only_availability() {
        let (_, breaches, conclusive) = Thresholds::default().judge(&window(5, 5, 5000.0, 100));
        assert!(!conclusive);
        assert!(breaches.is_empty(), "{breaches:?}");
    }

    #[test]
    fn slow_answers_breach_p95() {
        let (_, breaches, _) = Thresholds::default().judge(&window(50, 0, 2500.0, 0));
        assert_eq!(breaches[0].metric, Metric::P95);
    }

    #[test]
    fn aborts_only_after_consecutive_breaches() {
        let breach = Breach {
            metric: Metric::ErrorRate,
            value: 20.0,
            threshold: 5.0,
        };
        let mut v = Verdicts::default();
        assert!(v.observe(std::slice::from_ref(&breach), 2).is_none());
        assert!(v.observe(&[], 2).is_none(), "a good interval resets");
        assert!(v.observe(std::slice::from_ref(&breach), 2).is_none());
        let (b, n) = v.observe(std::slice::from_ref(&breach), 2).unwrap();
        assert_eq!((b, n), (breach, 2));
    }

    #[test]
    fn hotfix_takes_a_short_canary_and_keeps_analysis() {
        let plan = RolloutPlan::resolve(&Strategy::Recreate, &Thresholds::default(), None, true);
        assert_eq!(
            plan.strategy,
            Strategy::Canary {
                steps: HOTFIX_STEPS.to_vec(),
                step_secs: 10
            }
        );
        let normal = RolloutPlan::resolve(
            &Strategy::default_canary(),
            &Thresholds::default(),
            Some(&RolloutOptions {
                strategy: None,
                analysis: Some(AnalysisOverride {
                    interval_ms: Some(500),
                    ..Default::default()
                }),
            }),
            false,
        );
        assert_eq!(normal.strategy, Strategy::default_canary());
        assert_eq!(normal.thresholds.interval, Duration::from_millis(500));
    }
}
