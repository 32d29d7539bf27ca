//! The systems under test: how to start each as local processes and how to
//! talk to it.

pub mod etcd;
pub mod nats;
pub mod parley;
pub mod parley_client;
