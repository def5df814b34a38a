//! Hostile-input harness shared by the cargo-fuzz target (`fuzz/`) and the
//! stable property test CI runs (`tests` below): every decoder that reads
//! bytes off the wire, fed the same input, must answer with a value or a
//! [`Refusal`] naming a reason, never panic, and never hold on to more than
//! the input's size.

use std::time::Duration;

use time::OffsetDateTime;

use crate::command::{Action, Command, ReleaseSpec};
use crate::envelope::{peek_id, Envelope};
use crate::event::{AgentEvent, ServiceEvent};
use crate::keys::{SigningKey, TrustedKeys};
use crate::names::{EnvName, ServiceName, Version};
use crate::release::Release;
use crate::subject::Subject;
use crate::{Error, Refusal};

/// What each decoder said about one input.
#[derive(Debug)]
pub struct Verdicts {
    /// `Envelope::<Command>::decode_verified` with the harness's trusted key.
    pub verified: Result<(), Refusal>,
    /// `Envelope::<Command>::decode`, plus [`Command::validate`] when it decoded.
    pub command: Result<(), Refusal>,
    /// `Envelope::<ServiceEvent>::decode`.
    pub service_event: Result<(), Refusal>,
    /// `Envelope::<AgentEvent>::decode`.
    pub agent_event: Result<(), Refusal>,
    /// `Envelope::<Release>::decode`, plus [`Release::validate`].
    pub release: Result<(), Refusal>,
    /// `Subject::parse` of the input read as (lossy) UTF-8.
    pub subject: Result<(), Error>,
}

/// The key the harness signs seeds with and trusts; a fixed seed, so a corpus
/// of signed envelopes stays valid across fuzzing runs.
pub fn harness_key() -> Result<SigningKey, Error> {
    SigningKey::from_seed(HARNESS_SEED)
}

const HARNESS_SEED: &str = "SUAL2SOVUE2J2JIPTZT2LB3VEK6KUSA6O46BLZPX4WX6TFXYTZVCXPC6ZU";

/// Feeds `data` to every decoder. `now` is fixed by callers that want
/// reproducible verdicts for signed, expiring seeds.
pub fn decode_everything(data: &[u8], trusted: &TrustedKeys, now: OffsetDateTime) -> Verdicts {
    let invalid = |e: Error| Refusal::new(crate::RefusalReason::Invalid, e.to_string());
    let _ = peek_id(data);
    Verdicts {
        verified: Envelope::<Command>::decode_verified(data, trusted, now).map(|_| ()),
        command: Envelope::<Command>::decode(data).and_then(|e| e.data.validate().map_err(invalid)),
        service_event: Envelope::<ServiceEvent>::decode(data).map(|_| ()),
        agent_event: Envelope::<AgentEvent>::decode(data).map(|_| ()),
        release: Envelope::<Release>::decode(data).and_then(|e| e.data.validate().map_err(invalid)),
        subject: Subject::parse(&String::from_utf8_lossy(data)).map(|_| ()),
    }
}

/// Valid, signed messages to start mutating from: a deploy, a scale and a
/// release, as the controller and CI send them.
pub fn seeds(key: &SigningKey, now: OffsetDateTime) -> Result<Vec<Vec<u8>>, Error> {
    let environment = EnvName::new("dev")?;
    let service = ServiceName::new("web")?;
    let release = ReleaseSpec {
        version: Version::new("1.2.3")?,
        artifact: "/opt/ferry/web-1.2.3".into(),
        digest: Some("sha256:00".into()),
        env: [("GREETING".to_owned(), "hello".to_owned())].into(),
    };
    let command = |action| Command {
        environment: environment.clone(),
        service: service.clone(),
        actor: Some("ci".into()),
        hosts: Vec::new(),
        action,
    };
    let signed = |c: Command| -> Result<Vec<u8>, Error> {
        let mut envelope =
            Envelope::new("/ferry/controller", c).expiring_in(Duration::from_secs(3600));
        envelope.time = now;
        envelope.expires = Some(now + Duration::from_secs(3600));
        envelope.sign(key)?.to_bytes()
    };
    let deploy = signed(command(Action::Deploy {
        release: release.clone(),
        replicas: Some(2),
        health: None,
        approvals: Vec::new(),
        rollout: None,
        hotfix: false,
    }))?;
    let scale = signed(command(Action::Scale { replicas: 3 }))?;
    let published = Envelope::new(
        "/ci",
        Release {
            service: service.clone(),
            version: release.version.clone(),
            artifact: release.artifact.clone(),
            digest: None,
            env: release.env.clone(),
            secret_env: Default::default(),
            author: Some("ci".into()),
            commit: None,
            hotfix: false,
            scan: Some(crate::release::ScanSummary {
                critical: 1,
                ..Default::default()
            }),
            scan_findings: vec![crate::release::ScanFinding {
                id: "CVE-2023-0286".into(),
                severity: crate::release::Severity::Critical,
                package: Some("openssl".into()),
                installed_version: Some("3.0.7-r0".into()),
                fixed_version: Some("3.0.8-r0".into()),
            }],
        },
    )
    .to_bytes()?;
    Ok(vec![deploy, scale, published])
}

