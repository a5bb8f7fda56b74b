//! The coordinator's changelog reader over Kafka: one `read_committed`
//! consumer per read, assigned (not subscribed) to the partitions asked
//! for, read until each reaches the log's end as it was when the read
//! began.
//!
//! A `read_committed` reader reports a partition's end at the last stable
//! offset, which an open transaction of another producer holds back (a
//! member that lost the partition and has not noticed yet). Records
//! committed after that transaction began would then be missed, and the
//! state they hold is what the committed input offsets already cover:
//! restoring without them loses alerts (the deterministic simulation found
//! this). So the reader first waits until the last stable offset reaches
//! the log's end as the read began (the high watermark, asked as
//! `read_uncommitted`), i.e. until such a transaction has ended: its
//! producer aborts it when its commit fails, or the broker does after
//! `kafka.transaction_timeout_ms`.
//!
//! A read that goes [`RESTORE_TIMEOUT`] (or the transaction timeout and a
//! margin, if longer) without news fails; progress is logged every
//! [`RESTORE_LOG_EVERY`].

use super::sink::{TXN_TIMEOUT, port_error};
use super::{ToTheEnd, client_config};
use crate::config::KafkaConfig;
use crate::coordinator::{ChangelogEvent, ChangelogReader, CoordError, PortError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long reading the changelogs of newly assigned partitions may go
/// without a record or a partition's end (however long the whole read).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(50);
/// How often restore progress is logged.
const RESTORE_LOG_EVERY: Duration = Duration::from_secs(5);

/// Reads changelog topics with the service's client settings.
#[derive(Clone)]
pub struct KafkaChangelog {
    kafka: KafkaConfig,
    brokers: String,
}

impl KafkaChangelog {
    /// A reader of the cluster at `brokers`.
    pub fn new(kafka: KafkaConfig, brokers: String) -> KafkaChangelog {
        KafkaChangelog { kafka, brokers }
    }
}

impl KafkaChangelog {
    /// Waits until every transaction with records below `ends` (the log's
    /// ends as the read began) has ended: until the last stable offset,
    /// which a `read_committed` client is answered for the end, reaches
    /// them. A reader's end-of-partition then comes after every record
    /// committed before the read began.
    fn wait_stable(
        &self,
        reader: &BaseConsumer<ToTheEnd>,
        changelog: &str,
        ends: &BTreeMap<i32, i64>,
        patience: Duration,
        visit: &mut dyn FnMut(ChangelogEvent<'_>) -> Result<(), CoordError>,
    ) -> Result<(), CoordError> {
        let started = super::service::now();
        for (&p, &end) in ends {
            loop {
                let (_, stable) = reader
                    .fetch_watermarks(changelog, p, TXN_TIMEOUT)
                    .map_err(kafka("changelog offsets"))?;
                if stable >= end {
                    break;
                }
                if started.elapsed() > patience {
                    return Err(CoordError::Port(PortError::retry(
                        "restore",
                        format!(
                            "`{changelog}` partition {p}: a transaction open since before the \
                             restore has not ended (stable to offset {stable} of {end})"
                        ),
                    )));
                }
                tracing::debug!(
                    changelog,
                    partition = p,
                    stable,
                    end,
                    "waiting for an open transaction in the changelog"
                );
                visit(ChangelogEvent::Waiting)?;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

fn kafka(call: &'static str) -> impl Fn(KafkaError) -> CoordError {
    move |e| CoordError::Port(port_error(call, e))
}

impl ChangelogReader for KafkaChangelog {
    fn read(
        &mut self,
        changelog: &str,
        from: &[(i32, Option<i64>)],
        visit: &mut dyn FnMut(ChangelogEvent<'_>) -> Result<(), CoordError>,
    ) -> Result<(), CoordError> {
        // The log's end as it stands, open transactions included: asked as
        // read_committed, the broker would answer the last stable offset.
        let ends_reader: BaseConsumer = client_config(&self.kafka, &self.brokers)
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(kafka("changelog offsets"))?;
        let mut tpl = TopicPartitionList::new();
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        let mut empty = true;
        for &(p, start) in from {
            let (lo, hi) = ends_reader
                .fetch_watermarks(changelog, p, TXN_TIMEOUT)
                .map_err(kafka("changelog offsets"))?;
            ends.insert(p, hi);
            empty &= lo >= hi;
            let start = match start {
                None => Offset::Beginning,
                Some(x) if (lo..=hi).contains(&x) => Offset::Offset(x),
                Some(_) => {
                    visit(ChangelogEvent::Reset(p))?;
                    Offset::Beginning
                }
            };
            tpl.add_partition_offset(changelog, p, start)
                .map_err(kafka("changelog assign"))?;
        }
        if empty {
            // No record to read, so none of an open transaction to wait
            // for: a member's first start, on new changelogs, ends here
            // without a reader (a client, its connection and a fetch to the
            // end: about a tenth of a second before the first commit).
            for (&p, &end) in &ends {
                visit(ChangelogEvent::End(p, end))?;
            }
            return Ok(());
        }
        // End-of-partition events carry no topic, so one reader per topic.
        let reader: BaseConsumer<ToTheEnd> = client_config(&self.kafka, &self.brokers)
            .set("group.id", format!("{}-restore", self.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create_with_context(ToTheEnd)
            .map_err(kafka("changelog reader"))?;
        let patience = RESTORE_TIMEOUT.max(
            Duration::from_millis(self.kafka.transaction_timeout_ms) + Duration::from_secs(10),
        );
        self.wait_stable(&reader, changelog, &ends, patience, visit)?;
        reader.assign(&tpl).map_err(kafka("changelog assign"))?;
        let starts: BTreeMap<i32, Option<i64>> = from.iter().copied().collect();
        let mut open: BTreeSet<i32> = starts.keys().copied().collect();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut read = 0u64;
        let mut last_news = super::service::now();
        let mut last_log = super::service::now();
        while !open.is_empty() {
            if last_news.elapsed() > patience {
                return Err(CoordError::Port(PortError::retry(
                    "restore",
                    format!("reading `{changelog}` timed out"),
                )));
            }
            if last_log.elapsed() > RESTORE_LOG_EVERY {
                last_log = super::service::now();
                // Offsets left up to each open partition's end when the read
                // began (transaction markers and compaction make it
                // approximate).
                let left: i64 = open
                    .iter()
                    .map(|p| {
                        let at = next.get(p).copied().or(starts[p]).unwrap_or(0);
                        (ends.get(p).copied().unwrap_or(0) - at).max(0)
                    })
                    .sum();
                tracing::info!(
                    changelog,
                    partitions = open.len(),
                    records = read,
                    offsets_left = left,
                    "restoring state"
                );
            }
            match reader.poll(Duration::from_millis(100)) {
                None => visit(ChangelogEvent::Waiting)?,
                Some(Err(KafkaError::PartitionEOF(p))) if open.contains(&p) => {
                    let position = reader
                        .position()
                        .ok()
                        .and_then(|tpl| {
                            tpl.find_partition(changelog, p)
                                .and_then(|e| e.offset().to_raw())
                        })
                        .filter(|o| *o >= 0);
                    open.remove(&p);
                    last_news = super::service::now();
                    let end = position
                        .or_else(|| next.get(&p).copied())
                        .or(starts[&p])
                        .unwrap_or(0);
                    visit(ChangelogEvent::End(p, end))?;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(kafka("changelog read")(e)),
                Some(Ok(m)) => {
                    next.insert(m.partition(), m.offset() + 1);
                    last_news = super::service::now();
                    read += 1;
                    visit(ChangelogEvent::Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key(),
                        value: m.payload(),
                    })?;
                }
            }
        }
        reader.unassign().map_err(kafka("changelog unassign"))?;
        Ok(())
    }
}
