//! The request-reply API the CLI talks to, on `ferry.v1.api.<op>`.
//!
//! Every instance joins one queue group, so each request is answered once.
//! Every request gets a reply, and every failure is a sentence in that reply:
//! nothing a client sends can stop the controller.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Message;
use ferry_protocol::api::{ApiReply, ApiRequest, CommandIssued, MAX_HISTORY_LIMIT};
use ferry_protocol::command::{Action, Command};
use ferry_protocol::subject::{self, Subject};
use ferry_protocol::{EnvName, Envelope, HostName, ServiceName};
use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};
use uuid::Uuid;

use crate::store::HistoryFilter;
use crate::{ids, installation, issue, plan, promotion, status, waves, Error, Shared, SOURCE};

/// The queue group every controller instance answers the API in.
pub const QUEUE_GROUP: &str = "ferry-controller";
/// Most requests handled at once; further ones wait in the subscription.
const MAX_IN_FLIGHT: usize = 64;
/// How long, at shutdown, requests already received may take to be answered.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Longest actor name accepted.
const MAX_ACTOR_LEN: usize = 128;

/// Answers API requests until `shutdown`, then answers those already
/// received and returns.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> Result<(), Error> {
    let mut requests = shared
        .client
        .queue_subscribe(subject::all_api(), QUEUE_GROUP.to_owned())
        .await
        .map_err(|e| Error::nats("subscribe to the API", e))?;
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let tracker = TaskTracker::new();
    let mut drain_until = None;
    let result = loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break Ok(());
        };
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled(), if drain_until.is_none() => {
                // Stop receiving, but answer what the server already sent us.
                if let Err(e) = requests.drain().await {
                    warn!("could not drain the API subscription: {e}");
                    break Ok(());
                }
                drain_until = Some(tokio::time::Instant::now() + DRAIN_DEADLINE);
                continue;
            }
            next = next_request(&mut requests, drain_until) => next,
        };
        match next {
            Some(message) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    handle(&shared, message).await;
                    drop(permit);
                });
            }
            None if drain_until.is_some() => break Ok(()),
            None => break Err(Error::TaskEnded { task: "api" }),
        }
    };
    tracker.close();
    tracker.wait().await;
    result
}

async fn next_request(
    requests: &mut async_nats::Subscriber,
    drain_until: Option<tokio::time::Instant>,
) -> Option<Message> {
    match drain_until {
        None => requests.next().await,
        Some(deadline) => tokio::time::timeout_at(deadline, requests.next())
            .await
            .ok()
            .flatten(),
    }
}

async fn handle(shared: &Shared, message: Message) {
    let Some(reply) = message.reply.clone() else {
        debug!(subject = %message.subject, "API message without a reply subject; ignoring it");
        return;
    };
    let bytes = match dispatch(shared, &message).await {
        Ok(bytes) => bytes,
        Err(sentence) => {
            debug!(subject = %message.subject, "API request failed: {sentence}");
            encode(ApiReply::<()>::error(sentence))
        }
    };
    if let Err(e) = shared.client.publish(reply, bytes.into()).await {
        warn!(subject = %message.subject, "could not send the reply: {e}");
    }
}

/// A reply to send, or the sentence of a failed one.
pub(crate) type Answer = Result<Vec<u8>, String>;

async fn dispatch(shared: &Shared, message: &Message) -> Answer {
    let op = match Subject::parse(message.subject.as_str()) {
        Ok(Subject::Api { op }) => op,
        _ => {
            return Err(format!(
                "{} is not an operation of the ferry API",
                message.subject
            ))
        }
    };
    let envelope = Envelope::<ApiRequest>::decode(&message.payload)
        .map_err(|r| format!("not a valid {} request: {}", op.as_str(), r.detail))?;
    let request_id = envelope.id;
    let request = envelope.data;
    if request.op() != op {
        return Err(format!(
            "a {} request was sent to {}; send it to {}",
            request.op().as_str(),
            message.subject,
            subject::api(request.op())
        ));
    }
    answer(shared, request_id, request).await
}

