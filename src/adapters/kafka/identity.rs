//! The transactional ids a member produces under, and the record of the
//! one in use that lets the next start abort what this one left open.
//!
//! A member writes under `<group>-<instance>.<generation>`. It never writes
//! again under a producer whose transaction was aborted: it moves to the
//! next generation instead, which the broker gives a new producer id. The
//! reason is a broker that, unlike Kafka, keeps listing an aborted
//! transaction in every later read_committed fetch (noida-db 0.2.3 does):
//! the client then treats every later record of that producer id as
//! aborted, and committed alerts would never be read.
//!
//! So that a restart can still fence the previous process (and abort its
//! open transaction, which would otherwise hold back every read_committed
//! reader until the transaction times out), the generation is recorded in
//! the compacted topic `<group>.producers`, keyed by instance, *before* its
//! producer writes anything. On start the member initialises the recorded
//! generation's id (the broker aborts its open transaction and fences any
//! zombie still using it), then moves to the next one.
//!
//! On Kafka, whose transactional ids expire after a week without use
//! (`transactional.id.expiration.ms`), the old generations cost nothing.

use super::client_config;
use super::sink::Deliveries;
use crate::config::KafkaConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long recording a generation or initialising a producer may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The compacted topic that records each instance's current generation.
pub fn registry_topic(group: &str) -> String {
    format!("{group}.producers")
}

/// How the registry topic `topic` ([`registry_topic`]) is created: one
/// partition, compacted.
pub fn registry_spec(topic: &str) -> super::TopicSpec<'_> {
    super::TopicSpec::new(topic, 1).with(super::COMPACTED)
}

/// The generations of one member's transactional id.
pub struct Identity {
    kafka: KafkaConfig,
    brokers: String,
    instance: String,
    /// The generation last recorded for this instance, if any.
    generation: Option<u64>,
    recorder: BaseProducer<Recorder>,
}

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A Kafka call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The registry holds a value that is not a generation.
    #[error("`{topic}` offset {offset}: `{value}` is not a generation number")]
    Damaged {
        /// The registry topic.
        topic: String,
        /// Where the bad record is.
        offset: i64,
        /// What it holds.
        value: String,
    },
    /// The registry could not be read to its end in time.
    #[error("reading `{0}` timed out")]
    Timeout(String),
}

impl Identity {
    /// Reads the generation recorded for `instance` in the registry topic,
    /// which the caller has created ([`registry_spec`]).
    pub fn open(kafka: &KafkaConfig, brokers: &str, instance: &str) -> Result<Self, IdentityError> {
        let topic = registry_topic(&kafka.group_id);
        // Not idempotent: an idempotent producer first asks for a producer
        // id, and librdkafka paces that request on a 500 ms timer, which
        // the start paid twice. One record per start needs no ordering
        // guarantee, and a retried duplicate records the same generation.
        let recorder = client_config(kafka, brokers)
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1")
            .create_with_context(Recorder::default())?;
        let generation = read_generation(kafka, brokers, &topic, instance)?;
        Ok(Identity {
            kafka: kafka.clone(),
            brokers: brokers.to_string(),
            instance: instance.to_string(),
            generation,
            recorder,
        })
    }

    /// The generation recorded for this instance when it was opened.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// The transactional id of `generation`.
    pub fn transactional_id(&self, generation: u64) -> String {
        format!("{}-{}.{generation}", self.kafka.group_id, self.instance)
    }

    /// Fences the recorded generation: the broker aborts its open
    /// transaction, if any, and rejects any process still writing under it.
    pub fn fence_previous(&self) -> Result<(), IdentityError> {
        if let Some(g) = self.generation {
            let producer = self.producer(g)?;
            producer.init_transactions(TIMEOUT)?;
            tracing::info!(id = %self.transactional_id(g), "previous producer fenced");
        }
        Ok(())
    }

    /// Records the next generation, then returns its initialised producer.
    pub fn next_producer(&mut self) -> Result<BaseProducer<Deliveries>, IdentityError> {
        let g = self.generation.map_or(0, |g| g + 1);
        self.record(g)?;
        self.generation = Some(g);
        let producer = self.producer(g)?;
        producer.init_transactions(TIMEOUT)?;
        tracing::debug!(id = %self.transactional_id(g), "transactional producer ready");
        Ok(producer)
    }

    fn producer(&self, generation: u64) -> KafkaResult<BaseProducer<Deliveries>> {
        let k = &self.kafka;
        client_config(k, &self.brokers)
            .set("transactional.id", self.transactional_id(generation))
            .set("enable.idempotence", "true")
            .set(
                "transaction.timeout.ms",
                k.transaction_timeout_ms.to_string(),
            )
            // A checkpoint waits for the records produced at its barrier
            // (the rest went ahead, see `Coordinator::flush`): they leave at
            // once; records made while a request is in flight batch anyway.
            .set("linger.ms", "0")
            // A broker still finishing the previous transaction answers "try
            // again"; the default 100 ms backoff would be paid by every alert.
            .set("retry.backoff.ms", "5")
            .create_with_context(Deliveries::default())
    }

    fn record(&self, generation: u64) -> Result<(), IdentityError> {
        let topic = registry_topic(&self.kafka.group_id);
        let value = generation.to_string();
        self.recorder
            .send(
                BaseRecord::to(&topic)
                    .partition(0)
                    .key(self.instance.as_bytes())
                    .payload(value.as_bytes()),
            )
            .map_err(|(e, _)| e)?;
        self.recorder.flush(TIMEOUT)?;
        match self.recorder.context().failed.lock() {
            Ok(mut failed) => match failed.take() {
                Some(e) => Err(e.into()),
                None => Ok(()),
            },
            Err(_) => Ok(()),
        }
    }
}

/// Keeps the error of a failed delivery: recording a generation that did
/// not reach the broker must stop the start.
#[derive(Default)]
struct Recorder {
    failed: Arc<Mutex<Option<KafkaError>>>,
}

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result
            && let Ok(mut failed) = self.failed.lock()
        {
            *failed = Some(e.clone());
        }
    }
}

/// The last generation recorded for `instance`, reading the registry from
/// its first record to its last.
fn read_generation(
    kafka: &KafkaConfig,
    brokers: &str,
    topic: &str,
    instance: &str,
) -> Result<Option<u64>, IdentityError> {
    let reader: BaseConsumer<super::ToTheEnd> = client_config(kafka, brokers)
        .set("group.id", format!("{}-producers", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(super::ToTheEnd)?;
    // The bounds first: an empty registry (a first start) needs no read,
    // and a read assigned at an absolute offset skips the offset lookup
    // that `Offset::Beginning` costs (librdkafka paces it on a 500 ms
    // timer).
    let (low, high) = reader.fetch_watermarks(topic, 0, TIMEOUT)?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))?;
    reader.assign(&tpl)?;
    let started = super::service::now();
    let mut generation = None;
    loop {
        if started.elapsed() > TIMEOUT {
            return Err(IdentityError::Timeout(topic.to_string()));
        }
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                let last = m.offset() + 1 >= high;
                if m.key() == Some(instance.as_bytes()) {
                    generation = Some(parse_generation(topic, &m)?);
                }
                if last {
                    break;
                }
            }
        }
    }
    reader.unassign()?;
    Ok(generation)
}

fn parse_generation(topic: &str, m: &BorrowedMessage<'_>) -> Result<u64, IdentityError> {
    let value = m.payload().unwrap_or_default();
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| IdentityError::Damaged {
            topic: topic.to_string(),
            offset: m.offset(),
            value: String::from_utf8_lossy(value).into_owned(),
        })
}
