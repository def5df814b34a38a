//! SARIF 2.1.0 (OASIS), as Trivy, Grype and code scanners write it.
//!
//! Every result of every run that is a failure (`kind` absent or `fail`)
//! and not suppressed is a finding of its rule (`ruleId`, `rule.id`, or the
//! rule at `ruleIndex` in `tool.driver.rules`). Its severity is the CVSS
//! score in `properties.security-severity` (the result's, else its rule's;
//! GitHub code scanning reads the same property): 9.0 and above critical,
//! 7.0 high, 4.0 medium, above 0 low, 0 unknown. Without a score it is the
//! `level` (the result's, else the rule's `defaultConfiguration`, else
//! SARIF's default `warning`): error high, warning medium, note low, none
//! unknown. Package and versions come from Trivy's message text (`Package:`,
//! `Installed Version:`, `Fixed Version:` lines), else the package is the
//! result's first location.

use ferry_protocol::release::{ScanFinding, Severity};
use serde::Deserialize;
use serde_json::Value;

use super::reading::{finding, read, shape, ReportError, ReportFormat};

const FORMAT: ReportFormat = ReportFormat::Sarif;

#[derive(Deserialize)]
struct Log {
    version: String,
    runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Run {
    tool: Tool,
    /// Null or absent when the tool did not complete (SARIF 3.14.23).
    #[serde(default)]
    results: Option<Vec<SarifResult>>,
}

#[derive(Deserialize)]
struct Tool {
    driver: Driver,
}

#[derive(Deserialize)]
struct Driver {
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    id: String,
    #[serde(default)]
    default_configuration: Option<Configuration>,
    #[serde(default)]
    properties: Option<Properties>,
}

#[derive(Deserialize)]
struct Configuration {
    #[serde(default)]
    level: Option<Level>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    None,
    Note,
    Warning,
    Error,
}

#[derive(Deserialize)]
struct Properties {
    #[serde(rename = "security-severity", default)]
    security_severity: Option<Score>,
}

/// A CVSS score, written as a string by convention (`"9.8"`), or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Score {
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult {
    #[serde(default)]
    rule_id: Option<String>,
    #[serde(default)]
    rule_index: Option<usize>,
    #[serde(default)]
    rule: Option<RuleReference>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    level: Option<Level>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    locations: Vec<Location>,
    #[serde(default)]
    properties: Option<Properties>,
    #[serde(default)]
    suppressions: Vec<Suppression>,
}

#[derive(Deserialize)]
struct RuleReference {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    index: Option<usize>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    #[serde(default)]
    physical_location: Option<PhysicalLocation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation {
    #[serde(default)]
    artifact_location: Option<ArtifactLocation>,
}

#[derive(Deserialize)]
struct ArtifactLocation {
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Deserialize)]
struct Suppression {
    #[serde(default)]
    status: Option<String>,
}

/// The gate's severity of a CVSS score; `None` when it is no score.
fn score_severity(score: &Score) -> Option<Severity> {
    let value = match score {
        Score::Number(n) => *n,
        Score::Text(t) => t.trim().parse().ok()?,
    };
    Some(match value {
        v if !(0.0..=10.0).contains(&v) => return None,
        v if v >= 9.0 => Severity::Critical,
        v if v >= 7.0 => Severity::High,
        v if v >= 4.0 => Severity::Medium,
        v if v > 0.0 => Severity::Low,
        _ => Severity::Unknown,
    })
}

fn level_severity(level: Level) -> Severity {
    match level {
        Level::Error => Severity::High,
        Level::Warning => Severity::Medium,
        Level::Note => Severity::Low,
        Level::None => Severity::Unknown,
    }
}

/// Suppressed: at least one suppression, all of them accepted (a status
/// `underReview` or `rejected` does not hide the result).
fn suppressed(result: &SarifResult) -> bool {
    !result.suppressions.is_empty()
        && result
            .suppressions
            .iter()
            .all(|s| s.status.as_deref().is_none_or(|s| s == "accepted"))
}

/// The value of a `Name: value` line of Trivy's result message.
fn message_field<'a>(message: Option<&'a str>, name: &str) -> Option<&'a str> {
    message?
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

pub(super) fn findings(document: Value) -> Result<Vec<ScanFinding>, ReportError> {
    let log: Log = read(FORMAT, document)?;
    if log.version != "2.1.0" {
        return Err(shape(
            FORMAT,
            "version",
            format!("SARIF {:?} is not 2.1.0", log.version),
        ));
    }
    let mut found = Vec::new();
    for (r, run) in log.runs.into_iter().enumerate() {
        let rules = &run.tool.driver.rules;
        let Some(results) = run.results else {
            return Err(shape(
                FORMAT,
                format!("runs[{r}].results"),
                "missing: the scan did not complete, so it proves nothing",
            ));
        };
        for (i, result) in results.into_iter().enumerate() {
            let path = format!("runs[{r}].results[{i}]");
            if result.kind.as_deref().is_some_and(|k| k != "fail") || suppressed(&result) {
                continue;
            }
            let index = result
                .rule
                .as_ref()
                .and_then(|rule| rule.index)
                .or(result.rule_index);
            let id = result
                .rule_id
                .clone()
                .or_else(|| result.rule.as_ref().and_then(|rule| rule.id.clone()))
                .or_else(|| index.and_then(|i| rules.get(i)).map(|rule| rule.id.clone()))
                .ok_or_else(|| shape(FORMAT, &path, "names no rule (ruleId, rule or ruleIndex)"))?;
            let rule = index
                .filter(|&i| rules.get(i).is_some_and(|rule| rule.id == id))
                .or_else(|| rules.iter().position(|rule| rule.id == id))
                .map(|k| (format!("runs[{r}].tool.driver.rules[{k}]"), &rules[k]));
            let severity = severity(&path, &result, rule.as_ref().map(|(p, r)| (p.as_str(), *r)))?;
            let message = result.message.as_ref().and_then(|m| m.text.as_deref());
            let location = result.locations.iter().find_map(|l| {
                l.physical_location
                    .as_ref()?
                    .artifact_location
                    .as_ref()?
                    .uri
                    .as_deref()
            });
            found.push(finding(
                FORMAT,
                &format!("{path}.ruleId"),
                &id,
                severity,
                message_field(message, "Package").or(location),
                message_field(message, "Installed Version"),
                message_field(message, "Fixed Version"),
            )?);
        }
    }
    Ok(found)
}

/// A result's severity: its score, its rule's score, its level, its rule's
/// level, or SARIF's default level (warning).
fn severity(
    path: &str,
    result: &SarifResult,
    rule: Option<(&str, &Rule)>,
) -> Result<Severity, ReportError> {
    let scored = [
        (path, result.properties.as_ref()),
        (
            rule.map_or("", |(p, _)| p),
            rule.and_then(|(_, r)| r.properties.as_ref()),
        ),
    ];
    let rule = rule.map(|(_, r)| r);
    for (where_, properties) in scored {
        if let Some(score) = properties.and_then(|p| p.security_severity.as_ref()) {
            return score_severity(score).ok_or_else(|| {
                let shown = match score {
                    Score::Number(n) => n.to_string(),
                    Score::Text(t) => format!("{t:?}"),
                };
                shape(
                    FORMAT,
                    format!("{where_}.properties.security-severity"),
                    format!("{shown} is not a CVSS score (0.0 to 10.0)"),
                )
            });
        }
    }
    let level = result
        .level
        .or_else(|| rule.and_then(|r| r.default_configuration.as_ref()?.level))
        .unwrap_or(Level::Warning);
    Ok(level_severity(level))
}
