//! Why an agent (or the controller) refused a message, in words a person
//! reads and a reason a program matches on.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a message was refused; sent in refusal events so a script can match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// Not JSON, not an envelope, wrong types, too large.
    Malformed,
    /// No signature or no issuer.
    Unsigned,
    /// Signed by a key the agent does not trust.
    UntrustedIssuer,
    /// The signature does not verify.
    BadSignature,
    /// Past its expiry.
    Expired,
    /// Its id was already executed.
    Replayed,
    /// Addressed to another environment than the agent's.
    WrongEnvironment,
    /// A service the agent does not manage.
    UnknownService,
    /// Well-formed but asks for something invalid (zero replicas, unknown version...).
    Invalid,
    /// A deploy to an approval-gated environment without enough valid
    /// approvals from distinct trusted reviewers.
    ApprovalsMissing,
    /// An approval that is forged, untrusted, expired or about another release.
    BadApproval,
}

impl RefusalReason {
    /// Whether an agent gives this reason only after the command's signature
    /// verified against its trusted keys. The others (malformed, unsigned,
    /// untrusted or bad signatures, and unknown services, which the agent
    /// refuses before it verifies anything) may be about bytes anyone put on
    /// the subject, so they say nothing about the service.
    pub fn follows_verification(self) -> bool {
        match self {
            RefusalReason::Malformed
            | RefusalReason::Unsigned
            | RefusalReason::UntrustedIssuer
            | RefusalReason::BadSignature
            | RefusalReason::UnknownService => false,
            RefusalReason::Expired
            | RefusalReason::Replayed
            | RefusalReason::WrongEnvironment
            | RefusalReason::Invalid
            | RefusalReason::ApprovalsMissing
            | RefusalReason::BadApproval => true,
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            RefusalReason::Malformed => "malformed",
            RefusalReason::Unsigned => "unsigned",
            RefusalReason::UntrustedIssuer => "untrusted_issuer",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::Expired => "expired",
            RefusalReason::Replayed => "replayed",
            RefusalReason::WrongEnvironment => "wrong_environment",
            RefusalReason::UnknownService => "unknown_service",
            RefusalReason::Invalid => "invalid",
            RefusalReason::ApprovalsMissing => "approvals_missing",
            RefusalReason::BadApproval => "bad_approval",
        };
        f.write_str(text)
    }
}

/// A refusal: the reason and a human sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    /// Machine-readable reason.
    pub reason: RefusalReason,
    /// What exactly was wrong.
    pub detail: String,
}

/// Longest refusal detail kept: decoders quote the offending input, and a
/// refusal travels in events and logs, so a megabyte field must not.
pub const MAX_REFUSAL_DETAIL: usize = 1024;

impl Refusal {
    /// A refusal with `reason` and `detail` (cut to [`MAX_REFUSAL_DETAIL`] bytes).
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_REFUSAL_DETAIL {
            let mut end = MAX_REFUSAL_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push_str("… (cut)");
        }
        Refusal { reason, detail }
    }
}
