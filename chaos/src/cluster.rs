//! The cluster a chaos run starts and breaks: `parley node` processes on
//! 127.0.0.1, one fault-injecting proxy per ordered pair of nodes, and
//! `parley gateway` processes that reach the nodes directly.
//!
//! Node i lists node j at the address of proxy i->j in its `--peer j=`
//! flag, so every Raft message and forwarded request from i to j crosses
//! that proxy. Node i lists itself at its real address. Gateways and this
//! tool's own status and read calls go straight to the nodes.
//!
//! Node and gateway ports come from 20000-31999, below Linux's default
//! ephemeral range (32768-60999), so no outgoing connection takes a killed
//! node's port before the node restarts. Dropping a `Cluster` sends SIGKILL
//! to every child and stops every proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use parley_shards::client::ClusterClient;
use parley_shards::proto::{SetClockOffsetRequest, StatusReply};
use rand::{Rng, RngCore};

use crate::crash::{self, Loss};
use crate::process::ChildProcess;
use crate::proxy::{LinkMode, Proxy};

/// Ports the tool picks node and gateway ports from.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// How long one status call may take before the node counts as silent.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a started node may take to respond to a status request.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a node start is retried when its port is taken.
const NODE_START_ATTEMPTS: usize = 5;

/// The size of a cluster, its binary and the directory of its files.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub gateways: usize,
    pub shards: u32,
    pub dir: PathBuf,
    pub parley_bin: PathBuf,
    /// The preload library that journals unsynced writes (`crate::crash`),
    /// needed by `power_loss`; None starts nodes without it.
    pub crash_shim: Option<PathBuf>,
    /// Milliseconds each write to a node's files waits, with the shim.
    pub disk_delay_ms: u64,
}

/// One node's process and the state a restart must keep.
struct NodeSlot {
    process: Option<ChildProcess>,
    clock_offset_ms: i64,
    paused: bool,
}

/// The processes and proxies of one run.
pub struct Cluster {
    options: ClusterOptions,
    node_addresses: Vec<SocketAddr>,
    gateway_addresses: Vec<SocketAddr>,
    proxies: BTreeMap<(usize, usize), Proxy>,
    nodes: Vec<NodeSlot>,
    gateways: Vec<Option<ChildProcess>>,
    client: ClusterClient,
    key_path: PathBuf,
    /// Descriptions of children that exited without the tool stopping them.
    unexpected_exits: Vec<String>,
    /// Findings that do not fail the run, such as a node that ignored
    /// SIGTERM.
    warnings: Vec<String>,
}

impl Cluster {
    /// Starts the proxies, the nodes and the gateways, and waits until
    /// every shard has a leader and every gateway accepts connections.
    pub async fn start(options: ClusterOptions, ready_timeout: Duration) -> Result<Cluster> {
        let ports = pick_ports(options.nodes + options.gateways)?;
        let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

        let node_addresses: Vec<SocketAddr> = ports[..options.nodes]
            .iter()
            .copied()
            .map(address)
            .collect();
        let gateway_addresses = ports[options.nodes..]
            .iter()
            .copied()
            .map(address)
            .collect();
        let proxies = start_proxies(&node_addresses).await?;

        let client_addresses: Vec<String> = node_addresses.iter().map(|a| a.to_string()).collect();
        let client = ClusterClient::new(&client_addresses)?;
        let key_path = write_token_key(&options.dir)?;

        let mut cluster = Cluster {
            nodes: (0..options.nodes)
                .map(|_| NodeSlot {
                    process: None,
                    clock_offset_ms: 0,
                    paused: false,
                })
                .collect(),
            gateways: (0..options.gateways).map(|_| None).collect(),
            options,
            node_addresses,
            gateway_addresses,
            proxies,
            client,
            key_path,
            unexpected_exits: Vec::new(),
            warnings: Vec::new(),
        };

        for node in 0..cluster.options.nodes {
            cluster.start_node(node).await?;
        }
        for gateway in 0..cluster.options.gateways {
            cluster.start_gateway(gateway)?;
        }
        cluster.wait_ready(ready_timeout).await?;
        Ok(cluster)
    }

