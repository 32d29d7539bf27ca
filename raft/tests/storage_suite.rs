//! openraft's own storage conformance suite, run against the log store and
//! state machine on both storage engines.
#![cfg(not(madsim))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::testing::{StoreBuilder, Suite};
use parley_core::Limits;
use parley_raft::{
    LogStore, ShardStateMachine, SimDisk, SledEngine, StorageEngine, StorageError, TypeConfig,
};

/// Builds stores for one shard on a fresh simulated disk per test.
struct SimDiskStores;

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine> for SimDiskStores {
    async fn build(&self) -> Result<((), LogStore, ShardStateMachine), StorageError> {
        let engine: Arc<dyn StorageEngine> = Arc::new(SimDisk::new(Duration::ZERO));
        Ok(stores(engine))
    }
}

/// Builds stores for one shard in a fresh sled directory per test.
struct SledStores {
    root: std::path::PathBuf,
    next: AtomicU64,
}

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine, tempfile::TempDir> for SledStores {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, ShardStateMachine), StorageError> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let directory = tempfile::Builder::new()
            .prefix(&format!("suite-{number}-"))
            .tempdir_in(&self.root)
            .expect("temporary directory for a sled store");
        let engine: Arc<dyn StorageEngine> =
            Arc::new(SledEngine::open(directory.path()).expect("sled opens in a fresh directory"));
        let ((), log_store, state_machine) = stores(engine);
        Ok((directory, log_store, state_machine))
    }
}

fn stores(engine: Arc<dyn StorageEngine>) -> ((), LogStore, ShardStateMachine) {
    let state_machine = ShardStateMachine::open(0, engine.clone(), Limits::default(), 1_024)
        .expect("a state machine opens on an empty engine");
    ((), LogStore::new(0, engine), state_machine)
}

#[test]
fn sim_disk_stores_pass_openraft_storage_suite() {
    Suite::test_all(SimDiskStores).expect("storage suite");
}

#[test]
fn sled_stores_pass_openraft_storage_suite() {
    let root = tempfile::tempdir().expect("temporary root");
    let builder = SledStores {
        root: root.path().to_path_buf(),
        next: AtomicU64::new(0),
    };
    Suite::test_all(builder).expect("storage suite");
}
