//! Deploys across several hosts of an environment, and keeping its hosts on
//! one version. A deploy to an environment with two or more live hosts is a
//! wave (`wave_plan`): its record in `ferry_waves` is the only state, moved
//! by compare-and-set on the agents' outcomes (`events`) and by the sweep
//! (hosts that stopped answering, steps to issue again, convergence), so a
//! restarted or second controller carries on where the record stands. Each
//! step is published under its deterministic id before the record says it
//! is out, so no interruption loses one and none runs twice.

use std::collections::HashMap;
use std::time::Duration;

use ferry_protocol::api::{CommandIssued, HistoryRecord};
use ferry_protocol::command::{Action, ActionKind, Command};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::wave::{StepState, WaveState};
use ferry_protocol::RefusalReason;
use ferry_protocol::{EnvName, HostName, ServiceName, Version};
use ferry_waves::{Candidate, WaveRecord};
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

use crate::records::AgentRecord;
use crate::{ids, issue, Error, Shared};

/// How long after issuing a step the sweep still publishes it again: inside
/// the commands stream's ten-minute duplicate window, so a copy is always
/// dropped by JetStream rather than refused by the agent as a replay.
const REISSUE_WITHIN: Duration = Duration::from_secs(9 * 60);
/// Compare-and-set attempts on one wave before giving up (more than two
/// controllers racing on one key is not expected).
const CAS_ATTEMPTS: u32 = 8;

/// Issues a deploy: as one command when the environment has at most one
/// live host serving the service (as before hosts), else as a wave across
/// them. The reply names `id` either way.
pub(crate) async fn deploy(
    shared: &Shared,
    id: Uuid,
    command: Command,
    max_parallel_hosts: Option<u32>,
) -> Result<CommandIssued, Error> {
    let env = command.environment.clone();
    let service = command.service.clone();
    let now = OffsetDateTime::now_utc();
    let hosts = live_hosts(shared, &env, now).await?;
    let candidates: Vec<Candidate> = hosts
        .iter()
        .filter_map(|(host, record)| {
            let snapshot = record
                .heartbeat
                .services
                .iter()
                .find(|s| s.service == service)?;
            Some(Candidate {
                host: host.clone(),
                version: snapshot.version.clone(),
            })
        })
        .collect();
    if candidates.len() < 2 || !matches!(command.action, Action::Deploy { .. }) {
        return issue::issue(shared, id, command).await;
    }
    command.validate().map_err(Error::InvalidCommand)?;
    let parallel = max_parallel_hosts
        .or_else(|| shared.config.stage(&env).map(|s| s.max_parallel_hosts))
        .unwrap_or(ferry_protocol::wave::DEFAULT_MAX_PARALLEL_HOSTS);
    let Some(planned) = WaveRecord::plan(id, command.clone(), candidates, parallel, now) else {
        return issue::issue(shared, id, command).await;
    };
    let record = start(shared, &planned, now).await?;
    let describe = issue::describe(&command);
    let canary = record
        .wave
        .canary_host()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let detail = format!(
        "{describe} host by host: canary host {canary}, then {} more, {} at a time",
        record.wave.steps.len().saturating_sub(1),
        record.wave.max_parallel_hosts
    );
    wave_history(shared, &record, "issued", &detail, now).await?;
    info!(environment = %env, %service, wave = %id, "{detail}");
    Ok(CommandIssued {
        command_id: id,
        subject: ferry_protocol::subject::command(&env, &service),
        environment: env,
        service,
        action: command.action.kind(),
        wave: true,
    })
}

/// What an agent's event meant to the environment's wave.
#[derive(Debug, Default)]
pub(crate) struct Ownership {
    /// The event answers one of the wave's steps: the wave, not the host,
    /// moves the release on to the next environment.
    pub in_wave: bool,
    /// The wave just succeeded with this version: move it on now.
    pub succeeded: Option<Version>,
}

/// Writes the planned wave, its canary step published first, unless the
/// same deploy already stands (a retried request, a second controller):
/// then that one is carried on. A running wave of another deploy is
/// superseded (the newer deploy wins).
async fn start(
    shared: &Shared,
    planned: &WaveRecord,
    now: OffsetDateTime,
) -> Result<WaveRecord, Error> {
    let (env, service, id) = (&planned.environment, &planned.service, planned.wave.id);
    for _ in 0..CAS_ATTEMPTS {
        let (replaced, revision) = match shared.store.wave_entry(env, service).await? {
            Some((current, _)) if current.wave.id == id => return Ok(current),
            Some((current, revision)) => (Some(current), revision),
            None => (None, 0),
        };
        if write_after_publishing(shared, None, planned, revision).await? {
            if let Some(mut old) = replaced.filter(|r| r.wave.state == WaveState::Running) {
                old.supersede(id, now);
                info!(environment = %env, %service, wave = %old.wave.id, "{}", old.wave.detail);
                wave_history(shared, &old, "superseded", &old.wave.detail, now).await?;
            }
            return Ok(planned.clone());
        }
    }
    Err(Error::Contended {
        bucket: ferry_protocol::streams::WAVES_BUCKET,
        key: format!("{env}.{service}"),
        attempts: CAS_ATTEMPTS,
    })
}

