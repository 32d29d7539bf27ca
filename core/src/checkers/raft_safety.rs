//! The `raft_safety` invariant: Raft's election safety and the durability of
//! committed entries, per shard.
//!
//! Checks, across all `RaftObserved` events, that no (shard, term) has more
//! than one leader, and that no (shard, index) is reported committed with two
//! different terms. Observations carry samples, so a fault between samples
//! goes unseen.

use std::collections::{BTreeMap, BTreeSet};

use super::{sorted, violation, Violation};
use crate::history::{Event, History, RaftObserved};

pub const NAME: &str = "raft_safety";

/// For each key, the nodes that reported each value.
type Reports = BTreeMap<(u64, u64), BTreeMap<u64, BTreeSet<u64>>>;

pub fn check(history: &History) -> Vec<Violation> {
    let mut leaders: Reports = BTreeMap::new();
    let mut committed_terms: Reports = BTreeMap::new();

    for event in history.events() {
        if let Event::RaftObserved(observed) = event {
            record(&mut leaders, &mut committed_terms, observed);
        }
    }

    let mut violations = Vec::new();
    for ((shard_id, term), reporters_by_leader) in &leaders {
        if reporters_by_leader.len() > 1 {
            let detail = format!(
                "shard {shard_id} term {term} has {} leaders: {}",
                reporters_by_leader.len(),
                describe_reports("node", reporters_by_leader),
            );
            violations.push(violation(NAME, detail));
        }
    }
    for ((shard_id, index), reporters_by_term) in &committed_terms {
        if reporters_by_term.len() > 1 {
            let detail = format!(
                "shard {shard_id} index {index} was reported committed with {} terms: {}",
                reporters_by_term.len(),
                describe_reports("term", reporters_by_term),
            );
            violations.push(violation(NAME, detail));
        }
    }
    sorted(violations)
}

fn record(leaders: &mut Reports, committed_terms: &mut Reports, observed: &RaftObserved) {
    let shard_id = observed.shard_id;
    if let Some(leader) = observed.leader {
        leaders
            .entry((shard_id, observed.term))
            .or_default()
            .entry(leader)
            .or_default()
            .insert(observed.node_id);
    }
    for &(index, term) in &observed.committed {
        committed_terms
            .entry((shard_id, index))
            .or_default()
            .entry(term)
            .or_default()
            .insert(observed.node_id);
    }
}

/// Formats reports as `node 2 (reported by nodes 1, 2), node 3 (reported by
/// nodes 3)`, with `label` in place of `node` for the value.
fn describe_reports(label: &str, reporters_by_value: &BTreeMap<u64, BTreeSet<u64>>) -> String {
    let descriptions: Vec<String> = reporters_by_value
        .iter()
        .map(|(value, reporters)| {
            let reporters: Vec<String> = reporters.iter().map(u64::to_string).collect();
            format!(
                "{label} {value} (reported by nodes {})",
                reporters.join(", ")
            )
        })
        .collect();
    descriptions.join(", ")
}
