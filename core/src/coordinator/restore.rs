//! Starting shards: the restore plan. Without a local store a shard's state
//! is its changelog read whole; with one, the local copy from its recorded
//! position plus the changelog's tail from there (a copy that cannot be
//! read, or a position no longer in the log, falls back to the whole
//! changelog). The changelog is the truth; the local copy is a cache.

use super::ports::{ChangelogEvent, ChangelogReader, Clock, LocalShard, LocalStore, Ports, Shards};
use super::{CoordError, Coordinator, Position, ShardId, Slot};
use crate::shard::{Shard, check_entry};
use crate::state::{Change, MemoryStore, StateStore};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// Changelog records applied to a store at once.
const BATCH: usize = 4096;

/// What reading a changelog finds, for the caller to apply.
enum Restore {
    /// The recorded position is not in the log: drop what the shard has,
    /// the log is read whole.
    Reset(ShardId),
    /// Changelog records, in order: puts and deletes.
    Apply(ShardId, Vec<Change>),
    /// The log's end: the offset after the last record read.
    End(ShardId, i64),
}

/// Counts partitions in a gauge while their changelogs are read, however
/// the read ends.
struct Restoring<'a> {
    gauge: &'a AtomicU64,
    open: u64,
}

impl<'a> Restoring<'a> {
    fn new(gauge: &'a AtomicU64, n: usize) -> Restoring<'a> {
        gauge.fetch_add(n as u64, Ordering::Relaxed);
        Restoring {
            gauge,
            open: n as u64,
        }
    }

    fn done(&mut self, n: u64) {
        let n = n.min(self.open);
        self.open -= n;
        self.gauge.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        self.done(self.open);
    }
}

impl<P: Ports> Coordinator<P> {
    /// Starts the shards of `ids`, each in the state its changelog holds:
    /// read whole into memory, or, with a local store, the changelog's
    /// tail applied to the local copy.
    pub(super) fn start_shards(&mut self, ids: &[ShardId]) -> Result<(), CoordError> {
        if ids.is_empty() {
            return Ok(());
        }
        let Some(local) = &self.local else {
            return self.start_in_memory(ids);
        };
        let mut stores = BTreeMap::new();
        let mut starts = BTreeMap::new();
        for &id in ids {
            let mut store = local.shard(&self.topology.topics[id.0].name, id.1)?;
            let position = store.position().unwrap_or_else(|e| {
                tracing::error!(
                    store = store.name(),
                    "local state unreadable, restoring from the changelog: {e}"
                );
                None
            });
            match position {
                Some(p) => {
                    starts.insert(id, p);
                }
                None => store.clear()?,
            }
            stores.insert(id, store);
        }
        self.restore_local(&mut stores, &starts)?;
        let starting = stores.len();
        for (id, store) in stores {
            match self
                .passivating(self.new_shard(id), Some(&store), starting)
                .restored(&store)
            {
                Ok(shard) => {
                    let position = store.position().ok().flatten().unwrap_or_default();
                    tracing::debug!(
                        store = store.name(),
                        input = position.input,
                        changelog = position.changelog,
                        "state restored"
                    );
                    self.run_shard(id, shard, Some(store), position);
                }
                Err(e) => {
                    // The copy is damaged (or from other rules): the
                    // changelog is the truth, so start over from it.
                    tracing::error!(
                        store = store.name(),
                        "local state cannot be restored, reading the whole changelog: {e}"
                    );
                    let mut store = store;
                    store.clear()?;
                    let mut one = BTreeMap::from([(id, store)]);
                    self.restore_local(&mut one, &BTreeMap::new())?;
                    if let Some(store) = one.remove(&id) {
                        let position = store.position().ok().flatten().unwrap_or_default();
                        self.start_shard(id, &store, Some(store.clone()), position);
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts the shards of `ids` in the state of their changelogs read
    /// whole into memory (there is no local store).
    fn start_in_memory(&mut self, ids: &[ShardId]) -> Result<(), CoordError> {
        let mut stores: BTreeMap<ShardId, MemoryStore> = BTreeMap::new();
        self.read_changelogs(ids, &BTreeMap::new(), &mut |event| {
            if let Restore::Apply(id, batch) = event {
                stores.entry(id).or_default().write(batch)?;
            }
            Ok(())
        })?;
        for &id in ids {
            let store = stores.remove(&id).unwrap_or_default();
            self.start_shard(id, &store, None, Position::default());
        }
        Ok(())
    }

    /// Applies each shard's changelog, from its recorded position (or the
    /// beginning), to its local store, and records the new position.
    fn restore_local(
        &mut self,
        stores: &mut BTreeMap<ShardId, <P::Local as LocalStore>::Shard>,
        starts: &BTreeMap<ShardId, Position>,
    ) -> Result<(), CoordError> {
        let ids: Vec<ShardId> = stores.keys().copied().collect();
        let from: BTreeMap<ShardId, i64> =
            starts.iter().map(|(id, p)| (*id, p.changelog)).collect();
        let mut applied: BTreeMap<ShardId, u64> = BTreeMap::new();
        self.read_changelogs(&ids, &from, &mut |event| {
            match event {
                Restore::Reset(id) => {
                    if let Some(s) = stores.get_mut(&id) {
                        tracing::warn!(
                            store = s.name(),
                            "changelog does not hold the recorded position, reading it whole"
                        );
                        s.clear()?;
                    }
                }
                Restore::Apply(id, batch) => {
                    *applied.entry(id).or_default() += batch.len() as u64;
                    if let Some(s) = stores.get_mut(&id) {
                        s.write(batch)?;
                    }
                }
                Restore::End(id, end) => {
                    if let Some(s) = stores.get_mut(&id) {
                        let input = starts.get(&id).map_or(-1, |p| p.input);
                        s.set_position(Position {
                            input,
                            changelog: end,
                        })?;
                    }
                }
            }
            Ok(())
        })?;
        for (id, n) in applied {
            tracing::info!(
                topic = self.topic(id.0),
                partition = id.1,
                records = n,
                "changelog tail applied to local state"
            );
        }
        Ok(())
    }

    /// Reads the changelog partitions of `ids` to their ends, each from its
    /// offset in `from` (absent, or no longer in the log: from the
    /// beginning, announced by [`Restore::Reset`]), checking every record.
    fn read_changelogs(
        &mut self,
        ids: &[ShardId],
        from: &BTreeMap<ShardId, i64>,
        sink: &mut dyn FnMut(Restore) -> Result<(), CoordError>,
    ) -> Result<(), CoordError> {
        let progress = self.progress.clone();
        let topology = self.topology.clone();
        for (t, plan) in topology.topics.iter().enumerate() {
            let starts: Vec<(i32, Option<i64>)> = ids
                .iter()
                .filter(|i| i.0 == t)
                .map(|&(_, p)| (p, from.get(&(t, p)).copied()))
                .collect();
            if starts.is_empty() {
                continue;
            }
            let changelog = plan.changelog.as_str();
            let mut open: BTreeSet<i32> = starts.iter().map(|s| s.0).collect();
            let mut restoring = Restoring::new(&progress.restoring_partitions, open.len());
            let mut pending: BTreeMap<i32, Vec<Change>> = BTreeMap::new();
            self.changelog.read(changelog, &starts, &mut |event| {
                match event {
                    ChangelogEvent::Reset(p) => sink(Restore::Reset((t, p)))?,
                    ChangelogEvent::Record {
                        partition,
                        offset,
                        key,
                        value,
                    } => {
                        progress.restored_records.fetch_add(1, Ordering::Relaxed);
                        let Some(key) = key else { return Ok(()) };
                        if let Some(value) = value
                            && let Err(error) = check_entry(key, value)
                        {
                            return Err(CoordError::CorruptChangelog {
                                topic: changelog.to_string(),
                                partition,
                                offset,
                                error,
                            });
                        }
                        let batch = pending.entry(partition).or_default();
                        batch.push((key.to_vec(), value.map(<[u8]>::to_vec)));
                        if batch.len() >= BATCH {
                            let batch = std::mem::take(batch);
                            sink(Restore::Apply((t, partition), batch))?;
                        }
                    }
                    ChangelogEvent::End(p, end) => {
                        if open.remove(&p) {
                            restoring.done(1);
                            if let Some(batch) = pending.remove(&p) {
                                sink(Restore::Apply((t, p), batch))?;
                            }
                            sink(Restore::End((t, p), end))?;
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Each shard's share of the memory budget, with `more` shards about
    /// to start besides the running ones.
    pub(super) fn shard_budget(&self, more: usize) -> usize {
        self.settings.memory_budget_bytes / (self.slots.len() + more).max(1)
    }

    /// The shard with passivation to its local `store`, if it has one and a
    /// budget is set.
    fn passivating(
        &self,
        shard: Shard,
        store: Option<&<P::Local as LocalStore>::Shard>,
        more: usize,
    ) -> Shard {
        match store {
            Some(store) if self.settings.memory_budget_bytes > 0 => {
                shard.with_passivation(Box::new(store.clone()), self.shard_budget(more))
            }
            _ => shard,
        }
    }

    fn new_shard(&self, id: ShardId) -> Shard {
        let plan = &self.topology.topics[id.0];
        Shard::new(
            id.1,
            self.topology.rules.clone(),
            plan.rules.clone(),
            plan.role.clone(),
        )
        .with_output_limit(self.settings.output_limit)
        .with_lists(self.settings.lists.clone())
    }

    /// Starts a shard in the state `state` holds (empty if it cannot be
    /// restored); `store`, if any, is where its committed changes go.
    fn start_shard(
        &mut self,
        id: ShardId,
        state: &impl StateStore,
        store: Option<<P::Local as LocalStore>::Shard>,
        position: Position,
    ) {
        let shard = match self
            .passivating(self.new_shard(id), store.as_ref(), 1)
            .restored(state)
        {
            Ok(s) => s,
            Err(e) => {
                // The rules changed since the state was written, or it is
                // damaged: its keys start afresh, loudly.
                tracing::error!(
                    topic = self.topic(id.0),
                    partition = id.1,
                    "cannot restore state, starting empty: {e}"
                );
                self.progress
                    .restore_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.new_shard(id)
            }
        };
        self.run_shard(id, shard, store, position);
    }

    fn run_shard(
        &mut self,
        id: ShardId,
        shard: Shard,
        store: Option<<P::Local as LocalStore>::Shard>,
        position: Position,
    ) {
        self.shards.start(id, shard);
        self.slots.insert(
            id,
            Slot {
                building: Vec::new(),
                refused: None,
                store,
                position,
                polled_to: None,
                paused: false,
            },
        );
        if id.0 == 0 {
            let now = self.clock.now();
            self.marks.insert(id.1, (None, now));
        }
    }
}
