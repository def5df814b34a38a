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
    /// The scan's worst findings, worst first, at most
    /// [`MAX_SCAN_FINDINGS`]: what the security gate names when it holds
    /// the release. Empty when CI gave counts only (`--scan`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scan_findings: Vec<ScanFinding>,
}

/// What a secret variable's value is shown as.
pub const REDACTED: &str = "<secret>";

/// Most findings a release carries.
pub const MAX_SCAN_FINDINGS: usize = 20;
/// Longest text of a finding's field, in bytes.
pub const MAX_FINDING_FIELD_LEN: usize = 256;

/// How bad a finding is, worst first in [`Ord`] (`Critical < High`), so
/// sorting by severity puts the worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Blocks the release at the security gate.
    Critical,
    /// High.
    High,
    /// Medium.
    Medium,
    /// Low.
    Low,
    /// The scanner gave no severity (Trivy's `UNKNOWN`, a CVSS score of 0).
    Unknown,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Unknown => "unknown",
        })
    }
}

/// One vulnerability a scanner found in the artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanFinding {
    /// The vulnerability, e.g. `CVE-2023-0286` or `GHSA-…`.
    pub id: String,
    /// Its severity.
    pub severity: Severity,
    /// The affected package (for a SARIF result without one, its location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// The package's installed version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_version: Option<String>,
    /// The version(s) that fix it, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_version: Option<String>,
}

impl ScanFinding {
    /// `CVE-2023-0286 (openssl 3.0.7-r0, fixed in 3.0.8-r0)`: for sentences.
    pub fn describe(&self) -> String {
        let package = match (&self.package, &self.installed_version) {
            (Some(p), Some(v)) => Some(format!("{p} {v}")),
            (Some(p), None) => Some(p.clone()),
            (None, Some(v)) => Some(v.clone()),
            (None, None) => None,
        };
        let fixed = self.fixed_version.as_ref().map(|f| format!("fixed in {f}"));
        let details: Vec<String> = package.into_iter().chain(fixed).collect();
        if details.is_empty() {
            self.id.clone()
        } else {
            format!("{} ({})", self.id, details.join(", "))
        }
    }

