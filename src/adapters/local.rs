//! Local state on disk: one RocksDB database per member data directory,
//! one column family per shard (`<topic>/<partition>`), written once per
//! checkpoint in a single `WriteBatch`, after that checkpoint's Kafka
//! transaction has committed, by a thread of its own ([`LocalWriter`]).
//!
//! The changelog topics stay the source of truth; the local copy is a cache
//! of them, so that a restart need not read a partition's whole changelog.
//! With each shard's state the batch records its [`Position`]: the input
//! offset the state covers and the changelog offset it includes. Because the
//! copy is only written after the commit, it is never ahead of what Kafka
//! committed; it can be behind (a crash between commit and write, or the
//! partition owned by another member meanwhile), and then reading the
//! changelog from the recorded offset to its end brings it up to date:
//! changelog records are whole values per key, so re-applying a suffix in
//! order gives the same state however far back it starts.

use crate::coordinator::{LocalShard, LocalStore, LocalWrite, PortError};
use crate::state::{Change, Entry, EntryVisitor, SnapshotError, StateStore};
use rocksdb::{
    BoundColumnFamily, DBWithThreadMode, Direction, IteratorMode, MultiThreaded, Options,
    WriteBatch, WriteOptions,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

type Db = DBWithThreadMode<MultiThreaded>;

/// The key a shard's [`Position`] is kept under; engine keys never start
/// with `~`.
const POSITION_KEY: &[u8] = b"~position";

/// Why local state could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// RocksDB failed (including: another process holds the directory).
    #[error("local state in {dir}: {source}")]
    Rocks {
        /// The data directory.
        dir: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// A shard's store failed.
    #[error("local state in {dir}: {error}")]
    Shard {
        /// The data directory.
        dir: PathBuf,
        /// What failed.
        error: SnapshotError,
    },
}

pub use crate::coordinator::Position;

fn encode_position(p: Position) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&p.input.to_be_bytes());
    b[8..].copy_from_slice(&p.changelog.to_be_bytes());
    b
}

fn decode_position(b: &[u8]) -> Option<Position> {
    let input = i64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let changelog = i64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
    (b.len() == 16).then_some(Position { input, changelog })
}

/// The data directory's database.
#[derive(Clone)]
pub struct LocalState {
    db: Arc<Db>,
    dir: PathBuf,
}

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState")
            .field("dir", &self.dir)
            .finish()
    }
}

