//! Batching delivered acks into receipt commands.
//!
//! Devices ack every message they store; proposing each ack would cost one
//! Raft entry per message per device. The batcher keeps only the highest
//! acked seq per (conversation, device) and proposes those every flush
//! interval, so a burst of acks becomes one MarkDelivered per device.

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
        let batch: Vec<((String, DeviceIdentity), u64)> = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *pending).into_iter().collect()
        };
        let proposals = batch.into_iter().map(|((conversation_id, identity), seq)| {
            let mark = MarkDelivered {
                conversation_id,
                user_id: identity.user_id,
                device_id: identity.device_id,
                seq,
            };
            async move {
                if let Err(status) = cluster.propose(Kind::MarkDelivered(mark.clone())).await {
                    tracing::debug!(
                        conversation = %mark.conversation_id,
                        device = %mark.device_id,
                        seq = mark.seq,
                        error = %status,
                        "delivered ack not recorded"
                    );
                }
            }
        });
        futures::future::join_all(proposals).await;
    }
}
