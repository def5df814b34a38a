//! The one envelope every ferry message travels in: a CloudEvents 1.0 JSON event
//! with three extension attributes ferry needs from day one:
//!
//! - `expires`: RFC 3339 time after which a command must not run;
//! - `issuer`: the public nkey (ed25519) of whoever signed it;
//! - `signature`: base64 (standard, padded) ed25519 signature over the event's
//!   canonical bytes, see [`canonical_bytes`].

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::keys::{SigningKey, TrustedKeys};
use crate::{Error, Refusal, RefusalReason};

/// CloudEvents spec version ferry speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Largest message ferry accepts or sends. NATS' default max payload is 1 MiB;
/// nothing ferry sends comes close, so anything bigger is refused unread.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A payload that knows its CloudEvents `type`.
pub trait Payload {
    /// Reverse-DNS-style event type, e.g. `ferry.v1.command.deploy`.
    fn event_type(&self) -> &'static str;
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per message; the idempotency key of commands.
    pub id: Uuid,
    /// Who produced it, e.g. `/ferry/controller` or `/ferry/agent/dev`.
    pub source: String,
    /// See [`Payload::event_type`].
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it was produced.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// After this time a command is refused.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires: Option<OffsetDateTime>,
    /// Public nkey of the signer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Signature over [`canonical_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The payload.
    pub data: T,
}

impl<T: Payload + Serialize> Envelope<T> {
    /// A new unsigned envelope with a fresh id, stamped now.
    pub fn new(source: impl Into<String>, data: T) -> Self {
        Self::with_id(Uuid::new_v4(), source, data)
    }

    /// A new unsigned envelope with the given id (deterministic ids let JetStream
    /// de-duplicate the same command issued twice).
    pub fn with_id(id: Uuid, source: impl Into<String>, data: T) -> Self {
        Envelope {
            specversion: SPEC_VERSION.to_owned(),
            id,
            source: source.into(),
            event_type: data.event_type().to_owned(),
            time: OffsetDateTime::now_utc(),
            datacontenttype: "application/json".to_owned(),
            expires: None,
            issuer: None,
            signature: None,
            data,
        }
    }

    /// Sets the expiry to `ttl` after the envelope's time.
    pub fn expiring_in(mut self, ttl: std::time::Duration) -> Self {
        self.expires = Some(self.time + ttl);
        self
    }

    /// Signs the envelope: sets `issuer` and `signature`.
    pub fn sign(mut self, key: &SigningKey) -> Result<Self, Error> {
        self.issuer = Some(key.public_key());
        self.signature = None;
        let value = serde_json::to_value(&self).map_err(Error::Encode)?;
        let signature = key.sign(&canonical_bytes(&value))?;
        self.signature = Some(base64::engine::general_purpose::STANDARD.encode(signature));
        Ok(self)
    }

    /// JSON bytes to publish.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let bytes = serde_json::to_vec(self).map_err(Error::Encode)?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(Error::TooLarge {
                size: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        Ok(bytes)
    }
}

impl<T: DeserializeOwned> Envelope<T> {
    /// Decodes a message without checking any signature (events, releases, API).
    pub fn decode(raw: &[u8]) -> Result<Self, Refusal> {
        let value = parse_value(raw)?;
        from_value(value)
    }

    /// Decodes a command and checks everything an agent must before running it:
    /// size, JSON shape, spec version, a signature by a trusted key over the
    /// canonical bytes, and expiry. Replay is the caller's to check (it owns
    /// the record of executed ids).
    pub fn decode_verified(
        raw: &[u8],
        trusted: &TrustedKeys,
        now: OffsetDateTime,
    ) -> Result<Self, Refusal> {
        let mut value = parse_value(raw)?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| Refusal::new(RefusalReason::Malformed, "not a JSON object"))?;
        let signature = match object.remove("signature") {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(Refusal::new(
                    RefusalReason::Malformed,
                    "signature is not a string",
                ))
            }
            None => {
                return Err(Refusal::new(
                    RefusalReason::Unsigned,
                    "the command carries no signature",
                ))
            }
        };
        let issuer = match object.get("issuer") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(Refusal::new(
                    RefusalReason::Unsigned,
                    "the command names no issuer",
                ))
            }
        };
        if !trusted.contains(&issuer) {
            return Err(Refusal::new(
                RefusalReason::UntrustedIssuer,
                format!("issuer {issuer} is not among this agent's trusted keys"),
            ));
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature.as_bytes())
            .map_err(|_| Refusal::new(RefusalReason::BadSignature, "signature is not base64"))?;
        trusted.verify(&issuer, &canonical_bytes(&value), &signature)?;
        let envelope: Envelope<T> = from_value(value)?;
        if let Some(expires) = envelope.expires {
            if expires <= now {
                return Err(Refusal::new(
                    RefusalReason::Expired,
                    format!("the command expired at {expires}"),
                ));
            }
        } else {
            return Err(Refusal::new(
                RefusalReason::Malformed,
                "a command must carry an expiry",
            ));
        }
        Ok(envelope)
    }
}

