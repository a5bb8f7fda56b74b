//! The running service: a consumer-group member that routes each input
//! partition's records to its [`Shard`] actor and commits, every checkpoint
//! interval, one Kafka transaction holding the alerts, the dead letters and
//! the input offsets of the interval.
//!
//! # Exactly once
//!
//! Each checkpoint sends a [`Barrier`] to every shard; it queues behind the
//! records already handed over, so each answer is a consistent cut (outputs
//! and the offset they cover). The coordinator then produces the outputs in
//! a transaction, adds the offsets with `send_offsets_to_transaction` (the
//! group's generation fences a member that lost its partitions), and
//! commits. A transaction that fails is aborted and every shard is rewound:
//! its engine starts again from its last committed state and its partition
//! is re-read from the last committed offset, so nothing is lost and
//! nothing is produced twice.
//!
//! A commit waits until the brokers have acknowledged every record of its
//! transaction, and an alert is visible only after it. So that the commit
//! does not wait for a whole interval's records, a [`Barrier::Flush`] a little
//! before each barrier (`FLUSH_LEAD`) takes the shards' output so far and
//! produces it into the open transaction; the barrier then brings only the
//! last few milliseconds' records (an alert's latency is the interval plus
//! that short wait, not plus a round of produce requests).
//!
//! On revocation the coordinator checkpoints before letting go, so the next
//! owner starts exactly where this member stopped.
//!
//! # Threads
//!
//! The coordinator runs on a blocking thread (the Kafka client calls it
//! makes block); shards run on `runtime.shard_threads` actix arbiters.
//! Backpressure: when a shard's mailbox is full its partition is paused
//! until the shard catches up, so memory stays bounded.
//!
//! # State
//!
//! Each shard's state changes go to its partition of the topic's changelog
//! in the same transaction; a shard that starts (assigned, or rewound)
//! rebuilds its keys from the changelog (with a data directory, from the
//! local copy and the changelog's tail).

use super::identity::{Identity, IdentityError};
use super::topology::Topology;
use super::{ToTheEnd, client_config, ensure_topics, ensure_topics_with, partition_counts};
use crate::adapters::local::{LocalError, LocalState, Position, ShardStore};
use crate::config::Config;
use crate::engine::RuleSet;
use crate::runtime::{
    Barrier, DeadLetter, DeadLetterKind, KeyQuery, OutRecord, Persisted, Record, Records, Reload,
    Shard, ShardOutput, WatermarkMark, check_entry,
};
use crate::state::{MemoryStore, SnapshotError, StateStore};
use crate::telemetry::events::{
    AlertCommit, CheckpointCommitted, CheckpointFailed, PartitionCommit, RulesReload,
};
use crate::telemetry::{self, PartitionFigures, ServiceFigures};
use actix::dev::SendError;
use actix::{Actor, Addr, Arbiter, ArbiterHandle};
use futures::executor::block_on;
use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Checkpoints failing in a row that make the service not ready: one is a
/// hiccup the rewind repairs, three mean nothing commits.
const FAILURES_NOT_READY: u64 = 3;

/// How long one transactional call (init, offsets, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// Records polled before the coordinator looks at its clock again.
const POLL_BURST: usize = 4096;
/// How long reading the changelogs of newly assigned partitions may go
/// without a record or a partition's end (however long the whole read).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(50);
/// How often restore progress is logged.
const RESTORE_LOG_EVERY: Duration = Duration::from_secs(5);
/// The header that marks a watermark record in an internal topic.
const MARK_HEADER: &str = "tripline.watermark";
/// The W3C trace context header, read from input records and written on
/// the alerts of traced ones.
const TRACEPARENT: &str = "traceparent";
/// How long before a checkpoint the shards' output so far is produced into
/// the transaction (at most a quarter of the interval).
const FLUSH_LEAD: Duration = Duration::from_millis(20);

/// The transactional producer. The coordinator serves its delivery reports
/// itself before each commit (see [`deliver_all`]).
type TxProducer = BaseProducer<Deliveries>;

/// The transactional producer's delivery reports: for each shard of the
/// transaction in flight, the offset after its last changelog record, which
/// the local state records as the changelog position it includes. A
/// changelog record's opaque is its shard's [`changelog_opaque`]; 0 marks
/// records that are not state.
#[derive(Default)]
pub struct Deliveries {
    changelog_ends: Mutex<BTreeMap<ShardId, i64>>,
}

/// The delivery opaque of shard `id`'s changelog records (never 0).
fn changelog_opaque((t, p): ShardId) -> usize {
    ((t << 32) | p as u32 as usize) + 1
}

