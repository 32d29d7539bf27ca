//! Scenario 2, end-to-end delivery: the time from a `Send` call to the
//! message's arrival on the recipient device's Session stream. Senders run
//! open loop at 25%, 50% and 90% of the maximum Send throughput, which a
//! closed-loop run on the same cluster measures first.
//!
//! Pair i is a sender device and a recipient device in group `dc<i>`. The
//! body carries the send time (nanoseconds since the scenario's epoch) and
//! the phase, so the recipient computes the latency on arrival. Recipients
//! ack every message, as real devices do. After each phase every
//! acknowledged send must arrive, or the scenario fails.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use futures::StreamExt;
use tokio::time::Instant;

use crate::context::Context;
use crate::load::{self, Mode, RunSpec, Target};
use crate::proto::parley::v1::client_event;
use crate::proto::parley::v1::server_event::Event;
use crate::proto::parley::v1::DeliveredAck;
use crate::report::{Report, Section, Table};
use crate::stats::{format_latency, format_rate, Recorder, Summary};
use crate::systems::parley::ParleyCluster;
use crate::systems::parley_client::{self, Device, Pool, Session};

/// Fractions of the maximum Send throughput the open-loop phases run at.
const LOAD_FRACTIONS: [f64; 3] = [0.25, 0.50, 0.90];

/// Phase 0 measures the maximum; phases 1..=3 are the open-loop runs.
const PHASES: usize = 1 + LOAD_FRACTIONS.len();

/// How long the messages of a phase may take to arrive after it ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of opening one recipient session.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters shared by senders and recipients.
struct Shared {
    epoch: Instant,
    phase: AtomicUsize,
    acked: [AtomicU64; PHASES],
    delivered: [AtomicU64; PHASES],
    latencies: [Mutex<Recorder>; PHASES],
}

impl Shared {
    fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            phase: AtomicUsize::new(0),
            acked: std::array::from_fn(|_| AtomicU64::new(0)),
            delivered: std::array::from_fn(|_| AtomicU64::new(0)),
            latencies: std::array::from_fn(|_| Mutex::new(Recorder::new())),
        }
    }
}

/// Returns a body of `body_bytes` stamped with the send time and phase.
fn stamped_body(shared: &Shared, phase: usize, body_bytes: usize) -> Vec<u8> {
    let mut body = vec![b'.'; body_bytes.max(9)];
    let nanos = shared.epoch.elapsed().as_nanos() as u64;
    body[..8].copy_from_slice(&nanos.to_le_bytes());
    body[8] = phase as u8;
    body
}

/// Reads the send time and phase of a stamped body.
fn read_stamp(body: &[u8]) -> Option<(Duration, usize)> {
    let nanos = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    Some((Duration::from_nanos(nanos), usize::from(*body.get(8)?)))
}

struct DeliverySends {
    pool: Pool,
    senders: Vec<(Device, String)>,
    shared: Arc<Shared>,
    body_bytes: usize,
    next_id: AtomicU64,
}

