//! Passivation: keeping millions of keys without keeping them all in memory.
//!
//! With passivation on, the engine reads the state of keys it evicted from a
//! [`StateStore`] that holds, for each such key, exactly what it held when it
//! was evicted. The store is the caller's copy of the engine's own changes
//! ([`Engine::take_changes`] batches, applied in order), so the engine may
//! only evict a key whose latest change is in a batch the caller has
//! reported written ([`Engine::passivate`]): before that, the store still
//! holds an older state. A key changes only in memory, so once evicted its
//! stored state stays current until it is read back.
//!
//! Memory is kept near a budget: when the estimate of what resident keys
//! hold exceeds it, the keys least recently changed are evicted until the
//! estimate is at [`LOW_WATER`] of it. An evicted key costs a few bytes (a
//! 64-bit hash in a set, so that a key seen for the first time does not cost
//! a store read) plus its timer, which stays queued: a deadline of a
//! passivated key revives it and fires on time.
//!
//! Before any of that, idle keys are frozen: a key unchanged for
//! [`FREEZE_AFTER`] batches, whose latest change is persisted, is replaced
//! in memory by its encoded state (the store entry's value less the header
//! every entry shares), which takes a fraction of the memory of the decoded
//! one; its next event or timer decodes it again. Eviction then mostly drops frozen keys, whose bytes the
//! store already holds.
//!
//! The estimate of a key's memory is its encoded size plus a fixed
//! overhead ([`KEY_OVERHEAD`] decoded, [`FROZEN_OVERHEAD`] frozen),
//! refreshed whenever the key is written.

use super::snapshot::{
    decode_key_body, decode_key_state, freeze_stored, frozen_body, key_bytes, thawed_body,
};
use super::{Engine, KeyCell, KeyState, RuleSet};
use crate::event::ValueKey;
use crate::state::{HEADER_LEN, SnapshotError, StateStore};
use hashbrown::HashMap;
use std::collections::BTreeMap;
use std::hash::BuildHasher;

/// The memory a decoded key holds beyond its encoded size (map slot, the
/// state's structures and allocations): 714–789 bytes measured by `cargo
/// bench --bench state` for keys holding a partial match or a window.
pub(super) const KEY_OVERHEAD: usize = 760;

/// The memory a frozen key holds beyond its encoded body (its map slot, a
/// 40-byte key and cell, 48–86 bytes as the key table's load goes from
/// full to half), measured by the same bench.
pub(super) const FROZEN_OVERHEAD: usize = 86;

/// Batches a key stays unchanged before it is frozen. Freezing is checked
/// every `FREEZE_AFTER` batches, so a key is frozen after between one and
/// two such spans idle: a key busy every few checkpoints is never decoded
/// again and again.
pub(super) const FREEZE_AFTER: u64 = 8;

/// Eviction goes down to this fraction of the budget, so that a key
/// crossing the budget does not start an eviction at every checkpoint.
const LOW_WATER: f64 = 0.8;

/// Counters of passivation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassivationStats {
    /// Keys whose state is only in the store.
    pub cold_keys: u64,
    /// The estimate of the memory held by resident keys, in bytes.
    pub resident_bytes: u64,
    /// The budget, in bytes.
    pub budget_bytes: u64,
    /// Keys evicted so far.
    pub evictions: u64,
    /// Keys read back so far.
    pub loads: u64,
    /// Keys in memory in encoded form.
    pub frozen_keys: u64,
    /// Keys frozen so far.
    pub freezes: u64,
    /// Frozen keys decoded again so far.
    pub thaws: u64,
}

pub(super) struct Passivation {
    store: Box<dyn StateStore + Send>,
    budget: usize,
    resident: usize,
    /// Batches up to this number are in the store.
    persisted: u64,
    /// Hashes of the evicted keys, with how many keys share each.
    cold: HashMap<u64, u32>,
    hasher: hashbrown::DefaultHashBuilder,
    error: Option<SnapshotError>,
    evictions: u64,
    loads: u64,
    /// Keys frozen now.
    frozen: usize,
    /// The batch number of the last freezing pass.
    last_freeze: u64,
    freezes: u64,
    thaws: u64,
}

impl Passivation {
    pub(super) fn has_cold(&self) -> bool {
        !self.cold.is_empty()
    }

