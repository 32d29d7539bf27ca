//! Scenarios 3 and 4 on one Parley cluster, because both need many
//! registered users:
//! - fan-out: one large group, a share of its members connected to one
//!   gateway, and the time until every connected device has each message;
//! - connections: how many device Session streams one gateway holds, and
//!   its resident memory per stream.
//!
//! Users are `u0`, `u1`, ... with one device each; `u0` creates the group
//! and sends. Registration goes through the gateway's Register call, one
//! user per call because the API has no batch call, with
//! `--setup-concurrency` calls in flight. Members are added 1,000 per
//! command, the per-command limit of the shard state machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures::StreamExt;
use tokio::time::Instant;

use crate::cli::Scenario;
use crate::context::Context;
use crate::proto::parley::v1::server_event::Event;
use crate::proto::parley::v1::{client_event, Cursor, DeliveredAck};
use crate::report::{Report, Section, Table};
use crate::stats::{format_latency, format_rate, Recorder};
use crate::systems::parley::ParleyCluster;
use crate::systems::parley_client::{self, Device, Pool, Session};

/// Members per CreateGroup or AddMembers command (the core limit).
const MEMBERS_PER_COMMAND: usize = 1_000;

/// The fan-out group.
const GROUP: &str = "crowd";

/// Deadline of opening one session.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the last fan-out message may take to reach every device.
const FANOUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections used for registration and group setup.
const SETUP_CONNECTIONS: usize = 8;

/// Time the gateway gets to settle before a memory reading.
const SETTLE: Duration = Duration::from_secs(2);

/// The registered users and, once created, the group's last seq.
struct Crowd {
    devices: Vec<Device>,
    group_members: usize,
    group_last_seq: u64,
}

pub async fn run(context: &Context, report: &mut Report) -> Result<()> {
    let folder = context.folder("crowd");
    let settings = &context.settings;
    let mut cluster =
        ParleyCluster::start(&context.binaries.parley, &folder, settings.shards).await?;
    let outcome = run_on(context, &mut cluster, report).await;
    cluster.stop().await;
    outcome
}

