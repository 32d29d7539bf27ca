//! Scenario 5, typing indicators: the time from a device's TypingUpdate on
//! its session to the TypingEvent on its peer's session, both devices on
//! one gateway. Updates alternate between typing and stopped, so each one
//! changes the state shown to the peer.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::time::Instant;

use crate::context::Context;
use crate::proto::parley::v1::server_event::Event;
use crate::proto::parley::v1::{client_event, ClientEvent, TypingUpdate};
use crate::report::{Report, Section, Table};
use crate::stats::{format_latency, Recorder};
use crate::systems::parley::ParleyCluster;
use crate::systems::parley_client::{self, Pool, Session};

/// How long the peer may wait for one typing event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two samples.
const SAMPLE_PAUSE: Duration = Duration::from_millis(10);

const CONVERSATION: &str = "typing-group";

pub async fn run(context: &Context, report: &mut Report) -> Result<()> {
    let folder = context.folder("typing");
    let mut cluster =
        ParleyCluster::start(&context.binaries.parley, &folder, context.settings.shards).await?;
    let outcome = measure(context, &cluster).await;
    cluster.stop().await;
    report.add(outcome?);
    Ok(())
}

async fn measure(context: &Context, cluster: &ParleyCluster) -> Result<Section> {
    let samples = context.settings.typing_samples;
    let pool = Pool::connect(&cluster.gateway, 2, &[]).await?;
    let typist = parley_client::register(&pool.client(0), "typist").await?;
    let peer = parley_client::register(&pool.client(1), "peer").await?;
    parley_client::create_group(
        &pool.client(0),
        &typist,
        CONVERSATION,
        std::slice::from_ref(&peer.user_id),
    )
    .await?;
    let typist_session = Session::open(pool.client(0), &typist, Vec::new(), EVENT_TIMEOUT).await?;
    let mut peer_session = Session::open(pool.client(1), &peer, Vec::new(), EVENT_TIMEOUT).await?;
    let Session {
        outbound,
        mut inbound,
    } = typist_session;
    // The typist's own stream must be read, or its flow-control window fills.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });

    let bar = crate::progress::counter("typing round trips", samples as u64);
    let mut recorder = Recorder::new();
    for sample in 0..samples {
        let typing = sample % 2 == 0;
        let update = TypingUpdate {
            conversation_id: CONVERSATION.to_string(),
            typing,
        };
        let started = Instant::now();
        outbound
            .send(ClientEvent {
                event: Some(client_event::Event::Typing(update)),
            })
            .await
            .context("the typist's session has ended")?;
        wait_for_typing(&mut peer_session, typing).await?;
        recorder.record(started.elapsed());
        bar.inc(1);
        tokio::time::sleep(SAMPLE_PAUSE).await;
    }
    drain.abort();
    bar.finish_and_clear();

    let summary = recorder.summary(Duration::from_secs(1));
    let mut table = Table::new(&["samples", "p50", "p99", "p99.9", "max"]);
    table.push(vec![
        samples.to_string(),
        format_latency(summary.p50),
        format_latency(summary.p99),
        format_latency(summary.p999),
        format_latency(summary.max),
    ]);
    Ok(Section {
        title: "Typing indicator (sender to peer)".to_string(),
        table,
        notes: vec![format!(
            "Two devices in one group on one gateway, separate HTTP/2 connections; updates \
             alternate typing/stopped with a {} ms pause.",
            SAMPLE_PAUSE.as_millis()
        )],
    })
}

/// Reads the peer's events until a typing event of the group with state
/// `typing` arrives.
async fn wait_for_typing(session: &mut Session, typing: bool) -> Result<()> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match tokio::time::timeout(left, session.inbound.message()).await {
            Err(_) => bail!("the peer got no typing={typing} event within {EVENT_TIMEOUT:?}"),
            Ok(Err(status)) => bail!("the peer's session failed: {status}"),
            Ok(Ok(None)) => bail!("the peer's session ended"),
            Ok(Ok(Some(event))) => event,
        };
        if let Some(Event::Typing(event)) = event.event {
            if event.conversation_id == CONVERSATION && event.typing == typing {
                return Ok(());
            }
        }
    }
}
