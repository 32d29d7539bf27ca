//! The client traffic of a chaos run, from the simulator's workload
//! (`parley_simulation::workload`): users registered through the first
//! gateway, then every device sending with retries, marking messages read
//! and keeping a session open through the gateway its index picks. A
//! sampler records each node's Raft view meanwhile. Everything lands in one
//! `Recorder`, stamped with wall-clock milliseconds since the run started.
//!
//! The workload draws its choices from an unseeded random generator, so
//! only the fault schedule repeats with the seed. Its device futures hold a
//! `rand::ThreadRng` across awaits outside madsim, which makes them !Send,
//! so they run with `spawn_local` and need a `LocalSet`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use parley_shards::client::ClusterClient;
use parley_simulation::verify;
use parley_simulation::workload::{self, Cursors, Population, Recorder};
use tokio::task::JoinHandle;

/// The running traffic of one run.
pub struct Traffic {
    pub recorder: Recorder,
    pub cursors: Cursors,
    pub population: Population,
    senders: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Traffic {
    /// Registers `users` users through the first gateway, then starts one
    /// sender and one session per device and the Raft sampler.
    pub async fn start(
        recorder: Recorder,
        gateways: &[String],
        nodes: ClusterClient,
        users: usize,
        sends_per_device: usize,
    ) -> Result<Traffic> {
        let mut clients = Vec::new();
        for address in gateways {
            clients.push(workload::connect(address).await);
        }
        let population = workload::populate(&clients[0], users)
            .await
            .map_err(|status| anyhow!("registering the workload's users failed: {status}"))?;
        let cursors = Cursors::default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let operations = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        let mut background = vec![tokio::spawn(verify::poll_raft(
            nodes,
            recorder.clone(),
            stopped.clone(),
        ))];
        for (index, device) in population.devices.iter().enumerate() {
            let client = clients[index % clients.len()].clone();
            let conversations = population.conversations_of(&device.user_id);
            background.push(tokio::task::spawn_local(workload::run_session(
                client.clone(),
                device.clone(),
                conversations.clone(),
                recorder.clone(),
                cursors.clone(),
                stopped.clone(),
            )));
            senders.push(tokio::task::spawn_local(workload::run_sender(
                client,
                device.clone(),
                conversations,
                sends_per_device,
                recorder.clone(),
                operations.clone(),
                cursors.clone(),
            )));
        }
        Ok(Traffic {
            recorder,
            cursors,
            population,
            senders,
            background,
            stop,
        })
    }

    /// Stops every sender where it is. A send cut off before its reply
    /// stays in the history as invoked, neither acknowledged nor failed.
    pub async fn stop_senders(&mut self) {
        for sender in &self.senders {
            sender.abort();
        }
        for sender in self.senders.drain(..) {
            let _ = sender.await;
        }
    }

    /// Closes the sessions and stops the Raft sampler.
    pub async fn stop_sessions(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.background {
            task.abort();
        }
        for task in self.background.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for task in self.senders.iter().chain(&self.background) {
            task.abort();
        }
    }
}
