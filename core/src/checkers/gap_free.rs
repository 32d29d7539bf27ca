//! The `gap_free` invariant: no seq is skipped.
//!
//! Checks that every final replica read contains seqs exactly 1..=n in order,
//! and that after a `DeviceCursorReset` at seq c a device receives c + 1,
//! c + 2, ... with none skipped. A stream with no cursor reset is checked from
//! its first delivery on. After a skip the stream is checked from the
//! received seq, so one skip is reported once.

use super::{
    classify_deliveries, replica_reads, sorted, violation, ClassifiedDelivery, DeliveryStep,
    Source, Violation,
};
use crate::history::{History, ReplicaRead};

pub const NAME: &str = "gap_free";

pub fn check(history: &History) -> Vec<Violation> {
    let mut violations: Vec<Violation> = replica_reads(history)
        .filter_map(check_replica_read)
        .collect();
    violations.extend(classify_deliveries(history).iter().filter_map(report_gap));
    sorted(violations)
}

/// Reports the first position of `read` whose seq is not its 1-based
/// position.
fn check_replica_read(read: &ReplicaRead) -> Option<Violation> {
    let (expected, message) = (1_u64..)
        .zip(&read.messages)
        .find(|(expected, message)| message.seq != *expected)?;

    let detail = format!(
        "conversation {}: {} has seq {} where seq {expected} belongs, so its {} \
         messages are not seqs 1..={}",
        read.conversation_id,
        Source::of_replica(read),
        message.seq,
        read.messages.len(),
        read.messages.len(),
    );
    Some(violation(NAME, detail))
}

fn report_gap(classified: &ClassifiedDelivery<'_>) -> Option<Violation> {
    let DeliveryStep::Gap { expected } = classified.step else {
        return None;
    };

    let delivery = classified.delivery;
    let detail = format!(
        "conversation {}: {} received seq {} when seq {expected} was expected next",
        delivery.conversation_id,
        classified.receiver(),
        delivery.seq,
    );
    Some(violation(NAME, detail))
}