/// An agent's final event (outcome or refusal) about `service` in `env`:
/// moves the wave on when it answers one of its steps. One read of the
/// wave's record when the event is none of its business (every outcome of
/// an environment without waves comes through here).
pub(crate) async fn on_event(
    shared: &Shared,
    env: &EnvName,
    service: &ServiceName,
    event: &ServiceEvent,
) -> Result<Ownership, Error> {
    let Some(id) = event.command_id else {
        return Ok(Ownership::default());
    };
    let is_final = matches!(
        event.body,
        EventBody::Succeeded { .. } | EventBody::Failed { .. } | EventBody::Refused { .. }
    );
    if !is_final {
        return Ok(Ownership::default());
    }
    let Some(current) = shared.store.wave(env, service).await? else {
        return Ok(Ownership::default());
    };
    let owned = current
        .wave
        .steps
        .iter()
        .any(|s| s.command_id == id || s.revert_id == Some(id));
    if !owned {
        // A host converging on the wave's version is the wave's business
        // too: the release moved on (or will) when the wave succeeded.
        let converging = matches!(
            &event.body,
            EventBody::Succeeded { action: ActionKind::Deploy, version: Some(v), .. }
                if v == &current.wave.version
                    && matches!(current.wave.state, WaveState::Running | WaveState::Succeeded)
        );
        return Ok(Ownership {
            in_wave: converging,
            succeeded: None,
        });
    }
    let (succeeded, detail) = match &event.body {
        EventBody::Succeeded { detail, .. } => (true, detail.clone()),
        EventBody::Failed { reason, .. } => (false, reason.clone()),
        EventBody::Refused { reason, detail } if *reason != RefusalReason::Replayed => {
            (false, format!("refused ({reason}): {detail}"))
        }
        // A replay refusal is a copy of a step already carried out: its
        // own outcome settles the step.
        _ => {
            return Ok(Ownership {
                in_wave: true,
                succeeded: None,
            })
        }
    };
    let now = OffsetDateTime::now_utc();
    let after = transition(shared, env, service, |record| {
        record.on_outcome(id, event.host.as_ref(), succeeded, &detail, now)
    })
    .await?
    .unwrap_or(current);
    // A success of a step of a wave that has succeeded (just now, or before
    // a retry of this same event) moves the release on; that is idempotent.
    let done = succeeded
        && after.wave.state == WaveState::Succeeded
        && after.wave.steps.iter().any(|s| s.command_id == id);
    Ok(Ownership {
        in_wave: true,
        succeeded: done.then_some(after.wave.version),
    })
}

/// Applies `change` to the wave's record: the steps it puts out are
/// published first, then the record is written by compare-and-set (on a
/// concurrent write, read again and decide again), then the steps' history
/// and deployments records and, if the wave ended, its own. A controller
/// stopped between the publish and the write leaves the record behind the
/// stream; the same event (redelivered) or the sweep makes the same
/// transition again, and JetStream drops the copies of the steps.
async fn transition(
    shared: &Shared,
    env: &EnvName,
    service: &ServiceName,
    mut change: impl FnMut(&mut WaveRecord) -> bool,
) -> Result<Option<WaveRecord>, Error> {
    for _ in 0..CAS_ATTEMPTS {
        let Some((before, revision)) = shared.store.wave_entry(env, service).await? else {
            return Ok(None);
        };
        let mut after = before.clone();
        if !change(&mut after) || after == before {
            return Ok(Some(before));
        }
        if !write_after_publishing(shared, Some(&before), &after, revision).await? {
            continue;
        }
        if before.wave.state != after.wave.state {
            finished(shared, &after).await?;
        }
        return Ok(Some(after));
    }
    Err(Error::Contended {
        bucket: ferry_protocol::streams::WAVES_BUCKET,
        key: format!("{env}.{service}"),
        attempts: CAS_ATTEMPTS,
    })
}

/// Publishes the steps `after` puts out that `before` had not, writes
/// `after` if the record is still at `revision`, and then records those
/// steps (history, deployments). `false` when another write came first.
async fn write_after_publishing(
    shared: &Shared,
    before: Option<&WaveRecord>,
    after: &WaveRecord,
    revision: u64,
) -> Result<bool, Error> {
    let already: Vec<Uuid> = before
        .map(|b| {
            b.outstanding()
                .filter_map(|s| outstanding_id(s.state, s.command_id, s.revert_id))
                .collect()
        })
        .unwrap_or_default();
    let new: Vec<(Uuid, Command)> = after
        .outstanding()
        .filter_map(|step| after.step_command(step))
        .filter(|(id, _)| !already.contains(id))
        .collect();
    for (id, command) in &new {
        issue::publish(shared, *id, command).await?;
    }
    if !shared.store.replace_wave(after, revision).await? {
        return Ok(false);
    }
    for (id, command) in new {
        // Published above: this stores nothing new in the stream, and adds
        // the history and deployments records.
        issue::issue(shared, id, command).await?;
    }
    Ok(true)
}

