//! The exactly-once protocol: which records each shard has, when the shards'
//! output is cut, produced and committed with the input offsets it covers,
//! how a failed checkpoint is rewound, how a shard's state is rebuilt when
//! it starts, and when new rules take over. A synchronous state machine
//! that reaches the outside only through its [`ports`], so that it runs
//! the same over Kafka and actix (the service's Kafka adapter) and
//! in a deterministic simulation that kills and faults it at every step
//! (`core/tests/simulation`).
//!
//! # Exactly once
//!
//! Each checkpoint sends a [`Barrier`] to every shard; it queues behind the
//! records already handed over, so each answer is a consistent cut (outputs
//! and the offset they cover). The coordinator then produces the outputs in
//! a transaction, adds the offsets (the group's generation fences a member
//! that lost its partitions), and commits. A transaction that fails is
//! aborted and every shard is rewound: its engine starts again from its last
//! committed state and its partition is re-read from the last committed
//! offset, so nothing is lost and nothing is produced twice.
//!
//! A commit waits until every record of its transaction is acknowledged,
//! and an alert is visible only after it. So that the commit does not wait
//! for a whole interval's records, a [`Barrier::Flush`] a little before each
//! barrier takes the shards' output so far and produces it into the open
//! transaction; the barrier then brings only the last few milliseconds'.
//!
//! On revocation the coordinator checkpoints before letting go, so the next
//! owner starts exactly where this member stopped.
//!
//! # State
//!
//! Each shard's state changes go to its partition of the topic's changelog
//! in the same transaction; a shard that starts (assigned, or rewound)
//! rebuilds its keys from the changelog (with a local store, from the local
//! copy and the changelog's tail). The local copy is written only after the
//! commit, so it is never ahead of what committed.
//!
//! # Backpressure
//!
//! A shard that cannot take a batch gives it back; its partition is paused
//! until the shard takes it, so memory stays bounded and a cut never covers
//! a record the shard has not seen.

mod checkpoint;
pub mod ports;
pub mod progress;
pub mod report;
mod restore;
pub mod topology;

pub use checkpoint::MARK_HEADER;
pub use ports::{
    ChangelogEvent, ChangelogReader, Clock, Fault, LocalShard, LocalStore, LocalWrite, Observer,
    Outgoing, PortError, Ports, Restorer, ShardId, Shards, Source, TxSink,
};
pub use progress::Progress;
pub use report::RulesReload;
pub use restore::{RestoreDone, RestoreJob};
pub use topology::{SourceTopic, Topology, TopologyError};

use crate::engine::RuleSet;
use crate::shard::{Record, ShardOutput, WatermarkMark};
use crate::state::SnapshotError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What the protocol needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The input topic.
    pub input_topic: String,
    /// The consumer group (internal and changelog topics are named after it).
    pub group: String,
    /// Where alerts go.
    pub alerts_topic: String,
    /// Where the alerts of rules in `mode shadow` go.
    pub shadow_topic: String,
    /// Where dead letters go.
    pub dead_letter_topic: String,
    /// Records handed to a shard at once.
    pub batch_size: usize,
    /// The memory all shards' keys may take before idle ones are passivated
    /// to the local store (0: no limit).
    pub memory_budget_bytes: usize,
    /// The largest record (key and value) the sink accepts.
    pub output_limit: usize,
    /// The lists the rules look values up in (shared with whoever changes
    /// them).
    pub lists: Arc<crate::lists::Lists>,
    /// The tables the rules look rows up in (shared with whoever reads
    /// their rows).
    pub tables: Arc<crate::tables::Tables>,
    /// Where every event's features go, if anywhere.
    pub feature_log: Option<FeatureLogSettings>,
}

/// The feature log: every event's features, produced in the checkpoint's
/// transaction like the alerts, so it holds each event exactly once (per
/// keying whose features it has) — what models are retrained from.
#[derive(Debug, Clone)]
pub struct FeatureLogSettings {
    /// The topic.
    pub topic: String,
    /// The event fields each row copies beside the features (name, path).
    pub fields: Arc<[(String, crate::event::FieldPath)]>,
}

/// What a shard's local state covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// The next input offset to process: everything before it is in the state.
    pub input: i64,
    /// The next changelog offset: every changelog record before it has been
    /// applied.
    pub changelog: i64,
}

