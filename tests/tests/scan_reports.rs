//! End-to-end tests of scanner reports at the security gate: for Trivy's
//! JSON, Grype's JSON and SARIF, `ferry release publish --scan-report`
//! carries the report's critical findings to the controller, whose gate
//! holds the release and names them in `ferry approvals`, `ferry releases`
//! and the `security_blocked` notification (a real webhook receiver on
//! loopback); a report that cannot be read publishes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_controller::notify::{NotifyConfig, RouteSettings, WebhookSettings};
use ferry_e2e::*;
use futures::StreamExt;
use serde_json::Value;

const HMAC_SECRET: &str = "webhook-secret-0123456789abcdef";
/// The critical the three fixtures (one image, scanned three ways) share,
/// as the gate describes it.
const CRITICAL: &str = "CVE-2023-38545 (curl 8.3.0-r0, fixed in 8.4.0-r0)";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/scan")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `ferry release publish` of `service` 1.0.0 with `extra` arguments.
async fn publish(system: &System, service: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "release",
        "publish",
        "--service",
        service,
        "--version",
        "1.0.0",
        "--artifact",
        "registry.example.com/web:1.4.2",
        "--author",
        "ci-bot",
    ];
    args.extend_from_slice(extra);
    system.cli_async(&args).await
}

/// The `ferry approvals -o json` row of `service` 1.0.0 in dev once `pred` holds.
async fn wait_dev_promotion(
    system: &System,
    service: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = system
            .cli_async(&["approvals", "-e", "dev", "-s", service, "-o", "json"])
            .await;
        assert_ok(&out, "ferry approvals");
        let row = json(&out).as_array().unwrap().first().cloned();
        if let Some(row) = row.as_ref().filter(|r| pred(r)) {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the promotion of {service} into dev never got there; last: {row:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_finding_of_each_report_format_blocks_at_the_gate_by_its_id() {
    let (http, inbox) = http_receiver().await;
    let mut system = System::without_controller();
    system.controller_config.notify = NotifyConfig {
        webhook: Some(WebhookSettings {
            url: format!("http://127.0.0.1:{http}/webhook"),
            secret: Some(HMAC_SECRET.into()),
            ..Default::default()
        }),
        routes: vec![RouteSettings {
            environments: vec![],
            events: vec!["security_blocked".into()],
            sinks: vec!["webhook".into()],
        }],
        retry_backoff: Some("50ms".into()),
        ..Default::default()
    };
    system.start_controller().await;

    for (service, report, format) in [
        ("web-trivy", "trivy-image.json", None),
        ("web-grype", "grype-image.json", None),
        ("web-sarif", "trivy-image.sarif", Some("sarif")),
    ] {
        let report = fixture(report);
        let mut extra = vec!["--scan-report", report.to_str().unwrap()];
        if let Some(format) = format {
            extra.extend(["--scan-format", format]);
        }
        let out = publish(&system, service, &extra).await;
        assert_ok(&out, "ferry release publish --scan-report");
        let printed = text(&out.stdout);
        assert!(
            printed.contains("critical=2,high=3,medium=3,low=1,unknown=1")
                && printed.contains(CRITICAL),
            "{service}: {printed}"
        );

        // The gate holds it, saying which criticals.
        let row = wait_dev_promotion(&system, service, |r| r["state"] == "blocked").await;
        let detail = row["detail"].as_str().unwrap();
        assert!(
            detail.contains("security gate")
                && detail.contains("2 critical vulnerabilities")
                && detail.contains(CRITICAL)
                && detail.contains("CVE-2023-38545 (libcurl 8.3.0-r0, fixed in 8.4.0-r0)"),
            "{service}: {detail}"
        );
        assert!(
            !detail.contains("CVE-2023-5363"),
            "a high finding is not what blocks: {detail}"
        );
        assert_eq!(row["overrides_required"], 2);
        let table = system
            .cli_async(&["approvals", "-e", "dev", "-s", service])
            .await;
        assert_ok(&table, "ferry approvals");
        assert!(
            text(&table.stdout).contains(CRITICAL),
            "{}",
            text(&table.stdout)
        );

        // The release carries its worst findings.
        let releases = system.cli_async(&["releases", "-s", service]).await;
        assert_ok(&releases, "ferry releases");
        assert!(
            text(&releases.stdout).contains("(critical: CVE-2023-38545)"),
            "{}",
            text(&releases.stdout)
        );
        let releases = system
            .cli_async(&["releases", "-s", service, "-o", "json"])
            .await;
        let release = &json(&releases)[0]["release"];
        assert_eq!(release["scan"]["critical"], 2, "{release}");
        assert_eq!(release["scan_findings"][0]["id"], "CVE-2023-38545");
        assert_eq!(release["scan_findings"][0]["severity"], "critical");

        // The security_blocked notification names them too.
        let hook = until(
            &format!("the security_blocked webhook of {service}"),
            || {
                posts(&inbox, "webhook")
                    .into_iter()
                    .map(|r| r.json())
                    .find(|b| b["kind"] == "security_blocked" && b["service"] == service)
            },
        )
        .await;
        let detail = hook["detail"].as_str().unwrap();
        assert!(detail.contains(CRITICAL), "{hook}");
        assert_eq!(hook["environment"], "dev");
    }
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_scan_report_publishes_nothing() {
    let system = System::start().await;
    let dir = system.dir.path();
    let not_json = dir.join("trivy-table.txt");
    std::fs::write(
        &not_json,
        "registry.example.com/web:1.4.2 (alpine 3.18.3)\nTotal: 2 (CRITICAL: 2)\n",
    )
    .unwrap();
    let sbom = dir.join("sbom.cdx.json");
    std::fs::write(
        &sbom,
        r#"{"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": []}"#,
    )
    .unwrap();
    let mut broken: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("trivy-image.json")).unwrap())
            .unwrap();
    broken["Results"][0]["Vulnerabilities"][0]["Severity"] = 4.into();
    let wrong_shape = dir.join("trivy-broken.json");
    std::fs::write(&wrong_shape, broken.to_string()).unwrap();
    let missing = dir.join("never-written.json");
    let grype = fixture("grype-image.json");

    let cases: [(&PathBuf, Option<&str>, &str); 5] = [
        (&missing, None, "cannot read the scan report"),
        (&not_json, None, "it is not JSON"),
        (
            &sbom,
            None,
            "not a Trivy JSON, Grype JSON or SARIF 2.1.0 report",
        ),
        (
            &wrong_shape,
            None,
            "at Results[0].Vulnerabilities[0].Severity: invalid type",
        ),
        (&grype, Some("trivy"), "not a Trivy JSON report"),
    ];
    for (file, format, problem) in cases {
        let path = file.to_str().unwrap();
        let mut extra = vec!["--scan-report", path];
        if let Some(format) = format {
            extra.extend(["--scan-format", format]);
        }
        let out = publish(&system, "web", &extra).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
        assert!(
            stderr.contains(path)
                && stderr.contains(problem)
                && stderr.contains("nothing was published"),
            "{path}: {stderr}"
        );
    }

    // Nothing reached the releases stream, the bucket or the API.
    let client = system.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(ferry_protocol::streams::releases().name)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    let bucket = js
        .get_key_value(ferry_protocol::streams::RELEASES_BUCKET)
        .await
        .unwrap();
    let keys: Vec<_> = bucket.keys().await.unwrap().collect().await;
    assert!(keys.is_empty(), "{keys:?}");
    let releases = system.cli_async(&["releases", "-o", "json"]).await;
    assert_ok(&releases, "ferry releases");
    assert_eq!(json(&releases), serde_json::json!([]));
    system.shutdown().await;
}
