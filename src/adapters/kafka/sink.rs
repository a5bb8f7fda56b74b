//! The coordinator's transactional sink over Kafka: a transactional
//! `BaseProducer` whose delivery reports the sink serves itself, and the
//! producer identity that gives a new producer after each abort.
//!
//! Kafka errors become [`PortError`]s here, once: a fatal transaction
//! error stops the service, a record the producer refuses for its size is
//! [`Fault::Refused`](crate::coordinator::Fault::Refused), anything else
//! fails the checkpoint, which is aborted and retried.

use super::identity::{Identity, IdentityError};
use crate::coordinator::{Outgoing, PortError, ShardId, TxSink};
use crate::telemetry;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long one transactional call (init, offsets, commit, abort) may take.
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// The W3C trace context header, read from input records and written on
/// the alerts of traced ones.
pub(super) const TRACEPARENT: &str = "traceparent";

/// The transactional producer.
pub(super) type TxProducer = BaseProducer<Deliveries>;

/// The transactional producer's delivery reports: for each shard of the
/// transaction in flight, the offset after its last changelog record, which
/// the local state records as the changelog position it includes. A
/// changelog record's opaque is its shard's [`changelog_opaque`]; 0 marks
/// records that are not state.
#[derive(Default)]
pub struct Deliveries {
    changelog_ends: Mutex<BTreeMap<ShardId, i64>>,
}

/// The delivery opaque of shard `id`'s changelog records (never 0).
fn changelog_opaque((t, p): ShardId) -> usize {
    ((t << 32) | p as u32 as usize) + 1
}

impl Deliveries {
    /// The ends recorded since the last call, by shard.
    fn take(&self) -> BTreeMap<ShardId, i64> {
        std::mem::take(
            &mut *self
                .changelog_ends
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if opaque == 0 {
            return;
        }
        let id = ((opaque - 1) >> 32, (opaque - 1) as u32 as i32);
        if let Ok(m) = result {
            let mut ends = self
                .changelog_ends
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let end = ends.entry(id).or_insert(-1);
            *end = (*end).max(rdkafka::message::Message::offset(m) + 1);
        }
    }
}

/// The sink: a transactional producer and the identity it came from.
pub struct KafkaSink {
    /// Both, once [`KafkaSink::ready`] has them.
    ready: Option<(TxProducer, Identity)>,
    /// The thread making them, until then.
    starting: Option<JoinHandle<Result<(TxProducer, Identity), IdentityError>>>,
}

impl KafkaSink {
    /// A sink writing with `identity`'s next producer, which a thread
    /// records and initialises meanwhile (two round trips to the broker,
    /// 0.15–0.2 s): the member joins its group and restores its state
    /// without waiting for them. The previous generation is fenced already
    /// ([`Identity::fence_previous`]), so nothing is read past what it left
    /// open; the first call to the sink waits for the producer.
    pub fn starting(mut identity: Identity) -> std::io::Result<KafkaSink> {
        let starting = std::thread::Builder::new()
            .name("tripline-producer".into())
            .spawn(move || Ok((identity.next_producer()?, identity)))?;
        Ok(KafkaSink {
            ready: None,
            starting: Some(starting),
        })
    }

    /// The producer and its identity, waiting for the start if it runs.
    fn ready(&mut self) -> Result<(&mut TxProducer, &mut Identity), PortError> {
        if let Some(starting) = self.starting.take() {
            let made = starting
                .join()
                .map_err(|_| PortError::fatal("producer identity", "its start panicked"))?
                .map_err(|e| PortError::fatal("producer identity", e))?;
            self.ready = Some(made);
        }
        match &mut self.ready {
            Some((producer, identity)) => Ok((producer, identity)),
            None => Err(PortError::fatal("producer identity", "no producer")),
        }
    }

