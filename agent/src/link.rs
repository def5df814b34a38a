//! The agent's view of its NATS connection: when it was lost and when it was
//! back, so the first heartbeat after an outage marks the window in which its
//! periodic events may be missing (outcomes are retried until stored, so only
//! health, metrics and progress can be).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use ferry_protocol::event::Gap;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the connection's state is looked at: the precision of a gap.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Shared between the watcher task and the heartbeat.
#[derive(Clone, Default)]
pub struct LinkWatch {
    state: Arc<Mutex<Link>>,
    back: Arc<Notify>,
}

#[derive(Default)]
struct Link {
    lost_at: Option<OffsetDateTime>,
    gap: Option<Gap>,
}

impl LinkWatch {
    /// Watches `client`'s connection until `shutdown`.
    pub async fn run(self, client: async_nats::Client, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(LOOK_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match client.connection_state() {
                State::Connected => self.found(OffsetDateTime::now_utc()),
                State::Disconnected | State::Pending => self.lost(OffsetDateTime::now_utc()),
            }
        }
    }

    fn lost(&self, at: OffsetDateTime) {
        if let Ok(mut link) = self.state.lock() {
            if link.lost_at.is_none() {
                tracing::warn!("lost NATS; services keep serving, periodic events may be missed until it is back");
                link.lost_at = Some(at);
            }
        }
    }

    fn found(&self, at: OffsetDateTime) {
        let Ok(mut link) = self.state.lock() else {
            return;
        };
        if let Some(from) = link.lost_at.take() {
            tracing::info!(lost_for = %(at - from), "NATS is back");
            // Two outages before a heartbeat could go out count as one window.
            let from = link.gap.as_ref().map_or(from, |g| g.from.min(from));
            link.gap = Some(Gap { from, to: at });
            self.back.notify_one();
        }
    }

    /// The outage not yet reported, if any; reporting it clears it.
    pub fn take_gap(&self) -> Option<Gap> {
        self.state.lock().ok().and_then(|mut link| link.gap.take())
    }

    /// Notified when the connection is back after an outage.
    pub fn back(&self) -> Arc<Notify> {
        self.back.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_and_two_before_a_heartbeat_are_one_window() {
        let watch = LinkWatch::default();
        let t = |s: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s);
        watch.found(t(1));
        assert_eq!(watch.take_gap(), None, "never lost, nothing to report");
        watch.lost(t(10));
        watch.lost(t(11));
        watch.found(t(15));
        watch.lost(t(20));
        watch.found(t(22));
        assert_eq!(
            watch.take_gap(),
            Some(Gap {
                from: t(10),
                to: t(22)
            })
        );
        assert_eq!(watch.take_gap(), None);
    }
}
