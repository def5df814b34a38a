//! The JetStream side of the intake: the streams the agent keeps (created
//! if missing, their replica count checked), waiting while JetStream cannot
//! serve them yet, and the durable consumer commands are pulled through.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use ferry_protocol::{streams, subject, HostName};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Unacknowledged commands JetStream may hand the agent at once.
const MAX_ACK_PENDING: i64 = 256;
/// Time JetStream waits for an ack before redelivering. It is also how long
/// a command stays lost when it was handed to a pull whose connection just
/// died (the agent's node paused or cut off before the client noticed):
/// short, so such a command runs within seconds of the agent reconnecting
/// elsewhere (at 60 s a command sent as the node froze waited a minute).
/// Commands queued or running send progress acks well inside it.
const ACK_WAIT: Duration = Duration::from_secs(15);
/// How long one pull request for commands waits on the server, and how
/// often the server confirms it is still held. On a cluster a pull can be
/// lost with the node or consumer leader it went to; a missed heartbeat
/// (two intervals) makes the client pull again elsewhere within seconds
/// (the client's defaults, 30 s and 15 s, left a paused node's agent
/// without commands for most of a minute).
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Creates the streams the agent uses (commands, events) with `replicas`
/// copies if they do not exist, and checks that those found have that many:
/// every mismatch is listed as bad configuration (exit 64), never corrected
/// silently.
pub async fn ensure_streams(
    js: &jetstream::Context,
    replicas: streams::Replicas,
    layout: &StreamLayout,
) -> Result<(), Error> {
    let mut problems = Vec::new();
    for spec in layout.specs() {
        let stream = create_stream(js, &spec, replicas).await?;
        let found = stream.cached_info().config.num_replicas;
        if let Some(why) = replicas.mismatch(spec.name, found) {
            problems.push(format!("stream_replicas: {why}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(problems))
    }
}

/// Which streams the agent keeps: the shared ones of one domain, or, on an
/// environment's leaf node, the leaf's own (see [`streams::leaf_commands`]).
pub enum StreamLayout {
    /// `FERRY_COMMANDS` and `FERRY_EVENTS` as the controller creates them.
    Shared,
    /// The leaf's `FERRY_COMMANDS`, sourcing `env`'s commands from the hub
    /// domain, and its `FERRY_EVENTS` of `env`'s events.
    Leaf {
        /// The agent's environment.
        env: ferry_protocol::EnvName,
        /// The hub's domain.
        hub: streams::Domain,
    },
}

impl StreamLayout {
    /// The specs of the streams, commands first.
    pub fn specs(&self) -> [streams::StreamSpec; 2] {
        match self {
            StreamLayout::Shared => [streams::commands(), streams::events()],
            StreamLayout::Leaf { env, hub } => {
                [streams::leaf_commands(env, hub), streams::leaf_events(env)]
            }
        }
    }
}

/// Creates a stream from its spec if it does not exist.
async fn create_stream(
    js: &jetstream::Context,
    spec: &streams::StreamSpec,
    replicas: streams::Replicas,
) -> Result<jetstream::stream::Stream, Error> {
    js.get_or_create_stream(spec.replicated(replicas.get()))
        .await
        .map_err(|e| Error::JetStream {
            what: "creating stream",
            detail: format!("{}: {e}", spec.name),
        })
}

/// Runs `attempt` until it succeeds, waiting while JetStream cannot serve it
/// yet (a cluster still forming, a node of the placement down, a server
/// restarting): each [`Error::JetStream`] is logged with `waiting` and
/// tried again after a pause growing from [`streams::SETUP_RETRY_FIRST`];
/// any other error (bad configuration) ends the wait at once. `None` when
/// `shutdown` comes first.
pub async fn until_jetstream_ready<T, F, Fut>(
    waiting: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut pause = streams::SETUP_RETRY_FIRST;
    loop {
        match attempt().await {
            Ok(done) => return Ok(Some(done)),
            Err(e @ Error::JetStream { .. }) => {
                tracing::warn!(error = %e, retry_in = ?pause, "{waiting}; trying again");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(pause) => {}
        }
        pause = streams::next_setup_retry(pause);
    }
}

/// Finds or creates the environment's durable consumer and starts pulling.
pub(super) async fn pull_commands(
    js: &jetstream::Context,
    env: &ferry_protocol::EnvName,
    host: &HostName,
) -> Result<consumer::pull::Stream, Error> {
    let name = streams::agent_consumer(env, host);
    let stream = js
        .get_stream(streams::commands().name)
        .await
        .map_err(|e| Error::JetStream {
            what: "finding stream",
            detail: format!("{}: {e}", streams::commands().name),
        })?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject::commands_for_env(env),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::JetStream {
            what: "creating consumer",
            detail: e.to_string(),
        })?;
    consumer
        .stream()
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| Error::JetStream {
            what: "pulling commands",
            detail: e.to_string(),
        })
}
