//! Promotion through the pipeline: a release enters the first environment
//! by itself and each next one once it is eligible (the previous environment
//! has run it successfully for the soak time), approved (a quorum of
//! reviewers' signed approvals) and past the security gate (no critical
//! vulnerabilities, or a security override quorum).
//!
//! Every promotion is a record in the promotions bucket; every change to one
//! is a compare-and-set, and the deploy it ends in has a deterministic id, so
//! two controller instances advancing the same promotion issue one command.
//! Each transition worth knowing (requested, waiting for approval, blocked,
//! approved, rejected) is appended to the history (audit) stream under a
//! deterministic id, so it is recorded, and notified, once.

mod advance;
mod approvals;
mod review;
mod view;

pub(crate) use crate::records::PromotionRecord;
pub(crate) use advance::{advance, on_deployed, on_release};
pub(crate) use approvals::{is_author, reviewer_name, tally};
pub(crate) use review::{approve, promote, reject};
pub(crate) use view::{approvals_for_deploy, list};
