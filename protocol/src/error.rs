//! The protocol crate's one error type.

/// Errors of the protocol crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name broke its validation rule.
    #[error("invalid {what} {value:?}: must be {rule}")]
    InvalidName {
        /// Which kind of name.
        what: &'static str,
        /// The offending value (truncated).
        value: String,
        /// The rule it broke.
        rule: &'static str,
    },
    /// A subject that is not one of ferry's.
    #[error("not a ferry v1 subject: {0:?}")]
    InvalidSubject(String),
    /// A message could not be encoded.
    #[error("could not encode message: {0}")]
    Encode(#[source] serde_json::Error),
    /// A message is larger than ferry allows.
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A key could not be read, generated or used.
    #[error("key error: {0}")]
    Key(String),
    /// A field's value is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}
