//! Generic webhook: the notice as JSON, signed with HMAC-SHA256.
//!
//! Headers: `X-Ferry-Event: <kind>` and
//! `X-Ferry-Signature: sha256=<hex HMAC-SHA256 of the raw body with the shared secret>`.
//! A receiver recomputes the HMAC over the bytes it received and compares in
//! constant time before trusting the body.

use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::notice::Notice;
use super::transport::{post_json, HttpClient, SendError};
use crate::config::notify::ResolvedNotify;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-ferry-signature";
/// Header carrying the event kind.
pub const EVENT_HEADER: &str = "x-ferry-event";

/// The JSON body.
pub fn body(notice: &Notice) -> Value {
    json!({
        "source": "ferry",
        "kind": notice.kind,
        "environment": notice.environment.as_ref().map(|e| e.as_str()),
        "service": notice.service.as_str(),
        "version": notice.version.as_ref().map(|v| v.as_str()),
        "action": notice.action,
        "outcome": notice.outcome,
        "actor": notice.actor,
        "summary": notice.headline(),
        "detail": notice.detail,
        "time": notice.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "command_id": notice.command_id.map(|id| id.to_string()),
    })
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable_hmac());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

// HMAC accepts keys of any length; this is never reached.
fn unreachable_hmac() -> hmac::Hmac<Sha256> {
    <hmac::Hmac<Sha256> as KeyInit>::new(&Default::default())
}

pub(super) async fn send(
    client: &HttpClient,
    settings: &ResolvedNotify,
    notice: &Notice,
) -> Result<(), SendError> {
    let Some((url, secret)) = &settings.webhook else {
        return Ok(());
    };
    let bytes =
        serde_json::to_vec(&body(notice)).map_err(|e| SendError::permanent(e.to_string()))?;
    let headers = [
        (SIGNATURE_HEADER, signature(secret, &bytes)),
        (EVENT_HEADER, notice.kind.to_owned()),
    ];
    post_json(client, url, bytes, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_rfc_4231_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
