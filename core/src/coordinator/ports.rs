//! The coordinator's ports: the small traits through which the protocol
//! reaches the outside (the input source, the transactional sink, the
//! changelog, the local copy of the state, the shards and the clock), and
//! the one error type they return.
//!
//! Every port is synchronous and called from the coordinator's thread
//! (a [`Restorer`] runs restores elsewhere and hands them back there). The
//! Kafka adapter implements them with rdkafka clients and actix shard
//! actors; the deterministic simulation (`core/tests/simulation`) implements
//! them in memory with a seeded fault injector.

use super::report::{CheckpointCommitted, CheckpointFailed, RulesReload};
use super::restore::{RestoreDone, RestoreJob};
use super::{CoordError, Position};
use crate::engine::RuleSet;
use crate::shard::{Barrier, Record, Shard, ShardOutput};
use crate::state::{Change, SnapshotError, StateStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A shard's topic (index into the [`super::Topology`]) and partition.
pub type ShardId = (usize, i32);

/// What a failed port call means for the service: the decision to retry,
/// skip or stop belongs to the error, not to the code that meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The checkpoint fails; its transaction is aborted and the shards are
    /// rewound to the last commit, which retries everything since.
    Retry,
    /// The service cannot go on (a fenced producer, a lost identity): it
    /// stops, and a restart (or another member) takes over.
    Fatal,
    /// This one record can never be produced (too large for the producer):
    /// it is dead-lettered on its own, and the checkpoint goes on.
    Refused,
}

/// A port call that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call}: {message}")]
pub struct PortError {
    /// What it means for the service.
    pub fault: Fault,
    /// The call that failed (`commit`, `seek`, …).
    pub call: &'static str,
    /// What the outside system said.
    pub message: String,
}

impl PortError {
    /// A failure the checkpoint's retry repairs.
    pub fn retry(call: &'static str, message: impl std::fmt::Display) -> PortError {
        PortError {
            fault: Fault::Retry,
            call,
            message: message.to_string(),
        }
    }

    /// A failure that stops the service.
    pub fn fatal(call: &'static str, message: impl std::fmt::Display) -> PortError {
        PortError {
            fault: Fault::Fatal,
            call,
            message: message.to_string(),
        }
    }

    /// A record the sink can never accept.
    pub fn refused(call: &'static str, message: impl std::fmt::Display) -> PortError {
        PortError {
            fault: Fault::Refused,
            call,
            message: message.to_string(),
        }
    }
}

/// Monotonic time, for pacing checkpoints, idleness and figures; never for
/// what an event means.
pub trait Clock {
    /// Time since an arbitrary fixed start.
    fn now(&self) -> Duration;
    /// Wall-clock time, epoch milliseconds (when a checkpoint committed,
    /// against which alert latency is measured).
    fn epoch_ms(&self) -> i64;
}

