//! The dashboard's settings: where it listens and who may act from it.
//! Operators' tokens are stored as SHA-256 hashes, so the configuration
//! file never holds a secret that works on the dashboard.

use std::net::SocketAddr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `[dashboard]` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct DashboardConfig {
    /// Who may pause, resume, promote, abort, roll back, scale and switch
    /// maintenance from the dashboard; none: the dashboard is read-only.
    pub operators: Vec<OperatorSettings>,
}

/// `[[dashboard.operators]]`: a name (recorded as the actor of what they
/// do) and the SHA-256 of their token, in hex.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct OperatorSettings {
    /// Name, as it appears in the audit trail.
    pub name: String,
    /// `ferry dashboard hash-token` or `printf %s TOKEN | sha256sum`.
    pub token_sha256: String,
}

/// An operator, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// Name.
    pub name: String,
    /// SHA-256 of the token.
    pub token_sha256: [u8; 32],
}

/// The dashboard's settings, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedDashboard {
    /// Where to serve the dashboard; off when absent.
    pub listen: Option<SocketAddr>,
    /// Who may act; empty: read-only.
    pub operators: Vec<Operator>,
}

/// Longest operator name accepted (the API's actor limit, with room for the
/// " (dashboard)" suffix).
const MAX_NAME_LEN: usize = 100;

impl DashboardConfig {
    /// Checks the operators and `listen` (the top-level `dashboard_listen`);
    /// returns every problem found.
    pub fn validate(
        &self,
        listen: Option<&str>,
    ) -> Result<ResolvedDashboard, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let listen = match parse_listen(listen, EXAMPLE_LISTEN) {
            Ok(listen) => listen,
            Err(e) => {
                problems.push(("dashboard_listen", e));
                None
            }
        };
        let mut operators: Vec<Operator> = Vec::new();
        for (i, o) in self.operators.iter().enumerate() {
            let name = o.name.trim();
            if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                problems.push((
                    "dashboard.operators",
                    format!("operator {}: the name must be 1 to {MAX_NAME_LEN} bytes without control characters", i + 1),
                ));
                continue;
            }
            let Some(hash) = parse_hash(&o.token_sha256) else {
                problems.push((
                    "dashboard.operators",
                    format!(
                        "operator {name}: token_sha256 must be 64 hex digits \
                         (`ferry dashboard hash-token` prints it)"
                    ),
                ));
                continue;
            };
            if operators.iter().any(|x| x.name == name) {
                problems.push((
                    "dashboard.operators",
                    format!("operator {name} is listed twice"),
                ));
            } else if operators.iter().any(|x| x.token_sha256 == hash) {
                problems.push((
                    "dashboard.operators",
                    format!(
                        "operator {name} has the token of another operator; give each their own"
                    ),
                ));
            } else {
                operators.push(Operator {
                    name: name.to_owned(),
                    token_sha256: hash,
                });
            }
        }
        if listen.is_none() && !operators.is_empty() && problems.is_empty() {
            problems.push((
                "dashboard_listen",
                format!("dashboard.operators are configured but dashboard_listen is not: set it (e.g. {EXAMPLE_LISTEN}) or remove them"),
            ));
        }
        if problems.is_empty() {
            Ok(ResolvedDashboard { listen, operators })
        } else {
            Err(problems)
        }
    }
}

/// The dashboard's address in the example configuration and the demo.
pub(crate) const EXAMPLE_LISTEN: &str = "127.0.0.1:9080";

/// Parses an optional listen address; blank counts as absent. `example`
/// is the address a problem suggests (each listener has its own).
pub(crate) fn parse_listen(
    text: Option<&str>,
    example: &str,
) -> Result<Option<SocketAddr>, String> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|e| format!("{text:?} is not an address such as {example}: {e}")),
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// The SHA-256 of a token, in hex: what `token_sha256` holds.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl ResolvedDashboard {
    /// The operator whose token this is. Every configured hash is compared,
    /// each in constant time, so the time taken says nothing about how
    /// close a guess came or which operator it matched.
    pub fn operator(&self, token: &str) -> Option<&Operator> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for operator in &self.operators {
            if constant_time_eq(&operator.token_sha256, &hash) {
                found = Some(operator);
            }
        }
        found
    }

    /// Whether actions are possible at all.
    pub fn read_only(&self) -> bool {
        self.operators.is_empty()
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(name: &str, token: &str) -> OperatorSettings {
        OperatorSettings {
            name: name.into(),
            token_sha256: hash_token(token),
        }
    }

    #[test]
    fn hash_token_is_sha256_hex_as_sha256sum_prints_it() {
        // printf %s secret | sha256sum
        assert_eq!(
            hash_token("secret"),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
    }

    #[test]
    fn a_configured_token_names_its_operator_and_others_do_not() {
        let config = DashboardConfig {
            operators: vec![operator("alice", "a-token"), operator("bob", "b-token")],
        };
        let resolved = config.validate(Some("127.0.0.1:8080")).unwrap();
        assert!(!resolved.read_only());
        assert_eq!(resolved.operator("b-token").unwrap().name, "bob");
        assert_eq!(resolved.operator("a-token").unwrap().name, "alice");
        assert!(resolved.operator("a-toke").is_none());
        assert!(resolved.operator("").is_none());
        assert!(
            resolved.operator(&hash_token("a-token")).is_none(),
            "the hash is not the token"
        );
    }

    #[test]
    fn without_operators_the_dashboard_is_read_only() {
        let resolved = DashboardConfig::default()
            .validate(Some("127.0.0.1:8080"))
            .unwrap();
        assert!(resolved.read_only());
        assert!(resolved.operator("anything").is_none());
        assert_eq!(
            DashboardConfig::default().validate(None).unwrap().listen,
            None
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let config = DashboardConfig {
            operators: vec![
                OperatorSettings {
                    name: "alice".into(),
                    token_sha256: "not-hex".into(),
                },
                operator("", "x"),
                operator("bob", "same"),
                operator("carol", "same"),
                operator("bob", "other"),
            ],
        };
        let problems = config.validate(Some("localhost")).unwrap_err();
        let text: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        assert_eq!(problems.len(), 5, "{text:#?}");
        assert!(text[0].starts_with("dashboard_listen: \"localhost\""));
        assert!(text[1].contains("alice: token_sha256 must be 64 hex digits"));
        assert!(text[2].contains("operator 2: the name"));
        assert!(text[3].contains("carol has the token of another operator"));
        assert!(text[4].contains("bob is listed twice"));
    }

    #[test]
    fn operators_without_an_address_are_a_problem() {
        let config = DashboardConfig {
            operators: vec![operator("alice", "t")],
        };
        let problems = config.validate(None).unwrap_err();
        assert_eq!(problems[0].0, "dashboard_listen");
    }
}
