//! Issuing a command: sign it, store it in JetStream for the agent, record it
//! in history and in the deployments bucket. Shared by the release flow and
//! the API.

use ferry_protocol::api::{CommandIssued, HistoryRecord};
use ferry_protocol::command::{Action, Command, MaintenanceMode};
use ferry_protocol::{subject, Envelope};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::records::{target_version, CommandState, DeploymentRecord};
use crate::store::publish_deduplicated;
use crate::{ids, Error, Shared, SOURCE};

/// Issues `command` under `id`.
///
/// Every step is idempotent for the same `id`: JetStream drops a repeated
/// command and history record by `Nats-Msg-Id`, and the deployments record is
/// left alone when it already names `id`. So a caller that fails half-way can
/// simply retry the whole thing.
pub(crate) async fn issue(
    shared: &Shared,
    id: Uuid,
    command: Command,
) -> Result<CommandIssued, Error> {
    let env = command.environment.clone();
    let service = command.service.clone();
    let action = command.action.kind();
    let detail = describe(&command);
    let subject = publish(shared, id, &command).await?;

    let now = OffsetDateTime::now_utc();
    let outcome = CommandState::Issued.as_str();
    let record = HistoryRecord {
        time: now,
        environment: Some(env.clone()),
        service: service.clone(),
        version: target_version(&command.action),
        action: action.to_string(),
        outcome: outcome.to_owned(),
        detail: detail.clone(),
        command_id: Some(id),
        actor: command.actor.clone(),
    };
    shared
        .store
        .append_history(&env, record, ids::history(id, outcome))
        .await?;
    shared
        .store
        .update_deployment(&env, &service, |previous| {
            DeploymentRecord::issued(previous, id, &command, detail.clone(), now)
        })
        .await?;

    tracing::info!(%id, %subject, actor = command.actor.as_deref().unwrap_or("-"), "issued: {detail}");
    Ok(CommandIssued {
        command_id: id,
        subject,
        environment: env,
        service,
        action,
        wave: false,
    })
}

/// Signs `command` under `id` and stores it in JetStream for the agents,
/// nothing else (no history, no deployments record): what re-issuing a
/// wave's step needs, where JetStream drops the copy within its duplicate
/// window. Returns the subject.
pub(crate) async fn publish(shared: &Shared, id: Uuid, command: &Command) -> Result<String, Error> {
    command.validate().map_err(Error::InvalidCommand)?;
    let subject = subject::command(&command.environment, &command.service);
    let bytes = Envelope::with_id(id, SOURCE, command.clone())
        .expiring_in(shared.config.command_ttl())
        .sign(shared.config.signing_key())?
        .to_bytes()?;
    publish_deduplicated(shared.store.js(), subject.clone(), id, bytes).await?;
    Ok(subject)
}

/// A sentence for history and logs.
pub(crate) fn describe(command: &Command) -> String {
    let mut text = describe_action(command);
    if !command.hosts.is_empty() {
        let hosts: Vec<&str> = command.hosts.iter().map(|h| h.as_str()).collect();
        text.push_str(&format!(" on {}", hosts.join(", ")));
    }
    text
}

fn describe_action(command: &Command) -> String {
    let env = &command.environment;
    let svc = &command.service;
    match &command.action {
        Action::Deploy {
            release, replicas, ..
        } => match replicas {
            Some(n) => format!(
                "deploy {svc} {} to {env} with {n} replicas",
                release.version
            ),
            None => format!("deploy {svc} {} to {env}", release.version),
        },
        Action::Rollback { to, force, dry_run } => {
            let mut text = format!("roll back {svc} in {env} to {to}");
            if *force {
                text.push_str(", forced");
            }
            if *dry_run {
                text.push_str(" (dry run)");
            }
            text
        }
        Action::Scale { replicas } => format!("scale {svc} in {env} to {replicas} replicas"),
        Action::Maintenance(MaintenanceMode::Enable {
            message,
            duration_secs,
        }) => match duration_secs {
            Some(secs) => format!(
                "turn maintenance on for {svc} in {env} for {}: {message}",
                humantime::format_duration(std::time::Duration::from_secs(*secs))
            ),
            None => format!("turn maintenance on for {svc} in {env}: {message}"),
        },
        Action::Maintenance(MaintenanceMode::Disable) => {
            format!("turn maintenance off for {svc} in {env}")
        }
        Action::Rollout { control } => format!("{control} the rollout of {svc} in {env}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::command::RollbackTarget;
    use ferry_protocol::{EnvName, ServiceName};

    fn command(action: Action) -> Command {
        Command {
            environment: EnvName::new("production").unwrap(),
            service: ServiceName::new("web").unwrap(),
            actor: None,
            hosts: Vec::new(),
            action,
        }
    }

    #[test]
    fn descriptions_read_as_sentences() {
        assert_eq!(
            describe(&command(Action::Scale { replicas: 3 })),
            "scale web in production to 3 replicas"
        );
        assert_eq!(
            describe(&command(Action::Rollback {
                to: RollbackTarget::Previous,
                force: true,
                dry_run: true
            })),
            "roll back web in production to previous, forced (dry run)"
        );
        assert_eq!(
            describe(&command(Action::Maintenance(MaintenanceMode::Enable {
                message: "upgrading".into(),
                duration_secs: Some(600)
            }))),
            "turn maintenance on for web in production for 10m: upgrading"
        );
    }
}
