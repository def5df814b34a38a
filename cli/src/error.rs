//! The CLI's error: a message and the exit code it ends the process with.

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

/// Why ferry stops, and so its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 1: the operation failed (agent failure or refusal, controller rejection).
    Failed,
    /// 2: bad input found after argument parsing.
    Usage,
    /// 3: NATS or the controller could not be reached.
    Unreachable,
    /// 4: `--wait` ran out of time.
    WaitTimedOut,
    /// 5: `ferry monitor` saw a threshold breached.
    ThresholdBreached,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::WaitTimedOut => 4,
            Exit::ThresholdBreached => 5,
        }
    }
}

/// An error with its exit code.
#[derive(Debug)]
pub struct CliError {
    /// Which exit code.
    pub exit: Exit,
    /// What to tell the user.
    pub error: anyhow::Error,
}

/// The CLI's result.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    /// An error ending with `exit`.
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        CliError {
            exit,
            error: error.into(),
        }
    }

    /// Exit 1 with `message`.
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::new(Exit::Failed, anyhow::anyhow!("{message}"))
    }

    /// Exit 2 with `message`.
    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(Exit::Usage, anyhow::anyhow!("{message}"))
    }

    /// Exit 3 with `message`.
    pub fn unreachable(message: impl fmt::Display) -> Self {
        Self::new(Exit::Unreachable, anyhow::anyhow!("{message}"))
    }

    /// Exit 4 with `message`.
    pub fn wait_timed_out(message: impl fmt::Display) -> Self {
        Self::new(Exit::WaitTimedOut, anyhow::anyhow!("{message}"))
    }

    /// Prints the error on stderr and returns the exit code.
    pub fn report(&self) -> ExitCode {
        // Nothing is left to do if stderr is gone; never panic over it.
        let _ = writeln!(std::io::stderr(), "ferry: {:#}", self.error);
        ExitCode::from(self.exit.code())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Anything not classified is a failed operation.
impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        CliError::new(Exit::Failed, error)
    }
}
