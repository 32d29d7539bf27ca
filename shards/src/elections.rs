//! Breaking repeated split votes.
//!
//! openraft 0.9 draws each replica's election timeout once, when the
//! replica starts, and checks it on a tick of 1.5 heartbeat intervals.
//! Replicas whose timeouts round to the same number of ticks, and whose
//! ticks are in phase (nodes started or restarted together), time out in
//! the same tick of every round, each votes for itself, and the shard
//! stays without a leader for as long as that lasts (over 10 s after all
//! faults healed, in simulation). A watcher per replica notices a replica
//! that stays candidate across several terms and pauses its elections for
//! a random time, which moves it out of step with the others. A paused
//! replica still votes, so safety is unaffected.

use std::time::Duration;

use openraft::{AsyncRuntime, ServerState};
use parley_raft::{NodeId, Raft, ShardId};
use rand::Rng;

/// Consecutive terms a replica may spend as candidate before it pauses.
const CANDIDATE_TERMS_MAX: u32 = 3;

/// Watches one replica until its Raft stops, pausing its elections for a
/// random time up to `pause_max` after repeated split votes.
pub async fn break_split_votes(raft: Raft, node: NodeId, shard: ShardId, pause_max: Duration) {
    let mut metrics = raft.metrics();
    let mut candidate_terms = 0u32;
    let mut last_term = 0u64;
    while metrics.changed().await.is_ok() {
        let (state, term) = {
            let current = metrics.borrow();
            (current.state, current.current_term)
        };
        if state != ServerState::Candidate {
            candidate_terms = 0;
            continue;
        }
        if term != last_term {
            candidate_terms += 1;
            last_term = term;
        }
        if candidate_terms < CANDIDATE_TERMS_MAX {
            continue;
        }

        let pause_ms = <parley_raft::runtime::Runtime as AsyncRuntime>::thread_rng()
            .gen_range(0..pause_max.as_millis().max(1) as u64);
        tracing::info!(
            node,
            shard,
            term,
            pause_ms,
            "repeated split votes; pausing elections"
        );
        raft.runtime_config().elect(false);
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        raft.runtime_config().elect(true);
        candidate_terms = 0;
    }
}
