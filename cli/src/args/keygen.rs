//! `ferry keygen`.

use std::path::PathBuf;

use clap::Args as ClapArgs;

/// `ferry keygen`
#[derive(Debug, ClapArgs)]
pub struct KeygenArgs {
    /// Write the seed to FILE (mode 0600) and print only the public key.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}
