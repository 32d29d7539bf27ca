//! `parley dev`: a whole local deployment from one command. It starts three
//! `parley node` processes and one `parley gateway` on 127.0.0.1, waits
//! until every shard has a leader and the gateway accepts connections,
//! prints how to connect, and supervises the processes until SIGINT or
//! SIGTERM.
//!
//! The gateway listens on the base port and node N on base + N. Node N
//! keeps its data in `DIR/nodeN` and appends its output to `DIR/nodeN.log`.
//! The gateway appends to `DIR/gateway.log`. `DIR/token.key` contains the
//! token signing key; it is created once so tokens stay valid across runs.
//! `DIR/shards` records the shard count, which must not change.
//!
//! Children run in their own process group, so a terminal's Ctrl-C reaches
//! only this process, which then sends SIGTERM to each child and waits.
//! On Linux each child also gets SIGTERM from the kernel if this process
//! dies without stopping it.

mod children;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use parley_shards::client::ClusterClient;
use rand::RngCore;
use tokio::time::Instant;

use crate::node::shutdown_signal;
use children::{first_exit, stop_all, ChildProcess};

/// Number of nodes `parley dev` runs; each shard has a replica on all three.
const NODE_COUNT: u16 = 3;

/// Bytes of a newly created token key.
const TOKEN_KEY_BYTES: usize = 32;

/// Minimum token key length `parley gateway` accepts, in bytes.
pub const TOKEN_KEY_BYTES_MIN: usize = 16;

/// How long startup may take before `parley dev` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `parley dev` settings.
#[derive(Clone, Debug)]
pub struct DevOptions {
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub shards: u32,
}

/// Reads a token signing key, which must be at least 16 bytes.
pub fn read_token_key(path: &Path) -> Result<Vec<u8>> {
    let key = std::fs::read(path).with_context(|| {
        format!(
            "failed to read the token key file {}; create one with \
             `head -c 32 /dev/urandom > {0}` and share it with every gateway",
            path.display()
        )
    })?;
    if key.len() < TOKEN_KEY_BYTES_MIN {
        bail!(
            "the token key file {} has {} bytes; it needs at least {TOKEN_KEY_BYTES_MIN}, \
             for example `head -c 32 /dev/urandom > {0}`",
            path.display(),
            key.len()
        );
    }
    Ok(key)
}

/// Runs the deployment until SIGINT or SIGTERM, or until a child exits.
pub async fn run(options: DevOptions) -> Result<()> {
    let layout = Layout::new(&options)?;
    layout.check_ports_free()?;
    std::fs::create_dir_all(&options.data_dir).with_context(|| {
        format!(
            "failed to create the data directory {}",
            options.data_dir.display()
        )
    })?;
    check_shard_count(&options.data_dir, options.shards)?;
    let key_path = ensure_token_key(&options.data_dir)?;
    read_token_key(&key_path)?;

    let mut children = layout.spawn_all(&key_path)?;
    let outcome = supervise(&layout, &mut children).await;
    stop_all(&mut children).await;
    outcome
}

/// Waits for readiness, prints how to connect, then waits for a signal
/// (Ok) or for a child to exit (an error naming it and its log).
async fn supervise(layout: &Layout, children: &mut [ChildProcess]) -> Result<()> {
    let signal = shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        _ = &mut signal => return Ok(()),
        ready = wait_until_ready(layout, children) => ready?,
    }
    print_banner(layout);
    tokio::select! {
        _ = &mut signal => Ok(()),
        (index, status) = first_exit(children) => Err(children[index].exit_error(status)),
    }
}

/// The addresses and files of one deployment.
struct Layout {
    options: DevOptions,
    gateway: String,
    nodes: Vec<String>,
}

impl Layout {
    fn new(options: &DevOptions) -> Result<Layout> {
        let base = options.base_port;
        if base == 0 || base > u16::MAX - NODE_COUNT {
            bail!(
                "--base-port {base} is invalid; pick a port from 1 to {} so that it and the \
                 next {NODE_COUNT} ports exist",
                u16::MAX - NODE_COUNT
            );
        }
        if !(1..=parley_shards::BUCKET_COUNT).contains(&options.shards) {
            bail!(
                "--shards is {}; set it between 1 and {}",
                options.shards,
                parley_shards::BUCKET_COUNT
            );
        }
        let nodes = (1..=NODE_COUNT)
            .map(|id| format!("127.0.0.1:{}", base + id))
            .collect();
        Ok(Layout {
            options: options.clone(),
            gateway: format!("127.0.0.1:{base}"),
            nodes,
        })
    }

