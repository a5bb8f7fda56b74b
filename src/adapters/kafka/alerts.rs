//! The alerts topic read back (read_committed): the one reader behind the
//! REST API's feed, the webhooks and `demo`. It sees every committed alert,
//! whichever instance committed it and whenever (before a restart or a
//! rebalance too), and nothing of an aborted transaction.
//!
//! Readers differ only in where they start and whether they keep a place:
//! the API's feed starts about its last `keep` alerts before the end, the
//! demo at the beginning, both assigned every partition and keeping no
//! offsets; the webhooks are a group member that commits offsets once their
//! outbox holds what the offsets cover, so each instance delivers its
//! partitions' alerts and a restart goes on where the last run stopped.

use super::{ADMIN_TIMEOUT, ServiceError, client_config, group_member_config, partition_counts};
use crate::adapters::worker::Worker;
use crate::config::Config;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// One committed alert as read from the topic.
#[derive(Clone, Copy, Debug)]
pub struct AlertRecord<'a> {
    /// The alerts topic's partition.
    pub partition: i32,
    /// The record's offset in its partition.
    pub offset: i64,
    /// The record's key (the alert's key), empty when it has none.
    pub key: &'a [u8],
    /// The alert as committed (JSON).
    pub value: &'a [u8],
}

/// Where a reader that keeps no offsets starts.
#[derive(Clone, Copy, Debug)]
pub enum StartAt {
    /// Every alert the topic keeps.
    Beginning,
    /// About the last `n` alerts, spread over the partitions.
    Last(usize),
}

/// A read_committed reader of the alerts topic.
pub struct AlertsReader {
    consumer: BaseConsumer,
    topic: String,
    /// What the reader is, for its log lines.
    name: &'static str,
}

impl AlertsReader {
    /// A reader assigned every partition of the alerts topic from `start`,
    /// keeping no offsets (`name` tells it apart in the log and in the
    /// broker's client list).
    pub fn assigned(
        config: &Config,
        brokers: &str,
        name: &'static str,
        start: StartAt,
    ) -> Result<AlertsReader, ServiceError> {
        let k = &config.kafka;
        Self::assigned_to(config, brokers, name, start, &[&k.alerts_topic])
    }

    /// As [`AlertsReader::assigned`], over every partition of `topics` (a
    /// topic that does not exist yet is left out), `start` applying to
    /// each.
    pub fn assigned_to(
        config: &Config,
        brokers: &str,
        name: &'static str,
        start: StartAt,
        topics: &[&str],
    ) -> Result<AlertsReader, ServiceError> {
        let counts = partition_counts(&config.kafka, brokers, topics)?;
        let consumer: BaseConsumer = client_config(&config.kafka, brokers)
            .set("group.id", format!("{}-{name}", config.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (topic, count) in topics.iter().zip(counts) {
            let partitions = count.unwrap_or(0) as i32;
            for p in 0..partitions {
                let offset = match start {
                    StartAt::Beginning => Offset::Beginning,
                    StartAt::Last(n) => {
                        let per_partition = (n as i64 / i64::from(partitions.max(1))).max(1);
                        let (low, high) = consumer.fetch_watermarks(topic, p, ADMIN_TIMEOUT)?;
                        Offset::Offset((high - per_partition).max(low))
                    }
                };
                tpl.add_partition_offset(topic, p, offset)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(AlertsReader {
            consumer,
            topic: topics.first().map_or_else(String::new, |t| t.to_string()),
            name,
        })
    }

    /// A member of consumer group `group` reading the partitions the group
    /// gives it, from the group's committed offsets (the beginning where
    /// there are none); it commits with [`AlertsReader::commit`].
    pub fn member(
        config: &Config,
        brokers: &str,
        name: &'static str,
        group: &str,
    ) -> Result<AlertsReader, ServiceError> {
        let k = &config.kafka;
        let consumer: BaseConsumer = group_member_config(k, brokers, group)
            // A dead instance's partitions move as soon as the service's own.
            .set("session.timeout.ms", k.session_timeout_ms.to_string())
            .set("max.poll.interval.ms", k.max_poll_interval_ms.to_string())
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()?;
        consumer.subscribe(&[&k.alerts_topic])?;
        Ok(AlertsReader {
            consumer,
            topic: k.alerts_topic.clone(),
            name,
        })
    }

    /// Calls `each` with the alerts that arrive within `wait` (waiting only
    /// for the first: it returns as soon as no more are ready), at most
    /// `max`; returns how many. Errors of the read are logged and end it.
    pub fn read(&self, wait: Duration, max: usize, mut each: impl FnMut(AlertRecord<'_>)) -> usize {
        let mut n = 0;
        let mut timeout = wait;
        while n < max {
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => {
                    timeout = Duration::ZERO;
                    n += 1;
                    each(AlertRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().unwrap_or_default(),
                        value: m.payload().unwrap_or_default(),
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!("{}: reading the alerts topic: {e}", self.name);
                    break;
                }
                None => break,
            }
        }
        n
    }

    /// The partitions this reader is assigned now.
    pub fn assignment(&self) -> BTreeSet<i32> {
        self.consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    }

    /// Commits `offsets` (partition → the next offset to read) for the
    /// group of a [`AlertsReader::member`].
    pub fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (p, off) in offsets {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*off))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync)
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// Called with each committed alert (the record's value).
pub type OnAlert = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Reads the alerts and shadow topics on their own thread from about their
/// last `keep` alerts on, calling `on_alert` with each, until the worker is
/// stopped.
pub fn tail(
    config: &Config,
    brokers: &str,
    keep: usize,
    on_alert: OnAlert,
) -> Result<Worker, ServiceError> {
    // The shadow rules' alerts too: the API and the dashboard show them
    // (marked `"mode":"shadow"`) beside the live ones.
    let k = &config.kafka;
    let reader = AlertsReader::assigned_to(
        config,
        brokers,
        "alerts-tail",
        StartAt::Last(keep),
        &[&k.alerts_topic, &k.shadow_topic],
    )?;
    Worker::spawn("tripline-alert-tail", move |stop| {
        while !stop.requested() {
            reader.read(Duration::from_millis(100), 1000, |a| on_alert(a.value));
        }
        Ok(())
    })
    .map_err(|e| ServiceError::Thread(e.to_string()))
}
