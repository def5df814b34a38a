//! What every loop shares: the configuration and the handles to NATS and
//! the store, no state. Below every feature, above the store.

use crate::config::ResolvedConfig;
use crate::store::Store;

/// What every loop shares: configuration and handles, no state.
pub(crate) struct Shared {
    pub(crate) config: ResolvedConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) store: Store,
}
