//! Reviewers' approvals: a statement about exactly one release in one
//! environment, signed by the reviewer's own nkey.
//!
//! An approval travels as an [`Envelope<Approval>`] ([`SignedApproval`]),
//! signed the same way as a command (ed25519 over the canonical bytes, the
//! reviewer's public key as `issuer`, the approval's expiry as `expires`).
//! The CLI signs it where the reviewer's seed is; the controller collects
//! approvals and copies them into the deploy command; the agent of an
//! approval-gated environment verifies them itself against the reviewer keys
//! it trusts, so a controller alone cannot forge a quorum.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::envelope::Envelope;
use crate::keys::{SigningKey, TrustedKeys};
use crate::names::{EnvName, ServiceName, Version};
use crate::{Error, Payload, Refusal, RefusalReason};

/// The CloudEvents `source` of approvals.
pub const SOURCE: &str = "/ferry/reviewer";
/// Longest reviewer name accepted.
pub const MAX_REVIEWER_NAME: usize = 128;

/// What an approval allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// Deploy the release to the environment.
    Deploy,
    /// Let a release with critical vulnerabilities past the security gate
    /// into the environment.
    SecurityOverride,
}

impl fmt::Display for ApprovalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApprovalKind::Deploy => "deploy",
            ApprovalKind::SecurityOverride => "security_override",
        })
    }
}

/// A reviewer's statement: "I approve `service` `version` (artifact
/// `digest`) in `environment` until `expires_at`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The service.
    pub service: ServiceName,
    /// The version.
    pub version: Version,
    /// The artifact digest, or the artifact reference when the release has
    /// no digest ([`crate::release::Release::approval_digest`]).
    pub digest: String,
    /// The environment.
    pub environment: EnvName,
    /// The reviewer's public nkey; must be the envelope's issuer.
    pub reviewer: String,
    /// The reviewer's name, for people and for the "authors cannot approve" rule.
    pub reviewer_name: String,
    /// When it was signed.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// After this it does not count.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Deploy or security override.
    pub kind: ApprovalKind,
}

impl Payload for Approval {
    fn event_type(&self) -> &'static str {
        match self.kind {
            ApprovalKind::Deploy => "ferry.v1.approval.deploy",
            ApprovalKind::SecurityOverride => "ferry.v1.approval.security_override",
        }
    }
}

/// An approval signed by its reviewer.
pub type SignedApproval = Envelope<Approval>;

impl Approval {
    /// Signs the approval with the reviewer's key (whose public key must be
    /// `reviewer`).
    pub fn sign(self, key: &SigningKey) -> Result<SignedApproval, Error> {
        if key.public_key() != self.reviewer {
            return Err(Error::InvalidField {
                field: "reviewer",
                reason: "the approval names another key than the one signing it".into(),
            });
        }
        if self.reviewer_name.is_empty()
            || self.reviewer_name.len() > MAX_REVIEWER_NAME
            || self.reviewer_name.chars().any(char::is_control)
        {
            return Err(Error::InvalidField {
                field: "reviewer_name",
                reason: format!(
                    "must be 1 to {MAX_REVIEWER_NAME} bytes without control characters"
                ),
            });
        }
        let mut envelope = Envelope::new(SOURCE, self);
        envelope.time = envelope.data.issued_at;
        envelope.expires = Some(envelope.data.expires_at);
        envelope.sign(key)
    }
}

/// What an approval must be about to count.
#[derive(Clone, Copy, Debug)]
pub struct ApprovalTarget<'a> {
    /// The service.
    pub service: &'a ServiceName,
    /// The version.
    pub version: &'a Version,
    /// The digest (or artifact).
    pub digest: &'a str,
    /// The environment.
    pub environment: &'a EnvName,
    /// The kind.
    pub kind: ApprovalKind,
}

