//! Batching delivered acks into receipt commands.
//!
//! Devices ack every message they store; proposing each ack would cost one
//! Raft entry per message per device. The batcher keeps only the highest
//! acked seq per (conversation, user, device) and proposes those every flush
//! interval, so a burst of acks becomes one MarkDelivered per device. Device
//! ids are unique only per user, so the user id is part of every key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use parley_core::proto::command::Kind;
use parley_core::proto::MarkDelivered;

use crate::auth::DeviceIdentity;
use crate::cluster::Cluster;

/// Acks waiting for the next flush.
#[derive(Default)]
pub struct DeliveredBatcher {
    pending: Mutex<BTreeMap<(String, DeviceIdentity), u64>>,
}

impl DeliveredBatcher {
    /// Records that `identity` stored `conversation_id` up to `seq`.
    pub fn ack(&self, identity: &DeviceIdentity, conversation_id: &str, seq: u64) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let highest = pending
            .entry((conversation_id.to_string(), identity.clone()))
            .or_insert(0);
        *highest = (*highest).max(seq);
    }

    /// Proposes every pending ack concurrently. Rejections (for example a
    /// device that left the conversation) are logged and dropped.
    pub async fn flush(self: &Arc<Self>, cluster: &Cluster) {
        let proposals = self.take_marks().into_iter().map(|mark| async move {
            if let Err(status) = cluster.propose(Kind::MarkDelivered(mark.clone())).await {
                tracing::debug!(
                    conversation = %mark.conversation_id,
                    user = %mark.user_id,
                    device = %mark.device_id,
                    seq = mark.seq,
                    error = %status,
                    "delivered ack not recorded"
                );
            }
        });
        futures::future::join_all(proposals).await;
    }

    /// Empties the pending acks into one MarkDelivered per (conversation,
    /// user, device).
    fn take_marks(&self) -> Vec<MarkDelivered> {
        let pending = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *pending)
        };
        pending
            .into_iter()
            .map(|((conversation_id, identity), seq)| MarkDelivered {
                conversation_id,
                user_id: identity.user_id,
                device_id: identity.device_id,
                seq,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user_id: &str, device_id: &str) -> DeviceIdentity {
        DeviceIdentity {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
        }
    }

    fn mark(user_id: &str, device_id: &str, seq: u64) -> MarkDelivered {
        MarkDelivered {
            conversation_id: "g1".to_owned(),
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            seq,
        }
    }

    #[test]
    fn users_sharing_device_id_get_separate_marks() {
        let batcher = DeliveredBatcher::default();

        batcher.ack(&identity("alice", "cli"), "g1", 3);
        batcher.ack(&identity("bob", "cli"), "g1", 2);
        batcher.ack(&identity("alice", "cli"), "g1", 1);

        assert_eq!(
            batcher.take_marks(),
            [mark("alice", "cli", 3), mark("bob", "cli", 2)]
        );
    }

    #[test]
    fn take_marks_empties_pending_acks() {
        let batcher = DeliveredBatcher::default();
        batcher.ack(&identity("alice", "cli"), "g1", 3);

        let first = batcher.take_marks();
        let second = batcher.take_marks();

        assert_eq!(first.len(), 1);
        assert!(second.is_empty());
    }
}
