//! The storage engine under every shard replica of a node.
//!
//! One engine holds the logs, votes and snapshots of all shards of a node,
//! each under its own key prefix. Writes are visible to reads at once but
//! become durable only when a later `sync` completes; callers that promise
//! durability to openraft (votes, appended entries, snapshots) must await a
//! sync first. Two engines implement the trait:
//! - `SledEngine`, the production engine, on sled 0.34 files;
//! - `SimDisk`, an in-memory disk for the simulator that loses the writes not
//!   yet synced when the node crashes, keeping a chosen prefix of them to
//!   model a torn write at batch granularity.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::EngineError;

/// A key and its value, as range scans return them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A future that completes when a sync is durable.
pub type SyncFuture = Pin<Box<dyn Future<Output = Result<(), EngineError>> + Send>>;

/// An ordered set of puts and deletes applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    operations: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.operations.push((key, Some(value)));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.operations.push((key, None));
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    fn apply_to(&self, map: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
        for (key, value) in &self.operations {
            match value {
                Some(value) => map.insert(key.clone(), value.clone()),
                None => map.remove(key),
            };
        }
    }
}

/// A key-value store whose writes are durable only after `sync`.
pub trait StorageEngine: Send + Sync + 'static {
    /// Reads the current value of `key`, synced or not.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Reads every pair with `start <= key < end`, in key order.
    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, EngineError>;

    /// Applies `batch` atomically. It is lost on a crash until a sync that
    /// started after this call returns.
    fn write(&self, batch: WriteBatch) -> Result<(), EngineError>;

    /// Makes every write that returned before this call durable.
    fn sync(&self) -> SyncFuture;
}

/// The production engine: one sled database in the node's data directory.
///
/// Syncs are group-committed: one flush at a time runs on a blocking
/// thread and covers every write that returned before it started, and
/// callers that arrive during a flush wait for the next one. Besides
/// batching the fsyncs of all shards of a node, this keeps sled 0.34 from
/// running concurrent flushes, which deadlocked its I/O threads in testing.
#[cfg(not(madsim))]
pub struct SledEngine {
    database: sled::Db,
    group: Arc<GroupSync>,
}

#[cfg(not(madsim))]
#[derive(Default)]
struct GroupSync {
    /// Writes applied so far; a sync covers the count it reads at its start.
    writes: std::sync::atomic::AtomicU64,
    /// Whether a flush is running.
    flushing: Mutex<bool>,
    /// The write count the last successful flush covered.
    flushed: tokio::sync::watch::Sender<u64>,
}

#[cfg(not(madsim))]
impl SledEngine {
    /// Opens (or creates) the sled database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, EngineError> {
        let database = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // Durability comes from explicit syncs only, so sled's own
            // periodic flusher never runs a flush beside ours.
            .flush_every_ms(None)
            .open()
            .map_err(|source| EngineError::Open {
                path: path.display().to_string(),
                message: source.to_string(),
            })?;
        Ok(SledEngine {
            database,
            group: Arc::new(GroupSync::default()),
        })
    }
}

#[cfg(not(madsim))]
impl GroupSync {
    /// Returns once a flush that started after `target` writes completed.
    async fn sync(&self, database: &sled::Db, target: u64) -> Result<(), EngineError> {
        use std::sync::atomic::Ordering;

        let mut flushed = self.flushed.subscribe();
        loop {
            if *flushed.borrow_and_update() >= target {
                return Ok(());
            }
            if !self.try_lead() {
                // Another caller is flushing; wait for it to finish, then
                // check whether its flush covered our writes.
                let _ = flushed.changed().await;
                continue;
            }
            let covered = self.writes.load(Ordering::SeqCst);
            let database = database.clone();
            let outcome = tokio::task::spawn_blocking(move || database.flush()).await;
            *self
                .flushing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = false;
            match outcome {
                Ok(Ok(_)) => {
                    self.flushed
                        .send_modify(|flushed| *flushed = (*flushed).max(covered));
                }
                Ok(Err(error)) => {
                    self.flushed.send_modify(|_| {});
                    return Err(EngineError::sled(error));
                }
                Err(join_error) => {
                    self.flushed.send_modify(|_| {});
                    return Err(EngineError::Io {
                        message: format!("flush task failed: {join_error}"),
                    });
                }
            }
        }
    }

    fn try_lead(&self) -> bool {
        let mut flushing = self
            .flushing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *flushing {
            return false;
        }
        *flushing = true;
        true
    }
}

#[cfg(not(madsim))]
impl StorageEngine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let value = self.database.get(key).map_err(EngineError::sled)?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, EngineError> {
        let mut pairs = Vec::new();
        for pair in self.database.range(start.to_vec()..end.to_vec()) {
            let (key, value) = pair.map_err(EngineError::sled)?;
            pairs.push((key.to_vec(), value.to_vec()));
        }
        Ok(pairs)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.operations {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.database
            .apply_batch(sled_batch)
            .map_err(EngineError::sled)?;
        self.group
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn sync(&self) -> SyncFuture {
        let database = self.database.clone();
        let group = self.group.clone();
        let target = group.writes.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move { group.sync(&database, target).await })
    }
}

/// An in-memory disk for the simulator, shared across restarts of one node.
///
/// The harness keeps the `SimDisk` alive while it kills and restarts the
/// node that uses it, and calls `crash` in between to drop unsynced writes.
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<SimDiskState>>,
    sync_delay: Duration,
}

