//! The stream of committed commands of one shard replica.
//!
//! Every command of every applied normal entry is kept in a bounded ring
//! and broadcast to live subscribers. A gateway can therefore follow a
//! shard from any feed position the ring still contains, and resume after
//! a reconnect without a gap. A subscriber that requests a position older
//! than the ring, or whose replica installed a snapshot (which skips
//! entries), must reload the shard's state and resubscribe.
//!
//! A log entry carries a batch of commands, so the feed numbers commands by
//! position: the log index shifted left by `FEED_ITEM_BITS`, plus the
//! command's place in its entry. Positions grow with the log, are the same
//! on every replica, and let a subscriber resume in the middle of an entry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use prost::bytes::Bytes;
use tokio::sync::broadcast;

/// Bits of a feed position that number the commands of one log entry.
pub const FEED_ITEM_BITS: u32 = 16;

/// Maximum commands in one log entry, so each has a feed position.
pub const ENTRY_COMMANDS_MAX: usize = 1 << FEED_ITEM_BITS;

/// Returns the feed position of command `item` of the entry at `log_index`.
pub fn feed_position(log_index: u64, item: usize) -> u64 {
    assert!(
        item < ENTRY_COMMANDS_MAX,
        "command {item} of log index {log_index} is past the {ENTRY_COMMANDS_MAX} an entry may carry"
    );
    (log_index << FEED_ITEM_BITS) | item as u64
}

/// Returns the last feed position an entry at `log_index` could use, so a
/// subscriber that has seen everything through that entry resumes at the
/// position after it.
pub fn feed_position_end(log_index: u64) -> u64 {
    (log_index << FEED_ITEM_BITS) | (ENTRY_COMMANDS_MAX as u64 - 1)
}

/// One applied command with its encoded result.
#[derive(Debug)]
pub struct CommittedEntry {
    /// Feed position: see `feed_position`.
    pub position: u64,
    /// Encoded `parley_core::proto::Command`, shared with every subscriber
    /// rather than copied.
    pub command: Bytes,
    /// Encoded `parley_core::proto::CommandResult`.
    pub result: Bytes,
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

/// A subscription that starts at or before a command the ring dropped.
#[derive(Debug, thiserror::Error)]
#[error(
    "commands from feed position {from_index} are no longer retained (the feed dropped them \
     through {dropped_through}); reload the shard's conversations and subscribe from their \
     applied index"
)]
pub struct Compacted {
    pub from_index: u64,
    pub dropped_through: u64,
}

struct Ring {
    entries: VecDeque<Arc<CommittedEntry>>,
    /// The highest position the feed no longer has: evicted, or covered by
    /// a snapshot. Every later command is in `entries` or still to come.
    dropped_through: Option<u64>,
    capacity: usize,
}

/// The commit feed of one shard replica. Clones share the ring.
#[derive(Clone)]
pub struct CommitFeed {
    ring: Arc<Mutex<Ring>>,
    sender: broadcast::Sender<FeedItem>,
}

