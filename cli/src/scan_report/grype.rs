//! Grype's JSON report (`grype --output json`): `matches[]`, each with
//! `vulnerability.{id, severity, fix.versions}` and `artifact.{name,
//! version}`. Severities are `Critical`, `High`, `Medium`, `Low`,
//! `Negligible` (counted as low) and `Unknown`. `ignoredMatches` (what the
//! Grype configuration ignores) are not counted.

use ferry_protocol::release::{ScanFinding, Severity};
use serde::Deserialize;
use serde_json::Value;

use super::reading::{finding, read, shape, ReportError, ReportFormat};

const FORMAT: ReportFormat = ReportFormat::Grype;

#[derive(Deserialize)]
struct Document {
    matches: Vec<Match>,
}

#[derive(Deserialize)]
struct Match {
    vulnerability: Vulnerability,
    artifact: Artifact,
}

#[derive(Deserialize)]
struct Vulnerability {
    id: String,
    /// Omitted by Grype when its database has none.
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    fix: Option<Fix>,
}

#[derive(Deserialize)]
struct Fix {
    #[serde(default)]
    versions: Vec<String>,
}

#[derive(Deserialize)]
struct Artifact {
    name: String,
    #[serde(default)]
    version: Option<String>,
}

fn severity(text: &str) -> Option<Severity> {
    Some(match text.to_ascii_lowercase().as_str() {
        "critical" => Severity::Critical,
        "high" => Severity::High,
        "medium" => Severity::Medium,
        // Grype ranks negligible below low; the gate has nothing lower.
        "low" | "negligible" => Severity::Low,
        "unknown" | "" => Severity::Unknown,
        _ => return None,
    })
}

pub(super) fn findings(document: Value) -> Result<Vec<ScanFinding>, ReportError> {
    let document: Document = read(FORMAT, document)?;
    let mut found = Vec::with_capacity(document.matches.len());
    for (m, matched) in document.matches.into_iter().enumerate() {
        let path = format!("matches[{m}].vulnerability");
        let vuln = matched.vulnerability;
        let text = vuln.severity.unwrap_or_default();
        let severity = severity(&text).ok_or_else(|| {
            shape(
                FORMAT,
                format!("{path}.severity"),
                format!("{text:?} is not Critical, High, Medium, Low, Negligible or Unknown"),
            )
        })?;
        let fixed = vuln
            .fix
            .map(|fix| fix.versions.join(", "))
            .filter(|versions| !versions.is_empty());
        found.push(finding(
            FORMAT,
            &format!("{path}.id"),
            &vuln.id,
            severity,
            Some(&matched.artifact.name),
            matched.artifact.version.as_deref(),
            fixed.as_deref(),
        )?);
    }
    Ok(found)
}
