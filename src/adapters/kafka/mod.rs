//! Kafka at the edges of the service: client settings, topic creation, the
//! embedded broker, and the [`service`] that consumes the input topic in a
//! consumer group and produces alerts and dead letters exactly once.

pub mod alerts;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod changelog;
mod compacted;
pub mod history;
pub mod identity;
pub mod lists;
pub mod owners;
mod restorer;
pub mod service;
pub mod shards;
pub mod sink;
mod source;
pub mod tables;
pub mod trials;
mod watch;
pub use crate::coordinator::topology;

use crate::config::KafkaConfig;
use futures::executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

pub use service::{Progress, ServiceError, ServiceHandle};

/// The context of a reader that reads partitions to their end: reaching
/// the end is what it waits for, not an error to log.
pub struct ToTheEnd;

impl rdkafka::ClientContext for ToTheEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!("{error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ToTheEnd {}

/// How long a metadata or admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings every client shares: brokers and the configured passthrough
/// properties (TLS, SASL).
pub fn client_config(kafka: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

/// This process's name among the members of its groups: `instance_id`, or
/// the host name.
pub fn instance_name(kafka: &KafkaConfig) -> String {
    if kafka.instance_id.is_empty() {
        service::host_name()
    } else {
        kafka.instance_id.clone()
    }
}

/// The settings of a member of consumer group `group` (every group the
/// service subscribes in: its input and its webhooks). With
/// `static_membership` the member is static in each (`group.instance.id`):
/// a restarted instance — after a crash too — takes its partitions back at
/// once instead of waiting for a rebalance around a member that is gone.
pub fn group_member_config(kafka: &KafkaConfig, brokers: &str, group: &str) -> ClientConfig {
    let mut c = client_config(kafka, brokers);
    c.set("group.id", group);
    if kafka.static_membership {
        c.set("group.instance.id", instance_name(kafka));
    }
    c
}

/// The largest record (key and value) the service produces: the producer's
/// `message.max.bytes` (librdkafka's default 1,000,000 unless set in
/// `kafka.client`) less room for headers. Outputs are bounded below it
/// (see [`crate::runtime::Shard::with_output_limit`]).
pub fn output_limit(kafka: &KafkaConfig) -> usize {
    let producer_max = kafka
        .client
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1_000_000);
    producer_max.saturating_sub(16 * 1024).max(64 * 1024)
}

/// The partitions of `topic` to assign, each read from its first record.
pub fn from_beginning(
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    Ok(tpl)
}

/// Sends `record`, waiting while the producer's local queue is full; any
/// other error is returned.
pub fn send_waiting<K, P>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The cluster's topics and their partition counts, as one metadata
/// request saw them.
pub struct Topics(hashbrown::HashMap<String, usize>);

impl Topics {
    /// Fetches the metadata of every topic in one round trip.
    pub fn fetch(kafka: &KafkaConfig, brokers: &str) -> Result<Topics, KafkaError> {
        let probe: BaseConsumer = client_config(kafka, brokers).create()?;
        let md = probe.fetch_metadata(None, ADMIN_TIMEOUT)?;
        Ok(Topics(
            md.topics()
                .iter()
                .filter(|m| m.error().is_none() && !m.partitions().is_empty())
                .map(|m| (m.name().to_string(), m.partitions().len()))
                .collect(),
        ))
    }

    /// `topic`'s partition count, or `None` when it does not exist.
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        self.0.get(topic).copied()
    }
}

/// The configuration of a compacted topic (changelogs, the registry, lists,
/// tables): the broker keeps the latest record of each key.
pub const COMPACTED: &[(&str, &str)] = &[("cleanup.policy", "compact")];

/// A topic to create when missing: its partitions and configuration (e.g.
/// `cleanup.policy`).
#[derive(Clone, Debug)]
pub struct TopicSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its partition count.
    pub partitions: i32,
    /// Its configuration.
    pub configs: &'a [(&'a str, &'a str)],
}

impl<'a> TopicSpec<'a> {
    /// A topic of `partitions` partitions, default configuration.
    pub fn new(name: &'a str, partitions: i32) -> Self {
        TopicSpec {
            name,
            partitions,
            configs: &[],
        }
    }

    /// The same topic with configuration `configs`.
    pub fn with(self, configs: &'a [(&'a str, &'a str)]) -> Self {
        TopicSpec { configs, ..self }
    }
}

/// The partition counts of `topics` (`None` for one that does not exist).
pub fn partition_counts(
    kafka: &KafkaConfig,
    brokers: &str,
    topics: &[&str],
) -> Result<Vec<Option<usize>>, KafkaError> {
    let known = Topics::fetch(kafka, brokers)?;
    Ok(topics.iter().map(|t| known.partitions(t)).collect())
}

/// Creates the topics that do not exist yet with `partitions` partitions and
/// the broker's default replication. Existing topics are left alone.
pub fn ensure_topics(
    kafka: &KafkaConfig,
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<(), KafkaError> {
    ensure_topics_with(kafka, brokers, topics, partitions, &[])
}

/// [`ensure_topics`] with topic configuration (e.g. `cleanup.policy`).
pub fn ensure_topics_with(
    kafka: &KafkaConfig,
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let specs: Vec<TopicSpec<'_>> = topics
        .iter()
        .map(|t| TopicSpec::new(t, partitions).with(configs))
        .collect();
    create_missing(kafka, brokers, &Topics::fetch(kafka, brokers)?, &specs)
}

/// Creates those of `specs` that `known` lacks, in one request (the
/// broker's default replication). Existing topics are left alone.
pub fn create_missing(
    kafka: &KafkaConfig,
    brokers: &str,
    known: &Topics,
    specs: &[TopicSpec<'_>],
) -> Result<(), KafkaError> {
    let mut missing: Vec<NewTopic> = Vec::new();
    for spec in specs {
        let new = !missing.iter().any(|m| m.name == spec.name);
        if new && known.partitions(spec.name).is_none() {
            missing.push(spec.configs.iter().fold(
                NewTopic::new(spec.name, spec.partitions, TopicReplication::Fixed(-1)),
                |nt, (k, v)| nt.set(k, v),
            ));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for result in block_on(admin.create_topics(&missing, &opts))? {
        match result {
            Ok(_) => {}
            // Another member created it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic, "cannot create topic: {code}");
                });
            }
        }
    }
    Ok(())
}
