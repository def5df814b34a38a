//! One module per command group; [`run`] dispatches.

mod action;
mod approval;
mod doctor;
mod drill;
mod dry_run;
mod keygen;
mod monitor;
mod query;
mod release;
mod shell;

use crate::args::{Args, Command, DrillCommand, ReleaseCommand};
use crate::error::Result;

/// Runs the command the arguments name.
pub async fn run(args: Args) -> Result<()> {
    let global = &args.global;
    match args.command {
        Command::Release(ReleaseCommand::Publish(publish)) => {
            release::publish(global, &publish).await
        }
        Command::Deploy(deploy) => action::deploy(global, deploy).await,
        Command::Rollback(rollback) => action::rollback(global, rollback).await,
        Command::Scale(scale) => action::scale(global, scale).await,
        Command::Maintenance(maintenance) => action::maintenance(global, maintenance).await,
        Command::Status(status) => query::status(global, status).await,
        Command::Doctor(args) => doctor::run(global, &args).await,
        Command::Drill(DrillCommand::Rollback(args)) => drill::rollback(global, &args).await,
        Command::History(history) => query::history(global, history).await,
        Command::Releases(releases) => query::releases(global, releases).await,
        Command::Keygen(keygen) => keygen::run(global, &keygen),
        Command::Audit(audit) => query::history(global, audit).await,
        Command::Promote(promote) => approval::promote(global, promote).await,
        Command::Approve(approve) => approval::approve(global, approve).await,
        Command::Reject(reject) => approval::reject(global, reject).await,
        Command::Approvals(list) => approval::list(global, list).await,
        Command::Rollout(rollout) => action::rollout(global, rollout).await,
        Command::Monitor(args) => monitor::run(global, args).await,
        Command::Completions(args) => shell::completions(&args),
        Command::Manpages(args) => shell::manpages(&args),
    }
}
