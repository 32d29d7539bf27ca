//! Command-line flags and their validation into `Settings`.
//!
//! `run` takes every size as a flag, and `smoke` uses fixed tiny sizes. Each
//! validation error names the flag, the value, and the valid range or an
//! example.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "parley-bench",
    about = "Benchmarks a local Parley cluster against 3-member etcd and NATS JetStream clusters."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the scenarios at the given sizes and print a table per scenario.
    Run(Box<RunArgs>),
    /// Run every Parley scenario at tiny sizes (and the peers if installed);
    /// exits non-zero when a scenario fails to deliver.
    Smoke(CommonArgs),
}

/// Flags shared by `run` and `smoke`.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// The `parley` binary; default: `parley` next to this binary.
    #[arg(long)]
    pub parley_bin: Option<PathBuf>,
    /// The `etcd` binary; default: `etcd` found in PATH.
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
    /// The `nats-server` binary; default: `nats-server` found in PATH.
    #[arg(long)]
    pub nats_bin: Option<PathBuf>,
    /// Shard groups of the Parley cluster.
    #[arg(long, default_value_t = 8)]
    pub shards: u32,
    /// Keep the temporary folder with every server's data and log.
    #[arg(long)]
    pub keep_data: bool,
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "appends,failover,delivery,typing,fanout,connections"
    )]
    pub scenarios: Vec<Scenario>,
    /// Systems for the appends scenario, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "parley,etcd,nats")]
    pub systems: Vec<System>,
    /// Concurrent senders to sweep in the appends scenario, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pub senders: Vec<usize>,
    /// Measured seconds of each load run.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Seconds of load before each measured window, not recorded.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Bytes of each message body, etcd value and NATS payload.
    #[arg(long, default_value_t = 256)]
    pub body_bytes: usize,
    /// Open-loop rate of the appends scenario in operations per second, the
    /// same for every system; default: half of Parley's closed-loop peak.
    #[arg(long)]
    pub open_rate: Option<f64>,
    /// Client connections (HTTP/2 or NATS) the senders share.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Sender/recipient pairs in the delivery scenario.
    #[arg(long, default_value_t = 100)]
    pub delivery_pairs: usize,
    /// Concurrent senders during the failover scenario.
    #[arg(long, default_value_t = 64)]
    pub failover_senders: usize,
    /// Typing indicator round trips to measure.
    #[arg(long, default_value_t = 500)]
    pub typing_samples: usize,
    /// Members of the fan-out group (all registered users).
    #[arg(long, default_value_t = 100_000)]
    pub fanout_members: usize,
    /// Members with a connected device in the fan-out scenario.
    #[arg(long, default_value_t = 10_000)]
    pub fanout_devices: usize,
    /// Messages sent to the fan-out group.
    #[arg(long, default_value_t = 20)]
    pub fanout_messages: usize,
    /// Milliseconds between two fan-out messages.
    #[arg(long, default_value_t = 500)]
    pub fanout_interval_ms: u64,
    /// Make fan-out devices ack every message; each ack becomes a
    /// MarkDelivered command per device per gateway flush.
    #[arg(long)]
    pub fanout_acks: bool,
    /// Session streams to open in the connections scenario.
    #[arg(long, default_value_t = 100_000)]
    pub streams: usize,
    /// Session streams per HTTP/2 connection (1 = a connection per device,
    /// spread over source addresses 127.0.0.2 to 127.0.0.9).
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// Streams opened between two memory readings.
    #[arg(long, default_value_t = 10_000)]
    pub stream_step: usize,
    /// Registrations and session opens in flight during setup.
    #[arg(long, default_value_t = 128)]
    pub setup_concurrency: usize,
    /// Also write the results as Markdown to this file.
    #[arg(long)]
    pub write_docs: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    Appends,
    Failover,
    Delivery,
    Typing,
    Fanout,
    Connections,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum System {
    Parley,
    Etcd,
    Nats,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Parley => "parley",
            System::Etcd => "etcd",
            System::Nats => "nats",
        }
    }
}

