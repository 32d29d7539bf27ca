//! The `parley` command: run a node or a gateway, run a whole local
//! deployment (`dev`), chat through a gateway, inspect a cluster, run a
//! smoke workload against it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use parley::config::{merge_peers, parse_peer, ConfigFile, NodeConfig};
use parley::smoke::{self, SmokeOptions};
use parley_raft::NodeId;
use parley_shards::client::ClusterClient;
use parley_shards::ClusterSettings;

#[derive(Parser)]
#[command(
    name = "parley",
    version,
    about = "Parley: a chat backend replicated by Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run one node of a cluster.
    Node(NodeArgs),
    /// Run a gateway: the client API in front of a cluster's nodes.
    Gateway(GatewayArgs),
    /// Run 3 nodes and a gateway on 127.0.0.1 until Ctrl-C.
    Dev(DevArgs),
    /// Chat through a gateway: register, send, listen and more.
    #[cfg(not(madsim))]
    Chat(parley::chat::ChatArgs),
    /// Show every shard replica of the given nodes: role, leader, term, indexes.
    Status(StatusArgs),
    /// Append messages through the cluster, then verify every replica.
    Smoke(SmokeArgs),
}

#[derive(Args)]
struct NodeArgs {
    /// TOML file with node_id, listen, data_dir, shard_count and [peers]; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id (a positive integer, never reused for another node).
    #[arg(long)]
    id: Option<NodeId>,
    /// Address to serve the node API and Raft transport on (IP:PORT).
    #[arg(long)]
    listen: Option<String>,
    /// A cluster member as ID=IP:PORT; repeat for every node, this one included.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(NodeId, String)>,
    /// Directory for this node's sled database.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of shard groups; must be the same on every node. Default 8.
    #[arg(long)]
    shards: Option<u32>,
    /// Milliseconds added to this node's clock when it stamps messages
    /// (negative moves it back); for clock-skew testing. Default 0.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    clock_offset_ms: i64,
}

#[derive(Args)]
struct GatewayArgs {
    /// Address to serve the client API on (IP:PORT).
    #[arg(long)]
    listen: String,
    /// A node's API address (IP:PORT); repeat for every node.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// File with the token signing key (at least 16 bytes); every gateway
    /// of a cluster must use the same key.
    #[arg(long)]
    token_secret_file: PathBuf,
}

#[derive(Args)]
struct DevArgs {
    /// Directory for the nodes' data, the logs and the token key.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Gateway port; the nodes listen on the next 3 ports.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// Number of shard groups. It must stay the same across runs on one
    /// data directory, which records it.
    #[arg(long, default_value_t = 8)]
    shards: u32,
}

#[derive(Args)]
struct StatusArgs {
    /// A node address (IP:PORT); repeat for each node to show.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// Also show each replica's state digest.
    #[arg(long)]
    digests: bool,
}

#[derive(Args)]
struct SmokeArgs {
    /// A node address (IP:PORT); give every node so each replica is verified.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// Number of messages to append.
    #[arg(long, default_value_t = 10_000)]
    appends: usize,
    /// Number of group conversations to spread them over.
    #[arg(long, default_value_t = 100)]
    conversations: usize,
    /// Number of concurrent senders.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Size of each message body in bytes.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
}

#[cfg(madsim)]
fn main() {
    eprintln!(
        "this parley binary was built with --cfg madsim; build it without that flag to run it"
    );
    std::process::exit(2);
}

/// Runs the command; on failure prints `error: ` and the error chain on
/// one line (no backtrace, even with RUST_BACKTRACE set) and exits with 1.
#[cfg(not(madsim))]
fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Commands::Chat(_) | Commands::Status(_) | Commands::Smoke(_)
    ) {
        exit_quietly_on_closed_stdout();
    }
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// Restores the default SIGPIPE action, so `parley status | head` ends
/// quietly like other command-line tools instead of panicking on the
/// closed pipe. Long-running commands (node, gateway, dev) keep Rust's
/// default and never die because a log reader went away.
fn exit_quietly_on_closed_stdout() {
    // SAFETY: called before any thread starts; resetting a signal's
    // action to the default is async-signal-safe and has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(madsim))]
fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Commands::Node(args) => runtime.block_on(parley::node::run(node_config(args)?)),
        Commands::Gateway(args) => runtime.block_on(run_gateway(args)),
        Commands::Dev(args) => runtime.block_on(parley::dev::run(parley::dev::DevOptions {
            data_dir: args.data_dir,
            base_port: args.base_port,
            shards: args.shards,
        })),
        Commands::Chat(args) => runtime.block_on(parley::chat::run(args)),
        Commands::Status(args) => runtime.block_on(status(args)),
        Commands::Smoke(args) => runtime.block_on(run_smoke(args)),
    }
}

