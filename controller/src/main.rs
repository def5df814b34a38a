//! `ferry-controller`: loads the configuration, runs the controller, and
//! turns SIGINT/SIGTERM into a graceful shutdown (a second signal forces it).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use ferry_controller::config::{
    ENV_AGENT_TIMEOUT, ENV_COMMAND_TTL, ENV_ENVIRONMENTS, ENV_NATS_CREDS, ENV_NATS_URL,
    ENV_SIGNING_KEY_FILE,
};
use ferry_controller::{ControllerConfig, Error};
use ferry_logging::ENV_LOG_FORMAT;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration (EX_USAGE), so a supervisor can tell
/// "fix the config" from "crashed, restart me".
const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code when a second signal cuts the drain short.
const EXIT_FORCED: i32 = 130;

/// The ferry controller: deploys new releases, issues signed commands to
/// agents, keeps status and history in JetStream and answers the CLI.
#[derive(Parser, Debug)]
#[command(version, after_help = env_help())]
struct Args {
    /// TOML configuration file; every setting can also come from a FERRY_* variable.
    #[arg(long, value_name = "PATH", env = "FERRY_CONFIG")]
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
    /// Prints the SHA-256 of a dashboard operator token read from standard
    /// input (its first line), for `token_sha256` in `[[dashboard.operators]]`.
    /// Read from stdin, not an argument, so the token never shows in a
    /// process list or shell history.
    HashToken,
    /// Checks a configuration file (with the FERRY_* variables set now)
    /// without connecting anywhere, and prints it resolved, secrets left
    /// out (the signing key by its public half, files by path). Exit 0 when
    /// valid, 64 listing every problem otherwise.
    CheckConfig {
        /// The TOML configuration file to check.
        file: PathBuf,
    },
}

/// `check-config`: see [`Tool::CheckConfig`].
fn check_config(file: &std::path::Path) -> ExitCode {
    let problems = match ControllerConfig::load(Some(file), None) {
        Ok(config) => match config.validate() {
            Ok(resolved) => {
                println!("{}: valid\n{resolved:#?}", file.display());
                return ExitCode::SUCCESS;
            }
            Err(problems) => Error::InvalidConfig(problems).to_string(),
        },
        Err(e) => e.to_string(),
    };
    eprintln!("ferry-controller: {}: {problems}", file.display());
    ExitCode::from(EXIT_BAD_CONFIG)
}

fn hash_token() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("ferry-controller hash-token: could not read the token: {e}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let token = line.trim_end_matches(['\r', '\n']);
    if token.trim().is_empty() {
        eprintln!("ferry-controller hash-token: give the token on standard input, e.g. `printf %s \"$TOKEN\" | ferry-controller hash-token`");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    println!("{}", ferry_controller::dashboard::hash_token(token));
    ExitCode::SUCCESS
}

fn env_help() -> String {
    format!(
        "Environment overrides: {ENV_NATS_URL}, {ENV_NATS_CREDS}, {ENV_SIGNING_KEY_FILE}, \
         {ENV_ENVIRONMENTS} (comma-separated), {ENV_COMMAND_TTL}, {ENV_AGENT_TIMEOUT}, \
         {ENV_LOG_FORMAT} (text or json)."
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.tool {
        Some(Tool::HashToken) => return hash_token(),
        Some(Tool::CheckConfig { file }) => return check_config(file),
        None => {}
    }
    args.log.init();

    let config = match ControllerConfig::load(args.config.as_deref(), None) {
        Ok(config) => config,
        Err(e) => {
            args.log.fatal(&format!("ferry-controller: {e}"));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let config = match config.validate() {
        Ok(config) => config,
        Err(problems) => {
            args.log.fatal(&format!(
                "ferry-controller: invalid configuration:\n  - {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  - ")
            ));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            args.log.fatal(&format!(
                "ferry-controller: could not start the async runtime: {e}"
            ));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        // Found at start against the server: streams with another replica count.
        Err(e) => match e.downcast_ref() {
            Some(problems @ Error::InvalidConfig(_)) => {
                args.log.fatal(&format!("ferry-controller: {problems}"));
                ExitCode::from(EXIT_BAD_CONFIG)
            }
            _ => {
                args.log.fatal(&format!("ferry-controller: {e:#}"));
                ExitCode::FAILURE
            }
        },
    }
}

async fn serve(config: ferry_controller::ResolvedConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down: finishing work in hand (signal again to stop at once)");
        token.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!("second signal: stopping now");
        std::process::exit(EXIT_FORCED);
    });
    ferry_controller::run(config, shutdown)
        .await
        .map_err(|e: Error| anyhow::Error::new(e))
        .context("the controller stopped")
}
