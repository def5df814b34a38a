//! The security gate's judgement of a release: how many critical
//! vulnerabilities CI's scan found, and which, in the words every gate
//! decision uses (the promotion's detail, `ferry approvals`, the audit
//! record and so the `security_blocked` notification, a refused
//! `ferry deploy`). Pure: the controller's promotions do the IO.

use ferry_protocol::release::{Release, ScanFinding};
use ferry_protocol::EnvName;

/// Critical findings of the release's scan (0 without a scan).
pub fn criticals(release: &Release) -> u32 {
    release.scan.map_or(0, |s| s.critical)
}

/// Security override approvals `release` needs in an environment: the
/// configured `quorum` when its scan found criticals, else none.
pub fn overrides_needed(release: &Release, quorum: u32) -> u32 {
    if criticals(release) > 0 {
        quorum
    } else {
        0
    }
}

/// The promotion's detail while the gate holds `release` in `env`, with
/// `so_far` of the `needed` overrides.
pub fn held(release: &Release, env: &EnvName, needed: u32, so_far: usize) -> String {
    format!(
        "blocked by the security gate: the scan found {}; fix them in a new release, or {needed} reviewers override with ferry approve {} {} -e {env} --security-override ({so_far} so far)",
        blocking(release),
        release.service,
        release.version,
    )
}

/// Why a `ferry deploy` of `release` is refused at the gate.
pub fn refusal(release: &Release, needed: u32, so_far: usize) -> String {
    format!(
        "{} {} is blocked by the security gate ({so_far} of {needed} security override approvals): the scan found {}",
        release.service,
        release.version,
        blocking(release)
    )
}

/// `2 critical vulnerabilities: CVE-2023-38545 (curl 8.3.0-r0, fixed in
/// 8.4.0-r0), CVE-…`: the count, then every critical finding CI listed, and
/// how many more the scan counted than it listed.
pub fn blocking(release: &Release) -> String {
    let count = criticals(release);
    let noun = if count == 1 {
        "vulnerability"
    } else {
        "vulnerabilities"
    };
    let listed: Vec<String> = release
        .critical_findings()
        .map(ScanFinding::describe)
        .collect();
    if listed.is_empty() {
        return format!("{count} critical {noun}");
    }
    let unlisted = (count as usize).saturating_sub(listed.len());
    let more = if unlisted > 0 {
        format!(" and {unlisted} more")
    } else {
        String::new()
    };
    format!("{count} critical {noun}: {}{more}", listed.join(", "))
}

#[cfg(test)]
mod tests {
    use ferry_protocol::release::{ScanSummary, Severity};
    use ferry_protocol::{ServiceName, Version};

    use super::*;

    fn release(critical: u32, findings: Vec<ScanFinding>) -> Release {
        Release {
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            artifact: "/bin/web".into(),
            digest: None,
            env: Default::default(),
            secret_env: Default::default(),
            author: None,
            commit: None,
            hotfix: false,
            scan: Some(ScanSummary {
                critical,
                high: 1,
                ..Default::default()
            }),
            scan_findings: findings,
        }
    }

    fn finding(id: &str, severity: Severity) -> ScanFinding {
        ScanFinding {
            id: id.into(),
            severity,
            package: Some("curl".into()),
            installed_version: Some("8.3.0-r0".into()),
            fixed_version: Some("8.4.0-r0".into()),
        }
    }

    #[test]
    fn the_gate_names_the_critical_findings_it_was_given() {
        let with_ids = release(
            3,
            vec![
                finding("CVE-2023-38545", Severity::Critical),
                finding("CVE-2024-0001", Severity::Critical),
                finding("CVE-2023-5363", Severity::High),
            ],
        );
        assert_eq!(criticals(&with_ids), 3);
        assert_eq!(
            blocking(&with_ids),
            "3 critical vulnerabilities: CVE-2023-38545 (curl 8.3.0-r0, fixed in 8.4.0-r0), \
             CVE-2024-0001 (curl 8.3.0-r0, fixed in 8.4.0-r0) and 1 more"
        );
        // Counts only (`--scan`): the number, as before.
        assert_eq!(
            blocking(&release(1, Vec::new())),
            "1 critical vulnerability"
        );
        let unscanned = Release {
            scan: None,
            ..release(0, Vec::new())
        };
        assert_eq!(criticals(&unscanned), 0);
        assert_eq!(overrides_needed(&unscanned, 2), 0);
        assert_eq!(overrides_needed(&with_ids, 2), 2);
        let env = EnvName::new("dev").unwrap();
        let detail = held(&with_ids, &env, 2, 1);
        assert!(
            detail.starts_with("blocked by the security gate: the scan found 3 critical vulnerabilities: CVE-2023-38545 (curl")
                && detail.ends_with("ferry approve web 1.0.0 -e dev --security-override (1 so far)"),
            "{detail}"
        );
        let refused = refusal(&with_ids, 2, 0);
        assert!(
            refused.starts_with(
                "web 1.0.0 is blocked by the security gate (0 of 2 security override approvals)"
            ) && refused.contains("CVE-2024-0001"),
            "{refused}"
        );
    }
}
