//! Checkpoint and restore of an [`Engine`] through a [`StateStore`]: one
//! entry for engine-wide state (watermark, events waiting for it, counters)
//! and one per key (each rule's partial matches and window aggregates, with
//! the key's matched events stored once).
//!
//! A key's sliding windows log its events (a card's month of amounts), and
//! those rows are entries of their own, in chunks of [`CHUNK`] events (`l/`,
//! by key, window group and chunk), rather than part of the key's entry: a
//! checkpoint writes the chunk its new events fall in and deletes the
//! chunks no window holds an event of any more, so what it writes grows
//! with the events it covers, not with the length of the windows. The key's
//! entry says where its log ends and which events the store holds
//! ([`GroupLog`]).

use super::{Engine, EngineStats, KeyCell, KeyState, RuleError, RuleSet};
use crate::event::{Event, MAX_EVENT_TIME_MS, Value, ValueKey};
use crate::pattern::matcher::{EventTable, MatcherSnapshot, MatcherState};
use crate::rules::RuleOrigin;
use crate::state::{Change, SnapshotError, StateStore, decode, encode};
use crate::time::WatermarkTracker;
use crate::window::{LogRow, Rows, WindowState};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;

pub(super) const META_KEY: &[u8] = b"m";
/// The rules the state was written under ([`StoredRules`]), so that it can
/// be read and migrated after they change.
pub(super) const RULES_KEY: &[u8] = b"r";
pub(super) const KEY_PREFIX: &[u8] = b"k/";
/// Events waiting for the watermark, one entry each (so a checkpoint writes
/// only those that arrived or left since the last one), keyed by
/// `(time, seq)` in an order-preserving encoding.
pub(super) const BUFFER_PREFIX: &[u8] = b"b/";
/// A chunk of a key's window group's log: `l/`, the keying and key as in
/// the key's entry, then the group (`u16`) and the chunk's number (`u64`,
/// its log indices divided by [`CHUNK`]), big endian, so a key's chunks are
/// one range in log order. The value is a [`LogChunk`] without a header
/// (the key's entry has one).
pub(super) const LOG_PREFIX: &[u8] = b"l/";

/// A range of log indices `lo..hi` of one window group (`group`) of a key
/// of a keying (`keying`): the rows to delete when the key goes.
pub(super) type RowRange = (u32, ValueKey, u16, u64, u64);

/// A window group's stored rows read back, with their log indices.
pub(super) type GroupRows = Vec<(u64, LogRow)>;

/// Where a window group's log stands, in a key's entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct GroupLog {
    /// The log index after its newest event.
    pub(super) end: u64,
    /// The log indices `lo..hi` whose rows the store holds.
    pub(super) stored: (u64, u64),
    /// Per aggregate, the log indices inside its window
    /// ([`Windows::agg_cursors`]) when the entry leaves the events out
    /// (they are the stored rows); `None` when it holds them (what a frozen
    /// key keeps in memory).
    pub(super) cursors: Option<Vec<(u64, u64)>>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct EventSnapshot {
    time: i64,
    seq: u64,
    fields: Vec<Value>,
    raw: String,
}