    fn hash(&self, keying: usize, key: &ValueKey) -> u64 {
        self.hasher.hash_one((keying as u32, key))
    }

    /// A resident key was dropped, and with it `bytes` of the estimate.
    pub(super) fn release(&mut self, bytes: usize) {
        self.resident = self.resident.saturating_sub(bytes);
    }

    /// A resident key's estimate became `bytes` (it was `was`).
    pub(super) fn resize(&mut self, was: u32, bytes: usize) -> u32 {
        self.resident = self.resident.saturating_sub(was as usize) + bytes;
        bytes.min(u32::MAX as usize) as u32
    }

    /// Decodes `cell` in place if it is frozen. False when its bytes do
    /// not decode: the error is kept for [`Engine::take_state_error`] and
    /// the caller drops the key or starts it afresh.
    pub(super) fn thaw(
        &mut self,
        rules: &RuleSet,
        keying: usize,
        key: &ValueKey,
        cell: &mut KeyCell,
    ) -> bool {
        let KeyCell::Frozen(body) = cell else {
            return true;
        };
        self.frozen -= 1;
        self.thaws += 1;
        let was = body.len() + FROZEN_OVERHEAD;
        // Its change is persisted: `written` stays 0, as for a key read
        // back from the store.
        match decode_key_body(rules, keying, &thawed_body(key, body), None) {
            Ok(mut ks) => {
                ks.bytes = self.resize(was as u32, body.len() + HEADER_LEN + KEY_OVERHEAD);
                *cell = KeyCell::live(ks);
                true
            }
            Err(e) => {
                self.release(was);
                self.fail(e);
                false
            }
        }
    }

    fn fail(&mut self, e: SnapshotError) {
        tracing::error!("passivated state unreadable: {e}");
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

impl std::fmt::Debug for Passivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passivation")
            .field("budget", &self.budget)
            .field("resident", &self.resident)
            .field("cold", &self.cold.len())
            .finish()
    }
}

impl Engine {
    /// Turns passivation on (and change tracking with it): idle keys may be
    /// evicted to `store`, which must receive every batch of
    /// [`Engine::take_changes`] in order, and read back from it. Resident
    /// keys are kept near `budget_bytes`. Set before [`Engine::restored`],
    /// which then loads keys only up to the budget.
    pub fn with_passivation(
        mut self,
        store: Box<dyn StateStore + Send>,
        budget_bytes: usize,
    ) -> Engine {
        if self.dirty.is_none() {
            self = self.track_changes();
        }
        self.passive = Some(Passivation {
            store,
            budget: budget_bytes,
            resident: 0,
            persisted: 0,
            cold: HashMap::new(),
            hasher: Default::default(),
            error: None,
            evictions: 0,
            loads: 0,
            frozen: 0,
            last_freeze: 0,
            freezes: 0,
            thaws: 0,
        });
        self
    }

    /// The number of the last batch [`Engine::take_changes`] returned
    /// (1 for the first).
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Passivation counters (`None`: passivation is off).
    pub fn passivation_stats(&self) -> Option<PassivationStats> {
        self.passive.as_ref().map(|p| PassivationStats {
            cold_keys: p.cold.values().map(|&n| n as u64).sum(),
            resident_bytes: p.resident as u64,
            budget_bytes: p.budget as u64,
            evictions: p.evictions,
            loads: p.loads,
            frozen_keys: p.frozen as u64,
            freezes: p.freezes,
            thaws: p.thaws,
        })
    }

    /// The first error reading passivated state back, if any happened since
    /// the last call. The keys concerned were processed from empty state, so
    /// the output since the last persisted batch must be discarded and the
    /// engine rebuilt from the store (which the caller should check).
    pub fn take_state_error(&mut self) -> Option<SnapshotError> {
        self.passive.as_mut().and_then(|p| p.error.take())
    }

