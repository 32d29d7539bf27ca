//! The `timestamps_monotonic` invariant: within a conversation, server time
//! never decreases as seq increases.
//!
//! Merges the server times that send acknowledgements, deliveries and final
//! replica reads report for each (conversation, seq). Checks that every
//! report of one seq has the same server time as the first report of it, and
//! that, over the seqs observed in seq order, no seq has an earlier server
//! time than the seq before it. Equal times are allowed.

use std::collections::BTreeMap;

use super::{sorted, violation, Source, Violation};
use crate::history::{Event, History};

pub const NAME: &str = "timestamps_monotonic";

pub fn check(history: &History) -> Vec<Violation> {
    let mut times = ServerTimes::default();
    for event in history.events() {
        times.record_event(event);
    }

    let mut violations = times.violations;
    for (conversation_id, times_by_seq) in &times.first_reports {
        violations.extend(check_non_decreasing(conversation_id, times_by_seq));
    }
    sorted(violations)
}

/// The first report of one seq's server time.
#[derive(Clone, Copy)]
struct TimeReport<'a> {
    server_time_ms: u64,
    source: Source<'a>,
}

#[derive(Default)]
struct ServerTimes<'a> {
    first_reports: BTreeMap<&'a str, BTreeMap<u64, TimeReport<'a>>>,
    violations: Vec<Violation>,
}

impl<'a> ServerTimes<'a> {
    fn record_event(&mut self, event: &'a Event) {
        match event {
            Event::SendAcked(ack) => {
                let source = Source::Ack { op: ack.op };
                self.record(&ack.conversation_id, ack.seq, ack.server_time_ms, source);
            }
            Event::DeliveredToDevice(delivery) => {
                let source = Source::of_delivery(delivery);
                let conversation_id = &delivery.conversation_id;
                self.record(
                    conversation_id,
                    delivery.seq,
                    delivery.server_time_ms,
                    source,
                );
            }
            Event::ReplicaRead(read) => {
                let source = Source::of_replica(read);
                for message in &read.messages {
                    let conversation_id = &read.conversation_id;
                    self.record(conversation_id, message.seq, message.server_time_ms, source);
                }
            }
            _ => {}
        }
    }

    /// Stores the first report of `seq` and reports a later one that
    /// disagrees with it.
    fn record(
        &mut self,
        conversation_id: &'a str,
        seq: u64,
        server_time_ms: u64,
        source: Source<'a>,
    ) {
        let report = TimeReport {
            server_time_ms,
            source,
        };
        let first = *self
            .first_reports
            .entry(conversation_id)
            .or_default()
            .entry(seq)
            .or_insert(report);
        if first.server_time_ms == server_time_ms {
            return;
        }

        let detail = format!(
            "conversation {conversation_id} seq {seq}: {source} has server time \
             {server_time_ms} ms, but {} has {} ms",
            first.source, first.server_time_ms,
        );
        self.violations.push(violation(NAME, detail));
    }
}

fn check_non_decreasing(
    conversation_id: &str,
    times_by_seq: &BTreeMap<u64, TimeReport<'_>>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut previous: Option<(u64, TimeReport<'_>)> = None;

    for (&seq, &report) in times_by_seq {
        if let Some((previous_seq, previous_report)) = previous {
            if report.server_time_ms < previous_report.server_time_ms {
                let detail = format!(
                    "conversation {conversation_id}: seq {seq} has server time {} ms in {}, \
                     earlier than {} ms of seq {previous_seq} in {}",
                    report.server_time_ms,
                    report.source,
                    previous_report.server_time_ms,
                    previous_report.source,
                );
                violations.push(violation(NAME, detail));
            }
        }
        previous = Some((seq, report));
    }

    violations
}
