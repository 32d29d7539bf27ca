//! The console output of a chaos run and its history dump. A person sees
//! timestamped stage lines, a progress line every few seconds (elapsed
//! time, sends acked and failed, the current fault) and the closing summary
//! table. `history.txt` beside the report lists one event per line.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use parley_core::checkers::Violation;
use parley_core::history::{Event, History};
use parley_simulation::workload::Recorder;

use crate::html::{fault_rows, invariant_rows};
use crate::stats::Summary;

/// How often the progress line is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// The run's current stage or fault, shared with the progress printer.
#[derive(Clone)]
pub struct Stage {
    current: Arc<Mutex<String>>,
    recorder: Recorder,
}

impl Stage {
    pub fn new(recorder: Recorder) -> Stage {
        Stage {
            current: Arc::new(Mutex::new("starting".into())),
            recorder,
        }
    }

    pub fn set(&self, stage: &str) {
        *self.lock() = stage.to_string();
    }

    pub fn get(&self) -> String {
        self.lock().clone()
    }

    /// Prints `line` after the elapsed time of the run.
    pub fn announce(&self, line: &str) {
        println!("[{}] {line}", elapsed(self.recorder.now_ms()));
        let _ = std::io::stdout().flush();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, String> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn elapsed(ms: u64) -> String {
    format!("{:>7.1} s", ms as f64 / 1000.0)
}

/// Prints a progress line every `PROGRESS_INTERVAL` until aborted.
pub async fn print_progress(stage: Stage, recorder: Recorder) {
    let mut previous_acked = 0;
    loop {
        tokio::time::sleep(PROGRESS_INTERVAL).await;
        let (acked, failed) = send_outcomes(&recorder.snapshot());
        stage.announce(&format!(
            "acked {acked} (+{}) failed {failed} | {}",
            acked - previous_acked,
            stage.get()
        ));
        previous_acked = acked;
    }
}

/// Counts acknowledged and failed logical sends.
fn send_outcomes(history: &History) -> (usize, usize) {
    let mut acked = std::collections::BTreeSet::new();
    let mut failed = 0;
    for event in history.events() {
        match event {
            Event::SendAcked(ack) => {
                acked.insert(ack.op);
            }
            Event::SendFailed(_) => failed += 1,
            _ => {}
        }
    }
    (acked.len(), failed)
}

/// Returns the closing summary table as text.
pub fn summary_table(summary: &Summary) -> String {
    let sends = &summary.sends;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "sends: invoked {}, acked {}, failed {} (ambiguous {}, rejected {}), in flight at stop {}",
        sends.invoked,
        sends.acked,
        sends.failed_ambiguous + sends.failed_definite,
        sends.failed_ambiguous,
        sends.failed_definite,
        sends.in_flight
    );
    let _ = writeln!(
        text,
        "\n{:<20} {:>8}  longest window without an acked send",
        "fault kind", "injected"
    );
    for (name, count) in fault_rows(summary) {
        let window = match summary.longest_gap.get(&name) {
            Some(window) => format!(
                "{:.1} s (from {:.1} s)",
                window.length_ms() as f64 / 1000.0,
                window.start_ms as f64 / 1000.0
            ),
            None => "-".into(),
        };
        let _ = writeln!(text, "{name:<20} {count:>8}  {window}");
    }
    let _ = writeln!(text, "\n{:<24} {:>10}", "invariant", "violations");
    for (invariant, count) in invariant_rows(summary) {
        let _ = writeln!(text, "{invariant:<24} {count:>10}");
    }
    text
}

/// Prints every violation with its invariant.
pub fn print_violations(violations: &[Violation]) {
    for violation in violations {
        println!("VIOLATION [{}] {}", violation.invariant, violation.detail);
    }
}

/// Writes one line per event: the recorder's ms, then the event.
pub fn write_history(history: &History, path: &Path) -> Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    for event in history.events() {
        writeln!(writer, "{:>9} {event:?}", event.at_ms())
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    writer
        .flush()
        .with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summarize;
    use parley_core::history::{SendAcked, SendFailed};

    #[test]
    fn outcomes_count_each_acked_op_once() {
        let mut history = History::new();
        for at_ms in [10, 20] {
            history.push(SendAcked {
                op: 1,
                conversation_id: "c".into(),
                client_message_id: "m".into(),
                seq: 1,
                server_time_ms: 0,
                duplicate: at_ms == 20,
                at_ms,
            });
        }
        history.push(SendFailed {
            op: 2,
            ambiguous: true,
            at_ms: 30,
        });
        assert_eq!(send_outcomes(&history), (1, 1));
    }

    #[test]
    fn summary_table_names_every_invariant() {
        let summary = summarize(&History::new(), &[], (0, 1_000), &[]);
        let table = summary_table(&summary);
        for invariant in parley_core::checkers::INVARIANTS {
            assert!(
                table.contains(invariant),
                "{invariant} missing from\n{table}"
            );
        }
        assert!(table.contains("no fault"), "{table}");
    }

    #[test]
    fn history_dump_has_one_line_per_event() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("history.txt");
        let mut history = History::new();
        history.push(SendFailed {
            op: 2,
            ambiguous: true,
            at_ms: 30,
        });
        write_history(&history, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("SendFailed"), "{text}");
    }
}
