//! Parsing tests of the whole argument tree.

use clap::error::ErrorKind;
use time::OffsetDateTime;

use super::*;

fn parse(line: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(std::iter::once("ferry").chain(line.iter().copied()))
}

#[test]
fn approve_reject_approvals_promote_and_audit_parse() {
    let args = parse(&[
        "approve",
        "web",
        "1.0.0",
        "-e",
        "production",
        "--key",
        "/k.nk",
        "--valid-for",
        "2h",
        "--security-override",
    ])
    .unwrap();
    let Command::Approve(approve) = args.command else {
        panic!("not approve");
    };
    assert_eq!(approve.valid_for, Duration::from_secs(7200));
    assert!(approve.security_override);
    assert_eq!(approve.key, PathBuf::from("/k.nk"));
    assert!(
        parse(&["reject", "web", "1.0.0", "-e", "production"]).is_err(),
        "a reason is required"
    );
    assert!(parse(&["reject", "web", "1.0.0", "-e", "production", "-r", "no"]).is_ok());
    assert!(parse(&["approvals", "--all", "-e", "production"]).is_ok());
    assert!(parse(&["promote", "web", "1.0.0", "-e", "acceptance"]).is_ok());
    let args = parse(&[
        "audit", "--since", "24h", "--actor", "bob", "--action", "approve",
    ])
    .unwrap();
    let Command::Audit(audit) = args.command else {
        panic!("not audit");
    };
    let since = audit.since.unwrap();
    let ago = OffsetDateTime::now_utc() - since;
    assert!(ago > time::Duration::hours(23) && ago < time::Duration::hours(25));
    assert_eq!(audit.actor.as_deref(), Some("bob"));
    assert!(parse(&["audit", "--since", "yesterday"]).is_err());
    let args = parse(&[
        "release",
        "publish",
        "-s",
        "web",
        "--version",
        "1",
        "--artifact",
        "/a",
        "--scan",
        "critical=1,high=2",
    ])
    .unwrap();
    let Command::Release(ReleaseCommand::Publish(publish)) = args.command else {
        panic!("not publish");
    };
    assert_eq!(publish.scan.unwrap().critical, 1);
    assert!(parse(&[
        "release",
        "publish",
        "-s",
        "web",
        "--version",
        "1",
        "--artifact",
        "/a",
        "--scan",
        "severe=1"
    ])
    .is_err());
}

#[test]
fn the_definition_is_consistent() {
    use clap::CommandFactory;
    Args::command().debug_assert();
}

#[test]
fn global_options_have_defaults_and_go_anywhere() {
    let args = parse(&["status"]).unwrap();
    assert_eq!(args.global.nats_url, "nats://127.0.0.1:4222");
    assert_eq!(args.global.timeout, Duration::from_secs(5));
    assert_eq!(args.global.output, OutputFormat::Table);
    assert_eq!(args.global.creds, None);

    let args = parse(&["status", "-o", "json", "--timeout", "250ms"]).unwrap();
    assert_eq!(args.global.output, OutputFormat::Json);
    assert_eq!(args.global.timeout, Duration::from_millis(250));
    assert!(parse(&["-o", "yaml", "status"]).is_err());
}

