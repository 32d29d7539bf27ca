//! Scenario 6, failover: SIGKILL the node that leads one shard while
//! senders append to every shard, and measure how long each shard goes
//! without an acknowledged append.
//!
//! Every sender retries a failed send with the same client message id
//! after `RETRY_PAUSE`, as a client does. A shard counts as resumed when a
//! send *started* after the kill is acknowledged. Shards the killed node
//! did not lead should not notice beyond the gateway rerouting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use tokio::time::Instant;

use crate::context::Context;
use crate::progress::TimedBar;
use crate::report::{Report, Section, Table};
use crate::scenarios::appends::ParleyAppends;
use crate::stats::format_latency;
use crate::systems::parley::{shard_of_id, ParleyCluster};
use crate::systems::parley_client::Pool;

/// Pause before a sender retries a failed send.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Load before the kill.
const BEFORE_KILL: Duration = Duration::from_secs(2);

/// Shortest observation after the kill; elections take a few seconds at
/// most.
const AFTER_KILL_MIN: Duration = Duration::from_secs(5);

/// One acknowledged send: when it started and when its ack arrived.
#[derive(Clone, Copy)]
struct Ack {
    started: Instant,
    acked: Instant,
}

pub async fn run(context: &Context, report: &mut Report) -> Result<()> {
    let settings = &context.settings;
    let folder = context.folder("failover");
    let mut cluster =
        ParleyCluster::start(&context.binaries.parley, &folder, settings.shards).await?;
    let outcome = measure(context, &mut cluster).await;
    cluster.stop().await;
    report.add(outcome?);
    Ok(())
}

async fn measure(context: &Context, cluster: &mut ParleyCluster) -> Result<Section> {
    let settings = &context.settings;
    let pool = Pool::connect(&cluster.gateway, settings.connections, &[]).await?;
    let target = ParleyAppends::setup(
        pool,
        settings.failover_senders,
        settings.body_bytes,
        settings.setup_concurrency,
    )
    .await?;
    let target = Arc::new(target);
    let shard = shard_of_id(target.conversation(0), cluster.shard_count);
    check_placement(cluster, &target, shard).await?;
    let leader = cluster
        .agreed_leader(shard)
        .await
        .with_context(|| format!("shard {shard} has no agreed leader before the kill"))?;
    let led = shards_led_by(cluster, leader).await?;

    let after_kill = settings.duration.max(AFTER_KILL_MIN);
    let _bar = TimedBar::start(
        "failover: load, kill -9, recovery",
        BEFORE_KILL + after_kill,
    );
    let ends = Instant::now() + BEFORE_KILL + after_kill;
    let tasks: Vec<_> = (0..target.senders())
        .map(|sender| tokio::spawn(sender_loop(target.clone(), sender, ends)))
        .collect();
    tokio::time::sleep(BEFORE_KILL).await;
    let killed_at = Instant::now();
    cluster.kill_node(leader).await?;
    let mut acks = Vec::new();
    for task in tasks {
        acks.push(task.await.context("a failover sender panicked")?);
    }

    let by_shard = group_by_shard(&target, cluster.shard_count, acks);
    let table = recovery_table(&by_shard, &led, killed_at);
    let resumed = first_ack_after(&by_shard[&shard], killed_at);
    let Some(resumed) = resumed else {
        bail!(
            "no append on shard {shard} succeeded within {after_kill:?} after node {leader}, its \
             leader, was killed"
        );
    };
    let notes = vec![
        format!(
            "{} senders appending closed-loop with retries (same client message id, {} ms \
             pause); node {leader} led shards {led:?} and got SIGKILL {} s into the load.",
            target.senders(),
            RETRY_PAUSE.as_millis(),
            BEFORE_KILL.as_secs()
        ),
        format!(
            "Shard {shard}: first append started after the kill acknowledged {} after it.",
            format_latency(resumed)
        ),
        "'resumed' is when a send started after the kill was acknowledged; 'all resumed' \
         when every sender of that shard had one; 'longest gap' is the longest time \
         between two acknowledgements on the shard."
            .to_string(),
    ];
    Ok(Section {
        title: "Failover (SIGKILL of a shard leader under load)".to_string(),
        table,
        notes,
    })
}

