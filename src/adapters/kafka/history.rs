//! A topic's history read whole, for `tripline backtest --topic`: every
//! partition from its earliest record to the end it has when the read
//! begins, read_committed (nothing of an aborted or open transaction).

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

/// Every record value of `topic` (records without one are left out), in
/// partition order and each partition's offset order, and how many
/// partitions it has. A topic that does not exist is an error naming it.
pub fn read_topic(
    k: &KafkaConfig,
    brokers: &str,
    topic: &str,
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
        let (low, high) = consumer
            .fetch_watermarks(topic, p, ADMIN_TIMEOUT)
            .map_err(kafka)?;
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
