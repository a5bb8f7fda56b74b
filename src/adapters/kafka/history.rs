//! A topic's history, for backtests (`tripline backtest --topic`, the rule
//! editor's backtest): every partition from its earliest record, or from
//! the first appended at or after a time, to the end it has when the read
//! begins, read_committed (nothing of an aborted or open transaction), and
//! the records put in event-time order.

use super::{ADMIN_TIMEOUT, ToTheEnd, client_config};
use crate::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// Why a topic's history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The topic does not exist (or has no partition).
    #[error("topic `{0}` does not exist on the brokers")]
    NoTopic(String),
    /// A client call failed.
    #[error("reading topic `{topic}`: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What the client said.
        source: KafkaError,
    },
    /// A partition stopped giving records before its end.
    #[error(
        "topic `{topic}` partition {partition}: no record for 10 s before its end (offset {end})"
    )]
    Stalled {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Its end when the read began.
        end: i64,
    },
}

/// Every record value of `topic` (records without one are left out) from
/// the first record appended at or after `since_ms` (epoch ms; `None`: the
/// earliest kept), in partition order and each partition's offset order,
/// and how many partitions it has. A topic that does not exist is an error
/// naming it.
pub fn read_topic(
    k: &KafkaConfig,
    brokers: &str,
    topic: &str,
    since_ms: Option<i64>,
) -> Result<(Vec<Vec<u8>>, usize), HistoryError> {
    let kafka = |source: KafkaError| HistoryError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let consumer: BaseConsumer<ToTheEnd> = client_config(k, brokers)
        .set("group.id", format!("{}-backtest", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(ToTheEnd)
        .map_err(kafka)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(HistoryError::NoTopic(topic.to_string()));
    }
    let mut by_partition: Vec<Vec<Vec<u8>>> = vec![Vec::new(); partitions.len()];
    for (i, &p) in partitions.iter().enumerate() {
        let (mut low, high) = consumer
            .fetch_watermarks(topic, p, ADMIN_TIMEOUT)
            .map_err(kafka)?;
        if let Some(since) = since_ms {
            let mut at = TopicPartitionList::new();
            at.add_partition_offset(topic, p, Offset::Offset(since))
                .map_err(kafka)?;
            let found = consumer
                .offsets_for_times(at, ADMIN_TIMEOUT)
                .map_err(kafka)?;
            // No record at or after the time: nothing to read here.
            low = match found.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => high,
            };
        }
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .map_err(kafka)?;
        consumer.assign(&tpl).map_err(kafka)?;
        loop {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(m)) => {
                    if let Some(v) = m.payload() {
                        by_partition[i].push(v.to_vec());
                    }
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(kafka(e)),
                None => {
                    return Err(HistoryError::Stalled {
                        topic: topic.to_string(),
                        partition: p,
                        end: high,
                    });
                }
            }
        }
    }
    let n = partitions.len();
    Ok((by_partition.into_iter().flatten().collect(), n))
}

/// `records` as one text of a record per line, in event-time order (the
/// order a file of the same events has; a topic's partitions interleave
/// keys in no time order), records that do not decode last: what a
/// backtest reads a stream's events from.
pub fn in_event_time_order(decoder: &crate::event::Decoder, records: Vec<Vec<u8>>) -> Vec<u8> {
    let mut timed: Vec<(crate::event::EventTime, Vec<u8>)> = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let t = decoder.decode(&r, i as u64).map_or(i64::MAX, |e| e.time);
            (t, r)
        })
        .collect();
    timed.sort_by_key(|(t, _)| *t);
    let mut text = Vec::with_capacity(timed.iter().map(|(_, r)| r.len() + 1).sum());
    for (_, r) in timed {
        // One record, one line: a raw newline in JSON is only ever
        // whitespace between tokens.
        text.extend(r.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
        text.push(b'\n');
    }
    text
}

/// The service's input topics, for the rule editor's backtest (the API's
/// [`History`](crate::adapters::api::History) port).
pub struct KafkaHistory {
    /// The Kafka settings (the main stream's topic, client properties).
    pub config: KafkaConfig,
    /// The brokers.
    pub brokers: String,
}

impl crate::adapters::api::History for KafkaHistory {
    fn events(
        &self,
        rules: &crate::engine::RuleSet,
        since_ms: i64,
    ) -> Result<crate::adapters::api::StreamEvents, crate::adapters::api::HistoryReadError> {
        let topics = crate::coordinator::Topology::input_topics(rules, &self.config.input_topic);
        let mut out = Vec::new();
        for (stream, topic) in topics.iter().enumerate() {
            let (records, _) = read_topic(&self.config, &self.brokers, topic, Some(since_ms))?;
            let Some(decoder) = rules.decoder_for(stream as u16) else {
                continue;
            };
            out.push((stream as u16, in_event_time_order(decoder, records)));
        }
        Ok(out)
    }
}