impl Deliveries {
    /// The ends recorded since the last call, by shard.
    fn take(&self) -> BTreeMap<ShardId, i64> {
        std::mem::take(
            &mut *self
                .changelog_ends
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if opaque == 0 {
            return;
        }
        let id = ((opaque - 1) >> 32, (opaque - 1) as u32 as i32);
        if let Ok(m) = result {
            let mut ends = self
                .changelog_ends
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let end = ends.entry(id).or_insert(-1);
            *end = (*end).max(m.offset() + 1);
        }
    }
}

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A Kafka client call failed in a way that cannot be retried.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The input topic does not exist.
    #[error("input topic `{0}` does not exist")]
    NoInputTopic(String),
    /// The rules cannot run partitioned by key.
    #[error("{0}")]
    Unpartitionable(String),
    /// A shard stopped answering (its thread died).
    #[error("shard of partition {0} is gone")]
    ShardGone(i32),
    /// A changelog could not be read to its end in time.
    #[error("restoring state from `{0}` timed out")]
    Restore(String),
    /// The local state could not be opened or read.
    #[error("{0}")]
    Local(#[from] LocalError),
    /// Stored state could not be read or written.
    #[error("state: {0}")]
    State(#[from] SnapshotError),
    /// A shard could not read a passivated key's state back.
    #[error("{topic}/{partition}: passivated state unreadable: {error}")]
    PassivatedState {
        /// The shard's topic.
        topic: String,
        /// The shard's partition.
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
    /// The transactional producer's identity could not be set up.
    #[error("producer identity: {0}")]
    Identity(#[from] IdentityError),
    /// The service thread could not start or panicked.
    #[error("service thread: {0}")]
    Thread(String),
}

/// Counters, updated as transactions commit.
#[derive(Debug, Default)]
pub struct Progress {
    /// Input records whose offsets have been committed.
    pub records: AtomicU64,
    /// Events committed to internal topics (for rules keyed by other fields).
    pub forwarded: AtomicU64,
    /// Events of internal topics whose offsets have been committed.
    pub internal_events: AtomicU64,
    /// Alerts committed.
    pub alerts: AtomicU64,
    /// Dead letters committed.
    pub dead_letters: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Transactions aborted (each followed by a rewind).
    pub aborts: AtomicU64,
    /// The last rule set the service refused to swap in, and why (cleared
    /// when one is applied).
    pub refused_rules: std::sync::Mutex<Option<(u64, String)>>,
    /// Checkpoints failed since the last one that committed.
    pub failed_in_a_row: AtomicU64,
    /// Why the latest checkpoint failed, while they fail.
    pub last_failure: std::sync::Mutex<Option<String>>,
    /// Partitions currently assigned.
    pub partitions: AtomicU64,
    /// Shards whose stored state could not be restored (they started empty).
    pub restore_failures: AtomicU64,
    /// Rule sets swapped in while running.
    pub rule_reloads: AtomicU64,
    /// Rule sets refused while running (they change what topics exist).
    pub rule_reloads_refused: AtomicU64,
    /// The hash of the rule set running.
    pub rules_hash: AtomicU64,
    /// Keys whose state is in memory, at the last checkpoint.
    pub resident_keys: AtomicU64,
    /// Keys passivated (state only in the data directory), at the last
    /// checkpoint.
    pub passivated_keys: AtomicU64,
    /// The estimate of the memory resident keys hold, at the last
    /// checkpoint.
    pub resident_bytes: AtomicU64,
    /// Passivated keys read back so far (by this process's current shards).
    pub key_loads: AtomicU64,
    /// Changelog records read to restore state, since the process started.
    pub restored_records: AtomicU64,
    /// Changelog partitions being read now (0 when no restore runs).
    pub restoring_partitions: AtomicU64,
    /// Partitions paused because their shard's mailbox was full.
    pub backpressure_pauses: AtomicU64,
    /// Time spent in checkpoints, in microseconds: waiting for the shards
    /// to reach the barrier, then the transaction.
    pub checkpoint_micros: AtomicU64,
    /// Of that, waiting for the shards.
    pub barrier_micros: AtomicU64,
    /// Per partition held: consumer lag and watermark, for telemetry.
    pub partition_figures: Mutex<BTreeMap<(String, i32), PartitionFigures>>,
}

impl Progress {
    /// The figures telemetry reads.
    pub fn figures(&self) -> ServiceFigures {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServiceFigures {
            partitions_assigned: get(&self.partitions),
            partitions_restoring: get(&self.restoring_partitions),
            keys_resident: get(&self.resident_keys),
            keys_passivated: get(&self.passivated_keys),
            state_bytes: get(&self.resident_bytes),
            backpressure_pauses: get(&self.backpressure_pauses),
            checkpoints_failed_in_a_row: get(&self.failed_in_a_row),
            partitions: self
                .partition_figures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect(),
        }
    }

    fn with_partition(&self, topic: &str, partition: i32, f: impl FnOnce(&mut PartitionFigures)) {
        let mut map = self
            .partition_figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = map
            .entry((topic.to_string(), partition))
            .or_insert_with(|| PartitionFigures {
                topic: topic.to_string(),
                partition,
                end_offset: None,
                fetched_all: false,
                committed_offset: None,
                all_committed: false,
                watermark_ms: None,
                partial_matches: None,
            });
        f(entry);
    }

    /// Ready to answer: it holds partitions and restores none (and why
    /// not, or what it holds).
    pub fn readiness(&self) -> (bool, String) {
        let (held, restoring) = (
            self.partitions.load(Ordering::Relaxed),
            self.restoring_partitions.load(Ordering::Relaxed),
        );
        let failed = self.failed_in_a_row.load(Ordering::Relaxed);
        if failed >= FAILURES_NOT_READY {
            let why = self
                .last_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_default();
            return (
                false,
                format!("{failed} checkpoints in a row failed, nothing commits: {why}"),
            );
        }
        (
            held > 0 && restoring == 0,
            format!("{held} partition(s) held, {restoring} restoring"),
        )
    }

    /// A checkpoint failed (`Some(why)`) or committed (`None`).
    fn checkpoint_outcome(&self, failure: Option<String>) {
        match &failure {
            Some(_) => self.failed_in_a_row.fetch_add(1, Ordering::Relaxed),
            None => self.failed_in_a_row.swap(0, Ordering::Relaxed),
        };
        *self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
    }

    /// Whether `produced` input records, and every event forwarded for
    /// rules keyed by other fields, have been committed.
    pub fn caught_up(&self, produced: u64) -> bool {
        self.records.load(Ordering::SeqCst) >= produced
            && self.internal_events.load(Ordering::SeqCst) >= self.forwarded.load(Ordering::SeqCst)
    }
}

/// The shards this process runs, for queries from outside the coordinator
/// (the REST API reads key state through it).
pub struct ShardDirectory {
    shards: std::sync::RwLock<Vec<(ShardId, Addr<Shard>)>>,
    input_partitions: i32,
}

impl ShardDirectory {
    /// Partitions of the input topic.
    pub fn input_partitions(&self) -> i32 {
        self.input_partitions
    }

    /// Whether a shard of this instance holds `partition` of the input topic.
    pub fn holds_input(&self, partition: i32) -> bool {
        self.shards
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|(id, _)| *id == (0, partition))
    }

    /// One key's live state in whichever local shard holds it (each shard
    /// answers for the keys of its partition; a key lives in one).
    pub async fn key_view(&self, key: String) -> Result<Vec<serde_json::Value>, String> {
        let shards = self
            .shards
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let answers = join_all(shards.iter().map(|(_, a)| a.send(KeyQuery(key.clone())))).await;
        let mut found = Vec::new();
        for a in answers {
            found.extend(a.map_err(|e| format!("a shard did not answer: {e}"))?);
        }
        Ok(found)
    }
}

/// A running service.
pub struct ServiceHandle {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    pending_rules: PendingRules,
    directory: Arc<ShardDirectory>,
    thread: JoinHandle<Result<(), ServiceError>>,
}

/// A rule set waiting for the next checkpoint boundary.
type PendingRules = Arc<Mutex<Option<Arc<RuleSet>>>>;

impl ServiceHandle {
    /// Runs `rules` from the next checkpoint boundary on (already checked
    /// and compiled: a rule set with errors never gets here). Each shard
    /// migrates its state rule by rule and logs what it kept and reset (see
    /// [`crate::engine::Engine::migrate`]). A rule set whose rules are keyed
    /// by other fields than the running one's needs other internal topics:
    /// it is refused with an error in the log, and the running rules stay.
    /// A later call before the boundary replaces an earlier one.
    pub fn reload(&self, rules: Arc<RuleSet>) {
        *self
            .pending_rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rules);
    }

    /// Counters.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// The local shards, for key queries.
    pub fn directory(&self) -> &Arc<ShardDirectory> {
        &self.directory
    }

    /// Hands rule sets to the service from elsewhere (the REST API), as
    /// [`ServiceHandle::reload`] does.
    pub fn reloader(&self) -> impl Fn(Arc<RuleSet>) + Send + Sync + 'static {
        let pending = self.pending_rules.clone();
        move |rules| {
            *pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rules);
        }
    }

    /// Asks the service to stop: it commits what it has processed, leaves
    /// the group and returns from [`ServiceHandle::join`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the service thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the service to end.
    pub fn join(self) -> Result<(), ServiceError> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(ServiceError::Thread("panicked".into())))
    }
}