/// Why a checkpoint, a restore or a rewind failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// A port call failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// A shard stopped answering (its thread died).
    #[error("shard of {topic}/{partition} is gone")]
    ShardGone {
        /// The shard's topic.
        topic: String,
        /// Its partition.
        partition: i32,
    },
    /// A shard could not read a passivated key's state back.
    #[error("{topic}/{partition}: passivated state unreadable: {error}")]
    PassivatedState {
        /// The shard's topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// What failed.
        error: SnapshotError,
    },
    /// A changelog record does not decode: the partition's state cannot
    /// be rebuilt, and the service stops rather than run on without it.
    #[error(
        "changelog `{topic}` partition {partition} offset {offset}: {error} \
         (the partition's state cannot be rebuilt; stopping rather than lose it)"
    )]
    CorruptChangelog {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// What is wrong with it.
        error: SnapshotError,
    },
    /// The local copy of a shard's state could not be read or written.
    #[error("local state: {0}")]
    Local(#[from] SnapshotError),
    /// A restore was stopped: its partitions were revoked.
    #[error("restore stopped: its partitions were revoked")]
    Cancelled,
}

impl CoordError {
    /// Whether the service must stop rather than abort and rewind.
    pub fn is_fatal(&self) -> bool {
        matches!(self, CoordError::Port(e) if e.fault == Fault::Fatal)
    }

    /// Whether trying again may succeed (a port's passing failure).
    pub fn is_retryable(&self) -> bool {
        matches!(self, CoordError::Port(e) if e.fault == Fault::Retry)
    }
}

/// One shard and what the coordinator holds for it.
struct Slot<S> {
    /// Records polled but not yet handed over.
    building: Vec<Record>,
    /// A batch the shard refused; its partition is paused.
    refused: Option<Vec<Record>>,
    /// Where its committed changes are copied, with a local store.
    store: Option<S>,
    /// What that copy covers.
    position: Position,
    /// The offset after the last record polled (`None`: none yet).
    polled_to: Option<i64>,
    /// Its partition may be paused: paused for a refused batch, or a
    /// resume failed (retried at every hand-over, so that a partition is
    /// never left paused for good).
    paused: bool,
}

/// The protocol's state: the shards held, the open transaction and what
/// was produced into it, the watermark marks written.
pub struct Coordinator<P: Ports> {
    settings: Settings,
    topology: Arc<Topology>,
    sink: P::Sink,
    changelog: P::Changelog,
    /// The local store, if there is one (dropped if a write to it fails).
    local: Option<P::Local>,
    /// Local batches committed and not known written yet: each batch's
    /// number and the shard batches it stores (see [`Shards::persisted`]).
    unwritten: std::collections::VecDeque<(u64, Vec<(ShardId, u64)>)>,
    shards: P::Shards,
    clock: P::Clock,
    observer: P::Observer,
    slots: BTreeMap<ShardId, Slot<<P::Local as LocalStore>::Shard>>,
    /// Per source partition held: the last mark written to the internal
    /// topics, and when it last had input.
    marks: BTreeMap<u32, (Option<WatermarkMark>, Duration)>,
    progress: Arc<Progress>,
    /// A transaction has begun and not yet committed or aborted.
    txn_open: bool,
    /// The outputs produced into the open transaction ahead of its
    /// checkpoint (see [`Coordinator::flush`]).
    flushed: BTreeMap<ShardId, ShardOutput>,
    /// Partitions held whose shards are being restored.
    restoring: BTreeMap<ShardId, restore::Pending>,
    restorer: P::Restorer,
    /// The restore running.
    job: Option<restore::RunningJob>,
    next_job: u64,
    /// After a restore failed: not started again before this time.
    retry_restore_at: Option<Duration>,
}

/// The ports a coordinator is built with.
pub struct Parts<P: Ports> {
    /// The sink, with a producer ready.
    pub sink: P::Sink,
    /// The changelog reader.
    pub changelog: P::Changelog,
    /// The local store, if any.
    pub local: Option<P::Local>,
    /// The shards.
    pub shards: P::Shards,
    /// The clock.
    pub clock: P::Clock,
    /// Where what happens is reported.
    pub observer: P::Observer,
    /// Where restores run.
    pub restorer: P::Restorer,
}

