//! Progressive delivery on the wire: deployment strategies, analysis
//! thresholds, rollout control actions and the events a rollout reports.
//!
//! Everything here is optional on the messages that carry it (serde
//! defaults), so a message without a strategy still decodes and means "the
//! agent's configured strategy".

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::Version;
use crate::Error;

/// Most canary steps one strategy may list.
pub const MAX_CANARY_STEPS: usize = 20;

/// How a deploy replaces the running version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Strategy {
    /// Start the whole new set beside the old, switch when all are healthy,
    /// stop the old (ferry's original health-gated replace).
    Recreate,
    /// Replace replicas in batches, each gated on health.
    Rolling {
        /// New replicas started per batch.
        #[serde(default = "one")]
        batch_size: u32,
        /// Old replicas that may be stopped before their replacements are
        /// healthy (0: always start first).
        #[serde(default)]
        max_unavailable: u32,
    },
    /// Start the whole new set beside the old, verify it, switch the proxy
    /// atomically, keep the old set for an instant rollback.
    BlueGreen {
        /// Seconds the old set stays running after the switch.
        #[serde(default = "default_keep_old_secs")]
        keep_old_for_secs: u64,
    },
    /// Weighted routing in steps, each held for an analysis window.
    Canary {
        /// Share of requests sent to the new version at each step, percent,
        /// rising; a last step below 100 is followed by 100.
        #[serde(default = "default_canary_steps")]
        steps: Vec<u8>,
        /// Seconds each step is held (and analysed) before the next.
        #[serde(default = "default_step_secs")]
        step_secs: u64,
    },
}

fn one() -> u32 {
    1
}

fn default_keep_old_secs() -> u64 {
    60
}

/// Canary steps of a hotfix: a short canary, then everything. Agents take
/// them for a deploy marked `hotfix`, each step held one detection window.
pub const HOTFIX_STEPS: [u8; 2] = [25, 100];

/// The seed's canary: 10 % first, then +25 % per step.
pub fn default_canary_steps() -> Vec<u8> {
    vec![10, 35, 60, 85, 100]
}

fn default_step_secs() -> u64 {
    30
}

impl Strategy {
    /// The seed's default canary.
    pub fn default_canary() -> Strategy {
        Strategy::Canary {
            steps: default_canary_steps(),
            step_secs: default_step_secs(),
        }
    }

    /// A strategy of `kind` with its default settings.
    pub fn defaults(kind: StrategyKind) -> Strategy {
        match kind {
            StrategyKind::Recreate => Strategy::Recreate,
            StrategyKind::Rolling => Strategy::Rolling {
                batch_size: one(),
                max_unavailable: 0,
            },
            StrategyKind::BlueGreen => Strategy::BlueGreen {
                keep_old_for_secs: default_keep_old_secs(),
            },
            StrategyKind::Canary => Strategy::default_canary(),
        }
    }

    /// Its short name.
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::Recreate => StrategyKind::Recreate,
            Strategy::Rolling { .. } => StrategyKind::Rolling,
            Strategy::BlueGreen { .. } => StrategyKind::BlueGreen,
            Strategy::Canary { .. } => StrategyKind::Canary,
        }
    }

    /// Range checks.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidField {
            field: "strategy",
            reason,
        };
        match self {
            Strategy::Recreate => Ok(()),
            Strategy::Rolling { batch_size, .. } => {
                if *batch_size == 0 || *batch_size > crate::limits::MAX_REPLICAS {
                    return Err(invalid(format!(
                        "batch_size {batch_size} is outside 1..={}",
                        crate::limits::MAX_REPLICAS
                    )));
                }
                Ok(())
            }
            Strategy::BlueGreen { keep_old_for_secs } => {
                if *keep_old_for_secs > 7 * 24 * 3600 {
                    return Err(invalid("keep_old_for_secs is at most a week".into()));
                }
                Ok(())
            }
            Strategy::Canary { steps, step_secs } => {
                if steps.is_empty() || steps.len() > MAX_CANARY_STEPS {
                    return Err(invalid(format!(
                        "a canary has 1 to {MAX_CANARY_STEPS} steps"
                    )));
                }
                if steps.iter().any(|s| *s == 0 || *s > 100) {
                    return Err(invalid("canary steps are percentages from 1 to 100".into()));
                }
                if steps.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(invalid("canary steps must rise".into()));
                }
                if *step_secs == 0 || *step_secs > 24 * 3600 {
                    return Err(invalid("step_secs is 1 second to 1 day".into()));
                }
                Ok(())
            }
        }
    }
}