/// Starts the service on its own threads.
pub fn start(
    config: Config,
    brokers: String,
    rules: Arc<RuleSet>,
) -> Result<ServiceHandle, ServiceError> {
    let k = &config.kafka;
    ensure_topics(
        k,
        &brokers,
        &[&k.alerts_topic, &k.dead_letter_topic],
        k.partitions,
    )?;
    let Some(sources) = partition_counts(k, &brokers, &[&k.input_topic])?[0] else {
        return Err(ServiceError::NoInputTopic(k.input_topic.clone()));
    };
    let topology = Topology::new(&config, rules, sources).map_err(ServiceError::Unpartitionable)?;
    let internal: Vec<&str> = topology.internal().collect();
    // Internal topics have the input's partition count, so one key field's
    // events spread as widely as the input's.
    ensure_topics(k, &brokers, &internal, sources as i32)?;
    let changelogs: Vec<&str> = topology.changelogs().collect();
    ensure_topics_with(
        k,
        &brokers,
        &changelogs,
        sources as i32,
        &[("cleanup.policy", "compact")],
    )?;
    let topology = Arc::new(topology);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    progress
        .rules_hash
        .store(topology.rules.def.hash, Ordering::SeqCst);
    let pending_rules = PendingRules::default();
    let directory = Arc::new(ShardDirectory {
        shards: Default::default(),
        input_partitions: sources as i32,
    });
    let shared = Shared {
        stop: stop.clone(),
        progress: progress.clone(),
        pending_rules: pending_rules.clone(),
        directory: directory.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("tripline-service".into())
        .spawn(move || run(config, brokers, topology, shared))
        .map_err(|e| ServiceError::Thread(e.to_string()))?;
    Ok(ServiceHandle {
        stop,
        progress,
        pending_rules,
        directory,
        thread,
    })
}

/// What the service thread shares with its handle.
struct Shared {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    directory: Arc<ShardDirectory>,
    pending_rules: PendingRules,
}

fn run(
    config: Config,
    brokers: String,
    topology: Arc<Topology>,
    shared: Shared,
) -> Result<(), ServiceError> {
    let system = actix::System::new();
    system.block_on(async move {
        let threads = match config.runtime.shard_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
        let handles: Vec<ArbiterHandle> = arbiters.iter().map(|a| a.handle()).collect();
        let result = tokio::task::spawn_blocking(move || {
            coordinate(config, brokers, topology, handles, shared)
        })
        .await
        .unwrap_or_else(|e| Err(ServiceError::Thread(e.to_string())));
        for a in arbiters {
            a.stop();
            a.join().ok();
        }
        result
    })
}

/// A shard's topic (index into the topology) and partition.
type ShardId = (usize, i32);

/// What reading a changelog finds, for the caller to apply.
/// One changelog record: a key and its new value (`None`: deleted).
type ChangelogRecord = (Vec<u8>, Option<Vec<u8>>);

enum Restore {
    /// The recorded position is not in the log (the topic was recreated or
    /// truncated): drop what the shard has, the log is read whole.
    Reset(ShardId),
    /// Changelog records, in order: puts and deletes.
    Apply(ShardId, Vec<ChangelogRecord>),
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

/// One shard and what the coordinator holds for it.
struct Slot {
    addr: Addr<Shard>,
    /// Records polled but not yet handed over.
    building: Vec<Record>,
    /// A batch the shard's full mailbox refused; its partition is paused.
    refused: Option<Vec<Record>>,
    /// Where its committed changes are copied, with a data directory.
    store: Option<ShardStore>,
    /// What that copy covers.
    position: Position,
    /// The offset after the last record polled (`None`: none yet).
    polled_to: Option<i64>,
}

struct Coordinator {
    config: Config,
    brokers: String,
    topology: Arc<Topology>,
    producer: TxProducer,
    /// Gives a new producer after an abort (see [`super::identity`]).
    identity: Identity,
    /// The data directory's database, if one is configured.
    local: Option<LocalState>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    shards: BTreeMap<ShardId, Slot>,
    /// Per source partition this member owns: the last mark written to the
    /// internal topics, and when it last had input.
    marks: BTreeMap<i32, (Option<WatermarkMark>, Instant)>,
    progress: Arc<Progress>,
    /// An error raised inside a rebalance callback, for the main loop.
    failed: Option<ServiceError>,
    /// A transaction has begun and not yet committed or aborted.
    txn_open: bool,
    /// The outputs produced into the open transaction ahead of its
    /// checkpoint (see `Coordinator::flush`).
    flushed: BTreeMap<ShardId, ShardOutput>,
    /// Where the shards are published for queries.
    directory: Arc<ShardDirectory>,
}

struct Ctx {
    inner: Arc<Mutex<Coordinator>>,
    /// Apart from `inner`: statistics arrive while it may be locked.
    progress: Arc<Progress>,
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let progress = &self.progress;
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // librdkafka's own lag counts from offsets it committed
                // itself, and these are committed by the transactional
                // producer: the lag is the partition's end (the last
                // stable offset, for read_committed) minus the position
                // the last checkpoint committed. Its "unassigned"
                // partition (-1) and unknown ends (-1) are left out.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if *id >= 0 && end >= 0 {
                    progress.with_partition(name, *id, |f| {
                        f.end_offset = Some(end);
                        f.fetched_all = p.next_offset >= end;
                        // Until this process commits, the group's offset
                        // as fetched at assignment.
                        if f.committed_offset.is_none() && p.committed_offset >= 0 {
                            f.committed_offset = Some(p.committed_offset);
                        }
                    });
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Ctx>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut c = lock(&self.inner);
            // Commit what the revoked shards did before another member takes over.
            if let Err(e) = c.checkpoint(consumer) {
                c.recover(consumer, e);
            }
            for e in tpl.elements() {
                c.progress
                    .partition_figures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&(e.topic().to_string(), e.partition()));
                if let Some(t) = c.topology.index(e.topic()) {
                    c.shards.remove(&(t, e.partition()));
                    if t == 0 {
                        c.marks.remove(&e.partition());
                    }
                }
            }
            c.publish_shards();
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Ctx>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut c = lock(&self.inner);
            let ids: Vec<ShardId> = tpl
                .elements()
                .iter()
                .filter_map(|e| Some((c.topology.index(e.topic())?, e.partition())))
                .collect();
            if let Err(e) = c.start_shards(&ids) {
                c.failed = Some(e);
            }
            c.publish_shards();
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

fn lock(m: &Mutex<Coordinator>) -> MutexGuard<'_, Coordinator> {
    // A panic elsewhere cannot leave the coordinator half-updated in a way
    // that matters: every checkpoint starts from the shards' own state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn coordinate(
    config: Config,
    brokers: String,
    topology: Arc<Topology>,
    arbiters: Vec<ArbiterHandle>,
    shared: Shared,
) -> Result<(), ServiceError> {
    let Shared {
        stop,
        progress,
        pending_rules,
        directory,
    } = shared;
    let k = &config.kafka;
    let instance = super::instance_name(k);
    // Fence before joining the group: whatever the previous process of this
    // instance left open is aborted before anyone reads past it.
    let mut identity = Identity::open(k, &brokers, &instance)?;
    identity.fence_previous()?;
    let producer = identity.next_producer()?;
    let local = if config.state.dir.as_os_str().is_empty() {
        None
    } else {
        Some(LocalState::open(&config.state.dir)?)
    };
    let progress_for_stats = progress.clone();
    let inner = Arc::new(Mutex::new(Coordinator {
        config: config.clone(),
        brokers: brokers.clone(),
        topology: topology.clone(),
        producer,
        identity,
        local,
        arbiters,
        next_arbiter: 0,
        shards: BTreeMap::new(),
        marks: BTreeMap::new(),
        txn_open: false,
        flushed: BTreeMap::new(),
        progress,
        failed: None,
        directory,
    }));
    let mut consumer_config = super::group_member_config(k, &brokers, &k.group_id);
    // Other instances find this one's REST API through the group (owners.rs).
    let base_id = k.client.get("client.id").map_or("tripline", String::as_str);
    consumer_config.set(
        "client.id",
        super::owners::client_id(base_id, &config.api.advertise),
    );
    if !k.client.contains_key("statistics.interval.ms") {
        // Consumer lag per partition, for telemetry.
        consumer_config.set("statistics.interval.ms", "5000");
    }
    if !k.client.contains_key("fetch.queue.backoff.ms") {
        // librdkafka stops fetching a partition for this long when its local
        // queue was over the thresholds at the last fetch (default 1 s): the
        // coordinator drains the queue in milliseconds, after which the
        // partition would sit idle for the rest of the second (the service
        // bench went from 33 % to 61 % of a no-op consumer's rate; see
        // docs/performance.md).
        consumer_config.set("fetch.queue.backoff.ms", "10");
    }
    if !k.client.contains_key("fetch.wait.max.ms") {
        // The broker answers a fetch at once when records are there; when
        // none are, it waits this long, which an alert may then wait too.
        consumer_config.set("fetch.wait.max.ms", "10");
    }
    let consumer: BaseConsumer<Ctx> = consumer_config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", k.max_poll_interval_ms.to_string())
        .create_with_context(Ctx {
            inner: inner.clone(),
            progress: progress_for_stats,
        })?;
    let topics: Vec<&str> = topology.topics.iter().map(|t| t.name.as_str()).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(topic = %k.input_topic, group = %k.group_id, %instance, "service started");

    let interval = Duration::from_millis(config.checkpoint.interval_ms);
    let lead = FLUSH_LEAD.min(interval / 4);
    let mut next_checkpoint = now() + interval;
    let mut flushed = false;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break lock(&inner).checkpoint(&consumer);
        }
        let next = if flushed {
            next_checkpoint
        } else {
            next_checkpoint - lead
        };
        // A paused partition resumes once its shard takes the refused
        // batch: look again soon rather than after a whole poll.
        let longest = if lock(&inner).any_refused() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(50)
        };
        let mut timeout = next.saturating_duration_since(now()).min(longest);
        let mut polled = 0;
        while polled < POLL_BURST {
            let Some(msg) = consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            polled += 1;
            match msg {
                Ok(m) => {
                    let Some(t) = topology.index(m.topic()) else {
                        continue;
                    };
                    let mut record = Record::data(
                        m.offset(),
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                    );
                    if t > 0 {
                        record.mark = read_mark(&m);
                    }
                    record.timestamp_ms = m.timestamp().to_millis();
                    if telemetry::tracing_enabled() {
                        record.span = telemetry::event_span(
                            header(&m, TRACEPARENT),
                            m.topic(),
                            m.partition(),
                            m.offset(),
                        );
                    }
                    lock(&inner).enqueue(&consumer, (t, m.partition()), record);
                }
                Err(e) => tracing::warn!("consumer: {e}"),
            }
        }
        let mut c = lock(&inner);
        if let Some(e) = c.failed.take() {
            break Err(e);
        }
        c.hand_over(&consumer);
        if !flushed && now() >= next_checkpoint - lead {
            flushed = true;
            if let Err(e) = c.timed(|c| c.flush(&consumer)) {
                c.recover(&consumer, e);
                if let Some(e) = c.failed.take() {
                    break Err(e);
                }
            }
        }
        if now() >= next_checkpoint {
            next_checkpoint = now() + interval;
            flushed = false;
            match c.checkpoint(&consumer) {
                Ok(()) => {
                    let rules = pending_rules
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                    if let Some(rules) = rules {
                        c.swap_rules(rules);
                    }
                }
                Err(e) => {
                    c.recover(&consumer, e);
                    if let Some(e) = c.failed.take() {
                        break Err(e);
                    }
                }
            }
        }
    };
    // Leave the group before dropping the consumer: a subscribed consumer
    // that is dropped can hang in its destructor.
    consumer.unsubscribe();
    {
        let mut c = lock(&inner);
        c.shards.clear();
        c.publish_shards();
    }
    drop(consumer);
    tracing::info!("service stopped");
    result
}