/// Carries out one request, as for a client on NATS: the dashboard's reads
/// and actions come here too, so both take the same checks and the same
/// signed command path, and are audited alike.
pub(crate) async fn answer(shared: &Shared, request_id: Uuid, request: ApiRequest) -> Answer {
    match request {
        ApiRequest::Status { environment } => status(shared, environment).await,
        ApiRequest::History {
            environment,
            service,
            limit,
            actor,
            since,
            action,
        } => {
            let filter = HistoryFilter {
                environment,
                service,
                actor,
                since,
                action,
            };
            history(shared, filter, limit).await
        }
        ApiRequest::Approve { approval } => {
            let (sentence, view) = promotion::approve(shared, *approval).await?;
            Ok(encode(ApiReply::ok(sentence, view)))
        }
        ApiRequest::Reject {
            environment,
            service,
            version,
            reason,
            actor,
        } => {
            let actor = check_actor(actor)?;
            let (sentence, view) =
                promotion::reject(shared, &environment, &service, &version, reason, actor).await?;
            Ok(encode(ApiReply::ok(sentence, view)))
        }
        ApiRequest::Promote {
            environment,
            service,
            version,
            actor,
        } => {
            let actor = check_actor(actor)?;
            let (sentence, view) =
                promotion::promote(shared, &environment, &service, &version, actor).await?;
            Ok(encode(ApiReply::ok(sentence, view)))
        }
        ApiRequest::Approvals {
            environment,
            service,
            all,
        } => {
            if let Some(env) = &environment {
                check_environment(shared, env)?;
            }
            let rows = promotion::list(shared, environment.as_ref(), service.as_ref(), all).await?;
            Ok(encode(ApiReply::ok(
                format!("{} promotions", rows.len()),
                rows,
            )))
        }
        ApiRequest::Releases { service } => {
            let releases = shared
                .store
                .releases(service.as_ref())
                .await
                .map_err(internal("read the releases"))?;
            // Secret variables never leave the controller in a reply.
            let releases: Vec<_> = releases
                .into_iter()
                .map(|mut record| {
                    record.release = record.release.redacted();
                    record
                })
                .collect();
            Ok(encode(ApiReply::ok(
                format!("{} releases", releases.len()),
                releases,
            )))
        }
        ApiRequest::Deploy {
            environment,
            service,
            version,
            replicas,
            actor,
            rollout,
            hotfix,
            max_parallel_hosts,
        } => {
            check_environment(shared, &environment)?;
            let actor = check_actor(actor)?;
            check_max_parallel_hosts(max_parallel_hosts)?;
            let release = plan::published_release(shared, &service, &version).await?;
            // Approval-gated environments and the security gate apply to a
            // deploy by hand too: it carries the recorded quorum or is refused.
            let approvals = promotion::approvals_for_deploy(shared, &release, &environment).await?;
            let action = plan::deploy_action(&release, replicas, approvals, rollout, hotfix);
            let target = Target::new(environment, service, actor, Vec::new());
            let wave = Some(max_parallel_hosts);
            issue_command(shared, request_id, target, action, wave).await
        }
        ApiRequest::PlanDeploy {
            environment,
            service,
            version,
            replicas,
            rollout,
            hotfix,
            max_parallel_hosts,
        } => {
            check_environment(shared, &environment)?;
            check_max_parallel_hosts(max_parallel_hosts)?;
            let request = plan::Request {
                environment,
                service,
                version,
                replicas,
                rollout,
                hotfix,
                max_parallel_hosts,
            };
            let (sentence, plan) = plan::plan(shared, request).await?;
            Ok(encode(ApiReply::ok(sentence, plan)))
        }
        ApiRequest::Rollback {
            environment,
            service,
            to,
            force,
            dry_run,
            actor,
            hosts,
        } => {
            check_environment(shared, &environment)?;
            let actor = check_actor(actor)?;
            let action = Action::Rollback { to, force, dry_run };
            let target = Target::new(environment, service, actor, hosts);
            issue_command(shared, request_id, target, action, None).await
        }
        ApiRequest::Rollout {
            environment,
            service,
            control,
            actor,
            hosts,
        } => {
            check_environment(shared, &environment)?;
            let actor = check_actor(actor)?;
            let action = Action::Rollout { control };
            let target = Target::new(environment, service, actor, hosts);
            issue_command(shared, request_id, target, action, None).await
        }
        ApiRequest::Scale {
            environment,
            service,
            replicas,
            actor,
            hosts,
        } => {
            check_environment(shared, &environment)?;
            let actor = check_actor(actor)?;
            let action = Action::Scale { replicas };
            let target = Target::new(environment, service, actor, hosts);
            issue_command(shared, request_id, target, action, None).await
        }
        ApiRequest::Installation {} => {
            let view = installation::installation(shared)
                .await
                .map_err(internal("read the installation"))?;
            Ok(encode(ApiReply::ok(
                format!("{} environments", view.environments.len()),
                view,
            )))
        }
        ApiRequest::RecordDrill { drill, actor } => {
            check_environment(shared, &drill.environment)?;
            let actor = check_actor(actor)?;
            let record = installation::record_drill(shared, request_id, *drill, actor)
                .await
                .map_err(internal("record the drill"))?;
            Ok(encode(ApiReply::ok(
                "the drill is in the audit trail",
                record,
            )))
        }
        ApiRequest::Maintenance {
            environment,
            service,
            mode,
            actor,
            hosts,
        } => {
            check_environment(shared, &environment)?;
            let actor = check_actor(actor)?;
            let action = Action::Maintenance(mode);
            let target = Target::new(environment, service, actor, hosts);
            issue_command(shared, request_id, target, action, None).await
        }
    }
}