/// Short names of strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// See [`Strategy::Recreate`].
    Recreate,
    /// See [`Strategy::Rolling`].
    Rolling,
    /// See [`Strategy::BlueGreen`].
    BlueGreen,
    /// See [`Strategy::Canary`].
    Canary,
}

impl std::str::FromStr for StrategyKind {
    type Err = Error;

    /// The names [`fmt::Display`] prints (`blue_green` is accepted too).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "recreate" => Ok(StrategyKind::Recreate),
            "rolling" => Ok(StrategyKind::Rolling),
            "blue-green" | "blue_green" => Ok(StrategyKind::BlueGreen),
            "canary" => Ok(StrategyKind::Canary),
            other => Err(Error::InvalidField {
                field: "strategy",
                reason: format!("{other:?} is not one of recreate, rolling, blue-green, canary"),
            }),
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StrategyKind::Recreate => "recreate",
            StrategyKind::Rolling => "rolling",
            StrategyKind::BlueGreen => "blue-green",
            StrategyKind::Canary => "canary",
        })
    }
}

/// Thresholds a new version is held to at every analysis interval. Absent
/// fields take the agent's configured value (whose defaults are the seed's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalysisOverride {
    /// Breach above this share of failed requests, percent (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_percent: Option<f64>,
    /// Breach above this 95th percentile latency, ms (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    /// Breach above this 99th percentile latency, ms (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Breach below this share of successful requests and health checks,
    /// percent (default 95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_percent: Option<f64>,
    /// Requests an interval needs before error rate and latency count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Length of one analysis interval, ms (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Consecutive breached intervals that abort (default 2; `intervals`
    /// mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_to_abort: Option<u32>,
    /// How verdicts are reached (default `sequential`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AnalysisMode>,
    /// Sequential mode: the chance of aborting a release whose signals sit at
    /// half their thresholds, percent (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_abort_percent: Option<f64>,
    /// Sequential mode: how often the evidence is weighed, ms (default 250).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decide_every_ms: Option<u64>,
    /// Judge the new version against the stable one over the same window
    /// (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_to_stable: Option<bool>,
    /// How much worse than the stable version's error rate the new version
    /// may be before it is rolled back, percentage points (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_margin_percent: Option<f64>,
    /// What a rollout does when the stable version breaches as the new one
    /// does (a dependency outage, not the release): `pause` (default) or
    /// `abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_both_failing: Option<BothFailing>,
    /// Seconds of analysis after traffic moves in recreate, rolling and
    /// blue-green deploys (and after a hotfix's canary); a breach rolls back.
    /// 0 turns it off (the agent's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_for_secs: Option<u64>,
}

/// How analysis reaches a verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisMode {
    /// A sequential test weighed every `decide_every_ms`: abort as soon as the
    /// evidence is enough.
    #[default]
    Sequential,
    /// The fixed rule: `failures_to_abort` consecutive breached intervals.
    Intervals,
}

/// What a rollout does when the stable version fails as the new one does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BothFailing {
    /// Hold the step and alert; an operator resumes or aborts.
    #[default]
    Pause,
    /// Roll back, with the outage as the reason.
    Abort,
}

impl fmt::Display for BothFailing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BothFailing::Pause => "pause",
            BothFailing::Abort => "abort",
        })
    }
}

