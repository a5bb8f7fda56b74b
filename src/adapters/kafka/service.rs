//! The running service: a consumer-group member that routes each input
//! partition's records to its [`Shard`] actor and commits, every checkpoint
//! interval, one Kafka transaction holding the alerts, the dead letters and
//! the input offsets of the interval.
//!
//! # Exactly once
//!
//! Each checkpoint sends a [`Barrier`] to every shard; it queues behind the
//! records already handed over, so each answer is a consistent cut (outputs
//! and the offset they cover). The coordinator then produces the outputs in
//! a transaction, adds the offsets with `send_offsets_to_transaction` (the
//! group's generation fences a member that lost its partitions), and
//! commits. A transaction that fails is aborted and every shard is rewound:
//! its engine starts again and its partition is re-read from the last
//! committed offset, so nothing is lost and nothing is produced twice.
//!
//! On revocation the coordinator checkpoints before letting go, so the next
//! owner starts exactly where this member stopped.
//!
//! # Threads
//!
//! The coordinator runs on a blocking thread (the Kafka client calls it
//! makes block); shards run on `runtime.shard_threads` actix arbiters.
//! Backpressure: when a shard's mailbox is full its partition is paused
//! until the shard catches up, so memory stays bounded.
//!
//! Until the state issue lands, per-key state lives in memory only: a
//! partition that changes owner, or a rewind, starts its keys afresh.

use super::{client_config, ensure_topics, partition_counts};
use crate::config::Config;
use crate::engine::RuleSet;
use crate::runtime::{Barrier, DeadLetter, Record, Records, Shard, ShardOutput};
use actix::dev::SendError;
use actix::{Actor, Addr, Arbiter, ArbiterHandle};
use futures::executor::block_on;
use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one transactional call (init, offsets, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// Records polled before the coordinator looks at its clock again.
const POLL_BURST: usize = 4096;

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A Kafka client call failed in a way that cannot be retried.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The input topic does not exist.
    #[error("input topic `{0}` does not exist")]
    NoInputTopic(String),
    /// A shard stopped answering (its thread died).
    #[error("shard of partition {0} is gone")]
    ShardGone(i32),
    /// The service thread could not start or panicked.
    #[error("service thread: {0}")]
    Thread(String),
}

/// Counters, updated as transactions commit.
#[derive(Debug, Default)]
pub struct Progress {
    /// Input records whose offsets have been committed.
    pub records: AtomicU64,
    /// Alerts committed.
    pub alerts: AtomicU64,
    /// Dead letters committed.
    pub dead_letters: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Transactions aborted (each followed by a rewind).
    pub aborts: AtomicU64,
    /// Partitions currently assigned.
    pub partitions: AtomicU64,
}

/// A running service.
pub struct ServiceHandle {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    thread: JoinHandle<Result<(), ServiceError>>,
}

impl ServiceHandle {
    /// Counters.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Asks the service to stop: it commits what it has processed, leaves
    /// the group and returns from [`ServiceHandle::join`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the service thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the service to end.
    pub fn join(self) -> Result<(), ServiceError> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(ServiceError::Thread("panicked".into())))
    }
}

