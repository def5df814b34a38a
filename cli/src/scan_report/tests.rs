//! Each format read from a report as its tool writes it
//! (`tests/fixtures/scan/`), plus the edge cases.

use ferry_protocol::release::{
    ScanFinding, ScanSummary, Severity, MAX_FINDING_FIELD_LEN, MAX_SCAN_FINDINGS,
};
use serde_json::json;

use super::reading::clean;
use super::*;

const TRIVY: &str = include_str!("../../../tests/fixtures/scan/trivy-image.json");
const GRYPE: &str = include_str!("../../../tests/fixtures/scan/grype-image.json");
const SARIF: &str = include_str!("../../../tests/fixtures/scan/trivy-image.sarif");

/// What the three fixtures (one image, scanned three ways) count.
const IMAGE_COUNTS: ScanSummary = ScanSummary {
    critical: 2,
    high: 3,
    medium: 3,
    low: 1,
    unknown: 1,
};

fn detected(text: &str) -> ScanReport {
    parse(text.as_bytes(), None).unwrap()
}

fn problem(document: serde_json::Value, format: Option<ReportFormat>) -> String {
    parse(document.to_string().as_bytes(), format)
        .unwrap_err()
        .to_string()
}

fn ids(report: &ScanReport) -> Vec<(&str, Severity, Option<&str>)> {
    report
        .worst
        .iter()
        .map(|f| (f.id.as_str(), f.severity, f.package.as_deref()))
        .collect()
}

fn assert_worst_first(findings: &[ScanFinding]) {
    assert!(
        findings.windows(2).all(|w| w[0].severity <= w[1].severity),
        "{findings:#?}"
    );
}

#[test]
fn trivy_json_counts_vulnerabilities_by_severity_and_keeps_the_worst() {
    let report = detected(TRIVY);
    assert_eq!(report.format, ReportFormat::Trivy);
    // The secret in the same report is not a vulnerability.
    assert_eq!(report.summary, IMAGE_COUNTS);
    assert_eq!(report.worst.len(), 10);
    assert_worst_first(&report.worst);
    assert_eq!(
        report.worst[0],
        ScanFinding {
            id: "CVE-2023-38545".into(),
            severity: Severity::Critical,
            package: Some("curl".into()),
            installed_version: Some("8.3.0-r0".into()),
            fixed_version: Some("8.4.0-r0".into()),
        }
    );
    assert_eq!(
        ids(&report)[..3],
        [
            ("CVE-2023-38545", Severity::Critical, Some("curl")),
            ("CVE-2023-38545", Severity::Critical, Some("libcurl")),
            ("CVE-2023-39325", Severity::High, Some("stdlib")),
        ]
    );
    let stdlib = &report.worst[2];
    assert_eq!(stdlib.fixed_version.as_deref(), Some("1.20.10, 1.21.3"));
    assert_eq!(report.worst.last().unwrap().severity, Severity::Unknown);
}

#[test]
fn grype_json_counts_matches_not_ignored_ones() {
    let report = detected(GRYPE);
    assert_eq!(report.format, ReportFormat::Grype);
    assert_eq!(report.summary, IMAGE_COUNTS);
    assert_worst_first(&report.worst);
    assert_eq!(
        ids(&report)[..2],
        [
            ("CVE-2023-38545", Severity::Critical, Some("curl")),
            ("CVE-2023-38545", Severity::Critical, Some("libcurl")),
        ]
    );
    assert!(
        !report.worst.iter().any(|f| f.id == "CVE-2023-4863"),
        "an ignored match counted: {:#?}",
        report.worst
    );
    let stdlib = report
        .worst
        .iter()
        .find(|f| f.id == "CVE-2023-39325")
        .unwrap();
    assert_eq!(stdlib.installed_version.as_deref(), Some("v1.21.1"));
    assert_eq!(stdlib.fixed_version.as_deref(), Some("1.20.10, 1.21.3"));
    assert!(report.worst.iter().any(|f| f.id == "GHSA-2wrh-6pvc-2jm9"));
}