impl LocalState {
    /// Opens (creating if needed) the database in `dir` with every column
    /// family it already has.
    pub fn open(dir: &Path) -> Result<LocalState, LocalError> {
        let err = |source| LocalError::Rocks {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).ok();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = match Db::list_cf(&opts, dir) {
            Ok(cfs) => cfs,
            // A new directory has no database to list yet.
            Err(_) => vec!["default".to_string()],
        };
        let db = Db::open_cf(&opts, dir, cfs).map_err(err)?;
        Ok(LocalState {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing database for reading only: allowed while a
    /// running service holds it, showing what it had flushed when opened.
    pub fn open_read_only(dir: &Path) -> Result<LocalState, LocalError> {
        let err = |source| LocalError::Rocks {
            dir: dir.to_path_buf(),
            source,
        };
        let opts = Options::default();
        let cfs = Db::list_cf(&opts, dir).map_err(err)?;
        let db = Db::open_cf_for_read_only(&opts, dir, cfs, false).map_err(err)?;
        Ok(LocalState {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
        })
    }

    /// The shards that have a store here, as `(topic, partition)`.
    pub fn shards(&self) -> Result<Vec<(String, i32)>, LocalError> {
        let cfs = Db::list_cf(&Options::default(), &self.dir).map_err(|e| self.error(e))?;
        let mut out: Vec<(String, i32)> = cfs
            .iter()
            .filter_map(|cf| {
                let (topic, partition) = cf.rsplit_once('/')?;
                Some((topic.to_string(), partition.parse().ok()?))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// An existing shard's store (`None`: there is none).
    pub fn existing_shard(&self, topic: &str, partition: i32) -> Option<ShardStore> {
        let cf = format!("{topic}/{partition}");
        self.db.cf_handle(&cf)?;
        Some(ShardStore {
            state: self.clone(),
            cf,
        })
    }

    /// Compacts every shard's store (dropping deleted and overwritten
    /// entries); returns the live SST bytes before and after.
    pub fn compact(&self) -> Result<(u64, u64), LocalError> {
        let size = |s: &LocalState| -> Result<u64, LocalError> {
            let mut total = 0;
            for (topic, partition) in s.shards()? {
                if let Some(store) = s.existing_shard(&topic, partition) {
                    total += store.sst_bytes();
                }
            }
            Ok(total)
        };
        let before = size(self)?;
        for (topic, partition) in self.shards()? {
            if let Some(store) = self.existing_shard(&topic, partition)
                && let Ok(cf) = store.handle()
            {
                self.db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
            }
        }
        Ok((before, size(self)?))
    }

    /// The store of one shard (its column family, created if new).
    pub fn shard(&self, topic: &str, partition: i32) -> Result<ShardStore, LocalError> {
        let cf = format!("{topic}/{partition}");
        if self.db.cf_handle(&cf).is_none() {
            self.db
                .create_cf(&cf, &Options::default())
                .map_err(|source| self.error(source))?;
        }
        Ok(ShardStore {
            state: self.clone(),
            cf,
        })
    }

    /// Writes each shard's changes and new position in one atomic batch.
    pub fn commit<'a>(
        &self,
        shards: impl IntoIterator<Item = (&'a ShardStore, &'a [(Vec<u8>, Option<Vec<u8>>)], Position)>,
    ) -> Result<(), LocalError> {
        let mut batch = WriteBatch::default();
        for (store, changes, position) in shards {
            let cf = store.handle().map_err(|e| LocalError::Shard {
                dir: self.dir.clone(),
                error: e,
            })?;
            add_in_key_order(&mut batch, &cf, changes);
            batch.put_cf(&cf, POSITION_KEY, encode_position(position));
        }
        // The changelog holds what a lost write held: no fsync per checkpoint.
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db
            .write_opt(batch, &opts)
            .map_err(|source| self.error(source))
    }

    fn error(&self, source: rocksdb::Error) -> LocalError {
        LocalError::Rocks {
            dir: self.dir.clone(),
            source,
        }
    }
}

/// One shard's column family, a [`StateStore`].
#[derive(Debug, Clone)]
pub struct ShardStore {
    state: LocalState,
    cf: String,
}

impl ShardStore {
    fn handle(&self) -> Result<Arc<BoundColumnFamily<'_>>, SnapshotError> {
        self.state
            .db
            .cf_handle(&self.cf)
            .ok_or_else(|| SnapshotError::Store(format!("column family {} is gone", self.cf)))
    }

    /// What the stored state covers, if anything was stored.
    pub fn position(&self) -> Result<Option<Position>, SnapshotError> {
        match self.get(POSITION_KEY)? {
            None => Ok(None),
            Some(b) => decode_position(&b).map(Some).ok_or_else(|| {
                SnapshotError::Corrupt(format!("{}: bad position record {b:?}", self.cf))
            }),
        }
    }

    /// Records what the stored state covers.
    pub fn set_position(&mut self, position: Position) -> Result<(), SnapshotError> {
        self.write(vec![(
            POSITION_KEY.to_vec(),
            Some(encode_position(position).to_vec()),
        )])
    }

    /// Removes everything, position included.
    pub fn clear(&mut self) -> Result<(), SnapshotError> {
        let db = &self.state.db;
        db.drop_cf(&self.cf).map_err(store_error)?;
        db.create_cf(&self.cf, &Options::default())
            .map_err(store_error)
    }

    /// The column family's name.
    pub fn name(&self) -> &str {
        &self.cf
    }

    /// Bytes of its SST files (what it holds on disk once flushed).
    pub fn sst_bytes(&self) -> u64 {
        self.handle()
            .ok()
            .and_then(|cf| {
                self.state
                    .db
                    .property_int_value_cf(&cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
            })
            .unwrap_or(0)
    }
}

/// Writes a [`LocalState`]'s checkpoint batches on a thread of its own,
/// in order: the coordinator's thread queues a batch and goes back to
/// polling, where writing it there (RocksDB's memtable inserts of every
/// change) held the loop for milliseconds per checkpoint. At most
/// [`QUEUED_BATCHES`] wait; a checkpoint beyond that waits for room. What
/// is queued is written before the writer is dropped.
pub struct LocalWriter {
    state: LocalState,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    done: Arc<(Mutex<Written>, Condvar)>,
    queued: u64,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Batches a [`LocalWriter`] holds before [`LocalStore::commit`] waits.
pub const QUEUED_BATCHES: usize = 2;

type Job = (u64, Vec<LocalWrite<ShardStore>>);

#[derive(Default)]
struct Written {
    last: u64,
    error: Option<String>,
}

impl std::fmt::Debug for LocalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWriter")
            .field("state", &self.state)
            .field("queued", &self.queued)
            .finish()
    }
}

impl LocalWriter {
    /// Starts the writer of `state`.
    pub fn start(state: LocalState) -> std::io::Result<LocalWriter> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUED_BATCHES);
        let done: Arc<(Mutex<Written>, Condvar)> = Arc::default();
        let thread = std::thread::Builder::new()
            .name("tripline-local".into())
            .spawn({
                let state = state.clone();
                let done = done.clone();
                move || {
                    for (n, writes) in queue {
                        let (lock, changed) = &*done;
                        if lock
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .error
                            .is_some()
                        {
                            // Nothing after a failed batch: the copy would
                            // skip its changes yet claim a later position.
                            continue;
                        }
                        let result =
                            state.commit(writes.iter().map(|(store, changes, position)| {
                                (store, changes.as_slice(), *position)
                            }));
                        let mut w = lock.lock().unwrap_or_else(PoisonError::into_inner);
                        match result {
                            Ok(()) => w.last = n,
                            Err(e) => w.error = Some(e.to_string()),
                        }
                        changed.notify_all();
                    }
                }
            })?;
        Ok(LocalWriter {
            state,
            jobs: Some(jobs),
            done,
            queued: 0,
            thread: Some(thread),
        })
    }

    /// The database written to.
    pub fn state(&self) -> &LocalState {
        &self.state
    }

    fn outcome(w: &Written) -> Result<u64, PortError> {
        match &w.error {
            Some(e) => Err(PortError::retry("local store", e)),
            None => Ok(w.last),
        }
    }
}

impl LocalStore for LocalWriter {
    type Shard = ShardStore;

    fn shard(&self, topic: &str, partition: i32) -> Result<ShardStore, PortError> {
        LocalState::shard(&self.state, topic, partition)
            .map_err(|e| PortError::retry("local store", e))
    }

    fn commit(&mut self, writes: Vec<LocalWrite<ShardStore>>) -> Result<u64, PortError> {
        let gone = || PortError::retry("local store", "its writer thread is gone");
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        jobs.send((self.queued + 1, writes)).map_err(|_| gone())?;
        self.queued += 1;
        Ok(self.queued)
    }

    fn written(&mut self) -> Result<u64, PortError> {
        let w = self.done.0.lock().unwrap_or_else(PoisonError::into_inner);
        Self::outcome(&w)
    }

    fn flush(&mut self) -> Result<u64, PortError> {
        let (lock, changed) = &*self.done;
        let mut w = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while w.last < self.queued && w.error.is_none() {
            w = changed.wait(w).unwrap_or_else(PoisonError::into_inner);
        }
        Self::outcome(&w)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written the rest.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LocalShard for ShardStore {
    fn name(&self) -> &str {
        ShardStore::name(self)
    }

    fn position(&self) -> Result<Option<Position>, SnapshotError> {
        ShardStore::position(self)
    }

    fn set_position(&mut self, position: Position) -> Result<(), SnapshotError> {
        ShardStore::set_position(self, position)
    }

    fn clear(&mut self) -> Result<(), SnapshotError> {
        ShardStore::clear(self)
    }
}

/// Adds one shard's `changes` to `batch` sorted by key, changes to the
/// same key in their order (a stable sort): the batch means the same, and
/// RocksDB inserts each key into the memtable's skip list from where the
/// previous one went, where in the engine's order (a key's log rows, then
/// its entry, under another prefix) each insert searched the list from its
/// top. A checkpoint's write took about as long as its encoding.
fn add_in_key_order(batch: &mut WriteBatch, cf: &Arc<BoundColumnFamily<'_>>, changes: &[Change]) {
    let mut order: Vec<&Change> = changes.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in order {
        match v {
            Some(v) => batch.put_cf(cf, k, v),
            None => batch.delete_cf(cf, k),
        }
    }
}

fn store_error(e: rocksdb::Error) -> SnapshotError {
    SnapshotError::Store(e.to_string())
}

impl StateStore for ShardStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        let cf = self.handle()?;
        self.state.db.get_cf(&cf, key).map_err(store_error)
    }

    fn write(&mut self, batch: Vec<Change>) -> Result<(), SnapshotError> {
        let cf = self.handle()?;
        let mut b = WriteBatch::default();
        add_in_key_order(&mut b, &cf, &batch);
        self.state.db.write(b).map_err(store_error)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, SnapshotError> {
        let mut out = Vec::new();
        self.for_each_prefix(prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    fn for_each_prefix(
        &self,
        prefix: &[u8],
        f: &mut EntryVisitor<'_>,
    ) -> Result<(), SnapshotError> {
        let cf = self.handle()?;
        for item in self
            .state
            .db
            .iterator_cf(&cf, IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(store_error)?;
            if !k.starts_with(prefix) {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_writes_batches_in_order_and_the_rest_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = LocalState::open(dir.path()).unwrap();
        let store = state.shard("t", 0).unwrap();
        let mut writer = LocalWriter::start(state).unwrap();
        let batch = |value: &str, input: i64| {
            let change = (b"k".to_vec(), Some(value.as_bytes().to_vec()));
            let position = Position {
                input,
                changelog: input,
            };
            vec![(store.clone(), vec![change], position)]
        };
        assert_eq!(writer.commit(batch("a", 1)).unwrap(), 1);
        assert_eq!(writer.commit(batch("b", 2)).unwrap(), 2);
        assert_eq!(writer.flush().unwrap(), 2);
        assert_eq!(writer.written().unwrap(), 2);
        assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!(store.position().unwrap().map(|p| p.input), Some(2));
        for n in 3..=6 {
            writer.commit(batch(&n.to_string(), n)).unwrap();
        }
        drop(writer);
        assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"6"[..]));
        assert_eq!(store.position().unwrap().map(|p| p.input), Some(6));
    }

    #[test]
    fn a_batch_written_in_key_order_keeps_each_keys_changes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = LocalState::open(dir.path()).unwrap();
        let mut store = state.shard("t", 0).unwrap();
        let put = |k: &str, v: &str| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()));
        let delete = |k: &str| (k.as_bytes().to_vec(), None);
        // Out of key order, and each of `a`, `b` and `c` changed twice: the
        // later change to a key wins, however the keys are sorted.
        store
            .write(vec![
                put("c", "1"),
                put("b", "1"),
                delete("c"),
                put("a", "1"),
                delete("b"),
                put("b", "2"),
                put("a", "2"),
                put("d", "1"),
            ])
            .unwrap();
        let got = |k: &str| store.get(k.as_bytes()).unwrap();
        assert_eq!(got("a").as_deref(), Some(&b"2"[..]));
        assert_eq!(got("b").as_deref(), Some(&b"2"[..]));
        assert_eq!(got("c"), None);
        assert_eq!(got("d").as_deref(), Some(&b"1"[..]));
        // The same through a checkpoint's commit, a delete last this time.
        let changes = vec![put("e", "1"), put("a", "3"), delete("e")];
        let position = Position {
            input: 1,
            changelog: 1,
        };
        state
            .commit([(&store, changes.as_slice(), position)])
            .unwrap();
        assert_eq!(got("a").as_deref(), Some(&b"3"[..]));
        assert_eq!(got("e"), None);
        assert_eq!(store.position().unwrap().map(|p| p.input), Some(1));
    }

    #[test]
    fn positions_round_trip_and_reject_garbage() {
        let p = Position {
            input: 42,
            changelog: 1 << 40,
        };
        assert_eq!(decode_position(&encode_position(p)), Some(p));
        assert_eq!(decode_position(&[1, 2, 3]), None);
        assert_eq!(decode_position(&[0; 17]), None);
    }
}
