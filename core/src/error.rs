//! Errors of parley-core's own API: invalid limits, rejected snapshots and
//! broken state invariants.
//!
//! Commands never fail with a `CoreError`. A rejected command yields a
//! `proto::Rejection` inside its `proto::CommandResult`, because a rejection is
//! a normal, replicated outcome that every replica must agree on.

/// An error from [`crate::Limits::validate`], [`crate::ShardState::validate`]
/// or [`crate::ShardState::decode_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A limit has a value the state machine cannot work with.
    #[error("invalid limit {field} = {value}: {requirement}")]
    InvalidLimit {
        field: &'static str,
        value: u64,
        /// The rule the value breaks and the value to use instead.
        requirement: String,
    },

    /// The snapshot bytes are not a well-formed snapshot of this format.
    #[error(
        "corrupt snapshot: {detail}; discard it and fetch the snapshot again from a healthy replica"
    )]
    CorruptSnapshot { detail: String },

    /// The snapshot was written in a format this build cannot read.
    #[error(
        "unsupported snapshot format version {found}: this build reads only version {supported}; \
         install a snapshot from a replica running the same build"
    )]
    UnsupportedSnapshotFormat { found: u32, supported: u32 },

    /// The state breaks an invariant that `apply` keeps. `decode_snapshot`
    /// reports this as `CorruptSnapshot`, so on a live state it means a bug in
    /// parley-core.
    #[error(
        "state invariant violated: {detail}; this is a bug in parley-core, so report it \
         with the command log that produced the state"
    )]
    InvariantViolated { detail: String },
}

impl CoreError {
    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        Self::CorruptSnapshot {
            detail: detail.into(),
        }
    }

    pub(crate) fn invariant(detail: impl Into<String>) -> Self {
        Self::InvariantViolated {
            detail: detail.into(),
        }
    }
}
