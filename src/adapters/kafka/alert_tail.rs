//! The alerts topic read back (read_committed) for the REST API: every
//! instance sees every committed alert, whichever instance committed it and
//! whenever (before a restart or a rebalance too), so key scores and
//! `/v1/alerts` answer the same on every instance.

use super::{ADMIN_TIMEOUT, ServiceError, client_config, partition_counts};
use crate::config::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Called with each committed alert (the record's value).
pub type OnAlert = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// The reader's thread: stopped and waited for when dropped.
pub struct Tail {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// Reads the alerts topic on its own thread from about the last `keep`
/// alerts on, calling `on_alert` with each committed alert (the record's
/// value) until the returned [`Tail`] is dropped.
pub fn tail(
    config: &Config,
    brokers: &str,
    keep: usize,
    on_alert: OnAlert,
) -> Result<Tail, ServiceError> {
    let topic = config.kafka.alerts_topic.clone();
    let partitions = partition_counts(&config.kafka, brokers, &[&topic])?[0].unwrap_or(0) as i32;
    let consumer: BaseConsumer = client_config(&config.kafka, brokers)
        .set("group.id", format!("{}-alerts-tail", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    // Start each partition `keep / partitions` records before its end: the
    // log keeps about `keep` alerts in all.
    let per_partition = (keep as i64 / i64::from(partitions.max(1))).max(1);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, p, ADMIN_TIMEOUT)?;
        tpl.add_partition_offset(&topic, p, Offset::Offset((high - per_partition).max(low)))?;
    }
    consumer.assign(&tpl)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("tripline-alert-tail".into())
        .spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        if let Some(v) = m.payload() {
                            on_alert(v);
                        }
                    }
                    Some(Err(e)) => tracing::warn!("reading the alerts topic: {e}"),
                    None => {}
                }
            }
        })
        .map_err(|e| ServiceError::Thread(e.to_string()))?;
    Ok(Tail {
        stop,
        thread: Some(thread),
    })
}
