//! Commands arrive durably: the agent reads its environment's subjects of the
//! FERRY_COMMANDS stream through a durable consumer, hands each command to its
//! service's worker (one command at a time per service, services in parallel),
//! and acknowledges only once the outcome is recorded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use ferry_protocol::approval::{self, ApprovalKind, ApprovalTarget};
use ferry_protocol::command::{Action, Command};
use ferry_protocol::envelope::peek_id;
use ferry_protocol::event::AgentEvent;
use ferry_protocol::{
    streams, subject, Envelope, HostName, Refusal, RefusalReason, ServiceName, TrustedKeys,
};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;
use crate::executor::{Completion, Executor, Report};
use crate::Error;
use uuid::Uuid;

/// Commands queued per service before the agent stops pulling more.
const WORKER_QUEUE: usize = 32;
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
/// A third of [`ACK_WAIT`]: two progress acks may be lost before a running
/// command is redelivered (and recognised as still running).
const PROGRESS_ACK_EVERY: Duration = Duration::from_secs(5);

/// Whom the agent trusts: the keys that may sign commands, and, for an
/// approval-gated environment, the reviewers whose approvals a deploy must
/// carry and how many.
#[derive(Debug)]
pub struct Trust {
    /// Keys whose signed commands are accepted (the controller's).
    pub commands: TrustedKeys,
    /// Reviewer keys whose approvals count.
    pub reviewers: TrustedKeys,
    /// Approvals from distinct reviewers every deploy needs (0: none).
    pub approvals_required: usize,
}

impl Trust {
    /// Checks a deploy's approvals: none needed when the environment is not
    /// gated. Rollback, scale and maintenance carry none: a rollback only
    /// returns to a version this agent already ran, which passed this check
    /// when it was deployed.
    fn check_approvals(&self, command: &Command, now: OffsetDateTime) -> Result<(), Refusal> {
        let Action::Deploy {
            release, approvals, ..
        } = &command.action
        else {
            return Ok(());
        };
        let digest = release.approval_digest();
        let target = ApprovalTarget {
            service: &command.service,
            version: &release.version,
            digest: &digest,
            environment: &command.environment,
            kind: ApprovalKind::Deploy,
        };
        approval::check_quorum(
            approvals,
            self.approvals_required,
            &self.reviewers,
            target,
            now,
        )
        .map(|_| ())
    }
}

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
async fn pull_commands(
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

/// Reads commands until `shutdown`, then lets the commands in progress reach a
/// known state and returns.
pub async fn run(
    js: jetstream::Context,
    host: HostName,
    executor: Arc<Executor>,
    trusted: Arc<Trust>,
    publisher: EventPublisher,
    shutdown: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(), Error> {
    let env = executor.environment().clone();
    // The stream exists (`ensure_streams` ran), but in a cluster the consumer
    // may not be placeable yet: wait for it as for the streams.
    let Some(mut messages) = until_jetstream_ready("cannot pull commands yet", &shutdown, || {
        pull_commands(&js, &env, &host)
    })
    .await?
    else {
        return Ok(());
    };

    let mut workers: HashMap<ServiceName, mpsc::Sender<Admitted>> = HashMap::new();
    let in_flight = InFlight::default();
    let mut tasks = JoinSet::new();
    for service in executor.services().keys() {
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        workers.insert(service.clone(), tx);
        tasks.spawn(worker(rx, executor.clone(), in_flight.clone()));
    }
    tracing::info!(environment = %env, %host, services = workers.len(), "taking commands");
    let _ = ready.send(());

    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // The client re-issues pulls by itself; a missed heartbeat or a
                // reconnect shows up here and is not fatal.
                tracing::warn!(error = %e, "command stream hiccup");
                continue;
            }
            None => {
                return Err(Error::JetStream {
                    what: "pulling commands",
                    detail: "the stream of commands ended".into(),
                })
            }
        };
        route(
            message, &host, &workers, &executor, &publisher, &trusted, &in_flight,
        )
        .await;
    }
    drop(workers);
    // Workers finish the command in hand (the backends see the same shutdown
    // and stop waiting on health checks), then end as their queues close.
    while tasks.join_next().await.is_some() {}
    tracing::info!("command intake stopped");
    Ok(())
}

