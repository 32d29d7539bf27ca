//! Constructors for `proto::CommandResult` and `proto::Rejection`.
//!
//! Every result carries `version = COMMAND_VERSION`, including the rejection
//! of a command with another version.

use crate::proto::command_result::Outcome;
use crate::proto::{CommandResult, Rejection, RejectionCode};
use crate::COMMAND_VERSION;

pub(crate) fn reject(code: RejectionCode, message: String) -> Rejection {
    Rejection {
        code: code.into(),
        message,
    }
}

pub(crate) fn result(outcome: Outcome) -> CommandResult {
    CommandResult {
        version: COMMAND_VERSION,
        outcome: Some(outcome),
    }
}

/// Wraps the outcome of one command handler into a `CommandResult`.
pub(crate) fn into_result(outcome: Result<Outcome, Rejection>) -> CommandResult {
    match outcome {
        Ok(outcome) => result(outcome),
        Err(rejection) => result(Outcome::Rejected(rejection)),
    }
}