/// A small deterministic generator (xorshift64*), so the property test needs
/// no extra crate and a failure names the seed that reproduces it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed odd number).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Values that break types or limits: wrong JSON types, huge and negative
/// numbers, long strings, deep nesting, names with shell and subject
/// metacharacters, paths that climb, variables that try to take over.
fn hostile_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(18) {
        0 => json!(null),
        1 => json!(true),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(1e308),
        5 => serde_json::Value::String("x".repeat(rng.below(70_000))),
        6 => json!([]),
        7 => json!({}),
        8 => {
            let depth = rng.below(400);
            let mut text = "[".repeat(depth);
            text.push_str(&"]".repeat(depth));
            serde_json::from_str(&text).unwrap_or(json!(null))
        }
        9 => json!("web;rm -rf /"),
        10 => json!("$(id)"),
        11 => json!("`id`"),
        12 => json!("../../bin/sh"),
        13 => json!("/tmp/../bin/sh"),
        14 => json!({"PORT": "1", "FERRY_SERVICE": "x", "LD_PRELOAD": "/tmp/x.so"}),
        15 => json!({"A=B": "1", "NUL": "a\u{0}b"}),
        16 => json!("ferry.v1.cmd.*.>"),
        _ => json!("é\u{202e}"),
    }
}

/// One mutation of `seed`: structural (a field's value replaced by a hostile
/// one, a field removed, a type swapped) or byte-level (truncation, flips,
/// splices, repetition).
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    if rng.below(2) == 0 {
        if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(seed) {
            mutate_value(&mut value, rng, 0);
            if let Ok(bytes) = serde_json::to_vec(&value) {
                return bytes;
            }
        }
    }
    let mut bytes = seed.to_vec();
    match rng.below(5) {
        0 => bytes.truncate(rng.below(bytes.len() + 1)),
        1 => {
            for _ in 0..=rng.below(8) {
                let at = rng.below(bytes.len());
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            let at = rng.below(bytes.len() + 1);
            let junk: &[u8] = match rng.below(4) {
                0 => b"\"",
                1 => b"{\"a\":",
                2 => &[0xff, 0x00],
                _ => b"]]]]",
            };
            bytes.splice(at..at, junk.iter().copied());
        }
        3 => {
            let from = rng.below(bytes.len());
            let to = from + rng.below(bytes.len() - from + 1);
            let chunk = bytes[from..to].to_vec();
            for _ in 0..rng.below(16) {
                bytes.extend_from_slice(&chunk);
            }
        }
        _ => bytes.reverse(),
    }
    bytes
}

