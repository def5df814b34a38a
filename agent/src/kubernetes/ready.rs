//! Waiting until a Deployment is rolled out, judged as `kubectl rollout
//! status` judges it, while watching its pods for failures that will not
//! heal by waiting (an image that cannot be pulled, a crash loop).

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio_util::sync::CancellationToken;

/// Container states that fail a deploy at once.
pub const FATAL_REASONS: [&str; 4] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
];

/// Where a Deployment's rollout is.
#[derive(Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Every desired replica is updated, ready and available.
    Done,
    /// Still going: ready replicas so far.
    Waiting(u32),
    /// It will not finish: why.
    Failed(String),
}

/// `kubectl rollout status`'s verdict on `deployment` at `desired` replicas.
pub fn judge(deployment: &Deployment, desired: u32) -> Rollout {
    let generation = deployment.metadata.generation.unwrap_or(0);
    let Some(status) = &deployment.status else {
        return Rollout::Waiting(0);
    };
    let count = |n: Option<i32>| u32::try_from(n.unwrap_or(0)).unwrap_or(0);
    let ready = count(status.ready_replicas);
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Waiting(ready);
    }
    if let Some(stuck) = status.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Rollout::Failed(format!(
            "the Deployment exceeded its progress deadline: {}",
            stuck.message.clone().unwrap_or_default()
        ));
    }
    let updated = count(status.updated_replicas);
    let replicas = count(status.replicas);
    let available = count(status.available_replicas);
    if updated == desired && replicas == desired && ready == desired && available == desired {
        Rollout::Done
    } else {
        Rollout::Waiting(ready)
    }
}

/// The first fatal container state among `pod`'s containers: reason and message.
pub fn pod_failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in containers {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if FATAL_REASONS.contains(&reason) {
            return Some(format!(
                "pod {} container {}: {reason}: {}",
                pod.metadata.name.as_deref().unwrap_or("?"),
                container.name,
                waiting.message.as_deref().unwrap_or("no message")
            ));
        }
    }
    None
}

/// Why a container of `pod` waits, if one does: its reason and message
/// (`CrashLoopBackOff: back-off 40s restarting ...`).
pub fn waiting_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            Some(match waiting.message.as_deref() {
                Some(message) => format!("{reason}: {message}"),
                None => reason.to_owned(),
            })
        })
}

/// Why a wait ended without a rolled-out Deployment.
#[derive(Debug)]
pub enum WaitError {
    /// The Deployment or a pod failed, or time ran out: why.
    Failed(String),
    /// The agent is shutting down.
    Interrupted,
}

/// What one wait watches: Deployment `name` and the pods matching `pod_selector`.
pub struct Watched<'a> {
    /// The namespace's Deployments.
    pub deployments: &'a Api<Deployment>,
    /// The namespace's pods.
    pub pods: &'a Api<Pod>,
    /// The Deployment.
    pub name: &'a str,
    /// Its pods' label selector.
    pub pod_selector: &'a str,
}

/// Watches `watched` until the rollout is done, fails, or `timeout` passes;
/// `on_ready` hears the ready count as it changes.
pub async fn wait_rolled_out(
    watched: Watched<'_>,
    desired: u32,
    timeout: Duration,
    shutdown: &CancellationToken,
    mut on_ready: impl FnMut(u32),
) -> Result<(), WaitError> {
    let Watched {
        deployments,
        pods,
        name,
        pod_selector,
    } = watched;
    let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let deployment_events = watcher(deployments.clone(), by_name)
        .default_backoff()
        .applied_objects();
    let pod_events = watcher(
        pods.clone(),
        watcher::Config::default().labels(pod_selector),
    )
    .default_backoff()
    .applied_objects();
    futures::pin_mut!(deployment_events, pod_events);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut last_ready = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Err(WaitError::Interrupted),
            () = &mut deadline => {
                return Err(WaitError::Failed(format!(
                    "Deployment {name} was not rolled out within {}",
                    humantime::format_duration(timeout)
                )))
            }
            event = deployment_events.next() => match event {
                Some(Ok(deployment)) => match judge(&deployment, desired) {
                    Rollout::Done => return Ok(()),
                    Rollout::Failed(why) => return Err(WaitError::Failed(why)),
                    Rollout::Waiting(ready) => {
                        if last_ready != Some(ready) {
                            last_ready = Some(ready);
                            on_ready(ready);
                        }
                    }
                },
                Some(Err(e)) => tracing::warn!(deployment = name, error = %e, "watching the Deployment"),
                None => return Err(WaitError::Failed(format!("the watch of Deployment {name} ended"))),
            },
            event = pod_events.next() => match event {
                Some(Ok(pod)) => {
                    if let Some(why) = pod_failure(&pod) {
                        return Err(WaitError::Failed(why));
                    }
                }
                Some(Err(e)) => tracing::warn!(deployment = name, error = %e, "watching the pods"),
                None => return Err(WaitError::Failed(format!("the watch of {name}'s pods ended"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(value: serde_json::Value) -> Deployment {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_deployment_is_done_when_every_count_caught_up() {
        let mut d = deployment(serde_json::json!({
            "metadata": { "name": "web-1", "generation": 2 },
            "status": { "observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3 }
        }));
        assert_eq!(
            judge(&d, 3),
            Rollout::Waiting(3),
            "an old generation is not done"
        );
        d.status.as_mut().unwrap().observed_generation = Some(2);
        assert_eq!(judge(&d, 3), Rollout::Done);
        assert_eq!(judge(&d, 4), Rollout::Waiting(3));
    }

    #[test]
    fn a_progress_deadline_is_a_failure() {
        let d = deployment(serde_json::json!({
            "metadata": { "name": "web-1", "generation": 1 },
            "status": { "observedGeneration": 1, "conditions": [
                { "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow" }
            ] }
        }));
        assert!(matches!(judge(&d, 1), Rollout::Failed(why) if why.contains("too slow")));
    }
}
