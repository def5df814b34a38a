//! `ferry release publish`: what CI runs once a release is built and tested.

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::PublishErrorKind;
use ferry_protocol::release::{Release, ScanFinding};
use ferry_protocol::streams;
use ferry_protocol::{subject, Envelope};
use serde_json::json;

use crate::args::{GlobalOpts, OutputFormat, PublishArgs};
use crate::client::Connection;
use crate::error::{CliError, Result};
use crate::output;
use crate::scan_report::{self, ScanReport};

/// The `source` of release envelopes.
pub const SOURCE: &str = "/ferry/ci";

/// Reads `--scan-report`, if given: any problem is a usage error naming
/// the file, before anything is published.
fn scan_report(args: &PublishArgs) -> Result<Option<ScanReport>> {
    let Some(path) = &args.scan_report else {
        return Ok(None);
    };
    let bytes = std::fs::read(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the scan report {}: {e}; nothing was published",
            path.display()
        ))
    })?;
    scan_report::parse(&bytes, args.scan_format)
        .map(Some)
        .map_err(|e| {
            CliError::usage(format!(
                "cannot use the scan report {}: {e}; nothing was published",
                path.display()
            ))
        })
}

/// Builds and checks the release the arguments (and the scan report) describe.
fn release(args: &PublishArgs, report: Option<&ScanReport>) -> Result<Release> {
    let release = Release {
        service: args.service.clone(),
        version: args.version.clone(),
        artifact: args.artifact.clone(),
        digest: args.digest.clone().filter(|d| !d.is_empty()),
        env: args.env_map().map_err(CliError::usage)?,
        secret_env: args.secret_env.iter().map(|(k, _)| k.clone()).collect(),
        author: args.author.clone().filter(|a| !a.is_empty()),
        commit: args.commit.clone().filter(|c| !c.is_empty()),
        hotfix: args.hotfix,
        scan: report.map(|r| r.summary).or(args.scan),
        scan_findings: report.map(|r| r.worst.clone()).unwrap_or_default(),
    };
    release
        .validate()
        .map_err(|e| CliError::usage(format!("the release is not valid: {e}")))?;
    Ok(release)
}

/// The de-duplication id: publishing the same version twice stores it once.
fn message_id(release: &Release) -> String {
    format!("release/{}/{}", release.service, release.version)
}

