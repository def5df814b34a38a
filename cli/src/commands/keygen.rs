//! `ferry keygen`: a new signing key for ferry-controller.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use ferry_protocol::SigningKey;
use serde_json::json;

use crate::args::{GlobalOpts, KeygenArgs, OutputFormat};
use crate::error::{CliError, Result};
use crate::output;

/// `ferry keygen`
pub fn run(global: &GlobalOpts, args: &KeygenArgs) -> Result<()> {
    let key = SigningKey::generate();
    let seed = key
        .seed()
        .map_err(|e| CliError::failed(format!("cannot generate a key: {e}")))?;
    let public_key = key.public_key();
    match &args.out {
        Some(path) => {
            write_seed(path, &seed, args.force)?;
            output::emit(&match global.output {
                OutputFormat::Json => output::json(&json!({
                    "public_key": public_key,
                    "seed_file": path.display().to_string(),
                }))?,
                OutputFormat::Table => public_key,
            })
        }
        None => output::emit(&match global.output {
            OutputFormat::Json => output::json(&json!({
                "public_key": public_key,
                "seed": seed,
            }))?,
            OutputFormat::Table => format!(
                "public key: {public_key}\nseed:       {seed}\n\n\
                 Keep the seed secret (ferry-controller signs with it); \
                 list the public key in each agent's trusted_keys."
            ),
        }),
    }
}

/// Writes `seed` to a new file readable by its owner only.
fn write_seed(path: &Path, seed: &str, force: bool) -> Result<()> {
    if force && path.symlink_metadata().is_ok() {
        // Removed rather than truncated, so the new file gets mode 0600
        // whatever the old one had.
        std::fs::remove_file(path)
            .map_err(|e| CliError::failed(format!("cannot replace {}: {e}", path.display())))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CliError::failed(format!(
                "{} exists; pass --force to overwrite it",
                path.display()
            )),
            _ => CliError::failed(format!("cannot create {}: {e}", path.display())),
        })?;
    file.write_all(format!("{seed}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_seed_file_is_private_and_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.nk");
        let key = SigningKey::generate();
        let seed = key.seed().unwrap();
        write_seed(&path, &seed, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let read = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            SigningKey::from_seed(&read).unwrap().public_key(),
            key.public_key()
        );

        let err = write_seed(&path, "other", false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), read);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_seed(&path, "other", true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "other\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
