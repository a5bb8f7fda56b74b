//! The coordinator's source over Kafka: the group member's consumer
//! (pause, seek, committed offsets, group metadata), its rebalance
//! callbacks, which hand assignments to the coordinator, its statistics
//! (lag per partition), and the copy of a fetched message into a
//! [`Record`].

use super::service::KafkaPorts;
use super::sink::{TRACEPARENT, TXN_TIMEOUT, port_error};
use super::watch::{LoopState, Phase};
use crate::coordinator::{
    CoordError, Coordinator, MARK_HEADER, PortError, Progress, ShardId, Source,
};
use crate::runtime::{Record, STREAM_HEADER, WatermarkMark};
use crate::telemetry;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::{Arc, Mutex, MutexGuard};

/// The group member's consumer.
pub(super) type MemberConsumer = BaseConsumer<Ctx>;

/// The coordinator, and an error met inside a rebalance callback for the
/// main loop to stop on.
pub(super) struct Member {
    pub(super) coordinator: Coordinator<KafkaPorts>,
    pub(super) failed: Option<CoordError>,
}

/// Locks the member. A panic elsewhere cannot leave the coordinator
/// half-updated in a way that matters: every checkpoint starts from the
/// shards' own state.
pub(super) fn lock(m: &Mutex<Member>) -> MutexGuard<'_, Member> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The consumer's context: the coordinator it reports rebalances to.
pub(super) struct Ctx {
    pub(super) member: Arc<Mutex<Member>>,
    /// Apart from `member`: statistics arrive while it may be locked.
    pub(super) progress: Arc<Progress>,
    /// What the service loop is doing, for its watch.
    pub(super) watch: Arc<LoopState>,
}

/// The consumer as the coordinator's [`Source`].
pub(super) struct KafkaSource<'a>(pub(super) &'a MemberConsumer);

impl Source for KafkaSource<'_> {
    type Group = ConsumerGroupMetadata;

    fn pause(&self, topic: &str, partition: i32, pause: bool) -> Result<(), PortError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        if pause {
            return self.0.pause(&tpl).map_err(|e| port_error("pause", e));
        }
        self.0.resume(&tpl).map_err(|e| port_error("pause", e))?;
        self.wake(topic, partition);
        Ok(())
    }

    fn seek(&self, topic: &str, partition: i32, offset: Option<i64>) -> Result<(), PortError> {
        let offset = offset.map_or(Offset::Beginning, Offset::Offset);
        self.0
            .seek(topic, partition, offset, TXN_TIMEOUT)
            .map_err(|e| PortError::fatal("seek", e))
    }

    fn committed(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>, PortError> {
        let mut tpl = TopicPartitionList::new();
        for &(topic, partition) in partitions {
            tpl.add_partition(topic, partition);
        }
        let committed = self
            .0
            .committed_offsets(tpl, TXN_TIMEOUT)
            .map_err(|e| PortError::fatal("committed offsets", e))?;
        Ok(partitions
            .iter()
            .map(|&(topic, partition)| {
                committed
                    .find_partition(topic, partition)
                    .and_then(|e| absolute(e.offset()))
            })
            .collect())
    }

    fn group(&self) -> Result<ConsumerGroupMetadata, PortError> {
        self.0
            .group_metadata()
            .ok_or_else(|| PortError::retry("group metadata", "no group metadata"))
    }
}

/// An offset that names a record (not a logical one: beginning, end, none).
fn absolute(offset: Offset) -> Option<i64> {
    match offset {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

impl KafkaSource<'_> {
    /// Makes a resumed partition fetch at once. librdkafka's broker thread
    /// learns of a resume only when it next wakes, which is up to a second
    /// later (its longest sleep) when it has no other partition to fetch:
    /// at start, every partition is paused while its state restores, and
    /// the first alerts waited that second. A seek to the partition's own
    /// position changes its fetch state, which wakes the thread. Best
    /// effort: if the position cannot be had, the fetch starts late.
    fn wake(&self, topic: &str, partition: i32) {
        let position = match self.0.position() {
            Ok(tpl) => tpl
                .find_partition(topic, partition)
                .and_then(|e| absolute(e.offset())),
            Err(_) => None,
        };
        // Nothing consumed since the assignment: it starts where the group
        // committed, or at the beginning (`auto.offset.reset` is earliest).
        let position = match position {
            Some(o) => Some(o),
            None => match self.committed(&[(topic, partition)]) {
                Ok(c) => c.into_iter().next().flatten(),
                Err(e) => {
                    tracing::debug!(topic, partition, error = %e, "no position to wake the fetch at");
                    return;
                }
            },
        };
        // Offset 0 as an absolute position would leave the fetch state
        // as it is (no wake); the beginning is the same place.
        let offset = match position {
            Some(o) if o > 0 => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        if let Err(e) = self.0.seek(topic, partition, offset, TXN_TIMEOUT) {
            tracing::debug!(topic, partition, error = %e, "seek to wake the fetch failed");
        }
    }
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

/// The shards of the partitions in `tpl` that the coordinator runs.
fn shard_ids(c: &Coordinator<KafkaPorts>, tpl: &TopicPartitionList) -> Vec<ShardId> {
    tpl.elements()
        .iter()
        .filter_map(|e| Some((c.topology().index(e.topic())?, e.partition())))
        .collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &MemberConsumer, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.watch.enter(Phase::Revoke);
            let mut m = lock(&self.member);
            let ids = shard_ids(&m.coordinator, tpl);
            if let Err(e) = m.coordinator.revoke(&KafkaSource(consumer), &ids) {
                m.failed = Some(e);
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            self.watch.enter(Phase::Poll);
        }
    }

    fn post_rebalance(&self, consumer: &MemberConsumer, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.watch.enter(Phase::Assign);
            let mut m = lock(&self.member);
            let ids = shard_ids(&m.coordinator, tpl);
            if let Err(e) = m.coordinator.assign(&KafkaSource(consumer), &ids) {
                m.failed = Some(e);
            }
            tracing::info!(partitions = tpl.count(), "partitions assigned");
            self.watch.enter(Phase::Poll);
        }
    }
}

/// A fetched message as a record, of an internal topic (whose records
/// carry watermark marks and their events' stream) or of a stream's.
pub(super) fn record_of(m: &impl Message, internal: bool) -> Record {
    let mut record = Record::data(
        m.offset(),
        m.key().map(<[u8]>::to_vec),
        m.payload().map(<[u8]>::to_vec),
    );
    if internal {
        record.mark = header(m, MARK_HEADER).and_then(WatermarkMark::decode);
        record.stream = header(m, STREAM_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(Box::from);
    }
    record.timestamp_ms = m.timestamp().to_millis();
    if telemetry::tracing_enabled() {
        record.span =
            telemetry::event_span(header(m, TRACEPARENT), m.topic(), m.partition(), m.offset());
    }
    record
}

/// The value of the header `key`, if the record has it.
fn header<'a>(m: &'a impl Message, key: &str) -> Option<&'a [u8]> {
    m.headers()?.iter().find(|h| h.key == key)?.value
}
