//! The supervisor: connects to NATS, opens the store, then runs the
//! controller's loops (releases, events, API, sweep, notifications, metrics,
//! dashboard) until shutdown or the first failure, and flushes NATS at the
//! end. It sits above every feature: nothing imports it but the crate root.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{ConfigProblem, ResolvedConfig};
use crate::context::Shared;
use crate::error::Error;
use crate::store::Store;
use crate::{api, dashboard, events, metrics, notify, releases, sweep};

/// How long shutdown waits for NATS to take what is still buffered.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the controller until `shutdown` is cancelled or one of its loops fails.
///
/// Connects to NATS, creates the streams and buckets if missing, then runs the
/// release, event and API loops. On cancellation each loop finishes the
/// message in hand (the API answers the requests already received), then
/// pending publishes are flushed. If a loop fails, the others are stopped and
/// its error is returned.
pub async fn run(config: ResolvedConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let client = connect(&config).await?;
    let result = supervise(client.clone(), config, shutdown).await;
    match tokio::time::timeout(FLUSH_DEADLINE, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!("could not flush NATS at shutdown: {e}"),
        Err(_) => error!("NATS did not take buffered messages within {FLUSH_DEADLINE:?}"),
    }
    result
}

async fn connect(config: &ResolvedConfig) -> Result<async_nats::Client, Error> {
    let mut options = async_nats::ConnectOptions::new().name("ferry-controller");
    if let Some(path) = config.nats_creds() {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| Error::Credentials {
                path: path.to_owned(),
                source,
            })?;
    }
    if let Some((user, file)) = config.nats_user() {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Error::InvalidConfig(vec![ConfigProblem {
                field: "nats_password_file".to_owned(),
                message: format!("cannot read {}: {e}", file.display()),
            }])
        })?;
        let password = text.lines().next().unwrap_or("").to_owned();
        options = options.user_and_password(user.to_owned(), password);
    }
    options = config.nats_tls().apply(options);
    // Checked by `validate`; a list the controller connects to any of.
    let servers = ferry_protocol::streams::server_list(config.nats_url()).map_err(|message| {
        Error::InvalidConfig(vec![ConfigProblem {
            field: "nats_url".to_owned(),
            message,
        }])
    })?;
    options
        .custom_inbox_prefix(config.nats_inbox_prefix())
        .ping_interval(ferry_protocol::streams::PING_INTERVAL)
        // Refusals by the server (a permissions violation) show in the log.
        .event_callback(|event| async move {
            match event {
                async_nats::Event::ServerError(e) => error!("NATS server error: {e}"),
                other => info!(event = %other, "NATS connection event"),
            }
        })
        .connect(servers)
        .await
        .map_err(|source| Error::Connect {
            tls: config.nats_tls().is_set(),
            url: config.nats_url().to_owned(),
            source,
        })
}

/// Opens the store, waiting while JetStream cannot serve ferry's streams yet
/// (a cluster still forming, a node of the placement down, a server
/// restarting) rather than exiting: daemons of a cluster start in any order.
/// Bad configuration (a stream kept with another replica count) ends the wait
/// at once; `None` when `shutdown` comes first.
async fn open_store(
    js: async_nats::jetstream::Context,
    replicas: ferry_protocol::streams::Replicas,
    events: &ferry_protocol::streams::StreamSpec,
    shutdown: &CancellationToken,
) -> Result<Option<Store>, Error> {
    use ferry_protocol::streams::{next_setup_retry, SETUP_RETRY_FIRST};
    let mut pause = SETUP_RETRY_FIRST;
    loop {
        match Store::open(js.clone(), replicas, events).await {
            Ok(store) => return Ok(Some(store)),
            Err(e @ Error::Nats { .. }) => {
                warn!(error = %e, retry_in = ?pause, "JetStream cannot serve ferry's streams yet; trying again");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(pause) => {}
        }
        pause = next_setup_retry(pause);
    }
}

async fn supervise(
    client: async_nats::Client,
    config: ResolvedConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let js = match config.jetstream_domain() {
        Some(domain) => async_nats::jetstream::with_domain(client.clone(), domain.as_str()),
        None => async_nats::jetstream::new(client.clone()),
    };
    // With leaf nodes, the hub's events stream also sources each leaf's.
    let events = ferry_protocol::streams::hub_events(config.leaf_domains());
    let Some(store) = open_store(js, config.stream_replicas(), &events, &shutdown).await? else {
        info!("controller stopped before its streams were ready");
        return Ok(());
    };
    info!(
        public_key = %config.signing_key().public_key(),
        pipeline = %config.pipeline(),
        "controller started"
    );
    let shared = Arc::new(Shared {
        config,
        client,
        store,
    });

    // A child token: a failing loop stops its siblings without cancelling
    // the caller's token.
    let stop = shutdown.child_token();
    let mut loops = JoinSet::new();
    let mut names = HashMap::new();
    let handle = loops.spawn(releases::run(shared.clone(), stop.clone()));
    names.insert(handle.id(), "releases");
    let handle = loops.spawn(events::run(shared.clone(), stop.clone()));
    names.insert(handle.id(), "events");
    let handle = loops.spawn(api::run(shared.clone(), stop.clone()));
    names.insert(handle.id(), "api");
    let handle = loops.spawn(sweep::run(shared.clone(), stop.clone()));
    names.insert(handle.id(), "promotions");
    let handle = loops.spawn(notify::run(shared.clone(), stop.clone()));
    names.insert(handle.id(), "notifications");
    let handle = loops.spawn(metrics::run(shared.clone(), stop.clone()));
    names.insert(handle.id(), "metrics");
    let handle = loops.spawn(dashboard::run(shared.clone(), stop.clone()));
    names.insert(handle.id(), "dashboard");

    let mut first_error = None;
    while let Some(joined) = loops.join_next_with_id().await {
        let outcome = match joined {
            Ok((_, Ok(()))) if stop.is_cancelled() => None,
            Ok((id, Ok(()))) => Some(Error::TaskEnded {
                task: names.get(&id).copied().unwrap_or("controller"),
            }),
            Ok((_, Err(e))) => Some(e),
            Err(join_error) => Some(Error::TaskCrashed {
                task: names.get(&join_error.id()).copied().unwrap_or("controller"),
                reason: join_error.to_string(),
            }),
        };
        if let Some(e) = outcome {
            error!("{e}; stopping the controller");
            stop.cancel();
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            info!("controller stopped");
            Ok(())
        }
    }
}
