//! TLS to nats-server, the same for the agent, the controller and the CLI:
//! the CA file that verifies the server's certificate, and the client
//! certificate and key presented to a server that verifies clients
//! (`tls { verify: true }`). No IO here: the caller says how a file is
//! checked when the configuration is; async-nats reads them at connect time.
//! Only their paths are ever shown.

use std::path::{Path, PathBuf};

/// Configuration key of the CA file (`nats_tls_ca_file`).
pub const CA_FILE_KEY: &str = "nats_tls_ca_file";
/// Configuration key of the client certificate (`nats_tls_cert_file`).
pub const CERT_FILE_KEY: &str = "nats_tls_cert_file";
/// Configuration key of the client certificate's key (`nats_tls_key_file`).
pub const KEY_FILE_KEY: &str = "nats_tls_key_file";

/// The TLS files of a NATS connection, as configured. All absent: the
/// connection uses TLS only if the server asks for it, verified against the
/// system's roots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA(s) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, presented when the server verifies clients.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any TLS file is set (then the connection requires TLS).
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Every problem, as (key, sentence): a file `unreadable` says cannot
    /// be read (its reason), a certificate without its key or the reverse.
    pub fn problems(
        &self,
        unreadable: impl Fn(&Path) -> Option<String>,
    ) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        for (key, file) in [
            (CA_FILE_KEY, &self.ca_file),
            (CERT_FILE_KEY, &self.cert_file),
            (KEY_FILE_KEY, &self.key_file),
        ] {
            if let Some(path) = file {
                if let Some(why) = unreadable(path) {
                    problems.push((key, format!("cannot read {}: {why}", path.display())));
                }
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => problems.push((
                KEY_FILE_KEY,
                format!("missing: {CERT_FILE_KEY} needs the file of its private key"),
            )),
            (None, Some(_)) => problems.push((
                CERT_FILE_KEY,
                format!("missing: {KEY_FILE_KEY} needs the certificate it belongs to"),
            )),
            _ => {}
        }
        problems
    }

    /// `options` with these files: the CA as the only root the server's
    /// certificate is verified against, the client certificate presented,
    /// and TLS required whenever any is set (a server that does not offer
    /// TLS is refused rather than spoken to in the clear).
    pub fn apply(&self, mut options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.is_set() {
            options = options.require_tls(true);
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_files_have_no_problems_and_do_not_require_tls() {
        let files = TlsFiles::default();
        assert!(!files.is_set());
        assert!(files.problems(|_| None).is_empty());
    }

    #[test]
    fn a_missing_file_and_a_certificate_without_key_are_named_by_key() {
        let files = TlsFiles {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            cert_file: Some(PathBuf::from("/nonexistent/client.pem")),
            key_file: None,
        };
        let problems = files.problems(|_| Some("No such file".to_owned()));
        let keys: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [CA_FILE_KEY, CERT_FILE_KEY, KEY_FILE_KEY]);
        assert!(
            problems[0].1.contains("/nonexistent/ca.pem"),
            "{problems:?}"
        );
        assert!(problems[0].1.contains("No such file"), "{problems:?}");
    }
}