    /// Binds and releases every port, so a busy one fails before any
    /// child starts. The error lists every busy port.
    fn check_ports_free(&self) -> Result<()> {
        let roles = std::iter::once(("the gateway".to_string(), &self.gateway)).chain(
            self.nodes
                .iter()
                .enumerate()
                .map(|(index, address)| (format!("node {}", index + 1), address)),
        );
        let busy: Vec<String> = roles
            .filter_map(|(role, address)| {
                let error = std::net::TcpListener::bind(address).err()?;
                Some(format!("{address} for {role} ({error})"))
            })
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        bail!(
            "ports are not free: {}; stop whatever uses them or pass --base-port P so that \
             ports P to P+{NODE_COUNT} are free",
            busy.join(", ")
        )
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.options.data_dir.join(format!("{name}.log"))
    }

    fn spawn_all(&self, key_path: &Path) -> Result<Vec<ChildProcess>> {
        let executable =
            std::env::current_exe().context("failed to find the path of this parley executable")?;
        let peers: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(index, address)| ["--peer".to_string(), format!("{}={address}", index + 1)])
            .collect();
        let mut children = Vec::new();
        for (index, address) in self.nodes.iter().enumerate() {
            let id = index + 1;
            let data_dir = self.options.data_dir.join(format!("node{id}"));
            let mut args = vec![
                "node".to_string(),
                format!("--id={id}"),
                format!("--listen={address}"),
                format!("--data-dir={}", data_dir.display()),
                format!("--shards={}", self.options.shards),
            ];
            args.extend(peers.iter().cloned());
            let log_path = self.log_path(&format!("node{id}"));
            let label = format!("node {id}");
            children.push(ChildProcess::spawn(&executable, &label, &args, log_path)?);
        }
        let mut args = vec![
            "gateway".to_string(),
            format!("--listen={}", self.gateway),
            format!("--token-secret-file={}", key_path.display()),
        ];
        args.extend(self.nodes.iter().map(|address| format!("--node={address}")));
        children.push(ChildProcess::spawn(
            &executable,
            "gateway",
            &args,
            self.log_path("gateway"),
        )?);
        Ok(children)
    }
}

/// Records the shard count in `DIR/shards` on the first run and rejects a
/// different one later: ids hash to shards by the shard count, so changing
/// it would route existing users and conversations to the wrong groups.
fn check_shard_count(data_dir: &Path, shards: u32) -> Result<()> {
    let path = data_dir.join("shards");
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::write(&path, format!("{shards}\n"))
                .with_context(|| format!("failed to write {}", path.display()));
        }
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read {}", path.display()))
        }
    };
    let recorded: u32 = recorded.trim().parse().with_context(|| {
        format!(
            "{} should contain the shard count this data directory was created with, \
             but contains {recorded:?}; write that number into it",
            path.display()
        )
    })?;
    if recorded != shards {
        bail!(
            "{} was created with --shards {recorded}, not {shards}; pass --shards {recorded} \
             or use a new --data-dir",
            data_dir.display()
        );
    }
    Ok(())
}

/// Creates `DIR/token.key` with 32 random bytes and mode 0600 unless it
/// exists, and returns its path.
fn ensure_token_key(data_dir: &Path) -> Result<PathBuf> {
    let path = data_dir.join("token.key");
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    let mut file = match created {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(path),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("failed to create the token key file {}", path.display()))
        }
    };
    let mut key = [0u8; TOKEN_KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write the token key file {}", path.display()))?;
    tracing::info!(path = %path.display(), "created a token key");
    Ok(path)
}

