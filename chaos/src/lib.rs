//! Chaos runs against real Parley processes: `parley node` processes with
//! sled data, gateways and client traffic on 127.0.0.1, broken by a seeded
//! schedule of faults (signals, TCP proxies between nodes, clock skew), and
//! judged by the same checkers as the simulator.

pub mod cluster;
pub mod console;
pub mod crash;
pub mod html;
pub mod inject;
pub mod process;
pub mod proxy;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod traffic;
