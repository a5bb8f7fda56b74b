//! The service's counters and gauges: what the coordinator has committed,
//! what it holds and how its checkpoints fare, read by telemetry, the
//! health endpoints and the tests.

use super::report::{CheckpointCommitted, PartitionFigures, ServiceFigures};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Checkpoints failing in a row that make the service not ready: one is a
/// hiccup the rewind repairs, three mean nothing commits.
const FAILURES_NOT_READY: u64 = 3;

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
    /// Of that, producing the shards' output ahead of the barrier.
    pub flush_micros: AtomicU64,
    /// Of the flush, waiting for the shards to reach it: to work through
    /// the records handed to them before it.
    pub flush_wait_micros: AtomicU64,
    /// Of that, writing the local copy of the state after the commit.
    pub local_micros: AtomicU64,
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

    /// Updates the figures of one partition (created if need be); the
    /// source reports what it sees of the partition's end this way.
    pub fn with_partition(
        &self,
        topic: &str,
        partition: i32,
        f: impl FnOnce(&mut PartitionFigures),
    ) {
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
                covered_offset: None,
                all_committed: false,
                watermark_ms: None,
                partial_matches: None,
                waiting_events: 0,
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

    /// Counts a committed checkpoint (whose input topic is `input`): the
    /// same account its telemetry event gives.
    pub(crate) fn count(&self, c: &CheckpointCommitted<'_>, is_input: impl Fn(&str) -> bool) {
        let (mut records, mut internal) = (0, 0);
        for p in &c.partitions {
            if is_input(p.topic) {
                records += p.events;
            } else {
                internal += p.events;
            }
        }
        let dead = c.malformed + c.late + c.future + c.internal;
        self.records.fetch_add(records, Ordering::Relaxed);
        self.internal_events.fetch_add(internal, Ordering::Relaxed);
        self.forwarded.fetch_add(c.forwarded, Ordering::Relaxed);
        self.alerts
            .fetch_add(c.alerts.len() as u64, Ordering::Relaxed);
        self.dead_letters.fetch_add(dead, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// A checkpoint failed (`Some(why)`) or committed (`None`).
    pub(crate) fn checkpoint_outcome(&self, failure: Option<String>) {
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