#[test]
fn rollback_to_and_version_conflict() {
    let err = parse(&[
        "rollback",
        "web",
        "-e",
        "dev",
        "--to",
        "previous",
        "--version",
        "1.0",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ArgumentConflict);

    let Command::Rollback(args) = parse(&["rollback", "web", "-e", "dev"]).unwrap().command else {
        panic!("not a rollback")
    };
    assert_eq!((args.to, args.version), (None, None));
    assert!(!args.dry_run && !args.force && !args.wait.wait);

    let Command::Rollback(args) = parse(&[
        "rollback",
        "web",
        "-e",
        "dev",
        "--version",
        "1.0",
        "--dry-run",
    ])
    .unwrap()
    .command
    else {
        panic!("not a rollback")
    };
    assert_eq!(args.version.unwrap().as_str(), "1.0");
    assert!(args.dry_run);
    assert!(parse(&["rollback", "web", "-e", "dev", "--to", "1.0"]).is_err());
}

#[test]
fn publish_parses_env_pairs() {
    let Command::Release(ReleaseCommand::Publish(args)) = parse(&[
        "release",
        "publish",
        "--service",
        "web",
        "--version",
        "1.2.3",
        "--artifact",
        "/opt/web",
        "--env",
        "A=1",
        "--env",
        "URL=http://x/?a=b",
        "--env",
        "EMPTY=",
        "--hotfix",
    ])
    .unwrap()
    .command
    else {
        panic!("not a publish")
    };
    let env = args.env_map().unwrap();
    assert_eq!(env["A"], "1");
    assert_eq!(env["URL"], "http://x/?a=b");
    assert_eq!(env["EMPTY"], "");
    assert!(args.hotfix);

    for bad in ["NOEQUALS", "=x", "1A=x", "A-B=x"] {
        let err = parse(&[
            "release",
            "publish",
            "--service",
            "web",
            "--version",
            "1",
            "--artifact",
            "a",
            "--env",
            bad,
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
    }
}

#[test]
fn a_variable_given_twice_is_refused() {
    let Command::Release(ReleaseCommand::Publish(args)) = parse(&[
        "release",
        "publish",
        "--service",
        "web",
        "--version",
        "1",
        "--artifact",
        "a",
        "--env",
        "A=1",
        "--env",
        "A=2",
    ])
    .unwrap()
    .command
    else {
        panic!("not a publish")
    };
    assert!(args.env_map().unwrap_err().contains("A"));
}

#[test]
fn maintenance_needs_a_mode_and_enable_needs_a_message() {
    let err = parse(&["maintenance", "web", "-e", "dev", "--enable"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    let err = parse(&["maintenance", "web", "-e", "dev"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    let err = parse(&[
        "maintenance",
        "web",
        "-e",
        "dev",
        "--enable",
        "--disable",
        "-m",
        "x",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    assert!(parse(&["maintenance", "web", "-e", "dev", "--disable", "-m", "x"]).is_err());
    assert!(parse(&[
        "maintenance",
        "web",
        "-e",
        "dev",
        "--disable",
        "--duration",
        "5m"
    ])
    .is_err());

    let Command::Maintenance(args) = parse(&[
        "maintenance",
        "web",
        "-e",
        "dev",
        "--enable",
        "--message",
        "back soon",
        "--duration",
        "30m",
    ])
    .unwrap()
    .command
    else {
        panic!("not maintenance")
    };
    assert!(args.enable);
    assert_eq!(args.message.as_deref(), Some("back soon"));
    assert_eq!(args.duration, Some(Duration::from_secs(1800)));
    assert!(parse(&["maintenance", "web", "-e", "dev", "--disable"]).is_ok());
}

#[test]
fn names_and_ranges_are_checked_at_parse_time() {
    assert!(parse(&["deploy", "Web", "1.0", "-e", "dev"]).is_err());
    assert!(parse(&["deploy", "web", "1.0", "-e", "prod.eu"]).is_err());
    assert!(parse(&["deploy", "web", "1 0", "-e", "dev"]).is_err());
    assert!(
        parse(&["deploy", "web", "1.0"]).is_err(),
        "environment is required"
    );
    assert!(parse(&["deploy", "web", "1.0", "-e", "dev", "--replicas", "0"]).is_err());
    assert!(parse(&["deploy", "web", "1.0", "-e", "dev", "--replicas", "65"]).is_err());
    assert!(parse(&["scale", "web", "0", "-e", "dev"]).is_ok());
    assert!(parse(&["scale", "web", "65", "-e", "dev"]).is_err());
    assert!(parse(&["history", "--limit", "0"]).is_err());
    assert!(
        parse(&["keygen", "--force"]).is_err(),
        "--force needs --out"
    );

    let Command::Deploy(args) = parse(&[
        "deploy",
        "web",
        "1.0",
        "--environment",
        "dev",
        "--wait",
        "--wait-timeout",
        "90s",
    ])
    .unwrap()
    .command
    else {
        panic!("not a deploy")
    };
    assert!(args.wait.wait);
    assert_eq!(args.wait.wait_timeout, Duration::from_secs(90));
    assert_eq!(args.environment.as_str(), "dev");
}

#[test]
fn a_deploy_dry_run_takes_the_deploy_flags_but_not_wait() {
    let Command::Deploy(args) = parse(&[
        "deploy",
        "web",
        "1.0",
        "-e",
        "production",
        "--strategy",
        "canary",
        "--dry-run",
    ])
    .unwrap()
    .command
    else {
        panic!("not a deploy")
    };
    assert!(args.dry_run);
    assert!(parse(&["deploy", "web", "1.0", "-e", "dev", "--dry-run", "--wait"]).is_err());
}

#[test]
fn history_defaults_to_fifty() {
    let Command::History(args) = parse(&["history", "-s", "web"]).unwrap().command else {
        panic!("not history")
    };
    assert_eq!(args.limit, 50);
    assert_eq!(args.service.unwrap().as_str(), "web");
    assert_eq!(args.environment, None);
}

#[test]
fn a_scan_report_excludes_scan_counts_and_its_format_needs_a_report() {
    let publish = |extra: &[&str]| {
        let mut line = vec![
            "release",
            "publish",
            "-s",
            "web",
            "--version",
            "1",
            "--artifact",
            "/a",
        ];
        line.extend_from_slice(extra);
        parse(&line)
    };
    let args = publish(&["--scan-report", "trivy.json", "--scan-format", "sarif"]).unwrap();
    let Command::Release(ReleaseCommand::Publish(args)) = args.command else {
        panic!("not publish");
    };
    assert_eq!(
        args.scan_report.as_deref(),
        Some(std::path::Path::new("trivy.json"))
    );
    assert_eq!(
        args.scan_format,
        Some(crate::scan_report::ReportFormat::Sarif)
    );
    let both = publish(&["--scan-report", "trivy.json", "--scan", "critical=0"]).unwrap_err();
    assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
    let alone = publish(&["--scan-format", "trivy"]).unwrap_err();
    assert_eq!(alone.kind(), ErrorKind::MissingRequiredArgument);
    assert!(publish(&["--scan-report", "r.json", "--scan-format", "cyclonedx"]).is_err());
}