async fn run_on(context: &Context, cluster: &mut ParleyCluster, report: &mut Report) -> Result<()> {
    let settings = &context.settings;
    let mut crowd = Crowd {
        devices: Vec::new(),
        group_members: 0,
        group_last_seq: 0,
    };
    let mut failure = None;
    if settings.runs(Scenario::Fanout) {
        match fanout(context, cluster, &mut crowd).await {
            Ok(section) => report.add(section),
            Err(error) => failure = Some(error.context("fan-out")),
        }
    }
    if settings.runs(Scenario::Connections) {
        let section = connections(context, cluster, &mut crowd)
            .await
            .context("connections")?;
        report.add(section);
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Registers users until `crowd` has `count`.
async fn ensure_users(
    pool: &Pool,
    crowd: &mut Crowd,
    count: usize,
    concurrency: usize,
) -> Result<()> {
    let have = crowd.devices.len();
    if have >= count {
        return Ok(());
    }
    let bar = crate::progress::counter("registering users", (count - have) as u64);
    let started = Instant::now();
    let devices = parley_client::register_many(pool, "u", have..count, concurrency, &bar).await?;
    bar.finish_and_clear();
    tracing::info!(
        users = count - have,
        seconds = started.elapsed().as_secs_f64(),
        "registered"
    );
    crowd.devices.extend(devices);
    Ok(())
}

/// Creates the group with users 0..members, 1,000 per command.
async fn create_group(pool: &Pool, crowd: &mut Crowd, members: usize) -> Result<()> {
    let client = pool.client(0);
    let creator = crowd.devices[0].clone();
    let ids: Vec<String> = crowd.devices[1..members]
        .iter()
        .map(|device| device.user_id.clone())
        .collect();
    let mut chunks = ids.chunks(MEMBERS_PER_COMMAND);
    let bar = crate::progress::counter("adding group members", members as u64);
    let first = chunks.next().unwrap_or(&[]);
    parley_client::create_group(&client, &creator, GROUP, first).await?;
    bar.inc(first.len() as u64 + 1);
    for chunk in chunks {
        parley_client::add_members(&client, &creator, GROUP, chunk).await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    crowd.group_members = members;
    Ok(())
}

/// Per-message arrival bookkeeping, indexed by seq.
struct Arrivals {
    epoch: Instant,
    count: Vec<AtomicU64>,
    last_nanos: Vec<AtomicU64>,
    sent_nanos: Vec<AtomicU64>,
    per_delivery: std::sync::Mutex<Recorder>,
}

impl Arrivals {
    fn new(messages: usize) -> Arrivals {
        let slots = || (0..=messages).map(|_| AtomicU64::new(0)).collect();
        Arrivals {
            epoch: Instant::now(),
            count: slots(),
            last_nanos: slots(),
            sent_nanos: slots(),
            per_delivery: std::sync::Mutex::new(Recorder::new()),
        }
    }

    fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn arrived(&self, seq: usize) {
        let now = self.now_nanos();
        self.count[seq].fetch_add(1, Ordering::Relaxed);
        self.last_nanos[seq].fetch_max(now, Ordering::Relaxed);
        let sent = self.sent_nanos[seq].load(Ordering::Relaxed);
        if sent > 0 {
            self.per_delivery
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .record(Duration::from_nanos(now.saturating_sub(sent)));
        }
    }
}

async fn fanout(context: &Context, cluster: &ParleyCluster, crowd: &mut Crowd) -> Result<Section> {
    let settings = &context.settings;
    let setup = Pool::connect(&cluster.gateway, SETUP_CONNECTIONS, &[]).await?;
    let registration_started = Instant::now();
    ensure_users(
        &setup,
        crowd,
        settings.fanout_members,
        settings.setup_concurrency,
    )
    .await?;
    let registration = registration_started.elapsed();
    create_group(&setup, crowd, settings.fanout_members).await?;

    let devices = settings.fanout_devices;
    let connections = devices.div_ceil(settings.streams_per_connection);
    let pool = Pool::connect(&cluster.gateway, connections, &[]).await?;
    let arrivals = Arc::new(Arrivals::new(settings.fanout_messages));
    let sessions = open_sessions(
        &pool,
        &crowd.devices[1..=devices],
        &[],
        settings.setup_concurrency,
    )
    .await?;
    let readers: Vec<_> = sessions
        .into_iter()
        .map(|session| tokio::spawn(read_group(session, arrivals.clone(), settings.fanout_acks)))
        .collect();

    let sent = send_messages(&setup, &crowd.devices[0], &arrivals, context).await;
    let drained = match sent {
        Ok(()) => wait_for_fanout(&arrivals, devices).await,
        Err(error) => Err(error),
    };
    for reader in readers {
        reader.abort();
    }
    drained?;
    crowd.group_last_seq = settings.fanout_messages as u64;
    Ok(fanout_section(
        context,
        &arrivals,
        connections,
        registration,
    ))
}

/// Opens a session per device, `concurrency` at a time, device i on
/// connection i modulo the pool size.
async fn open_sessions(
    pool: &Pool,
    devices: &[Device],
    cursors: &[Cursor],
    concurrency: usize,
) -> Result<Vec<Session>> {
    let bar = crate::progress::counter("opening sessions", devices.len() as u64);
    let sessions = futures::stream::iter(devices.iter().enumerate())
        .map(|(index, device)| {
            let client = pool.client(index);
            let bar = &bar;
            async move {
                let session =
                    Session::open(client, device, cursors.to_vec(), SESSION_OPEN_TIMEOUT).await;
                bar.inc(1);
                session
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect();
    bar.finish_and_clear();
    sessions
}

/// Reads one device's session, noting each new group message.
async fn read_group(mut session: Session, arrivals: Arc<Arrivals>, ack: bool) {
    let mut cursor = 0u64;
    while let Ok(Some(event)) = session.inbound.message().await {
        let Some(Event::Message(message)) = event.event else {
            continue;
        };
        if message.conversation_id != GROUP || message.seq <= cursor {
            continue;
        }
        cursor = message.seq;
        if let Some(slot) = usize::try_from(message.seq)
            .ok()
            .filter(|seq| *seq < arrivals.count.len())
        {
            arrivals.arrived(slot);
        }
        if ack {
            let event = client_event::Event::Delivered(DeliveredAck {
                conversation_id: GROUP.to_string(),
                seq: message.seq,
            });
            if session.send_event(event).await.is_err() {
                return;
            }
        }
    }
}

/// Sends the fan-out messages from `sender`, one per interval.
async fn send_messages(
    pool: &Pool,
    sender: &Device,
    arrivals: &Arrivals,
    context: &Context,
) -> Result<()> {
    let settings = &context.settings;
    let bar = crate::progress::counter("fan-out messages", settings.fanout_messages as u64);
    let started = Instant::now();
    for number in 0..settings.fanout_messages {
        tokio::time::sleep_until(started + settings.fanout_interval * number as u32).await;
        // The group has no other messages, so message `number` gets seq
        // number + 1. Its send time is stored before the call because a
        // device may receive it before the Send reply arrives.
        let seq = number + 1;
        arrivals.sent_nanos[seq].store(arrivals.now_nanos().max(1), Ordering::Relaxed);
        let body = vec![b'f'; settings.body_bytes];
        let reply = parley_client::send(
            pool.client(number),
            sender,
            GROUP,
            format!("f{number}"),
            body,
        )
        .await
        .with_context(|| format!("fan-out message {number}"))?;
        if reply.seq != seq as u64 {
            bail!(
                "fan-out message {number} got seq {}, expected {seq}",
                reply.seq
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

async fn wait_for_fanout(arrivals: &Arrivals, devices: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let missing: u64 = arrivals.count[1..]
            .iter()
            .map(|count| (devices as u64).saturating_sub(count.load(Ordering::Relaxed)))
            .sum();
        if missing == 0 {
            return Ok(());
        }
        if started.elapsed() > FANOUT_DRAIN_TIMEOUT {
            bail!("{missing} deliveries of fan-out messages still missing after {FANOUT_DRAIN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fanout_section(
    context: &Context,
    arrivals: &Arrivals,
    connections: usize,
    registration: Duration,
) -> Section {
    let settings = &context.settings;
    let mut all_devices = Recorder::new();
    let mut first_sent = u64::MAX;
    let mut last_arrival = 0;
    for seq in 1..arrivals.count.len() {
        let sent = arrivals.sent_nanos[seq].load(Ordering::Relaxed);
        let last = arrivals.last_nanos[seq].load(Ordering::Relaxed);
        all_devices.record(Duration::from_nanos(last.saturating_sub(sent)));
        first_sent = first_sent.min(sent);
        last_arrival = last_arrival.max(last);
    }
    let messages = all_devices.summary(Duration::from_secs(1));
    let per_delivery = arrivals
        .per_delivery
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .summary(Duration::from_secs(1));
    let deliveries = (settings.fanout_messages * settings.fanout_devices) as f64;
    let span = Duration::from_nanos(last_arrival.saturating_sub(first_sent));
    let mut table = Table::new(&[
        "members",
        "devices",
        "messages",
        "all devices p50",
        "p99",
        "max",
        "per delivery p50",
        "p99",
        "deliveries/s",
        "per message",
    ]);
    table.push(vec![
        settings.fanout_members.to_string(),
        settings.fanout_devices.to_string(),
        settings.fanout_messages.to_string(),
        format_latency(messages.p50),
        format_latency(messages.p99),
        format_latency(messages.max),
        format_latency(per_delivery.p50),
        format_latency(per_delivery.p99),
        format_rate(deliveries / span.as_secs_f64().max(1e-9)),
        format_rate(settings.fanout_devices as f64 / messages.p50.as_secs_f64().max(1e-9)),
    ]);
    let notes = fanout_notes(context, connections, registration);
    Section {
        title: "Large group fan-out".to_string(),
        table,
        notes,
    }
}

fn fanout_notes(context: &Context, connections: usize, registration: Duration) -> Vec<String> {
    let settings = &context.settings;
    vec![
        format!(
            "One group of {} members; {} of them connected to one gateway over {connections} \
             shared HTTP/2 connections ({} streams each); one message every {} ms from a \
             member that is not connected.",
            settings.fanout_members,
            settings.fanout_devices,
            settings.streams_per_connection,
            settings.fanout_interval.as_millis()
        ),
        "'all devices' is the time from the Send call until the last connected device had \
         the message, over messages; 'per delivery' is over every (message, device) pair."
            .to_string(),
        format!(
            "Devices {} messages. 'deliveries/s' is every delivery over the time from the \
             first Send to the last arrival, so the send interval bounds it; 'per message' \
             divides the devices by the p50 time to reach all of them. Registering the {} \
             users took {:.1} s.",
            if settings.fanout_acks {
                "ack all"
            } else {
                "do not ack"
            },
            settings.fanout_members,
            registration.as_secs_f64()
        ),
    ]
}

/// Restarts the gateway for a clean baseline, then opens sessions in
/// steps and reads the gateway's resident memory after each.
async fn connections(
    context: &Context,
    cluster: &mut ParleyCluster,
    crowd: &mut Crowd,
) -> Result<Section> {
    let settings = &context.settings;
    let setup = Pool::connect(&cluster.gateway, SETUP_CONNECTIONS, &[]).await?;
    ensure_users(&setup, crowd, settings.streams, settings.setup_concurrency).await?;
    drop(setup);
    cluster.stop_gateway().await;
    cluster.start_gateway().await?;
    tokio::time::sleep(SETTLE).await;
    let baseline_kib = cluster.gateway_rss_kib()?;

    let sources: Vec<std::net::IpAddr> = if settings.streams_per_connection == 1 {
        (2..=9)
            .map(|last| std::net::IpAddr::from([127, 0, 0, last]))
            .collect()
    } else {
        Vec::new()
    };
    let mut table = Table::new(&[
        "streams",
        "connections",
        "gateway RSS",
        "per stream",
        "per connection",
        "per stream, all in",
    ]);
    let mut tally = MemoryTally {
        baseline_kib,
        ..MemoryTally::default()
    };
    let mut open_by_step: Vec<(Pool, Vec<Session>)> = Vec::new();
    let mut stop_reason = None;
    while tally.streams < settings.streams {
        let step = settings.stream_step.min(settings.streams - tally.streams);
        match open_step(context, cluster, crowd, &mut tally, step, &sources).await {
            Ok(pool_and_sessions) => open_by_step.push(pool_and_sessions),
            Err(error) => {
                stop_reason = Some(format!("{error:#}"));
                break;
            }
        }
        table.push(tally.row());
    }
    drop(open_by_step);
    if let (Some(reason), true) = (&stop_reason, settings.require_all_streams) {
        bail!(
            "the gateway kept {} of {} streams open: {reason}",
            tally.streams,
            settings.streams
        );
    }
    Ok(connections_section(
        context,
        table,
        baseline_kib,
        stop_reason,
    ))
}

/// Gateway memory growth, split into what connecting and what opening
/// streams added.
#[derive(Default)]
struct MemoryTally {
    baseline_kib: u64,
    rss_kib: u64,
    connections: usize,
    streams: usize,
    connections_kib: i64,
    streams_kib: i64,
}

impl MemoryTally {
    fn row(&self) -> Vec<String> {
        let per = |kib: i64, count: usize| format!("{:.1} KiB", kib as f64 / count.max(1) as f64);
        let all_in = self.rss_kib as i64 - self.baseline_kib as i64;
        vec![
            self.streams.to_string(),
            self.connections.to_string(),
            format!("{:.1} MiB", self.rss_kib as f64 / 1024.0),
            per(self.streams_kib, self.streams),
            per(self.connections_kib, self.connections),
            per(all_in, self.streams),
        ]
    }
}

/// Connects the step's new connections, then opens `step` sessions for
/// the next users on them, reading the gateway's memory after each part.
async fn open_step(
    context: &Context,
    cluster: &ParleyCluster,
    crowd: &Crowd,
    tally: &mut MemoryTally,
    step: usize,
    sources: &[std::net::IpAddr],
) -> Result<(Pool, Vec<Session>)> {
    let settings = &context.settings;
    let before_kib = cluster.gateway_rss_kib()?;
    let connections = step.div_ceil(settings.streams_per_connection);
    let pool = Pool::connect(&cluster.gateway, connections, sources).await?;
    tokio::time::sleep(SETTLE).await;
    let connected_kib = cluster.gateway_rss_kib()?;
    tally.connections += connections;
    tally.connections_kib += connected_kib as i64 - before_kib as i64;

    // Members of the fan-out group resume after its last message, as
    // devices that already have it.
    let first = tally.streams;
    let devices = &crowd.devices[first..first + step];
    let in_group = crowd.group_members.saturating_sub(first).min(step);
    let cursors = [Cursor {
        conversation_id: GROUP.to_string(),
        seq: crowd.group_last_seq,
    }];
    let concurrency = settings.setup_concurrency;
    let mut sessions = open_sessions(&pool, &devices[..in_group], &cursors, concurrency).await?;
    sessions.extend(open_sessions(&pool, &devices[in_group..], &[], concurrency).await?);
    tokio::time::sleep(SETTLE).await;
    tally.rss_kib = cluster.gateway_rss_kib()?;
    tally.streams += step;
    tally.streams_kib += tally.rss_kib as i64 - connected_kib as i64;
    Ok((pool, sessions))
}

fn connections_section(
    context: &Context,
    table: Table,
    baseline_kib: u64,
    stop_reason: Option<String>,
) -> Section {
    let settings = &context.settings;
    let layout = if settings.streams_per_connection == 1 {
        "one TCP connection per device, from source addresses 127.0.0.2 to 127.0.0.9".to_string()
    } else {
        format!(
            "{} device streams multiplexed per HTTP/2 connection",
            settings.streams_per_connection
        )
    };
    let mut notes = vec![
        format!(
            "Each stream is one registered device's Session, opened and read up to its ready \
             event; {layout}. Target: 100,000 streams under 20 KiB each."
        ),
        format!(
            "Gateway VmRSS baseline {:.1} MiB after a restart. Each step first connects its \
             connections and then opens its streams, and VmRSS is read after each part. \
             'per connection' divides the growth from connecting by the connections, and \
             'per stream' the growth from opening streams by the streams. 'all in' divides \
             the whole growth over the baseline by the streams. Open-file limit of the bench \
             and its servers: {}.",
            baseline_kib as f64 / 1024.0,
            context.open_files
        ),
    ];
    match stop_reason {
        Some(reason) => notes.push(format!(
            "Stopped before {} streams: {reason}",
            settings.streams
        )),
        None => notes.push(format!("All {} streams stayed open.", settings.streams)),
    }
    Section {
        title: "Connections (Session streams on one gateway)".to_string(),
        table,
        notes,
    }
}
