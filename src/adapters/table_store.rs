//! Tables on disk (`tables.store = "disk"`): the row versions of every
//! table in a RocksDB database of their own, for tables that do not fit in
//! memory (10 M customer profiles, every terminal of a network). Memory is
//! bounded by the block cache and the write buffers, whatever the rows.
//!
//! The database is a copy of the tables' topics, which stay the source of
//! truth. It keeps, beside the rows, where it is in each topic partition
//! ([`RowStore::position`]), so a restart reads only what the topics
//! gained meanwhile, not 10 M rows again. Writes go to the write-ahead log
//! unsynced: a killed process loses nothing, and after a machine's crash
//! RocksDB comes back with a prefix of the writes; since a position is
//! written after the rows it covers, what was lost is read again (a row
//! written twice is the same version). The store is emptied
//! when the tables it was filled for change (their names, topics, key or
//! time fields: the `identity` given to [`DiskRows::open`]), when a topic
//! went back (deleted and made again), or when it cannot be opened.
//!
//! A version is keyed by table, key and time, so that the version in force
//! at an event's time is one `seek_for_prev` away:
//! `u16 table id | u32 key length | key | u64 time` (big-endian; the time's
//! sign bit flipped, so that negative times sort first). Its value is a
//! tag byte (0: deleted from then, 1: a row) and the row in postcard. A
//! prefix extractor (the key without its time) and prefix bloom filters let
//! a lookup skip the files that hold no version of its key. Bookkeeping
//! sits under table id `0xFFFF`: the identity, each table's id and count
//! of keys, each partition's position.

use crate::event::EventTime;
use crate::tables::{HeldRow, RowStore};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DB, Direction, IteratorMode, Options,
    ReadOptions, SliceTransform, WriteBatch, WriteOptions,
};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("tables store at {dir}: {source}")]
pub struct DiskRowsError {
    dir: PathBuf,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// A table's id in the store and its count of keys.
type TableEntry = (String, u16, u64);

/// Row versions in RocksDB (see the module docs).
pub struct DiskRows {
    db: DB,
    /// Every table the store holds.
    tables: Mutex<Vec<TableEntry>>,
    dir: PathBuf,
}

impl std::fmt::Debug for DiskRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskRows").field("dir", &self.dir).finish()
    }
}

/// Where the store of the data directory `state_dir` is: beside it
/// (`<state_dir>.tables`), not in it, since the data directory is a RocksDB
/// database of its own.
pub fn dir_beside(state_dir: &Path) -> PathBuf {
    let mut dir = state_dir.as_os_str().to_owned();
    dir.push(".tables");
    PathBuf::from(dir)
}

const DELETED: u8 = 0;
const ROW: u8 = 1;

/// The table id under which the bookkeeping is kept.
const META: [u8; 2] = [0xFF, 0xFF];
const IDENTITY: u8 = b'i';
const POSITION: u8 = b'p';
const TABLE: u8 = b't';
/// The format of the store: a binary that writes another one empties it.
const FORMAT: &str = "tables-store-1";

/// The prefix of a version key: all but its time.
fn key_prefix(k: &[u8]) -> &[u8] {
    &k[..k.len() - 8]
}

/// Whether `k` is a version key (the bookkeeping's keys are not).
fn is_version_key(k: &[u8]) -> bool {
    k.len() >= 2 + 4 + 8 && k[..2] != META
}

fn meta_key(kind: u8, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + name.len());
    k.extend_from_slice(&META);
    k.push(kind);
    k.extend_from_slice(name);
    k
}

fn position_key(source: &str, partition: i32) -> Vec<u8> {
    let mut name = Vec::with_capacity(source.len() + 5);
    name.extend_from_slice(source.as_bytes());
    name.push(0);
    name.extend_from_slice(&partition.to_be_bytes());
    meta_key(POSITION, &name)
}

fn table_value(id: u16, keys: u64) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[..2].copy_from_slice(&id.to_be_bytes());
    v[2..].copy_from_slice(&keys.to_be_bytes());
    v
}