#[test]
fn grype_negligible_is_low_and_a_missing_severity_unknown() {
    let document = json!({"matches": [
        {"vulnerability": {"id": "CVE-2019-1010022", "severity": "Negligible", "fix": {"versions": [], "state": "wont-fix"}},
         "artifact": {"name": "libc6", "version": "2.36-9+deb12u3"}},
        {"vulnerability": {"id": "CVE-2024-0001"}, "artifact": {"name": "x"}},
    ], "source": {"type": "image", "target": {}}, "distro": {"name": "debian", "version": "12"},
       "descriptor": {"name": "grype", "version": "0.84.0", "timestamp": ""}});
    let report = parse(document.to_string().as_bytes(), None).unwrap();
    assert_eq!(report.summary.low, 1);
    assert_eq!(report.summary.unknown, 1);
    assert_eq!(report.worst[0].fixed_version, None, "no fix version");
}

#[test]
fn sarif_reads_scores_packages_and_versions_from_trivy_s_sarif() {
    let report = detected(SARIF);
    assert_eq!(report.format, ReportFormat::Sarif);
    assert_eq!(report.summary, IMAGE_COUNTS);
    assert_worst_first(&report.worst);
    assert_eq!(
        report.worst[1],
        ScanFinding {
            id: "CVE-2023-38545".into(),
            severity: Severity::Critical,
            package: Some("libcurl".into()),
            installed_version: Some("8.3.0-r0".into()),
            fixed_version: Some("8.4.0-r0".into()),
        }
    );
    // security-severity "0.0" (Trivy's UNKNOWN) is unknown, not low.
    let unknown = report
        .worst
        .iter()
        .find(|f| f.id == "CVE-2023-45289")
        .unwrap();
    assert_eq!(unknown.severity, Severity::Unknown);
}

/// A SARIF log of one run with these rules and results.
fn sarif(rules: serde_json::Value, results: serde_json::Value) -> serde_json::Value {
    json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{"tool": {"driver": {"name": "scanner", "rules": rules}}, "results": results}]
    })
}

fn result(rule: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut result = json!({
        "ruleId": rule,
        "message": {"text": "found"},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": "go.sum"}, "region": {"startLine": 7}}}]
    });
    for (k, v) in extra.as_object().unwrap() {
        result[k] = v.clone();
    }
    result
}

#[test]
fn sarif_severity_comes_from_the_score_else_the_level() {
    let rules = json!([
        {"id": "R-ERROR", "defaultConfiguration": {"level": "error"}},
        {"id": "R-SCORED", "defaultConfiguration": {"level": "note"}, "properties": {"security-severity": "9.1"}},
        {"id": "R-PLAIN"},
    ]);
    let results = json!([
        result("R-ERROR", json!({})),                // rule level: high
        result("R-ERROR", json!({"level": "note"})), // result level wins: low
        result("R-SCORED", json!({})),               // rule score: critical
        result(
            "R-SCORED",
            json!({"properties": {"security-severity": 7.0}})
        ), // result score wins: high
        result("R-PLAIN", json!({})),                // SARIF default: warning, medium
        result(
            "R-PLAIN",
            json!({"properties": {"security-severity": "4.0"}})
        ), // medium
        result(
            "R-PLAIN",
            json!({"properties": {"security-severity": "0.1"}})
        ), // low
        result("R-PLAIN", json!({"level": "none"})), // unknown
        result("R-PLAIN", json!({"kind": "pass"})),  // not a finding
        result(
            "R-ERROR",
            json!({"suppressions": [{"kind": "external", "status": "accepted"}]})
        ), // suppressed
        result(
            "R-ERROR",
            json!({"suppressions": [{"kind": "inSource", "status": "underReview"}]})
        ), // still counts: high
        json!({"ruleIndex": 1, "message": {"text": "by index"}}), // rule by index: critical
    ]);
    let report = parse(sarif(rules, results).to_string().as_bytes(), None).unwrap();
    assert_eq!(
        report.summary,
        ScanSummary {
            critical: 2,
            high: 3,
            medium: 2,
            low: 2,
            unknown: 1
        }
    );
    // Without Trivy's message the package is where the result was found.
    let high = report.worst.iter().find(|f| f.id == "R-ERROR").unwrap();
    assert_eq!(high.package.as_deref(), Some("go.sum"));
    assert_eq!(high.installed_version, None);
}

