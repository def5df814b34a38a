//! Scanner reports: Trivy's JSON, Grype's JSON and SARIF 2.1.0, read into
//! the counts and worst findings a release carries to the security gate.
//!
//! Pure parsing, no IO: `ferry release publish` reads the file and hands the
//! bytes here. It lives in the CLI because only CI's side reads scanner
//! reports; the controller gets the result, `ScanSummary` and
//! `ScanFinding`s, which the protocol crate owns. The report types here are
//! input formats, like a configuration file, not ferry's wire: each module
//! declares only the fields it reads and ignores the rest of the report.

mod grype;
mod reading;
mod sarif;
mod trivy;

use ferry_protocol::release::{ScanFinding, ScanSummary, MAX_SCAN_FINDINGS};
use serde_json::Value;

pub use reading::{ReportError, ReportFormat};

/// What a report says: counts by severity and the worst findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanReport {
    /// The format it was read as.
    pub format: ReportFormat,
    /// Every finding, counted by severity.
    pub summary: ScanSummary,
    /// The worst distinct findings, worst first, at most [`MAX_SCAN_FINDINGS`].
    pub worst: Vec<ScanFinding>,
}

/// Reads `bytes` as a report of `format`, or of the format its content
/// shows when `format` is `None`.
pub fn parse(bytes: &[u8], format: Option<ReportFormat>) -> Result<ScanReport, ReportError> {
    let document: Value = serde_json::from_slice(bytes).map_err(ReportError::NotJson)?;
    let format = match format {
        Some(format) => format,
        None => detect(&document)?,
    };
    let findings = match format {
        ReportFormat::Trivy => trivy::findings(document)?,
        ReportFormat::Grype => grype::findings(document)?,
        ReportFormat::Sarif => sarif::findings(document)?,
    };
    Ok(ScanReport::of(format, findings))
}

/// The format a document is in, from the keys each tool always writes.
fn detect(document: &Value) -> Result<ReportFormat, ReportError> {
    let Value::Object(top) = document else {
        return Err(ReportError::UnknownFormat(match document {
            Value::Array(_) => "a JSON array, not an object".to_owned(),
            other => format!("a JSON {}, not an object", json_type(other)),
        }));
    };
    if top.contains_key("runs") && (top.contains_key("version") || top.contains_key("$schema")) {
        Ok(ReportFormat::Sarif)
    } else if top.contains_key("matches") {
        Ok(ReportFormat::Grype)
    } else if top.contains_key("SchemaVersion") {
        Ok(ReportFormat::Trivy)
    } else {
        let mut keys: Vec<&str> = top.keys().map(String::as_str).take(6).collect();
        if top.len() > keys.len() {
            keys.push("…");
        }
        Err(ReportError::UnknownFormat(if keys.is_empty() {
            "an empty object".to_owned()
        } else {
            format!(
                "an object with {}; Trivy's has SchemaVersion, Grype's matches, SARIF's version and runs",
                keys.join(", ")
            )
        }))
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl ScanReport {
    fn of(format: ReportFormat, mut findings: Vec<ScanFinding>) -> ScanReport {
        let mut summary = ScanSummary::default();
        for finding in &findings {
            summary.count(finding.severity);
        }
        findings.sort_by(|a, b| {
            (
                a.severity,
                &a.id,
                &a.package,
                &a.installed_version,
                &a.fixed_version,
            )
                .cmp(&(
                    b.severity,
                    &b.id,
                    &b.package,
                    &b.installed_version,
                    &b.fixed_version,
                ))
        });
        findings.dedup();
        findings.truncate(MAX_SCAN_FINDINGS);
        ScanReport {
            format,
            summary,
            worst: findings,
        }
    }
}

#[cfg(test)]
mod tests;
