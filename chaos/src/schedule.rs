//! The fault kinds a chaos run injects, the `--faults` list that selects
//! them, and the seeded schedule that draws each fault's target and timing.
//!
//! The schedule depends only on the seed, the selected kinds and the node
//! count, so one seed always plans the same sequence of faults. The actual
//! timing of a run still varies with how fast the real processes react.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Every fault a chaos run can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// One node gets SIGKILL and restarts after a pause.
    KillRestart,
    /// One node gets SIGSTOP, then SIGCONT after longer than the election
    /// timeout.
    Pause,
    /// The nodes split into two sides whose proxies reject every
    /// connection between them.
    Partition,
    /// One node's bytes stop reaching another node, while the other
    /// direction still flows.
    OneWayPartition,
    /// Every inter-node link delays each forwarded chunk by some
    /// milliseconds.
    Delay,
    /// One node stamps messages minutes ahead or behind.
    ClockSkew,
    /// Every node in turn gets SIGTERM and restarts, with a wait for shard
    /// leaders in between.
    RollingRestart,
    /// Every node gets SIGKILL at once and restarts.
    PowerCut,
    /// Every node gets SIGKILL at once, loses every write it had not
    /// synced, and restarts (see `crate::crash`).
    PowerLoss,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillRestart,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::OneWayPartition,
        FaultKind::Delay,
        FaultKind::ClockSkew,
        FaultKind::RollingRestart,
        FaultKind::PowerCut,
        FaultKind::PowerLoss,
    ];

    /// Returns whether `--faults all` selects this kind.
    ///
    /// NOTE: `power_loss` is left out because after it sled 0.34.7 can
    /// fail to reopen a database ("Read corrupted data at file offset"),
    /// and a reopened follower can trip openraft's assertion that appended
    /// entries follow its last log id. Neither shows up on the simulated
    /// disk, so the cause is unproven: sled's recovery or the preload
    /// journal's model of what a sync makes durable. Select it by name.
    pub fn in_all(self) -> bool {
        self != FaultKind::PowerLoss
    }

    /// Returns the name used in `--faults` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRestart => "kill_restart",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::OneWayPartition => "one_way_partition",
            FaultKind::Delay => "delay",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::RollingRestart => "rolling_restart",
            FaultKind::PowerCut => "power_cut",
            FaultKind::PowerLoss => "power_loss",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The fault kinds a run may inject, parsed from `--faults`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMix(pub BTreeSet<FaultKind>);

impl FaultMix {
    /// Returns the kinds `--faults all` selects.
    pub fn all() -> FaultMix {
        FaultMix(
            FaultKind::ALL
                .into_iter()
                .filter(|kind| kind.in_all())
                .collect(),
        )
    }

    /// Returns the mix as `--faults` accepts it.
    pub fn to_flag(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        if self.0 == FaultMix::all().0 {
            return "all".into();
        }
        let names: Vec<&str> = self.0.iter().map(|kind| kind.name()).collect();
        names.join(",")
    }
}

impl FromStr for FaultMix {
    type Err = String;

    /// Parses `all`, `none`, or a comma-separated list of fault names.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => return Ok(FaultMix::all()),
            "none" => return Ok(FaultMix(BTreeSet::new())),
            _ => {}
        }
        let mut kinds = BTreeSet::new();
        for name in text.split(',').map(str::trim) {
            let kind = FaultKind::ALL
                .into_iter()
                .find(|kind| kind.name() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
                    format!(
                        "unknown fault {name:?}; use all, none, or a comma-separated list of {}",
                        names.join(", ")
                    )
                })?;
            kinds.insert(kind);
        }
        Ok(FaultMix(kinds))
    }
}

