//! `ferry-agent`: the agent daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration (EX_CONFIG would be 78; ferry uses EX_USAGE, 64, as documented).
const EXIT_BAD_CONFIG: u8 = 64;

/// The ferry agent: carries out deploy, rollback, scale and maintenance
/// commands for one environment.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, after_help = "Every setting can be overridden with FERRY_* variables, e.g. FERRY_ENVIRONMENT=dev, FERRY_NATS_URL=nats://host:4222, FERRY_TRUSTED_KEYS=UABC...,UDEF..., FERRY_SERVICES__WEB__PORT=8080, FERRY_LOG_FORMAT=json.\nExit codes: 0 clean shutdown, 1 runtime failure, 64 bad configuration.")]
struct Args {
    /// TOML configuration file.
    #[arg(short, long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Logging flags.
    #[command(flatten)]
    log: ferry_logging::LogArgs,
    /// A tool instead of the daemon.
    #[command(subcommand)]
    tool: Option<Tool>,
}

#[derive(clap::Subcommand, Debug)]
enum Tool {
    /// Checks a configuration file (with the FERRY_* variables set now)
    /// without connecting anywhere, and prints it resolved, secrets left
    /// out (files are shown by path, never read out). Exit 0 when valid,
    /// 64 listing every problem otherwise.
    CheckConfig {
        /// The TOML configuration file to check.
        file: PathBuf,
    },
}

/// `check-config`: see [`Tool::CheckConfig`].
fn check_config(file: &std::path::Path) -> ExitCode {
    match ferry_agent::config::load(Some(file)) {
        Ok(config) => {
            println!("{}: valid\n{config:#?}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-agent: {}: {e}", file.display());
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Tool::CheckConfig { file }) = &args.tool {
        return check_config(file);
    }
    args.log.init();

    let config = match ferry_agent::config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            args.log.fatal(&format!("ferry-agent: {e}"));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            args.log
                .fatal(&format!("ferry-agent: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match ferry_agent::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(ferry_agent::Error::Config(problems)) => {
                args.log.fatal(&format!(
                    "ferry-agent: invalid configuration:\n  - {}",
                    problems.join("\n  - ")
                ));
                ExitCode::from(EXIT_BAD_CONFIG)
            }
            Err(e) => {
                tracing::error!(error = %e, "agent failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// First SIGINT/SIGTERM drains; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutting down: finishing the step in progress (signal again to force)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("forced exit");
    std::process::exit(130);
}
