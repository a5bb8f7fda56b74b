//! Reading compacted topics of reference data (lists, tables) the way every
//! instance needs them: whole, before the service consumes its first event
//! (what they held survives restarts), then followed on a thread of their
//! own, so that a change reaches every instance's next events.

use super::{ADMIN_TIMEOUT, ServiceError, client_config};
use crate::adapters::worker::Worker;
use crate::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// Reads every partition of `topics` from its beginning to the end it has
/// now, handing each record to `apply`; then goes on reading on a thread
/// named `thread` until the worker is stopped. `what` names the data in
/// logs and errors.
pub(super) fn read_then_follow(
    k: &KafkaConfig,
    brokers: &str,
    topics: &[String],
    group_suffix: &str,
    what: &'static str,
    thread: &'static str,
    mut apply: impl FnMut(&BorrowedMessage<'_>) + Send + 'static,
) -> Result<Worker, ServiceError> {
    let consumer: BaseConsumer = client_config(k, brokers)
        .set("group.id", format!("{}-{group_suffix}", k.group_id))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    // (topic, partition, end when the read began, next offset to read)
    let mut progress: Vec<(String, i32, i64, i64)> = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), ADMIN_TIMEOUT)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                let (_, high) = consumer.fetch_watermarks(topic, p.id(), ADMIN_TIMEOUT)?;
                progress.push((topic.clone(), p.id(), high, 0));
            }
        }
    }
    consumer.assign(&tpl)?;
    let caught_up =
        |progress: &[(String, i32, i64, i64)]| progress.iter().all(|(_, _, end, next)| next >= end);
    while !caught_up(&progress) {
        match consumer.poll(ADMIN_TIMEOUT) {
            Some(Ok(m)) => {
                apply(&m);
                if let Some(p) = progress
                    .iter_mut()
                    .find(|(t, p, _, _)| t == m.topic() && *p == m.partition())
                {
                    p.3 = m.offset() + 1;
                }
            }
            Some(Err(e)) => return Err(e.into()),
            // Nothing for a while: compaction may have removed the last
            // offsets, so ask where each partition is now.
            None => {
                let position = consumer.position()?;
                for (t, p, _, next) in &mut progress {
                    if let Some(o) = position
                        .find_partition(t, *p)
                        .and_then(|e| e.offset().to_raw())
                    {
                        *next = (*next).max(o);
                    }
                }
                if !caught_up(&progress) {
                    return Err(ServiceError::Thread(format!(
                        "the {what} topics {topics:?} could not be read to their end"
                    )));
                }
            }
        }
    }
    tracing::info!(?topics, "{what} read");
    Worker::spawn(thread, move |stop| {
        while !stop.requested() {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => apply(&m),
                Some(Err(e)) => tracing::warn!("reading the {what} topics: {e}"),
                None => {}
            }
        }
        Ok(())
    })
    .map_err(|e| ServiceError::Thread(e.to_string()))
}
