//! The running service: a consumer-group member that drives the
//! [exactly-once protocol](crate::coordinator) over Kafka. It polls the
//! input and internal topics, hands each record to the coordinator, paces
//! flushes and checkpoints, swaps in new rules at a checkpoint boundary, and
//! stops cleanly on request. The protocol itself lives in
//! [`crate::coordinator`]; this file only wires its ports: the consumer
//! ([`super::source`]), the transactional producer ([`super::sink`]), the
//! changelog reader ([`super::changelog`]), the shard actors
//! ([`super::shards`]) and the local store ([`crate::adapters::local`]).
//!
//! # Threads
//!
//! The coordinator runs on a blocking thread (the Kafka client calls it
//! makes block); shards run on `runtime.shard_threads` actix arbiters;
//! restores run on threads of their own (see [`super::restorer`]), so that
//! the loop keeps polling however long a shard's state takes to rebuild.
//! Rebalance callbacks run inside `poll`, on the same thread, and reach the
//! coordinator through the same mutex as the loop.

use super::changelog::KafkaChangelog;
use super::identity::{Identity, IdentityError};
use super::restorer::ThreadRestorer;
use super::shards::ActorShards;
pub use super::shards::ShardDirectory;
use super::sink::KafkaSink;
use super::source::{Ctx, KafkaSource, Member, MemberConsumer, lock, record_of};
use super::watch::{self, LoopState, Phase};
use super::{TopicSpec, Topics, create_missing};
use crate::adapters::local::{LocalError, LocalState, LocalWriter};
use crate::adapters::worker::{Stop, Worker, WorkerError};
use crate::config::Config;
use crate::coordinator::{
    Clock, CoordError, Coordinator, Parts, Ports, Settings, SourceTopic, Topology, TopologyError,
};
use crate::engine::RuleSet;
use crate::event::FieldPath;
use crate::telemetry::events::Telemetry;
use actix::{Arbiter, ArbiterHandle};
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::coordinator::Progress;

/// Records polled before the coordinator looks at its clock again.
const POLL_BURST: usize = 4096;
/// How long before a checkpoint the shards' output so far is produced into
/// the transaction (at most a quarter of the interval).
const FLUSH_LEAD: Duration = Duration::from_millis(20);

/// The coordinator's ports over Kafka, actix and RocksDB.
pub struct KafkaPorts;

impl Ports for KafkaPorts {
    type Group = ConsumerGroupMetadata;
    type Sink = KafkaSink;
    type Changelog = KafkaChangelog;
    type Local = LocalWriter;
    type Shards = ActorShards;
    type Clock = WallClock;
    type Observer = Telemetry;
    type Restorer = ThreadRestorer;
}

/// The monotonic clock of this process.
pub struct WallClock(Instant);

