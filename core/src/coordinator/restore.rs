//! Starting shards: the restore plan. Without a local store a shard's state
//! is its changelog read whole; with one, the local copy from its recorded
//! position plus the changelog's tail from there (a copy that cannot be
//! read, or a position no longer in the log, falls back to the whole
//! changelog). The changelog is the truth; the local copy is a cache.
//!
//! A restore runs as a [`RestoreJob`] on the [`Restorer`] port, away from
//! the thread that polls (see [`Restorer`] for why). Its partitions are
//! paused meanwhile; whatever was polled of them before the pause waits in
//! the coordinator and goes to the shard once it runs. One job runs at a
//! time, so no two ever write one shard's local copy; partitions assigned
//! meanwhile wait for the next. A job whose partitions were all revoked is
//! told to stop, and what any job restored for a partition no longer held
//! is dropped.

use super::ports::{
    ChangelogEvent, ChangelogReader, Clock, LocalShard, LocalStore, Ports, Restorer, Shards, Source,
};
use super::{CoordError, Coordinator, Position, Progress, ShardId, Slot, Topology};
use crate::engine::RuleSet;
use crate::shard::{Record, Role, Shard, check_entry};
use crate::state::{Change, MemoryStore, StateStore};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Changelog records applied to a store at once.
const BATCH: usize = 4096;
/// How long a restore that failed for a passing reason waits before it
/// starts again (so that a broker that refuses at once is not asked again
/// in a tight loop).
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

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

/// A partition assigned (or rewound) whose shard is not running yet.
pub(super) struct Pending {
    /// Records polled before its partition was paused, for the shard.
    building: Vec<Record>,
    /// The job restoring it (`None`: waiting for the running one to end).
    job: Option<u64>,
}

/// The job running, if any.
pub(super) struct RunningJob {
    seq: u64,
    cancel: Arc<AtomicBool>,
}

/// How to build one shard's engine, fresh.
struct Recipe {
    partition: i32,
    rules: Arc<RuleSet>,
    engine_rules: Arc<RuleSet>,
    role: Role,
    output_limit: usize,
    lists: Arc<crate::lists::Lists>,
    tables: Arc<crate::tables::Tables>,
    /// With a local store and a memory budget: the shard's share.
    passivation_budget: Option<usize>,
    /// With a feature log: the fields its rows copy.
    feature_log: Option<Arc<[(String, crate::event::FieldPath)]>>,
}

impl Recipe {
    fn build<L: LocalShard>(&self, store: Option<&L>) -> Shard {
        let shard = Shard::new(
            self.partition,
            self.rules.clone(),
            self.engine_rules.clone(),
            self.role.clone(),
        )
        .with_output_limit(self.output_limit)
        .with_lists(self.lists.clone())
        .with_tables(self.tables.clone());
        let shard = match &self.feature_log {
            Some(fields) => shard.with_feature_log(fields.clone()),
            None => shard,
        };
        match (store, self.passivation_budget) {
            (Some(store), Some(budget)) => shard.with_passivation(Box::new(store.clone()), budget),
            _ => shard,
        }
    }
}

/// One shard to restore.
struct Plan<P: Ports> {
    id: ShardId,
    recipe: Recipe,
    /// Its local copy, with a local store.
    store: Option<<P::Local as LocalStore>::Shard>,
}

/// A restore of some shards, to run on the [`Restorer`].
pub struct RestoreJob<P: Ports> {
    seq: u64,
    topology: Arc<Topology>,
    progress: Arc<Progress>,
    changelog: P::Changelog,
    cancel: Arc<AtomicBool>,
    plans: Vec<Plan<P>>,
}

/// A shard restored, ready to run.
pub struct Restored<P: Ports> {
    id: ShardId,
    shard: Shard,
    store: Option<<P::Local as LocalStore>::Shard>,
    position: Position,
}