    /// The caller has written every batch up to number `batch` to the store
    /// (now with `budget_bytes` for this engine): keys whose latest change is
    /// in those batches may be evicted, and are, least recently changed
    /// first, while the resident estimate is over the budget. Returns the
    /// number of keys evicted.
    pub fn passivate(&mut self, batch: u64, budget_bytes: usize) -> usize {
        let Some(p) = &mut self.passive else {
            return 0;
        };
        p.persisted = p.persisted.max(batch.min(self.batches));
        p.budget = budget_bytes;
        if self.batches >= p.last_freeze + FREEZE_AFTER {
            p.last_freeze = self.batches;
            let idle_upto = p.persisted.min(self.batches.saturating_sub(FREEZE_AFTER));
            for (keying, keys) in self.keys.iter_mut().enumerate() {
                for cell in keys.values_mut() {
                    let KeyCell::Live(ks) = cell else { continue };
                    if ks.written > idle_upto {
                        continue;
                    }
                    let frozen = KeyCell::Frozen(frozen_body(&self.rules, keying, ks));
                    p.resident = p.resident.saturating_sub(ks.bytes as usize) + frozen.estimate();
                    *cell = frozen;
                    p.frozen += 1;
                    p.freezes += 1;
                }
            }
        }
        if p.resident <= p.budget {
            return 0;
        }
        let target = (p.budget as f64 * LOW_WATER) as usize;
        let mut excess = p.resident - target;
        // Bytes evictable per batch number: evicting every key changed at or
        // before `upto` frees enough.
        let mut by_batch: BTreeMap<u64, usize> = BTreeMap::new();
        for keys in &self.keys {
            for cell in keys.values() {
                if cell.written() <= p.persisted {
                    *by_batch.entry(cell.written()).or_default() += cell.estimate();
                }
            }
        }
        let mut upto = None;
        for (b, bytes) in by_batch {
            upto = Some(b);
            if bytes >= excess {
                break;
            }
            excess -= bytes;
        }
        let Some(upto) = upto else {
            return 0;
        };
        let mut evicted = 0usize;
        for (ki, keys) in self.keys.iter_mut().enumerate() {
            keys.retain(|key, cell| {
                if cell.written() > upto {
                    return true;
                }
                let h = p.hash(ki, key);
                *p.cold.entry(h).or_default() += 1;
                p.release(cell.estimate());
                if matches!(cell, KeyCell::Frozen(_)) {
                    p.frozen -= 1;
                }
                evicted += 1;
                false
            });
        }
        p.evictions += evicted as u64;
        evicted
    }

    /// Reads the key back from the store if it was evicted.
    pub(super) fn revive(&mut self, keying: usize, key: &ValueKey) {
        let Some(p) = &mut self.passive else {
            return;
        };
        if p.cold.is_empty() || self.keys[keying].contains_key(key) {
            return;
        }
        let h = p.hash(keying, key);
        let Some(n) = p.cold.get_mut(&h) else {
            return;
        };
        let bytes = match p.store.get(&key_bytes(keying as u32, key)) {
            Ok(Some(b)) => b,
            // Another key with the same hash is the cold one.
            Ok(None) => return,
            Err(e) => return p.fail(e),
        };
        *n -= 1;
        if *n == 0 {
            p.cold.remove(&h);
        }
        match decode_key_state(&self.rules, keying, &bytes, Some(&*p.store)) {
            Ok(mut ks) => {
                ks.bytes = p.resize(0, bytes.len() + ks.log_bytes() + KEY_OVERHEAD);
                ks.written = 0;
                p.loads += 1;
                self.keys[keying].insert(key.clone(), KeyCell::live(ks));
            }
            Err(e) => p.fail(e),
        }
    }