async fn status(shared: &Shared, environment: Option<EnvName>) -> Answer {
    let environments = match environment {
        Some(env) => {
            check_environment(shared, &env)?;
            vec![env]
        }
        None => shared.config.environments().to_vec(),
    };
    let hosts = shared
        .store
        .hosts(&environments)
        .await
        .map_err(internal("read the agents' heartbeats"))?;
    let deployments = shared
        .store
        .deployments()
        .await
        .map_err(internal("read the deployments"))?;
    let waves = shared
        .store
        .waves()
        .await
        .map_err(internal("read the waves"))?;
    let rows = status::rows(
        &environments,
        &hosts,
        &deployments,
        &waves,
        OffsetDateTime::now_utc(),
        shared.config.agent_timeout(),
    );
    let up = environments
        .iter()
        .filter(|env| rows.iter().any(|r| &r.environment == *env && r.agent_up))
        .count();
    Ok(encode(ApiReply::ok(
        format!(
            "{} environments, {up} with a live agent",
            environments.len()
        ),
        rows,
    )))
}

async fn history(shared: &Shared, filter: HistoryFilter, limit: u32) -> Answer {
    let limit = limit.min(MAX_HISTORY_LIMIT);
    let records = shared
        .store
        .history(&filter, limit as usize)
        .await
        .map_err(internal("read the history"))?;
    Ok(encode(ApiReply::ok(
        format!("{} records", records.len()),
        records,
    )))
}

/// Where a command goes and who asks.
struct Target {
    environment: EnvName,
    service: ServiceName,
    actor: Option<String>,
    hosts: Vec<HostName>,
}

impl Target {
    fn new(
        environment: EnvName,
        service: ServiceName,
        actor: Option<String>,
        hosts: Vec<HostName>,
    ) -> Self {
        Target {
            environment,
            service,
            actor,
            hosts,
        }
    }
}

/// `wave`: for a deploy, `Some(max_parallel_hosts asked)`: it goes host by
/// host when the environment has several (`waves::deploy`).
async fn issue_command(
    shared: &Shared,
    request_id: Uuid,
    target: Target,
    action: Action,
    wave: Option<Option<u32>>,
) -> Answer {
    // Derived from the request's id: a client retrying the same request
    // gets the same command back instead of a second one.
    let id = ids::api_command(request_id, &target.environment, &target.service);
    let command = Command {
        environment: target.environment,
        service: target.service,
        actor: target.actor,
        hosts: target.hosts,
        action,
    };
    let sentence = issue::describe(&command);
    let issued = match wave {
        Some(max_parallel_hosts) => waves::deploy(shared, id, command, max_parallel_hosts).await,
        None => issue::issue(shared, id, command).await,
    };
    let issued: CommandIssued = issued.map_err(|e| match e {
        Error::InvalidCommand(e) => format!("cannot {sentence}: {e}"),
        other => internal("issue the command")(other),
    })?;
    Ok(encode(ApiReply::ok(
        format!("{sentence}: issued as command {id}"),
        issued,
    )))
}

fn check_max_parallel_hosts(asked: Option<u32>) -> Result<(), String> {
    match asked {
        Some(n) if !(1..=ferry_protocol::wave::MAX_PARALLEL_HOSTS).contains(&n) => Err(format!(
            "max_parallel_hosts {n} is outside 1..={}",
            ferry_protocol::wave::MAX_PARALLEL_HOSTS
        )),
        _ => Ok(()),
    }
}

fn check_environment(shared: &Shared, env: &EnvName) -> Result<(), String> {
    if shared.config.has_environment(env) {
        Ok(())
    } else {
        Err(format!(
            "unknown environment {env}: the pipeline is {}",
            shared.config.pipeline()
        ))
    }
}

fn check_actor(actor: Option<String>) -> Result<Option<String>, String> {
    match actor {
        Some(a) if a.len() > MAX_ACTOR_LEN || a.chars().any(char::is_control) => Err(format!(
            "the actor must be at most {MAX_ACTOR_LEN} bytes without control characters"
        )),
        other => Ok(other),
    }
}

/// Logs an internal failure and turns it into a sentence for the client.
fn internal(what: &'static str) -> impl FnOnce(Error) -> String {
    move |e| {
        error!("could not {what}: {e}");
        format!("the controller could not {what}: {e}")
    }
}

fn encode<T: Serialize>(reply: ApiReply<T>) -> Vec<u8> {
    match Envelope::new(SOURCE, reply).to_bytes() {
        Ok(bytes) => bytes,
        Err(e) => {
            let fallback = ApiReply::<()>::error(format!(
                "the reply could not be sent ({e}); ask for fewer records"
            ));
            Envelope::new(SOURCE, fallback)
                .to_bytes()
                .unwrap_or_else(|e| {
                    error!("could not encode an error reply: {e}");
                    Vec::new()
                })
        }
    }
}
