//! The lists topic (`kafka.lists_topic`, compacted): one record per list
//! and value, keyed `LIST\0VALUE`, whose value is the entry with its whole
//! history ([`ListEntry`]), so compaction keeps every change. Every
//! instance reads the whole topic into its [`Lists`] before it consumes
//! events (lists survive restarts) and goes on reading it, so a change
//! made through any instance's API reaches every instance's next events;
//! the API writes through [`KafkaListWriter`].

use super::{ServiceError, client_config, ensure_topics_with};
use crate::adapters::api::{ListWriteError, ListWriter};
use crate::adapters::worker::Worker;
use crate::config::Config;
use crate::lists::{ListEntry, Lists};
use futures::future::BoxFuture;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;

/// The record key of an entry.
fn record_key(entry: &ListEntry) -> Vec<u8> {
    let mut k = Vec::with_capacity(entry.list.len() + entry.value.len() + 1);
    k.extend_from_slice(entry.list.as_bytes());
    k.push(0);
    k.extend_from_slice(entry.value.as_bytes());
    k
}

/// Creates the lists topic if missing, reads it whole into `lists`, then
/// keeps reading it on its own thread until the worker is stopped.
pub fn follow(config: &Config, brokers: &str, lists: Arc<Lists>) -> Result<Worker, ServiceError> {
    let k = &config.kafka;
    ensure_topics_with(k, brokers, &[&k.lists_topic], 1, super::COMPACTED)?;
    let apply = move |m: &rdkafka::message::BorrowedMessage<'_>| {
        let Some(value) = m.payload() else {
            return;
        };
        match serde_json::from_slice::<ListEntry>(value) {
            Ok(entry) => lists.put(entry),
            Err(e) => tracing::warn!(
                offset = m.offset(),
                "lists topic: a record that is not a list entry: {e}"
            ),
        }
    };
    super::compacted::read_then_follow(
        k,
        brokers,
        std::slice::from_ref(&k.lists_topic),
        "lists",
        "lists",
        "tripline-lists",
        super::compacted::FROM_THE_BEGINNING,
        apply,
    )
}

/// Writes list changes to the lists topic (the API's [`ListWriter`]).
pub struct KafkaListWriter {
    producer: FutureProducer,
    topic: String,
    lists: Arc<Lists>,
}

impl KafkaListWriter {
    /// A writer to `config`'s lists topic that also applies what it wrote
    /// to `lists` (this instance's reader would, a moment later).
    pub fn new(
        config: &Config,
        brokers: &str,
        lists: Arc<Lists>,
    ) -> Result<KafkaListWriter, ServiceError> {
        let producer: FutureProducer = client_config(&config.kafka, brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(KafkaListWriter {
            producer,
            topic: config.kafka.lists_topic.clone(),
            lists,
        })
    }
}

impl ListWriter for KafkaListWriter {
    fn write(&self, entries: Vec<ListEntry>) -> BoxFuture<'static, Result<(), ListWriteError>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let lists = self.lists.clone();
        Box::pin(async move {
            for e in entries {
                let key = record_key(&e);
                let value = serde_json::to_vec(&e)?;
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| ListWriteError::Topic {
                        topic: topic.clone(),
                        source: Box::new(e),
                    })?;
                lists.put(e);
            }
            Ok(())
        })
    }
}
