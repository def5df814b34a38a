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
mod sarif;
mod trivy;

use std::fmt;

use ferry_protocol::release::{
    ScanFinding, ScanSummary, Severity, MAX_FINDING_FIELD_LEN, MAX_SCAN_FINDINGS,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The report formats `--scan-report` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// `trivy image --format json` (SchemaVersion 2).
    Trivy,
    /// `grype --output json`.
    Grype,
    /// SARIF 2.1.0, from any scanner (`trivy --format sarif`, `grype -o sarif`, ...).
    Sarif,
}

impl fmt::Display for ReportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReportFormat::Trivy => "Trivy JSON",
            ReportFormat::Grype => "Grype JSON",
            ReportFormat::Sarif => "SARIF 2.1.0",
        })
    }
}

/// Why a report cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The bytes are not JSON.
    #[error("it is not JSON ({0})")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but none of the formats.
    #[error(
        "it is not a Trivy JSON, Grype JSON or SARIF 2.1.0 report ({0}); if it is one, say which with --scan-format"
    )]
    UnknownFormat(String),
    /// The format's shape is broken at `path`.
    #[error("it is not a {format} report as its tool writes them: at {path}: {problem}")]
    Shape {
        /// The format it was read as.
        format: ReportFormat,
        /// Where in the document, e.g. `Results[0].Vulnerabilities[3].Severity`.
        path: String,
        /// What is wrong there.
        problem: String,
    },
}

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

/// Deserialises `document` into a format's types; a failure names its path.
fn read<T: DeserializeOwned>(format: ReportFormat, document: Value) -> Result<T, ReportError> {
    serde_path_to_error::deserialize(document).map_err(|e| ReportError::Shape {
        format,
        path: match e.path().to_string() {
            root if root == "." => "the top level".to_owned(),
            path => path,
        },
        problem: e.into_inner().to_string(),
    })
}

/// A shape error of `format` at `path`.
fn shape(format: ReportFormat, path: impl Into<String>, problem: impl Into<String>) -> ReportError {
    ReportError::Shape {
        format,
        path: path.into(),
        problem: problem.into(),
    }
}

/// A report's text as a release may carry it: trimmed, control characters
/// replaced, at most [`MAX_FINDING_FIELD_LEN`] bytes (cut with `…`); `None`
/// when nothing is left.
fn clean(text: &str) -> Option<String> {
    let text: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.is_empty() {
        return None;
    }
    if text.len() <= MAX_FINDING_FIELD_LEN {
        return Some(text);
    }
    let mut cut = MAX_FINDING_FIELD_LEN - '…'.len_utf8();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(format!("{}…", &text[..cut]))
}

/// A finding from a report's fields; the id must not be empty.
fn finding(
    format: ReportFormat,
    path: &str,
    id: &str,
    severity: Severity,
    package: Option<&str>,
    installed_version: Option<&str>,
    fixed_version: Option<&str>,
) -> Result<ScanFinding, ReportError> {
    Ok(ScanFinding {
        id: clean(id).ok_or_else(|| shape(format, path, "the vulnerability id is empty"))?,
        severity,
        package: package.and_then(clean),
        installed_version: installed_version.and_then(clean),
        fixed_version: fixed_version.and_then(clean),
    })
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