/// Pause between publishes of a release JetStream did not take.
const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// `ferry release publish`
pub async fn publish(global: &GlobalOpts, args: &PublishArgs) -> Result<()> {
    let report = scan_report(args)?;
    let release = release(args, report.as_ref())?;
    let subject = subject::release(&release.service);
    let body = Envelope::new(SOURCE, release.clone())
        .to_bytes()
        .map_err(|e| CliError::usage(format!("cannot encode the release: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, message_id(&release).as_str());

    let connection = Connection::open(global).await?;
    let mut jetstream = async_nats::jetstream::new(connection.client().clone());
    jetstream.set_timeout(connection.timeout());
    let stream = streams::releases().name;
    let publish_error = |e: async_nats::jetstream::context::PublishError| {
        match e.kind() {
        PublishErrorKind::StreamNotFound => CliError::unreachable(format!(
            "the {stream} stream does not exist: start ferry-controller first"
        )),
        PublishErrorKind::TimedOut => CliError::unreachable(format!(
            "JetStream did not acknowledge the release on {subject} within {}: is JetStream enabled and {stream} healthy?",
            humantime::format_duration(connection.timeout())
        )),
        PublishErrorKind::BrokenPipe => {
            CliError::unreachable(format!("lost the NATS connection publishing on {subject}: {e}"))
        }
        _ => CliError::failed(format!("publishing the release on {subject} failed: {e}")),
    }
    };
    // On a cluster the stream has no leader for the seconds of an election
    // after its node is lost (no responders, or no ack): publish again until
    // the timeout. Safe: the message id makes a repeat a duplicate, stored once.
    let deadline = tokio::time::Instant::now() + connection.timeout();
    let body = bytes::Bytes::from(body);
    let ack = loop {
        let attempt = async {
            jetstream
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await?
                .await
        };
        match attempt.await {
            Ok(ack) => break ack,
            Err(e)
                if matches!(
                    e.kind(),
                    PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(PUBLISH_RETRY).await;
            }
            Err(e) => return Err(publish_error(e)),
        }
    };

    output::emit(&match global.output {
        OutputFormat::Json => output::json(&json!({
            "service": release.service,
            "version": release.version,
            "stream": ack.stream,
            "sequence": ack.sequence,
            "duplicate": ack.duplicate,
            "scan": release.scan,
            "scan_findings": release.scan_findings,
        }))?,
        OutputFormat::Table if ack.duplicate => format!(
            "{} {} was already published: {} sequence {} (the earlier message stands)",
            release.service, release.version, ack.stream, ack.sequence
        ),
        OutputFormat::Table => {
            let mut text = format!(
                "published {} {}: {} sequence {}",
                release.service, release.version, ack.stream, ack.sequence
            );
            if let Some(report) = &report {
                text.push_str(&scan_lines(report));
            }
            text
        }
    })
}

/// What CI's log shows of the report: the counts and the criticals.
fn scan_lines(report: &ScanReport) -> String {
    let mut text = format!("\nscan ({}): {}", report.format, report.summary);
    let critical: Vec<String> = report
        .worst
        .iter()
        .filter(|f| f.severity == ferry_protocol::release::Severity::Critical)
        .map(ScanFinding::describe)
        .collect();
    if !critical.is_empty() {
        text.push_str("\nheld at the security gate by:");
        for finding in critical {
            text.push_str("\n  ");
            text.push_str(&finding);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Args, Command, ReleaseCommand};

    fn args(extra: &[&str]) -> PublishArgs {
        let base = [
            "ferry",
            "release",
            "publish",
            "--service",
            "web",
            "--version",
            "1.2.3+b7",
        ];
        let Command::Release(ReleaseCommand::Publish(args)) =
            Args::try_parse_from(base.iter().chain(extra))
                .unwrap()
                .command
        else {
            panic!("not a publish")
        };
        args
    }

    #[test]
    fn builds_a_valid_release_with_its_dedup_id() {
        let r = release(
            &args(&[
                "--artifact",
                "registry.example.com/web:1.2.3",
                "--env",
                "A=1",
                "--commit",
                "abc",
            ]),
            None,
        )
        .unwrap();
        assert_eq!(r.env["A"], "1");
        assert_eq!(r.commit.as_deref(), Some("abc"));
        assert_eq!(r.author, None);
        assert!(!r.hotfix);
        assert_eq!(message_id(&r), "release/web/1.2.3+b7");
    }

    #[test]
    fn an_invalid_artifact_is_a_usage_error() {
        let err = release(&args(&["--artifact", "/opt/web --evil"]), None).unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Usage);
        assert!(err.to_string().contains("artifact"), "{err}");
    }

    #[test]
    fn a_scan_report_fills_the_scan_and_an_unreadable_one_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("trivy.json");
        std::fs::write(
            &report,
            r#"{"SchemaVersion": 2, "Results": [{"Target": "web", "Vulnerabilities": [
                {"VulnerabilityID": "CVE-2023-0286", "PkgName": "openssl", "InstalledVersion": "3.0.7-r0",
                 "FixedVersion": "3.0.8-r0", "Severity": "CRITICAL"}]}]}"#,
        )
        .unwrap();
        let with = |file: &std::path::Path| {
            args(&[
                "--artifact",
                "web:1",
                "--scan-report",
                file.to_str().unwrap(),
            ])
        };
        let publish = with(&report);
        let scanned = scan_report(&publish).unwrap().unwrap();
        let r = release(&publish, Some(&scanned)).unwrap();
        assert_eq!(r.scan.unwrap().critical, 1);
        assert_eq!(r.scan_findings[0].id, "CVE-2023-0286");
        assert!(
            scan_lines(&scanned).contains("CVE-2023-0286 (openssl 3.0.7-r0, fixed in 3.0.8-r0)")
        );

        let missing = dir.path().join("missing.json");
        std::fs::write(dir.path().join("table.txt"), "Total: 1 (CRITICAL: 1)").unwrap();
        for (file, problem) in [
            (missing, "No such file"),
            (dir.path().join("table.txt"), "not JSON"),
        ] {
            let err = scan_report(&with(&file)).unwrap_err();
            assert_eq!(err.exit, crate::error::Exit::Usage);
            let text = err.to_string();
            assert!(text.contains(file.to_str().unwrap()), "{text}");
            assert!(
                text.contains(problem) && text.contains("nothing was published"),
                "{text}"
            );
        }
    }
}