/// Verifies one signed approval: a signature by a trusted reviewer key that is
/// the approval's own `reviewer`, not expired at `now`, about exactly `target`.
/// Expiry is reported as [`RefusalReason::Expired`], everything else as
/// [`RefusalReason::BadApproval`].
pub fn verify<'a>(
    signed: &'a SignedApproval,
    trusted: &TrustedKeys,
    target: ApprovalTarget<'_>,
    now: OffsetDateTime,
) -> Result<&'a Approval, Refusal> {
    let approval = &signed.data;
    let who = format!(
        "approval by {} ({})",
        approval.reviewer_name, approval.reviewer
    );
    let bad = |detail: String| Refusal::new(RefusalReason::BadApproval, format!("{who}: {detail}"));
    let bytes = serde_json::to_vec(signed).map_err(|e| bad(format!("cannot be encoded: {e}")))?;
    // The same door a command passes through: signature by a trusted key over
    // the canonical bytes, and expiry.
    match Envelope::<Approval>::decode_verified(&bytes, trusted, now) {
        Ok(_) => {}
        Err(refusal) if refusal.reason == RefusalReason::Expired => {
            return Err(Refusal::new(
                RefusalReason::Expired,
                format!("{who}: expired at {}", approval.expires_at),
            ))
        }
        Err(refusal) => return Err(bad(refusal.to_string())),
    }
    if signed.issuer.as_deref() != Some(approval.reviewer.as_str()) {
        return Err(bad(
            "signed by another key than the reviewer it names".into()
        ));
    }
    if approval.expires_at <= now || signed.expires != Some(approval.expires_at) {
        return Err(Refusal::new(
            RefusalReason::Expired,
            format!("{who}: expired at {}", approval.expires_at),
        ));
    }
    let mismatch = if approval.service != *target.service {
        Some(format!("is about service {}", approval.service))
    } else if approval.version != *target.version {
        Some(format!("is about version {}", approval.version))
    } else if approval.digest != target.digest {
        Some(format!("is about artifact {}", approval.digest))
    } else if approval.environment != *target.environment {
        Some(format!("is about environment {}", approval.environment))
    } else if approval.kind != target.kind {
        Some(format!("is a {} approval", approval.kind))
    } else {
        None
    };
    match mismatch {
        Some(m) => Err(bad(format!(
            "{m}, not {} {} ({}) in {} ({})",
            target.service, target.version, target.digest, target.environment, target.kind
        ))),
        None => Ok(approval),
    }
}

