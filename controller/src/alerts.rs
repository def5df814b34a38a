//! Alerts on running services: when a service's traffic (its agent's metrics
//! events) crosses a threshold outside any rollout, one `alert` event with
//! `raised: true`; when it comes back, one with `raised: false`. One event per
//! transition, not per interval. Rollouts are left to the agent's own
//! analysis. The state of which alerts are up is a cache: a restarted
//! controller raises again what is still breached.

use std::collections::HashMap;

use ferry_protocol::event::{Alert, ServiceMetrics, ServiceSnapshot, ServiceState};
use ferry_protocol::rollout::{Breach, Metric, RolloutState};
use ferry_protocol::{EnvName, ServiceName};

use crate::config::AlertThresholds;

/// The alerts that are up, by environment, service and metric.
#[derive(Debug, Default)]
pub(crate) struct Alerts {
    up: HashMap<(EnvName, ServiceName, Metric), Breach>,
}

/// Whether a service is in a rollout (or any other command) right now.
fn in_rollout(snapshot: Option<&ServiceSnapshot>) -> bool {
    snapshot.is_some_and(|s| {
        s.state == ServiceState::Deploying
            || s.rollout.as_ref().is_some_and(|r| {
                matches!(r.state, RolloutState::Progressing | RolloutState::Paused)
            })
    })
}

/// The thresholds `m` crosses, and the values it had for each metric.
pub(crate) fn measure(m: &ServiceMetrics, t: &AlertThresholds) -> Vec<(Metric, f64, f64, bool)> {
    let mut out = Vec::new();
    if m.requests >= t.min_requests.max(1) {
        let error_rate = m.error_rate * 100.0;
        out.push((
            Metric::ErrorRate,
            error_rate,
            t.error_rate_percent,
            error_rate > t.error_rate_percent,
        ));
        out.push((Metric::P95, m.p95_ms, t.p95_ms, m.p95_ms > t.p95_ms));
    }
    if let Some(a) = m.availability_percent {
        out.push((
            Metric::Availability,
            a,
            t.availability_percent,
            a < t.availability_percent,
        ));
    }
    out
}

impl Alerts {
    /// Takes one metrics interval of a service; returns the alerts raised
    /// and cleared by it.
    pub(crate) fn observe(
        &mut self,
        env: &EnvName,
        service: &ServiceName,
        snapshot: Option<&ServiceSnapshot>,
        metrics: &ServiceMetrics,
        thresholds: &AlertThresholds,
    ) -> Vec<Alert> {
        if in_rollout(snapshot) {
            return Vec::new();
        }
        let version = snapshot.and_then(|s| s.version.clone());
        let mut changes = Vec::new();
        for (metric, value, threshold, breached) in measure(metrics, thresholds) {
            let key = (env.clone(), service.clone(), metric);
            let breach = Breach {
                metric,
                value,
                threshold,
                evidence: None,
            };
            match (breached, self.up.contains_key(&key)) {
                (true, false) => {
                    self.up.insert(key, breach.clone());
                    changes.push(Alert {
                        raised: true,
                        breach,
                        version: version.clone(),
                        stable_value: None,
                    });
                }
                (false, true) => {
                    self.up.remove(&key);
                    changes.push(Alert {
                        raised: false,
                        breach,
                        version: version.clone(),
                        stable_value: None,
                    });
                }
                _ => {}
            }
        }
        changes
    }

    /// Whether an alert on `metric` is up for the service.
    pub(crate) fn is_up(&self, env: &EnvName, service: &ServiceName, metric: Metric) -> bool {
        self.up
            .contains_key(&(env.clone(), service.clone(), metric))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> AlertThresholds {
        AlertThresholds {
            error_rate_percent: 5.0,
            p95_ms: 2000.0,
            availability_percent: 95.0,
            min_requests: 10,
        }
    }

    fn metrics(requests: u64, errors: u64) -> ServiceMetrics {
        ServiceMetrics {
            requests,
            errors,
            error_rate: errors as f64 / requests.max(1) as f64,
            availability_percent: Some(100.0 * (requests - errors) as f64 / requests.max(1) as f64),
            ..Default::default()
        }
    }

    #[test]
    fn one_event_per_transition_not_per_interval() {
        let (env, svc) = (
            EnvName::new("dev").unwrap(),
            ServiceName::new("web").unwrap(),
        );
        let mut alerts = Alerts::default();
        let t = thresholds();
        assert!(alerts
            .observe(&env, &svc, None, &metrics(100, 0), &t)
            .is_empty());
        let raised = alerts.observe(&env, &svc, None, &metrics(100, 20), &t);
        let metrics_raised: Vec<Metric> = raised.iter().map(|a| a.breach.metric).collect();
        assert_eq!(
            metrics_raised,
            vec![Metric::ErrorRate, Metric::Availability]
        );
        assert!(raised.iter().all(|a| a.raised));
        assert!(alerts
            .observe(&env, &svc, None, &metrics(100, 30), &t)
            .is_empty());
        assert!(alerts.is_up(&env, &svc, Metric::ErrorRate));
        let cleared = alerts.observe(&env, &svc, None, &metrics(100, 0), &t);
        assert_eq!(cleared.len(), 2);
        assert!(cleared.iter().all(|a| !a.raised));
        assert!(!alerts.is_up(&env, &svc, Metric::ErrorRate));
    }

    #[test]
    fn no_alert_during_a_rollout() {
        let (env, svc) = (
            EnvName::new("dev").unwrap(),
            ServiceName::new("web").unwrap(),
        );
        let snapshot = ServiceSnapshot {
            service: svc.clone(),
            version: None,
            previous: None,
            replicas_desired: 2,
            replicas_healthy: 2,
            state: ServiceState::Deploying,
            maintenance: None,
            runtime: "process".into(),
            address: None,
            rollout: None,
            strategy: None,
        };
        let mut alerts = Alerts::default();
        assert!(alerts
            .observe(
                &env,
                &svc,
                Some(&snapshot),
                &metrics(100, 50),
                &thresholds()
            )
            .is_empty());
    }
}
