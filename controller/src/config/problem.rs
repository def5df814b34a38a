//! One problem found in the configuration: a leaf every layer may name
//! (validation, the store's stream checks, the error type) without reaching
//! the configuration's other types.

use std::fmt;

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The setting.
    pub field: String,
    /// What is wrong with it and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