/// Where the protocol reports what it did (the service logs and counts it).
pub trait Observer {
    /// A checkpoint's transaction committed.
    fn checkpoint_committed(&self, committed: &CheckpointCommitted<'_>);
    /// A checkpoint failed and is being rewound.
    fn checkpoint_failed(&self, failed: &CheckpointFailed<'_>);
    /// A rule change was applied or refused.
    fn rules_reloaded(&self, reload: &RulesReload<'_>);
}

/// The input: the partitions the member is assigned, which it reads from.
/// Records arrive through the driver (see [`super::Coordinator::enqueue`]),
/// assignments through [`super::Coordinator::assign`] and
/// [`super::Coordinator::revoke`].
pub trait Source {
    /// The group membership the sink's offsets are committed under (a
    /// member that lost its partitions is fenced by it).
    type Group;
    /// Stops (`true`) or restarts fetching a partition.
    fn pause(&self, topic: &str, partition: i32, pause: bool) -> Result<(), PortError>;
    /// Sets where a partition is read from next (`None`: its beginning).
    fn seek(&self, topic: &str, partition: i32, offset: Option<i64>) -> Result<(), PortError>;
    /// The group's committed offsets of these partitions, in order
    /// (`None`: none committed).
    fn committed(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>, PortError>;
    /// The current membership.
    fn group(&self) -> Result<Self::Group, PortError>;
}

/// A record to produce.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition (`None`: by key, the sink's partitioner).
    pub partition: Option<i32>,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
    /// Its headers.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Set on a changelog record: the shard whose state it is (see
    /// [`TxSink::commit`]).
    pub changelog_of: Option<ShardId>,
    /// The trace of the record that caused it, if traced.
    pub span: Option<&'a tracing::Span>,
}

/// The transactional sink: records and input offsets commit together or
/// not at all.
pub trait TxSink {
    /// The group membership offsets are committed under.
    type Group;
    /// Begins a transaction.
    fn begin(&mut self) -> Result<(), PortError>;
    /// Sends a record in the open transaction, without waiting for it.
    fn send(&mut self, record: Outgoing<'_>) -> Result<(), PortError>;
    /// Adds the input offsets (topic, partition, next offset) to the
    /// transaction.
    fn send_offsets(
        &mut self,
        offsets: &[(&str, i32, i64)],
        group: &Self::Group,
    ) -> Result<(), PortError>;
    /// Waits until every record sent is acknowledged.
    fn deliver(&mut self) -> Result<(), PortError>;
    /// Commits the transaction; returns, per shard that wrote changelog
    /// records in it, the changelog offset after its last one.
    fn commit(&mut self) -> Result<BTreeMap<ShardId, i64>, PortError>;
    /// Aborts the open transaction.
    fn abort(&mut self) -> Result<(), PortError>;
    /// Takes a new producer identity after an abort (the aborted one is
    /// not written under again).
    fn renew(&mut self) -> Result<(), PortError>;
}

/// What reading a changelog finds, in order.
#[derive(Debug, Clone, Copy)]
pub enum ChangelogEvent<'a> {
    /// The position asked for is not in the log (the topic was recreated
    /// or truncated): the partition is read from its beginning instead.
    Reset(i32),
    /// A committed record.
    Record {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Its key (`None`: not a state record, skipped).
        key: Option<&'a [u8]>,
        /// Its value (`None`: the key was deleted).
        value: Option<&'a [u8]>,
    },
    /// The partition's end: the offset after the last record read.
    End(i32, i64),
    /// Nothing new yet (the reader waits for records or for open
    /// transactions to end): the visitor may stop the read here by
    /// returning an error.
    Waiting,
}

/// Reads the changelog topics.
pub trait ChangelogReader {
    /// Reads partitions of `changelog` to their ends (committed records
    /// only), each from its offset (`None`: the beginning), calling `visit`
    /// on what it finds; stops at `visit`'s first error.
    fn read(
        &mut self,
        changelog: &str,
        from: &[(i32, Option<i64>)],
        visit: &mut dyn FnMut(ChangelogEvent<'_>) -> Result<(), CoordError>,
    ) -> Result<(), CoordError>;
}

/// One shard's part of the local copy of the state.
pub trait LocalShard: StateStore + Clone + Send + 'static {
    /// Its name, for logs.
    fn name(&self) -> &str;
    /// What it covers, if anything was stored.
    fn position(&self) -> Result<Option<Position>, SnapshotError>;
    /// Records what it covers.
    fn set_position(&mut self, position: Position) -> Result<(), SnapshotError>;
    /// Removes everything, position included.
    fn clear(&mut self) -> Result<(), SnapshotError>;
}

/// One shard's part of a [`LocalStore::commit`]: its changes and the
/// position they bring it to.
pub type LocalWrite<S> = (S, Vec<Change>, Position);

/// The local copy of the state (a cache of the changelogs). Writes may
/// land after [`LocalStore::commit`] returns (away from the coordinator's
/// thread), in the order they were committed; reads of the copy wait for
/// them ([`LocalStore::flush`]) or for [`LocalStore::written`] to say so.
pub trait LocalStore {
    /// One shard's part.
    type Shard: LocalShard;
    /// Shard `partition` of `topic`, created empty if need be.
    fn shard(&self, topic: &str, partition: i32) -> Result<Self::Shard, PortError>;
    /// Queues each shard's changes and position, to be written in one
    /// atomic batch after those committed before; returns the batch's
    /// number (1 for the first, then on).
    fn commit(&mut self, writes: Vec<LocalWrite<Self::Shard>>) -> Result<u64, PortError>;
    /// The number of the last batch written (0: none yet); an error once
    /// a batch failed (no later one is written).
    fn written(&mut self) -> Result<u64, PortError>;
    /// Waits until every batch committed is written; as
    /// [`LocalStore::written`].
    fn flush(&mut self) -> Result<u64, PortError>;
}

/// The running shards.
pub trait Shards {
    /// Runs `shard` as the shard of `id`.
    fn start(&mut self, id: ShardId, shard: Shard);
    /// Stops the shard of `id` (nothing it did since its last barrier is
    /// kept).
    fn stop(&mut self, id: ShardId);
    /// Hands a batch to the shard; gives it back if the shard cannot take
    /// it now (its queue is full, or it is gone).
    fn offer(&mut self, id: ShardId, batch: Vec<Record>) -> Result<(), Vec<Record>>;
    /// Sends `barrier` to each of `ids` and waits for their answers, in
    /// order (`None`: that shard is gone).
    fn barrier(&mut self, ids: &[ShardId], barrier: Barrier) -> Vec<Option<ShardOutput>>;
    /// Moves a shard to new rules (see [`Shard::reload`]).
    fn reload(&mut self, id: ShardId, rules: Arc<RuleSet>, engine_rules: Arc<RuleSet>);
    /// Tells a shard its changes up to `batch` are stored locally (see
    /// [`Shard::persisted`]).
    fn persisted(&mut self, id: ShardId, batch: u64, budget_bytes: usize);
}

/// Runs restores ([`RestoreJob::run`]) away from the coordinator's
/// thread. A restore reads a changelog and rebuilds every key of its
/// shards, which can take longer than a group member may go without
/// polling (`max.poll.interval.ms`): run on the polling thread, a large
/// restore would put the member out of its group, which would then assign
/// the partitions again and restore again, for ever. While a job runs its
/// partitions are paused and the member keeps polling and committing the
/// others.
pub trait Restorer<P: Ports> {
    /// Runs `job` (on another thread, or later: its result comes back
    /// through [`Restorer::finished`]).
    fn start(&mut self, job: RestoreJob<P>);
    /// The jobs that ended since the last call.
    fn finished(&mut self) -> Vec<RestoreDone<P>>;
    /// Waits until every job started has ended (jobs no longer wanted were
    /// told to stop, and do soon).
    fn wait(&mut self);
}

/// The coordinator's ports, as one type family.
pub trait Ports: Sized {
    /// The group membership offsets are committed under.
    type Group;
    /// The sink.
    type Sink: TxSink<Group = Self::Group>;
    /// The changelog reader (each restore job reads with its own copy).
    type Changelog: ChangelogReader + Clone;
    /// The local store.
    type Local: LocalStore;
    /// The shards.
    type Shards: Shards;
    /// The clock.
    type Clock: Clock;
    /// Where what happens is reported.
    type Observer: Observer;
    /// Where restores run.
    type Restorer: Restorer<Self>;
}
