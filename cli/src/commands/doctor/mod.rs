//! `ferry doctor`: checks an installation from where it runs. One module
//! per group of checks; each adds [`DoctorCheck`]s to a [`Checks`] list.

mod agents;
mod checks;
mod controller;
mod jetstream;
mod report;

use checks::Checks;

use crate::args::{DoctorArgs, GlobalOpts};
use crate::client::Connection;
use crate::error::Result;

/// `ferry doctor`
pub async fn run(global: &GlobalOpts, args: &DoctorArgs) -> Result<()> {
    let mut checks = Checks::default();
    match Connection::open_recording_errors(global).await {
        Ok((connection, server_errors)) => {
            jetstream::check(&mut checks, connection.client()).await;
            let installation = controller::check(&mut checks, &connection, &server_errors).await;
            if let Some(installation) = installation {
                agents::check(&mut checks, &installation, args.max_clock_skew);
            }
        }
        Err(e) => checks.problem(
            "nats",
            "connection",
            e.to_string(),
            "start nats-server, or point --nats-url (FERRY_NATS_URL) and --creds or \
             --nats-user/--nats-password-file at it",
        ),
    }
    report::finish(global.output, checks.0)
}