async fn route(
    message: jetstream::Message,
    host: &HostName,
    workers: &HashMap<ServiceName, mpsc::Sender<Admitted>>,
    executor: &Arc<Executor>,
    publisher: &EventPublisher,
    trusted: &Trust,
    in_flight: &InFlight,
) {
    let parsed = subject::Subject::parse(message.subject.as_str());
    let service = match parsed {
        Ok(subject::Subject::Command { env, service }) if &env == executor.environment() => service,
        other => {
            let detail = match other {
                Ok(_) => "not a command subject of this environment".to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(subject = %message.subject, %detail, "refusing message on an unusable subject");
            publisher
                .publish_agent(AgentEvent::Refused {
                    subject: message.subject.as_str().chars().take(200).collect(),
                    reason: RefusalReason::Malformed,
                    detail,
                })
                .await;
            finish(
                Done {
                    message,
                    report: None,
                    end: End::Term,
                },
                executor,
            )
            .await;
            return;
        }
    };
    match workers.get(&service) {
        Some(tx) => match admit(message, host, service.clone(), executor, trusted, in_flight).await
        {
            Admission::Run(admitted)
                if matches!(admitted.command.action, Action::Rollout { .. }) =>
            {
                control(admitted, executor.clone(), in_flight.clone());
            }
            Admission::Run(admitted) => {
                if tx.send(admitted).await.is_err() {
                    tracing::error!(%service, "service worker is gone; the command will be redelivered");
                }
            }
            Admission::Finish(done) => finish(done, executor).await,
            Admission::AlreadyRunning => {}
        },
        None => {
            let refusal = Refusal::new(
                RefusalReason::UnknownService,
                format!("this agent does not manage a service named {service}"),
            );
            let report = executor.refuse(&service, peek_id(&message.payload), &refusal);
            finish(
                Done {
                    message,
                    report: Some(report),
                    end: End::Term,
                },
                executor,
            )
            .await;
        }
    }
}

/// How a message leaves the agent's hands.
enum End {
    /// Executed: acknowledge (and wait for the server to confirm).
    Ack,
    /// Refused: never deliver it again.
    Term,
    /// Interrupted by shutdown: deliver it again later.
    Nak,
}

/// A handled message: its final event (if any) and how to acknowledge it.
struct Done {
    message: jetstream::Message,
    report: Option<Report>,
    end: End,
}

/// Publishes the final event, then acknowledges: a command is only ever
/// acknowledged after its outcome is both recorded and published.
async fn finish(done: Done, executor: &Executor) {
    if let Some(report) = done.report {
        executor.publish(report).await;
    }
    let result = match done.end {
        End::Ack => done.message.double_ack().await,
        End::Term => done.message.ack_with(AckKind::Term).await,
        End::Nak => done.message.ack_with(AckKind::Nak(None)).await,
    };
    if let Err(e) = result {
        tracing::warn!(subject = %done.message.subject, error = %e, "acknowledgement not confirmed; a redelivery will be recognised as executed");
    }
}

/// Ids of commands accepted and not yet finished: a redelivery of one of
/// them is left to the original's acknowledgement.
#[derive(Clone, Default)]
struct InFlight(Arc<std::sync::Mutex<HashSet<Uuid>>>);

impl InFlight {
    fn insert(&self, id: Uuid) -> bool {
        self.0.lock().map(|mut set| set.insert(id)).unwrap_or(false)
    }

    fn remove(&self, id: &Uuid) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(id);
        }
    }
}

/// A verified, accepted command on its way to its service's worker.
struct Admitted {
    message: jetstream::Message,
    id: Uuid,
    expires: OffsetDateTime,
    command: Command,
    /// Progress acks from admission, so a command queued behind a long
    /// rollout is not redelivered either; they stop when this is dropped.
    progress_acks: tokio_util::sync::DropGuard,
}

enum Admission {
    /// Run it.
    Run(Admitted),
    /// Refused or already done: report (if anything) and acknowledge.
    Finish(Done),
    /// A redelivery of a command still running; its original will ack.
    AlreadyRunning,
}

/// One service's commands, one at a time. Reporting and acknowledging run in
/// a companion task so the next command does not wait on those round trips;
/// the queue between them keeps reports in order.
async fn worker(mut queue: mpsc::Receiver<Admitted>, executor: Arc<Executor>, in_flight: InFlight) {
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(WORKER_QUEUE);
    let reporter = {
        let executor = executor.clone();
        tokio::spawn(async move {
            while let Some(done) = done_rx.recv().await {
                finish(done, &executor).await;
            }
        })
    };
    while let Some(admitted) = queue.recv().await {
        let id = admitted.id;
        let done = execute(admitted, &executor).await;
        in_flight.remove(&id);
        if done_tx.send(done).await.is_err() {
            tracing::error!("reporter task is gone");
            break;
        }
    }
    drop(done_tx);
    let _ = reporter.await;
}

fn refused(message: jetstream::Message, report: Report) -> Done {
    Done {
        message,
        report: Some(report),
        end: End::Term,
    }
}