impl CommitFeed {
    /// Creates a feed for a replica that has applied the log through
    /// `applied_index` (0 for none), keeping at most `capacity` commands.
    pub fn new(applied_index: u64, capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.clamp(16, 4_096));
        CommitFeed {
            ring: Arc::new(Mutex::new(Ring {
                entries: VecDeque::new(),
                dropped_through: (applied_index > 0).then(|| feed_position_end(applied_index)),
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
                    entry.position > last.position,
                    "commit feed went backwards: position {} after {}",
                    entry.position,
                    last.position
                );
            }
            ring.entries.push_back(entry.clone());
            if ring.entries.len() > ring.capacity {
                if let Some(dropped) = ring.entries.pop_front() {
                    ring.dropped_through = Some(dropped.position);
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
            ring.dropped_through = Some(feed_position_end(last_index));
        }
        let _ = self.sender.send(FeedItem::SnapshotInstalled { last_index });
    }

    /// Returns the retained commands from feed position `from_index` on and
    /// a receiver for every later one. The receiver is created first, so no
    /// command falls between the two; callers skip duplicates by position.
    pub fn subscribe(
        &self,
        from_index: u64,
    ) -> Result<(Vec<Arc<CommittedEntry>>, broadcast::Receiver<FeedItem>), Compacted> {
        let receiver = self.sender.subscribe();
        let ring = self.lock();
        if let Some(dropped_through) = ring.dropped_through {
            if from_index <= dropped_through {
                return Err(Compacted {
                    from_index,
                    dropped_through,
                });
            }
        }
        let backlog = ring
            .entries
            .iter()
            .filter(|entry| entry.position >= from_index)
            .cloned()
            .collect();
        Ok((backlog, receiver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(log_index: u64, item: usize) -> CommittedEntry {
        CommittedEntry {
            position: feed_position(log_index, item),
            command: Bytes::new(),
            result: Bytes::new(),
        }
    }

    fn positions(backlog: &[Arc<CommittedEntry>]) -> Vec<u64> {
        backlog.iter().map(|entry| entry.position).collect()
    }

    #[test]
    fn subscribe_returns_backlog_from_index() {
        let feed = CommitFeed::new(0, 10);
        for index in 1..=5 {
            feed.push(entry(index, 0));
        }
        let (backlog, _) = feed.subscribe(feed_position(3, 0)).unwrap();
        let expected: Vec<u64> = (3..=5).map(|index| feed_position(index, 0)).collect();
        assert_eq!(positions(&backlog), expected);
    }

    #[test]
    fn subscribe_resumes_inside_a_batch() {
        let feed = CommitFeed::new(0, 10);
        for item in 0..3 {
            feed.push(entry(1, item));
        }
        feed.push(entry(2, 0));

        let (backlog, _) = feed.subscribe(feed_position(1, 1) + 1).unwrap();

        assert_eq!(
            positions(&backlog),
            vec![feed_position(1, 2), feed_position(2, 0)]
        );
    }

    #[test]
    fn subscribe_after_entry_end_starts_at_next_entry() {
        let feed = CommitFeed::new(0, 10);
        feed.push(entry(1, 0));
        feed.push(entry(1, 1));
        feed.push(entry(2, 0));

        let (backlog, _) = feed.subscribe(feed_position_end(1) + 1).unwrap();

        assert_eq!(positions(&backlog), vec![feed_position(2, 0)]);
    }

    #[test]
    fn evicted_entries_make_old_subscriptions_compacted() {
        let feed = CommitFeed::new(0, 3);
        for index in 1..=5 {
            feed.push(entry(index, 0));
        }
        let error = feed.subscribe(feed_position(2, 0)).unwrap_err();
        assert_eq!(error.dropped_through, feed_position(2, 0));
        assert!(feed.subscribe(feed_position(3, 0)).is_ok());
    }

    #[test]
    fn feed_restored_from_snapshot_rejects_older_positions() {
        let feed = CommitFeed::new(7, 10);
        assert!(feed.subscribe(feed_position(7, 0)).is_err());
        assert!(feed.subscribe(feed_position_end(7) + 1).is_ok());
    }

    #[test]
    fn live_entries_reach_receivers() {
        let feed = CommitFeed::new(0, 10);
        let (_, mut receiver) = feed.subscribe(1).unwrap();
        feed.push(entry(1, 0));
        match receiver.try_recv().unwrap() {
            FeedItem::Entry(entry) => assert_eq!(entry.position, feed_position(1, 0)),
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    #[test]
    fn reset_compacts_everything_before_snapshot() {
        let feed = CommitFeed::new(0, 10);
        feed.push(entry(1, 0));
        feed.reset(40);
        assert!(feed.subscribe(feed_position(2, 0)).is_err());
        assert!(feed.subscribe(feed_position_end(40)).is_err());
        assert!(feed.subscribe(feed_position(41, 0)).unwrap().0.is_empty());
    }
}