impl Target for DeliverySends {
    fn call(&self, sender: usize) -> impl Future<Output = Result<()>> + Send {
        let client = self.pool.client(sender);
        let (device, conversation) = &self.senders[sender];
        let phase = self.shared.phase.load(Ordering::Relaxed);
        let id = format!("d{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let body = stamped_body(&self.shared, phase, self.body_bytes);
        let shared = self.shared.clone();
        async move {
            parley_client::send(client, device, conversation, id, body).await?;
            shared.acked[phase].fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}

pub async fn run(context: &Context, report: &mut Report) -> Result<()> {
    let folder = context.folder("delivery");
    let settings = &context.settings;
    let mut cluster =
        ParleyCluster::start(&context.binaries.parley, &folder, settings.shards).await?;
    let outcome = measure(context, &cluster).await;
    cluster.stop().await;
    report.add(outcome?);
    Ok(())
}

async fn measure(context: &Context, cluster: &ParleyCluster) -> Result<Section> {
    let settings = &context.settings;
    let pairs = settings.delivery_pairs;
    let pool = Pool::connect(&cluster.gateway, settings.connections, &[]).await?;
    let shared = Arc::new(Shared::new());
    let (senders, recipients) = setup_pairs(&pool, pairs, settings.setup_concurrency).await?;
    let mut readers = Vec::new();
    for (index, (device, conversation)) in recipients.into_iter().enumerate() {
        let session = Session::open(
            pool.client(index),
            &device,
            Vec::new(),
            SESSION_OPEN_TIMEOUT,
        )
        .await?;
        readers.push(tokio::spawn(read_messages(
            session,
            conversation,
            shared.clone(),
        )));
    }
    let target = Arc::new(DeliverySends {
        pool,
        senders,
        shared: shared.clone(),
        body_bytes: settings.body_bytes,
        next_id: AtomicU64::new(0),
    });

    let spec = |label: String, mode| RunSpec {
        label,
        senders: pairs,
        mode,
        warmup: settings.warmup,
        duration: settings.duration,
    };
    let maximum = load::run(
        target.clone(),
        &spec("delivery: max Send rate".into(), Mode::Closed),
    )
    .await;
    wait_for_delivery(&shared, 0).await?;
    let mut phases = Vec::new();
    for (offset, fraction) in LOAD_FRACTIONS.iter().enumerate() {
        let phase = offset + 1;
        shared.phase.store(phase, Ordering::Relaxed);
        let rate = (maximum.throughput * fraction).max(1.0);
        let label = format!("delivery: open loop at {:.0}% of max", fraction * 100.0);
        let sends = load::run(target.clone(), &spec(label, Mode::Open { rate })).await;
        wait_for_delivery(&shared, phase).await?;
        phases.push((*fraction, rate, sends));
    }
    for reader in readers {
        reader.abort();
    }
    Ok(section(context, &shared, &maximum, &phases))
}

/// Registers `pairs` senders and recipients and creates each pair's group.
async fn setup_pairs(
    pool: &Pool,
    pairs: usize,
    concurrency: usize,
) -> Result<(Vec<(Device, String)>, Vec<(Device, String)>)> {
    let bar = crate::progress::counter("registering pairs", 2 * pairs as u64);
    let senders = parley_client::register_many(pool, "ds", 0..pairs, concurrency, &bar).await?;
    let recipients = parley_client::register_many(pool, "dr", 0..pairs, concurrency, &bar).await?;
    bar.finish_and_clear();
    let groups = futures::stream::iter(senders.iter().zip(&recipients).enumerate())
        .map(|(index, (sender, recipient))| {
            let client = pool.client(index);
            async move {
                let conversation = format!("dc{index}");
                let members = [recipient.user_id.clone()];
                parley_client::create_group(&client, sender, &conversation, &members).await?;
                anyhow::Ok(conversation)
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<String>>>()?;
    Ok((
        senders.into_iter().zip(groups.iter().cloned()).collect(),
        recipients.into_iter().zip(groups).collect(),
    ))
}

/// Reads the recipient's session: records each new message's latency and
/// acks it.
async fn read_messages(mut session: Session, conversation: String, shared: Arc<Shared>) {
    let mut cursor = 0;
    loop {
        let event = match session.inbound.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(status) => {
                tracing::warn!(%conversation, %status, "recipient session failed");
                return;
            }
        };
        let Some(Event::Message(message)) = event.event else {
            continue;
        };
        if message.conversation_id != conversation || message.seq <= cursor {
            continue;
        }
        cursor = message.seq;
        if let Some((sent, phase)) = read_stamp(&message.body).filter(|(_, phase)| *phase < PHASES)
        {
            let latency = shared.epoch.elapsed().saturating_sub(sent);
            shared.latencies[phase]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .record(latency);
            shared.delivered[phase].fetch_add(1, Ordering::Relaxed);
        }
        let ack = DeliveredAck {
            conversation_id: conversation.clone(),
            seq: message.seq,
        };
        if session
            .send_event(client_event::Event::Delivered(ack))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Waits until every acknowledged send of `phase` has arrived.
async fn wait_for_delivery(shared: &Shared, phase: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let acked = shared.acked[phase].load(Ordering::Relaxed);
        let delivered = shared.delivered[phase].load(Ordering::Relaxed);
        if delivered >= acked {
            return Ok(());
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!(
                "only {delivered} of {acked} acknowledged messages of delivery phase {phase} \
                 reached their recipients within {DRAIN_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn section(
    context: &Context,
    shared: &Shared,
    maximum: &Summary,
    phases: &[(f64, f64, Summary)],
) -> Section {
    let mut table = Table::new(&[
        "load",
        "rate",
        "sends/s",
        "send p99",
        "delivered",
        "delivery p50",
        "p99",
        "p99.9",
        "max",
    ]);
    for (offset, (fraction, rate, sends)) in phases.iter().enumerate() {
        let phase = offset + 1;
        let latencies = shared.latencies[phase]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .summary(context.settings.duration);
        table.push(vec![
            format!("{:.0}%", fraction * 100.0),
            format!("{}/s", format_rate(*rate)),
            format_rate(sends.throughput),
            format_latency(sends.p99),
            shared.delivered[phase].load(Ordering::Relaxed).to_string(),
            format_latency(latencies.p50),
            format_latency(latencies.p99),
            format_latency(latencies.p999),
            format_latency(latencies.max),
        ]);
    }
    let notes = vec![
        format!(
            "{} sender/recipient pairs, each in its own group; maximum Send throughput \
             (closed loop, {} senders): {} ops/s.",
            context.settings.delivery_pairs,
            context.settings.delivery_pairs,
            format_rate(maximum.throughput)
        ),
        "Delivery latency runs from the Send call to the message on the recipient's Session \
         stream, warm-up included; recipients ack every message. Every acknowledged send \
         arrived."
            .to_string(),
    ];
    Section {
        title: "End-to-end delivery (Send to recipient session)".to_string(),
        table,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let shared = Shared::new();
        let body = stamped_body(&shared, 2, 256);
        assert_eq!(body.len(), 256);
        let (sent, phase) = read_stamp(&body).expect("stamped body");
        assert_eq!(phase, 2);
        assert!(sent <= shared.epoch.elapsed());
    }
}
