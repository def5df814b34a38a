//! `ferry completions` and `ferry manpages`: generated from the argument
//! tree itself, so they never disagree with `--help`.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

use crate::args::{Args, CompletionsArgs, ManpagesArgs};
use crate::error::{CliError, Result};
use crate::output;

/// The program name completions and man pages are written for.
const BIN_NAME: &str = "ferry";

/// `ferry completions SHELL`
pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Args::command(), BIN_NAME, &mut script);
    let script = String::from_utf8(script)
        .map_err(|e| CliError::failed(format!("the completion script is not UTF-8: {e}")))?;
    output::emit(&script)
}

/// `ferry manpages DIR`
pub fn manpages(args: &ManpagesArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| CliError::failed(format!("cannot create {}: {e}", args.dir.display())))?;
    let mut command = Args::command().disable_help_subcommand(true);
    command.build();
    let mut written = Vec::new();
    write_pages(&command, &args.dir, &mut written)?;
    let list: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    output::emit(&list.join("\n"))
}

/// Writes the page of `command` and of each of its subcommands, depth first.
fn write_pages(command: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    // Subcommands carry no version of their own; every page names ferry's.
    let page = clap_mangen::Man::new(command.clone())
        .source(concat!("ferry ", env!("CARGO_PKG_VERSION")))
        .manual("ferry manual");
    let path = page.generate_to(dir).map_err(|e| {
        CliError::failed(format!("cannot write a man page in {}: {e}", dir.display()))
    })?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
