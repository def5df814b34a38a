//! The approvals that count for a release in an environment: signed by one
//! of the environment's reviewers, unexpired, about exactly this release,
//! not by its author, once per reviewer key and kind. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_protocol::approval::{self, ApprovalKind, ApprovalTarget, SignedApproval};
use ferry_protocol::release::Release;
use ferry_protocol::EnvName;
use time::OffsetDateTime;

use crate::config::Stage;

/// How far in the future an approval may say it was issued (clock skew).
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The approvals that count for one release in one environment.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Valid deploy approvals, one per reviewer key.
    pub deploy: Vec<SignedApproval>,
    /// Valid security override approvals, one per reviewer key.
    pub overrides: usize,
    /// Reviewers who have not given a counting deploy approval (authors left out).
    pub waiting_for: Vec<String>,
}

/// Whether `reviewer` (key and names) is the release's author.
pub(crate) fn is_author(release: &Release, stage: &Stage, key: &str, declared_name: &str) -> bool {
    let Some(author) = release.author.as_deref().map(str::trim) else {
        return false;
    };
    let same = |name: &str| name.trim().eq_ignore_ascii_case(author);
    author == key || same(declared_name) || stage.reviewer(key).is_some_and(|r| same(&r.name))
}

/// Counts `approvals` of `release` in `env`: a valid signature by one of the
/// environment's reviewers, unexpired at `now`, about exactly this release and
/// environment, not by its author; each reviewer key counts once per kind.
pub(crate) fn tally(
    release: &Release,
    env: &EnvName,
    stage: &Stage,
    approvals: &[SignedApproval],
    now: OffsetDateTime,
) -> Tally {
    let digest = release.approval_digest();
    let mut deploy: BTreeMap<String, SignedApproval> = BTreeMap::new();
    let mut overrides = std::collections::BTreeSet::new();
    for signed in approvals {
        let target = ApprovalTarget {
            service: &release.service,
            version: &release.version,
            digest: &digest,
            environment: env,
            kind: signed.data.kind,
        };
        let (_, keys) = stage.reviewers_for(signed.data.kind);
        let Ok(a) = approval::verify(signed, keys, target, now) else {
            continue;
        };
        if is_author(release, stage, &a.reviewer, &a.reviewer_name) {
            continue;
        }
        match a.kind {
            ApprovalKind::Deploy => {
                deploy.entry(a.reviewer.clone()).or_insert(signed.clone());
            }
            ApprovalKind::SecurityOverride => {
                overrides.insert(a.reviewer.clone());
            }
        }
    }
    let waiting_for = stage
        .reviewers
        .iter()
        .filter(|r| !deploy.contains_key(&r.key))
        .filter(|r| !is_author(release, stage, &r.key, &r.name))
        .map(|r| r.name.clone())
        .collect();
    Tally {
        deploy: deploy.into_values().collect(),
        overrides: overrides.len(),
        waiting_for,
    }
}

/// The name a reviewer key is configured under (what the audit trail
/// records), else the name the approval declares.
pub(crate) fn reviewer_name(stage: &Stage, key: &str, declared: &str) -> String {
    stage
        .reviewer(key)
        .map_or_else(|| declared.to_owned(), |r| r.name.clone())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ferry_protocol::approval::Approval;
    use ferry_protocol::{ServiceName, SigningKey, TrustedKeys, Version};

    use super::*;
    use crate::config::Reviewer;

    struct Person {
        name: &'static str,
        key: SigningKey,
    }

    fn person(name: &'static str) -> Person {
        Person {
            name,
            key: SigningKey::generate(),
        }
    }

    fn stage(required: u32, people: &[&Person]) -> Stage {
        let reviewers: Vec<Reviewer> = people
            .iter()
            .map(|p| Reviewer {
                name: p.name.into(),
                key: p.key.public_key(),
            })
            .collect();
        let keys = Arc::new(TrustedKeys::new(reviewers.iter().map(|r| r.key.as_str())).unwrap());
        Stage {
            auto_deploy: true,
            soak: Duration::ZERO,
            approvals_required: required,
            reviewers: reviewers.clone(),
            reviewer_keys: keys.clone(),
            strategy: None,
            max_parallel_hosts: 1,
            override_reviewers: reviewers,
            override_keys: keys,
        }
    }

    fn release(author: &str) -> Release {
        Release {
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            artifact: "/bin/web".into(),
            digest: Some("sha256:ab".into()),
            env: Default::default(),
            secret_env: Default::default(),
            author: Some(author.into()),
            commit: None,
            hotfix: false,
            scan: None,
            scan_findings: Vec::new(),
        }
    }

    fn approval(p: &Person, declared: &str, valid: Duration, kind: ApprovalKind) -> SignedApproval {
        let now = OffsetDateTime::now_utc();
        Approval {
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            digest: "sha256:ab".into(),
            environment: EnvName::new("production").unwrap(),
            reviewer: p.key.public_key(),
            reviewer_name: declared.into(),
            issued_at: now,
            expires_at: now + valid,
            kind,
        }
        .sign(&p.key)
        .unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn authors_repeats_expired_and_strangers_do_not_count() {
        let (alice, bob, carol, mallory) = (
            person("alice"),
            person("bob"),
            person("carol"),
            person("mallory"),
        );
        let stage = stage(2, &[&alice, &bob, &carol]);
        let env = EnvName::new("production").unwrap();
        let now = OffsetDateTime::now_utc();
        let carol_wrote_it = release("carol");
        let approvals = vec![
            approval(&alice, "alice", HOUR, ApprovalKind::Deploy),
            approval(&alice, "alice", HOUR, ApprovalKind::Deploy),
            // carol's key under another name is still carol.
            approval(&carol, "not-carol", HOUR, ApprovalKind::Deploy),
            approval(&mallory, "mallory", HOUR, ApprovalKind::Deploy),
            approval(&bob, "bob", Duration::from_secs(1), ApprovalKind::Deploy),
            approval(&bob, "bob", HOUR, ApprovalKind::SecurityOverride),
        ];
        let later = now + Duration::from_secs(2);
        let t = tally(&carol_wrote_it, &env, &stage, &approvals, later);
        let counted: Vec<&str> = t
            .deploy
            .iter()
            .map(|a| a.data.reviewer_name.as_str())
            .collect();
        assert_eq!(counted, ["alice"]);
        assert_eq!(t.overrides, 1);
        assert_eq!(t.waiting_for, ["bob"], "the author is never asked");

        // A reviewer who declares the author's name is taken as the author.
        let t = tally(
            &release("bob"),
            &env,
            &stage,
            &[approval(&alice, "bob", HOUR, ApprovalKind::Deploy)],
            now,
        );
        assert!(t.deploy.is_empty());
        // And an author given as a public key is matched by key.
        let by_key = release(&alice.key.public_key());
        let t = tally(
            &by_key,
            &env,
            &stage,
            &[approval(&alice, "alice", HOUR, ApprovalKind::Deploy)],
            now,
        );
        assert!(t.deploy.is_empty());
    }
}
