//! Commands arrive durably: the agent reads its environment's subjects of the
//! FERRY_COMMANDS stream through a durable consumer ([`streams`]), admits
//! each one in the intake loop ([`admission`]: verified, replay-checked,
//! refused or accepted), hands it to its service's worker (one command at a
//! time per service, services in parallel) for the executor to carry out,
//! and acknowledges only once the outcome is recorded and published
//! ([`settle`]).

mod admission;
mod settle;
mod streams;

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream;
use ferry_protocol::command::Action;
use ferry_protocol::envelope::peek_id;
use ferry_protocol::event::AgentEvent;
use ferry_protocol::{subject, EnvName, HostName, Refusal, RefusalReason, ServiceName};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::{EventPublisher, Report};
use crate::executor::{Completion, Executor};
use crate::ledger::Ledger;
use crate::Error;
pub use admission::Trust;
use admission::{Admission, Admitted, Admitter, InFlight};
use settle::{finish, Done, End};
use streams::pull_commands;
pub use streams::{ensure_streams, until_jetstream_ready, StreamLayout};

/// Commands queued per service before the agent stops pulling more.
const WORKER_QUEUE: usize = 32;

/// What the intake takes commands with.
pub struct Intake {
    /// The JetStream context of the agent's domain.
    pub js: jetstream::Context,
    /// The agent's environment.
    pub environment: EnvName,
    /// The agent's host among the environment's.
    pub host: HostName,
    /// Whom the agent trusts.
    pub trust: Arc<Trust>,
    /// The executed commands, for the replay check.
    pub ledger: Arc<Ledger>,
    /// Carries out admitted commands.
    pub executor: Arc<Executor>,
    /// Where outcomes, refusals and `accepted` go.
    pub publisher: EventPublisher,
}

/// Reads commands until `shutdown`, then lets the commands in progress reach a
/// known state and returns.
pub async fn run(
    intake: Intake,
    shutdown: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(), Error> {
    let Intake {
        js,
        environment: env,
        host,
        trust: trusted,
        ledger,
        executor,
        publisher,
    } = intake;
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
    let admitter = Admitter {
        environment: env.clone(),
        host: host.clone(),
        trust: trusted,
        ledger,
        publisher: publisher.clone(),
        in_flight: InFlight::default(),
    };
    let mut tasks = JoinSet::new();
    for service in executor.services().keys() {
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        workers.insert(service.clone(), tx);
        tasks.spawn(worker(
            rx,
            executor.clone(),
            publisher.clone(),
            admitter.in_flight.clone(),
        ));
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
        route(message, &workers, &executor, &admitter).await;
    }
    drop(workers);
    // Workers finish the command in hand (the backends see the same shutdown
    // and stop waiting on health checks), then end as their queues close.
    while tasks.join_next().await.is_some() {}
    tracing::info!("command intake stopped");
    Ok(())
}

/// Admits a message and hands it on: to its service's worker, or, for a
/// rollout control action, to a task of its own; refusals are settled here.
async fn route(
    message: jetstream::Message,
    workers: &HashMap<ServiceName, mpsc::Sender<Admitted>>,
    executor: &Arc<Executor>,
    admitter: &Admitter,
) {
    let publisher = &admitter.publisher;
    let parsed = subject::Subject::parse(message.subject.as_str());
    let service = match parsed {
        Ok(subject::Subject::Command { env, service }) if env == admitter.environment => service,
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
                publisher,
            )
            .await;
            return;
        }
    };
    match workers.get(&service) {
        Some(tx) => match admitter.admit(message, service.clone()).await {
            Admission::Run(admitted)
                if matches!(admitted.command.action, Action::Rollout { .. }) =>
            {
                control(
                    admitted,
                    executor.clone(),
                    publisher.clone(),
                    admitter.in_flight.clone(),
                );
            }
            Admission::Run(admitted) => {
                if tx.send(admitted).await.is_err() {
                    tracing::error!(%service, "service worker is gone; the command will be redelivered");
                }
            }
            Admission::Finish(done) => finish(done, publisher).await,
            Admission::AlreadyRunning => {}
        },
        None => {
            let refusal = Refusal::new(
                RefusalReason::UnknownService,
                format!("this agent does not manage a service named {service}"),
            );
            let report = Report::refused(&service, peek_id(&message.payload), &refusal);
            finish(
                Done {
                    message,
                    report: Some(report),
                    end: End::Term,
                },
                publisher,
            )
            .await;
        }
    }
}

/// One service's commands, one at a time. Reporting and acknowledging run in
/// a companion task so the next command does not wait on those round trips;
/// the queue between them keeps reports in order.
async fn worker(
    mut queue: mpsc::Receiver<Admitted>,
    executor: Arc<Executor>,
    publisher: EventPublisher,
    in_flight: InFlight,
) {
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(WORKER_QUEUE);
    let reporter = {
        tokio::spawn(async move {
            while let Some(done) = done_rx.recv().await {
                finish(done, &publisher).await;
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

/// A rollout control action goes straight to the running rollout (the
/// service's worker is busy driving it), in a task of its own so the intake
/// loop does not wait; it is acknowledged after its outcome is published.
fn control(
    admitted: Admitted,
    executor: Arc<Executor>,
    publisher: EventPublisher,
    in_flight: InFlight,
) {
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
            &publisher,
        )
        .await;
    });
}

/// Runs an admitted command on its service's worker.
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
