//! The rollouts running now, by service: where an operator's control action
//! (pause, resume, promote, abort) finds the rollout it is meant for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ferry_protocol::rollout::RolloutControl;
use ferry_protocol::ServiceName;
use tokio::sync::{mpsc, oneshot};

use crate::rollout::ControlRequest;

/// Control actions queued for one running rollout.
const CONTROL_QUEUE: usize = 8;
/// How long a control action waits for the rollout to act on it.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The control handles of the running rollouts.
#[derive(Default)]
pub(super) struct RunningRollouts(Mutex<HashMap<ServiceName, mpsc::Sender<ControlRequest>>>);

impl RunningRollouts {
    /// Registers a rollout of `service` starting now; it takes its control
    /// actions from the receiver returned.
    pub(super) fn start(&self, service: &ServiceName) -> mpsc::Receiver<ControlRequest> {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        if let Ok(mut controls) = self.0.lock() {
            controls.insert(service.clone(), tx);
        }
        rx
    }

    /// The rollout of `service` has ended: control actions that arrived as
    /// it ended get their answer.
    pub(super) fn end(&self, service: &ServiceName, mut controls: mpsc::Receiver<ControlRequest>) {
        if let Ok(mut running) = self.0.lock() {
            running.remove(service);
        }
        controls.close();
        while let Ok(request) = controls.try_recv() {
            let _ = request
                .reply
                .send(Err(format!("the rollout of {service} has ended")));
        }
    }

    /// Hands `control` to the running rollout of `service` and waits until
    /// it took effect: a sentence saying what it did, or why it could not.
    pub(super) async fn send(
        &self,
        service: &ServiceName,
        control: RolloutControl,
    ) -> Result<String, String> {
        let handle = self.0.lock().ok().and_then(|c| c.get(service).cloned());
        let Some(tx) = handle else {
            return Err(format!("no rollout of {service} is in progress"));
        };
        let (reply, answer) = oneshot::channel();
        if tx.try_send(ControlRequest { control, reply }).is_err() {
            return Err(format!("the rollout of {service} has ended"));
        }
        match tokio::time::timeout(CONTROL_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("the rollout of {service} ended first")),
            Err(_) => Err(format!(
                "the rollout of {service} did not act within {CONTROL_TIMEOUT:?}"
            )),
        }
    }
}
