//! Limits shared by several payloads. They sit below the payload modules so
//! that a command (which carries rollout options) and the rollout options
//! (which count replicas) both depend on them instead of on each other.

/// Most replicas one command may ask for on one agent (and so the largest
/// batch a rolling update may take).
pub const MAX_REPLICAS: u32 = 64;