impl AnalysisOverride {
    /// Range checks.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| Error::InvalidField {
            field: "analysis",
            reason: reason.to_owned(),
        };
        for p in [self.error_rate_percent, self.availability_percent]
            .into_iter()
            .flatten()
        {
            if !(0.0..=100.0).contains(&p) {
                return Err(invalid("percentages are 0 to 100"));
            }
        }
        for ms in [self.p95_ms, self.p99_ms].into_iter().flatten() {
            if !ms.is_finite() || ms <= 0.0 {
                return Err(invalid("latency thresholds are positive milliseconds"));
            }
        }
        if let Some(ms) = self.interval_ms {
            if !(50..=3_600_000).contains(&ms) {
                return Err(invalid("interval_ms is 50 ms to 1 hour"));
            }
        }
        if let Some(n) = self.failures_to_abort {
            if !(1..=100).contains(&n) {
                return Err(invalid("failures_to_abort is 1 to 100"));
            }
        }
        if let Some(p) = self.false_abort_percent {
            if !(p > 0.0 && p <= 10.0) {
                return Err(invalid("false_abort_percent is above 0 and at most 10"));
            }
        }
        if let Some(ms) = self.decide_every_ms {
            if !(50..=60_000).contains(&ms) {
                return Err(invalid("decide_every_ms is 50 ms to 1 minute"));
            }
        }
        if let Some(p) = self.stable_margin_percent {
            if !(0.0..=100.0).contains(&p) {
                return Err(invalid("stable_margin_percent is 0 to 100"));
            }
        }
        if let Some(s) = self.verify_for_secs {
            if s > 24 * 3600 {
                return Err(invalid("verify_for_secs is at most a day"));
            }
        }
        Ok(())
    }
}

/// A deploy's progressive delivery options (all optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutOptions {
    /// Overrides the service's configured strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Overrides thresholds of the service's configured analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisOverride>,
}

impl RolloutOptions {
    /// Range checks.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(s) = &self.strategy {
            s.validate()?;
        }
        if let Some(a) = &self.analysis {
            a.validate()?;
        }
        Ok(())
    }
}

/// What an operator can do to a rollout in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutControl {
    /// Hold at the current step (analysis goes on and may still abort).
    Pause,
    /// Continue after a pause.
    Resume,
    /// Skip the remaining steps: send everything to the new version now.
    Promote,
    /// Roll back to the stable version now.
    Abort,
}

impl fmt::Display for RolloutControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutControl::Pause => "pause",
            RolloutControl::Resume => "resume",
            RolloutControl::Promote => "promote",
            RolloutControl::Abort => "abort",
        })
    }
}

/// The golden signals of one version over one analysis interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Requests answered.
    pub requests: u64,
    /// Of which failed (5xx or no answer).
    pub errors: u64,
    /// errors / requests, percent.
    pub error_rate_percent: f64,
    /// 95th percentile latency, ms.
    pub p95_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Successful requests and health checks over all of them, percent.
    pub availability_percent: f64,
    /// Health checks made.
    pub health_checks: u64,
}

/// The thresholds an analysis judges the golden signals against, so a
/// reader of an analysis event sees each value beside its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Breach above this share of failed requests, percent.
    pub error_rate_percent: f64,
    /// Breach above this 95th percentile latency, ms.
    pub p95_ms: f64,
    /// Breach above this 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Breach below this share of successful requests and health checks, percent.
    pub availability_percent: f64,
    /// Requests an interval needs before error rate and latency count.
    pub min_requests: u64,
}

/// Which golden signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of failed requests, percent.
    ErrorRate,
    /// 95th percentile latency, ms.
    P95,
    /// 99th percentile latency, ms.
    P99,
    /// Share of successful requests and health checks, percent.
    Availability,
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::ErrorRate => "error rate",
            Metric::P95 => "p95 latency",
            Metric::P99 => "p99 latency",
            Metric::Availability => "availability",
        })
    }
}

impl Metric {
    /// The unit values of this metric are in.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::ErrorRate | Metric::Availability => "%",
            Metric::P95 | Metric::P99 => " ms",
        }
    }
}

