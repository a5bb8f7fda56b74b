//! Checkpoint and restore of an [`Engine`] through a [`StateStore`]: one
//! entry for engine-wide state (watermark, events waiting for it, counters)
//! and one per key (each rule's partial matches and window aggregates, with
//! the key's matched events stored once).

use super::{Engine, EngineStats, KeyState};
use crate::event::{Event, MAX_EVENT_TIME_MS, Value, ValueKey};
use crate::pattern::matcher::{EventTable, MatcherSnapshot, MatcherState};
use crate::state::{SnapshotError, StateStore, decode, encode};
use crate::time::WatermarkTracker;
use crate::window::WindowState;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;

const META_KEY: &[u8] = b"m";
const KEY_PREFIX: &[u8] = b"k/";
/// Events waiting for the watermark, one entry each (so a checkpoint writes
/// only those that arrived or left since the last one), keyed by
/// `(time, seq)` in an order-preserving encoding.
const BUFFER_PREFIX: &[u8] = b"b/";

#[derive(Serialize, Deserialize)]
struct EventSnapshot {
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
struct Meta {
    watermark: WatermarkTracker,
    /// Always empty since buffered events got entries of their own; read
    /// for snapshots written before.
    buffered: Vec<EventSnapshot>,
    stats: (u64, u64, u64, u64, u64),
}

#[derive(Serialize, Deserialize)]
struct KeySnapshot {
    key: Value,
    events: Vec<EventSnapshot>,
    matchers: Vec<MatcherSnapshot>,
    windows: Vec<Vec<WindowState>>,
    values: Vec<Vec<Value>>,
    timer: Option<i64>,
}

fn buffer_key(time: i64, seq: u64) -> Vec<u8> {
    let mut k = BUFFER_PREFIX.to_vec();
    // Flipping the sign bit makes big-endian bytes sort as the signed numbers do.
    k.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn key_bytes(keying: u32, key: &ValueKey) -> Vec<u8> {
    let mut k = KEY_PREFIX.to_vec();
    k.extend_from_slice(&keying.to_be_bytes());
    // postcard of a ValueKey cannot fail (derive-only, written to a Vec).
    k.extend(postcard::to_allocvec(key).unwrap_or_default());
    k
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

    fn key_value(&self, ks: &KeyState) -> Vec<u8> {
        let mut table = EventTable::default();
        let matchers = ks
            .matchers
            .iter()
            .map(|m| m.to_snapshot(&mut table))
            .collect();
        let snap = KeySnapshot {
            key: ks.key.clone(),
            events: table.events.iter().map(|e| EventSnapshot::of(e)).collect(),
            matchers,
            windows: ks.windows.clone(),
            values: ks.values.clone(),
            timer: ks.timer,
        };
        encode(self.rules.def.hash, &snap)
    }

    /// Writes the whole engine state to `store` in one batch, replacing what
    /// was there. Returns the number of bytes written.
    pub fn checkpoint(&self, store: &mut impl StateStore) -> Result<usize, SnapshotError> {
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for (k, _) in store.scan_prefix(KEY_PREFIX)? {
            batch.push((k, None));
        }
        for (k, _) in store.scan_prefix(BUFFER_PREFIX)? {
            batch.push((k, None));
        }
        batch.push(self.meta_entry());
        for e in &self.buffer {
            batch.push((
                buffer_key(e.time, e.seq),
                Some(encode(self.rules.def.hash, &EventSnapshot::of(e))),
            ));
        }
        for (ki, keys) in self.keys.iter().enumerate() {
            for (key, ks) in keys {
                // A put after the delete of the same key wins within the batch.
                batch.push((key_bytes(ki as u32, key), Some(self.key_value(ks))));
            }
        }
        let bytes = batch
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum();
        store.write(batch)?;
        Ok(bytes)
    }

    /// The changes since the last call (or since tracking began, see
    /// [`Engine::track_changes`]) as a store batch: the engine-wide entry,
    /// a put for each key that changed and a delete for each key that was
    /// dropped. Applied in order to the store that held the previous
    /// state, it gives the store [`Engine::checkpoint`] would write. Without
    /// tracking, the whole state (with no deletes).
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut batch = vec![self.meta_entry()];
        let now: std::collections::BTreeSet<(i64, u64)> =
            self.buffer.iter().map(|e| (e.time, e.seq)).collect();
        for gone in self.stored_buffer.difference(&now) {
            batch.push((buffer_key(gone.0, gone.1), None));
        }
        for e in &self.buffer {
            if !self.stored_buffer.contains(&(e.time, e.seq)) {
                batch.push((
                    buffer_key(e.time, e.seq),
                    Some(encode(self.rules.def.hash, &EventSnapshot::of(e))),
                ));
            }
        }
        self.stored_buffer = now;
        match self.dirty.take() {
            Some(mut dirty) => {
                let mut keys: Vec<(u32, ValueKey)> = dirty.drain().collect();
                // Sorted, so the same changes always give the same batch.
                keys.sort();
                for (ki, key) in keys {
                    let value = self.keys[ki as usize]
                        .get(&key)
                        .map(|ks| self.key_value(ks));
                    batch.push((key_bytes(ki, &key), value));
                }
                self.dirty = Some(dirty);
            }
            None => {
                for (ki, keys) in self.keys.iter().enumerate() {
                    for (key, ks) in keys {
                        batch.push((key_bytes(ki as u32, key), Some(self.key_value(ks))));
                    }
                }
            }
        }
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

    /// This fresh engine (as configured: watermark source, change tracking)
    /// in the state last checkpointed to `store`.
    pub fn restored(self, store: &impl StateStore) -> Result<Engine, SnapshotError> {
        let mut engine = self;
        let rules = engine.rules.clone();
        let hash = rules.def.hash;
        let slots = rules.def.schema.len();
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
            engine.stored_buffer.insert((e.time, e.seq));
            if engine
                .buffer
                .back()
                .is_some_and(|b| (b.time, b.seq) > (e.time, e.seq))
            {
                return Err(SnapshotError::Corrupt(
                    "buffered events out of order".into(),
                ));
            }
            engine.buffer.push_back(Arc::new(e));
        }
        engine.stats = EngineStats {
            events: meta.stats.0,
            late: meta.stats.1,
            alerts: meta.stats.2,
            rule_errors: meta.stats.3,
            unkeyed: meta.stats.4,
        };
        for (k, v) in store.scan_prefix(KEY_PREFIX)? {
            let keying = k
                .get(2..6)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .filter(|&i| i < rules.keyings.len())
                .ok_or_else(|| SnapshotError::Corrupt(format!("bad state key {k:?}")))?;
            let snap: KeySnapshot = decode(&v, hash)?;
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
                    MatcherState::from_snapshot(
                        m,
                        &events,
                        nfa,
                        rules.rules[ri].matcher.lazy.as_deref(),
                    )
                    .map_err(|e| SnapshotError::Corrupt(e.to_string()))?,
                );
            }
            for (w, &ri) in snap.windows.iter().zip(keying_rules) {
                if w.len() != rules.rules[ri].def.windows.len() {
                    return Err(SnapshotError::Corrupt(format!(
                        "key {} window count differs",
                        snap.key
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
            let key = ValueKey::from(&snap.key);
            if let Some(t) = snap.timer {
                engine.timers.insert(t, (keying as u32, key.clone()));
            }
            engine.keys[keying].insert(
                key,
                KeyState {
                    key: snap.key,
                    matchers,
                    windows: snap.windows,
                    values: snap.values,
                    timer: snap.timer,
                },
            );
        }
        Ok(engine)
    }
}
