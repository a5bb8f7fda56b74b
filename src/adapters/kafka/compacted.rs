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

/// Where a reader of compacted topics starts, for data kept across
/// restarts (the disk tables store): at the position it kept for a
/// partition, or the beginning.
pub(super) struct Resume<'a> {
    /// The next offset of a partition whose records before it are kept.
    pub kept: &'a dyn Fn(&str, i32) -> Option<i64>,
    /// Forgets what is kept, when a partition ends before what was kept
    /// of it (its topic was deleted and made again).
    pub forget: &'a dyn Fn(),
}

/// Nothing kept: every partition is read from its beginning.
pub(super) const FROM_THE_BEGINNING: Resume<'static> = Resume {
    kept: &|_, _| None,
    forget: &|| {},
};

/// Reads every partition of `topics` from where `resume` says to the end it
/// has now, handing each record to `apply`; then goes on reading on a
/// thread named `thread` until the worker is stopped. `what` names the data
/// in logs and errors.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_then_follow(
    k: &KafkaConfig,
    brokers: &str,
    topics: &[String],
    group_suffix: &str,
    what: &'static str,
    thread: &'static str,
    resume: Resume<'_>,
    mut apply: impl FnMut(&BorrowedMessage<'_>) + Send + 'static,
) -> Result<Worker, ServiceError> {
    let consumer: BaseConsumer = client_config(k, brokers)
        .set("group.id", format!("{}-{group_suffix}", k.group_id))
        .set("enable.auto.commit", "false")
        // A kept position that retention has passed: read what is left.
        .set("auto.offset.reset", "earliest")
        .create()?;
    // (topic, partition, end when the read began, next offset to read)
    let mut progress: Vec<(String, i32, i64, i64)> = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), ADMIN_TIMEOUT)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = consumer.fetch_watermarks(topic, p.id(), ADMIN_TIMEOUT)?;
                let kept = (resume.kept)(topic, p.id()).unwrap_or(0);
                progress.push((topic.clone(), p.id(), high, kept));
            }
        }
    }
    if progress.iter().any(|(_, _, end, kept)| kept > end) {
        tracing::warn!(
            ?topics,
            "the {what} topics end before what was kept of them (made again?): read whole"
        );
        (resume.forget)();
        progress.iter_mut().for_each(|p| p.3 = 0);
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, _, next) in &progress {
        let from = match next {
            0 => Offset::Beginning,
            n => Offset::Offset(*n),
        };
        tpl.add_partition_offset(topic, *partition, from)?;
    }
    let resumed: i64 = progress.iter().map(|p| p.3).sum();
    let to_read: i64 = progress.iter().map(|(_, _, end, next)| end - next).sum();
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
    tracing::info!(
        ?topics,
        kept = resumed,
        read = to_read,
        "{what} read (records before `kept` were kept from the last run)"
    );
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