impl EventSnapshot {
    fn of(e: &Event) -> EventSnapshot {
        EventSnapshot {
            time: e.time,
            seq: e.seq,
            fields: e.fields.to_vec(),
            raw: e.raw.to_string(),
        }
    }
    fn into_event(self, slots: usize) -> Result<Event, SnapshotError> {
        if self.time.abs() > MAX_EVENT_TIME_MS {
            return Err(SnapshotError::Corrupt(format!(
                "event time {} out of range",
                self.time
            )));
        }
        if self.fields.len() != slots {
            return Err(SnapshotError::Corrupt(format!(
                "event with {} fields, rules read {slots}",
                self.fields.len()
            )));
        }
        Ok(Event {
            time: self.time,
            seq: self.seq,
            fields: SmallVec::from_vec(self.fields),
            raw: Arc::from(self.raw),
        })
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredRules {
    pub(super) origin: RuleOrigin,
    /// The rules of the origin the engine ran (see [`RuleSet::for_key`]).
    pub(super) rules: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) watermark: WatermarkTracker,
    /// Always empty since buffered events got entries of their own; read
    /// for snapshots written before.
    buffered: Vec<EventSnapshot>,
    pub(super) stats: (u64, u64, u64, u64, u64),
}

/// A key's stored state. Its encoding is the postcard body of these
/// fields, followed by `quiet` only when some rule's `suppress` period is
/// running ([`encode_key_snapshot`]): state without one is written as it
/// was before rules could suppress, and such state reads unchanged.
#[derive(Serialize, Deserialize)]
pub(super) struct KeySnapshot {
    key: Value,
    events: Vec<EventSnapshot>,
    matchers: Vec<MatcherSnapshot>,
    windows: Vec<Vec<WindowState>>,
    values: Vec<Vec<Value>>,
    timer: Option<i64>,
    /// Per rule of the keying: the event time before which its alerts for
    /// this key are suppressed (`i64::MIN`: none); empty when none is.
    #[serde(skip)]
    quiet: Vec<i64>,
    /// Per window group of the keying: where its log stands; empty when
    /// no group has logged an event.
    #[serde(skip)]
    logs: Vec<GroupLog>,
}

/// A key's stored body: [`KeySnapshot`]'s fields, then its running
/// suppressions if there are any or its logs are given, then its logs if
/// any group has logged an event (state without either is written as it
/// was before, and such state reads unchanged).
fn encode_key_snapshot(snap: &KeySnapshot, out: Vec<u8>) -> Vec<u8> {
    // A postcard Vec writer cannot fail on these derive-only types.
    let mut out = postcard::to_extend(snap, out).unwrap_or_default();
    if !snap.quiet.is_empty() || !snap.logs.is_empty() {
        out = postcard::to_extend(&snap.quiet, out).unwrap_or_default();
    }
    if !snap.logs.is_empty() {
        out = postcard::to_extend(&snap.logs, out).unwrap_or_default();
    }
    out
}

/// Reads a body written by [`encode_key_snapshot`].
pub(super) fn decode_key_snapshot(body: &[u8]) -> Result<KeySnapshot, SnapshotError> {
    let (mut snap, rest): (KeySnapshot, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    if !rest.is_empty() {
        let (quiet, rest): (Vec<i64>, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        snap.quiet = quiet;
        if !rest.is_empty() {
            snap.logs = crate::state::decode_body(rest)?;
        }
        if !snap.quiet.is_empty() && snap.quiet.len() != snap.matchers.len() {
            return Err(SnapshotError::Corrupt(format!(
                "key {} has suppressions for {} rules and state for {}",
                snap.key,
                snap.quiet.len(),
                snap.matchers.len()
            )));
        }
    }
    Ok(snap)
}

fn buffer_key(time: i64, seq: u64) -> Vec<u8> {
    let mut k = BUFFER_PREFIX.to_vec();
    // Flipping the sign bit makes big-endian bytes sort as the signed numbers do.
    k.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn key_bytes(keying: u32, key: &ValueKey) -> Vec<u8> {
    keyed(KEY_PREFIX, keying, key, 0)
}

/// `prefix`, the keying and the key (whose postcard encoding is prefix
/// free), with room for `more` bytes.
fn keyed(prefix: &[u8], keying: u32, key: &ValueKey, more: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 4 + 16 + more);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&keying.to_be_bytes());
    // postcard of a ValueKey cannot fail (derive-only, written to a Vec).
    postcard::to_extend(key, k).unwrap_or_default()
}

/// The logged events of a key's window group are stored in chunks of this
/// many consecutive log indices: a checkpoint rewrites the chunk its new
/// events fall in (and any after it) rather than writing a record per
/// event, and deletes a chunk once no window holds any of its events.
pub(super) const CHUNK: u64 = 32;

/// A chunk of a window group's log as its entry holds it: the log index of
/// its first row, then its rows. The rows are those the log held when the
/// chunk was written, from the chunk's start or the log's oldest event.
#[derive(Serialize, Deserialize)]
pub(super) struct LogChunk {
    first: u64,
    rows: Vec<LogRow>,
}

/// A [`LogChunk`] as a checkpoint writes it, its rows borrowed from the
/// log: the same bytes, without a `Vec` per row.
#[derive(Serialize)]
struct LogChunkOut<'a> {
    first: u64,
    rows: Rows<'a>,
}

/// The start of every chunk entry of a key.
fn rows_prefix(keying: u32, key: &ValueKey) -> Vec<u8> {
    keyed(LOG_PREFIX, keying, key, 10)
}

/// The entry of chunk `c` of group `group`, after its key's
/// [`rows_prefix`].
fn chunk_key(prefix: &[u8], group: u16, c: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 10);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&c.to_be_bytes());
    k
}

/// The chunks holding log indices `lo..hi` (none when the range is empty).
fn chunks((lo, hi): (u64, u64)) -> std::ops::Range<u64> {
    if lo >= hi {
        return 0..0;
    }
    lo / CHUNK..(hi - 1) / CHUNK + 1
}

/// Records the stored rows of `ks` (of keying `keying`) for deletion: the
/// key is dropped, or rewritten under other rules.
pub(super) fn forget_rows(to: &mut Vec<RowRange>, keying: usize, key: &ValueKey, ks: &KeyState) {
    for (g, w) in ks.windows.iter().enumerate() {
        let (lo, hi) = w.stored();
        if lo < hi {
            to.push((keying as u32, key.clone(), g as u16, lo, hi));
        }
    }
}

