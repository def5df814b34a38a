//! Release events CI publishes on `ferry.v1.release.<service>`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::ReleaseSpec;
use crate::names::{ServiceName, Version};
use crate::{Error, Payload};

/// A new release of a service, built and tested by CI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The service.
    pub service: ServiceName,
    /// Its version.
    pub version: Version,
    /// Executable path (process runtime) or image reference (Docker, Kubernetes).
    pub artifact: String,
    /// Content digest, e.g. `sha256:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Environment variables the release runs with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of `env` variables whose values are secret: the controller's API
    /// (and so the CLI) shows them as [`REDACTED`]. They still travel to the
    /// agent in signed commands and sit in the releases bucket: NATS
    /// permissions guard those (see deploy/nats).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub secret_env: BTreeSet<String>,
    /// Who made it (commit author or CI actor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Source commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// A hotfix takes the short canary path (see the progressive delivery docs).
    #[serde(default)]
    pub hotfix: bool,
    /// CI's vulnerability scan of the artifact, by severity. A release with
    /// critical findings is held by the controller's security gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanSummary>,
}

/// What a secret variable's value is shown as.
pub const REDACTED: &str = "<secret>";

/// Vulnerabilities found by CI's scanner, counted by severity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanSummary {
    /// Critical findings; any blocks the release.
    #[serde(default)]
    pub critical: u32,
    /// High.
    #[serde(default)]
    pub high: u32,
    /// Medium.
    #[serde(default)]
    pub medium: u32,
    /// Low.
    #[serde(default)]
    pub low: u32,
}

impl ScanSummary {
    /// Parses `critical=1,high=2,medium=0,low=5` (any subset, any order).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut scan = ScanSummary::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || Error::InvalidField {
                field: "scan",
                reason: format!(
                    "{part:?} is not <severity>=<count> with severity critical, high, medium or low"
                ),
            };
            let (name, count) = part.split_once('=').ok_or_else(bad)?;
            let count: u32 = count.trim().parse().map_err(|_| bad())?;
            match name.trim() {
                "critical" => scan.critical = count,
                "high" => scan.high = count,
                "medium" => scan.medium = count,
                "low" => scan.low = count,
                _ => return Err(bad()),
            }
        }
        Ok(scan)
    }
}

impl std::fmt::Display for ScanSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "critical={},high={},medium={},low={}",
            self.critical, self.high, self.medium, self.low
        )
    }
}

impl Release {
    /// What an agent runs for this release.
    pub fn spec(&self) -> ReleaseSpec {
        ReleaseSpec {
            version: self.version.clone(),
            artifact: self.artifact.clone(),
            digest: self.digest.clone(),
            env: self.env.clone(),
        }
    }

    /// What approvals of this release sign: the artifact digest, or the
    /// artifact reference when CI gave no digest.
    pub fn approval_digest(&self) -> String {
        self.spec().approval_digest()
    }

    /// Size and character checks; every secret names one of `env`.
    pub fn validate(&self) -> Result<(), Error> {
        self.spec().validate()?;
        if let Some(name) = self.secret_env.iter().find(|n| !self.env.contains_key(*n)) {
            return Err(Error::InvalidField {
                field: "secret_env",
                reason: format!(
                    "{:?} is not one of the release's variables",
                    name.chars().take(80).collect::<String>()
                ),
            });
        }
        Ok(())
    }

    /// The release as it may be shown: secret variables' values replaced
    /// by [`REDACTED`].
    pub fn redacted(&self) -> Release {
        let mut shown = self.clone();
        for (name, value) in shown.env.iter_mut() {
            if self.secret_env.contains(name) {
                *value = REDACTED.to_owned();
            }
        }
        shown
    }
}

impl Payload for Release {
    fn event_type(&self) -> &'static str {
        "ferry.v1.release.published"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_variables_are_redacted_and_must_exist() {
        let mut release = Release {
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            artifact: "/bin/web".into(),
            digest: None,
            env: [
                ("TOKEN".into(), "hunter2".into()),
                ("MODE".into(), "fast".into()),
            ]
            .into(),
            secret_env: ["TOKEN".to_owned()].into(),
            author: None,
            commit: None,
            hotfix: false,
            scan: None,
        };
        release.validate().unwrap();
        let shown = release.redacted();
        assert_eq!(shown.env["TOKEN"], REDACTED);
        assert_eq!(shown.env["MODE"], "fast");
        assert!(!serde_json::to_string(&shown).unwrap().contains("hunter2"));
        release.secret_env.insert("MISSING".into());
        assert!(release.validate().is_err());
    }

    #[test]
    fn scan_summaries_parse_and_print() {
        let scan = ScanSummary::parse("high=2, critical=1,low=7").unwrap();
        assert_eq!(
            scan,
            ScanSummary {
                critical: 1,
                high: 2,
                medium: 0,
                low: 7
            }
        );
        assert_eq!(ScanSummary::parse(&scan.to_string()).unwrap(), scan);
        for bad in ["critical", "critical=x", "severe=1", "critical=-1"] {
            assert!(ScanSummary::parse(bad).is_err(), "{bad}");
        }
    }
}
