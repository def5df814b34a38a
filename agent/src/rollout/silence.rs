//! How long a metrics provider has given no verdict during a canary, and
//! when that silence aborts it: a provider that stays unreachable for a
//! whole step fails the rollout safely (the stable version keeps serving).

use std::time::Duration;

use ferry_protocol::rollout::AbortReason;
use tokio::time::Instant;

use crate::metrics_provider::PrometheusProvider;

/// How long a metrics provider has given no verdict during a canary.
#[derive(Debug)]
pub(super) struct Silence {
    /// The last answer (or the canary's start).
    since: Instant,
    answered_in_step: bool,
    failed_in_step: bool,
    last_error: Option<String>,
}

impl Default for Silence {
    fn default() -> Self {
        Silence {
            since: Instant::now(),
            answered_in_step: false,
            failed_in_step: false,
            last_error: None,
        }
    }
}

impl Silence {
    pub(super) fn step_started(&mut self) {
        self.answered_in_step = false;
        self.failed_in_step = false;
    }

    pub(super) fn answered(&mut self) {
        self.since = Instant::now();
        self.answered_in_step = true;
        self.last_error = None;
    }

    fn reason(&self, provider: &PrometheusProvider, step: u32) -> AbortReason {
        AbortReason::NoVerdict {
            provider: provider.describe(),
            detail: self
                .last_error
                .clone()
                .unwrap_or_else(|| "no answer in time".into()),
            step,
        }
    }

    /// One interval without a verdict; the abort reason once the provider
    /// has been silent for as long as a whole step (or an interval, if
    /// steps are shorter).
    pub(super) fn failed(
        &mut self,
        provider: &PrometheusProvider,
        error: crate::Error,
        silent_for: Duration,
        step: u32,
    ) -> Option<AbortReason> {
        self.failed_in_step = true;
        self.last_error = Some(match error {
            crate::Error::NoVerdict { detail, .. } => detail,
            other => other.to_string(),
        });
        (self.since.elapsed() >= silent_for).then(|| self.reason(provider, step))
    }

    /// The step is over: the abort reason if it was asked and never answered.
    pub(super) fn step_over(
        &self,
        provider: &PrometheusProvider,
        step: u32,
    ) -> Option<AbortReason> {
        (self.failed_in_step && !self.answered_in_step).then(|| self.reason(provider, step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{default_error_rate_query, PrometheusConfig};
    use crate::Error;
    use ferry_protocol::ServiceName;

    fn provider() -> PrometheusProvider {
        PrometheusProvider::new(
            PrometheusConfig {
                url: "http://127.0.0.1:9".into(),
                error_rate_query: default_error_rate_query(),
                p95_query: "1".into(),
                request_rate_query: "1".into(),
                timeout: Duration::from_secs(1),
            },
            ferry_protocol::EnvName::new("dev").unwrap(),
            ServiceName::new("web").unwrap(),
        )
    }

    fn refused() -> Error {
        Error::NoVerdict {
            provider: "prometheus at http://127.0.0.1:9".into(),
            detail: "query failed: connection refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_silent_for_a_whole_step_aborts_with_its_last_error() {
        let p = provider();
        let step = Duration::from_secs(10);
        let mut silence = Silence::default();
        silence.step_started();
        tokio::time::advance(Duration::from_secs(3)).await;
        silence.answered();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(silence.failed(&p, refused(), step, 2), None, "9 s < a step");
        tokio::time::advance(Duration::from_secs(1)).await;
        match silence.failed(&p, refused(), step, 2) {
            Some(AbortReason::NoVerdict {
                provider,
                detail,
                step,
            }) => {
                assert_eq!(provider, "prometheus at http://127.0.0.1:9");
                assert_eq!(detail, "query failed: connection refused");
                assert_eq!(step, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_asked_and_never_answered_aborts_at_its_end() {
        let p = provider();
        let mut silence = Silence::default();
        silence.step_started();
        assert_eq!(silence.step_over(&p, 1), None, "a step too short to ask");
        silence.answered();
        assert_eq!(
            silence.failed(&p, refused(), Duration::from_secs(60), 1),
            None
        );
        assert_eq!(silence.step_over(&p, 1), None, "answered once in the step");
        silence.step_started();
        assert_eq!(
            silence.failed(&p, refused(), Duration::from_secs(60), 2),
            None
        );
        assert!(
            matches!(
                silence.step_over(&p, 2),
                Some(AbortReason::NoVerdict { step: 2, .. })
            ),
            "asked, never answered"
        );
    }
}
