//! Tables on disk (`tables.store = "disk"`): the row versions of every
//! table in a RocksDB database of their own, for tables that do not fit in
//! memory (10 M customer profiles, every terminal of a network). Memory is
//! bounded by the block cache and the write buffers, whatever the rows.
//!
//! The database is a cache of the tables' topics, which stay the source of
//! truth: it is emptied when the service starts and filled as the topics are
//! read, so nothing in it needs a write-ahead log or a recovery.
//!
//! A version is keyed by table, key and time, so that the version in force
//! at an event's time is one `seek_for_prev` away:
//! `u16 table id | u32 key length | key | u64 time` (big-endian; the time's
//! sign bit flipped, so that negative times sort first). Its value is a
//! tag byte (0: deleted from then, 1: a row) and the row in postcard.

use crate::event::EventTime;
use crate::tables::{HeldRow, RowStore};
use rocksdb::{BlockBasedOptions, Cache, DB, Options, WriteOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("tables store at {dir}: {source}")]
pub struct DiskRowsError {
    dir: PathBuf,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Row versions in RocksDB (see the module docs).
pub struct DiskRows {
    db: DB,
    /// Table names by id, and each table's count of keys.
    tables: Mutex<Vec<(String, usize)>>,
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

impl DiskRows {
    /// An empty store in `dir` (whatever was there is removed), with a
    /// block cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<DiskRows, DiskRowsError> {
        let error = |e: Box<dyn std::error::Error + Send + Sync>| DiskRowsError {
            dir: dir.to_path_buf(),
            source: e,
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| error(e.into()))?;
        }
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&Cache::new_lru_cache(cache_bytes));
        // Lookups are point reads of one key's versions: a bloom filter
        // over whole keys would not serve `seek_for_prev`, but the cache of
        // index and filter blocks keeps memory inside the cache's bound.
        block.set_cache_index_and_filter_blocks(true);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&block);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_write_buffer_size(32 << 20);
        opts.set_max_write_buffer_number(2);
        let db = DB::open(&opts, dir).map_err(|e| error(e.into()))?;
        Ok(DiskRows {
            db,
            tables: Mutex::new(Vec::new()),
            dir: dir.to_path_buf(),
        })
    }

    /// The id of `table`, registered on first use when `register`.
    fn table_id(&self, table: &str, register: bool) -> Option<u16> {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = tables.iter().position(|(t, _)| t == table) {
            return Some(i as u16);
        }
        if !register {
            return None;
        }
        tables.push((table.to_string(), 0));
        Some((tables.len() - 1) as u16)
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
        let mut w = WriteOptions::default();
        // The topics are the log: the store is rebuilt from them at start.
        w.disable_wal(true);
        w
    }

    /// The time of the last version of `prefix` at or before `t`, with its
    /// value.
    fn version_at(&self, prefix: &[u8], t: EventTime) -> Option<(EventTime, Vec<u8>)> {
        let mut it = self.db.raw_iterator();
        it.seek_for_prev(Self::version_key(prefix, t));
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if Self::is_version_of(k, prefix) => {
                Some((Self::time_of(k), v.to_vec()))
            }
            _ => None,
        }
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
        let mut it = self.db.raw_iterator();
        it.seek_for_prev(Self::version_key(&prefix, t));
        let row = match (it.key(), it.value()) {
            (Some(k), Some(v)) if Self::is_version_of(k, &prefix) => Self::decode(v),
            _ => None,
        };
        f(row.as_ref())
    }

    fn put(&self, table: &str, key: &str, at: EventTime, row: Option<HeldRow>) {
        let Some(id) = self.table_id(table, true) else {
            return;
        };
        let prefix = Self::prefix(id, key);
        let new_key = self.version_at(&prefix, EventTime::MAX).is_none();
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
        if let Err(e) = self.db.put_opt(
            Self::version_key(&prefix, at),
            value,
            &Self::write_options(),
        ) {
            tracing::error!(table, key, "tables store: a write failed: {e}");
            return;
        }
        if new_key {
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            tables[id as usize].1 += 1;
        }
    }

    fn forget_before(&self, table: &str, key: &str, from: EventTime) {
        let Some(id) = self.table_id(table, false) else {
            return;
        };
        let prefix = Self::prefix(id, key);
        let Some((kept, _)) = self.version_at(&prefix, from) else {
            return;
        };
        let mut it = self.db.raw_iterator();
        it.seek(&prefix);
        let mut older = Vec::new();
        while let Some(k) = it.key() {
            if !Self::is_version_of(k, &prefix) || Self::time_of(k) >= kept {
                break;
            }
            older.push(k.to_vec());
            it.next();
        }
        for k in older {
            if let Err(e) = self.db.delete_opt(k, &Self::write_options()) {
                tracing::error!(table, key, "tables store: a delete failed: {e}");
            }
        }
    }

    fn versions(&self, table: &str, key: &str) -> Vec<(EventTime, Option<HeldRow>)> {
        let Some(id) = self.table_id(table, false) else {
            return Vec::new();
        };
        let prefix = Self::prefix(id, key);
        let mut it = self.db.raw_iterator();
        it.seek(&prefix);
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
            .find(|(t, _)| t == table)
            .map_or(0, |(_, n)| *n)
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
            let path = dir("prop");
            let disk = Tables::on(DiskRows::open(&path, 1 << 20).unwrap());
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
    fn open_starts_empty() {
        let path = dir("reopen");
        {
            let t = Tables::on(DiskRows::open(&path, 1 << 20).unwrap());
            t.put("t", "1", 0, Some(serde_json::Map::new()));
            assert_eq!(t.len("t"), 1);
        }
        let t = Tables::on(DiskRows::open(&path, 1 << 20).unwrap());
        assert_eq!(t.len("t"), 0);
        assert!(t.versions("t", "1").is_empty());
        drop(t);
        std::fs::remove_dir_all(&path).ok();
    }
}