impl<P: Ports> Coordinator<P> {
    /// A coordinator that holds no partition yet.
    pub fn new(
        settings: Settings,
        topology: Arc<Topology>,
        parts: Parts<P>,
        progress: Arc<Progress>,
    ) -> Coordinator<P> {
        progress
            .rules_hash
            .store(topology.rules.def.hash, Ordering::SeqCst);
        Coordinator {
            settings,
            topology,
            sink: parts.sink,
            changelog: parts.changelog,
            local: parts.local,
            unwritten: Default::default(),
            shards: parts.shards,
            clock: parts.clock,
            observer: parts.observer,
            slots: BTreeMap::new(),
            marks: BTreeMap::new(),
            progress,
            txn_open: false,
            flushed: BTreeMap::new(),
            restoring: BTreeMap::new(),
            restorer: parts.restorer,
            job: None,
            next_job: 0,
            retry_restore_at: None,
        }
    }

    /// The topics and the rules running on them.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// The shards held and running.
    pub fn held(&self) -> Vec<ShardId> {
        self.slots.keys().copied().collect()
    }

    /// The partitions assigned: the shards running and those being
    /// restored.
    pub fn assigned(&self) -> Vec<ShardId> {
        let mut ids = self.held();
        ids.extend(self.restoring.keys().copied());
        ids.sort_unstable();
        ids
    }

    fn topic(&self, t: usize) -> &str {
        &self.topology.topics[t].name
    }

    /// Partitions assigned: their shards start once restored, each in the
    /// state its changelog holds (see [`restore`]); until then their
    /// partitions are paused. Reading starts where the group committed (the
    /// source does that on assignment).
    pub fn assign<S: Source>(&mut self, src: &S, ids: &[ShardId]) -> Result<(), CoordError> {
        for &id in ids {
            if !self.slots.contains_key(&id) {
                // Anything polled under an earlier assignment is stale: the
                // source reads from the committed offset again.
                self.forget_restoring(id);
                self.queue_restore(src, id, Vec::new());
            }
        }
        self.start_restore()
    }

    /// Partitions revoked: what their shards did is committed first (with
    /// everything else), so the next owner starts where this member
    /// stopped; then they stop. Returns the checkpoint's error, after which
    /// the rewind has run (or failed: the error is fatal).
    pub fn revoke<S: Source<Group = P::Group>>(
        &mut self,
        src: &S,
        ids: &[ShardId],
    ) -> Result<(), CoordError> {
        let result = match self.checkpoint(src) {
            Ok(()) => Ok(()),
            Err(e) => self.recover(src, e),
        };
        for id in ids {
            self.drop_shard(*id);
            self.forget_restoring(*id);
        }
        self.publish();
        result
    }

    /// Lets go of every shard without committing (the service stops, or
    /// the member crashed).
    pub fn release_all(&mut self) {
        for id in self.held() {
            self.drop_shard(id);
        }
        self.stop_restores();
        self.publish();
    }

