//! The figures a chaos run reports, computed from its history and its
//! fault spans: operation counts, acknowledged sends and send latency per
//! second, and the longest stretch without an acknowledged send while each
//! fault kind was active.

use std::collections::BTreeMap;

use parley_core::checkers::Violation;
use parley_core::history::{Event, History};

use crate::schedule::FaultKind;

/// Key of the unavailability window during which no fault was active.
pub const NO_FAULT: &str = "no fault";

/// One injected fault as it happened, on the recorder's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpan {
    pub kind: FaultKind,
    pub description: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Logical sends by outcome. A send retried after a timeout counts once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendCounts {
    pub invoked: u64,
    pub acked: u64,
    /// Failed sends that may have committed (timeouts, unavailable).
    pub failed_ambiguous: u64,
    /// Failed sends that the cluster rejected.
    pub failed_definite: u64,
    /// Sends still waiting for a reply when the senders stopped.
    pub in_flight: u64,
}

/// Acknowledged sends and send latency of one second of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Second {
    pub second: u64,
    /// Sends acknowledged during this second.
    pub acked: u64,
    /// Median latency of those sends, from first invocation to ack, in ms.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

/// A stretch of the fault phase with no acknowledged send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Window {
    pub fn length_ms(&self) -> u64 {
        self.end_ms - self.start_ms
    }
}

/// The figures of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub sends: SendCounts,
    pub seconds: Vec<Second>,
    pub faults_by_kind: BTreeMap<FaultKind, u64>,
    /// Longest window without an ack that overlaps a fault of each kind,
    /// keyed by kind name or `NO_FAULT`.
    pub longest_gap: BTreeMap<String, Window>,
    pub violations_by_invariant: BTreeMap<&'static str, u64>,
}

/// Computes the summary of a run whose faults ran from `phase.0` to
/// `phase.1` milliseconds on the recorder's clock.
pub fn summarize(
    history: &History,
    spans: &[FaultSpan],
    phase: (u64, u64),
    violations: &[Violation],
) -> Summary {
    let sends = SendLog::from_history(history);
    let mut faults_by_kind = BTreeMap::new();
    for span in spans {
        *faults_by_kind.entry(span.kind).or_default() += 1;
    }
    let mut violations_by_invariant = BTreeMap::new();
    for violation in violations {
        *violations_by_invariant
            .entry(violation.invariant)
            .or_default() += 1;
    }
    Summary {
        sends: sends.counts(),
        seconds: sends.per_second(),
        faults_by_kind,
        longest_gap: longest_gaps(&sends.ack_times(), spans, phase),
        violations_by_invariant,
    }
}

/// Each logical send's first invocation and its outcome.
#[derive(Default)]
struct SendLog {
    invoked_ms: BTreeMap<u64, u64>,
    acked_ms: BTreeMap<u64, u64>,
    failed: BTreeMap<u64, bool>,
}

impl SendLog {
    fn from_history(history: &History) -> SendLog {
        let mut log = SendLog::default();
        for event in history.events() {
            match event {
                Event::SendInvoked(invoked) => {
                    log.invoked_ms.entry(invoked.op).or_insert(invoked.at_ms);
                }
                Event::SendAcked(acked) => {
                    log.acked_ms.entry(acked.op).or_insert(acked.at_ms);
                }
                Event::SendFailed(failed) => {
                    log.failed.entry(failed.op).or_insert(failed.ambiguous);
                }
                _ => {}
            }
        }
        log
    }

    fn counts(&self) -> SendCounts {
        let failed_ambiguous = self.failed.values().filter(|ambiguous| **ambiguous).count();
        let failed_definite = self.failed.len() - failed_ambiguous;
        let completed = self.acked_ms.len() + self.failed.len();
        SendCounts {
            invoked: self.invoked_ms.len() as u64,
            acked: self.acked_ms.len() as u64,
            failed_ambiguous: failed_ambiguous as u64,
            failed_definite: failed_definite as u64,
            in_flight: self.invoked_ms.len().saturating_sub(completed) as u64,
        }
    }

    fn ack_times(&self) -> Vec<u64> {
        let mut times: Vec<u64> = self.acked_ms.values().copied().collect();
        times.sort_unstable();
        times
    }

    fn per_second(&self) -> Vec<Second> {
        let mut latencies: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (op, acked_ms) in &self.acked_ms {
            let invoked_ms = self.invoked_ms.get(op).copied().unwrap_or(*acked_ms);
            latencies
                .entry(acked_ms / 1000)
                .or_default()
                .push(acked_ms.saturating_sub(invoked_ms));
        }
        let last = latencies.keys().next_back().copied().unwrap_or(0);
        (0..=last)
            .map(|second| {
                let mut values = latencies.remove(&second).unwrap_or_default();
                values.sort_unstable();
                Second {
                    second,
                    acked: values.len() as u64,
                    p50_ms: percentile(&values, 50),
                    p99_ms: percentile(&values, 99),
                }
            })
            .collect()
    }
}

/// Returns the nearest-rank percentile of sorted `values`.
fn percentile(values: &[u64], percent: usize) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let rank = (values.len() * percent).div_ceil(100).max(1);
    Some(values[rank - 1])
}

