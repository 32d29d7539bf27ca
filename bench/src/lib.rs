//! parley-bench: a load generator that drives a local Parley cluster and,
//! with the same payloads and concurrency, 3-member etcd and
//! NATS JetStream clusters, and reports throughput and latency
//! percentiles per scenario.

pub mod cli;
pub mod context;
pub mod load;
pub mod machine;
pub mod pacing;
pub mod process;
pub mod progress;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod systems;

/// Generated gRPC clients, nested by proto package.
#[allow(clippy::unwrap_used, clippy::all)]
pub mod proto {
    pub mod parley {
        pub mod v1 {
            tonic::include_proto!("parley.v1");
        }
        pub mod node {
            pub mod v1 {
                tonic::include_proto!("parley.node.v1");
            }
        }
        pub mod core {
            pub mod v1 {
                tonic::include_proto!("parley.core.v1");
            }
        }
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}