/// Verifies a command and checks it against what was executed, in the intake
/// loop, so the `accepted` event goes out without waiting for a hop to the
/// service's worker.
async fn admit(
    message: jetstream::Message,
    host: &HostName,
    service: ServiceName,
    executor: &Executor,
    trusted: &Trust,
    in_flight: &InFlight,
) -> Admission {
    let now = OffsetDateTime::now_utc();
    let envelope =
        match Envelope::<Command>::decode_verified(&message.payload, &trusted.commands, now) {
            Ok(envelope) => envelope,
            Err(refusal) => {
                let report = executor.refuse(&service, peek_id(&message.payload), &refusal);
                return Admission::Finish(refused(message, report));
            }
        };
    let id = envelope.id;
    let command = envelope.data;
    if &command.environment == executor.environment() && !command.is_for(host) {
        // Another host's step of a wave (or a command to one host): this
        // host neither runs nor reports it, and it is not a replay here.
        tracing::debug!(command_id = %id, %host, "command for other hosts; skipping");
        return Admission::Finish(Done {
            message,
            report: None,
            end: End::Ack,
        });
    }
    let mismatch = if &command.environment != executor.environment() {
        Some(Refusal::new(
            RefusalReason::WrongEnvironment,
            format!(
                "the command is for {} but this agent serves {}",
                command.environment,
                executor.environment()
            ),
        ))
    } else if command.service != service {
        Some(Refusal::new(
            RefusalReason::Invalid,
            format!(
                "the command names service {} but was sent on {}'s subject",
                command.service, service
            ),
        ))
    } else {
        command
            .validate()
            .err()
            .map(|e| Refusal::new(RefusalReason::Invalid, e.to_string()))
            .or_else(|| trusted.check_approvals(&command, now).err())
    };
    if let Some(refusal) = mismatch {
        let report = executor.refuse(&service, Some(id), &refusal);
        return Admission::Finish(refused(message, report));
    }
    if !in_flight.insert(id) {
        if message.info().map(|i| i.delivered > 1).unwrap_or(false) {
            tracing::info!(command_id = %id, "redelivery of a command still running; its own ack will settle it");
            return Admission::AlreadyRunning;
        }
        let refusal = Refusal::new(
            RefusalReason::Replayed,
            format!("command {id} is already running"),
        );
        let report = executor.refuse(&service, Some(id), &refusal);
        return Admission::Finish(refused(message, report));
    }
    if executor.was_executed(&id) {
        in_flight.remove(&id);
        let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(false);
        if redelivered {
            // Our own ack was lost after the outcome was recorded: not a replay.
            tracing::info!(command_id = %id, "redelivered command was already executed; acknowledging");
            return Admission::Finish(Done {
                message,
                report: None,
                end: End::Term,
            });
        }
        let refusal = Refusal::new(
            RefusalReason::Replayed,
            format!("command {id} was already executed"),
        );
        let report = executor.refuse(&service, Some(id), &refusal);
        return Admission::Finish(refused(message, report));
    }

    executor.accepted(&service, id, command.action.kind()).await;
    // Publishing only queued the event for the connection's task. Yield so
    // that task writes it out now: otherwise the command's worker, woken
    // next on this thread, starts executing (opening logs, spawning) first
    // and `accepted` leaves after that work, or on another thread woken for it.
    tokio::task::yield_now().await;
    let expires = envelope.expires.unwrap_or_else(OffsetDateTime::now_utc);
    let keep_alive = CancellationToken::new();
    tokio::spawn(progress_acks(message.clone(), keep_alive.clone()));
    Admission::Run(Admitted {
        message,
        id,
        expires,
        command,
        progress_acks: keep_alive.drop_guard(),
    })
}

/// A rollout control action goes straight to the running rollout (the
/// service's worker is busy driving it), in a task of its own so the intake
/// loop does not wait; it is acknowledged after its outcome is published.
fn control(admitted: Admitted, executor: Arc<Executor>, in_flight: InFlight) {
    let Admitted {
        message,
        id,
        expires,
        command,
        progress_acks,
    } = admitted;
    let Action::Rollout { control } = command.action else {
        return;
    };
    tokio::spawn(async move {
        let report = executor
            .control(id, expires, command.service, control)
            .await;
        drop(progress_acks);
        in_flight.remove(&id);
        finish(
            Done {
                message,
                report: Some(report),
                end: End::Ack,
            },
            &executor,
        )
        .await;
    });
}

async fn execute(admitted: Admitted, executor: &Executor) -> Done {
    let Admitted {
        message,
        id,
        expires,
        command,
        progress_acks,
    } = admitted;
    let completion = executor.execute(id, expires, command).await;
    drop(progress_acks);
    match completion {
        Completion::Done(report) => Done {
            message,
            report: Some(report),
            end: End::Ack,
        },
        Completion::Interrupted => Done {
            message,
            report: None,
            end: End::Nak,
        },
    }
}

async fn progress_acks(message: jetstream::Message, done: CancellationToken) {
    let mut tick = tokio::time::interval(PROGRESS_ACK_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    }
}
