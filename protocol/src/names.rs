//! Validated names. Environment and service names become NATS subject tokens,
//! container names and (later) Kubernetes object names, so they are held to the
//! DNS-label rule at the edge; versions are looser (semver with build metadata).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

const MAX_LABEL: usize = 63;
const MAX_VERSION: usize = 128;

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn is_version(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_VERSION
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:ident, $what:literal, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value`, returning a clear error naming the rule it broke.
            pub fn new(value: impl Into<String>) -> Result<Self, Error> {
                let value = value.into();
                if $check(&value) {
                    Ok(Self(value))
                } else {
                    Err(Error::InvalidName { what: $what, value: truncate(&value), rule: $rule })
                }
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self, Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// Keeps error messages bounded when someone sends a megabyte as a name.
fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}

name_type!(
    /// An environment name such as `dev`, `acceptance` or `production`.
    EnvName,
    is_dns_label,
    "environment",
    "1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
);
name_type!(
    /// A service name such as `checkout`.
    ServiceName,
    is_dns_label,
    "service",
    "1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
);
name_type!(
    /// The name of one host (machine, VM, container) of an environment, as
    /// its agent reports it: several agents may serve one environment, and
    /// heartbeats and events name the host they come from.
    HostName,
    is_dns_label,
    "host",
    "1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
);
name_type!(
    /// A release version such as `1.4.2` or `2024.06.01-rc.1+build.7`.
    Version,
    is_version,
    "version",
    "1-128 characters of A-Z, a-z, 0-9, '.', '-', '_' and '+', starting with a letter or digit"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["dev", "acceptance", "production", "svc-1", "a"] {
            assert!(EnvName::new(ok).is_ok(), "{ok}");
            assert!(ServiceName::new(ok).is_ok(), "{ok}");
        }
        for ok in ["1.0.0", "2.3.4-rc.1+build.5", "v7", "20240601_1"] {
            assert!(Version::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_names_that_would_break_subjects_paths_or_shells() {
        for bad in [
            "", "Dev", "a.b", "a*", ">", "a b", "-a", "a-", "../x", "a;rm", "$(x)", "é",
        ] {
            assert!(EnvName::new(bad).is_err(), "{bad:?}");
            assert!(ServiceName::new(bad).is_err(), "{bad:?}");
        }
        assert!(ServiceName::new("x".repeat(64)).is_err());
        for bad in [
            "",
            ".1",
            "1 0",
            "1/0",
            "../1",
            "1;2",
            "$v",
            &"1".repeat(129),
        ] {
            assert!(Version::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_validates() {
        let err = serde_json::from_str::<ServiceName>("\"a.b\"").unwrap_err();
        assert!(err.to_string().contains("service"), "{err}");
        let ok: Version = serde_json::from_str("\"1.2.3\"").unwrap();
        assert_eq!(ok.as_str(), "1.2.3");
    }
}