/// Appends to `batch` the chunk entries that bring the store's rows of `ks`
/// to its logs' events: the chunks its new events fall in written, those
/// holding no event a window holds deleted; then each log's events are the
/// stored ones.
fn write_rows(batch: &mut Vec<Change>, keying: u32, key: &ValueKey, ks: &mut KeyState) {
    let mut prefix: Option<Vec<u8>> = None;
    for (g, w) in ks.windows.iter_mut().enumerate() {
        let (lo, hi) = w.stored();
        let (base, end) = w.log_range();
        let (old, new) = (chunks((lo, hi)), chunks((base, end)));
        // Chunks holding new events, or not stored yet.
        let from = if old.is_empty() { 0 } else { hi / CHUNK };
        let write = if end > hi || old.is_empty() {
            new.start.max(from)..new.end
        } else {
            0..0
        };
        let gone = old.clone().filter(|c| !new.contains(c));
        if write.is_empty() && gone.clone().next().is_none() {
            w.set_stored((base, end));
            continue;
        }
        let prefix = prefix.get_or_insert_with(|| rows_prefix(keying, key));
        for c in gone {
            batch.push((chunk_key(prefix, g as u16, c), None));
        }
        for c in write {
            let first = (c * CHUNK).max(base);
            let last = ((c + 1) * CHUNK).min(end);
            let chunk = LogChunkOut {
                first,
                rows: w.rows(first, last),
            };
            // A row is its time and a few numbers: sized for that, the
            // buffer seldom grows.
            let room = 12 + (last - first) as usize * (10 + 9 * w.log_cols());
            // postcard into a Vec cannot fail on these types.
            let value = postcard::to_extend(&chunk, Vec::with_capacity(room)).unwrap_or_default();
            batch.push((chunk_key(prefix, g as u16, c), Some(value)));
        }
        w.set_stored((base, end));
    }
}

/// Appends the deletes of the chunks holding `ranges` to `batch`.
fn delete_rows(batch: &mut Vec<Change>, ranges: Vec<RowRange>) {
    for (keying, key, g, lo, hi) in ranges {
        let prefix = rows_prefix(keying, &key);
        for c in chunks((lo, hi)) {
            batch.push((chunk_key(&prefix, g, c), None));
        }
    }
}

/// The rows a key's entry leaves out, per window group, read from
/// `store`: `logs` says which; `None` when it leaves none out.
fn read_rows(
    store: Option<&dyn StateStore>,
    keying: usize,
    key: &Value,
    logs: &[GroupLog],
) -> Result<Option<Vec<GroupRows>>, SnapshotError> {
    if logs.iter().all(|l| l.cursors.is_none()) {
        return Ok(None);
    }
    if logs
        .iter()
        .all(|l| l.cursors.is_none() || l.stored.0 == l.stored.1)
    {
        // Every log it leaves out is empty.
        return Ok(Some(vec![Vec::new(); logs.len()]));
    }
    let Some(store) = store else {
        return Err(SnapshotError::Corrupt(format!(
            "key {key} keeps its logged events in a store, and none was given"
        )));
    };
    let prefix = rows_prefix(keying as u32, &ValueKey::from(key));
    let mut rows: Vec<GroupRows> = vec![Vec::new(); logs.len()];
    store.for_each_prefix(&prefix, &mut |k, v| {
        let at = &k[prefix.len().min(k.len())..];
        if at.len() != 10 {
            return Err(SnapshotError::Corrupt(format!("bad log chunk entry {k:?}")));
        }
        let g = u16::from_be_bytes([at[0], at[1]]) as usize;
        let (Some(group), Some(log)) = (rows.get_mut(g), logs.get(g)) else {
            return Err(SnapshotError::Corrupt(format!(
                "key {key} has logged events of window group {g}, and {} groups",
                logs.len()
            )));
        };
        let chunk: LogChunk = crate::state::decode_body(v)?;
        if chunk.first > MAX_LOG_INDEX || chunk.rows.len() as u64 > CHUNK {
            return Err(SnapshotError::Corrupt(format!(
                "key {key}: a bad log chunk"
            )));
        }
        // Events before the log's oldest stay in a chunk until it goes.
        let lo = log.stored.0;
        group.extend((chunk.first..).zip(chunk.rows).filter(|(i, _)| *i >= lo));
        Ok(())
    })?;
    for (g, (log, got)) in logs.iter().zip(&rows).enumerate() {
        let (lo, hi) = log.stored;
        let whole =
            got.len() as u64 == hi - lo && (got.iter().zip(lo..)).all(|((i, _), want)| *i == want);
        if !whole || (log.cursors.is_some() && hi != log.end) {
            return Err(SnapshotError::Corrupt(format!(
                "key {key}: window group {g} has {} stored events for indices {lo}..{hi}",
                got.len()
            )));
        }
    }
    Ok(Some(rows))
}

impl Engine {
    fn meta_entry(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let meta = Meta {
            watermark: self.watermark.clone(),
            buffered: Vec::new(),
            stats: (
                self.stats.events,
                self.stats.late,
                self.stats.alerts,
                self.stats.rule_errors,
                self.stats.unkeyed,
            ),
        };
        (META_KEY.to_vec(), Some(encode(self.rules.def.hash, &meta)))
    }

    fn rules_entry(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let stored = StoredRules {
            origin: (*self.rules.def.origin).clone(),
            rules: self
                .rules
                .rules
                .iter()
                .map(|r| r.def.name.clone())
                .collect(),
        };
        (
            RULES_KEY.to_vec(),
            Some(encode(self.rules.def.hash, &stored)),
        )
    }

    /// Whether the store lacks something [`Engine::take_changes`] would
    /// write even without new events (the rules changed).
    pub fn needs_checkpoint(&self) -> bool {
        !self.rules_stored
    }