/// Sends as `sender` until `ends`, retrying each message until acked.
async fn sender_loop(target: Arc<ParleyAppends>, sender: usize, ends: Instant) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut number = 0u64;
    while Instant::now() < ends {
        let id = format!("f{sender}-{number}");
        let started = Instant::now();
        match target.send_with_id(sender, id).await {
            Ok(()) => {
                acks.push(Ack {
                    started,
                    acked: Instant::now(),
                });
                number += 1;
            }
            Err(error) => {
                tracing::debug!(
                    sender,
                    error = format!("{error:#}"),
                    "send failed; retrying"
                );
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    acks
}

/// Checks that appends to `target`'s group 0 land on `shard`: sends three
/// messages and looks for the one shard whose log grew by at least 3.
async fn check_placement(
    cluster: &ParleyCluster,
    target: &ParleyAppends,
    shard: u32,
) -> Result<()> {
    let before = log_indexes(cluster).await?;
    for number in 0..3 {
        target
            .send_with_id(0, format!("placement-{number}"))
            .await?;
    }
    let after = log_indexes(cluster).await?;
    let grown: Vec<u32> = after
        .iter()
        .filter(|(id, index)| **index >= before.get(id).copied().unwrap_or(0) + 3)
        .map(|(id, _)| *id)
        .collect();
    ensure!(
        grown == [shard],
        "parley_shards::shard_map placed {} on shard {shard}, but shards {grown:?} logged its \
         appends; the nodes run a different build than the bench, so rebuild both",
        target.conversation(0)
    );
    Ok(())
}

/// Returns the highest last log index each shard reports on any node.
async fn log_indexes(cluster: &ParleyCluster) -> Result<BTreeMap<u32, u64>> {
    let mut indexes = BTreeMap::new();
    for node in 0..cluster.nodes.len() {
        for replica in cluster.status(node).await?.shards {
            let index = indexes.entry(replica.shard_id).or_insert(0);
            *index = replica.last_log_index.max(*index);
        }
    }
    Ok(indexes)
}

async fn shards_led_by(cluster: &ParleyCluster, node: u64) -> Result<BTreeSet<u32>> {
    let mut led = BTreeSet::new();
    for shard in 0..cluster.shard_count {
        if cluster.agreed_leader(shard).await == Some(node) {
            led.insert(shard);
        }
    }
    Ok(led)
}

/// Acks per shard, then per sender of that shard.
type ShardAcks = BTreeMap<u32, Vec<Vec<Ack>>>;

fn group_by_shard(target: &ParleyAppends, shard_count: u32, acks: Vec<Vec<Ack>>) -> ShardAcks {
    let mut by_shard: ShardAcks = BTreeMap::new();
    for (sender, sender_acks) in acks.into_iter().enumerate() {
        let shard = shard_of_id(target.conversation(sender), shard_count);
        by_shard.entry(shard).or_default().push(sender_acks);
    }
    by_shard
}

/// Returns the time from `killed_at` to the first ack of a send started
/// after it.
fn first_ack_after(senders: &[Vec<Ack>], killed_at: Instant) -> Option<Duration> {
    senders
        .iter()
        .flatten()
        .filter(|ack| ack.started >= killed_at)
        .map(|ack| ack.acked - killed_at)
        .min()
}

/// Returns the time until every sender had an ack of a send started after
/// `killed_at`, or `None` if one never did.
fn all_resumed_after(senders: &[Vec<Ack>], killed_at: Instant) -> Option<Duration> {
    senders
        .iter()
        .map(|acks| first_ack_after(std::slice::from_ref(acks), killed_at))
        .try_fold(Duration::ZERO, |longest, resumed| {
            Some(longest.max(resumed?))
        })
}

fn longest_gap(senders: &[Vec<Ack>]) -> Duration {
    let mut times: Vec<Instant> = senders.iter().flatten().map(|ack| ack.acked).collect();
    times.sort();
    times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default()
}

fn recovery_table(by_shard: &ShardAcks, led: &BTreeSet<u32>, killed_at: Instant) -> Table {
    let mut table = Table::new(&[
        "shard",
        "leader killed",
        "senders",
        "acks",
        "resumed",
        "all resumed",
        "longest gap",
    ]);
    let show = |duration: Option<Duration>| duration.map_or("never".to_string(), format_latency);
    for (shard, senders) in by_shard {
        table.push(vec![
            shard.to_string(),
            if led.contains(shard) { "yes" } else { "no" }.to_string(),
            senders.len().to_string(),
            senders.iter().map(Vec::len).sum::<usize>().to_string(),
            show(first_ack_after(senders, killed_at)),
            show(all_resumed_after(senders, killed_at)),
            format_latency(longest_gap(senders)),
        ]);
    }
    table
}
