//! How ferry's daemons log: text for people, or one JSON object a line for
//! log pipelines (Loki, Elastic, journald). The agent and the controller
//! flatten [`LogArgs`] into their flags, so both take `--log-format` and
//! `FERRY_LOG_FORMAT` alike.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// The environment variable that sets `--log-format`.
pub const ENV_LOG_FORMAT: &str = "FERRY_LOG_FORMAT";

/// What a log line on stderr looks like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, `target`
    /// and the event's fields beside them.
    Json,
}

/// The logging flags of a daemon.
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log format on stderr: text, or json (one object a line with
    /// timestamp, level, message, target and fields) for Loki, Elastic or
    /// journald. RUST_LOG filters (default info).
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the process's subscriber: `RUST_LOG` filters (default
    /// `info`), lines go to stderr in the chosen format.
    pub fn init(&self) {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        // Only fails when a subscriber is already installed, which then stays.
        let _ = match self.log_format {
            LogFormat::Text => builder.try_init(),
            // Flattened: `message` sits beside `level`, where log pipelines look.
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_span_list(false)
                .try_init(),
        };
    }

    /// Says why the daemon stops without running (bad configuration, no
    /// runtime): the sentence as it is in text, an `error` event in JSON,
    /// so that every line on stderr stays one JSON object.
    pub fn fatal(&self, message: &str) {
        match self.log_format {
            LogFormat::Text => eprintln!("{message}"),
            LogFormat::Json => tracing::error!("{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Daemon {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_for() {
        let parse = |args: &[&str]| {
            Daemon::try_parse_from(std::iter::once("d").chain(args.iter().copied()))
        };
        assert_eq!(
            parse(&["--log-format", "json"]).unwrap().log.log_format,
            LogFormat::Json
        );
        assert_eq!(
            parse(&["--log-format", "text"]).unwrap().log.log_format,
            LogFormat::Text
        );
        let err = parse(&["--log-format", "xml"]).unwrap_err();
        assert!(err.to_string().contains("json"), "{err}");
        if std::env::var_os(ENV_LOG_FORMAT).is_none() {
            assert_eq!(parse(&[]).unwrap().log.log_format, LogFormat::Text);
        }
    }
}