/// Checks that `approvals` hold at least `required` valid approvals of
/// `target` from distinct trusted reviewer keys, as an agent does before a
/// deploy to an approval-gated environment.
///
/// Any approval that is forged, untrusted or about something else refuses the
/// whole command ([`RefusalReason::BadApproval`]): a controller that sends one
/// is not to be trusted with the rest. Expired and repeated approvals merely
/// do not count; too few is [`RefusalReason::ApprovalsMissing`].
pub fn check_quorum(
    approvals: &[SignedApproval],
    required: usize,
    trusted: &TrustedKeys,
    target: ApprovalTarget<'_>,
    now: OffsetDateTime,
) -> Result<usize, Refusal> {
    if required == 0 {
        return Ok(0);
    }
    let mut reviewers = BTreeSet::new();
    let mut not_counted = Vec::new();
    for signed in approvals {
        match verify(signed, trusted, target, now) {
            Ok(approval) => {
                if !reviewers.insert(approval.reviewer.clone()) {
                    not_counted.push(format!(
                        "{} approved twice (counted once)",
                        approval.reviewer_name
                    ));
                }
            }
            Err(refusal) if refusal.reason == RefusalReason::Expired => {
                not_counted.push(refusal.detail);
            }
            Err(refusal) => return Err(refusal),
        }
    }
    if reviewers.len() < required {
        let mut detail = format!(
            "{} needs {required} approvals from distinct trusted reviewers of {} {} ({}); the command carries {} valid",
            target.environment,
            target.service,
            target.version,
            target.digest,
            reviewers.len()
        );
        if !not_counted.is_empty() {
            detail.push_str(&format!(" ({})", not_counted.join("; ")));
        }
        return Err(Refusal::new(RefusalReason::ApprovalsMissing, detail));
    }
    Ok(reviewers.len())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn approval(key: &SigningKey, name: &str, env: &str, valid: Duration) -> Approval {
        let now = OffsetDateTime::now_utc();
        Approval {
            service: ServiceName::new("web").unwrap(),
            version: Version::new("1.0.0").unwrap(),
            digest: "sha256:abc".into(),
            environment: EnvName::new(env).unwrap(),
            reviewer: key.public_key(),
            reviewer_name: name.into(),
            issued_at: now,
            expires_at: now + valid,
            kind: ApprovalKind::Deploy,
        }
    }

    struct Fixture {
        service: ServiceName,
        version: Version,
        env: EnvName,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                service: ServiceName::new("web").unwrap(),
                version: Version::new("1.0.0").unwrap(),
                env: EnvName::new("production").unwrap(),
            }
        }
        fn target(&self) -> ApprovalTarget<'_> {
            ApprovalTarget {
                service: &self.service,
                version: &self.version,
                digest: "sha256:abc",
                environment: &self.env,
                kind: ApprovalKind::Deploy,
            }
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn two_distinct_reviewers_make_a_quorum_of_two() {
        let (alice, bob) = (SigningKey::generate(), SigningKey::generate());
        let trusted = TrustedKeys::new([alice.public_key(), bob.public_key()]).unwrap();
        let f = Fixture::new();
        let now = OffsetDateTime::now_utc();
        let a = approval(&alice, "alice", "production", HOUR)
            .sign(&alice)
            .unwrap();
        let b = approval(&bob, "bob", "production", HOUR)
            .sign(&bob)
            .unwrap();
        // Survives the wire: JSON out and back.
        let a: SignedApproval = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(
            check_quorum(&[a.clone(), b], 2, &trusted, f.target(), now).unwrap(),
            2
        );
        let err = check_quorum(&[a.clone(), a], 2, &trusted, f.target(), now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::ApprovalsMissing, "{err}");
        assert!(err.detail.contains("counted once"), "{err}");
        let err = check_quorum(&[], 2, &trusted, f.target(), now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::ApprovalsMissing);
    }

    #[test]
    fn forged_untrusted_expired_and_foreign_approvals_do_not_count() {
        let (alice, mallory) = (SigningKey::generate(), SigningKey::generate());
        let trusted = TrustedKeys::new([alice.public_key()]).unwrap();
        let f = Fixture::new();
        let now = OffsetDateTime::now_utc();

        // Mallory signs a statement naming alice: the signature is not alice's.
        let mut forged = approval(&mallory, "alice", "production", HOUR)
            .sign(&mallory)
            .unwrap();
        forged.data.reviewer = alice.public_key();
        forged.issuer = Some(alice.public_key());
        let err = check_quorum(&[forged], 1, &trusted, f.target(), now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::BadApproval, "{err}");

        let untrusted = approval(&mallory, "mallory", "production", HOUR)
            .sign(&mallory)
            .unwrap();
        let err = check_quorum(&[untrusted], 1, &trusted, f.target(), now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::BadApproval, "{err}");

        // Tampered after signing: moved to another environment.
        let mut moved = approval(&alice, "alice", "acceptance", HOUR)
            .sign(&alice)
            .unwrap();
        moved.data.environment = f.env.clone();
        let err = check_quorum(&[moved], 1, &trusted, f.target(), now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::BadApproval, "{err}");

        // Validly signed but about acceptance.
        let other = approval(&alice, "alice", "acceptance", HOUR)
            .sign(&alice)
            .unwrap();
        let err = check_quorum(&[other], 1, &trusted, f.target(), now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::BadApproval, "{err}");

        let short = approval(&alice, "alice", "production", Duration::from_secs(1))
            .sign(&alice)
            .unwrap();
        let later = now + Duration::from_secs(2);
        let err = check_quorum(&[short], 1, &trusted, f.target(), later).unwrap_err();
        assert_eq!(err.reason, RefusalReason::ApprovalsMissing, "{err}");
        assert!(err.detail.contains("expired"), "{err}");
    }

    #[test]
    fn a_key_cannot_sign_for_another_reviewer() {
        let (alice, bob) = (SigningKey::generate(), SigningKey::generate());
        assert!(approval(&alice, "alice", "dev", HOUR).sign(&bob).is_err());
    }
}
