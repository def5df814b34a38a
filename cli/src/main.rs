//! ferry: the operator's command line. It talks to ferry-controller over NATS
//! request-reply, publishes releases to JetStream for CI, and follows agents'
//! events with `--wait`.

mod args;
mod client;
mod commands;
mod error;
mod output;
mod scan_report;
mod wait;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Usage errors exit 2 and --help/--version exit 0, inside clap.
    let args = args::Args::parse();
    match commands::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}
