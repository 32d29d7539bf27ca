//! The per-node wall clock that stamps proposals.
//!
//! Server timestamps come from the proposing node's clock and are clamped
//! non-decreasing per conversation by the state machine, so a skewed clock
//! can make timestamps wrong but never reorders messages. The offset lets
//! operators and the simulator skew one node's clock without touching the
//! process clock (madsim has one global clock for all simulated nodes).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A wall clock with an adjustable offset, shared by one node's tasks.
#[derive(Clone, Debug, Default)]
pub struct NodeClock {
    offset_ms: Arc<AtomicI64>,
}

impl NodeClock {
    pub fn with_offset_ms(offset_ms: i64) -> Self {
        NodeClock {
            offset_ms: Arc::new(AtomicI64::new(offset_ms)),
        }
    }

    /// Sets the skew applied to every later reading; returns the previous
    /// one.
    pub fn set_offset_ms(&self, offset_ms: i64) -> i64 {
        self.offset_ms.swap(offset_ms, Ordering::Relaxed)
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Returns milliseconds since the Unix epoch, skewed by the offset and
    /// floored at zero. Under madsim `SystemTime` is the simulated clock.
    pub fn now_ms(&self) -> u64 {
        let system_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64);
        let skewed = system_ms.saturating_add(self.offset_ms.load(Ordering::Relaxed));
        skewed.max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_moves_readings() {
        let clock = NodeClock::with_offset_ms(-1_000_000);
        let plain = NodeClock::default();
        let skewed = clock.now_ms();
        assert!(plain.now_ms() >= skewed + 999_000);
    }

    #[test]
    fn negative_time_floors_at_zero() {
        let clock = NodeClock::with_offset_ms(i64::MIN);
        assert_eq!(clock.now_ms(), 0);
    }
}
