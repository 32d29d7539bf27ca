//! The stream of committed commands of one shard replica.
//!
//! Every applied normal entry is kept in a bounded ring and broadcast to
//! live subscribers, so a gateway can follow a shard from any log index the
//! ring still holds and resume after a reconnect without a gap. A
//! subscriber that asks for an index older than the ring, or whose replica
//! installed a snapshot (which skips entries), must reload the shard's
//! state and resubscribe.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// One applied command with its encoded result.
#[derive(Debug)]
pub struct CommittedEntry {
    pub log_index: u64,
    /// Encoded `parley_core::proto::Command`.
    pub command: Vec<u8>,
    /// Encoded `parley_core::proto::CommandResult`.
    pub result: Vec<u8>,
}

/// An item delivered to live subscribers.
#[derive(Clone, Debug)]
pub enum FeedItem {
    Entry(Arc<CommittedEntry>),
    /// The replica installed a snapshot; entries up to `last_index` are
    /// not in the feed.
    SnapshotInstalled {
        last_index: u64,
    },
}

/// A subscription that starts before the oldest entry the ring holds.
#[derive(Debug, thiserror::Error)]
#[error(
    "entries from log index {from_index} are no longer retained (the feed starts at \
     {retained_from}); reload the shard's conversations and subscribe from their applied index"
)]
pub struct Compacted {
    pub from_index: u64,
    pub retained_from: u64,
}

struct Ring {
    entries: VecDeque<Arc<CommittedEntry>>,
    /// Every normal entry from this index on is in `entries`.
    retained_from: u64,
    capacity: usize,
}

/// The commit feed of one shard replica. Clones share the ring.
#[derive(Clone)]
pub struct CommitFeed {
    ring: Arc<Mutex<Ring>>,
    sender: broadcast::Sender<FeedItem>,
}

impl CommitFeed {
    /// Creates a feed whose first entry will have an index of at least
    /// `retained_from`, keeping at most `capacity` entries.
    pub fn new(retained_from: u64, capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.clamp(16, 4_096));
        CommitFeed {
            ring: Arc::new(Mutex::new(Ring {
                entries: VecDeque::new(),
                retained_from,
                capacity: capacity.max(1),
            })),
            sender,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn push(&self, entry: CommittedEntry) {
        let entry = Arc::new(entry);
        {
            let mut ring = self.lock();
            if let Some(last) = ring.entries.back() {
                assert!(
                    entry.log_index > last.log_index,
                    "commit feed went backwards: {} after {}",
                    entry.log_index,
                    last.log_index
                );
            }
            ring.entries.push_back(entry.clone());
            if ring.entries.len() > ring.capacity {
                if let Some(dropped) = ring.entries.pop_front() {
                    ring.retained_from = dropped.log_index + 1;
                }
            }
        }
        // A send with no receivers is fine: no gateway follows this shard now.
        let _ = self.sender.send(FeedItem::Entry(entry));
    }

    pub(crate) fn reset(&self, last_index: u64) {
        {
            let mut ring = self.lock();
            ring.entries.clear();
            ring.retained_from = last_index + 1;
        }
        let _ = self.sender.send(FeedItem::SnapshotInstalled { last_index });
    }

    /// Returns the retained entries from `from_index` on and a receiver
    /// for every later one. The receiver is created first, so no entry
    /// falls between the two; callers skip duplicates by index.
    pub fn subscribe(
        &self,
        from_index: u64,
    ) -> Result<(Vec<Arc<CommittedEntry>>, broadcast::Receiver<FeedItem>), Compacted> {
        let receiver = self.sender.subscribe();
        let ring = self.lock();
        if from_index < ring.retained_from {
            return Err(Compacted {
                from_index,
                retained_from: ring.retained_from,
            });
        }
        let backlog = ring
            .entries
            .iter()
            .filter(|entry| entry.log_index >= from_index)
            .cloned()
            .collect();
        Ok((backlog, receiver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(log_index: u64) -> CommittedEntry {
        CommittedEntry {
            log_index,
            command: Vec::new(),
            result: Vec::new(),
        }
    }

    #[test]
    fn subscribe_returns_backlog_from_index() {
        let feed = CommitFeed::new(1, 10);
        for index in 1..=5 {
            feed.push(entry(index));
        }
        let (backlog, _) = feed.subscribe(3).unwrap();
        let indexes: Vec<u64> = backlog.iter().map(|entry| entry.log_index).collect();
        assert_eq!(indexes, vec![3, 4, 5]);
    }

    #[test]
    fn evicted_entries_make_old_subscriptions_compacted() {
        let feed = CommitFeed::new(1, 3);
        for index in 1..=5 {
            feed.push(entry(index));
        }
        let error = feed.subscribe(2).unwrap_err();
        assert_eq!(error.retained_from, 3);
        assert!(feed.subscribe(3).is_ok());
    }

    #[test]
    fn live_entries_reach_receivers() {
        let feed = CommitFeed::new(1, 10);
        let (_, mut receiver) = feed.subscribe(1).unwrap();
        feed.push(entry(1));
        match receiver.try_recv().unwrap() {
            FeedItem::Entry(entry) => assert_eq!(entry.log_index, 1),
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    #[test]
    fn reset_compacts_everything_before_snapshot() {
        let feed = CommitFeed::new(1, 10);
        feed.push(entry(1));
        feed.reset(40);
        assert!(feed.subscribe(2).is_err());
        assert!(feed.subscribe(41).unwrap().0.is_empty());
    }
}