impl DiskRows {
    /// The store in `dir`, with a block cache of `cache_bytes`: what it
    /// held when it was last filled for the same `identity` (the tables'
    /// declarations), empty otherwise.
    pub fn open(dir: &Path, cache_bytes: usize, identity: &str) -> Result<DiskRows, DiskRowsError> {
        let error = |e: Box<dyn std::error::Error + Send + Sync>| DiskRowsError {
            dir: dir.to_path_buf(),
            source: e,
        };
        let identity = format!("{FORMAT}\n{identity}");
        let opts = Self::options(cache_bytes);
        let db = match DB::open(&opts, dir) {
            Ok(db) if Self::identity(&db).as_deref() == Some(identity.as_bytes()) => db,
            opened => {
                match opened {
                    Ok(db) => drop(db),
                    Err(e) => tracing::warn!(
                        dir = %dir.display(),
                        "tables store: emptied, it could not be opened: {e}"
                    ),
                }
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(|e| error(e.into()))?;
                }
                let db = DB::open(&opts, dir).map_err(|e| error(e.into()))?;
                db.put_opt(meta_key(IDENTITY, b""), &identity, &Self::write_options())
                    .map_err(|e| error(e.into()))?;
                db
            }
        };
        let mut tables = Vec::new();
        let from = meta_key(TABLE, b"");
        for item in db.iterator_opt(
            IteratorMode::From(&from, Direction::Forward),
            Self::total_order(),
        ) {
            let (k, v) = item.map_err(|e| error(e.into()))?;
            let Some(name) = k.strip_prefix(from.as_slice()) else {
                break;
            };
            let (Ok(name), Ok(v)) = (std::str::from_utf8(name), <[u8; 10]>::try_from(&*v)) else {
                return Err(error("a table entry that cannot be read".into()));
            };
            let id = u16::from_be_bytes([v[0], v[1]]);
            let keys = u64::from_be_bytes(v[2..].try_into().unwrap_or_default());
            tables.push((name.to_string(), id, keys));
        }
        Ok(DiskRows {
            db,
            tables: Mutex::new(tables),
            dir: dir.to_path_buf(),
        })
    }

    fn options(cache_bytes: usize) -> Options {
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&Cache::new_lru_cache(cache_bytes));
        // Index and filter blocks in the cache: memory stays inside its
        // bound however many rows there are. Partitioned, since one filter
        // for a file of 10 M keys (12 MB) is larger than a cache shard and
        // would be read from the file again on every lookup; the top level
        // of each stays pinned.
        block.set_cache_index_and_filter_blocks(true);
        block.set_cache_index_and_filter_blocks_with_high_priority(true);
        block.set_pin_l0_filter_and_index_blocks_in_cache(true);
        block.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        block.set_partition_filters(true);
        block.set_metadata_block_size(4096);
        block.set_pin_top_level_index_and_filter(true);
        // Filters over keys' prefixes (not whole version keys, which no
        // lookup names): a lookup of a key a file does not hold skips it.
        block.set_bloom_filter(10.0, false);
        block.set_whole_key_filtering(false);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&block);
        opts.set_prefix_extractor(SliceTransform::create(
            "tripline.table-key",
            key_prefix,
            Some(is_version_key),
        ));
        opts.set_memtable_prefix_bloom_ratio(0.1);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_write_buffer_size(32 << 20);
        opts.set_max_write_buffer_number(2);
        opts
    }

    fn identity(db: &DB) -> Option<Vec<u8>> {
        db.get(meta_key(IDENTITY, b"")).ok().flatten()
    }

    /// Reads that stay within one key's versions (and may use the filters).
    fn within_key() -> ReadOptions {
        let mut r = ReadOptions::default();
        r.set_prefix_same_as_start(true);
        r
    }

    /// Reads across keys (the bookkeeping).
    fn total_order() -> ReadOptions {
        let mut r = ReadOptions::default();
        r.set_total_order_seek(true);
        r
    }

    /// The id of `table`, registered (without its entry written) on first
    /// use when `register`; with whether it is new.
    fn table_id(&self, table: &str, register: bool) -> Option<u16> {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, id, _)) = tables.iter().find(|(t, _, _)| t == table) {
            return Some(*id);
        }
        let next = tables.iter().map(|(_, id, _)| id + 1).max().unwrap_or(0);
        if !register || next == u16::from_be_bytes(META) {
            return None;
        }
        tables.push((table.to_string(), next, 0));
        Some(next)
    }

    /// The prefix of `key`'s versions in table `id`.
    fn prefix(id: u16, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + 4 + key.len() + 8);
        k.extend_from_slice(&id.to_be_bytes());
        k.extend_from_slice(&(key.len() as u32).to_be_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn version_key(prefix: &[u8], at: EventTime) -> Vec<u8> {
        let mut k = Vec::with_capacity(prefix.len() + 8);
        k.extend_from_slice(prefix);
        k.extend_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
        k
    }

    /// Whether the record key `k` is a version of the key of `prefix`
    /// (not of a longer key that starts the same).
    fn is_version_of(k: &[u8], prefix: &[u8]) -> bool {
        k.len() == prefix.len() + 8 && k.starts_with(prefix)
    }

    fn time_of(key: &[u8]) -> EventTime {
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[key.len() - 8..]);
        (u64::from_be_bytes(b) ^ (1 << 63)) as EventTime
    }

    fn decode(value: &[u8]) -> Option<HeldRow> {
        match value.split_first() {
            Some((&ROW, row)) => match postcard::from_bytes(row) {
                Ok(row) => Some(row),
                Err(e) => {
                    tracing::error!("tables store: a row that cannot be read: {e}");
                    None
                }
            },
            _ => None,
        }
    }

    fn write_options() -> WriteOptions {
        // Unsynced (the default): the topics are the durable log, the store
        // only needs to come back with a prefix of its writes.
        WriteOptions::default()
    }

    /// Whether `prefix` has a version at all.
    fn has_versions(&self, prefix: &[u8]) -> bool {
        let mut it = self.db.raw_iterator_opt(Self::within_key());
        it.seek_for_prev(Self::version_key(prefix, EventTime::MAX));
        it.key().is_some_and(|k| Self::is_version_of(k, prefix))
    }
}