    pub fn node_count(&self) -> usize {
        self.options.nodes
    }

    /// Returns the client of the nodes' API, dialing them directly.
    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    pub fn gateway_addresses(&self) -> Vec<String> {
        self.gateway_addresses
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    fn node_args(&self, node: usize) -> Vec<String> {
        let id = node + 1;
        let mut args = vec![
            "node".to_string(),
            format!("--id={id}"),
            format!("--listen={}", self.node_addresses[node]),
            format!("--data-dir={}", self.data_dir(node).display()),
            format!("--shards={}", self.options.shards),
            format!("--clock-offset-ms={}", self.nodes[node].clock_offset_ms),
        ];
        for peer in 0..self.options.nodes {
            let address = if peer == node {
                self.node_addresses[node]
            } else {
                self.proxies[&(node, peer)].address()
            };
            args.push(format!("--peer={}={address}", peer + 1));
        }
        args
    }

    fn data_dir(&self, node: usize) -> PathBuf {
        self.options.dir.join(format!("node{}", node + 1))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.options.dir.join(format!("{name}.log"))
    }

    fn journal_path(&self, node: usize) -> PathBuf {
        self.options.dir.join(format!("node{}.journal", node + 1))
    }

    /// Starts one node process, with the crash shim preloaded if the
    /// cluster has one. A journal left from a clean stop is discarded.
    fn spawn_node(&self, node: usize) -> Result<ChildProcess> {
        let name = format!("node{}", node + 1);
        let data_dir = self.data_dir(node);
        let journal = self.journal_path(node);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("failed to create {}", data_dir.display()))?;
        crash::discard(&journal)?;
        let delay = std::ffi::OsString::from(self.options.disk_delay_ms.to_string());
        let mut env: Vec<(&str, &OsStr)> = Vec::new();
        if let Some(shim) = &self.options.crash_shim {
            env.push(("LD_PRELOAD", shim.as_os_str()));
            env.push((crash::JOURNAL_VARIABLE, journal.as_os_str()));
            env.push((crash::DIR_VARIABLE, data_dir.as_os_str()));
            env.push((crash::WRITE_DELAY_VARIABLE, &delay));
        }
        ChildProcess::spawn(
            &self.options.parley_bin,
            &name,
            &self.node_args(node),
            &env,
            &self.log_path(&name),
        )
    }

