//! `DedupWindow`: the most recent client message ids of one sender device in
//! one conversation, which make append retries idempotent.
//!
//! Invariants: a client message id appears at most once, and the index always
//! matches the entry list. Entries stay in insertion order. Callers insert in
//! append order, so seqs increase, which `ShardState::validate` checks.

use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DedupWindow {
    /// `(client_message_id, seq)` pairs, oldest first.
    entries: VecDeque<(String, u64)>,
    /// Index of `entries` by client message id.
    seq_by_client_id: BTreeMap<String, u64>,
}

impl DedupWindow {
    /// Builds a window from `(client_message_id, seq)` pairs, oldest first.
    /// Returns `None` when a client message id repeats.
    pub(crate) fn from_entries(entries: Vec<(String, u64)>) -> Option<Self> {
        let mut window = Self::default();

        for (client_message_id, seq) in entries {
            let previous = window
                .seq_by_client_id
                .insert(client_message_id.clone(), seq);
            if previous.is_some() {
                return None;
            }
            window.entries.push_back((client_message_id, seq));
        }

        Some(window)
    }

    pub(crate) fn seq_of(&self, client_message_id: &str) -> Option<u64> {
        self.seq_by_client_id.get(client_message_id).copied()
    }

    /// Records a newly appended message and evicts the oldest entries beyond
    /// `capacity`. The caller must first check with `seq_of` that the id is
    /// not in the window, because a second entry would break the index.
    pub(crate) fn remember(&mut self, client_message_id: String, seq: u64, capacity: usize) {
        debug_assert_eq!(self.seq_of(&client_message_id), None);

        self.seq_by_client_id.insert(client_message_id.clone(), seq);
        self.entries.push_back((client_message_id, seq));

        while self.entries.len() > capacity {
            if let Some((evicted, _)) = self.entries.pop_front() {
                self.seq_by_client_id.remove(&evicted);
            }
        }
    }

    /// Returns the `(client_message_id, seq)` pairs, oldest first.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries
            .iter()
            .map(|(client_message_id, seq)| (client_message_id.as_str(), *seq))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_evicts_oldest_beyond_capacity() {
        let mut window = DedupWindow::default();

        window.remember("a".to_owned(), 1, 2);
        window.remember("b".to_owned(), 2, 2);
        window.remember("c".to_owned(), 3, 2);

        assert_eq!(window.seq_of("a"), None);
        assert_eq!(window.seq_of("b"), Some(2));
        assert_eq!(window.seq_of("c"), Some(3));
        assert_eq!(window.len(), 2);
    }

    #[test]
    fn window_from_entries_rejects_repeated_id() {
        let entries = vec![("a".to_owned(), 1), ("a".to_owned(), 2)];

        assert_eq!(DedupWindow::from_entries(entries), None);
    }
}