/// Validated sizes of one invocation.
#[derive(Clone, Debug)]
pub struct Settings {
    pub scenarios: Vec<Scenario>,
    pub systems: Vec<System>,
    /// Whether a missing etcd or nats-server skips that system (smoke)
    /// instead of failing the run.
    pub peers_optional: bool,
    /// Whether a gateway that stops accepting streams before `streams`
    /// fails the run (smoke) instead of ending the ramp (run).
    pub require_all_streams: bool,
    pub senders: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub body_bytes: usize,
    pub open_rate: Option<f64>,
    pub connections: usize,
    pub delivery_pairs: usize,
    pub failover_senders: usize,
    pub typing_samples: usize,
    pub fanout_members: usize,
    pub fanout_devices: usize,
    pub fanout_messages: usize,
    pub fanout_interval: Duration,
    pub fanout_acks: bool,
    pub streams: usize,
    pub streams_per_connection: usize,
    pub stream_step: usize,
    pub setup_concurrency: usize,
    pub shards: u32,
    pub write_docs: Option<PathBuf>,
}

/// Largest body the Parley gateway accepts by default (64 KiB).
const BODY_BYTES_MAX: usize = 65_536;

/// Largest group Parley accepts by default.
const GROUP_MEMBERS_MAX: usize = 100_000;

/// Buckets of the Parley shard map; the shard count cannot exceed it.
const SHARDS_MAX: u32 = 4_096;

impl Settings {
    /// Validates `run` flags.
    pub fn from_run(args: &RunArgs) -> Result<Settings> {
        validate(args)?;

        let mut scenarios = args.scenarios.clone();
        scenarios.sort();
        scenarios.dedup();
        let mut systems = args.systems.clone();
        systems.sort();
        systems.dedup();
        Ok(Settings {
            scenarios,
            systems,
            peers_optional: false,
            require_all_streams: false,
            senders: args.senders.clone(),
            duration: Duration::from_secs(args.duration_secs),
            warmup: Duration::from_secs(args.warmup_secs),
            body_bytes: args.body_bytes,
            open_rate: args.open_rate,
            connections: args.connections,
            delivery_pairs: args.delivery_pairs,
            failover_senders: args.failover_senders,
            typing_samples: args.typing_samples,
            fanout_members: args.fanout_members,
            fanout_devices: args.fanout_devices,
            fanout_messages: args.fanout_messages,
            fanout_interval: Duration::from_millis(args.fanout_interval_ms),
            fanout_acks: args.fanout_acks,
            streams: args.streams,
            streams_per_connection: args.streams_per_connection,
            stream_step: args.stream_step,
            setup_concurrency: args.setup_concurrency,
            shards: args.common.shards,
            write_docs: args.write_docs.clone(),
        })
    }

    /// Returns the tiny sizes of `smoke`.
    pub fn smoke(common: &CommonArgs) -> Result<Settings> {
        check_range("--shards", common.shards as usize, 1, SHARDS_MAX as usize)?;
        Ok(Settings {
            scenarios: vec![
                Scenario::Appends,
                Scenario::Failover,
                Scenario::Delivery,
                Scenario::Typing,
                Scenario::Fanout,
                Scenario::Connections,
            ],
            systems: vec![System::Parley, System::Etcd, System::Nats],
            peers_optional: true,
            require_all_streams: true,
            senders: vec![1, 8],
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            body_bytes: 256,
            open_rate: None,
            connections: 2,
            delivery_pairs: 4,
            failover_senders: 8,
            typing_samples: 10,
            fanout_members: 200,
            fanout_devices: 20,
            fanout_messages: 3,
            fanout_interval: Duration::from_millis(100),
            fanout_acks: true,
            streams: 50,
            streams_per_connection: 10,
            stream_step: 25,
            setup_concurrency: 16,
            shards: common.shards,
            write_docs: None,
        })
    }

    pub fn runs(&self, scenario: Scenario) -> bool {
        self.scenarios.contains(&scenario)
    }
}

