//! Convergence: once an environment's wave has settled (on its new version,
//! or on the old one after a failure), bring every live host whose
//! heartbeat shows the service on another version to the settled one, with
//! no operator command: a host that joins with an empty state, one
//! replaced, one back from a crash on an older (or half-deployed newer)
//! version. Run by the sweep.

use std::collections::{HashMap, HashSet};

use ferry_protocol::command::Command;
use ferry_protocol::wave::{StepState, WaveState};
use ferry_protocol::{EnvName, HostName, Version};
use ferry_waves::WaveRecord;
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

use crate::records::AgentRecord;
use crate::{ids, issue, plan, promotion, waves, Error, Shared};

/// Converges the hosts of every settled wave in `records`.
///
/// `converging` holds the convergence deploys this instance issued (a
/// cache: losing it costs one copy, which JetStream drops), so a host whose
/// deploy is under way or failed is not sent it again every sweep.
pub(crate) async fn run(
    shared: &Shared,
    records: &[WaveRecord],
    converging: &mut HashSet<Uuid>,
) -> Result<(), Error> {
    let now = OffsetDateTime::now_utc();
    let mut live: HashMap<EnvName, Vec<(HostName, AgentRecord)>> = HashMap::new();
    for record in records
        .iter()
        .filter(|r| r.wave.state != WaveState::Running)
    {
        let env = &record.environment;
        if !live.contains_key(env) {
            live.insert(env.clone(), waves::live_hosts(shared, env, now).await?);
        }
        let hosts = live.get(env).map(Vec::as_slice).unwrap_or_default();
        converge(shared, record, hosts, converging).await?;
    }
    Ok(())
}

/// Brings every live host whose heartbeat shows the service on another
/// version than the one its environment settled on (a new host with an
/// empty state, one that came back older) to that version, once per agent
/// start and version found, health-gated like any deploy.
async fn converge(
    shared: &Shared,
    record: &WaveRecord,
    hosts: &[(HostName, AgentRecord)],
    converging: &mut HashSet<Uuid>,
) -> Result<(), Error> {
    // Bounded: one entry per host start and version found.
    if converging.len() > 100_000 {
        converging.clear();
    }
    let Some(settled) = record.wave.settled.clone() else {
        return Ok(());
    };
    for (host, agent) in hosts {
        let Some(snapshot) = agent
            .heartbeat
            .services
            .iter()
            .find(|s| s.service == record.service)
        else {
            continue;
        };
        if snapshot.version.as_ref() == Some(&settled) {
            continue;
        }
        if record
            .wave
            .step(host)
            .is_some_and(|s| s.state == StepState::Reverting)
        {
            continue;
        }
        let found = snapshot
            .version
            .as_ref()
            .map_or_else(|| "none".to_owned(), Version::to_string);
        let attempt = format!("{}/{found}", agent.heartbeat.agent_id);
        let id = ids::convergence(
            &record.environment,
            &record.service,
            host,
            &settled,
            &attempt,
        );
        if converging.contains(&id) {
            continue;
        }
        let command = match convergence_command(shared, record, host, &settled).await {
            Ok(command) => command,
            Err(why) => {
                warn!(environment = %record.environment, service = %record.service, %host, "cannot bring the host to {settled}: {why}");
                continue;
            }
        };
        match issue::issue(shared, id, command).await {
            Ok(_) => {
                converging.insert(id);
                info!(environment = %record.environment, service = %record.service, %host, "host on {found}, bringing it to {settled}")
            }
            Err(Error::InvalidCommand(e)) => {
                converging.insert(id);
                warn!(%host, "cannot bring the host to {settled}: {e}")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The deploy of `settled` to `host`: the wave's own when it is the wave's
/// version, else the published release with the approvals recorded for it.
async fn convergence_command(
    shared: &Shared,
    record: &WaveRecord,
    host: &HostName,
    settled: &Version,
) -> Result<Command, String> {
    let action = if settled == &record.wave.version {
        record.command.action.clone()
    } else {
        let release = plan::published_release(shared, &record.service, settled).await?;
        let approvals =
            promotion::approvals_for_deploy(shared, &release, &record.environment).await?;
        plan::deploy_action(&release, None, approvals, None, false)
    };
    Ok(Command {
        environment: record.environment.clone(),
        service: record.service.clone(),
        actor: Some(format!("convergence (wave {})", record.wave.id)),
        hosts: vec![host.clone()],
        action,
    })
}