/// One planned fault with its targets and timing. Nodes are indexes from 0;
/// reports show them as node ids, which are index + 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    KillRestart {
        node: usize,
        down: Duration,
    },
    Pause {
        node: usize,
        hold: Duration,
    },
    /// `side` cannot reach the other nodes, and they cannot reach it.
    Partition {
        side: Vec<usize>,
        hold: Duration,
    },
    OneWayPartition {
        from: usize,
        to: usize,
        hold: Duration,
    },
    Delay {
        per_chunk: Duration,
        hold: Duration,
    },
    ClockSkew {
        node: usize,
        offset_ms: i64,
        hold: Duration,
    },
    RollingRestart,
    PowerCut {
        down: Duration,
    },
    PowerLoss {
        down: Duration,
    },
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::KillRestart { .. } => FaultKind::KillRestart,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::OneWayPartition { .. } => FaultKind::OneWayPartition,
            Fault::Delay { .. } => FaultKind::Delay,
            Fault::ClockSkew { .. } => FaultKind::ClockSkew,
            Fault::RollingRestart => FaultKind::RollingRestart,
            Fault::PowerCut { .. } => FaultKind::PowerCut,
            Fault::PowerLoss { .. } => FaultKind::PowerLoss,
        }
    }
}

impl fmt::Display for Fault {
    /// Writes the kind, the targets as node ids and the planned duration.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = |duration: &Duration| format!("{:.1} s", duration.as_secs_f64());
        match self {
            Fault::KillRestart { node, down } => {
                write!(
                    formatter,
                    "kill_restart node {} down {}",
                    node + 1,
                    seconds(down)
                )
            }
            Fault::Pause { node, hold } => {
                write!(formatter, "pause node {} for {}", node + 1, seconds(hold))
            }
            Fault::Partition { side, hold } => {
                let ids: Vec<String> = side.iter().map(|node| (node + 1).to_string()).collect();
                write!(
                    formatter,
                    "partition nodes {{{}}} from the rest for {}",
                    ids.join(","),
                    seconds(hold)
                )
            }
            Fault::OneWayPartition { from, to, hold } => write!(
                formatter,
                "one_way_partition node {} -> node {} cut for {}",
                from + 1,
                to + 1,
                seconds(hold)
            ),
            Fault::Delay { per_chunk, hold } => write!(
                formatter,
                "delay {} ms per chunk on every link for {}",
                per_chunk.as_millis(),
                seconds(hold)
            ),
            Fault::ClockSkew {
                node,
                offset_ms,
                hold,
            } => write!(
                formatter,
                "clock_skew node {} by {:+} s for {}",
                node + 1,
                offset_ms / 1000,
                seconds(hold)
            ),
            Fault::RollingRestart => write!(formatter, "rolling_restart of every node"),
            Fault::PowerCut { down } => {
                write!(formatter, "power_cut of every node down {}", seconds(down))
            }
            Fault::PowerLoss { down } => {
                write!(formatter, "power_loss of every node down {}", seconds(down))
            }
        }
    }
}

/// Quiet time between two faults, in milliseconds.
const QUIET_MS: std::ops::Range<u64> = 500..3_000;

/// How long a partition, a delay or a clock skew lasts, in milliseconds.
const HOLD_MS: std::ops::Range<u64> = 2_000..6_000;

/// How long a paused node stays stopped, in milliseconds: longer than the
/// 400-800 ms election timeout of `parley_shards::RaftTiming`.
const PAUSE_MS: std::ops::Range<u64> = 1_500..3_000;

/// How long a killed node stays down, in milliseconds.
const DOWN_MS: std::ops::Range<u64> = 500..3_000;

/// Extra time per forwarded chunk under `delay`, in milliseconds.
const DELAY_MS: std::ops::Range<u64> = 20..200;

/// Clock skew, in whole minutes either way.
const SKEW_MINUTES: std::ops::RangeInclusive<i64> = 1..=10;

/// The seeded sequence of faults of one run.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    nodes: usize,
}