    /// What the last restore did to state written under other rules.
    pub fn take_migration(&mut self) -> Option<super::Migration> {
        self.migration.take()
    }

    /// Writes the whole engine state to `store` in one batch, replacing what
    /// was there. Returns the number of bytes written. Refused while keys
    /// are passivated (their state is in the passivation store only);
    /// frozen keys are decoded (their stored rows are rewritten).
    pub fn checkpoint(&mut self, store: &mut impl StateStore) -> Result<usize, SnapshotError> {
        if self.has_cold_keys() {
            return Err(SnapshotError::Store(
                "a full checkpoint of an engine with passivated keys: use take_changes".into(),
            ));
        }
        self.revive_all();
        if let Some(e) = self.take_state_error() {
            return Err(e);
        }
        let mut batch: Vec<Change> = Vec::new();
        for prefix in [KEY_PREFIX, BUFFER_PREFIX, LOG_PREFIX] {
            for (k, _) in store.scan_prefix(prefix)? {
                batch.push((k, None));
            }
        }
        // Every row goes in again (after the deletes, so the puts win).
        self.log_deletes.clear();
        batch.push(self.meta_entry());
        batch.push(self.rules_entry());
        for e in self.buffer.iter() {
            batch.push((
                buffer_key(e.time, e.seq),
                Some(encode(self.rules.def.hash, &EventSnapshot::of(e))),
            ));
        }
        for (ki, keys) in self.keys.iter_mut().enumerate() {
            for (key, cell) in keys {
                // A put after the delete of the same key wins within the batch.
                let KeyCell::Live(ks) = cell else { continue };
                for w in &mut ks.windows {
                    w.set_stored((0, 0));
                }
                write_rows(&mut batch, ki as u32, key, ks);
                batch.push((
                    key_bytes(ki as u32, key),
                    Some(key_value(&self.rules, ki, ks)),
                ));
            }
        }
        let bytes = batch
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum();
        store.write(batch)?;
        Ok(bytes)
    }

    /// Bounds each key's stored state to `bytes` (key and value): a key
    /// whose state grows past it — events of a record's size, held by a
    /// partial match — cannot be written to a changelog record, and would
    /// fail every checkpoint. Such a key's state is reset at the next
    /// [`Engine::take_changes`] and reported ([`Engine::take_reset_keys`]).
    pub fn limit_key_state(&mut self, bytes: usize) {
        self.state_limit = Some(bytes);
    }

    /// The keys whose state was reset for its size since the last call.
    pub fn take_reset_keys(&mut self) -> Vec<RuleError> {
        std::mem::take(&mut self.reset_keys)
    }

    fn reset_oversized(&mut self, keying: u32, key: &ValueKey, size: usize, limit: usize) {
        let rules: Vec<&str> = self.rules.keyings[keying as usize]
            .rules
            .iter()
            .map(|&r| &*self.rules.rules[r].name)
            .collect();
        self.reset_keys.push(RuleError {
            rule: Arc::from(rules.join(", ")),
            key: Value::from(key),
            message: format!(
                "the key's state ({size} bytes) is over the limit of {limit} bytes a checkpoint \
                 can write; it was reset, and its partial matches and window aggregates start again"
            ),
        });
        self.drop_key(keying as usize, key);
    }

    /// The buffered events' part of [`Engine::take_changes`]: a delete for
    /// each stored event since released, a put for each new one (or for
    /// every one, after a rule change or without tracking).
    fn buffer_changes(&mut self, batch: &mut Vec<Change>) {
        let hash = self.rules.def.hash;
        let put = |e: &Event| {
            (
                buffer_key(e.time, e.seq),
                Some(encode(hash, &EventSnapshot::of(e))),
            )
        };
        // Released since the last batch (and so no longer in `stored_buffer`).
        for (time, seq) in self.released_buffer.drain(..) {
            batch.push((buffer_key(time, seq), None));
        }
        if self.waiting_in_input {
            // What a store written otherwise holds goes.
            for (time, seq) in std::mem::take(&mut self.stored_buffer) {
                batch.push((buffer_key(time, seq), None));
            }
            self.unstored_buffer.clear();
            self.rewrite_buffer = false;
            return;
        }
        if self.dirty.is_some() && !self.rewrite_buffer {
            let mut new: Vec<_> = self.unstored_buffer.drain().collect();
            // Sorted, so the same changes always give the same batch.
            new.sort_unstable_by_key(|(id, _)| *id);
            for (id, e) in new {
                batch.push(put(&e));
                self.stored_buffer.insert(id);
            }
            return;
        }
        let now: std::collections::BTreeSet<(i64, u64)> =
            self.buffer.iter().map(|e| (e.time, e.seq)).collect();
        for gone in self.stored_buffer.difference(&now) {
            batch.push((buffer_key(gone.0, gone.1), None));
        }
        for e in self.buffer.iter() {
            if self.rewrite_buffer || !self.stored_buffer.contains(&(e.time, e.seq)) {
                batch.push(put(e));
            }
        }
        self.stored_buffer = now;
        self.rewrite_buffer = false;
        self.unstored_buffer.clear();
    }