#[test]
fn at_most_twenty_findings_are_kept_worst_first() {
    let severities = ["LOW", "CRITICAL", "MEDIUM", "UNKNOWN", "HIGH"];
    let vulnerabilities: Vec<serde_json::Value> = (0..30)
        .map(|i| {
            json!({"VulnerabilityID": format!("CVE-2024-{:04}", 100 - i), "PkgName": "pkg",
                   "InstalledVersion": "1.0", "FixedVersion": "", "Severity": severities[i % 5]})
        })
        .collect();
    let document = json!({"SchemaVersion": 2, "ArtifactName": "web", "ArtifactType": "container_image",
        "Results": [{"Target": "web", "Class": "lang-pkgs", "Type": "gobinary", "Vulnerabilities": vulnerabilities}]});
    let report = parse(document.to_string().as_bytes(), None).unwrap();
    assert_eq!(
        report.summary,
        ScanSummary {
            critical: 6,
            high: 6,
            medium: 6,
            low: 6,
            unknown: 6
        }
    );
    assert_eq!(report.worst.len(), MAX_SCAN_FINDINGS);
    assert_worst_first(&report.worst);
    assert!(report.worst[..6]
        .iter()
        .all(|f| f.severity == Severity::Critical));
    // Within a severity, by id.
    assert!(report.worst[..6].windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(report.worst[19].severity, Severity::Low);
    assert_eq!(
        report.worst[0].fixed_version, None,
        "an empty FixedVersion is none"
    );
}

#[test]
fn the_same_finding_twice_is_kept_once_but_counted_twice() {
    let vuln = json!({"VulnerabilityID": "CVE-2023-38545", "PkgName": "curl", "InstalledVersion": "8.3.0-r0",
                      "FixedVersion": "8.4.0-r0", "Severity": "CRITICAL"});
    let document = json!({"SchemaVersion": 2, "Results": [
        {"Target": "a", "Vulnerabilities": [vuln.clone()]}, {"Target": "b", "Vulnerabilities": [vuln]}]});
    let report = parse(document.to_string().as_bytes(), None).unwrap();
    assert_eq!(report.summary.critical, 2);
    assert_eq!(report.worst.len(), 1);
}

#[test]
fn a_clean_report_of_each_format_has_no_findings() {
    for document in [
        json!({"SchemaVersion": 2, "ArtifactName": "web", "Results": [{"Target": "web", "Class": "os-pkgs", "Type": "alpine"}]}),
        json!({"SchemaVersion": 2, "ArtifactName": "web"}),
        json!({"matches": [], "source": null, "distro": {"name": "", "version": "", "idLike": null}, "descriptor": {"name": "grype", "version": "0.84.0", "timestamp": ""}}),
        sarif(json!([]), json!([])),
    ] {
        let report = parse(document.to_string().as_bytes(), None).unwrap();
        assert_eq!(report.summary, ScanSummary::default(), "{document}");
        assert!(report.worst.is_empty());
    }
}

#[test]
fn a_forced_format_reads_only_that_format() {
    let forced = parse(TRIVY.as_bytes(), Some(ReportFormat::Trivy)).unwrap();
    assert_eq!(forced, detected(TRIVY));
    let err = parse(GRYPE.as_bytes(), Some(ReportFormat::Trivy))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a Trivy JSON report") && err.contains("SchemaVersion"),
        "{err}"
    );
    let err = parse(TRIVY.as_bytes(), Some(ReportFormat::Sarif))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a SARIF 2.1.0 report"), "{err}");
}