impl Clock for WallClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }

    fn epoch_ms(&self) -> i64 {
        crate::telemetry::now_ms()
    }
}

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A Kafka client call failed in a way that cannot be retried.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// An input topic (a stream's) does not exist.
    #[error(
        "input topic `{topic}` of stream `{stream}` does not exist: create it (`tripline topics` creates every topic the service needs), or read the stream from another topic (`kafka.input_topic` for the main stream, `topic \"NAME\"` in the stream's block for the others)"
    )]
    NoInputTopic {
        /// The topic.
        topic: String,
        /// The stream read from it.
        stream: String,
    },
    /// The rules cannot run partitioned by key.
    #[error(transparent)]
    Unpartitionable(#[from] TopologyError),
    /// The protocol met an error it cannot recover from.
    #[error("{0}")]
    Coordinator(#[from] CoordError),
    /// The local state could not be opened or read.
    #[error("{0}")]
    Local(#[from] LocalError),
    /// The transactional producer's identity could not be set up.
    #[error("producer identity: {0}")]
    Identity(#[from] IdentityError),
    /// The service thread could not start or panicked.
    #[error("service thread: {0}")]
    Thread(String),
}

/// A running service.
pub struct ServiceHandle {
    progress: Arc<Progress>,
    pending_rules: PendingRules,
    directory: Arc<ShardDirectory>,
    worker: Worker<ServiceError>,
}

/// A rule set waiting for the next checkpoint boundary.
type PendingRules = Arc<Mutex<Option<Arc<RuleSet>>>>;

impl ServiceHandle {
    /// Runs `rules` from the next checkpoint boundary on (already checked
    /// and compiled: a rule set with errors never gets here). Each shard
    /// migrates its state rule by rule and logs what it kept and reset (see
    /// [`crate::engine::Engine::migrate`]). A rule set whose rules are keyed
    /// by other fields than the running one's needs other internal topics:
    /// it is refused with an error in the log, and the running rules stay.
    /// A later call before the boundary replaces an earlier one.
    pub fn reload(&self, rules: Arc<RuleSet>) {
        *self
            .pending_rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rules);
    }

    /// Counters.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// The local shards, for key queries.
    pub fn directory(&self) -> &Arc<ShardDirectory> {
        &self.directory
    }

    /// Hands rule sets to the service from elsewhere (the REST API), as
    /// [`ServiceHandle::reload`] does.
    pub fn reloader(&self) -> impl Fn(Arc<RuleSet>) + Send + Sync + 'static {
        let pending = self.pending_rules.clone();
        move |rules| {
            *pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rules);
        }
    }

    /// Asks the service to stop: it commits what it has processed, leaves
    /// the group and returns from [`ServiceHandle::join`].
    pub fn stop(&self) {
        self.worker.stop();
    }

    /// Whether the service thread has ended.
    pub fn is_finished(&self) -> bool {
        self.worker.is_finished()
    }

    /// Waits for the service to end.
    pub fn join(self) -> Result<(), ServiceError> {
        self.worker.join().map_err(|e| match e {
            WorkerError::Failed(e) => e,
            other => ServiceError::Thread(other.to_string()),
        })
    }
}

/// Starts the service on its own threads; its engines look list lookups up
/// in `lists` and table lookups in `tables`.
pub fn start(
    config: Config,
    brokers: String,
    rules: Arc<RuleSet>,
    lists: Arc<crate::lists::Lists>,
    tables: Arc<crate::tables::Tables>,
) -> Result<ServiceHandle, ServiceError> {
    let k = &config.kafka;
    // The phases of a start are logged at debug level, timed by the log.
    tracing::debug!(group = %k.group_id, "service starting");
    // One metadata request and at most one creation for every topic the
    // service uses: each request costs a client and a round trip at start.
    let known = Topics::fetch(k, &brokers)?;
    let names = Topology::input_topics(&rules, &k.input_topic);
    let mut inputs = Vec::new();
    for (name, stream) in names.iter().zip(&rules.def().streams) {
        let Some(partitions) = known.partitions(name) else {
            return Err(ServiceError::NoInputTopic {
                topic: name.clone(),
                stream: stream.name.clone(),
            });
        };
        inputs.push(SourceTopic {
            name: name.clone(),
            partitions,
        });
    }
    let topology =
        Topology::with_inputs(&k.group_id, rules, inputs).map_err(ServiceError::Unpartitionable)?;
    let sources = topology.internal_partitions();
    let mut specs: Vec<TopicSpec<'_>> = [&k.alerts_topic, &k.shadow_topic, &k.dead_letter_topic]
        .into_iter()
        .map(|t| TopicSpec::new(t, k.partitions))
        .collect();
    // Internal topics have the input's partition count, so one key field's
    // events spread as widely as the input's.
    specs.extend(
        topology
            .internal()
            .map(|t| TopicSpec::new(t, sources as i32)),
    );
    // A changelog has a partition per partition of its topic.
    for (i, plan) in topology.topics.iter().enumerate() {
        let partitions = topology.inputs.get(i).map_or(sources, |t| t.partitions);
        specs.push(TopicSpec::new(&plan.changelog, partitions as i32).with(super::COMPACTED));
    }
    let retention = config.feature_log.retention_ms().to_string();
    let retention = [("retention.ms", retention.as_str())];
    if !config.feature_log.topic.is_empty() {
        specs.push(TopicSpec::new(&config.feature_log.topic, k.partitions).with(&retention));
    }
    if !config.trial.labels_topic.is_empty() {
        specs.push(TopicSpec::new(&config.trial.labels_topic, k.partitions));
    }
    let registry = super::identity::registry_topic(&k.group_id);
    specs.push(super::identity::registry_spec(&registry));
    create_missing(k, &brokers, &known, &specs)?;
    tracing::debug!("topics ready");
    let topology = Arc::new(topology);
    let progress = Arc::new(Progress::default());
    let pending_rules = PendingRules::default();
    let directory = Arc::new(ShardDirectory::new(sources as i32));
    let shared = Shared {
        progress: progress.clone(),
        pending_rules: pending_rules.clone(),
        directory: directory.clone(),
        lists,
        tables,
    };
    let worker = Worker::spawn("tripline-service", move |stop| {
        run(config, brokers, topology, shared, stop)
    })
    .map_err(|e| ServiceError::Thread(e.to_string()))?;
    Ok(ServiceHandle {
        progress,
        pending_rules,
        directory,
        worker,
    })
}

