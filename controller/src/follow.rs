//! Live events at the hub, wherever their environment's agent publishes them.
//!
//! A subscription sees what agents connected to the hub publish. An
//! environment on its own leaf node is different: its link to the hub denies
//! the environment's event subjects (the hub stores each event once, through
//! its `FERRY_EVENTS` source of the leaf's stream), so no subscription at the
//! hub sees them. For each such environment an ordered consumer of the hub's
//! `FERRY_EVENTS` reads them as they are sourced, a moment later, and after a
//! cut link, all of them once it heals.

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use ferry_protocol::{streams, EnvName};
use futures::stream::{self, BoxStream, StreamExt};
use tracing::warn;

use crate::{Error, Shared};

/// Messages on `subject` (a wildcard over every environment) from a
/// subscription, merged with those of each leaf environment on
/// `per_leaf(env)` from the hub's stream. A leaf whose consumer cannot be
/// created is logged and left out: the other environments keep their feed.
pub(crate) async fn follow(
    shared: &Shared,
    subject: String,
    per_leaf: impl Fn(&EnvName) -> String,
) -> Result<BoxStream<'static, async_nats::Message>, Error> {
    let subscription = shared
        .client
        .subscribe(subject.clone())
        .await
        .map_err(|e| Error::Nats {
            action: format!("subscribe to {subject}"),
            source: Box::new(e),
        })?;
    let mut feeds = vec![subscription.boxed()];
    for (env, _) in shared.config.leaf_domains() {
        let filter = per_leaf(env);
        match sourced(shared, &filter).await {
            Ok(feed) => feeds.push(feed),
            Err(e) => {
                warn!(environment = %env, subject = %filter, error = %e, "cannot follow a leaf environment's events live; status and history still have them");
            }
        }
    }
    Ok(stream::select_all(feeds).boxed())
}

/// New messages under `filter` in the hub's `FERRY_EVENTS`, read by an
/// ordered consumer of this controller's own (every instance sees each).
async fn sourced(
    shared: &Shared,
    filter: &str,
) -> Result<BoxStream<'static, async_nats::Message>, Error> {
    let name = streams::events().name;
    let stream = shared
        .store
        .js()
        .get_stream(name)
        .await
        .map_err(|e| Error::nats(format!("find stream {name}"), e))?;
    let messages = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats(format!("follow {filter} in {name}"), e))?
        .messages()
        .await
        .map_err(|e| Error::nats(format!("follow {filter} in {name}"), e))?;
    Ok(messages
        .filter_map(|next| async move {
            match next {
                Ok(message) => Some(message.message),
                Err(e) => {
                    // The ordered consumer re-creates itself after a gap.
                    warn!(error = %e, "following a leaf environment's events");
                    None
                }
            }
        })
        .boxed())
}
