//! The scenarios, one module each; each adds one section to the report.

pub mod appends;
pub mod crowd;
pub mod delivery;
pub mod failover;
pub mod typing;