/// One threshold crossed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    /// Which signal.
    pub metric: Metric,
    /// Its measured value.
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// What the verdict rests on (absent from the fixed-interval rule and
    /// from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// The evidence behind a sequential verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Requests (or requests and health checks, for availability) weighed.
    pub requests: u64,
    /// Of which counted against the version (failed, or slower than the
    /// latency threshold).
    pub bad: u64,
    /// How sure the test is that the signal is past its threshold, percent
    /// (1 minus the false-abort rate it was run at).
    pub confidence_percent: f64,
    /// The stable version's value over the same window, when it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<f64>,
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, unit) = match self.metric {
            Metric::Availability => ("<", self.metric.unit()),
            _ => (">", self.metric.unit()),
        };
        write!(
            f,
            "{} {:.1}{unit} {op} {:.1}{unit}",
            self.metric, self.value, self.threshold
        )?;
        if let Some(e) = &self.evidence {
            write!(
                f,
                " ({} of {} requests, {}% confidence",
                e.bad, e.requests, e.confidence_percent
            )?;
            if let Some(stable) = e.stable_value {
                write!(f, "; stable {stable:.1}{unit}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Why a rollout was aborted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum AbortReason {
    /// A threshold was breached for enough consecutive intervals.
    Threshold {
        /// The breach of the last interval.
        #[serde(flatten)]
        breach: Breach,
        /// Step (1-based) at which it happened.
        step: u32,
        /// Traffic share of the new version at that step, percent.
        weight_percent: u8,
        /// Consecutive breached intervals.
        intervals: u32,
    },
    /// New replicas did not become healthy.
    Unhealthy {
        /// What failed.
        detail: String,
    },
    /// An operator aborted it.
    Operator {
        /// Step (1-based) at which it happened.
        step: u32,
    },
    /// The new version did clearly worse than the stable one over the same
    /// window, though within the absolute thresholds.
    WorseThanStable {
        /// The new version's value against the stable one's plus the margin.
        #[serde(flatten)]
        breach: Breach,
        /// Step (1-based) at which it happened.
        step: u32,
        /// Traffic share of the new version at that step, percent.
        weight_percent: u8,
    },
    /// The stable version failed as the new one did (a dependency outage,
    /// not the release), and `on_both_failing` is `abort`.
    BothFailing {
        /// The new version's breach.
        #[serde(flatten)]
        breach: Breach,
        /// The stable version's value of the same signal.
        stable_value: f64,
        /// Step (1-based) at which it happened.
        step: u32,
    },
    /// The metrics provider gave no verdict (unreachable, an error, an
    /// empty result) for a whole canary step: nothing says the new version
    /// is good, so it is taken out and the stable version keeps serving.
    NoVerdict {
        /// Which provider (`prometheus at http://...`).
        provider: String,
        /// Its last failure.
        detail: String,
        /// Step (1-based) at which it happened.
        step: u32,
    },
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Threshold {
                breach,
                step,
                weight_percent,
                intervals,
            } if breach.evidence.is_some() => write!(
                f,
                "{breach} at step {step} ({weight_percent}% of traffic)"
            ),
            AbortReason::Threshold {
                breach,
                step,
                weight_percent,
                intervals,
            } => write!(
                f,
                "{breach} at step {step} ({weight_percent}% of traffic) for {intervals} consecutive interval{}",
                if *intervals == 1 { "" } else { "s" }
            ),
            AbortReason::Unhealthy { detail } => write!(f, "new replicas unhealthy: {detail}"),
            AbortReason::Operator { step } => write!(f, "aborted by an operator at step {step}"),
            AbortReason::NoVerdict {
                provider,
                detail,
                step,
            } => write!(
                f,
                "no verdict from {provider} for the whole of step {step}, so the new version is not trusted: {detail}"
            ),
            AbortReason::WorseThanStable {
                breach,
                step,
                weight_percent,
            } => write!(
                f,
                "{breach} against the stable version at step {step} ({weight_percent}% of traffic)"
            ),
            AbortReason::BothFailing {
                breach,
                stable_value,
                step,
            } => write!(
                f,
                "the stable version fails too ({} {stable_value:.1}{}) at step {step}: a dependency outage, not this release ({breach})",
                breach.metric,
                breach.metric.unit()
            ),
        }
    }
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Moving through its steps.
    Progressing,
    /// Held by an operator.
    Paused,
    /// Finished: the new version serves everything.
    Promoted,
    /// Rolled back: the stable version serves everything.
    Aborted,
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::Aborted => "aborted",
        })
    }
}

/// A rollout's position, for heartbeats, status and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// Strategy.
    pub strategy: StrategyKind,
    /// The version being rolled out.
    pub version: Version,
    /// Where it is.
    pub state: RolloutState,
    /// Current step, 1-based.
    pub step: u32,
    /// Steps in all.
    pub steps: u32,
    /// Traffic share of the new version asked for, percent.
    pub weight_percent: u8,
    /// The share actually reached, percent, where the runtime can only
    /// approximate the one asked for (Kubernetes without a mesh: the ratio
    /// of ready replicas); absent where it is exact (the agent's proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_reached_percent: Option<u8>,
}

