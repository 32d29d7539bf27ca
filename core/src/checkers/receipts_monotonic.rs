//! The `receipts_monotonic` invariant: receipt watermarks only move forward
//! and never pass the committed messages.
//!
//! Checks, in history order, that:
//! - the seqs one device observes for one (conversation, kind, subject) never
//!   drop below the highest it observed before;
//! - the watermarks acknowledged to one (conversation, kind, user, device)
//!   never drop below the highest acknowledged before;
//! - no observed receipt or acknowledged watermark exceeds the highest seq
//!   that the history has shown committed in its conversation so far.
//!
//! A seq counts as committed once a `SendAcked`, a delivery or a replica read
//! has shown it. Deliveries count because a device may mark a message read
//! whose sender has not yet received, or never receives, the acknowledgement.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

use super::{sorted, violation, Device, Violation};
use crate::history::{Event, History, ReceiptAcked, ReceiptKind, ReceiptObserved};

pub const NAME: &str = "receipts_monotonic";

pub fn check(history: &History) -> Vec<Violation> {
    let mut state = ReceiptState::default();
    for event in history.events() {
        state.apply(event);
    }
    sorted(state.violations)
}

/// The owner of a watermark: a device for delivered receipts, a user for
/// read receipts, displayed without a device when the device id is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Subject<'a>(Device<'a>);

impl fmt::Display for Subject<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.device_id.is_empty() {
            write!(formatter, "user {}", self.0.user_id)
        } else {
            write!(formatter, "{}", self.0)
        }
    }
}

type ObservedKey<'a> = (Device<'a>, &'a str, ReceiptKind, Subject<'a>);
type AckedKey<'a> = (&'a str, ReceiptKind, Subject<'a>);

#[derive(Default)]
struct ReceiptState<'a> {
    highest_committed: BTreeMap<&'a str, u64>,
    observed: BTreeMap<ObservedKey<'a>, u64>,
    acked: BTreeMap<AckedKey<'a>, u64>,
    violations: Vec<Violation>,
}

impl<'a> ReceiptState<'a> {
    fn apply(&mut self, event: &'a Event) {
        match event {
            Event::SendAcked(ack) => self.commit(&ack.conversation_id, ack.seq),
            Event::DeliveredToDevice(delivery) => {
                self.commit(&delivery.conversation_id, delivery.seq);
            }
            Event::ReplicaRead(read) => {
                let highest = read.messages.iter().map(|message| message.seq).max();
                self.commit(&read.conversation_id, highest.unwrap_or(0));
            }
            Event::ReceiptObserved(receipt) => self.observe(receipt),
            Event::ReceiptAcked(receipt) => self.acknowledge(receipt),
            _ => {}
        }
    }

    fn commit(&mut self, conversation_id: &'a str, seq: u64) {
        let highest = self.highest_committed.entry(conversation_id).or_insert(0);
        *highest = (*highest).max(seq);
    }

    fn observe(&mut self, receipt: &'a ReceiptObserved) {
        let observer = Device {
            user_id: &receipt.observer_user,
            device_id: &receipt.observer_device,
        };
        let subject = Subject(Device {
            user_id: &receipt.subject_user,
            device_id: &receipt.subject_device,
        });
        let conversation_id = receipt.conversation_id.as_str();
        let description = format!(
            "the {} receipt of {subject} observed by {observer}",
            kind_name(receipt.kind)
        );

        let key = (observer, conversation_id, receipt.kind, subject);
        let highest = raise(&mut self.observed, key, receipt.seq);
        self.check_forward(conversation_id, &description, highest, receipt.seq);
        self.check_committed(conversation_id, &description, receipt.seq);
    }

    fn acknowledge(&mut self, receipt: &'a ReceiptAcked) {
        let owner = Subject(Device {
            user_id: &receipt.user_id,
            device_id: &receipt.device_id,
        });
        let conversation_id = receipt.conversation_id.as_str();
        let description = format!(
            "the {} watermark acknowledged to {owner}",
            kind_name(receipt.kind)
        );

        let key = (conversation_id, receipt.kind, owner);
        let highest = raise(&mut self.acked, key, receipt.watermark);
        self.check_forward(conversation_id, &description, highest, receipt.watermark);
        self.check_committed(conversation_id, &description, receipt.watermark);
    }

    /// Reports `seq` if it is below `highest`, the highest seq seen before it.
    fn check_forward(
        &mut self,
        conversation_id: &str,
        description: &str,
        highest: Option<u64>,
        seq: u64,
    ) {
        let Some(highest) = highest.filter(|highest| seq < *highest) else {
            return;
        };
        let detail = format!(
            "conversation {conversation_id}: {description} went back from seq {highest} \
             to seq {seq}"
        );
        self.violations.push(violation(NAME, detail));
    }

    fn check_committed(&mut self, conversation_id: &str, description: &str, seq: u64) {
        let highest = self
            .highest_committed
            .get(conversation_id)
            .copied()
            .unwrap_or(0);
        if seq <= highest {
            return;
        }
        let detail = format!(
            "conversation {conversation_id}: {description} is at seq {seq}, beyond seq {highest}, \
             the highest seq shown committed so far"
        );
        self.violations.push(violation(NAME, detail));
    }
}

/// Stores the max of `seq` and the value at `key`. Returns the value at `key`
/// before the call.
fn raise<K: Ord>(highest_by_key: &mut BTreeMap<K, u64>, key: K, seq: u64) -> Option<u64> {
    match highest_by_key.entry(key) {
        Entry::Vacant(entry) => {
            entry.insert(seq);
            None
        }
        Entry::Occupied(mut entry) => {
            let highest = *entry.get();
            entry.insert(highest.max(seq));
            Some(highest)
        }
    }
}

fn kind_name(kind: ReceiptKind) -> &'static str {
    match kind {
        ReceiptKind::Delivered => "delivered",
        ReceiptKind::Read => "read",
    }
}