    fn validate(&self, index: usize) -> Result<(), Error> {
        let fields = [
            ("id", Some(&self.id)),
            ("package", self.package.as_ref()),
            ("installed_version", self.installed_version.as_ref()),
            ("fixed_version", self.fixed_version.as_ref()),
        ];
        for (name, value) in fields {
            let Some(value) = value else { continue };
            let problem = if value.is_empty() {
                Some("is empty".to_owned())
            } else if value.len() > MAX_FINDING_FIELD_LEN {
                Some(format!("is over {MAX_FINDING_FIELD_LEN} bytes"))
            } else if value.chars().any(char::is_control) {
                Some("has control characters".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Error::InvalidField {
                    field: "scan_findings",
                    reason: format!("finding {index}'s {name} {problem}"),
                });
            }
        }
        Ok(())
    }
}

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
    /// Of no known severity (not part of the gate's decision).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ScanSummary {
    /// Counts one finding of `severity`.
    pub fn count(&mut self, severity: Severity) {
        let slot = match severity {
            Severity::Critical => &mut self.critical,
            Severity::High => &mut self.high,
            Severity::Medium => &mut self.medium,
            Severity::Low => &mut self.low,
            Severity::Unknown => &mut self.unknown,
        };
        *slot = slot.saturating_add(1);
    }

    /// Parses `critical=1,high=2,medium=0,low=5` (any subset, any order).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut scan = ScanSummary::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                Error::InvalidField {
                field: "scan",
                reason: format!(
                    "{part:?} is not <severity>=<count> with severity critical, high, medium, low or unknown"
                ),
            }
            };
            let (name, count) = part.split_once('=').ok_or_else(bad)?;
            let count: u32 = count.trim().parse().map_err(|_| bad())?;
            match name.trim() {
                "critical" => scan.critical = count,
                "high" => scan.high = count,
                "medium" => scan.medium = count,
                "low" => scan.low = count,
                "unknown" => scan.unknown = count,
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
        )?;
        if self.unknown > 0 {
            write!(f, ",unknown={}", self.unknown)?;
        }
        Ok(())
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
        if self.scan_findings.len() > MAX_SCAN_FINDINGS {
            return Err(Error::InvalidField {
                field: "scan_findings",
                reason: format!(
                    "{} findings, at most {MAX_SCAN_FINDINGS}",
                    self.scan_findings.len()
                ),
            });
        }
        for (index, finding) in self.scan_findings.iter().enumerate() {
            finding.validate(index)?;
        }
        Ok(())
    }

    /// The critical findings CI listed, worst first.
    pub fn critical_findings(&self) -> impl Iterator<Item = &ScanFinding> {
        self.scan_findings
            .iter()
            .filter(|f| f.severity == Severity::Critical)
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
            scan_findings: Vec::new(),
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
                low: 7,
                unknown: 0,
            }
        );
        assert_eq!(ScanSummary::parse(&scan.to_string()).unwrap(), scan);
        for bad in ["critical", "critical=x", "severe=1", "critical=-1"] {
            assert!(ScanSummary::parse(bad).is_err(), "{bad}");
        }
    }

    fn finding(id: &str, severity: Severity) -> ScanFinding {
        ScanFinding {
            id: id.into(),
            severity,
            package: Some("openssl".into()),
            installed_version: Some("3.0.7-r0".into()),
            fixed_version: Some("3.0.8-r0".into()),
        }
    }

    fn release_with_findings(findings: Vec<ScanFinding>) -> Release {
        Release {
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            artifact: "/bin/web".into(),
            digest: None,
            env: Default::default(),
            secret_env: Default::default(),
            author: None,
            commit: None,
            hotfix: false,
            scan: Some(ScanSummary::parse("critical=1,high=1,unknown=2").unwrap()),
            scan_findings: findings,
        }
    }

    #[test]
    fn a_release_with_findings_round_trips_and_an_old_one_still_decodes() {
        let release = release_with_findings(vec![
            finding("CVE-2023-0286", Severity::Critical),
            ScanFinding {
                package: None,
                installed_version: None,
                fixed_version: None,
                ..finding("CVE-2022-4450", Severity::High)
            },
        ]);
        release.validate().unwrap();
        let json = serde_json::to_value(&release).unwrap();
        assert_eq!(json["scan_findings"][0]["severity"], "critical");
        assert_eq!(json["scan"]["unknown"], 2);
        assert!(json["scan_findings"][1].get("package").is_none(), "{json}");
        let back: Release = serde_json::from_value(json).unwrap();
        assert_eq!(back, release);

        // A release published before findings existed.
        let old: Release = serde_json::from_str(
            r#"{"service":"web","version":"1.0.0","artifact":"/bin/web","scan":{"critical":1,"high":0,"medium":0,"low":0}}"#,
        )
        .unwrap();
        assert!(old.scan_findings.is_empty());
        assert_eq!(old.scan.unwrap().unknown, 0);
        assert!(!serde_json::to_string(&old)
            .unwrap()
            .contains("scan_findings"));
    }

    #[test]
    fn findings_are_bounded_in_number_and_size() {
        let many = (0..=MAX_SCAN_FINDINGS)
            .map(|i| finding(&format!("CVE-2024-{i}"), Severity::Low))
            .collect();
        let err = release_with_findings(many).validate().unwrap_err();
        assert!(err.to_string().contains("at most 20"), "{err}");
        for bad in [
            ScanFinding {
                id: String::new(),
                ..finding("x", Severity::Low)
            },
            ScanFinding {
                package: Some("p".repeat(MAX_FINDING_FIELD_LEN + 1)),
                ..finding("CVE-1", Severity::Low)
            },
            ScanFinding {
                fixed_version: Some("1.0\n\u{1b}[31m".into()),
                ..finding("CVE-1", Severity::Low)
            },
        ] {
            assert!(
                release_with_findings(vec![bad.clone()]).validate().is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn findings_describe_themselves_and_critical_ones_are_found() {
        let release = release_with_findings(vec![
            finding("CVE-2023-0286", Severity::Critical),
            finding("CVE-2023-0001", Severity::High),
        ]);
        let critical: Vec<String> = release
            .critical_findings()
            .map(ScanFinding::describe)
            .collect();
        assert_eq!(
            critical,
            ["CVE-2023-0286 (openssl 3.0.7-r0, fixed in 3.0.8-r0)"]
        );
        let bare = ScanFinding {
            package: None,
            installed_version: None,
            fixed_version: None,
            ..finding("CVE-1", Severity::Low)
        };
        assert_eq!(bare.describe(), "CVE-1");
        assert!(Severity::Critical < Severity::High && Severity::Low < Severity::Unknown);
        let mut summary = ScanSummary::default();
        summary.count(Severity::Critical);
        summary.count(Severity::Unknown);
        assert_eq!(
            summary.to_string(),
            "critical=1,high=0,medium=0,low=0,unknown=1"
        );
        assert_eq!(ScanSummary::parse(&summary.to_string()).unwrap(), summary);
    }
}