impl Schedule {
    /// Creates the schedule of `seed` over `nodes` nodes (at least 2).
    pub fn new(seed: u64, mix: &FaultMix, nodes: usize) -> Schedule {
        assert!(nodes >= 2, "a schedule needs at least 2 nodes, got {nodes}");
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds: mix.0.iter().copied().collect(),
            nodes,
        }
    }

    /// Draws the quiet time before the next fault and the fault itself, or
    /// returns None when the mix is empty.
    pub fn next_fault(&mut self) -> Option<(Duration, Fault)> {
        let kind = *self.kinds.choose(&mut self.rng)?;
        let quiet = self.millis(QUIET_MS);
        Some((quiet, self.draw(kind)))
    }

    fn draw(&mut self, kind: FaultKind) -> Fault {
        match kind {
            FaultKind::KillRestart => Fault::KillRestart {
                node: self.node(),
                down: self.millis(DOWN_MS),
            },
            FaultKind::Pause => Fault::Pause {
                node: self.node(),
                hold: self.millis(PAUSE_MS),
            },
            FaultKind::Partition => Fault::Partition {
                side: self.side(),
                hold: self.millis(HOLD_MS),
            },
            FaultKind::OneWayPartition => {
                let from = self.node();
                let to = (from + self.rng.gen_range(1..self.nodes)) % self.nodes;
                Fault::OneWayPartition {
                    from,
                    to,
                    hold: self.millis(HOLD_MS),
                }
            }
            FaultKind::Delay => Fault::Delay {
                per_chunk: self.millis(DELAY_MS),
                hold: self.millis(HOLD_MS),
            },
            FaultKind::ClockSkew => {
                let minutes = self.rng.gen_range(SKEW_MINUTES);
                let sign = if self.rng.gen_bool(0.5) { 1 } else { -1 };
                Fault::ClockSkew {
                    node: self.node(),
                    offset_ms: sign * minutes * 60_000,
                    hold: self.millis(HOLD_MS),
                }
            }
            FaultKind::RollingRestart => Fault::RollingRestart,
            FaultKind::PowerCut => Fault::PowerCut {
                down: self.millis(DOWN_MS),
            },
            FaultKind::PowerLoss => Fault::PowerLoss {
                down: self.millis(DOWN_MS),
            },
        }
    }

    fn node(&mut self) -> usize {
        self.rng.gen_range(0..self.nodes)
    }

    /// Draws the smaller side of a split: 1 to nodes / 2 nodes, sorted.
    fn side(&mut self) -> Vec<usize> {
        let mut nodes: Vec<usize> = (0..self.nodes).collect();
        nodes.shuffle(&mut self.rng);
        let size = self.rng.gen_range(1..=self.nodes / 2);
        let mut side = nodes[..size].to_vec();
        side.sort_unstable();
        side
    }

    fn millis(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.gen_range(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> FaultMix {
        "all".parse().unwrap()
    }

    fn plan(seed: u64, mix: &FaultMix, nodes: usize, count: usize) -> Vec<(Duration, Fault)> {
        let mut schedule = Schedule::new(seed, mix, nodes);
        (0..count).map_while(|_| schedule.next_fault()).collect()
    }

    #[test]
    fn mix_parses_all_none_and_lists() {
        assert_eq!(all().0.len(), FaultKind::ALL.len() - 1);
        assert!("none".parse::<FaultMix>().unwrap().0.is_empty());
        let mix: FaultMix = "pause, delay".parse().unwrap();
        assert_eq!(
            mix.0.into_iter().collect::<Vec<_>>(),
            [FaultKind::Pause, FaultKind::Delay]
        );
    }

    #[test]
    fn mix_rejects_unknown_name() {
        let error = "pause,crash".parse::<FaultMix>().unwrap_err();
        assert!(error.contains("unknown fault \"crash\""), "{error}");
        assert!(error.contains("kill_restart"), "{error}");
    }

    #[test]
    fn all_leaves_out_only_power_loss() {
        assert!(!all().0.contains(&FaultKind::PowerLoss));
        let mix: FaultMix = "power_loss".parse().unwrap();
        assert_eq!(
            mix.0.into_iter().collect::<Vec<_>>(),
            [FaultKind::PowerLoss]
        );
    }

    #[test]
    fn mix_round_trips_through_flag() {
        for text in ["all", "none", "pause,clock_skew", "power_cut,power_loss"] {
            let mix: FaultMix = text.parse().unwrap();
            let again: FaultMix = mix.to_flag().parse().unwrap();
            assert_eq!(again, mix, "{text}");
        }
    }

    #[test]
    fn every_kind_name_parses_back() {
        for kind in FaultKind::ALL {
            let mix: FaultMix = kind.name().parse().unwrap();
            assert_eq!(mix.0.into_iter().collect::<Vec<_>>(), [kind]);
        }
    }

    #[test]
    fn same_seed_plans_same_faults() {
        assert_eq!(plan(7, &all(), 3, 50), plan(7, &all(), 3, 50));
        assert_ne!(plan(7, &all(), 3, 50), plan(8, &all(), 3, 50));
    }

    #[test]
    fn empty_mix_plans_nothing() {
        assert!(plan(1, &"none".parse().unwrap(), 3, 5).is_empty());
    }

    #[test]
    fn schedule_uses_only_selected_kinds() {
        let mix: FaultMix = "pause,partition".parse().unwrap();
        for (_, fault) in plan(3, &mix, 5, 200) {
            assert!(mix.0.contains(&fault.kind()), "{fault}");
        }
    }

    #[test]
    fn schedule_draws_every_kind() {
        let every = FaultMix(FaultKind::ALL.into_iter().collect());
        let kinds: BTreeSet<FaultKind> = plan(1, &every, 3, 200)
            .into_iter()
            .map(|(_, fault)| fault.kind())
            .collect();
        assert_eq!(kinds.len(), FaultKind::ALL.len());
    }

    #[test]
    fn targets_stay_in_range() {
        for nodes in [3, 5] {
            for (quiet, fault) in plan(11, &all(), nodes, 500) {
                assert!(QUIET_MS.contains(&(quiet.as_millis() as u64)));
                match fault {
                    Fault::KillRestart { node, .. }
                    | Fault::Pause { node, .. }
                    | Fault::ClockSkew { node, .. } => assert!(node < nodes),
                    Fault::Partition { side, .. } => {
                        assert!(!side.is_empty());
                        assert!(side.len() <= nodes / 2, "{side:?}");
                        assert!(side.iter().all(|node| *node < nodes));
                    }
                    Fault::OneWayPartition { from, to, .. } => {
                        assert_ne!(from, to);
                        assert!(from < nodes);
                        assert!(to < nodes);
                    }
                    Fault::Delay { .. }
                    | Fault::RollingRestart
                    | Fault::PowerCut { .. }
                    | Fault::PowerLoss { .. } => {}
                }
            }
        }
    }

    #[test]
    fn pause_outlasts_election_timeout() {
        let mix: FaultMix = "pause".parse().unwrap();
        for (_, fault) in plan(5, &mix, 3, 100) {
            let Fault::Pause { hold, .. } = fault else {
                panic!("expected a pause, got {fault}");
            };
            assert!(hold >= Duration::from_millis(1_500), "{hold:?}");
        }
    }

    #[test]
    fn clock_skew_is_whole_minutes() {
        let mix: FaultMix = "clock_skew".parse().unwrap();
        for (_, fault) in plan(9, &mix, 3, 100) {
            let Fault::ClockSkew { offset_ms, .. } = fault else {
                panic!("expected a clock skew, got {fault}");
            };
            assert_eq!(offset_ms % 60_000, 0);
            assert!((60_000..=600_000).contains(&offset_ms.abs()), "{offset_ms}");
        }
    }

    #[test]
    fn fault_display_uses_node_ids() {
        let fault = Fault::OneWayPartition {
            from: 0,
            to: 2,
            hold: Duration::from_millis(2_500),
        };
        assert_eq!(
            fault.to_string(),
            "one_way_partition node 1 -> node 3 cut for 2.5 s"
        );
    }
}