/// The UUID v5 namespace of ferry's deterministic message ids. Fixed
/// forever: changing it would change every id.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_4c0e_9a53_4d2e_8f61_0c7a_d5e3_b219);

/// The deterministic `id` (UUID v5) of the message carrying the intent
/// `name`: the same intent always gets the same id, so JetStream drops a
/// second copy by its `Nats-Msg-Id`. The controller's ids and the wave
/// planner's step ids share it.
pub fn deterministic_id(name: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes())
}

/// The `id` of a message that could not be decoded or verified, so a refusal
/// can still be tied to the command a waiting client knows.
pub fn peek_id(raw: &[u8]) -> Option<Uuid> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Uuid,
    }
    serde_json::from_slice::<IdOnly>(raw).ok().map(|p| p.id)
}

fn parse_value(raw: &[u8]) -> Result<Value, Refusal> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(Refusal::new(
            RefusalReason::Malformed,
            format!(
                "message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
                raw.len()
            ),
        ));
    }
    serde_json::from_slice(raw)
        .map_err(|e| Refusal::new(RefusalReason::Malformed, format!("not valid JSON: {e}")))
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<Envelope<T>, Refusal> {
    let envelope: Envelope<T> = serde_json::from_value(value).map_err(|e| {
        Refusal::new(
            RefusalReason::Malformed,
            format!("not a ferry envelope: {e}"),
        )
    })?;
    if envelope.specversion != SPEC_VERSION {
        return Err(Refusal::new(
            RefusalReason::Malformed,
            format!(
                "unsupported CloudEvents specversion {:?}",
                envelope.specversion
            ),
        ));
    }
    Ok(envelope)
}

/// The bytes a signature covers: the event as JSON without its `signature`
/// attribute, object keys sorted at every level, no insignificant whitespace
/// (the RFC 8785 shape for the strings and integers ferry sends). Another
/// program can reproduce them with any JSON library that sorts keys.
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        // Only the top-level signature is excluded; a nested "signature" (an
        // approval's, say) is data and stays covered.
        Value::Object(map) => write_object(
            map.iter().filter(|(k, _)| k.as_str() != "signature"),
            &mut out,
        ),
        other => write_canonical(other, &mut out),
    }
    out
}

