//! What every report reader shares: the formats, the error a report is
//! refused with, and reading a document's fields into findings.

use std::fmt;

use ferry_protocol::release::{ScanFinding, Severity, MAX_FINDING_FIELD_LEN};
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

/// Deserialises `document` into a format's types; a failure names its path.
pub(super) fn read<T: DeserializeOwned>(
    format: ReportFormat,
    document: Value,
) -> Result<T, ReportError> {
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
pub(super) fn shape(
    format: ReportFormat,
    path: impl Into<String>,
    problem: impl Into<String>,
) -> ReportError {
    ReportError::Shape {
        format,
        path: path.into(),
        problem: problem.into(),
    }
}

/// A report's text as a release may carry it: trimmed, control characters
/// replaced, at most [`MAX_FINDING_FIELD_LEN`] bytes (cut with `…`); `None`
/// when nothing is left.
pub(super) fn clean(text: &str) -> Option<String> {
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
pub(super) fn finding(
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