    /// Reads every evicted key back and decodes every frozen one (before
    /// a migration, which needs all state in memory, decoded).
    pub(super) fn revive_all(&mut self) {
        let Some(p) = &mut self.passive else {
            return;
        };
        if p.frozen > 0 {
            for (ki, keys) in self.keys.iter_mut().enumerate() {
                keys.retain(|key, cell| p.thaw(&self.rules, ki, key, cell));
            }
        }
        if p.cold.is_empty() {
            return;
        }
        let rules = self.rules.clone();
        let keys = &mut self.keys;
        let Passivation {
            store,
            cold,
            hasher,
            ..
        } = &mut *p;
        let mut revived: Vec<(usize, ValueKey, KeyState)> = Vec::new();
        // Only keys recorded as evicted: the store may still hold keys
        // dropped since its last write, whose deletion is not stored yet.
        let rows: &dyn StateStore = &**store;
        let scan = store.for_each_prefix(super::snapshot::KEY_PREFIX, &mut |k, v| {
            let keying = super::snapshot::keying_of(k, rules.keyings.len())?;
            let mut ks = decode_key_state(&rules, keying, v, Some(rows))?;
            let key = ValueKey::from(&ks.key);
            if keys[keying].contains_key(&key) {
                return Ok(());
            }
            let h = hasher.hash_one((keying as u32, &key));
            let Some(n) = cold.get_mut(&h) else {
                return Ok(());
            };
            *n -= 1;
            if *n == 0 {
                cold.remove(&h);
            }
            ks.bytes = (v.len() + ks.log_bytes() + KEY_OVERHEAD) as u32;
            ks.written = 0;
            revived.push((keying, key, ks));
            Ok(())
        });
        if let Err(e) = scan {
            return p.fail(e);
        }
        if !p.cold.is_empty() {
            p.fail(SnapshotError::Corrupt(format!(
                "{} evicted keys not found in the local state",
                p.cold.values().map(|n| *n as u64).sum::<u64>()
            )));
            p.cold.clear();
        }
        for (keying, key, ks) in revived {
            p.resident += ks.bytes as usize;
            p.loads += 1;
            keys[keying].insert(key, KeyCell::live(ks));
        }
    }

    /// Drops a resident key's state.
    pub(super) fn drop_key(&mut self, keying: usize, key: &ValueKey) {
        let Some(cell) = self.keys[keying].remove(key) else {
            return;
        };
        let live = match &cell {
            KeyCell::Live(ks) => Some(std::borrow::Cow::Borrowed(&**ks)),
            // Its stored rows are in its body.
            KeyCell::Frozen(body) => {
                decode_key_body(&self.rules, keying, &thawed_body(key, body), None)
                    .ok()
                    .map(std::borrow::Cow::Owned)
            }
        };
        if let Some(ks) = live {
            super::snapshot::forget_rows(&mut self.log_deletes, keying, key, &ks);
        }
        if let Some(p) = &mut self.passive {
            p.release(cell.estimate());
            if matches!(cell, KeyCell::Frozen(_)) {
                p.frozen -= 1;
            }
        }
    }

    /// Restore: the entry of a key restored from `bytes` (its stored
    /// value, decoded as `ks`): decoded without passivation; frozen with it
    /// while the budget allows, and otherwise left in the store (then
    /// recorded as evicted).
    pub(super) fn admit_restored(
        &mut self,
        keying: usize,
        key: &ValueKey,
        ks: KeyState,
        bytes: &[u8],
    ) -> Option<KeyCell> {
        let Some(p) = &mut self.passive else {
            return Some(KeyCell::live(ks));
        };
        let frozen = freeze_stored(&self.rules, keying, &ks, bytes);
        let need = frozen.len() + FROZEN_OVERHEAD;
        if p.resident + need <= p.budget {
            p.resident += need;
            p.frozen += 1;
            return Some(KeyCell::Frozen(frozen));
        }
        let h = p.hash(keying, key);
        *p.cold.entry(h).or_default() += 1;
        None
    }

    /// Moves passivation (and the batch count) to the engine a migration
    /// made: it starts with every key in memory and dirty.
    pub(super) fn hand_over_passivation(&mut self, to: &mut Engine) {
        to.batches = self.batches;
        if let Some(mut p) = self.passive.take() {
            p.cold.clear();
            p.resident = 0;
            p.frozen = 0;
            if to.dirty.is_none() {
                to.dirty = Some(hashbrown::HashSet::new());
            }
            to.passive = Some(p);
        }
    }

    /// Records a key's new encoded size after it was written.
    pub(super) fn written_size(
        passive: &mut Option<Passivation>,
        ks: &mut KeyState,
        encoded: usize,
    ) {
        if let Some(p) = passive {
            ks.bytes = p.resize(ks.bytes, encoded + KEY_OVERHEAD);
        }
    }

    /// Whether some keys are evicted (a full [`Engine::checkpoint`] would
    /// miss them).
    pub(super) fn has_cold_keys(&self) -> bool {
        self.passive.as_ref().is_some_and(|p| p.has_cold())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_cell_is_two_words() {
        // One per key in the key table: every byte here is a megabyte at a
        // million keys. Frozen's pointer niche tags the variants.
        assert_eq!(std::mem::size_of::<KeyCell>(), 16);
    }
}