fn outstanding_id(state: StepState, deploy: Uuid, revert: Option<Uuid>) -> Option<Uuid> {
    match state {
        StepState::Issued => Some(deploy),
        StepState::Reverting => revert,
        _ => None,
    }
}

/// Records a wave that just ended (its caller moves a successful one's
/// release on).
async fn finished(shared: &Shared, after: &WaveRecord) -> Result<(), Error> {
    let now = OffsetDateTime::now_utc();
    let outcome = after.wave.state.as_str();
    wave_history(shared, after, outcome, &after.wave.detail, now).await?;
    if after.wave.state == WaveState::Failed {
        warn!(environment = %after.environment, service = %after.service, wave = %after.wave.id, "{}", after.wave.detail);
    } else {
        info!(environment = %after.environment, service = %after.service, wave = %after.wave.id, "{}", after.wave.detail);
    }
    Ok(())
}

/// Appends the wave's own history record (`issued`, `succeeded`, `failed`)
/// under the wave's id, once.
async fn wave_history(
    shared: &Shared,
    record: &WaveRecord,
    outcome: &str,
    detail: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let history = HistoryRecord {
        time: now,
        environment: Some(record.environment.clone()),
        service: record.service.clone(),
        version: Some(record.wave.version.clone()),
        action: "deploy".to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_owned(),
        command_id: Some(record.wave.id),
        actor: record.command.actor.clone(),
    };
    shared
        .store
        .append_history(
            &record.environment,
            history,
            ids::history(record.wave.id, outcome),
        )
        .await
}

/// The environment's hosts whose agents are heard from, by name (agents
/// from before hosts, which name none, are left out: they cannot be
/// addressed).
pub(crate) async fn live_hosts(
    shared: &Shared,
    env: &EnvName,
    now: OffsetDateTime,
) -> Result<Vec<(HostName, AgentRecord)>, Error> {
    let timeout = shared.config.agent_timeout();
    let mut hosts = shared.store.hosts(std::slice::from_ref(env)).await?;
    Ok(hosts
        .remove(env)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| now - r.received_at <= timeout)
        .filter_map(|r| Some((r.heartbeat.host_name.clone()?, r)))
        .collect())
}

/// The sweep's part: fails the step of a host that stopped answering
/// (judged against how far `events_consumer` has folded the events in, not
/// the clock: a controller catching up on a backlog, or waiting out the ack
/// wait of an event its stopped predecessor held, finds no live host lost),
/// and publishes outstanding steps again (a controller that stopped between
/// its publish and its write). Returns every wave, as it stands after.
pub(crate) async fn sweep(
    shared: &Shared,
    events_consumer: &str,
) -> Result<Vec<WaveRecord>, Error> {
    let now = OffsetDateTime::now_utc();
    let timeout = shared.config.agent_timeout();
    let records = shared.store.waves().await?;
    // Read only while some wave runs: it costs two requests.
    let read_up_to = if records.iter().any(|r| r.wave.state == WaveState::Running) {
        shared.store.events_read_up_to(events_consumer).await?
    } else {
        now
    };
    let mut live: HashMap<EnvName, Vec<HostName>> = HashMap::new();
    let mut out = Vec::new();
    for record in records {
        let env = record.environment.clone();
        if record.wave.state == WaveState::Running {
            if !live.contains_key(&env) {
                let hosts = live_hosts(shared, &env, read_up_to).await?;
                live.insert(env.clone(), hosts.into_iter().map(|(h, _)| h).collect());
            }
            let hosts = live.get(&env).map(Vec::as_slice).unwrap_or_default();
            let lost: Vec<HostName> = record
                .wave
                .steps
                .iter()
                .filter(|s| s.state == StepState::Issued)
                .filter(|s| s.issued_at.is_none_or(|at| read_up_to - at > timeout))
                .filter(|s| !hosts.contains(&s.host))
                .map(|s| s.host.clone())
                .collect();
            for host in lost {
                transition(shared, &env, &record.service, |r| r.host_lost(&host, now)).await?;
            }
        }
        let Some(record) = shared.store.wave(&env, &record.service).await? else {
            continue;
        };
        republish(shared, &record, now).await;
        out.push(record);
    }
    Ok(out)
}

/// Publishes the outstanding steps again while JetStream still drops a copy.
async fn republish(shared: &Shared, record: &WaveRecord, now: OffsetDateTime) {
    for step in record.outstanding() {
        let recent = step.issued_at.is_some_and(|at| now - at < REISSUE_WITHIN);
        if !recent {
            continue;
        }
        if let Some((id, command)) = record.step_command(step) {
            if let Err(e) = issue::publish(shared, id, &command).await {
                warn!(%id, host = %step.host, "could not publish the wave's step again: {e}");
            }
        }
    }
}