#[derive(Default)]
struct SimDiskState {
    /// The contents that survive a crash.
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `durable` plus every pending batch: what reads see.
    visible: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Unsynced batches in write order, each with its write number.
    pending: Vec<(u64, WriteBatch)>,
    writes_total: u64,
    syncs_total: u64,
}

impl SimDisk {
    /// Creates an empty disk whose syncs take `sync_delay` of runtime time.
    pub fn new(sync_delay: Duration) -> Self {
        SimDisk {
            inner: Arc::new(Mutex::new(SimDiskState::default())),
            sync_delay,
        }
    }

    /// Simulates power loss: every unsynced batch after the first
    /// `batches_kept` is lost. Returns how many unsynced batches there were.
    pub fn crash(&self, batches_kept: usize) -> usize {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        let pending_count = pending.len();
        for (_, batch) in pending.into_iter().take(batches_kept) {
            batch.apply_to(&mut state.durable);
        }
        state.visible = state.durable.clone();
        pending_count
    }

    /// Returns the number of batches written and syncs completed so far.
    pub fn counters(&self) -> (u64, u64) {
        let state = self.lock();
        (state.writes_total, state.syncs_total)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimDiskState> {
        // A poisoned lock means a panic while holding it, which already
        // failed the run; the state itself is still consistent per batch.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StorageEngine for SimDisk {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.lock().visible.get(key).cloned())
    }

    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, EngineError> {
        let state = self.lock();
        let pairs = state
            .visible
            .range(start.to_vec()..end.to_vec())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(pairs)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut state = self.lock();
        state.writes_total += 1;
        let write_number = state.writes_total;
        batch.apply_to(&mut state.visible);
        state.pending.push((write_number, batch));
        Ok(())
    }

    fn sync(&self) -> SyncFuture {
        let disk = self.clone();
        let synced_through = self.lock().writes_total;
        Box::pin(async move {
            if !disk.sync_delay.is_zero() {
                tokio::time::sleep(disk.sync_delay).await;
            }
            let mut state = disk.lock();
            let pending = std::mem::take(&mut state.pending);
            let (synced, unsynced): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(number, _)| *number <= synced_through);
            for (_, batch) in synced {
                batch.apply_to(&mut state.durable);
            }
            state.pending = unsynced;
            state.syncs_total += 1;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(key: &str, value: &str) -> WriteBatch {
        let mut batch = WriteBatch::default();
        batch.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
        batch
    }

    #[tokio::test]
    async fn sim_disk_crash_drops_unsynced_batches() {
        let disk = SimDisk::new(Duration::ZERO);
        disk.write(batch("a", "1")).unwrap();
        disk.sync().await.unwrap();
        disk.write(batch("b", "2")).unwrap();
        assert_eq!(disk.get(b"b").unwrap(), Some(b"2".to_vec()));

        let lost = disk.crash(0);

        assert_eq!(lost, 1);
        assert_eq!(disk.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(disk.get(b"b").unwrap(), None);
    }

    #[tokio::test]
    async fn sim_disk_crash_keeps_chosen_prefix() {
        let disk = SimDisk::new(Duration::ZERO);
        disk.write(batch("a", "1")).unwrap();
        disk.write(batch("b", "2")).unwrap();
        disk.write(batch("c", "3")).unwrap();

        disk.crash(2);

        assert_eq!(disk.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(disk.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(disk.get(b"c").unwrap(), None);
    }

    #[tokio::test]
    async fn sim_disk_sync_covers_only_earlier_writes() {
        let disk = SimDisk::new(Duration::ZERO);
        disk.write(batch("a", "1")).unwrap();
        let sync = disk.sync();
        disk.write(batch("b", "2")).unwrap();
        sync.await.unwrap();

        disk.crash(0);

        assert_eq!(disk.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(disk.get(b"b").unwrap(), None);
    }

    #[tokio::test]
    async fn sim_disk_range_is_half_open_and_ordered() {
        let disk = SimDisk::new(Duration::ZERO);
        for key in ["b", "a", "c", "d"] {
            disk.write(batch(key, key)).unwrap();
        }

        let keys: Vec<_> = disk
            .range(b"a", b"c")
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();

        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[cfg(not(madsim))]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sled_engine_concurrent_syncs_all_complete() {
        let directory = tempfile::tempdir().unwrap();
        let engine = Arc::new(SledEngine::open(directory.path()).unwrap());
        let mut writers = Vec::new();
        for writer in 0..8 {
            let engine = engine.clone();
            writers.push(tokio::spawn(async move {
                for round in 0..50 {
                    engine
                        .write(batch(&format!("{writer}-{round}"), "x"))
                        .unwrap();
                    engine.sync().await.unwrap();
                }
            }));
        }

        let all = futures::future::join_all(writers);
        let outcome = tokio::time::timeout(Duration::from_secs(60), all).await;

        let results = outcome.expect("400 group-committed syncs finish within 60 s");
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(engine.get(b"7-49").unwrap(), Some(b"x".to_vec()));
    }

    #[cfg(not(madsim))]
    #[tokio::test]
    async fn sled_engine_reopens_with_synced_data() {
        let directory = std::env::temp_dir().join(format!("parley-engine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        {
            let engine = SledEngine::open(&directory).unwrap();
            engine.write(batch("a", "1")).unwrap();
            engine.sync().await.unwrap();
        }

        let engine = SledEngine::open(&directory).unwrap();

        assert_eq!(engine.get(b"a").unwrap(), Some(b"1".to_vec()));
        drop(engine);
        let _ = std::fs::remove_dir_all(&directory);
    }
}