/// Starts the service on its own threads.
pub fn start(
    config: Config,
    brokers: String,
    rules: Arc<RuleSet>,
) -> Result<ServiceHandle, ServiceError> {
    let k = &config.kafka;
    ensure_topics(
        k,
        &brokers,
        &[&k.alerts_topic, &k.dead_letter_topic],
        k.partitions,
    )?;
    if partition_counts(k, &brokers, &[&k.input_topic])?[0].is_none() {
        return Err(ServiceError::NoInputTopic(k.input_topic.clone()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let (s, p) = (stop.clone(), progress.clone());
    let thread = std::thread::Builder::new()
        .name("tripline-service".into())
        .spawn(move || run(config, brokers, rules, s, p))
        .map_err(|e| ServiceError::Thread(e.to_string()))?;
    Ok(ServiceHandle {
        stop,
        progress,
        thread,
    })
}

fn run(
    config: Config,
    brokers: String,
    rules: Arc<RuleSet>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Result<(), ServiceError> {
    let system = actix::System::new();
    system.block_on(async move {
        let threads = match config.runtime.shard_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
        let handles: Vec<ArbiterHandle> = arbiters.iter().map(|a| a.handle()).collect();
        let result = tokio::task::spawn_blocking(move || {
            coordinate(config, brokers, rules, handles, stop, progress)
        })
        .await
        .unwrap_or_else(|e| Err(ServiceError::Thread(e.to_string())));
        for a in arbiters {
            a.stop();
            a.join().ok();
        }
        result
    })
}

/// One shard and what the coordinator holds for it.
struct Slot {
    addr: Addr<Shard>,
    /// Records polled but not yet handed over.
    building: Vec<Record>,
    /// A batch the shard's full mailbox refused; its partition is paused.
    refused: Option<Vec<Record>>,
}

struct Coordinator {
    config: Config,
    rules: Arc<RuleSet>,
    producer: BaseProducer,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    shards: BTreeMap<i32, Slot>,
    progress: Arc<Progress>,
    /// An error raised inside a rebalance callback, for the main loop.
    failed: Option<ServiceError>,
}

struct Ctx {
    inner: Arc<Mutex<Coordinator>>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Ctx>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut c = lock(&self.inner);
            // Commit what the revoked shards did before another member takes over.
            if let Err(e) = c.checkpoint(consumer) {
                c.recover(consumer, e);
            }
            for e in tpl.elements() {
                c.shards.remove(&e.partition());
            }
            c.progress
                .partitions
                .store(c.shards.len() as u64, Ordering::Relaxed);
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Ctx>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut c = lock(&self.inner);
            for e in tpl.elements() {
                c.start_shard(e.partition());
            }
            c.progress
                .partitions
                .store(c.shards.len() as u64, Ordering::Relaxed);
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

fn lock(m: &Mutex<Coordinator>) -> MutexGuard<'_, Coordinator> {
    // A panic elsewhere cannot leave the coordinator half-updated in a way
    // that matters: every checkpoint starts from the shards' own state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn coordinate(
    config: Config,
    brokers: String,
    rules: Arc<RuleSet>,
    arbiters: Vec<ArbiterHandle>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Result<(), ServiceError> {
    let k = &config.kafka;
    let instance = if k.instance_id.is_empty() {
        host_name()
    } else {
        k.instance_id.clone()
    };
    let producer: BaseProducer = client_config(k, &brokers)
        .set("transactional.id", format!("{}-{}", k.group_id, instance))
        .set("enable.idempotence", "true")
        .set(
            "transaction.timeout.ms",
            k.transaction_timeout_ms.to_string(),
        )
        .set("linger.ms", "1")
        .create()?;
    producer.init_transactions(TXN_TIMEOUT)?;
    let inner = Arc::new(Mutex::new(Coordinator {
        config: config.clone(),
        rules,
        producer,
        arbiters,
        next_arbiter: 0,
        shards: BTreeMap::new(),
        progress,
        failed: None,
    }));
    let consumer: BaseConsumer<Ctx> = client_config(k, &brokers)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .create_with_context(Ctx {
            inner: inner.clone(),
        })?;
    consumer.subscribe(&[&k.input_topic])?;
    tracing::info!(topic = %k.input_topic, group = %k.group_id, %instance, "service started");

    let interval = Duration::from_millis(config.checkpoint.interval_ms);
    let mut next_checkpoint = now() + interval;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break lock(&inner).checkpoint(&consumer);
        }
        let wait = next_checkpoint
            .saturating_duration_since(now())
            .min(Duration::from_millis(50));
        let mut timeout = wait;
        let mut polled = 0;
        while polled < POLL_BURST {
            let Some(msg) = consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            polled += 1;
            match msg {
                Ok(m) => {
                    let record = Record {
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    };
                    lock(&inner).enqueue(&consumer, m.partition(), record);
                }
                Err(e) => tracing::warn!("consumer: {e}"),
            }
        }
        let mut c = lock(&inner);
        if let Some(e) = c.failed.take() {
            break Err(e);
        }
        c.hand_over(&consumer);
        if now() >= next_checkpoint {
            next_checkpoint = now() + interval;
            if let Err(e) = c.checkpoint(&consumer) {
                c.recover(&consumer, e);
                if let Some(e) = c.failed.take() {
                    break Err(e);
                }
            }
        }
    };
    // Leave the group before dropping the consumer: a subscribed consumer
    // that is dropped can hang in its destructor.
    consumer.unsubscribe();
    lock(&inner).shards.clear();
    drop(consumer);
    tracing::info!("service stopped");
    result
}

impl Coordinator {
    fn start_shard(&mut self, partition: i32) {
        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
        self.next_arbiter += 1;
        let rules = self.rules.clone();
        let capacity = self.config.runtime.max_queued_batches;
        let addr = Shard::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Shard::new(partition, rules)
        });
        self.shards.insert(
            partition,
            Slot {
                addr,
                building: Vec::new(),
                refused: None,
            },
        );
    }

    fn enqueue(&mut self, consumer: &BaseConsumer<Ctx>, partition: i32, record: Record) {
        let batch_size = self.config.runtime.batch_size;
        let Some(slot) = self.shards.get_mut(&partition) else {
            // A record fetched before its partition was revoked.
            return;
        };
        slot.building.push(record);
        if slot.building.len() >= batch_size && slot.refused.is_none() {
            let batch = std::mem::take(&mut slot.building);
            self.offer(consumer, partition, batch);
        }
    }

    /// Hands every waiting batch to its shard, pausing partitions whose
    /// shard is full and resuming those that caught up.
    fn hand_over(&mut self, consumer: &BaseConsumer<Ctx>) {
        let partitions: Vec<i32> = self.shards.keys().copied().collect();
        for p in partitions {
            let Some(slot) = self.shards.get_mut(&p) else {
                continue;
            };
            if let Some(batch) = slot.refused.take() {
                match slot.addr.try_send(Records(batch)) {
                    Ok(()) => self.pause(consumer, p, false),
                    Err(SendError::Full(Records(b)) | SendError::Closed(Records(b))) => {
                        slot.refused = Some(b);
                        continue;
                    }
                }
            }
            let Some(slot) = self.shards.get_mut(&p) else {
                continue;
            };
            if !slot.building.is_empty() {
                let batch = std::mem::take(&mut slot.building);
                self.offer(consumer, p, batch);
            }
        }
    }

    fn offer(&mut self, consumer: &BaseConsumer<Ctx>, partition: i32, batch: Vec<Record>) {
        let Some(slot) = self.shards.get_mut(&partition) else {
            return;
        };
        if let Err(SendError::Full(Records(b)) | SendError::Closed(Records(b))) =
            slot.addr.try_send(Records(batch))
        {
            slot.refused = Some(b);
            self.pause(consumer, partition, true);
        }
    }

    fn pause(&self, consumer: &BaseConsumer<Ctx>, partition: i32, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.kafka.input_topic, partition);
        let r = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        if let Err(e) = r {
            tracing::warn!(partition, pause, "cannot pause/resume: {e}");
        }
    }

    /// Commits everything processed so far in one transaction.
    fn checkpoint(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), ServiceError> {
        // Everything polled goes to the shards first, so the cut covers it
        // (a refused batch waits: its partition's offset stops before it).
        self.hand_over(consumer);
        let partitions: Vec<i32> = self.shards.keys().copied().collect();
        let answers = block_on(join_all(self.shards.values().map(|s| s.addr.send(Barrier))));
        let mut outputs: Vec<(i32, ShardOutput)> = Vec::with_capacity(answers.len());
        for (p, a) in partitions.into_iter().zip(answers) {
            outputs.push((p, a.map_err(|_| ServiceError::ShardGone(p))?));
        }
        if outputs.iter().all(|(_, o)| o.records == 0) {
            return Ok(());
        }
        let k = &self.config.kafka;
        self.producer.begin_transaction()?;
        let mut offsets = TopicPartitionList::new();
        let (mut alerts, mut dead, mut records) = (0u64, 0u64, 0u64);
        for (p, out) in &outputs {
            for a in &out.alerts {
                send(
                    &self.producer,
                    BaseRecord::to(&k.alerts_topic)
                        .key(a.key.as_slice())
                        .payload(a.value.as_slice()),
                )?;
            }
            for d in &out.dead_letters {
                let headers = dead_letter_headers(d, &k.input_topic, *p);
                let mut r = BaseRecord::to(&k.dead_letter_topic)
                    .payload(d.value.as_slice())
                    .headers(headers);
                if let Some(key) = &d.key {
                    r = r.key(key.as_slice());
                }
                send(&self.producer, r)?;
            }
            if let Some(next) = out.next_offset {
                offsets.add_partition_offset(&k.input_topic, *p, Offset::Offset(next))?;
            }
            alerts += out.alerts.len() as u64;
            dead += out.dead_letters.len() as u64;
            records += out.records;
        }
        let group = consumer
            .group_metadata()
            .ok_or(KafkaError::Subscription("no group metadata".into()))?;
        self.producer
            .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
        self.producer.commit_transaction(TXN_TIMEOUT)?;
        let p = &self.progress;
        p.records.fetch_add(records, Ordering::Relaxed);
        p.alerts.fetch_add(alerts, Ordering::Relaxed);
        p.dead_letters.fetch_add(dead, Ordering::Relaxed);
        p.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// After a failed checkpoint: abort the transaction and rewind every
    /// shard to the last commit. Errors that cannot be recovered from are
    /// left in `failed` for the main loop.
    fn recover(&mut self, consumer: &BaseConsumer<Ctx>, error: ServiceError) {
        tracing::warn!("checkpoint failed, rewinding to the last commit: {error}");
        if let ServiceError::Kafka(KafkaError::Transaction(e)) = &error
            && e.is_fatal()
        {
            self.failed = Some(error);
            return;
        }
        if let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT) {
            tracing::error!("cannot abort the transaction: {e}");
            self.failed = Some(e.into());
            return;
        }
        self.progress.aborts.fetch_add(1, Ordering::Relaxed);
        let partitions: Vec<i32> = self.shards.keys().copied().collect();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&self.config.kafka.input_topic, *p);
        }
        let committed = match consumer.committed_offsets(tpl, TXN_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                self.failed = Some(e.into());
                return;
            }
        };
        for p in partitions {
            self.shards.remove(&p);
            self.start_shard(p);
            let offset = match committed
                .find_partition(&self.config.kafka.input_topic, p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            self.pause(consumer, p, false);
            if let Err(e) = consumer.seek(&self.config.kafka.input_topic, p, offset, TXN_TIMEOUT) {
                self.failed = Some(e.into());
                return;
            }
        }
    }
}

fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The dead-letter record's headers: why, and where the record came from.
fn dead_letter_headers(d: &DeadLetter, topic: &str, partition: i32) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = d.offset.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "tripline.error.kind",
            value: Some(d.kind.as_str()),
        })
        .insert(Header {
            key: "tripline.error.reason",
            value: Some(d.reason.as_str()),
        })
        .insert(Header {
            key: "tripline.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "tripline.source.partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "tripline.source.offset",
            value: Some(offset.as_str()),
        })
}

/// The service's one clock: it paces checkpoints and idleness, never
/// decides what an event means.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tripline".into())
}