/// Checks every `run` flag against its valid range.
fn validate(args: &RunArgs) -> Result<()> {
    check_list("--senders", &args.senders, "1,10,100,1000")?;
    check_at_least("--duration-secs", args.duration_secs as usize, 1)?;
    // Delivery bodies start with a 9-byte send stamp.
    check_range("--body-bytes", args.body_bytes, 16, BODY_BYTES_MAX)?;
    check_at_least("--connections", args.connections, 1)?;
    check_at_least("--delivery-pairs", args.delivery_pairs, 1)?;
    check_at_least("--failover-senders", args.failover_senders, 1)?;
    check_at_least("--typing-samples", args.typing_samples, 1)?;
    check_range(
        "--fanout-members",
        args.fanout_members,
        2,
        GROUP_MEMBERS_MAX,
    )?;
    check_range(
        "--fanout-devices",
        args.fanout_devices,
        1,
        args.fanout_members - 1,
    )?;
    check_at_least("--fanout-messages", args.fanout_messages, 1)?;
    check_at_least("--streams", args.streams, 1)?;
    check_at_least("--streams-per-connection", args.streams_per_connection, 1)?;
    check_at_least("--stream-step", args.stream_step, 1)?;
    check_at_least("--setup-concurrency", args.setup_concurrency, 1)?;
    check_range(
        "--shards",
        args.common.shards as usize,
        1,
        SHARDS_MAX as usize,
    )?;
    if let Some(rate) = args.open_rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!(
                "--open-rate {rate} is invalid; give operations per second above 0, \
                 e.g. --open-rate 5000"
            );
        }
    }
    if args.scenarios.is_empty() {
        bail!("--scenarios is empty; name at least one, e.g. --scenarios appends");
    }
    Ok(())
}

fn check_list(flag: &str, values: &[usize], example: &str) -> Result<()> {
    if values.is_empty() {
        bail!("{flag} is empty; give at least one count, e.g. {flag} {example}");
    }
    for value in values {
        if *value == 0 {
            bail!("{flag} 0 is invalid: each count must be at least 1, e.g. {flag} {example}");
        }
    }
    Ok(())
}

fn check_at_least(flag: &str, value: usize, minimum: usize) -> Result<()> {
    if value < minimum {
        bail!("{flag} {value} is invalid; it must be at least {minimum}");
    }
    Ok(())
}

fn check_range(flag: &str, value: usize, minimum: usize, maximum: usize) -> Result<()> {
    if !(minimum..=maximum).contains(&value) {
        bail!("{flag} {value} is invalid; it must be between {minimum} and {maximum}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["parley-bench", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("flags parse").command {
            Command::Run(args) => *args,
            Command::Smoke(_) => panic!("parsed as smoke"),
        }
    }

    fn error_of(extra: &[&str]) -> String {
        Settings::from_run(&parse(extra))
            .expect_err("the flags are invalid")
            .to_string()
    }

    #[test]
    fn defaults_are_valid() {
        let settings = Settings::from_run(&parse(&[])).expect("defaults validate");
        assert_eq!(settings.senders, [1, 10, 100, 1000]);
        assert_eq!(settings.body_bytes, 256);
        assert_eq!(
            settings.systems,
            [System::Parley, System::Etcd, System::Nats]
        );
        assert!(settings.runs(Scenario::Connections));
    }

    #[test]
    fn zero_senders_names_the_flag() {
        let error = error_of(&["--senders", "1,0"]);
        assert!(error.contains("--senders 0 is invalid"), "{error}");
        assert!(error.contains("--senders 1,10,100,1000"), "{error}");
    }

    #[test]
    fn oversized_body_is_rejected() {
        let error = error_of(&["--body-bytes", "70000"]);
        assert!(error.contains("--body-bytes 70000"), "{error}");
        assert!(error.contains("65536"), "{error}");
    }

    #[test]
    fn fanout_devices_must_fit_the_group() {
        let error = error_of(&["--fanout-members", "10", "--fanout-devices", "10"]);
        assert!(error.contains("--fanout-devices 10"), "{error}");
    }

    #[test]
    fn open_rate_must_be_positive() {
        let error = error_of(&["--open-rate", "0"]);
        assert!(error.contains("--open-rate 0"), "{error}");
    }

    #[test]
    fn scenarios_are_sorted_and_deduplicated() {
        let settings =
            Settings::from_run(&parse(&["--scenarios", "typing,appends,typing"])).expect("valid");
        assert_eq!(settings.scenarios, [Scenario::Appends, Scenario::Typing]);
    }
}