fn write_object<'a>(entries: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut Vec<u8>) {
    // Keys are sorted here, not by serde_json, so the bytes do not depend on
    // whether its `preserve_order` feature is on somewhere in the build.
    let mut entries: Vec<(&String, &Value)> = entries.collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
        out.push(b':');
        write_canonical(value, out);
    }
    out.push(b'}');
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_object(map.iter(), out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::command::{Action, Command};
    use crate::names::{EnvName, ServiceName};

    fn scale() -> Command {
        Command {
            environment: EnvName::new("production").unwrap(),
            service: ServiceName::new("web").unwrap(),
            actor: Some("alice".into()),
            hosts: Vec::new(),
            action: Action::Scale { replicas: 3 },
        }
    }

    fn signed(key: &SigningKey) -> Vec<u8> {
        Envelope::new("/ferry/controller", scale())
            .expiring_in(Duration::from_secs(60))
            .sign(key)
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    #[test]
    fn a_signed_command_verifies_and_round_trips() {
        let key = SigningKey::generate();
        let trusted = TrustedKeys::new([key.public_key()]).unwrap();
        let raw = signed(&key);
        let json: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "ferry.v1.command.scale");
        assert_eq!(json["data"]["action"], "scale");
        let env = Envelope::<Command>::decode_verified(&raw, &trusted, OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(env.data, scale());
        assert_eq!(env.issuer.as_deref(), Some(key.public_key().as_str()));
    }

    #[test]
    fn canonical_bytes_ignore_key_order_and_whitespace() {
        let key = SigningKey::generate();
        let trusted = TrustedKeys::new([key.public_key()]).unwrap();
        let raw = signed(&key);
        // Re-serialise with keys in another order and pretty-printed: still valid.
        let value: Value = serde_json::from_slice(&raw).unwrap();
        let mut reordered = serde_json::Map::new();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.reverse();
        for k in keys {
            reordered.insert(k.clone(), value[&k].clone());
        }
        let pretty = serde_json::to_vec_pretty(&Value::Object(reordered)).unwrap();
        Envelope::<Command>::decode_verified(&pretty, &trusted, OffsetDateTime::now_utc()).unwrap();
    }

    #[test]
    fn tampered_unsigned_untrusted_and_expired_commands_are_refused() {
        let key = SigningKey::generate();
        let trusted = TrustedKeys::new([key.public_key()]).unwrap();
        let now = OffsetDateTime::now_utc();

        let mut value: Value = serde_json::from_slice(&signed(&key)).unwrap();
        value["data"]["replicas"] = 50.into();
        let tampered = serde_json::to_vec(&value).unwrap();
        let err = Envelope::<Command>::decode_verified(&tampered, &trusted, now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::BadSignature);

        let unsigned = Envelope::new("/x", scale())
            .expiring_in(Duration::from_secs(60))
            .to_bytes()
            .unwrap();
        let err = Envelope::<Command>::decode_verified(&unsigned, &trusted, now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::Unsigned);

        let stranger = SigningKey::generate();
        let err =
            Envelope::<Command>::decode_verified(&signed(&stranger), &trusted, now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::UntrustedIssuer);

        // An attacker who swaps in a trusted issuer without its key fails the signature.
        let mut value: Value = serde_json::from_slice(&signed(&stranger)).unwrap();
        value["issuer"] = key.public_key().into();
        let forged = serde_json::to_vec(&value).unwrap();
        let err = Envelope::<Command>::decode_verified(&forged, &trusted, now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::BadSignature);

        let later = now + Duration::from_secs(61);
        let err = Envelope::<Command>::decode_verified(&signed(&key), &trusted, later).unwrap_err();
        assert_eq!(err.reason, RefusalReason::Expired);
    }

    #[test]
    fn malformed_input_is_refused_not_panicked_on() {
        let trusted = TrustedKeys::default();
        let now = OffsetDateTime::now_utc();
        for raw in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{\"signature\":1}",
            &[0xff, 0xfe][..],
        ] {
            let err = Envelope::<Command>::decode_verified(raw, &trusted, now).unwrap_err();
            assert!(
                matches!(
                    err.reason,
                    RefusalReason::Malformed | RefusalReason::Unsigned
                ),
                "{raw:?}"
            );
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        let err = Envelope::<Command>::decode_verified(&huge, &trusted, now).unwrap_err();
        assert_eq!(err.reason, RefusalReason::Malformed);
    }

    #[test]
    fn wrong_types_inside_a_validly_signed_envelope_are_malformed() {
        let key = SigningKey::generate();
        let trusted = TrustedKeys::new([key.public_key()]).unwrap();
        let mut env = Envelope::new(
            "/x",
            serde_json::json!({"environment": "dev", "service": "web", "action": "scale", "replicas": "three"}),
        );
        env.expires = Some(env.time + Duration::from_secs(60));
        env.issuer = Some(key.public_key());
        let value = serde_json::to_value(&env).unwrap();
        let sig = key.sign(&canonical_bytes(&value)).unwrap();
        env.signature = Some(base64::engine::general_purpose::STANDARD.encode(sig));
        let raw = serde_json::to_vec(&env).unwrap();
        let err = Envelope::<Command>::decode_verified(&raw, &trusted, OffsetDateTime::now_utc())
            .unwrap_err();
        assert_eq!(err.reason, RefusalReason::Malformed);
    }

    impl Payload for Value {
        fn event_type(&self) -> &'static str {
            "test.value"
        }
    }
}
