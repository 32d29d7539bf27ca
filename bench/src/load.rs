//! The load driver. It runs one kind of operation from many concurrent
//! senders, closed loop (each sender starts its next operation when the
//! previous one returns) or open loop (at a fixed total rate, see `pacing`).
//! It records the latency of every operation started in the measured window.
//!
//! Each sender has at most one operation in flight, as one device or client
//! connection that waits for its acknowledgement. Operations started during
//! the warm-up are run but not recorded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::pacing::Schedule;
use crate::progress::TimedBar;
use crate::stats::{Recorder, Summary};

/// One kind of operation against one system, such as a replicated append.
pub trait Target: Send + Sync + 'static {
    /// Performs one operation as sender `sender`; an error counts as a
    /// failed operation and is not retried.
    fn call(&self, sender: usize) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How operations are started.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Closed,
    /// A fixed total rate in operations per second.
    Open {
        rate: f64,
    },
}

/// One measured run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub label: String,
    pub senders: usize,
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Runs `spec` against `target` and summarizes the measured window.
pub async fn run<T: Target>(target: Arc<T>, spec: &RunSpec) -> Summary {
    let _bar = TimedBar::start(&spec.label, spec.warmup + spec.duration);
    let started = Instant::now();
    let measured_from = started + spec.warmup;
    let ends = measured_from + spec.duration;
    let mut tasks = Vec::with_capacity(spec.senders);
    for sender in 0..spec.senders {
        let target = target.clone();
        let window = Window {
            started,
            measured_from,
            ends,
        };
        let task = match spec.mode {
            Mode::Closed => tokio::spawn(closed_sender(target, sender, window)),
            Mode::Open { rate } => {
                let schedule = Schedule::new(sender, spec.senders, rate);
                tokio::spawn(open_sender(target, sender, schedule, window))
            }
        };
        tasks.push(task);
    }
    let mut total = Recorder::new();
    for task in tasks {
        match task.await {
            Ok(recorder) => total.merge(&recorder),
            Err(error) => {
                tracing::error!(%error, "a sender task panicked");
                total.record_error();
            }
        }
    }
    total.summary(spec.duration)
}

/// The time frame of one run.
#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    measured_from: Instant,
    ends: Instant,
}

async fn closed_sender<T: Target>(target: Arc<T>, sender: usize, window: Window) -> Recorder {
    let mut recorder = Recorder::new();
    loop {
        let begun = Instant::now();
        if begun >= window.ends {
            return recorder;
        }
        let result = target.call(sender).await;
        if begun >= window.measured_from {
            record(&mut recorder, result, begun.elapsed());
        }
    }
}

async fn open_sender<T: Target>(
    target: Arc<T>,
    sender: usize,
    schedule: Schedule,
    window: Window,
) -> Recorder {
    let mut recorder = Recorder::new();
    for index in 0.. {
        let intended = window.started + schedule.start_of(index);
        if intended >= window.ends {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let result = target.call(sender).await;
        if intended >= window.measured_from {
            record(&mut recorder, result, intended.elapsed());
        }
    }
    recorder
}

fn record(recorder: &mut Recorder, result: anyhow::Result<()>, latency: Duration) {
    match result {
        Ok(()) => recorder.record(latency),
        Err(error) => {
            tracing::debug!(error = format!("{error:#}"), "operation failed");
            recorder.record_error();
        }
    }
}