    /// The changes since the last call (or since tracking began, see
    /// [`Engine::track_changes`]) as a store batch: the engine-wide entry,
    /// a put for each key that changed and a delete for each key that was
    /// dropped. Applied in order to the store that held the previous
    /// state, it gives the entries [`Engine::checkpoint`] would write (a
    /// chunk of a key's log may still hold events older than its windows',
    /// which a restore ignores), and a store that restores the same. Without
    /// tracking, the whole state (with no deletes).
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut batch = vec![self.meta_entry()];
        // Before any row is written: a key dropped, then seen again, logs
        // its events from index 0 once more.
        delete_rows(&mut batch, std::mem::take(&mut self.log_deletes));
        if !self.rules_stored {
            batch.push(self.rules_entry());
            self.rules_stored = true;
        }
        self.buffer_changes(&mut batch);
        match self.dirty.take() {
            Some(mut dirty) => {
                let mut keys: Vec<(u32, ValueKey)> = dirty.drain().collect();
                // A burst (the first load, a restore's migration) leaves a
                // table sized for it; keep one sized for ordinary batches.
                if dirty.capacity() > 4 * keys.len().max(1024) {
                    dirty.shrink_to(keys.len());
                }
                // Sorted, so the same changes always give the same batch.
                keys.sort();
                for (ki, key) in keys {
                    let mut value = match self.keys[ki as usize].get_mut(&key) {
                        Some(KeyCell::Live(ks)) => {
                            write_rows(&mut batch, ki, &key, ks);
                            let v = key_value(&self.rules, ki as usize, ks);
                            Engine::written_size(&mut self.passive, ks, v.len() + ks.log_bytes());
                            Some(v)
                        }
                        Some(KeyCell::Frozen(body)) => Some(frozen_value(&self.rules, &key, body)),
                        None => None,
                    };
                    let entry = key_bytes(ki, &key);
                    if let (Some(limit), Some(v)) = (self.state_limit, &value)
                        && entry.len() + v.len() > limit
                    {
                        self.reset_oversized(ki, &key, v.len(), limit);
                        value = None;
                    }
                    batch.push((entry, value));
                }
                self.dirty = Some(dirty);
            }
            None => {
                for (ki, keys) in self.keys.iter_mut().enumerate() {
                    for (key, cell) in keys {
                        let value = match cell {
                            KeyCell::Live(ks) => {
                                // The whole state, every row included.
                                for w in &mut ks.windows {
                                    w.set_stored((0, 0));
                                }
                                write_rows(&mut batch, ki as u32, key, ks);
                                key_value(&self.rules, ki, ks)
                            }
                            KeyCell::Frozen(body) => frozen_value(&self.rules, key, body),
                        };
                        batch.push((key_bytes(ki as u32, key), Some(value)));
                    }
                }
            }
        }
        // The rows of keys reset for their size just now.
        delete_rows(&mut batch, std::mem::take(&mut self.log_deletes));
        self.batches += 1;
        batch
    }

    /// An engine for `rules` in the state last checkpointed to `store`
    /// (a fresh engine if the store is empty).
    pub fn restore(
        rules: Arc<super::RuleSet>,
        store: &impl StateStore,
    ) -> Result<Engine, SnapshotError> {
        Engine::new(rules).restored(store)
    }

    /// State written under other rules: restored under those (rebuilt from
    /// the sources stored with it), then migrated to this engine's rules.
    fn restored_from_other_rules(
        self,
        store: &impl StateStore,
        stored: &[u8],
        hash: u64,
    ) -> Result<Engine, SnapshotError> {
        let stored: StoredRules = decode(stored, hash)?;
        let old = RuleSet::rebuild(
            &stored.origin,
            &self.rules.def.model_files,
            &stored.rules,
            self.rules.options,
        )
        .map_err(|e| {
            SnapshotError::Corrupt(format!(
                "the rules the state was written under do not compile: {e}"
            ))
        })?;
        if old.def.hash != hash {
            return Err(SnapshotError::Corrupt(format!(
                "the stored rules compile to rule set {:016x}, not {hash:016x}",
                old.def.hash
            )));
        }
        let mut this = self;
        let prior = Engine {
            external_watermark: this.external_watermark,
            waiting_in_input: this.waiting_in_input,
            dirty: this.dirty.as_ref().map(|_| hashbrown::HashSet::new()),
            lists: this.lists.clone(),
            tables: this.tables.clone(),
            ..Engine::new(old)
        }
        .restored(store)?;
        let (mut engine, migration) = prior.migrate(this.rules.clone());
        // Under other rules every key is rewritten by the next batch, so all
        // stay resident until then.
        this.hand_over_passivation(&mut engine);
        engine.migration = Some(migration);
        Ok(engine)
    }

    /// This fresh engine (as configured: watermark source, change tracking)
    /// in the state last checkpointed to `store`; state written under other
    /// rules is migrated (see [`Engine::migrate`] and
    /// [`Engine::take_migration`]).
    pub fn restored(self, store: &impl StateStore) -> Result<Engine, SnapshotError> {
        let mut engine = self;
        let rules = engine.rules.clone();
        let hash = rules.def.hash;
        let slots = rules.def.schema.len();
        if let Some(bytes) = store.get(RULES_KEY)? {
            let found = crate::state::header_hash(&bytes)?;
            if found != hash {
                return engine.restored_from_other_rules(store, &bytes, found);
            }
            engine.rules_stored = true;
        }
        let Some(meta) = store.get(META_KEY)? else {
            return Ok(engine);
        };
        let meta: Meta = decode(&meta, hash)?;
        engine.watermark = meta.watermark;
        let mut buffered = meta.buffered;
        for (_, v) in store.scan_prefix(BUFFER_PREFIX)? {
            buffered.push(decode(&v, hash)?);
        }
        for e in buffered {
            let e = e.into_event(slots)?;
            if !engine.stored_buffer.insert((e.time, e.seq)) {
                return Err(SnapshotError::Corrupt("an event buffered twice".into()));
            }
            engine.buffer_insert(Arc::new(e));
        }
        // Every later alert is at or after the watermark (what was
        // processed is at or before it): a `suppress` period ending by then
        // holds nothing back.
        engine.processed_to = engine.watermark.current();
        engine.stats = EngineStats {
            events: meta.stats.0,
            late: meta.stats.1,
            alerts: meta.stats.2,
            rule_errors: meta.stats.3,
            unkeyed: meta.stats.4,
            future: 0,
            suppressed: 0,
            silenced: 0,
        };
        let keyings = rules.keyings.len();
        let rows: &dyn StateStore = store;
        store.for_each_prefix(KEY_PREFIX, &mut |k, v| {
            let keying = keying_of(k, keyings)?;
            let ks = decode_key_state(&rules, keying, v, Some(rows))?;
            let key = ValueKey::from(&ks.key);
            if let Some(t) = ks.timer {
                engine.timers.insert(t, (keying as u32, key.clone()));
            }
            if let Some(cell) = engine.admit_restored(keying, &key, ks, v) {
                engine.keys[keying].insert(key, cell);
            }
            Ok(())
        })?;
        Ok(engine)
    }
}