fn node_config(args: NodeArgs) -> Result<NodeConfig> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let peers = merge_peers(&file, &args.peers)?;
    let Some(node_id) = args.id.or(file.node_id) else {
        bail!("the node id is missing; pass --id N or set node_id in the config file");
    };
    let listen = match args.listen.or(file.listen.clone()) {
        Some(listen) => listen,
        None => match peers.get(&node_id) {
            Some(address) => address.clone(),
            None => bail!(
                "the listen address is missing; pass --listen IP:PORT or --peer {node_id}=IP:PORT"
            ),
        },
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(format!("data/node{node_id}")));
    let shard_count = args.shards.or(file.shard_count).unwrap_or(8);
    if !(1..=parley_shards::BUCKET_COUNT).contains(&shard_count) {
        bail!(
            "--shards (config key shard_count) is {shard_count}; set it between 1 and {}",
            parley_shards::BUCKET_COUNT
        );
    }

    let mut cluster = ClusterSettings::new(shard_count, peers);
    if let Some(limit) = file.group_members_max {
        cluster.limits.group_members_max = limit;
    }
    if let Some(limit) = file.body_bytes_max {
        cluster.limits.body_bytes_max = limit;
    }
    Ok(NodeConfig {
        clock_offset_ms: args.clock_offset_ms,
        node_id,
        listen,
        data_dir,
        cluster,
    })
}

#[cfg(not(madsim))]
async fn run_gateway(args: GatewayArgs) -> Result<()> {
    let token_secret = parley::dev::read_token_key(&args.token_secret_file)?;
    let listen = args.listen.clone();
    let config = parley_gateway::GatewayConfig::new(args.listen, args.nodes, token_secret);
    tracing::info!(%listen, nodes = ?config.nodes, "gateway starting");
    parley_gateway::serve(config, parley::node::shutdown_signal())
        .await
        .with_context(|| format!("the gateway on {listen} failed"))?;
    Ok(())
}

async fn status(args: StatusArgs) -> Result<()> {
    let client = ClusterClient::new(&args.nodes)?;
    println!(
        "{:>5} {:>5} {:<10} {:>6} {:>5} {:>9} {:>9} {:>9}  replicas",
        "node", "shard", "role", "leader", "term", "last_log", "applied", "snapshot"
    );
    let mut unreachable = Vec::new();
    for (index, address) in args.nodes.iter().enumerate() {
        let reply = match client.status(index, args.digests).await {
            Ok(reply) => reply,
            Err(error) => {
                println!("{error}");
                unreachable.push(address.as_str());
                continue;
            }
        };
        for shard in reply.shards {
            let digest = if args.digests {
                &shard.state_digest[..16.min(shard.state_digest.len())]
            } else {
                ""
            };
            println!(
                "{:>5} {:>5} {:<10} {:>6} {:>5} {:>9} {:>9} {:>9}  {:?} {digest}",
                reply.node_id,
                shard.shard_id,
                shard.role,
                shard.leader_id,
                shard.term,
                shard.last_log_index,
                shard.last_applied_index,
                shard.snapshot_index,
                shard.replicas
            );
        }
    }

    if !unreachable.is_empty() {
        bail!(
            "{} of {} nodes returned no status: {}; check that they run and that the addresses are right",
            unreachable.len(),
            args.nodes.len(),
            unreachable.join(", ")
        );
    }
    Ok(())
}

async fn run_smoke(args: SmokeArgs) -> Result<()> {
    if args.conversations == 0 || args.appends == 0 || args.concurrency == 0 {
        bail!("--appends, --conversations and --concurrency must each be at least 1");
    }
    let client = ClusterClient::new(&args.nodes)?;
    let run_id = format!("smoke{}", std::process::id());
    let options = SmokeOptions {
        run_id,
        conversations: args.conversations,
        concurrency: args.concurrency,
        body_bytes: args.body_bytes,
    };
    smoke::create_conversations(&client, &options).await?;

    let started = tokio::time::Instant::now();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let counter = acknowledged.clone();
    let total = args.appends;
    let on_ack = Arc::new(move |_: &smoke::Ack| {
        let done = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if done.is_multiple_of(1000) || done == total {
            eprintln!("{done}/{total} appends acknowledged");
        }
    });
    let acks = smoke::append_range(&client, &options, 0..args.appends, on_ack).await?;
    let elapsed = started.elapsed();
    println!(
        "{} appends acknowledged in {:.2} s ({:.0}/s) over {} conversations",
        acks.len(),
        elapsed.as_secs_f64(),
        acks.len() as f64
            / elapsed
                .as_secs_f64()
                .max(Duration::from_millis(1).as_secs_f64()),
        args.conversations
    );
    let latencies = smoke::latency_percentiles_ms(&acks, &[50.0, 90.0, 99.0, 100.0]);
    if let [p50, p90, p99, max] = latencies[..] {
        println!(
            "append latency ms: p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} max {max:.2} with {} senders",
            args.concurrency
        );
    }
    let report = smoke::verify(&client, &options, &acks).await?;
    println!("{report}");
    Ok(())
}