    fn drop_shard(&mut self, id: ShardId) {
        if self.slots.remove(&id).is_some() {
            self.shards.stop(id);
        }
        self.flushed.remove(&id);
        let topic = self.topic(id.0).to_string();
        self.progress
            .partition_figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(topic, id.1));
        if let Some(source) = self.topology.source_id(id.0, id.1) {
            self.marks.remove(&source);
        }
    }

    fn publish(&self) {
        self.progress
            .partitions
            .store(self.slots.len() as u64, Ordering::Relaxed);
    }

    /// One record polled from partition `id`, queued for its shard (handed
    /// over in batches of `batch_size`; kept until it runs if it is being
    /// restored). A record of a partition not held (fetched before its
    /// revocation) is dropped.
    pub fn enqueue<S: Source>(&mut self, src: &S, id: ShardId, record: Record) {
        let batch_size = self.settings.batch_size;
        let Some(slot) = self.slots.get_mut(&id) else {
            self.enqueue_restoring(id, record);
            return;
        };
        slot.polled_to = Some(record.offset + 1);
        slot.building.push(record);
        if slot.building.len() >= batch_size && slot.refused.is_none() {
            let batch = std::mem::take(&mut slot.building);
            self.offer(src, id, batch);
        }
    }

    /// Hands every waiting batch to its shard, pausing partitions whose
    /// shard is full and resuming those that caught up.
    pub fn hand_over<S: Source>(&mut self, src: &S) {
        for id in self.held() {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if let Some(batch) = slot.refused.take() {
                match self.shards.offer(id, batch) {
                    Ok(()) => self.pause(src, id, false),
                    Err(b) => {
                        slot.refused = Some(b);
                        continue;
                    }
                }
            } else if slot.paused {
                self.pause(src, id, false);
            }
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if !slot.building.is_empty() {
                let batch = std::mem::take(&mut slot.building);
                self.offer(src, id, batch);
            }
        }
    }

    fn offer<S: Source>(&mut self, src: &S, id: ShardId, batch: Vec<Record>) {
        let Err(refused) = self.shards.offer(id, batch) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.refused = Some(refused);
        }
        self.progress
            .backpressure_pauses
            .fetch_add(1, Ordering::Relaxed);
        self.pause(src, id, true);
    }

    /// Whether a partition is paused because its shard refused a batch.
    pub fn any_refused(&self) -> bool {
        self.slots.values().any(|s| s.refused.is_some())
    }

    /// Pauses or resumes a partition; one that may still be paused is
    /// resumed again at the next hand-over.
    fn pause<S: Source>(&mut self, src: &S, id: ShardId, pause: bool) {
        let result = src.pause(self.topic(id.0), id.1, pause);
        if let Err(e) = &result {
            tracing::warn!(
                topic = self.topic(id.0),
                partition = id.1,
                pause,
                "cannot pause/resume: {e}"
            );
        }
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.paused = pause || result.is_err();
        }
    }

    /// Moves every shard to `rules`, right after a committed checkpoint so
    /// that the next one carries the migrated state. Refused (logged) when
    /// the new rules need other topics than the running ones.
    pub fn swap_rules(&mut self, rules: Arc<RuleSet>) {
        let _span = tracing::info_span!("tripline.rules.reload").entered();
        let hash = rules.def.hash;
        let s = &self.settings;
        let wanted = Topology::input_topics(&rules, &s.input_topic);
        let inputs: Option<Vec<SourceTopic>> = wanted
            .iter()
            .map(|name| {
                self.topology
                    .inputs
                    .iter()
                    .find(|t| &t.name == name)
                    .cloned()
            })
            .collect();
        let Some(inputs) = inputs else {
            let running: Vec<&str> = self
                .topology
                .inputs
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            let reason = format!(
                "its streams are read from other topics (running: {running:?}, new: {wanted:?}); \
                 restart the service to apply it"
            );
            self.refuse_rules(hash, reason);
            return;
        };
        let topology = match Topology::with_inputs(&s.group, rules, inputs) {
            Ok(t) => t,
            Err(e) => {
                self.refuse_rules(hash, e.to_string());
                return;
            }
        };
        let names = |t: &Topology| -> Vec<String> {
            t.topics
                .iter()
                .map(|p| format!("{} {}", p.name, p.changelog))
                .collect()
        };
        if names(&topology) != names(&self.topology) {
            let reason = format!(
                "it keys rules by other fields, which needs other internal topics \
                 (running: {:?}, new: {:?}); restart the service to apply it",
                self.topology.internal().collect::<Vec<_>>(),
                topology.internal().collect::<Vec<_>>(),
            );
            self.refuse_rules(hash, reason);
            return;
        }
        if topology.rules.def.tables != self.topology.rules.def.tables {
            let names = |t: &Topology| -> Vec<String> {
                t.rules
                    .def
                    .tables
                    .iter()
                    .map(|d| format!("{} (topic {})", d.spec.name, d.topic))
                    .collect()
            };
            let reason = format!(
                "it declares other tables, whose topics the service reads from its start                  (running: {:?}, new: {:?}); restart the service to apply it",
                names(&self.topology),
                names(&topology),
            );
            self.refuse_rules(hash, reason);
            return;
        }
        if topology.rules.def.hash == self.topology.rules.def.hash {
            return;
        }
        for id in self.held() {
            let plan = &topology.topics[id.0];
            self.shards
                .reload(id, topology.rules.clone(), plan.rules.clone());
        }
        self.observer.rules_reloaded(&RulesReload::Applied {
            rules: topology.rules.rules.len(),
            hash: topology.rules.def.hash,
        });
        self.progress
            .rules_hash
            .store(topology.rules.def.hash, Ordering::SeqCst);
        self.progress.rule_reloads.fetch_add(1, Ordering::Relaxed);
        *self
            .progress
            .refused_rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.topology = Arc::new(topology);
    }

    /// Logs and counts a refused rule set, and keeps why for the API.
    fn refuse_rules(&self, hash: u64, reason: String) {
        self.observer
            .rules_reloaded(&RulesReload::Refused { reason: &reason });
        self.progress
            .rule_reloads_refused
            .fetch_add(1, Ordering::Relaxed);
        *self
            .progress
            .refused_rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((hash, reason));
    }
}
