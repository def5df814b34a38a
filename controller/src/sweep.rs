//! The periodic pass over open promotions, every `promotion_check_interval`:
//! supersedes those a newer release replaced (`supersession`), then advances
//! those whose soak has ended, so a soak time that ends (or an approval that
//! expires) is acted on without waiting for another event, and a missed
//! event is caught up with. It also carries waves on (`waves::sweep`: hosts
//! that stopped answering, convergence). Every instance runs it; the promotions'
//! compare-and-set and the deploys' deterministic ids keep that harmless.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use ferry_protocol::api::PromotionState;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{convergence, events, promotion, supersession, waves, Error, Shared};

/// Sweeps until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> Result<(), Error> {
    let mut tick = tokio::time::interval(shared.config.promotion_check_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut converging = HashSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match waves::sweep(&shared, events::CONSUMER).await {
            Ok(records) => {
                if let Err(e) = convergence::run(&shared, &records, &mut converging).await {
                    warn!("could not converge the hosts: {e}");
                }
            }
            Err(e) => warn!("could not sweep the waves: {e}"),
        }
        let records = match shared.store.promotions().await {
            Ok(records) => records,
            Err(e) => {
                debug!("could not read the promotions: {e}");
                continue;
            }
        };
        let services: BTreeSet<_> = records
            .iter()
            .filter(|r| !r.is_closed())
            .map(|r| r.service.clone())
            .collect();
        let mut superseded = 0;
        for service in &services {
            match supersession::reconcile_among(&shared, service, &records).await {
                Ok(closed) => superseded += closed,
                Err(e) => warn!(%service, "could not check for superseded promotions: {e}"),
            }
        }
        let now = OffsetDateTime::now_utc();
        for record in records {
            let due = record.state == PromotionState::Waiting
                && record.requested
                && record.eligible_at.is_some_and(|t| t <= now);
            if !due {
                continue;
            }
            // A promotion superseded just now is closed, and `advance` reads
            // the record afresh, so it leaves it alone.
            if let Err(e) = promotion::advance(
                &shared,
                &record.service,
                &record.version,
                &record.environment,
            )
            .await
            {
                warn!(service = %record.service, version = %record.version, environment = %record.environment, "could not advance the promotion: {e}");
            }
        }
        if superseded > 0 {
            debug!("{superseded} promotion(s) superseded");
        }
    }
}