/// A job's end, for [`Coordinator::poll_restores`].
pub struct RestoreDone<P: Ports> {
    seq: u64,
    /// The rules its shards were built with.
    rules_hash: u64,
    ids: Vec<ShardId>,
    result: Result<Vec<Restored<P>>, CoordError>,
}

impl<P: Ports> RestoreJob<P> {
    /// Reads the changelogs and rebuilds the shards (long: the reason this
    /// runs apart).
    pub fn run(mut self) -> RestoreDone<P> {
        let ids = self.plans.iter().map(|p| p.id).collect();
        let plans = std::mem::take(&mut self.plans);
        let result = if plans.iter().all(|p| p.store.is_none()) {
            self.in_memory(plans)
        } else {
            self.with_local(plans)
        };
        RestoreDone {
            seq: self.seq,
            rules_hash: self.topology.rules.def.hash,
            ids,
            result,
        }
    }

    /// As [`RestoreJob::run`], but a panic in the restore (a bug) ends it
    /// with a fatal error: the service stops rather than wait for ever for
    /// a restore that will not end.
    pub fn run_catching(self) -> RestoreDone<P> {
        let seq = self.seq;
        let rules_hash = self.topology.rules.def.hash;
        let ids = self.plans.iter().map(|p| p.id).collect();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run())) {
            Ok(done) => done,
            Err(_) => RestoreDone {
                seq,
                rules_hash,
                ids,
                result: Err(CoordError::Port(super::PortError::fatal(
                    "restore",
                    "the restore panicked",
                ))),
            },
        }
    }

    fn check_cancel(&self) -> Result<(), CoordError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(CoordError::Cancelled);
        }
        Ok(())
    }

    /// Each shard in the state of its changelog read whole into memory
    /// (there is no local store).
    fn in_memory(&mut self, plans: Vec<Plan<P>>) -> Result<Vec<Restored<P>>, CoordError> {
        let ids: Vec<ShardId> = plans.iter().map(|p| p.id).collect();
        let mut stores: BTreeMap<ShardId, MemoryStore> = BTreeMap::new();
        self.read_changelogs(&ids, &BTreeMap::new(), &mut |event| {
            if let Restore::Apply(id, batch) = event {
                stores.entry(id).or_default().write(batch)?;
            }
            Ok(())
        })?;
        let mut out = Vec::with_capacity(plans.len());
        for plan in plans {
            self.check_cancel()?;
            let store = stores.remove(&plan.id).unwrap_or_default();
            out.push(self.start_shard(plan, &store, None, Position::default()));
        }
        Ok(out)
    }

    /// Each shard from its local copy, brought up to date with the
    /// changelog's tail.
    fn with_local(&mut self, plans: Vec<Plan<P>>) -> Result<Vec<Restored<P>>, CoordError> {
        let mut stores = BTreeMap::new();
        let mut starts = BTreeMap::new();
        let mut recipes = BTreeMap::new();
        for plan in plans {
            let Some(mut store) = plan.store else {
                continue;
            };
            let position = store.position().unwrap_or_else(|e| {
                tracing::error!(
                    store = store.name(),
                    "local state unreadable, restoring from the changelog: {e}"
                );
                None
            });
            match position {
                Some(p) => {
                    starts.insert(plan.id, p);
                }
                None => store.clear()?,
            }
            stores.insert(plan.id, store);
            recipes.insert(plan.id, plan.recipe);
        }
        self.restore_local(&mut stores, &starts)?;
        let mut out = Vec::with_capacity(stores.len());
        for (id, store) in stores {
            self.check_cancel()?;
            let recipe = recipes.remove(&id).expect("a recipe per store");
            match recipe.build(Some(&store)).restored(&store) {
                Ok(shard) => {
                    let position = store.position().ok().flatten().unwrap_or_default();
                    tracing::debug!(
                        store = store.name(),
                        input = position.input,
                        changelog = position.changelog,
                        "state restored"
                    );
                    out.push(Restored {
                        id,
                        shard,
                        store: Some(store),
                        position,
                    });
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
                        let plan = Plan {
                            id,
                            recipe,
                            store: None,
                        };
                        out.push(self.start_shard(plan, &store, Some(store.clone()), position));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The shard of `plan` in the state `state` holds (empty if it cannot
    /// be restored); `store`, if any, is where its committed changes go.
    fn start_shard(
        &self,
        plan: Plan<P>,
        state: &impl StateStore,
        store: Option<<P::Local as LocalStore>::Shard>,
        position: Position,
    ) -> Restored<P> {
        let shard = match plan.recipe.build(store.as_ref()).restored(state) {
            Ok(s) => s,
            Err(e) => {
                // The rules changed since the state was written, or it is
                // damaged: its keys start afresh, loudly.
                tracing::error!(
                    topic = self.topology.topics[plan.id.0].name,
                    partition = plan.id.1,
                    "cannot restore state, starting empty: {e}"
                );
                self.progress
                    .restore_failures
                    .fetch_add(1, Ordering::Relaxed);
                plan.recipe.build(store.as_ref())
            }
        };
        Restored {
            id: plan.id,
            shard,
            store,
            position,
        }
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
                topic = self.topology.topics[id.0].name,
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
        let cancel = self.cancel.clone();
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
                if cancel.load(Ordering::Relaxed) {
                    return Err(CoordError::Cancelled);
                }
                match event {
                    ChangelogEvent::Waiting => {}
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
}

impl<P: Ports> Coordinator<P> {
    /// Partition `id` is to be restored: paused (what was polled of it,
    /// `building`, waits for its shard), queued for the next job.
    pub(super) fn queue_restore<S: Source>(&mut self, src: &S, id: ShardId, building: Vec<Record>) {
        if let Err(e) = src.pause(self.topic(id.0), id.1, true) {
            // Records still come, and wait with `building`.
            tracing::warn!(
                topic = self.topic(id.0),
                partition = id.1,
                "cannot pause a partition being restored: {e}"
            );
        }
        self.restoring.insert(
            id,
            Pending {
                building,
                job: None,
            },
        );
    }

    /// Keeps what was polled of a partition being restored for its shard
    /// (a record of a partition not held at all is dropped: it was fetched
    /// before its revocation).
    pub(super) fn enqueue_restoring(&mut self, id: ShardId, record: Record) {
        if let Some(p) = self.restoring.get_mut(&id) {
            p.building.push(record);
        }
    }

    /// Forgets a partition being restored (revoked); a job restoring only
    /// partitions no longer wanted is told to stop.
    pub(super) fn forget_restoring(&mut self, id: ShardId) {
        self.restoring.remove(&id);
        if let Some(job) = &self.job
            && !self.restoring.values().any(|p| p.job == Some(job.seq))
        {
            job.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Stops every restore and waits for the running one to end.
    pub(super) fn stop_restores(&mut self) {
        self.restoring.clear();
        if let Some(job) = self.job.take() {
            job.cancel.store(true, Ordering::Relaxed);
        }
        self.restorer.wait();
        drop(self.restorer.finished());
    }

    /// Whether partitions wait for their state to be restored.
    pub fn restoring(&self) -> usize {
        self.restoring.len()
    }

    /// Starts the shards whose restore ended (resuming their partitions),
    /// then the next restore. The driver calls it between polls. A restore
    /// that failed for a reason a retry can mend is started again; any
    /// other failure is returned, and the service stops on it.
    pub fn poll_restores<S: Source>(&mut self, src: &S) -> Result<(), CoordError> {
        for done in self.restorer.finished() {
            if self.job.as_ref().is_some_and(|j| j.seq == done.seq) {
                self.job = None;
            }
            let wanted = |c: &Self, id: &ShardId| {
                c.restoring.get(id).is_some_and(|p| p.job == Some(done.seq))
            };
            let restored = match done.result {
                Ok(r) => r,
                Err(_) if !done.ids.iter().any(|id| wanted(self, id)) => continue,
                Err(CoordError::Cancelled) => continue,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(
                        "restore failed, starting it again in {} ms: {e}",
                        RETRY_AFTER.as_millis()
                    );
                    self.retry_restore_at = Some(self.clock.now() + RETRY_AFTER);
                    for id in &done.ids {
                        if wanted(self, id)
                            && let Some(p) = self.restoring.get_mut(id)
                        {
                            p.job = None;
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            for r in restored {
                if !wanted(self, &r.id) {
                    continue;
                }
                let Some(pending) = self.restoring.remove(&r.id) else {
                    continue;
                };
                self.run_shard(r.id, r.shard, r.store, r.position, pending.building);
                if done.rules_hash != self.topology.rules.def.hash {
                    // Rules swapped while it restored: migrate as the
                    // running shards did.
                    let plan = &self.topology.topics[r.id.0];
                    self.shards
                        .reload(r.id, self.topology.rules.clone(), plan.rules.clone());
                }
                self.pause(src, r.id, false);
            }
        }
        self.publish();
        self.start_restore()
    }

    /// Starts a job for the partitions waiting, unless one runs.
    pub(super) fn start_restore(&mut self) -> Result<(), CoordError> {
        if self.job.is_some() {
            return Ok(());
        }
        if let Some(at) = self.retry_restore_at {
            if self.clock.now() < at {
                return Ok(());
            }
            self.retry_restore_at = None;
        }
        let ids: Vec<ShardId> = self
            .restoring
            .iter()
            .filter(|(_, p)| p.job.is_none())
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        // The job reads the local copy: every write queued goes first.
        self.flush_local();
        let seq = self.next_job;
        self.next_job += 1;
        let budget = (self.settings.memory_budget_bytes > 0 && self.local.is_some())
            .then(|| self.shard_budget(self.restoring.len()));
        let mut plans = Vec::with_capacity(ids.len());
        for &id in &ids {
            let store = match &self.local {
                Some(local) => Some(local.shard(self.topic(id.0), id.1)?),
                None => None,
            };
            plans.push(Plan {
                id,
                recipe: self.recipe(id, budget),
                store,
            });
            if let Some(p) = self.restoring.get_mut(&id) {
                p.job = Some(seq);
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.job = Some(RunningJob {
            seq,
            cancel: cancel.clone(),
        });
        self.restorer.start(RestoreJob {
            seq,
            topology: self.topology.clone(),
            progress: self.progress.clone(),
            changelog: self.changelog.clone(),
            cancel,
            plans,
        });
        Ok(())
    }

    /// Each shard's share of the memory budget, with `more` shards about
    /// to start besides the running ones.
    pub(super) fn shard_budget(&self, more: usize) -> usize {
        self.settings.memory_budget_bytes / (self.slots.len() + more).max(1)
    }

    fn recipe(&self, id: ShardId, passivation_budget: Option<usize>) -> Recipe {
        let plan = &self.topology.topics[id.0];
        Recipe {
            partition: id.1,
            rules: self.topology.rules.clone(),
            engine_rules: plan.rules.clone(),
            role: plan.role.clone(),
            output_limit: self.settings.output_limit,
            lists: self.settings.lists.clone(),
            tables: self.settings.tables.clone(),
            passivation_budget,
            feature_log: self.settings.feature_log.as_ref().map(|f| f.fields.clone()),
        }
    }

    fn run_shard(
        &mut self,
        id: ShardId,
        shard: Shard,
        store: Option<<P::Local as LocalStore>::Shard>,
        position: Position,
        building: Vec<Record>,
    ) {
        self.shards.start(id, shard);
        let polled_to = building.last().map(|r| r.offset + 1);
        self.slots.insert(
            id,
            Slot {
                building,
                refused: None,
                store,
                position,
                polled_to,
                paused: true,
            },
        );
        if let Some(source) = self.topology.source_id(id.0, id.1) {
            let now = self.clock.now();
            self.marks.insert(source, (None, now));
        }
    }
}