fn mutate_value(value: &mut serde_json::Value, rng: &mut Rng, depth: usize) {
    use serde_json::Value;
    match value {
        Value::Object(map) if !map.is_empty() && depth < 6 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.below(keys.len())];
            match rng.below(4) {
                0 => {
                    map.remove(key);
                }
                1 => {
                    map.insert(key.clone(), hostile_value(rng));
                }
                _ => {
                    if let Some(inner) = map.get_mut(key) {
                        mutate_value(inner, rng, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 6 => {
            let at = rng.below(items.len());
            mutate_value(&mut items[at], rng, depth + 1);
        }
        other => *other = hostile_value(rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MAX_MESSAGE_BYTES;

    /// The property CI checks on stable Rust: thousands of mutations of
    /// valid signed messages, each decoded by every decoder without a panic;
    /// anything that is not the untouched seed is refused with a reason.
    #[test]
    fn mutated_messages_are_refused_with_a_reason_never_panicked_on() {
        let key = harness_key().unwrap();
        let trusted = TrustedKeys::new([key.public_key()]).unwrap();
        let now = OffsetDateTime::now_utc();
        let seeds = seeds(&key, now).unwrap();
        // The seeds themselves decode: the harness exercises the real paths.
        assert!(decode_everything(&seeds[0], &trusted, now).verified.is_ok());
        assert!(decode_everything(&seeds[1], &trusted, now).verified.is_ok());
        assert!(decode_everything(&seeds[2], &trusted, now).release.is_ok());

        let mut refused = 0;
        for case in 0..6_000u64 {
            let mut rng = Rng::new(case + 1);
            let seed = &seeds[rng.below(seeds.len())];
            let mut input = mutate(seed, &mut rng);
            // Mutations of mutations reach further from the valid shape.
            for _ in 0..rng.below(3) {
                input = mutate(&input, &mut rng);
            }
            let verdicts = decode_everything(&input, &trusted, now);
            if input != *seed {
                // A change anywhere breaks the signature (or the JSON) unless
                // it only moved insignificant bytes; either way a refusal has
                // a reason and a sentence.
                if let Err(refusal) = &verdicts.verified {
                    assert!(!refusal.detail.is_empty(), "case {case}: empty detail");
                    refused += 1;
                }
            }
            for r in [
                &verdicts.command,
                &verdicts.service_event,
                &verdicts.agent_event,
                &verdicts.release,
            ] {
                if let Err(refusal) = r {
                    assert!(!refusal.detail.is_empty(), "case {case}: empty detail");
                    assert!(
                        refusal.detail.len() < 4 * 1024,
                        "case {case}: detail of {} bytes",
                        refusal.detail.len()
                    );
                }
            }
        }
        assert!(refused > 5_000, "only {refused} of 6000 mutations refused");
    }

    #[test]
    fn oversize_deeply_nested_and_non_utf8_input_is_refused() {
        let key = harness_key().unwrap();
        let trusted = TrustedKeys::new([key.public_key()]).unwrap();
        let now = OffsetDateTime::now_utc();
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let oversize = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        for input in [deep.as_bytes(), &oversize, &[0xc3, 0x28, 0xff][..], b"\0"] {
            let v = decode_everything(input, &trusted, now);
            assert!(v.verified.is_err() && v.command.is_err() && v.release.is_err());
            assert!(v.subject.is_err());
        }
    }

    #[test]
    fn hostile_names_paths_and_variables_in_a_release_are_refused() {
        let key = harness_key().unwrap();
        let now = OffsetDateTime::now_utc();
        let seeds = seeds(&key, now).unwrap();
        let release: serde_json::Value = serde_json::from_slice(&seeds[2]).unwrap();
        let cases: [(&str, serde_json::Value); 10] = [
            ("service", "web;rm -rf /".into()),
            ("service", "$(id)".into()),
            ("service", "`id`".into()),
            ("artifact", "../../bin/sh".into()),
            ("artifact", "/tmp/../bin/sh".into()),
            ("artifact", "/bin/sh -c id".into()),
            ("env", serde_json::json!({"PORT": "1"})),
            ("env", serde_json::json!({"FERRY_SERVICE": "x"})),
            ("env", serde_json::json!({"LD_PRELOAD": "/tmp/evil.so"})),
            ("env", serde_json::json!({"A": "a\u{0}b"})),
        ];
        for (field, bad) in cases {
            let mut value = release.clone();
            value["data"][field] = bad.clone();
            let raw = serde_json::to_vec(&value).unwrap();
            let refusal = Envelope::<Release>::decode(&raw)
                .map_err(|r| r.detail)
                .and_then(|e| e.data.validate().map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(!refusal.is_empty(), "{field}={bad}");
        }
    }
}

#[cfg(test)]
mod corpus {
    /// Writes the signed seeds where cargo-fuzz looks for its corpus:
    /// `cargo test -p ferry-protocol write_seed_corpus -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus/decode; run by hand before fuzzing"]
    fn write_seed_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
        std::fs::create_dir_all(&dir).unwrap();
        let key = super::harness_key().unwrap();
        // Far-future time, so the signed seeds stay unexpired for fuzzing runs.
        let now =
            time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(10 * 365 * 86_400);
        for (i, seed) in super::seeds(&key, now).unwrap().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}.json")), seed).unwrap();
        }
    }
}