/// Splits the phase at every ack and keeps, per fault kind overlapping a
/// window (or `NO_FAULT`), the longest window.
fn longest_gaps(
    ack_times: &[u64],
    spans: &[FaultSpan],
    (start_ms, end_ms): (u64, u64),
) -> BTreeMap<String, Window> {
    let mut bounds = vec![start_ms];
    bounds.extend(
        ack_times
            .iter()
            .copied()
            .filter(|at| (start_ms..=end_ms).contains(at)),
    );
    bounds.push(end_ms);
    let mut longest: BTreeMap<String, Window> = BTreeMap::new();
    for pair in bounds.windows(2) {
        let window = Window {
            start_ms: pair[0],
            end_ms: pair[1],
        };
        let mut keys: Vec<String> = spans
            .iter()
            .filter(|span| span.start_ms < window.end_ms && span.end_ms > window.start_ms)
            .map(|span| span.kind.name().to_string())
            .collect();
        if keys.is_empty() {
            keys.push(NO_FAULT.to_string());
        }
        for key in keys {
            let entry = longest.entry(key).or_insert(window);
            if window.length_ms() > entry.length_ms() {
                *entry = window;
            }
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_core::history::{SendAcked, SendFailed, SendInvoked};

    fn invoked(op: u64, at_ms: u64) -> SendInvoked {
        SendInvoked {
            op,
            conversation_id: "c".into(),
            sender_user: "u".into(),
            sender_device: "d".into(),
            client_message_id: format!("m{op}"),
            at_ms,
        }
    }

    fn acked(op: u64, at_ms: u64) -> SendAcked {
        SendAcked {
            op,
            conversation_id: "c".into(),
            client_message_id: format!("m{op}"),
            seq: op,
            server_time_ms: 0,
            duplicate: false,
            at_ms,
        }
    }

    fn span(kind: FaultKind, start_ms: u64, end_ms: u64) -> FaultSpan {
        FaultSpan {
            kind,
            description: kind.name().into(),
            start_ms,
            end_ms,
        }
    }

    #[test]
    fn sends_counted_once_per_op() {
        let mut history = History::new();
        history.push(invoked(1, 0));
        history.push(invoked(1, 50));
        history.push(acked(1, 100));
        history.push(invoked(2, 10));
        history.push(SendFailed {
            op: 2,
            ambiguous: true,
            at_ms: 200,
        });
        history.push(invoked(3, 20));
        history.push(SendFailed {
            op: 3,
            ambiguous: false,
            at_ms: 30,
        });
        history.push(invoked(4, 40));
        let counts = SendLog::from_history(&history).counts();
        let expected = SendCounts {
            invoked: 4,
            acked: 1,
            failed_ambiguous: 1,
            failed_definite: 1,
            in_flight: 1,
        };
        assert_eq!(counts, expected);
    }

    #[test]
    fn latency_runs_from_first_invocation() {
        let mut history = History::new();
        history.push(invoked(1, 900));
        history.push(invoked(1, 1_500));
        history.push(acked(1, 2_100));
        let seconds = SendLog::from_history(&history).per_second();
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0].acked, 0);
        assert_eq!(seconds[0].p50_ms, None);
        assert_eq!(seconds[2].acked, 1);
        assert_eq!(seconds[2].p50_ms, Some(1_200));
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), Some(50));
        assert_eq!(percentile(&values, 99), Some(99));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn gap_goes_to_overlapping_fault() {
        let spans = [span(FaultKind::Pause, 1_000, 3_000)];
        let gaps = longest_gaps(&[500, 900, 3_500, 3_600], &spans, (0, 4_000));
        assert_eq!(
            gaps["pause"],
            Window {
                start_ms: 900,
                end_ms: 3_500
            }
        );
        assert_eq!(
            gaps[NO_FAULT],
            Window {
                start_ms: 0,
                end_ms: 500
            }
        );
    }

    #[test]
    fn gap_spanning_two_faults_counts_for_both() {
        let spans = [
            span(FaultKind::Delay, 100, 200),
            span(FaultKind::PowerCut, 300, 400),
        ];
        let gaps = longest_gaps(&[50, 450], &spans, (0, 500));
        assert_eq!(gaps["delay"].length_ms(), 400);
        assert_eq!(gaps["power_cut"].length_ms(), 400);
        assert_eq!(gaps[NO_FAULT].length_ms(), 50);
    }

    #[test]
    fn no_acks_makes_whole_phase_one_gap() {
        let gaps = longest_gaps(&[], &[], (1_000, 5_000));
        assert_eq!(gaps[NO_FAULT].length_ms(), 4_000);
    }

    #[test]
    fn summary_counts_faults_and_violations() {
        let spans = [
            span(FaultKind::Pause, 0, 10),
            span(FaultKind::Pause, 20, 30),
            span(FaultKind::Delay, 40, 50),
        ];
        let violations = [Violation {
            invariant: "gap_free",
            detail: "seq 3 skipped".into(),
        }];
        let summary = summarize(&History::new(), &spans, (0, 60), &violations);
        assert_eq!(summary.faults_by_kind[&FaultKind::Pause], 2);
        assert_eq!(summary.faults_by_kind[&FaultKind::Delay], 1);
        assert_eq!(summary.violations_by_invariant["gap_free"], 1);
    }
}
