//! A device stops reading its session while 10,000 messages flow into its
//! conversation. The gateway, a real `parley gateway` process in front of a
//! real 3-node, 8-shard cluster, keeps its memory bounded by dropping what
//! does not fit the session's queue. Once the device reads again, it
//! receives all 10,000 messages in order, the dropped ones refilled from
//! history.
//!
//! The gateway's resident set size (VmRSS) is sampled every 20 ms; the
//! before, peak and after figures are printed to stderr. The gateway logs
//! each event a full session queue drops at debug level, which the test
//! counts to show that the refill path ran.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::{
    connect, register, send_until_acked, with_token, Device, DeviceSession, GatewayProcess,
};
use common::ProcessCluster;
use parley_gateway::proto::CreateGroupRequest;
use parley_gateway::GatewayConfig;

const MESSAGES: usize = 10_000;
const SENDERS: usize = 32;
const SENDER_USERS: usize = 4;
const BODY_BYTES: usize = 4_096;
const GROUP_ID: &str = "firehose";

/// Samples the resident set size of a process until stopped.
struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn read_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak_kib, stop) = (peak_kib.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = read_rss_kib(pid) {
                        peak_kib.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        RssSampler {
            peak_kib,
            stop,
            thread,
        }
    }

    /// Returns the peak so far in KiB.
    fn peak_kib(&self) -> u64 {
        self.peak_kib.load(Ordering::Relaxed)
    }

    /// Stops sampling and returns the peak in KiB.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("the sampler thread did not panic");
        self.peak_kib.load(Ordering::Relaxed)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_device_catches_up_within_bounded_memory() {
    let cluster = ProcessCluster::start(3, 8);
    cluster.wait_for_leaders(Duration::from_secs(60)).await;
    let gateway = GatewayProcess::start(&cluster);
    let mut client = connect(&gateway.address).await;

    let alice = register(&mut client, "alice", "alice-tablet").await;
    let mut senders = Vec::new();
    for index in 0..SENDER_USERS {
        let user = format!("sender{index}");
        senders.push(register(&mut client, &user, &format!("{user}-phone")).await);
    }
    let members = senders
        .iter()
        .map(|sender| sender.user_id.clone())
        .collect();
    client
        .create_group(with_token(
            CreateGroupRequest {
                conversation_id: GROUP_ID.into(),
                members,
            },
            &alice.token,
        ))
        .await
        .expect("create the group");

    // The device opens its session, then reads nothing until the flood is
    // acknowledged. It has its own connection, so the senders' calls do
    // not share its HTTP/2 flow-control window.
    let mut slow = DeviceSession::open("alice-tablet", &gateway.address, &alice).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = gateway.rss_kib();
    let sampler = RssSampler::start(gateway.pid());

    let started = tokio::time::Instant::now();
    let acks: Arc<Mutex<Vec<(u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for task in 0..SENDERS {
        let sender: Device = senders[task % SENDER_USERS].clone();
        let address = gateway.address.clone();
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&address).await;
            for index in (task..MESSAGES).step_by(SENDERS) {
                let client_message_id = format!("m{index:05}");
                let (reply, _) = send_until_acked(
                    &mut client,
                    &sender,
                    GROUP_ID,
                    &client_message_id,
                    BODY_BYTES,
                    Duration::from_secs(60),
                )
                .await;
                acks.lock()
                    .expect("acks lock")
                    .push((reply.seq, client_message_id));
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender task");
    }
    let flood_elapsed = started.elapsed();
    // Let the commit streams deliver the last entries to the gateway.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_stalled_kib = gateway.rss_kib();
    let peak_kib = sampler.peak_kib();

    let resumed = tokio::time::Instant::now();
    slow.wait_for_seq(GROUP_ID, MESSAGES as u64, Duration::from_secs(60))
        .await;
    let catch_up_elapsed = resumed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_kib = gateway.rss_kib();
    let peak_with_catch_up_kib = sampler.finish();
    let log = std::fs::read_to_string(gateway.log_path()).expect("read the gateway log");
    let queue_full_events = log.matches("session queue full").count();

    let payload_kib = (MESSAGES * BODY_BYTES / 1024) as u64;
    eprintln!(
        "{MESSAGES} messages of {BODY_BYTES} B ({:.1} MiB of bodies) from {SENDERS} senders \
         acknowledged in {:.1} s; the stalled device caught up in {:.1} s",
        mib(payload_kib),
        flood_elapsed.as_secs_f64(),
        catch_up_elapsed.as_secs_f64()
    );
    eprintln!(
        "gateway VmRSS: before {:.1} MiB, peak while stalled {:.1} MiB (growth {:.1} MiB), \
         stalled at the end {:.1} MiB, peak with catch-up {:.1} MiB, after catch-up {:.1} MiB",
        mib(rss_before_kib),
        mib(peak_kib),
        mib(peak_kib.saturating_sub(rss_before_kib)),
        mib(rss_stalled_kib),
        mib(peak_with_catch_up_kib),
        mib(rss_after_kib),
    );
    eprintln!(
        "events dropped by the full session queue: {queue_full_events}; \
         repeats dropped by the device: {}",
        slow.repeats_dropped
    );

    let mut acks = acks.lock().expect("acks lock").clone();
    acks.sort();
    let seqs: Vec<u64> = acks.iter().map(|(seq, _)| *seq).collect();
    let expected_seqs: Vec<u64> = (1..=MESSAGES as u64).collect();
    assert_eq!(
        seqs, expected_seqs,
        "the {MESSAGES} sends are acknowledged with seqs 1..={MESSAGES}"
    );
    let received: Vec<(u64, String)> = slow
        .messages_of(GROUP_ID)
        .iter()
        .map(|message| (message.seq, message.client_message_id.clone()))
        .collect();
    assert_eq!(
        received.len(),
        MESSAGES,
        "the device receives all {MESSAGES} messages"
    );
    let distinct: BTreeSet<&str> = received.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        distinct.len(),
        MESSAGES,
        "the device receives each client message id once"
    );
    assert_eq!(
        received, acks,
        "the device receives exactly the acknowledged messages in seq order"
    );

    assert!(
        queue_full_events > 0,
        "the session queue overflowed, so the catch-up came from history; log in {}",
        gateway.log_path().display()
    );

    // A gateway that buffered the whole flood for the stalled session
    // would grow by at least the bodies it stores. The bounded one stores
    // at most the session queue and its outbound buffer. The bound allows
    // twice the queue's bodies plus 16 MiB for the senders' calls and
    // allocator slack, still far below the flood.
    // `parley gateway` runs with the default settings.
    let queue_events_max =
        GatewayConfig::new(String::new(), Vec::new(), Vec::new()).session_buffer_events_max;
    let queue_kib = (queue_events_max * BODY_BYTES / 1024) as u64;
    let growth_max_kib = 2 * queue_kib + 16 * 1024;
    assert!(
        growth_max_kib < payload_kib,
        "the memory bound ({growth_max_kib} KiB) is below the flood ({payload_kib} KiB)"
    );
    let growth_kib = peak_kib.saturating_sub(rss_before_kib);
    assert!(
        growth_kib <= growth_max_kib,
        "gateway VmRSS grew by {growth_kib} KiB while the device stalled, more than \
         {growth_max_kib} KiB"
    );
}