/// The most encoding buffer a thread keeps between key entries.
const SCRATCH_KEPT: usize = 64 << 10;

/// A key's store entry value, without its logged events: the store holds
/// them as rows of their own, written by [`write_rows`] first.
pub(super) fn key_value(rules: &RuleSet, keying: usize, ks: &KeyState) -> Vec<u8> {
    thread_local! {
        /// Where entries are encoded before their one allocation of the
        /// right size: encoded into a fresh `Vec`, an entry of a few
        /// hundred bytes grew it three or four times.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let snap = key_snapshot(rules, keying, ks, false);
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = std::mem::take(scratch);
        buf.clear();
        crate::state::push_header(&mut buf, rules.def.hash);
        let buf = encode_key_snapshot(&snap, buf);
        let value = buf.as_slice().to_vec();
        // Kept for the next entry, unless one large key made it large.
        if buf.capacity() <= SCRATCH_KEPT {
            *scratch = buf;
        }
        value
    })
}

/// A key's encoded state, its logged events included, without the header
/// every entry shares (what frozen keys keep in memory).
pub(super) fn key_body(rules: &RuleSet, keying: usize, ks: &KeyState) -> Vec<u8> {
    encode_key_snapshot(&key_snapshot(rules, keying, ks, true), Vec::new())
}

/// What a frozen key keeps: its entry's body less the header and the key
/// itself, which starts the body and which the key map already holds.
pub(super) fn frozen_body(rules: &RuleSet, keying: usize, ks: &KeyState) -> Box<[u8]> {
    let body = key_body(rules, keying, ks);
    let skip = encoded_key_len(&ks.key).min(body.len());
    body[skip..].into()
}

/// The body a frozen key was made from ([`frozen_body`]).
pub(super) fn thawed_body(key: &ValueKey, frozen: &[u8]) -> Vec<u8> {
    with_key(Vec::with_capacity(16 + frozen.len()), key, frozen)
}

/// A frozen key's store entry value.
pub(super) fn frozen_value(rules: &RuleSet, key: &ValueKey, frozen: &[u8]) -> Vec<u8> {
    let out = crate::state::header(rules.def.hash, 16 + frozen.len());
    with_key(out, key, frozen)
}

/// A stored entry's value (header and body) as a frozen key keeps it,
/// decoded as `ks`: the value itself unless it leaves logged events out.
pub(super) fn freeze_stored(
    rules: &RuleSet,
    keying: usize,
    ks: &KeyState,
    value: &[u8],
) -> Box<[u8]> {
    if ks
        .windows
        .iter()
        .any(|w| w.log_range().1 != 0 || w.stored() != (0, 0))
    {
        return frozen_body(rules, keying, ks);
    }
    let skip = crate::state::HEADER_LEN + encoded_key_len(&ks.key);
    value.get(skip..).unwrap_or_default().into()
}

/// `out` followed by the encoded key and the frozen body after it.
fn with_key(out: Vec<u8>, key: &ValueKey, frozen: &[u8]) -> Vec<u8> {
    // A postcard Vec writer cannot fail on a Value.
    let mut out = postcard::to_extend(&Value::from(key), out).unwrap_or_default();
    out.extend_from_slice(frozen);
    out
}

