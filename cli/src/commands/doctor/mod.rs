//! `ferry doctor`: checks an installation from where it runs. One module
//! per group of checks; each adds [`DoctorCheck`]s to a [`Checks`] list.

mod agents;
mod controller;
mod jetstream;
mod report;

use ferry_protocol::doctor::DoctorCheck;

use crate::args::{DoctorArgs, GlobalOpts};
use crate::client::Connection;
use crate::error::Result;

/// The checks so far, in the order they ran.
#[derive(Default)]
pub(super) struct Checks(Vec<DoctorCheck>);

impl Checks {
    fn ok(&mut self, group: &str, name: impl Into<String>, detail: impl Into<String>) {
        self.0.push(DoctorCheck {
            group: group.to_owned(),
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        });
    }

    fn problem(
        &mut self,
        group: &str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(DoctorCheck {
            group: group.to_owned(),
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
}

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