impl RolloutStatus {
    /// The weight for people: `35%`, or `10% asked, 33% reached` where the
    /// runtime only approximates it.
    pub fn weight_text(&self) -> String {
        match self.weight_reached_percent {
            Some(reached) if reached != self.weight_percent => {
                format!("{}% asked, {reached}% reached", self.weight_percent)
            }
            _ => format!("{}%", self.weight_percent),
        }
    }
}

/// What happened in a rollout (published as a progress event of the deploy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum RolloutPhase {
    /// A step began: the new version now gets `weight_percent` of traffic.
    StepStarted,
    /// An analysis interval ended.
    Analysed {
        /// What was measured on the new version.
        signals: Signals,
        /// Thresholds crossed (empty: passed).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        breaches: Vec<Breach>,
        /// Whether there were enough requests for a verdict on error rate
        /// and latency.
        conclusive: bool,
        /// The thresholds the signals were judged against (absent from
        /// older agents).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<Limits>,
    },
    /// The stable version breaches as the new one does: a dependency
    /// outage is likelier than a bad release. Not blamed on the new version;
    /// the rollout pauses (or aborts, by configuration).
    BothFailing {
        /// The new version's breach.
        canary: Breach,
        /// The stable version's value of the same signal over the same window.
        stable_value: f64,
    },
    /// Held by an operator.
    Paused,
    /// Continued after a pause.
    Resumed,
    /// The new version serves everything.
    Promoted,
    /// Rolled back.
    Aborted {
        /// Why.
        reason: AbortReason,
    },
}