impl Coordinator {
    /// Publishes the shards held now (count and addresses).
    fn publish_shards(&self) {
        self.progress
            .partitions
            .store(self.shards.len() as u64, Ordering::Relaxed);
        *self
            .directory
            .shards
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self
            .shards
            .iter()
            .map(|(id, s)| (*id, s.addr.clone()))
            .collect();
    }

    /// Moves every shard to `rules`, right after a committed checkpoint so
    /// that the next one carries the migrated state. Refused (logged) when
    /// the new rules need other topics than the running ones.
    fn swap_rules(&mut self, rules: Arc<RuleSet>) {
        let _span = telemetry::events::reload_span().entered();
        let hash = rules.def.hash;
        let topology = match Topology::new(&self.config, rules, self.topology.sources) {
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
        if topology.rules.def.hash == self.topology.rules.def.hash {
            return;
        }
        for (id, slot) in &self.shards {
            let plan = &topology.topics[id.0];
            // Past the mailbox bound on purpose: the swap must not wait
            // behind a full mailbox, and it is one message per shard.
            slot.addr
                .do_send(Reload(topology.rules.clone(), plan.rules.clone()));
        }
        RulesReload::Applied {
            rules: topology.rules.rules.len(),
            hash: topology.rules.def.hash,
        }
        .emit();
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
        RulesReload::Refused { reason: &reason }.emit();
        self.progress
            .rule_reloads_refused
            .fetch_add(1, Ordering::Relaxed);
        *self
            .progress
            .refused_rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((hash, reason));
    }

    fn topic(&self, t: usize) -> &str {
        &self.topology.topics[t].name
    }

    /// Starts the shards of `ids`, each in the state its changelog holds:
    /// read whole into memory, or, with a data directory, the changelog's
    /// tail applied to the local copy.
    fn start_shards(&mut self, ids: &[ShardId]) -> Result<(), ServiceError> {
        let Some(local) = self.local.clone() else {
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
            return Ok(());
        };
        let mut stores = BTreeMap::new();
        let mut starts = BTreeMap::new();
        for &id in ids {
            let mut store = local.shard(self.topic(id.0), id.1)?;
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

    /// Applies each shard's changelog, from its recorded position (or the
    /// beginning), to its local store, and records the new position.
    fn restore_local(
        &self,
        stores: &mut BTreeMap<ShardId, ShardStore>,
        starts: &BTreeMap<ShardId, Position>,
    ) -> Result<(), ServiceError> {
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

    /// Each shard's share of the memory budget, with `more` shards about
    /// to start besides the running ones.
    fn shard_budget(&self, more: usize) -> usize {
        let total = self.config.state.memory_budget_mb.saturating_mul(1 << 20);
        total / (self.shards.len() + more).max(1)
    }

    /// The shard with passivation to its local `store`, if it has one and a
    /// budget is set.
    fn passivating(&self, shard: Shard, store: Option<&ShardStore>, more: usize) -> Shard {
        match store {
            Some(store) if self.config.state.memory_budget_mb > 0 => {
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
        .with_output_limit(super::output_limit(&self.config.kafka))
    }

    /// Starts a shard in the state `state` holds (empty if it cannot be
    /// restored); `store`, if any, is where its committed changes go.
    fn start_shard(
        &mut self,
        id: ShardId,
        state: &impl StateStore,
        store: Option<ShardStore>,
        position: Position,
    ) {
        let plan = &self.topology.topics[id.0];
        let shard = match self
            .passivating(self.new_shard(id), store.as_ref(), 1)
            .restored(state)
        {
            Ok(s) => s,
            Err(e) => {
                // The rules changed since the state was written, or it is
                // damaged: its keys start afresh, loudly.
                tracing::error!(topic = %plan.name, partition = id.1, "cannot restore state, starting empty: {e}");
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
        store: Option<ShardStore>,
        position: Position,
    ) {
        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
        self.next_arbiter += 1;
        let capacity = self.config.runtime.max_queued_batches;
        let addr = Shard::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            shard
        });
        self.shards.insert(
            id,
            Slot {
                addr,
                building: Vec::new(),
                refused: None,
                store,
                position,
                polled_to: None,
            },
        );
        if id.0 == 0 {
            self.marks.insert(id.1, (None, now()));
        }
    }

    /// Reads the changelog partitions of `ids` to their ends (committed
    /// records only), each from its offset in `from` (absent, or no longer
    /// in the log: from the beginning, announced by [`Restore::Reset`]).
    fn read_changelogs(
        &self,
        ids: &[ShardId],
        from: &BTreeMap<ShardId, i64>,
        sink: &mut dyn FnMut(Restore) -> Result<(), ServiceError>,
    ) -> Result<(), ServiceError> {
        const BATCH: usize = 4096;
        for (t, plan) in self.topology.topics.iter().enumerate() {
            let partitions: Vec<i32> = ids.iter().filter(|i| i.0 == t).map(|i| i.1).collect();
            if partitions.is_empty() {
                continue;
            }
            // End-of-partition events carry no topic, so one reader per topic.
            let reader: BaseConsumer<ToTheEnd> = client_config(&self.config.kafka, &self.brokers)
                .set(
                    "group.id",
                    format!("{}-restore", self.config.kafka.group_id),
                )
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "true")
                .create_with_context(ToTheEnd)?;
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                let start = match from.get(&(t, p)) {
                    None => Offset::Beginning,
                    Some(&x) => {
                        let (lo, hi) = reader.fetch_watermarks(&plan.changelog, p, TXN_TIMEOUT)?;
                        if (lo..=hi).contains(&x) {
                            Offset::Offset(x)
                        } else {
                            sink(Restore::Reset((t, p)))?;
                            Offset::Beginning
                        }
                    }
                };
                tpl.add_partition_offset(&plan.changelog, p, start)?;
            }
            reader.assign(&tpl)?;
            let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
            let mut pending: BTreeMap<i32, Vec<ChangelogRecord>> = BTreeMap::new();
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
            for &p in &open {
                let (_, hi) = reader.fetch_watermarks(&plan.changelog, p, TXN_TIMEOUT)?;
                ends.insert(p, hi);
            }
            let progress = &self.progress;
            let mut restoring = Restoring::new(&progress.restoring_partitions, open.len());
            let mut read = 0u64;
            let mut last_news = now();
            let mut last_log = now();
            while !open.is_empty() {
                if last_news.elapsed() > RESTORE_TIMEOUT {
                    return Err(ServiceError::Restore(plan.changelog.clone()));
                }
                if last_log.elapsed() > RESTORE_LOG_EVERY {
                    last_log = now();
                    // Offsets left up to each open partition's end when the read began
                    // (transaction markers and compaction make it approximate).
                    let left: i64 = open
                        .iter()
                        .map(|p| {
                            let at = next.get(p).or_else(|| from.get(&(t, *p))).copied();
                            (ends.get(p).copied().unwrap_or(0) - at.unwrap_or(0)).max(0)
                        })
                        .sum();
                    tracing::info!(
                        changelog = %plan.changelog,
                        partitions = open.len(),
                        records = read,
                        offsets_left = left,
                        "restoring state"
                    );
                }
                match reader.poll(Duration::from_millis(100)) {
                    None => {}
                    Some(Err(KafkaError::PartitionEOF(p))) if open.remove(&p) => {
                        last_news = now();
                        restoring.done(1);
                        if let Some(batch) = pending.remove(&p) {
                            sink(Restore::Apply((t, p), batch))?;
                        }
                        let position = reader
                            .position()
                            .ok()
                            .and_then(|tpl| {
                                tpl.find_partition(&plan.changelog, p)
                                    .and_then(|e| e.offset().to_raw())
                            })
                            .filter(|o| *o >= 0);
                        let end = position
                            .or_else(|| next.get(&p).copied())
                            .or_else(|| from.get(&(t, p)).copied())
                            .unwrap_or(0);
                        sink(Restore::End((t, p), end))?;
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(m)) => {
                        let p = m.partition();
                        next.insert(p, m.offset() + 1);
                        last_news = now();
                        read += 1;
                        progress.restored_records.fetch_add(1, Ordering::Relaxed);
                        let Some(key) = m.key() else { continue };
                        if let Some(value) = m.payload()
                            && let Err(error) = check_entry(key, value)
                        {
                            return Err(ServiceError::CorruptChangelog {
                                topic: plan.changelog.clone(),
                                partition: p,
                                offset: m.offset(),
                                error,
                            });
                        }
                        let batch = pending.entry(p).or_default();
                        batch.push((key.to_vec(), m.payload().map(<[u8]>::to_vec)));
                        if batch.len() >= BATCH {
                            let batch = std::mem::take(batch);
                            sink(Restore::Apply((t, p), batch))?;
                        }
                    }
                }
            }
            reader.unassign()?;
        }
        Ok(())
    }

    fn enqueue(&mut self, consumer: &BaseConsumer<Ctx>, id: ShardId, record: Record) {
        let batch_size = self.config.runtime.batch_size;
        let Some(slot) = self.shards.get_mut(&id) else {
            // A record fetched before its partition was revoked.
            return;
        };
        slot.polled_to = Some(record.offset + 1);
        slot.building.push(record);
        if slot.building.len() >= batch_size && slot.refused.is_none() {
            let batch = std::mem::take(&mut slot.building);
            self.offer(consumer, id, batch);
        }
    }

    /// Hands every waiting batch to its shard, pausing partitions whose
    /// shard is full and resuming those that caught up.
    fn hand_over(&mut self, consumer: &BaseConsumer<Ctx>) {
        let ids: Vec<ShardId> = self.shards.keys().copied().collect();
        for id in ids {
            let Some(slot) = self.shards.get_mut(&id) else {
                continue;
            };
            if let Some(batch) = slot.refused.take() {
                match slot.addr.try_send(Records(batch)) {
                    Ok(()) => self.pause(consumer, id, false),
                    Err(SendError::Full(Records(b)) | SendError::Closed(Records(b))) => {
                        slot.refused = Some(b);
                        continue;
                    }
                }
            }
            let Some(slot) = self.shards.get_mut(&id) else {
                continue;
            };
            if !slot.building.is_empty() {
                let batch = std::mem::take(&mut slot.building);
                self.offer(consumer, id, batch);
            }
        }
    }

    fn offer(&mut self, consumer: &BaseConsumer<Ctx>, id: ShardId, batch: Vec<Record>) {
        let Some(slot) = self.shards.get_mut(&id) else {
            return;
        };
        // A fetch response lands as one burst: a shard that is full now is
        // usually free again within a few milliseconds. Pausing costs more
        // (the consumer drops what it fetched ahead and fetches it again),
        // so a full shard is waited for that long before its partition is
        // paused.
        let started = now();
        let patience = Duration::from_millis(self.config.runtime.full_shard_wait_ms);
        let mut batch = Records(batch);
        let refused = loop {
            match slot.addr.try_send(batch) {
                Ok(()) => return,
                Err(SendError::Full(b)) if started.elapsed() < patience => {
                    batch = b;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(SendError::Full(Records(b)) | SendError::Closed(Records(b))) => break b,
            }
        };
        slot.refused = Some(refused);
        self.progress
            .backpressure_pauses
            .fetch_add(1, Ordering::Relaxed);
        self.pause(consumer, id, true);
    }

    /// A shard refused a batch: its partition is paused.
    fn any_refused(&self) -> bool {
        self.shards.values().any(|s| s.refused.is_some())
    }

    fn pause(&self, consumer: &BaseConsumer<Ctx>, id: ShardId, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(self.topic(id.0), id.1);
        let r = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        if let Err(e) = r {
            tracing::warn!(
                topic = self.topic(id.0),
                partition = id.1,
                pause,
                "cannot pause/resume: {e}"
            );
        }
    }

    /// The watermark marks to write for the source partitions this member
    /// owns: those that moved or changed idleness since they were last written.
    fn new_marks(&mut self, outputs: &[(ShardId, ShardOutput)]) -> Vec<WatermarkMark> {
        if self.topology.topics.len() < 2 {
            return Vec::new();
        }
        let idle_ms = self.topology.rules.def.stream.idle_ms;
        let t = now();
        let mut marks = Vec::new();
        for ((topic, p), out) in outputs {
            let Some((last, active)) = self.marks.get_mut(p).filter(|_| *topic == 0) else {
                continue;
            };
            if out.records > 0 {
                *active = t;
            }
            let idle =
                idle_ms > 0 && t.duration_since(*active) > Duration::from_millis(idle_ms as u64);
            let mark = WatermarkMark {
                source: *p as u32,
                watermark: out.watermark,
                idle,
            };
            if *last != Some(mark) {
                marks.push(mark);
            }
        }
        marks
    }

    /// Commits everything processed so far in one transaction, counting
    /// the time it takes.
    fn checkpoint(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), ServiceError> {
        self.timed(|c| c.commit_processed(consumer))
    }

    /// Runs a part of checkpointing, counting the time it takes.
    fn timed(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), ServiceError>,
    ) -> Result<(), ServiceError> {
        let started = now();
        let result = f(self);
        self.progress
            .checkpoint_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        result
    }

    /// Hands everything polled to the shards and asks each for its output
    /// so far, at `barrier`.
    fn ask_shards(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        barrier: Barrier,
    ) -> Result<Vec<(ShardId, ShardOutput)>, ServiceError> {
        // Everything polled goes to the shards first, so the cut covers it
        // (a refused batch waits: its partition's offset stops before it).
        self.hand_over(consumer);
        let ids: Vec<ShardId> = self.shards.keys().copied().collect();
        let started = now();
        let answers = block_on(join_all(self.shards.values().map(|s| s.addr.send(barrier))));
        if barrier == Barrier::Checkpoint {
            self.progress
                .barrier_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        let mut outputs: Vec<(ShardId, ShardOutput)> = Vec::with_capacity(answers.len());
        for (id, a) in ids.into_iter().zip(answers) {
            let mut out = a.map_err(|_| ServiceError::ShardGone(id.1))?;
            if let Some(e) = out.state_error.take() {
                // Its output used empty state for a key it could not read
                // back: rebuilt from the store and the changelog instead.
                return Err(ServiceError::PassivatedState {
                    topic: self.topic(id.0).to_string(),
                    partition: id.1,
                    error: e,
                });
            }
            outputs.push((id, out));
        }
        Ok(outputs)
    }

    /// Produces the shards' output so far into the transaction (beginning
    /// it), a little before the checkpoint: its records are then
    /// acknowledged by the time the checkpoint commits, which only adds
    /// the rest of the interval's. The outputs are kept for the checkpoint's
    /// bookkeeping.
    fn flush(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), ServiceError> {
        let outputs = self.ask_shards(consumer, Barrier::Flush)?;
        self.produce(&outputs)?;
        for (id, out) in outputs {
            self.flushed.entry(id).or_default().absorb(out);
        }
        Ok(())
    }

    /// Begins the transaction, unless it is open.
    fn begin(&mut self) -> Result<(), ServiceError> {
        if !self.txn_open {
            self.producer.begin_transaction()?;
            self.txn_open = true;
            self.producer.context().take();
        }
        Ok(())
    }

    /// Sends the records of `outputs` in the transaction (begun if need
    /// be), without waiting for them.
    fn produce(&mut self, outputs: &[(ShardId, ShardOutput)]) -> Result<(), ServiceError> {
        if outputs.iter().all(|(_, o)| o.produces_nothing()) {
            return Ok(());
        }
        self.begin()?;
        let k = &self.config.kafka;
        for (id, out) in outputs {
            let (t, p) = *id;
            let topic = self.topic(t);
            for a in &out.alerts {
                let mut r = BaseRecord::with_opaque_to(&k.alerts_topic, 0)
                    .key(a.record.key.as_slice())
                    .payload(a.record.value.as_slice());
                if let Some(parent) = a.span.as_ref().and_then(telemetry::traceparent) {
                    r = r.headers(OwnedHeaders::new().insert(Header {
                        key: TRACEPARENT,
                        value: Some(parent.as_str()),
                    }));
                }
                let what = || format!("an alert of rule `{}`", a.rule);
                self.send_or_dead_letter(r, what, &a.record, topic, p)?;
            }
            for (target, r) in &out.forwarded {
                let to = self.topic(target + 1);
                let record = BaseRecord::with_opaque_to(to, 0)
                    .key(r.key.as_slice())
                    .payload(r.value.as_slice());
                let what = || format!("an event forwarded to `{to}`");
                self.send_or_dead_letter(record, what, r, topic, p)?;
            }
            for d in &out.dead_letters {
                let headers = dead_letter_headers(d, topic, p);
                let mut r = BaseRecord::with_opaque_to(&k.dead_letter_topic, 0).headers(headers);
                if let Some(value) = &d.value {
                    r = r.payload(value.as_slice());
                }
                if let Some(key) = &d.key {
                    r = r.key(key.as_slice());
                }
                send(&self.producer, r)?;
            }
            let changelog = &self.topology.topics[t].changelog;
            for (key, value) in &out.state {
                let mut r = BaseRecord::<[u8], [u8], usize>::with_opaque_to(
                    changelog,
                    changelog_opaque(*id),
                )
                .partition(p)
                .key(key.as_slice());
                if let Some(v) = value {
                    r = r.payload(v.as_slice());
                }
                send(&self.producer, r)?;
            }
        }
        Ok(())
    }

    /// Sends `record`; one the producer refuses on its own (too large for
    /// it, however it got so) goes to the dead-letter topic instead, small,
    /// with the refusal: a record that can never be produced must not fail
    /// the checkpoint, which would be retried, fail again, and stop the
    /// partition for good.
    fn send_or_dead_letter(
        &self,
        record: BaseRecord<'_, [u8], [u8], usize>,
        what: impl Fn() -> String,
        out: &OutRecord,
        source_topic: &str,
        source_partition: i32,
    ) -> Result<(), ServiceError> {
        let error = match send(&self.producer, record) {
            Ok(()) => return Ok(()),
            Err(KafkaError::MessageProduction(code)) if refused_record(code) => code,
            Err(e) => return Err(e.into()),
        };
        tracing::error!(
            "{} could not be produced ({} bytes): {error}; dead-lettered instead",
            what(),
            out.key.len() + out.value.len()
        );
        let d = DeadLetter {
            kind: DeadLetterKind::Internal,
            reason: format!("{} could not be produced: {error}", what()),
            offset: -1,
            key: Some(out.key.clone()),
            value: Some(out.value.clone()),
        }
        .within(0);
        let headers = dead_letter_headers(&d, source_topic, source_partition);
        let mut r =
            BaseRecord::with_opaque_to(&self.config.kafka.dead_letter_topic, 0).headers(headers);
        if let Some(key) = &d.key {
            r = r.key(key.as_slice());
        }
        send(&self.producer, r)?;
        Ok(())
    }

    fn commit_processed(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), ServiceError> {
        let mut outputs = self.ask_shards(consumer, Barrier::Checkpoint)?;
        let started = now();
        self.produce(&outputs)?;
        // Join what was flushed ahead of the barrier, for the bookkeeping.
        for (id, out) in &mut outputs {
            if let Some(mut earlier) = self.flushed.remove(id) {
                earlier.absorb(std::mem::take(out));
                *out = earlier;
            }
        }
        // A shard gone since the flush would leave its flushed output here
        // (none does: revocation checkpoints first); it is committed too.
        outputs.extend(std::mem::take(&mut self.flushed));
        self.observe_state(&outputs);
        let marks = self.new_marks(&outputs);
        if !self.txn_open && marks.is_empty() && outputs.iter().all(|(_, o)| o.is_empty()) {
            return Ok(());
        }
        let _span = telemetry::events::checkpoint_span().entered();
        self.begin()?;
        let mut offsets = TopicPartitionList::new();
        let (mut alerts, mut dead, mut records) = (0u64, 0u64, 0u64);
        let (mut forwarded, mut internal) = (0u64, 0u64);
        let mut state_bytes = 0u64;
        for ((t, p), out) in &outputs {
            let topic = self.topic(*t);
            for (key, value) in &out.state {
                state_bytes += (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
            }
            if let Some(next) = out.next_offset {
                offsets.add_partition_offset(topic, *p, Offset::Offset(next))?;
            }
            alerts += out.alerts.len() as u64;
            dead += out.dead_letters.len() as u64;
            forwarded += out.forwarded.len() as u64;
            if *t == 0 {
                records += out.records;
            } else {
                internal += out.records - out.marks;
            }
        }
        // Marks go after the forwarded events they cover (same producer,
        // same partition: Kafka keeps the order).
        for mark in &marks {
            let value = mark.encode();
            for internal in self.topology.internal() {
                for partition in 0..self.topology.sources as i32 {
                    let headers = OwnedHeaders::new().insert(Header {
                        key: MARK_HEADER,
                        value: Some(value.as_str()),
                    });
                    send(
                        &self.producer,
                        BaseRecord::<[u8], [u8], usize>::with_opaque_to(internal, 0)
                            .partition(partition)
                            .payload(&[])
                            .headers(headers),
                    )?;
                }
            }
        }
        let group = consumer
            .group_metadata()
            .ok_or(KafkaError::Subscription("no group metadata".into()))?;
        let produced = started.elapsed();
        self.producer
            .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
        let offsets_done = started.elapsed();
        // The offsets travel while the records are being acknowledged.
        deliver_all(&self.producer)?;
        let delivered = started.elapsed();
        self.producer.commit_transaction(TXN_TIMEOUT)?;
        self.txn_open = false;
        self.progress.checkpoint_outcome(None);
        let ends = self.producer.context().take();
        self.write_local(&outputs, &ends);
        let mut committed = CheckpointCommitted {
            partitions: outputs
                .iter()
                .map(|((t, p), out)| PartitionCommit {
                    topic: self.topic(*t),
                    partition: *p,
                    events: out.records - out.marks,
                })
                .collect(),
            alerts: outputs
                .iter()
                .flat_map(|(_, out)| &out.alerts)
                .map(|a| AlertCommit {
                    rule: &a.rule,
                    severity: a.severity.as_str(),
                    cause_ms: a.cause_ms,
                    span: a.span.as_ref(),
                })
                .collect(),
            forwarded,
            marks: marks.len(),
            state_bytes,
            produced,
            offsets: offsets_done,
            delivered,
            total: started.elapsed(),
            committed_ms: telemetry::now_ms(),
            ..CheckpointCommitted::default()
        };
        committed.rule_errors = outputs.iter().map(|(_, out)| out.rule_errors).sum();
        for d in outputs.iter().flat_map(|(_, out)| &out.dead_letters) {
            match d.kind {
                DeadLetterKind::Malformed => committed.malformed += 1,
                DeadLetterKind::Late => committed.late += 1,
                DeadLetterKind::Future => committed.future += 1,
                DeadLetterKind::Internal => committed.internal += 1,
            }
        }
        committed.emit();
        for ((t, p), out) in &outputs {
            let polled_to = self.shards.get(&(*t, *p)).and_then(|s| s.polled_to);
            self.progress.with_partition(self.topic(*t), *p, |f| {
                if out.watermark != crate::time::MIN_WATERMARK {
                    f.watermark_ms = Some(out.watermark);
                }
                if let Some(next) = out.next_offset {
                    f.committed_offset = Some(next);
                }
                f.all_committed = out.next_offset.is_some() && out.next_offset == polled_to;
            });
        }
        for mark in marks {
            if let Some((last, _)) = self.marks.get_mut(&(mark.source as i32)) {
                *last = Some(mark);
            }
        }
        let p = &self.progress;
        p.records.fetch_add(records, Ordering::Relaxed);
        p.forwarded.fetch_add(forwarded, Ordering::Relaxed);
        p.internal_events.fetch_add(internal, Ordering::Relaxed);
        p.alerts.fetch_add(alerts, Ordering::Relaxed);
        p.dead_letters.fetch_add(dead, Ordering::Relaxed);
        p.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes the shards' memory figures.
    fn observe_state(&self, outputs: &[(ShardId, ShardOutput)]) {
        let (mut resident, mut cold, mut bytes, mut loads) = (0, 0, 0, 0);
        for ((t, p), out) in outputs {
            resident += out.resident_keys;
            if let Some(n) = out.partial_matches {
                self.progress
                    .with_partition(self.topic(*t), *p, |f| f.partial_matches = Some(n));
            }
            if let Some(p) = &out.passivation {
                cold += p.cold_keys;
                bytes += p.resident_bytes;
                loads += p.loads;
            }
        }
        let p = &self.progress;
        p.resident_keys.store(resident, Ordering::Relaxed);
        p.passivated_keys.store(cold, Ordering::Relaxed);
        p.resident_bytes.store(bytes, Ordering::Relaxed);
        p.key_loads.store(loads, Ordering::Relaxed);
    }

    /// Copies a committed checkpoint's state changes to the local state,
    /// with the positions they bring each shard to, and lets the shards
    /// passivate what is now stored.
    fn write_local(&mut self, outputs: &[(ShardId, ShardOutput)], ends: &BTreeMap<ShardId, i64>) {
        let Some(local) = &self.local else {
            return;
        };
        let mut moved = vec![false; outputs.len()];
        for (i, (id, out)) in outputs.iter().enumerate() {
            let Some(slot) = self.shards.get_mut(id) else {
                continue;
            };
            let before = slot.position;
            if let Some(&end) = ends.get(id).filter(|e| **e >= 0) {
                slot.position.changelog = end;
            }
            if let Some(next) = out.next_offset {
                slot.position.input = next;
            }
            moved[i] = slot.position != before || !out.state.is_empty();
        }
        let writes = outputs
            .iter()
            .zip(moved.iter().copied())
            .filter(|(_, m)| *m)
            .filter_map(|((id, out), _)| {
                let slot = self.shards.get(id)?;
                Some((slot.store.as_ref()?, out.state.as_slice(), slot.position))
            });
        if let Err(e) = local.commit(writes) {
            // Committed in Kafka all the same: a restart reads more
            // changelog. Later batches are not written either: the copy
            // would skip this one's changes yet claim a later position.
            tracing::error!(
                "local state not updated, and no longer written by this process \
                 (a restart reads the changelog from its last position): {e}"
            );
            self.local = None;
            return;
        }
        let budget = self.shard_budget(0);
        for ((id, out), _) in outputs.iter().zip(&moved).filter(|(_, m)| **m) {
            if let Some(slot) = self.shards.get(id)
                && slot.store.is_some()
            {
                slot.addr.do_send(Persisted {
                    batch: out.batch,
                    budget_bytes: budget,
                });
            }
        }
    }

    /// After a failed checkpoint: abort the transaction and rewind every
    /// shard to the last commit. Errors that cannot be recovered from are
    /// left in `failed` for the main loop.
    fn recover(&mut self, consumer: &BaseConsumer<Ctx>, error: ServiceError) {
        CheckpointFailed {
            error: &error,
            aborting: self.txn_open,
        }
        .emit();
        self.progress.checkpoint_outcome(Some(error.to_string()));
        if let ServiceError::Kafka(KafkaError::Transaction(e)) = &error
            && e.is_fatal()
        {
            self.failed = Some(error);
            return;
        }
        // A checkpoint can fail before its transaction began (a shard that
        // does not answer): then there is nothing to abort, only to rewind.
        // What was flushed is in the transaction, and goes with it.
        self.flushed.clear();
        if self.txn_open {
            if let Err(e) = abort(&self.producer) {
                tracing::error!("cannot abort the transaction: {e}");
                self.failed = Some(e.into());
                return;
            }
            self.txn_open = false;
            self.progress.aborts.fetch_add(1, Ordering::Relaxed);
            // The aborted producer id is not written under again.
            match self.identity.next_producer() {
                Ok(p) => self.producer = p,
                Err(e) => {
                    self.failed = Some(e.into());
                    return;
                }
            }
        }
        let ids: Vec<ShardId> = self.shards.keys().copied().collect();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &ids {
            tpl.add_partition(self.topic(*t), *p);
        }
        let committed = match consumer.committed_offsets(tpl, TXN_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                self.failed = Some(e.into());
                return;
            }
        };
        for id in &ids {
            self.shards.remove(id);
        }
        if let Err(e) = self.start_shards(&ids) {
            self.failed = Some(e);
            return;
        }
        for id in ids {
            let topic = self.topic(id.0).to_string();
            let offset = match committed.find_partition(&topic, id.1).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            self.pause(consumer, id, false);
            if let Err(e) = consumer.seek(&topic, id.1, offset, TXN_TIMEOUT) {
                self.failed = Some(e.into());
                return;
            }
        }
    }
}

/// The watermark mark a record of an internal topic carries, if any.
fn read_mark(m: &impl Message) -> Option<WatermarkMark> {
    header(m, MARK_HEADER).and_then(WatermarkMark::decode)
}

/// The value of the header `key`, if the record has it.
fn header<'a>(m: &'a impl Message, key: &str) -> Option<&'a [u8]> {
    m.headers()?.iter().find(|h| h.key == key)?.value
}

/// Waits until every record produced so far is acknowledged, serving the
/// delivery reports. (`Producer::flush` polls in 100 ms steps that a
/// delivery report does not cut short, so every commit would wait them out.)
fn deliver_all(producer: &TxProducer) -> Result<(), KafkaError> {
    let started = now();
    while producer.in_flight_count() > 0 {
        if started.elapsed() > TXN_TIMEOUT {
            return Err(KafkaError::Flush(
                rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
            ));
        }
        producer.poll(Duration::from_millis(1));
    }
    Ok(())
}

/// Aborts the open transaction. librdkafka waits for the records in flight
/// to be acknowledged or purged before it aborts, and a `BaseProducer`
/// learns of them only when polled: the abort is called in short steps
/// (it resumes where it stopped) with polls between them.
fn abort(producer: &TxProducer) -> Result<(), KafkaError> {
    let started = now();
    loop {
        match producer.abort_transaction(Duration::from_millis(100)) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && started.elapsed() < TXN_TIMEOUT =>
            {
                producer.poll(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn send(
    producer: &TxProducer,
    mut record: BaseRecord<'_, [u8], [u8], usize>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Whether the producer refused one record for what it is (its size), not
/// for the state of the producer or the cluster.
fn refused_record(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage | C::InvalidRecord
    )
}

/// The dead-letter record's headers: why, and where the record came from.
fn dead_letter_headers(d: &DeadLetter, topic: &str, partition: i32) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = d.offset.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "tripline.error.kind",
            value: Some(d.kind.as_str()),
        })
        .insert(Header {
            key: "tripline.error.reason",
            value: Some(d.reason.as_str()),
        })
        .insert(Header {
            key: "tripline.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "tripline.source.partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "tripline.source.offset",
            value: Some(offset.as_str()),
        })
}

/// The service's one clock: it paces checkpoints and idleness, never
/// decides what an event means.
#[allow(clippy::disallowed_methods)]
pub(super) fn now() -> Instant {
    Instant::now()
}

/// This machine's host name (the default instance id and API host).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tripline".into())
}