impl RowStore for DiskRows {
    fn with_row_at(
        &self,
        table: &str,
        key: &str,
        t: EventTime,
        f: &mut dyn FnMut(Option<&HeldRow>),
    ) {
        let Some(id) = self.table_id(table, false) else {
            return f(None);
        };
        let prefix = Self::prefix(id, key);
        let mut it = self.db.raw_iterator_opt(Self::within_key());
        it.seek_for_prev(Self::version_key(&prefix, t));
        let row = match (it.key(), it.value()) {
            (Some(k), Some(v)) if Self::is_version_of(k, &prefix) => Self::decode(v),
            _ => None,
        };
        f(row.as_ref())
    }

    fn put(&self, table: &str, key: &str, at: EventTime, row: Option<HeldRow>) {
        let Some(id) = self.table_id(table, true) else {
            tracing::error!(table, "tables store: too many tables");
            return;
        };
        let prefix = Self::prefix(id, key);
        let new_key = !self.has_versions(&prefix);
        let mut value = vec![if row.is_some() { ROW } else { DELETED }];
        if let Some(row) = &row {
            match postcard::to_extend(row, value) {
                Ok(v) => value = v,
                Err(e) => {
                    tracing::error!(
                        table,
                        key,
                        "tables store: a row that cannot be written: {e}"
                    );
                    return;
                }
            }
        }
        let mut batch = WriteBatch::default();
        batch.put(Self::version_key(&prefix, at), value);
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = tables.iter_mut().find(|(t, _, _)| t == table) else {
            return;
        };
        // The count goes with the row, so that a crash keeps them together.
        if new_key {
            batch.put(
                meta_key(TABLE, table.as_bytes()),
                table_value(id, entry.2 + 1),
            );
        }
        match self.db.write_opt(batch, &Self::write_options()) {
            Ok(()) if new_key => entry.2 += 1,
            Ok(()) => {}
            Err(e) => tracing::error!(table, key, "tables store: a write failed: {e}"),
        }
    }

