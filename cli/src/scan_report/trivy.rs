//! Trivy's JSON report (`trivy image --format json`, SchemaVersion 2):
//! `Results[].Vulnerabilities[]`, each with `VulnerabilityID`, `PkgName`,
//! `InstalledVersion`, `FixedVersion` and `Severity` (`CRITICAL`, `HIGH`,
//! `MEDIUM`, `LOW`, `UNKNOWN`). Misconfigurations, secrets and licenses in
//! the same report are not vulnerabilities and are not counted.

use ferry_protocol::release::{ScanFinding, Severity};
use serde::Deserialize;
use serde_json::Value;

use super::reading::{finding, read, shape, ReportError, ReportFormat};

const FORMAT: ReportFormat = ReportFormat::Trivy;
/// The schema version Trivy has written since v0.20.
const SCHEMA_VERSION: u64 = 2;

#[derive(Deserialize)]
struct Report {
    #[serde(rename = "SchemaVersion")]
    schema_version: u64,
    /// Absent when nothing was scanned (Trivy omits empty fields).
    #[serde(rename = "Results", default)]
    results: Option<Vec<TargetResult>>,
}

#[derive(Deserialize)]
struct TargetResult {
    /// Absent (or null) for a clean target.
    #[serde(rename = "Vulnerabilities", default)]
    vulnerabilities: Option<Vec<Vulnerability>>,
}

#[derive(Deserialize)]
struct Vulnerability {
    #[serde(rename = "VulnerabilityID")]
    id: String,
    #[serde(rename = "PkgName", default)]
    package: Option<String>,
    #[serde(rename = "InstalledVersion", default)]
    installed_version: Option<String>,
    #[serde(rename = "FixedVersion", default)]
    fixed_version: Option<String>,
    #[serde(rename = "Severity")]
    severity: String,
}

fn severity(text: &str) -> Option<Severity> {
    Some(match text.to_ascii_uppercase().as_str() {
        "CRITICAL" => Severity::Critical,
        "HIGH" => Severity::High,
        "MEDIUM" => Severity::Medium,
        "LOW" => Severity::Low,
        "UNKNOWN" => Severity::Unknown,
        _ => return None,
    })
}

pub(super) fn findings(document: Value) -> Result<Vec<ScanFinding>, ReportError> {
    let report: Report = read(FORMAT, document)?;
    if report.schema_version != SCHEMA_VERSION {
        return Err(shape(
            FORMAT,
            "SchemaVersion",
            format!(
                "schema version {} is not the one ferry reads ({SCHEMA_VERSION})",
                report.schema_version
            ),
        ));
    }
    let mut found = Vec::new();
    for (r, result) in report.results.unwrap_or_default().into_iter().enumerate() {
        for (v, vuln) in result
            .vulnerabilities
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let path = format!("Results[{r}].Vulnerabilities[{v}]");
            let severity = severity(&vuln.severity).ok_or_else(|| {
                shape(
                    FORMAT,
                    format!("{path}.Severity"),
                    format!(
                        "{:?} is not CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN",
                        vuln.severity
                    ),
                )
            })?;
            found.push(finding(
                FORMAT,
                &format!("{path}.VulnerabilityID"),
                &vuln.id,
                severity,
                vuln.package.as_deref(),
                vuln.installed_version.as_deref(),
                vuln.fixed_version.as_deref(),
            )?);
        }
    }
    Ok(found)
}
