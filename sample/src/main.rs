//! ferry-sample: a tiny HTTP service for demos and tests of ferry.
//!
//! Everything it does is set through environment variables (see [`config`]),
//! so one binary can play a good release, a slow one, a failing one or one
//! that crashes. It depends on hyper and tokio only, so it builds as a static
//! binary for a `FROM scratch` image.

/// Writes one line to stderr in a single `write`: stderr is unbuffered, so
/// `eprintln!` writes each piece of its format separately, and the replicas of
/// one service share an append-only log file, where the pieces of two
/// replicas' lines interleaved (a test read `127.0.0.1127:.318900`).
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

mod config;
mod metrics;
mod server;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use config::Config;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Exit code for a bad configuration.
const EXIT_CONFIG: u8 = 2;
/// Exit code after `SAMPLE_EXIT_AFTER_SECS`.
const EXIT_CRASH: u8 = 3;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = match Config::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                log_line!("ferry-sample: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.fail_start {
        log_line!(
            "ferry-sample {}: failing at start because SAMPLE_FAIL_START=true",
            config.version
        );
        return ExitCode::FAILURE;
    }

    // Registered before listening, so a SIGTERM right after start is not lost.
    let signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            log_line!("ferry-sample: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            log_line!("ferry-sample: cannot listen on {}: {e}", config.addr);
            return ExitCode::FAILURE;
        }
    };
    log_line!(
        "ferry-sample {} listening on http://{}",
        config.version,
        config.addr
    );

    let exit_after = config.exit_after;
    let state = Arc::new(server::State::new(config));
    tokio::select! {
        () = server::serve(listener, state) => ExitCode::FAILURE,
        name = signals.recv() => {
            log_line!("ferry-sample: {name} received, exiting");
            ExitCode::SUCCESS
        }
        () = crash_timer(exit_after) => {
            log_line!("ferry-sample: exiting with code {EXIT_CRASH} as SAMPLE_EXIT_AFTER_SECS asks");
            ExitCode::from(EXIT_CRASH)
        }
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves with the name of the first signal received.
    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Resolves after `after`, or never.
async fn crash_timer(after: Option<Duration>) {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}