/// Waits until every node responds to `status`, every shard has a leader and
/// the gateway accepts TCP connections.
async fn wait_until_ready(layout: &Layout, children: &mut [ChildProcess]) -> Result<()> {
    let client = ClusterClient::new(&layout.nodes)?;
    let started = Instant::now();
    loop {
        let missing = shards_without_leader(&client, layout.options.shards).await;
        let gateway_up = tokio::net::TcpStream::connect(&layout.gateway)
            .await
            .is_ok();
        if missing.is_empty() && gateway_up {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "not ready after {} s: {}; see the logs in {}",
                READY_TIMEOUT.as_secs(),
                not_ready_reason(&missing, gateway_up),
                layout.options.data_dir.display()
            );
        }
        tokio::select! {
            (index, status) = first_exit(children) => return Err(children[index].exit_error(status)),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

fn not_ready_reason(missing: &[String], gateway_up: bool) -> String {
    let mut reasons = Vec::new();
    if !missing.is_empty() {
        reasons.push(missing.join(", "));
    }
    if !gateway_up {
        reasons.push("the gateway does not accept connections".to_string());
    }
    reasons.join("; ")
}

/// Returns what keeps the cluster from being ready: unreachable nodes and
/// shards with no known leader. Empty when ready.
async fn shards_without_leader(client: &ClusterClient, shard_count: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let mut led = vec![false; shard_count as usize];
    for (index, address) in client.addresses().iter().enumerate() {
        match client.status(index, false).await {
            Ok(reply) => {
                for shard in reply.shards {
                    if shard.leader_id != 0 && (shard.shard_id as usize) < led.len() {
                        led[shard.shard_id as usize] = true;
                    }
                }
            }
            Err(_) => problems.push(format!("node {address} does not answer status")),
        }
    }
    let leaderless: Vec<String> = (0..shard_count)
        .filter(|shard| !led[*shard as usize])
        .map(|shard| shard.to_string())
        .collect();
    if !leaderless.is_empty() {
        problems.push(format!("shards {} have no leader", leaderless.join(" ")));
    }
    problems
}

fn print_banner(layout: &Layout) {
    let program = std::env::args().next().unwrap_or_else(|| "parley".into());
    let chat = if layout.options.base_port == 7100 {
        format!("{program} chat")
    } else {
        format!("{program} chat --gateway {}", layout.gateway)
    };
    let data_dir = layout.options.data_dir.display();
    println!("gateway listening on {}", layout.gateway);
    println!(
        "nodes on {} with {} shards; data and logs in {data_dir}",
        layout.nodes.join(" "),
        layout.options.shards
    );
    println!("try it from another terminal:");
    println!("  {chat} register alice");
    println!("  {chat} register bob");
    println!("  CONV=$({chat} direct --as alice bob)");
    println!("  {chat} send --as alice \"$CONV\" 'hello bob'");
    println!("  {chat} listen --as bob --count 1");
    println!("  {chat} read --as bob \"$CONV\"");
    println!("  {chat} history --as alice \"$CONV\"");
    println!("press Ctrl-C to stop");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(base_port: u16) -> DevOptions {
        DevOptions {
            data_dir: PathBuf::from("data"),
            base_port,
            shards: 8,
        }
    }

    #[test]
    fn layout_puts_gateway_on_base_port() {
        let layout = Layout::new(&options(7100)).unwrap();
        assert_eq!(layout.gateway, "127.0.0.1:7100");
        assert_eq!(
            layout.nodes,
            ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
        );
    }

    #[test]
    fn layout_rejects_ports_past_the_end() {
        let error = Layout::new(&options(65534)).err().unwrap().to_string();
        assert!(error.contains("--base-port 65534"), "{error}");
        assert!(Layout::new(&options(0)).is_err());
        assert!(Layout::new(&options(65532)).is_ok());
    }

    #[test]
    fn layout_rejects_zero_shards() {
        let mut options = options(7100);
        options.shards = 0;
        let error = Layout::new(&options).err().unwrap().to_string();
        assert!(error.contains("--shards is 0"), "{error}");
    }

    #[test]
    fn busy_port_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = listener.local_addr().unwrap().port();
        // The busy port is node 1's; the gateway gets the port below it.
        let layout = Layout::new(&options(busy - 1)).unwrap();
        let error = layout.check_ports_free().unwrap_err().to_string();
        assert!(
            error.contains(&format!("127.0.0.1:{busy} for node 1")),
            "{error}"
        );
    }

    #[test]
    fn token_key_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = ensure_token_key(directory.path()).unwrap();
        let first = read_token_key(&path).unwrap();
        assert_eq!(first.len(), TOKEN_KEY_BYTES);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        ensure_token_key(directory.path()).unwrap();
        assert_eq!(read_token_key(&path).unwrap(), first);
    }

    #[test]
    fn shard_count_must_not_change() {
        let directory = tempfile::tempdir().unwrap();
        check_shard_count(directory.path(), 4).unwrap();
        check_shard_count(directory.path(), 4).unwrap();
        let error = check_shard_count(directory.path(), 8)
            .unwrap_err()
            .to_string();
        assert!(error.contains("created with --shards 4, not 8"), "{error}");
    }

    #[test]
    fn short_token_key_is_rejected() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token.key");
        std::fs::write(&path, b"short").unwrap();
        let error = read_token_key(&path).unwrap_err().to_string();
        assert!(error.contains("has 5 bytes"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn missing_token_key_names_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("absent.key");
        let error = read_token_key(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
    }
}