/// What the service thread shares with its handle.
struct Shared {
    progress: Arc<Progress>,
    directory: Arc<ShardDirectory>,
    pending_rules: PendingRules,
    lists: Arc<crate::lists::Lists>,
    tables: Arc<crate::tables::Tables>,
}

fn run(
    config: Config,
    brokers: String,
    topology: Arc<Topology>,
    shared: Shared,
    stop: Stop,
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
            coordinate(config, brokers, topology, handles, shared, &stop)
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

/// The feature log's settings: its topic, and the fields its rows copy —
/// the main stream's key and time, the configured ones, then every event
/// field a model reads that is not a feature (a version is trained on the
/// log, so the log holds all of its inputs).
fn feature_log(config: &Config, rules: &RuleSet) -> Option<crate::coordinator::FeatureLogSettings> {
    let f = &config.feature_log;
    if f.topic.is_empty() {
        return None;
    }
    if rules.feature_columns().is_empty() {
        tracing::warn!(
            topic = %f.topic,
            "feature_log: the rules define no `features` set, so its rows carry the copied fields only"
        );
    }
    let mut fields: Vec<(String, FieldPath)> = Vec::new();
    let stream = rules.def().streams.first();
    let named = stream.into_iter().flat_map(|s| [&s.key, &s.time]).cloned();
    let configured = f.fields.iter().filter_map(|name| FieldPath::parse(name));
    let columns = rules.feature_columns();
    let models = rules.def().models.iter();
    let read = models
        .flat_map(|m| std::iter::once(m).chain(m.candidate.as_deref()))
        .flat_map(|m| m.model.inputs())
        .filter(|input| !columns.iter().any(|c| **c == *input.as_str()))
        .filter_map(|input| FieldPath::parse(input));
    for path in named.chain(configured).chain(read) {
        let name = path.to_string();
        if !fields.iter().any(|(n, _)| *n == name) {
            fields.push((name, path));
        }
    }
    Some(crate::coordinator::FeatureLogSettings {
        topic: f.topic.clone(),
        fields: fields.into(),
    })
}

/// The protocol's settings from the service's configuration.
fn settings(
    config: &Config,
    lists: Arc<crate::lists::Lists>,
    tables: Arc<crate::tables::Tables>,
    rules: &RuleSet,
) -> Settings {
    let k = &config.kafka;
    Settings {
        feature_log: feature_log(config, rules),
        input_topic: k.input_topic.clone(),
        group: k.group_id.clone(),
        alerts_topic: k.alerts_topic.clone(),
        shadow_topic: k.shadow_topic.clone(),
        dead_letter_topic: k.dead_letter_topic.clone(),
        batch_size: config.runtime.batch_size,
        memory_budget_bytes: config.state.memory_budget_mb.saturating_mul(1 << 20),
        output_limit: super::output_limit(k),
        lists,
        tables,
    }
}

fn coordinate(
    config: Config,
    brokers: String,
    topology: Arc<Topology>,
    arbiters: Vec<ArbiterHandle>,
    shared: Shared,
    stop: &Stop,
) -> Result<(), ServiceError> {
    let Shared {
        progress,
        pending_rules,
        directory,
        lists,
        tables,
    } = shared;
    let k = &config.kafka;
    let instance = super::instance_name(k);
    // Fence before joining the group: whatever the previous process of this
    // instance left open is aborted before anyone reads past it.
    let identity = Identity::open(k, &brokers, &instance)?;
    tracing::debug!(generation = ?identity.generation(), "producer registry read");
    identity.fence_previous()?;
    let local = if config.state.dir.as_os_str().is_empty() {
        None
    } else {
        Some(
            LocalWriter::start(LocalState::open(&config.state.dir)?)
                .map_err(|e| ServiceError::Thread(e.to_string()))?,
        )
    };
    let shards = ActorShards::new(
        arbiters,
        config.runtime.max_queued_batches,
        Duration::from_millis(config.runtime.full_shard_wait_ms),
        directory,
    );
    let parts = Parts::<KafkaPorts> {
        sink: KafkaSink::starting(identity).map_err(|e| ServiceError::Thread(e.to_string()))?,
        changelog: KafkaChangelog::new(k.clone(), brokers.clone()),
        local,
        shards,
        clock: WallClock(now()),
        observer: Telemetry,
        restorer: ThreadRestorer::default(),
    };
    let coordinator = Coordinator::new(
        settings(&config, lists, tables, &topology.rules),
        topology.clone(),
        parts,
        progress.clone(),
    );
    let member = Arc::new(Mutex::new(Member {
        coordinator,
        failed: None,
    }));
    let state = Arc::new(LoopState::default());
    let consumer = member_consumer(&config, &brokers, member.clone(), progress, state.clone())?;
    let topics: Vec<&str> = topology.topics.iter().map(|t| t.name.as_str()).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(topic = %k.input_topic, group = %k.group_id, %instance, "service started");
    let watch = watch::start(
        state.clone(),
        Duration::from_millis(k.max_poll_interval_ms / 2),
    );
    let result = drive(&config, &consumer, &member, stop, &pending_rules, &state);
    drop(watch);
    // Leave the group before dropping the consumer: a subscribed consumer
    // that is dropped can hang in its destructor.
    consumer.unsubscribe();
    lock(&member).coordinator.release_all();
    drop(consumer);
    tracing::info!("service stopped");
    result
}

/// The group member's consumer, reporting rebalances to `member`.
fn member_consumer(
    config: &Config,
    brokers: &str,
    member: Arc<Mutex<Member>>,
    progress: Arc<Progress>,
    watch: Arc<LoopState>,
) -> Result<MemberConsumer, ServiceError> {
    let k = &config.kafka;
    let mut consumer_config = super::group_member_config(k, brokers, &k.group_id);
    if !k.client.contains_key("heartbeat.interval.ms") {
        // A member learns of a rebalance from a heartbeat's answer: at
        // librdkafka's default (3 s) a member that joins waits up to that
        // long for the others to give partitions up. A tenth of the session
        // timeout (which heartbeats must beat) hands over sooner for one
        // small request per member and interval.
        let ms = (k.session_timeout_ms / 10).clamp(100, 3000);
        consumer_config.set("heartbeat.interval.ms", ms.to_string());
    }
    // Other instances find this one's REST API through the group (owners.rs).
    let base_id = k.client.get("client.id").map_or("tripline", String::as_str);
    consumer_config.set(
        "client.id",
        super::owners::client_id(base_id, &config.api.advertise),
    );
    if !k.client.contains_key("statistics.interval.ms") {
        // Consumer lag per partition, for telemetry.
        consumer_config.set("statistics.interval.ms", "5000");
    }
    if !k.client.contains_key("fetch.queue.backoff.ms") {
        // librdkafka stops fetching a partition for this long when its local
        // queue was over the thresholds at the last fetch (default 1 s): the
        // coordinator drains the queue in milliseconds, after which the
        // partition would sit idle for the rest of the second (the service
        // bench went from 33 % to 61 % of a no-op consumer's rate; see
        // docs/performance.md).
        consumer_config.set("fetch.queue.backoff.ms", "10");
    }
    if !k.client.contains_key("fetch.wait.max.ms") {
        // The broker answers a fetch at once when records are there; when
        // none are, it waits this long, which an alert may then wait too.
        consumer_config.set("fetch.wait.max.ms", "10");
    }
    Ok(consumer_config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", k.max_poll_interval_ms.to_string())
        .create_with_context(Ctx {
            member,
            progress,
            watch,
        })?)
}

/// The main loop: poll, hand over, flush a little before each checkpoint,
/// checkpoint every interval (then swap in pending rules), rewind after a
/// failed one; until asked to stop (a last checkpoint) or a fatal error.
fn drive(
    config: &Config,
    consumer: &MemberConsumer,
    member: &Mutex<Member>,
    stop: &Stop,
    pending_rules: &PendingRules,
    watch: &LoopState,
) -> Result<(), ServiceError> {
    let src = KafkaSource(consumer);
    let interval = Duration::from_millis(config.checkpoint.interval_ms);
    let lead = FLUSH_LEAD.min(interval / 4);
    let mut next_checkpoint = now() + interval;
    let mut flushed = false;
    loop {
        if stop.requested() {
            watch.enter(Phase::Checkpoint);
            return Ok(lock(member).coordinator.checkpoint(&src)?);
        }
        let next = if flushed {
            next_checkpoint
        } else {
            next_checkpoint - lead
        };
        // A paused partition resumes once its shard takes the refused
        // batch: look again soon rather than after a whole poll.
        let longest = if lock(member).coordinator.any_refused() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(50)
        };
        let mut timeout = next.saturating_duration_since(now()).min(longest);
        let mut polled = 0;
        while polled < POLL_BURST {
            watch.polling();
            let Some(msg) = consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            polled += 1;
            match msg {
                Ok(m) => {
                    watch.enter(Phase::Records);
                    let mut guard = lock(member);
                    let c = &mut guard.coordinator;
                    let Some(t) = c.topology().index(m.topic()) else {
                        continue;
                    };
                    let internal = !c.topology().is_source(t);
                    c.enqueue(&src, (t, m.partition()), record_of(&m, internal));
                }
                Err(e) => tracing::warn!("consumer: {e}"),
            }
        }
        let mut guard = lock(member);
        let m = &mut *guard;
        if let Some(e) = m.failed.take() {
            return Err(e.into());
        }
        let c = &mut m.coordinator;
        watch.enter(Phase::Restores);
        c.poll_restores(&src)?;
        watch.enter(Phase::HandOver);
        c.hand_over(&src);
        if !flushed && now() >= next_checkpoint - lead {
            flushed = true;
            watch.enter(Phase::Flush);
            if let Err(e) = c.flush(&src) {
                watch.enter(Phase::Recover);
                c.recover(&src, e)?;
            }
        }
        if now() >= next_checkpoint {
            next_checkpoint = now() + interval;
            flushed = false;
            watch.enter(Phase::Checkpoint);
            match c.checkpoint(&src) {
                Ok(()) => {
                    let rules = pending_rules
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                    if let Some(rules) = rules {
                        c.swap_rules(rules);
                    }
                }
                Err(e) => {
                    watch.enter(Phase::Recover);
                    c.recover(&src, e)?;
                }
            }
        }
    }
}

/// The service's one clock: it paces checkpoints and idleness, never
/// decides what an event means.
#[allow(clippy::disallowed_methods)]
pub(super) fn now() -> Instant {
    Instant::now()
}

/// This machine's host name (the default instance id and API host).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tripline".into())
}