fn encoded_key_len(key: &Value) -> usize {
    postcard::experimental::serialized_size(key).unwrap_or(0)
}

/// A key's state as stored: with its logged events (`events`), or without
/// them, when its logs' rows are the stored ones.
pub(super) fn key_snapshot(
    rules: &RuleSet,
    keying: usize,
    ks: &KeyState,
    events: bool,
) -> KeySnapshot {
    let (windows, values) = ks.rule_windows(rules, &rules.keyings[keying], events);
    let groups = &rules.keyings[keying].groups;
    let logs = if ks
        .windows
        .iter()
        .any(|w| w.log_range().1 != 0 || w.stored() != (0, 0))
    {
        ks.windows
            .iter()
            .zip(groups)
            .map(|(w, group)| {
                let end = w.log_range().1;
                let logged = end != 0 || w.stored() != (0, 0);
                GroupLog {
                    end,
                    stored: w.stored(),
                    cursors: (logged && !events).then(|| w.agg_cursors(&group.plan)),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut table = EventTable::default();
    let matchers = ks
        .matchers
        .iter()
        .map(|m| m.to_snapshot(&mut table))
        .collect();
    KeySnapshot {
        key: ks.key.clone(),
        events: table.events.iter().map(|e| EventSnapshot::of(e)).collect(),
        matchers,
        windows,
        values,
        timer: ks.timer,
        quiet: if ks.quiet.iter().any(|&q| q != i64::MIN) {
            ks.quiet.clone()
        } else {
            Vec::new()
        },
        logs,
    }
}

/// The keying a key entry's store key names.
pub(super) fn keying_of(k: &[u8], keyings: usize) -> Result<usize, SnapshotError> {
    k.get(2..6)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .filter(|&i| i < keyings)
        .ok_or_else(|| SnapshotError::Corrupt(format!("bad state key {k:?}")))
}

/// A key's state from its entry, checked against `rules`.
pub(super) fn decode_key_state(
    rules: &RuleSet,
    keying: usize,
    v: &[u8],
    store: Option<&dyn StateStore>,
) -> Result<KeyState, SnapshotError> {
    decode_key_body(rules, keying, crate::state::body(v, rules.def.hash)?, store)
}

/// Log indices past this are corrupt state: a key would have to log a
/// million events a second for a hundred thousand years to reach it, and
/// below it no index arithmetic overflows.
const MAX_LOG_INDEX: u64 = 1 << 62;

/// A key's state from its entry's body ([`key_body`]), checked against
/// `rules`; the logged events it leaves out are read from `store`.
pub(super) fn decode_key_body(
    rules: &RuleSet,
    keying: usize,
    body: &[u8],
    store: Option<&dyn StateStore>,
) -> Result<KeyState, SnapshotError> {
    let slots = rules.def.schema.len();
    let snap = decode_key_snapshot(body)?;
    if !snap.logs.is_empty() && snap.logs.len() != rules.keyings[keying].groups.len() {
        return Err(SnapshotError::Corrupt(format!(
            "key {} has logs for {} window groups, the rules have {}",
            snap.key,
            snap.logs.len(),
            rules.keyings[keying].groups.len()
        )));
    }
    if snap.logs.iter().any(|l| {
        l.end > MAX_LOG_INDEX
            || l.stored.1 > MAX_LOG_INDEX
            || l.stored.0 > l.stored.1
            || l.cursors.iter().flatten().any(|c| c.1 > MAX_LOG_INDEX)
    }) {
        return Err(SnapshotError::Corrupt(format!(
            "key {} has a log index out of range",
            snap.key
        )));
    }
    let rows = read_rows(store, keying, &snap.key, &snap.logs)?;
    let keying_rules = &rules.keyings[keying].rules;
    if snap.matchers.len() != keying_rules.len()
        || snap.windows.len() != keying_rules.len()
        || snap.values.len() != keying_rules.len()
    {
        return Err(SnapshotError::Corrupt(format!(
            "key {} has state for other rules",
            snap.key
        )));
    }
    let events: Vec<Arc<Event>> = snap
        .events
        .into_iter()
        .map(|e| e.into_event(slots).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let mut matchers = Vec::with_capacity(snap.matchers.len());
    for (m, &ri) in snap.matchers.iter().zip(keying_rules) {
        let nfa = &rules.rules[ri].matcher.nfa;
        matchers.push(
            MatcherState::from_snapshot(m, &events, nfa, rules.rules[ri].matcher.lazy.as_deref())
                .map_err(|e| SnapshotError::Corrupt(e.to_string()))?,
        );
    }
    for (v, &ri) in snap.values.iter().zip(keying_rules) {
        let n = rules.rules[ri].def.windows.len();
        if v.len() != n {
            return Err(SnapshotError::Corrupt(format!(
                "key {} has {} window values for {n} aggregates",
                snap.key,
                v.len(),
            )));
        }
    }
    if snap
        .timer
        .is_some_and(|t| t.abs() > MAX_EVENT_TIME_MS.saturating_mul(2))
    {
        return Err(SnapshotError::Corrupt(format!(
            "key {} timer out of range",
            snap.key
        )));
    }
    let keying = &rules.keyings[keying];
    let mut ks = KeyState {
        key: snap.key,
        matchers,
        windows: smallvec::SmallVec::new(),
        timer: snap.timer,
        quiet: snap.quiet,
        written: 0,
        bytes: 0,
    };
    let no_rows = vec![Vec::new(); snap.logs.len()];
    let logs = (!snap.logs.is_empty())
        .then(|| (snap.logs.as_slice(), rows.as_deref().unwrap_or(&no_rows)));
    ks.set_rule_windows(rules, keying, snap.windows, snap.values, logs)
        .map_err(|(_, e)| SnapshotError::Corrupt(format!("key {}: {e}", ks.key)))?;
    Ok(ks)
}

/// Checks that a stored entry (a checkpoint's or a changelog record's key
/// and value) is well formed: a header this build reads and a body that
/// decodes as the kind of entry its key names. Consistency with the rules
/// is checked on restore; this lets a reader name the record at fault.
pub fn check_entry(key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
    if key.starts_with(LOG_PREFIX) {
        return crate::state::decode_body::<LogChunk>(value).map(drop);
    }
    let hash = crate::state::header_hash(value)?;
    if key == META_KEY {
        decode::<Meta>(value, hash).map(drop)
    } else if key == RULES_KEY {
        decode::<StoredRules>(value, hash).map(drop)
    } else if key.starts_with(KEY_PREFIX) {
        keying_of(key, usize::MAX)?;
        decode_key_snapshot(crate::state::body(value, hash)?).map(drop)
    } else if key.starts_with(BUFFER_PREFIX) {
        decode::<EventSnapshot>(value, hash).map(drop)
    } else {
        Err(SnapshotError::Corrupt(format!(
            "unknown entry {:?}",
            String::from_utf8_lossy(&key[..key.len().min(16)])
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, Outputs};
    use crate::state::MemoryStore;

    const STREAM: &str = "stream s { key k time t time format epoch_ms }\n";
    const FEATURES: &str = "features card {\n  n_1h = count(over 1h)\n  avg_1h = avg(v over 1h)\n  sum_1d = sum(v over 1d)\n}\n";
    const SPIKE: &str =
        "rule spike { pattern { e: v > 2 * avg(v over 1h) and count(over 1d) > 3 } }\n";
    const LATE: &str = "rule late { pattern { e: max(v over 2h ending 30m ago) > 5 } }\n";

    /// Per key, the stored window aggregates and values of `rule`, after a
    /// run of events under the rules `src`.
    fn stored(src: &str, rule: &str) -> Vec<(Value, Vec<u8>)> {
        let rs = RuleSet::from_source("g.tl", src, None).expect("rules compile");
        let mut engine = Engine::new(rs.clone());
        let mut out = Outputs::default();
        let mut x = 7u64;
        let mut t = 0i64;
        for seq in 0..600u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += ((x >> 33) % 600_000) as i64;
            let (k, v) = ((x >> 20) % 5, (x >> 40) % 10);
            let line = format!(r#"{{"k":{k},"t":{t},"v":{v}}}"#);
            engine.on_event(rs.decoder().decode(line.as_bytes(), seq).unwrap(), &mut out);
        }
        let mut store = MemoryStore::default();
        engine.checkpoint(&mut store).expect("checkpoint");
        let keying = &rs.keyings[0];
        let local = keying
            .rules
            .iter()
            .position(|&r| &*rs.rules[r].name == rule)
            .expect("the rule");
        let mut keys: Vec<(Value, Vec<u8>)> = store
            .scan_prefix(KEY_PREFIX)
            .unwrap()
            .into_iter()
            .map(|(_, v)| {
                // With its logged events, read back from their rows.
                let ks = decode_key_state(&rs, 0, &v, Some(&store)).expect("decodes");
                let snap = key_snapshot(&rs, 0, &ks, true);
                let stored = (&snap.windows[local], &snap.values[local]);
                (snap.key.clone(), postcard::to_allocvec(&stored).unwrap())
            })
            .collect();
        keys.sort_by(|a, b| a.0.sort_order(&b.0));
        keys
    }

    /// Rules whose window aggregates share a group store them exactly as
    /// each would alone: the stored form does not depend on the grouping.
    #[test]
    fn grouped_windows_are_stored_as_each_rule_alone() {
        let together = format!("{STREAM}{FEATURES}{SPIKE}{LATE}");
        let rs = RuleSet::from_source("g.tl", &together, None).unwrap();
        assert_eq!(rs.keyings[0].groups.len(), 1, "one group for the three");
        // A rule aggregating a derived value (a feature) keeps a group of
        // its own: a group takes each event before the features are written.
        let derived = format!("{together}rule busy {{ pattern {{ e: avg(n_1h over 1h) > 3 }} }}\n");
        let rs = RuleSet::from_source("g.tl", &derived, None).unwrap();
        assert_eq!(rs.keyings[0].groups.len(), 2);
        for (rule, alone) in [("card", FEATURES), ("spike", SPIKE), ("late", LATE)] {
            let grouped = stored(&together, rule);
            assert_eq!(grouped.len(), 5);
            assert_eq!(grouped, stored(&format!("{STREAM}{alone}"), rule), "{rule}");
        }
    }
}