    /// Starts (or restarts) a node and waits until it responds to status.
    /// A start whose port is taken is retried a few times.
    pub async fn start_node(&mut self, node: usize) -> Result<()> {
        if self.nodes[node].process.is_some() {
            bail!("node {} is already running", node + 1);
        }
        for attempt in 1..=NODE_START_ATTEMPTS {
            let mut process = self.spawn_node(node)?;
            match self.await_node_start(node, &mut process).await {
                Ok(()) => {
                    self.nodes[node].process = Some(process);
                    self.nodes[node].paused = false;
                    return Ok(());
                }
                Err(tail) if tail.contains("failed to listen") && attempt < NODE_START_ATTEMPTS => {
                    tracing::warn!(node = node + 1, attempt, "node port is taken; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(tail) => {
                    process.kill().await;
                    bail!(
                        "node {} did not start; its log {} ends with:\n{tail}",
                        node + 1,
                        process.log_path().display()
                    );
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Waits until the node responds to status. Returns its log tail if it
    /// exits or stays silent for `NODE_START_TIMEOUT`.
    async fn await_node_start(
        &self,
        node: usize,
        process: &mut ChildProcess,
    ) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        while started.elapsed() < NODE_START_TIMEOUT {
            if process.exited().is_some() {
                return Err(process.log_tail());
            }
            if self.status(node).await.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "  (no response to status within {} s)\n{}",
            NODE_START_TIMEOUT.as_secs(),
            process.log_tail()
        ))
    }

    fn start_gateway(&mut self, gateway: usize) -> Result<()> {
        let name = format!("gateway{}", gateway + 1);
        let mut args = vec![
            "gateway".to_string(),
            format!("--listen={}", self.gateway_addresses[gateway]),
            format!("--token-secret-file={}", self.key_path.display()),
        ];
        args.extend(self.node_addresses.iter().map(|a| format!("--node={a}")));
        let process = ChildProcess::spawn(
            &self.options.parley_bin,
            &name,
            &args,
            &[],
            &self.log_path(&name),
        )?;
        self.gateways[gateway] = Some(process);
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            let mut reason = self.leadership().await.err();
            for address in &self.gateway_addresses {
                if tokio::net::TcpStream::connect(address).await.is_err() {
                    reason = Some(format!("gateway {address} does not accept connections"));
                }
            }
            let Some(reason) = reason else {
                return Ok(());
            };
            let exits = self.check_exits().await;
            if !exits.is_empty() {
                bail!("a process exited during the start: {}", exits.join("; "));
            }
            if started.elapsed() > timeout {
                bail!(
                    "the cluster was not ready after {} s: {reason}; see the logs in {}",
                    timeout.as_secs(),
                    self.options.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Returns a node's status, or None if it does not respond in time.
    pub async fn status(&self, node: usize) -> Option<StatusReply> {
        match tokio::time::timeout(STATUS_TIMEOUT, self.client.status(node, false)).await {
            Ok(Ok(reply)) => Some(reply),
            _ => None,
        }
    }

    async fn all_statuses(&self) -> Result<Vec<StatusReply>, String> {
        let mut replies = Vec::new();
        for node in 0..self.options.nodes {
            match self.status(node).await {
                Some(reply) => replies.push(reply),
                None => return Err(format!("node {} does not respond to status", node + 1)),
            }
        }
        Ok(replies)
    }

    /// Checks that every node responds and every replica of each shard
    /// names the same leader, which reports itself as leader.
    pub async fn leadership(&self) -> Result<(), String> {
        let replies = self.all_statuses().await?;
        let mut problems = Vec::new();
        for (shard, replicas) in replicas_by_shard(&replies) {
            let leaders: BTreeSet<u64> = replicas.iter().map(|r| r.leader_id).collect();
            let leader = *leaders.iter().next().unwrap_or(&0);
            let leader_agrees = replicas
                .iter()
                .any(|r| r.node_id == leader && r.role == "leader");
            if leaders.len() != 1 || leader == 0 || !leader_agrees {
                problems.push(format!("shard {shard} has leaders {leaders:?}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }

    /// Checks `leadership` and that every replica of each shard has applied
    /// the same index.
    pub async fn converged(&self) -> Result<(), String> {
        self.leadership().await?;
        let replies = self.all_statuses().await?;
        let mut problems = Vec::new();
        for (shard, replicas) in replicas_by_shard(&replies) {
            let applied: BTreeMap<u64, u64> = replicas
                .iter()
                .map(|r| (r.node_id, r.last_applied_index))
                .collect();
            let indexes: BTreeSet<u64> = applied.values().copied().collect();
            if indexes.len() != 1 {
                problems.push(format!("shard {shard} applied indexes by node {applied:?}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }

    /// Waits until `leadership` holds; returns the last problem on timeout.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        loop {
            let outcome = self.leadership().await;
            if outcome.is_ok() || started.elapsed() > timeout {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends SIGKILL to a node and waits for it to die.
    pub async fn kill_node(&mut self, node: usize) {
        if let Some(mut process) = self.nodes[node].process.take() {
            process.kill().await;
        }
    }

    /// Sends SIGKILL to a node and undoes its writes that no sync covered,
    /// as a power loss of its machine would. Without the crash shim this is
    /// a plain SIGKILL.
    pub async fn power_off_node(&mut self, node: usize) -> Result<Loss> {
        self.kill_node(node).await;
        if self.options.crash_shim.is_none() {
            return Ok(Loss::default());
        }
        crash::roll_back(&self.journal_path(node))
    }

    /// Stops a node with SIGTERM, as an operator would, and SIGKILL if it
    /// does not exit in time, which is recorded as a warning.
    pub async fn terminate_node(&mut self, node: usize) {
        if let Some(mut process) = self.nodes[node].process.take() {
            if !process.terminate().await {
                self.warnings.push(slow_stop_warning(&process));
            }
        }
    }

    pub fn pause_node(&mut self, node: usize) {
        if let Some(process) = &mut self.nodes[node].process {
            process.signal(libc::SIGSTOP);
            self.nodes[node].paused = true;
        }
    }

    pub fn resume_node(&mut self, node: usize) {
        if let Some(process) = &mut self.nodes[node].process {
            process.signal(libc::SIGCONT);
        }
        self.nodes[node].paused = false;
    }

    /// Sets the mode of the proxy that carries `from`'s connections to `to`.
    pub fn set_link(&self, from: usize, to: usize, mode: LinkMode) {
        self.proxies[&(from, to)].set_mode(mode);
    }

    pub fn set_every_link(&self, mode: LinkMode) {
        for proxy in self.proxies.values() {
            proxy.set_mode(mode);
        }
    }

    /// Skews a node's clock through the SetClockOffset RPC. The offset is
    /// also passed to the node's next start.
    pub async fn set_clock_offset(&mut self, node: usize, offset_ms: i64) -> Result<()> {
        self.nodes[node].clock_offset_ms = offset_ms;
        let mut client = self.client.node(node);
        let request = SetClockOffsetRequest { offset_ms };
        tokio::time::timeout(Duration::from_secs(5), client.set_clock_offset(request))
            .await
            .with_context(|| format!("SetClockOffset on node {} timed out", node + 1))?
            .with_context(|| format!("SetClockOffset on node {} failed", node + 1))?;
        Ok(())
    }

    /// Undoes every fault: links pass, paused nodes resume, clocks reset
    /// and stopped nodes restart. Returns what could not be undone.
    pub async fn heal(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        self.set_every_link(LinkMode::Pass);
        for node in 0..self.options.nodes {
            if self.nodes[node].paused {
                self.resume_node(node);
            }
            if self.nodes[node].process.is_none() {
                if let Err(error) = self.start_node(node).await {
                    problems.push(format!("{error:#}"));
                    continue;
                }
            }
            if self.nodes[node].clock_offset_ms != 0 {
                if let Err(error) = self.set_clock_offset(node, 0).await {
                    problems.push(format!("{error:#}"));
                }
            }
        }
        problems
    }

    /// Finds children that exited without the tool stopping them, records
    /// them and starts them again. Returns the new descriptions.
    pub async fn check_exits(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        for node in 0..self.options.nodes {
            let Some(process) = &mut self.nodes[node].process else {
                continue;
            };
            let Some(status) = process.exited() else {
                continue;
            };
            found.push(exit_description(process, status));
            self.nodes[node].process = None;
            if let Err(error) = self.start_node(node).await {
                found.push(format!("{error:#}"));
            }
        }
        for gateway in 0..self.options.gateways {
            let Some(process) = &mut self.gateways[gateway] else {
                continue;
            };
            let Some(status) = process.exited() else {
                continue;
            };
            found.push(exit_description(process, status));
            if let Err(error) = self.start_gateway(gateway) {
                found.push(format!("{error:#}"));
            }
        }
        for description in &found {
            tracing::error!(%description, "a child process exited unexpectedly");
        }
        self.unexpected_exits.extend(found.iter().cloned());
        found
    }

    /// Returns every unexpected exit seen so far.
    pub fn unexpected_exits(&self) -> &[String] {
        &self.unexpected_exits
    }

    /// Returns every log file of the run: nodes, then gateways.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        let nodes = (1..=self.options.nodes).map(|id| self.log_path(&format!("node{id}")));
        let gateways = (1..=self.options.gateways).map(|id| self.log_path(&format!("gateway{id}")));
        nodes.chain(gateways).collect()
    }

    /// Stops the gateways, then the nodes, with SIGTERM (SIGCONT first for
    /// a paused one), then the proxies. Returns every warning of the run.
    pub async fn shutdown(mut self) -> Vec<String> {
        let mut warnings = std::mem::take(&mut self.warnings);
        for mut gateway in self.gateways.iter_mut().filter_map(Option::take) {
            if !gateway.terminate().await {
                warnings.push(slow_stop_warning(&gateway));
            }
        }
        let stops = self
            .nodes
            .iter_mut()
            .filter_map(|slot| slot.process.take())
            .map(|mut process| async move {
                let exited = process.terminate().await;
                (!exited).then(|| slow_stop_warning(&process))
            });
        warnings.extend(futures::future::join_all(stops).await.into_iter().flatten());
        self.proxies.clear();
        tally(warnings)
    }
}

/// Merges repeated warnings into one line each, in first-seen order, with
/// the count appended when above one.
fn tally(warnings: Vec<String>) -> Vec<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for warning in warnings {
        match counts.iter_mut().find(|(seen, _)| *seen == warning) {
            Some((_, count)) => *count += 1,
            None => counts.push((warning, 1)),
        }
    }
    counts
        .into_iter()
        .map(|(warning, count)| match count {
            1 => warning,
            _ => format!("{warning} ({count} times)"),
        })
        .collect()
}

fn slow_stop_warning(process: &ChildProcess) -> String {
    format!(
        "{} did not exit within {} s of SIGTERM and got SIGKILL; see {}",
        process.name(),
        crate::process::STOP_TIMEOUT.as_secs(),
        process.log_path().display()
    )
}

fn exit_description(process: &ChildProcess, status: std::process::ExitStatus) -> String {
    format!(
        "{} exited unexpectedly ({status}); its log {} ends with:\n{}",
        process.name(),
        process.log_path().display(),
        process.log_tail()
    )
}

/// The replica of one shard as one node reports it.
struct Replica {
    node_id: u64,
    role: String,
    leader_id: u64,
    last_applied_index: u64,
}

fn replicas_by_shard(replies: &[StatusReply]) -> BTreeMap<u32, Vec<Replica>> {
    let mut shards: BTreeMap<u32, Vec<Replica>> = BTreeMap::new();
    for reply in replies {
        for shard in &reply.shards {
            shards.entry(shard.shard_id).or_default().push(Replica {
                node_id: reply.node_id,
                role: shard.role.clone(),
                leader_id: shard.leader_id,
                last_applied_index: shard.last_applied_index,
            });
        }
    }
    shards
}

/// Starts one proxy per ordered pair of nodes; proxy (i, j) forwards to
/// node j.
async fn start_proxies(nodes: &[SocketAddr]) -> Result<BTreeMap<(usize, usize), Proxy>> {
    let mut proxies = BTreeMap::new();
    for from in 0..nodes.len() {
        for to in (0..nodes.len()).filter(|to| *to != from) {
            let name = format!("{}->{}", from + 1, to + 1);
            let proxy = Proxy::start(name.clone(), nodes[to])
                .await
                .with_context(|| format!("failed to start the proxy of link {name}"))?;
            proxies.insert((from, to), proxy);
        }
    }
    Ok(proxies)
}

/// Picks `count` distinct ports in `PORT_RANGE` that are free right now.
fn pick_ports(count: usize) -> Result<Vec<u16>> {
    let mut rng = rand::thread_rng();
    let mut ports = Vec::new();
    for _ in 0..1_000 {
        if ports.len() == count {
            return Ok(ports);
        }
        let port = rng.gen_range(PORT_RANGE);
        if !ports.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    bail!(
        "found only {} free ports of {count} in 127.0.0.1:{}-{}; stop processes listening there",
        ports.len(),
        PORT_RANGE.start,
        PORT_RANGE.end - 1
    )
}

/// Writes a new 32-byte token signing key with mode 0600 and returns its
/// path.
fn write_token_key(dir: &Path) -> Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("token.key");
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to create the token key file {}", path.display()))?;
    file.write_all(&key)
        .with_context(|| format!("failed to write the token key file {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_distinct_and_below_ephemeral_range() {
        let ports = pick_ports(8).unwrap();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 8);
        assert!(ports.iter().all(|port| PORT_RANGE.contains(port)));
    }

    #[test]
    fn tally_counts_repeated_warnings() {
        let warnings = ["b", "a", "b", "b"].map(String::from).to_vec();
        assert_eq!(tally(warnings), ["b (3 times)", "a"]);
    }

    #[test]
    fn token_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = write_token_key(directory.path()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