/// A rollout event: where the rollout is and what happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// Position.
    pub status: RolloutStatus,
    /// What happened.
    pub phase: RolloutPhase,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_round_trip_and_defaults_are_valid() {
        for kind in [
            StrategyKind::Recreate,
            StrategyKind::Rolling,
            StrategyKind::BlueGreen,
            StrategyKind::Canary,
        ] {
            assert_eq!(kind.to_string().parse::<StrategyKind>().unwrap(), kind);
            let strategy = Strategy::defaults(kind);
            assert_eq!(strategy.kind(), kind);
            strategy.validate().unwrap();
        }
        assert!("sideways".parse::<StrategyKind>().is_err());
    }

    #[test]
    fn strategies_round_trip_and_take_defaults() {
        let canary: Strategy = serde_json::from_str(r#"{"type":"canary"}"#).unwrap();
        assert_eq!(canary, Strategy::default_canary());
        let rolling: Strategy = serde_json::from_str(r#"{"type":"rolling"}"#).unwrap();
        assert_eq!(
            rolling,
            Strategy::Rolling {
                batch_size: 1,
                max_unavailable: 0
            }
        );
        for s in [
            Strategy::Recreate,
            rolling,
            Strategy::BlueGreen {
                keep_old_for_secs: 5,
            },
            canary,
        ] {
            s.validate().unwrap();
            let back: Strategy = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn bad_canary_steps_are_refused() {
        for steps in [vec![], vec![0, 50], vec![50, 40], vec![10, 101]] {
            let s = Strategy::Canary {
                steps: steps.clone(),
                step_secs: 1,
            };
            assert!(s.validate().is_err(), "{steps:?}");
        }
    }

    #[test]
    fn abort_reasons_say_metric_value_threshold_and_step() {
        let reason = AbortReason::Threshold {
            breach: Breach {
                metric: Metric::ErrorRate,
                value: 21.34,
                threshold: 5.0,
                evidence: None,
            },
            step: 1,
            weight_percent: 10,
            intervals: 2,
        };
        assert_eq!(
            reason.to_string(),
            "error rate 21.3% > 5.0% at step 1 (10% of traffic) for 2 consecutive intervals"
        );
        let json = serde_json::to_value(&reason).unwrap();
        assert_eq!(json["metric"], "error_rate");
        assert_eq!(json["threshold"], 5.0);
        let back: AbortReason = serde_json::from_value(json).unwrap();
        assert_eq!(back, reason);
    }

    #[test]
    fn analysis_events_carry_their_limits_and_read_without_them() {
        let phase = RolloutPhase::Analysed {
            signals: Signals::default(),
            breaches: Vec::new(),
            conclusive: true,
            limits: Some(Limits {
                error_rate_percent: 5.0,
                p95_ms: 2000.0,
                p99_ms: 2000.0,
                availability_percent: 95.0,
                min_requests: 20,
            }),
        };
        let json = serde_json::to_value(&phase).unwrap();
        assert_eq!(json["limits"]["p95_ms"], 2000.0);
        let back: RolloutPhase = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, phase);
        // An older agent's event, without limits, still reads.
        let mut old = json;
        old.as_object_mut().unwrap().remove("limits");
        let back: RolloutPhase = serde_json::from_value(old).unwrap();
        assert!(matches!(back, RolloutPhase::Analysed { limits: None, .. }));
    }

    #[test]
    fn sequential_verdicts_carry_their_evidence_and_round_trip() {
        let breach = Breach {
            metric: Metric::ErrorRate,
            value: 20.0,
            threshold: 5.0,
            evidence: Some(Evidence {
                requests: 35,
                bad: 7,
                confidence_percent: 99.9,
                stable_value: Some(0.0),
            }),
        };
        let reason = AbortReason::Threshold {
            breach: breach.clone(),
            step: 1,
            weight_percent: 10,
            intervals: 1,
        };
        assert_eq!(
            reason.to_string(),
            "error rate 20.0% > 5.0% (7 of 35 requests, 99.9% confidence; stable 0.0%) at step 1 (10% of traffic)"
        );
        for reason in [
            reason,
            AbortReason::WorseThanStable {
                breach: breach.clone(),
                step: 2,
                weight_percent: 35,
            },
            AbortReason::BothFailing {
                breach: breach.clone(),
                stable_value: 30.0,
                step: 1,
            },
            AbortReason::NoVerdict {
                provider: "prometheus at http://127.0.0.1:9090".into(),
                detail: "connection refused".into(),
                step: 2,
            },
        ] {
            let back: AbortReason =
                serde_json::from_value(serde_json::to_value(&reason).unwrap()).unwrap();
            assert_eq!(back, reason);
        }
        let phase = RolloutPhase::BothFailing {
            canary: breach,
            stable_value: 30.0,
        };
        let back: RolloutPhase =
            serde_json::from_value(serde_json::to_value(&phase).unwrap()).unwrap();
        assert_eq!(back, phase);
        // An older agent's breach, without evidence, still decodes.
        let old: Breach =
            serde_json::from_str(r#"{"metric":"p95","value":2500.0,"threshold":2000.0}"#).unwrap();
        assert_eq!(old.evidence, None);
    }

    #[test]
    fn a_status_carries_the_weight_reached_next_to_the_one_asked_for() {
        let status = RolloutStatus {
            strategy: StrategyKind::Canary,
            version: Version::new("2.0.0").unwrap(),
            state: RolloutState::Progressing,
            step: 1,
            steps: 2,
            weight_percent: 10,
            weight_reached_percent: Some(33),
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["weight_percent"], 10);
        assert_eq!(json["weight_reached_percent"], 33);
        let back: RolloutStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
        assert_eq!(status.weight_text(), "10% asked, 33% reached");
        // Exact weights (the proxy's) leave it out, and an older agent's
        // status, without it, still decodes.
        let exact = RolloutStatus {
            weight_reached_percent: None,
            ..status
        };
        let json = serde_json::to_value(&exact).unwrap();
        assert!(json.get("weight_reached_percent").is_none(), "{json}");
        let back: RolloutStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, exact);
        assert_eq!(exact.weight_text(), "10%");
    }

    #[test]
    fn analysis_overrides_of_the_sequential_mode_are_checked() {
        let ok: AnalysisOverride = serde_json::from_str(
            r#"{"mode":"intervals","verify_for_secs":30,"on_both_failing":"abort","stable_margin_percent":1.5}"#,
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.mode, Some(AnalysisMode::Intervals));
        for bad in [
            r#"{"false_abort_percent":0}"#,
            r#"{"decide_every_ms":10}"#,
            r#"{"verify_for_secs":100000}"#,
            r#"{"stable_margin_percent":-1}"#,
        ] {
            let o: AnalysisOverride = serde_json::from_str(bad).unwrap();
            assert!(o.validate().is_err(), "{bad}");
        }
    }
}