    /// The producer (see [`KafkaSink::ready`]).
    fn producer(&mut self) -> Result<&mut TxProducer, PortError> {
        Ok(self.ready()?.0)
    }
}

/// The port error for a Kafka error of `call`.
pub(super) fn port_error(call: &'static str, e: KafkaError) -> PortError {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => PortError::fatal(call, e),
        KafkaError::MessageProduction(code) if refused_record(*code) => PortError::refused(call, e),
        _ => PortError::retry(call, e),
    }
}

/// Whether the producer refused one record for what it is (its size), not
/// for the state of the producer or the cluster.
fn refused_record(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage | C::InvalidRecord
    )
}

impl TxSink for KafkaSink {
    type Group = ConsumerGroupMetadata;

    fn begin(&mut self) -> Result<(), PortError> {
        let producer = self.producer()?;
        producer
            .begin_transaction()
            .map_err(|e| port_error("begin transaction", e))?;
        producer.context().take();
        Ok(())
    }

    fn send(&mut self, out: Outgoing<'_>) -> Result<(), PortError> {
        let opaque = out.changelog_of.map_or(0, changelog_opaque);
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(out.topic, opaque);
        if let Some(p) = out.partition {
            record = record.partition(p);
        }
        if let Some(k) = out.key {
            record = record.key(k);
        }
        if let Some(v) = out.value {
            record = record.payload(v);
        }
        let parent = out.span.and_then(telemetry::traceparent);
        if !out.headers.is_empty() || parent.is_some() {
            let mut headers = OwnedHeaders::new_with_capacity(out.headers.len() + 1);
            for (key, value) in out.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(*value),
                });
            }
            if let Some(parent) = &parent {
                headers = headers.insert(Header {
                    key: TRACEPARENT,
                    value: Some(parent.as_str()),
                });
            }
            record = record.headers(headers);
        }
        let producer = self.producer()?;
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // Serving delivery reports is what frees the queue.
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(port_error("send", e)),
            }
        }
    }

    fn send_offsets(
        &mut self,
        offsets: &[(&str, i32, i64)],
        group: &ConsumerGroupMetadata,
    ) -> Result<(), PortError> {
        let mut tpl = TopicPartitionList::new();
        for &(topic, partition, next) in offsets {
            tpl.add_partition_offset(topic, partition, Offset::Offset(next))
                .map_err(|e| port_error("send offsets", e))?;
        }
        self.producer()?
            .send_offsets_to_transaction(&tpl, group, TXN_TIMEOUT)
            .map_err(|e| port_error("send offsets", e))
    }

    /// Waits until every record produced so far is acknowledged, serving
    /// the delivery reports. (`Producer::flush` polls in 100 ms steps that
    /// a delivery report does not cut short, so every commit would wait
    /// them out.)
    fn deliver(&mut self) -> Result<(), PortError> {
        let started = super::service::now();
        let producer = self.producer()?;
        while producer.in_flight_count() > 0 {
            if started.elapsed() > TXN_TIMEOUT {
                return Err(port_error(
                    "deliver",
                    KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut),
                ));
            }
            producer.poll(Duration::from_millis(1));
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<BTreeMap<ShardId, i64>, PortError> {
        let producer = self.producer()?;
        producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| port_error("commit", e))?;
        Ok(producer.context().take())
    }

    /// librdkafka waits for the records in flight to be acknowledged or
    /// purged before it aborts, and a `BaseProducer` learns of them only
    /// when polled: the abort is called in short steps (it resumes where
    /// it stopped) with polls between them.
    fn abort(&mut self) -> Result<(), PortError> {
        let started = super::service::now();
        let producer = self.producer()?;
        loop {
            match producer.abort_transaction(Duration::from_millis(100)) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && started.elapsed() < TXN_TIMEOUT =>
                {
                    producer.poll(Duration::from_millis(10));
                }
                Err(e) => return Err(PortError::fatal("abort", e)),
            }
        }
    }

    fn renew(&mut self) -> Result<(), PortError> {
        let (producer, identity) = self.ready()?;
        *producer = identity
            .next_producer()
            .map_err(|e| PortError::fatal("producer identity", e))?;
        Ok(())
    }
}