    fn forget_before(&self, table: &str, key: &str, from: EventTime) {
        let Some(id) = self.table_id(table, false) else {
            return;
        };
        let prefix = Self::prefix(id, key);
        let mut it = self.db.raw_iterator_opt(Self::within_key());
        it.seek(Self::version_key(&prefix, EventTime::MIN));
        // Every version up to `from`: all but the last are forgotten.
        let mut seen = Vec::new();
        while let Some(k) = it.key() {
            if !Self::is_version_of(k, &prefix) || Self::time_of(k) > from {
                break;
            }
            seen.push(k.to_vec());
            it.next();
        }
        seen.pop();
        if seen.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        for k in seen {
            batch.delete(k);
        }
        if let Err(e) = self.db.write_opt(batch, &Self::write_options()) {
            tracing::error!(table, key, "tables store: a delete failed: {e}");
        }
    }

    fn versions(&self, table: &str, key: &str) -> Vec<(EventTime, Option<HeldRow>)> {
        let Some(id) = self.table_id(table, false) else {
            return Vec::new();
        };
        let prefix = Self::prefix(id, key);
        let mut it = self.db.raw_iterator_opt(Self::within_key());
        it.seek(Self::version_key(&prefix, EventTime::MIN));
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !Self::is_version_of(k, &prefix) {
                break;
            }
            out.push((Self::time_of(k), Self::decode(v)));
            it.next();
        }
        out
    }

    fn len(&self, table: &str) -> usize {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .iter()
            .find(|(t, _, _)| t == table)
            .map_or(0, |(_, _, n)| *n as usize)
    }

    fn position(&self, source: &str, partition: i32) -> Option<i64> {
        let v = self.db.get(position_key(source, partition)).ok()??;
        Some(i64::from_be_bytes(v.as_slice().try_into().ok()?))
    }

    fn set_position(&self, source: &str, partition: i32, next: i64) {
        if let Err(e) = self.db.put_opt(
            position_key(source, partition),
            next.to_be_bytes(),
            &Self::write_options(),
        ) {
            tracing::error!(
                source,
                partition,
                "tables store: a position write failed: {e}"
            );
        }
    }

    fn clear(&self) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        batch.delete_range([0u8, 0], META);
        batch.delete_range(meta_key(POSITION, b""), meta_key(POSITION + 1, b""));
        batch.delete_range(meta_key(TABLE, b""), meta_key(TABLE + 1, b""));
        match self.db.write_opt(batch, &Self::write_options()) {
            Ok(()) => tables.clear(),
            Err(e) => tracing::error!("tables store: could not be emptied: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FieldPath, Value};
    use crate::tables::Tables;
    use proptest::prelude::*;

    fn dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tripline-disk-rows-{name}-{}", std::process::id()))
    }

    /// One operation on a table: a row put, a deletion, a forgetting.
    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, i64, Option<u8>),
        Forget(u8, i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, -50i64..50, proptest::option::of(0u8..5))
                .prop_map(|(k, at, v)| Op::Put(k, at, v)),
            (0u8..4, -50i64..50).prop_map(|(k, at)| Op::Forget(k, at)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever is put, deleted and forgotten, the disk store answers
        /// every lookup, every key's versions and the key count as the
        /// memory store does.
        #[test]
        fn disk_rows_answer_as_memory_rows(ops in proptest::collection::vec(op(), 1..60)) {
            // A directory per case: a store there would be kept.
            static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let path = dir(&format!("prop-{}", CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
            let disk = Tables::on(DiskRows::open(&path, 1 << 20, "t").unwrap());
            let memory = Tables::new();
            for op in &ops {
                for t in [&disk, &memory] {
                    match op {
                        Op::Put(k, at, v) => {
                            let row = v.map(|v| {
                                serde_json::json!({"id": k, "v": v, "n": {"x": "y"}})
                                    .as_object()
                                    .unwrap()
                                    .clone()
                            });
                            t.put("t", &k.to_string(), *at, row);
                        }
                        Op::Forget(k, from) => t.forget_before("t", &k.to_string(), *from),
                    }
                }
            }
            for k in 0u8..4 {
                let key = Value::Num(k as f64);
                for at in -52i64..52 {
                    for field in ["v", "n.x", "missing"] {
                        let field = FieldPath::parse(field).unwrap();
                        prop_assert_eq!(
                            disk.get("t", &key, at, &field),
                            memory.get("t", &key, at, &field)
                        );
                    }
                }
                prop_assert_eq!(disk.versions("t", &k.to_string()), memory.versions("t", &k.to_string()));
            }
            prop_assert_eq!(disk.len("t"), memory.len("t"));
            prop_assert_eq!(disk.get("other", &Value::Num(0.0), 0, &FieldPath::single("v")), Value::Null);
            drop(disk);
            std::fs::remove_dir_all(&path).ok();
        }
    }

    #[test]
    fn a_store_reopened_for_the_same_tables_keeps_rows_counts_and_positions() {
        let path = dir("reopen");
        let open = |identity: &str| Tables::on(DiskRows::open(&path, 1 << 20, identity).unwrap());
        let row = |v: u8| serde_json::json!({"v": v}).as_object().unwrap().clone();
        {
            let t = open("profiles");
            t.put("t", "1", 0, Some(row(1)));
            t.put("t", "1", 5, Some(row(2)));
            t.put("u", "1", 0, Some(row(3)));
            t.put("u", "2", 0, None);
            t.set_position("topic-t", 3, 42);
            assert_eq!(t.position("topic-t", 3), Some(42));
        }
        {
            let t = open("profiles");
            assert_eq!((t.len("t"), t.len("u")), (1, 2));
            assert_eq!(t.versions("t", "1").len(), 2);
            let v = FieldPath::single("v");
            assert_eq!(t.get("t", &Value::Num(1.0), 4, &v), Value::Num(1.0));
            assert_eq!(t.get("u", &Value::Num(1.0), 4, &v), Value::Num(3.0));
            assert_eq!(t.position("topic-t", 3), Some(42));
            assert_eq!(t.position("topic-t", 2), None);
            // A table registered after the reopening gets an id of its own.
            t.put("w", "1", 0, Some(row(4)));
            assert_eq!(t.get("w", &Value::Num(1.0), 0, &v), Value::Num(4.0));
            assert_eq!(t.get("t", &Value::Num(1.0), 0, &v), Value::Num(1.0));
            t.clear();
            assert_eq!((t.len("t"), t.len("w")), (0, 0));
            assert!(t.versions("t", "1").is_empty());
            assert_eq!(t.position("topic-t", 3), None);
            t.put("t", "1", 0, Some(row(5)));
            t.set_position("topic-t", 3, 1);
        }
        {
            let t = open("profiles");
            assert_eq!(t.len("t"), 1);
            assert_eq!(t.position("topic-t", 3), Some(1));
        }
        // Filled for other tables: emptied.
        let t = open("profiles and terminals");
        assert_eq!(t.len("t"), 0);
        assert!(t.versions("t", "1").is_empty());
        assert_eq!(t.position("topic-t", 3), None);
        drop(t);
        std::fs::remove_dir_all(&path).ok();
    }

    #[test]
    fn a_store_that_cannot_be_opened_is_made_again() {
        let path = dir("broken");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("CURRENT"), "MANIFEST-nowhere\n").unwrap();
        let t = Tables::on(DiskRows::open(&path, 1 << 20, "t").unwrap());
        t.put("t", "1", 0, None);
        assert_eq!(t.len("t"), 1);
        drop(t);
        std::fs::remove_dir_all(&path).ok();
    }
}
