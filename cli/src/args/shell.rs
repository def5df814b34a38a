//! `ferry completions` and `ferry manpages`: ferry in the shell and in `man`.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use clap_complete::Shell;

/// `ferry completions`
#[derive(Debug, ClapArgs)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `ferry manpages`
#[derive(Debug, ClapArgs)]
pub struct ManpagesArgs {
    /// Directory to write ferry.1 and a page per subcommand to (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}
