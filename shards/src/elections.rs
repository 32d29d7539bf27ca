//! Breaking repeated split votes.
//!
//! openraft 0.9 draws each replica's election timeout once, when the
//! replica starts, and checks it on a tick of 1.5 heartbeat intervals.
//! Replicas whose timeouts round to the same number of ticks, and whose
//! ticks are in phase (nodes started or restarted together), time out in
//! the same tick of every round. Each votes for itself, each rejects the
//! other, and the shard stays without a leader for as long as that lasts:
//! with two of three replicas up, indefinitely.
//!
//! A watcher per replica notices a replica that stays candidate across
//! several terms. It turns the replica's timer-driven elections off for a
//! random pause and then, if it is still the candidate it was, campaigns
//! at once, off the tick. The replica whose pause ends first campaigns while
//! the others are still paused; a paused replica still votes, so it wins.
//! Waiting for the timer after the pause instead would put every replica
//! back on the same tick. Safety is unaffected: only when a replica
//! campaigns changes.

use std::time::Duration;

use openraft::{AsyncRuntime, ServerState};
use parley_raft::{NodeId, Raft, ShardId};
use rand::Rng;

/// Consecutive terms a replica may spend as candidate before it pauses.
/// One failed term can come from a leader lease or a lagging log. A second
/// one in a row signals replicas stuck in step.
const CANDIDATE_TERMS_MAX: u32 = 2;

/// Watches one replica until its Raft stops. After repeated split votes it
/// pauses the replica's elections for a random time below `pause_max`,
/// then campaigns unless another candidate or a leader emerged meanwhile.
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
        campaign_if_still_stuck(&raft, node, shard, term).await;
        candidate_terms = 0;
    }
}

/// Starts an election at once if the replica is still the candidate of
/// `paused_term`. A replica that voted for another candidate or heard from
/// a leader during the pause is in a later term or a follower, and
/// campaigning would only depose the winner.
async fn campaign_if_still_stuck(raft: &Raft, node: NodeId, shard: ShardId, paused_term: u64) {
    let (state, term) = {
        let metrics = raft.metrics();
        let current = metrics.borrow();
        (current.state, current.current_term)
    };
    if state != ServerState::Candidate || term != paused_term {
        return;
    }

    tracing::info!(
        node,
        shard,
        term,
        "still candidate after the pause; campaigning"
    );
    if let Err(error) = raft.trigger().elect().await {
        tracing::debug!(node, shard, %error, "could not start an election; the replica stopped");
    }
}
