//! Crash tests on real `parley node` processes with real sled files:
//! SIGKILL of a leader mid-workload, then of the whole cluster, must lose
//! and duplicate no acknowledged append and keep every sequence gap-free.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ProcessCluster;
use parley::smoke::{self, Ack, SmokeOptions};
use parley_shards::client::ClusterClient;

const LEADER_WAIT: Duration = Duration::from_secs(60);

/// Returns the index of the node leading the most shards.
async fn busiest_leader_index(client: &ClusterClient) -> usize {
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    for index in 0..client.addresses().len() {
        let status = client.status(index, false).await.expect("status");
        for shard in status.shards {
            *leaders.entry(shard.leader_id).or_default() += 1;
        }
    }
    let (leader, _) = leaders
        .into_iter()
        .filter(|(leader, _)| *leader != 0)
        .max_by_key(|(leader, count)| (*count, *leader))
        .expect("some shard has a leader");
    leader as usize - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_and_full_restart_lose_no_acknowledged_append() {
    let mut cluster = ProcessCluster::start(3, 8);
    cluster.wait_for_leaders(LEADER_WAIT).await;
    let client = cluster.client();
    let options = SmokeOptions {
        run_id: "crash".into(),
        conversations: 100,
        concurrency: 32,
        body_bytes: 256,
    };
    smoke::create_conversations(&client, &options)
        .await
        .expect("create conversations");

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let counter = acknowledged.clone();
    let on_ack = Arc::new(move |_: &Ack| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let workload = {
        let (client, options) = (client.clone(), options.clone());
        tokio::spawn(async move { smoke::append_range(&client, &options, 0..10_000, on_ack).await })
    };

    while acknowledged.load(Ordering::Relaxed) < 2_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = busiest_leader_index(&client).await;
    cluster.kill_nine(victim);
    eprintln!(
        "killed node {} (-9) after {} acks",
        victim + 1,
        acknowledged.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_node(victim);
    let acks = workload.await.expect("workload task").expect("workload");
    assert_eq!(
        acks.len(),
        10_000,
        "every append is eventually acknowledged"
    );

    for index in 0..3 {
        cluster.kill_nine(index);
    }
    for index in 0..3 {
        cluster.start_node(index);
    }
    cluster.wait_for_leaders(LEADER_WAIT).await;

    let report = smoke::verify(&client, &options, &acks)
        .await
        .expect("verification");
    eprintln!("{report}");
    assert_eq!(report.messages, 10_000);
    assert_eq!(report.replica_reads, 300);
    assert_eq!(report.shards_compared, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_node_cleanly_and_restart_keeps_data() {
    let mut cluster = ProcessCluster::start(3, 4);
    cluster.wait_for_leaders(LEADER_WAIT).await;
    let client = cluster.client();
    let options = SmokeOptions {
        run_id: "term".into(),
        conversations: 10,
        concurrency: 4,
        body_bytes: 32,
    };
    smoke::create_conversations(&client, &options)
        .await
        .expect("create conversations");
    let acks = smoke::append_range(&client, &options, 0..200, Arc::new(|_: &Ack| {}))
        .await
        .expect("appends");

    let status = cluster.terminate(0).expect("node 1 was running");
    assert!(
        status.success(),
        "node 1 exited with {status} after SIGTERM"
    );
    cluster.start_node(0);
    cluster.wait_for_leaders(LEADER_WAIT).await;

    let report = smoke::verify(&client, &options, &acks)
        .await
        .expect("verification");
    assert_eq!(report.messages, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_node_with_open_subscribe_stream() {
    let mut cluster = ProcessCluster::start(3, 4);
    cluster.wait_for_leaders(LEADER_WAIT).await;
    let client = cluster.client();

    // A gateway follows shards with Subscribe streams that never end on
    // their own; the node must still stop when asked to.
    let request = parley_shards::proto::SubscribeRequest {
        shard_id: 0,
        from_index: 1,
    };
    let mut stream = client
        .node(0)
        .subscribe(request)
        .await
        .expect("subscribe to shard 0 on node 1")
        .into_inner();

    let status = cluster.terminate(0).expect("node 1 was running");
    assert!(
        status.success(),
        "node 1 exited with {status} after SIGTERM"
    );
    while let Ok(Some(_)) = stream.message().await {}
}