#[test]
fn what_is_not_a_report_is_refused_with_what_was_found() {
    let err = parse(b"Total: 2 (CRITICAL: 2)\n", None).unwrap_err();
    assert!(matches!(err, ReportError::NotJson(_)), "{err}");
    assert!(err.to_string().starts_with("it is not JSON"), "{err}");
    for (document, found) in [
        (
            json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []}),
            "bomFormat",
        ),
        (json!({}), "an empty object"),
        (json!([{"Target": "old trivy"}]), "array"),
        (json!("CRITICAL"), "string"),
    ] {
        let err = problem(document, None);
        assert!(
            err.contains("not a Trivy JSON, Grype JSON or SARIF 2.1.0 report")
                && err.contains(found),
            "{err}"
        );
    }
}

#[test]
fn a_broken_report_names_where_and_what() {
    let cases = [
        (
            json!({"SchemaVersion": 2, "Results": {"Target": "web"}}),
            "at Results:",
        ),
        (
            json!({"SchemaVersion": 2, "Results": [{"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "Severity": 4}]}]}),
            "Results[0].Vulnerabilities[0].Severity",
        ),
        (
            json!({"SchemaVersion": 2, "Results": [{"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "Severity": "SEVERE"}]}]}),
            "\"SEVERE\" is not CRITICAL",
        ),
        (
            json!({"SchemaVersion": 2, "Results": [{"Vulnerabilities": [{"VulnerabilityID": " ", "Severity": "LOW"}]}]}),
            "Results[0].Vulnerabilities[0].VulnerabilityID: the vulnerability id is empty",
        ),
        (
            json!({"SchemaVersion": 3, "Results": []}),
            "schema version 3",
        ),
        (
            json!({"matches": [{"vulnerability": {"id": "CVE-1", "severity": "High"}}]}),
            "matches[0]: missing field `artifact`",
        ),
        (
            json!({"matches": [{"vulnerability": {"id": "CVE-1", "severity": "Severe"}, "artifact": {"name": "x"}}]}),
            "matches[0].vulnerability.severity",
        ),
        (
            json!({"version": "2.0.0", "runs": []}),
            "SARIF \"2.0.0\" is not 2.1.0",
        ),
        (
            json!({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "t"}}}]}),
            "runs[0].results: missing",
        ),
        (
            sarif(json!([]), json!([{"ruleId": "R", "level": "fatal"}])),
            "runs[0].results[0].level",
        ),
        (
            sarif(json!([]), json!([{"message": {"text": "?"}}])),
            "names no rule",
        ),
        (
            sarif(
                json!([]),
                json!([result(
                    "R",
                    json!({"properties": {"security-severity": "high"}})
                )]),
            ),
            "runs[0].results[0].properties.security-severity: \"high\" is not a CVSS score",
        ),
        (
            sarif(
                json!([{"id": "R", "properties": {"security-severity": "11"}}]),
                json!([result("R", json!({}))]),
            ),
            "runs[0].tool.driver.rules[0].properties.security-severity",
        ),
    ];
    for (document, expected) in cases {
        let err = problem(document.clone(), None);
        assert!(err.contains(expected), "{document}: {err}");
        assert!(err.contains("report as its tool writes them"), "{err}");
    }
}

#[test]
fn report_text_is_cleaned_and_bounded_for_the_release() {
    assert_eq!(clean("  openssl\n"), Some("openssl".into()));
    assert_eq!(clean("a\u{1b}[31mb"), Some("a [31mb".into()));
    assert_eq!(clean(" \t "), None);
    let long = clean(&"é".repeat(300)).unwrap();
    assert!(
        long.len() <= MAX_FINDING_FIELD_LEN && long.ends_with('…'),
        "{long}"
    );
}
