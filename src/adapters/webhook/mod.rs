//! Webhooks: every alert that the alerts topic has committed, POSTed to
//! the endpoints that select it, at least once, in order per key, signed.
//!
//! This module owns the path from the alerts topic to the receivers:
//!
//! * a reader of the alerts topic (`read_committed`, so an aborted
//!   transaction's alerts are never seen) in its own consumer group
//!   (`{group_id}-webhooks`, so instances share the partitions) writes a
//!   delivery per selected endpoint to the [`outbox`] (RocksDB under the
//!   data directory) and commits the topic's offsets only up to the oldest
//!   alert not yet finished, after syncing the outbox: whatever dies, every
//!   alert is either in an outbox or read again;
//! * one lane per endpoint keeps a bounded window of its queue in memory
//!   and sends up to `max_concurrency` requests at once, never two of one
//!   key, never one before the key's earlier alerts are finished; a slow
//!   endpoint fills its own window and the disk, not the others' or the
//!   consumer's;
//! * failures retry with exponential backoff and jitter (`Retry-After` on
//!   429 and 503 is honoured); 4xx other than 408 and 429 do not retry; a
//!   delivery past its give-up horizon goes to the webhooks' dead-letter
//!   topic with its last error.
//!
//! Requests carry Standard Webhooks headers ([`sign`]) and an
//! `Idempotency-Key` equal to the alert id. See `docs/webhooks.md`.

pub mod outbox;
pub mod sign;

use self::outbox::{Outbox, OutboxError, Queued, State, Status};
use self::sign::SigningKey;
use crate::adapters::kafka::{client_config, ensure_topics, group_member_config};
use crate::config::{Config, WebhookEndpoint};
use crate::rules::ast::Severity;
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Webhooks that could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// An endpoint's signing key is missing or invalid.
    #[error("webhook `{endpoint}`: {reason}")]
    Secret {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The outbox.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// Kafka.
    #[error("webhooks: {0}")]
    Kafka(#[from] KafkaError),
    /// The HTTP client.
    #[error("webhooks: HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// A thread or runtime.
    #[error("webhooks: {0}")]
    Io(#[from] std::io::Error),
    /// Creating topics.
    #[error("webhooks: {0}")]
    Service(#[from] crate::adapters::kafka::ServiceError),
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    // Delivery times are wall-clock times (backoff, give-up horizon,
    // Standard Webhooks timestamps), not event time.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One endpoint's counters.
#[derive(Default)]
struct LaneStats {
    /// Deliveries in the outbox (not finished).
    queued: AtomicI64,
    /// Of those loaded in memory, how many failed at least once.
    retrying: AtomicI64,
    /// Requests on the way.
    in_flight: AtomicI64,
    /// Deliveries finished with a 2xx.
    delivered: AtomicU64,
    /// Requests that failed.
    failed_attempts: AtomicU64,
    /// Deliveries given up (dead-lettered).
    dead: AtomicU64,
}

/// An endpoint and its queue's state shared by the reader and its lane.
struct Lane {
    name: String,
    url: reqwest::Url,
    rules: Vec<String>,
    min_severity: Severity,
    key: SigningKey,
    timeout: Duration,
    max_concurrency: usize,
    window: usize,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    give_up_ms: i64,
    next_seq: AtomicU64,
    wake: Notify,
    stats: LaneStats,
}

impl Lane {
    fn new(e: &WebhookEndpoint) -> Result<Lane, WebhookError> {
        let bad = |reason: String| WebhookError::Secret {
            endpoint: e.name.clone(),
            reason,
        };
        let secret = if e.secret_env.is_empty() {
            e.secret.0.clone()
        } else {
            std::env::var(&e.secret_env).map_err(|_| {
                bad(format!(
                    "secret_env names `{}`, which is not set in the environment",
                    e.secret_env
                ))
            })?
        };
        let key = SigningKey::from_secret(&secret).map_err(|err| bad(err.to_string()))?;
        let url = reqwest::Url::parse(&e.url).map_err(|err| bad(format!("url: {err}")))?;
        Ok(Lane {
            name: e.name.clone(),
            url,
            rules: e.rules.clone(),
            min_severity: e.min_severity,
            key,
            timeout: Duration::from_millis(e.timeout_ms),
            max_concurrency: e.max_concurrency,
            window: e.queue,
            initial_backoff_ms: e.retry.initial_backoff_ms,
            max_backoff_ms: e.retry.max_backoff_ms,
            give_up_ms: crate::rules::parse_duration(&e.retry.give_up_after).unwrap_or(86_400_000),
            next_seq: AtomicU64::new(0),
            wake: Notify::new(),
            stats: LaneStats::default(),
        })
    }

    /// Whether an alert of `rule` at `severity` goes to this endpoint.
    fn wants(&self, rule: &str, severity: Severity) -> bool {
        severity >= self.min_severity
            && (self.rules.is_empty()
                || self.rules.iter().any(|r| match r.strip_suffix('*') {
                    Some(prefix) => rule.starts_with(prefix),
                    None => r == rule,
                }))
    }

    /// The wait before retry `n` (1-based): between half and all of the
    /// capped exponential backoff.
    fn backoff_ms(&self, n: u32) -> i64 {
        let exp = self
            .initial_backoff_ms
            .saturating_mul(1u64 << n.saturating_sub(1).min(40));
        let base = exp.min(self.max_backoff_ms);
        (base / 2 + fastrand::u64(0..=base - base / 2)) as i64
    }
}

/// What the reader and the lanes share.
struct Shared {
    outbox: Outbox,
    lanes: Vec<Lane>,
    /// Per alerts-topic partition: offset → deliveries not finished.
    outstanding: Mutex<BTreeMap<i32, BTreeMap<i64, u32>>>,
    /// Bumped when partitions go to another instance: lanes drop what the
    /// reader forgot.
    revocations: AtomicU64,
    dead_letters: FutureProducer,
    dead_letter_topic: String,
    alerts_topic: String,
}

impl Shared {
    fn finished(&self, partition: i32, offset: i64) {
        let mut o = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = o.get_mut(&partition)
            && let Some(n) = m.get_mut(&offset)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&offset);
            }
        }
    }
}

/// The running webhooks; stopped when dropped.
pub struct Webhooks {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    stop_lanes: watch::Sender<bool>,
    reader: Option<JoinHandle<()>>,
    lanes: Vec<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.reader.take() {
            t.join().ok();
        }
        self.stop_lanes.send(true).ok();
        if let Some(rt) = self.runtime.take() {
            // The lanes wait up to their endpoint's timeout for requests on
            // the way (see `run_lane`).
            let grace = self
                .shared
                .lanes
                .iter()
                .map(|l| l.timeout)
                .max()
                .unwrap_or_default()
                + Duration::from_millis(500);
            let lanes = futures::future::join_all(self.lanes.drain(..));
            rt.block_on(async { tokio::time::timeout(grace, lanes).await.ok() });
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

/// Where the outbox is kept under the data directory.
pub fn outbox_dir(config: &Config) -> std::path::PathBuf {
    config.state.dir.join("webhooks")
}

impl Webhooks {
    /// Starts delivering to the configured endpoints (none configured: `None`).
    pub fn start(config: &Config, brokers: &str) -> Result<Option<Webhooks>, WebhookError> {
        let w = &config.webhooks;
        if w.endpoints.is_empty() {
            return Ok(None);
        }
        let lanes = w
            .endpoints
            .iter()
            .map(Lane::new)
            .collect::<Result<Vec<_>, _>>()?;
        let k = &config.kafka;
        ensure_topics(
            k,
            brokers,
            &[&k.alerts_topic, &w.dead_letter_topic],
            k.partitions,
        )?;
        std::fs::create_dir_all(&config.state.dir)?;
        let outbox = Outbox::open(&outbox_dir(config))?;
        let retention = crate::rules::parse_duration(&w.status_retention).unwrap_or(7 * 86_400_000);
        let pruned = outbox.prune(now_ms() - retention)?;
        // What the last run left queued: counters, sequence numbers, and
        // the partitions' oldest unfinished alerts.
        let mut outstanding: BTreeMap<i32, BTreeMap<i64, u32>> = BTreeMap::new();
        let mut orphans = Vec::new();
        for item in outbox.list()? {
            match lanes.iter().find(|l| l.name == item.endpoint) {
                Some(l) => {
                    l.stats.queued.fetch_add(1, Ordering::Relaxed);
                    l.next_seq.fetch_max(item.seq + 1, Ordering::Relaxed);
                    *outstanding
                        .entry(item.queued.partition)
                        .or_default()
                        .entry(item.queued.offset)
                        .or_default() += 1;
                }
                None => orphans.push(item),
            }
        }
        let dead_letters: FutureProducer = client_config(k, brokers)
            .set("enable.idempotence", "true")
            .create()?;
        let shared = Arc::new(Shared {
            outbox,
            lanes,
            outstanding: Mutex::new(outstanding),
            revocations: AtomicU64::new(0),
            dead_letters,
            dead_letter_topic: w.dead_letter_topic.clone(),
            alerts_topic: k.alerts_topic.clone(),
        });
        if pruned > 0 {
            tracing::info!(
                pruned,
                "webhooks: forgot finished deliveries past status_retention"
            );
        }
        if !orphans.is_empty() {
            dead_letter_orphans(&shared, orphans);
        }
        let consumer: BaseConsumer =
            group_member_config(k, brokers, &format!("{}-webhooks", k.group_id))
                // A dead instance's partitions move as soon as the service's own.
                .set("session.timeout.ms", k.session_timeout_ms.to_string())
                .set("max.poll.interval.ms", k.max_poll_interval_ms.to_string())
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .create()?;
        consumer.subscribe(&[&k.alerts_topic])?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tripline-webhooks")
            .enable_all()
            .build()?;
        let (stop_lanes, stopped) = watch::channel(false);
        let mut lane_tasks = Vec::new();
        for (i, l) in shared.lanes.iter().enumerate() {
            let client = reqwest::Client::builder()
                .use_rustls_tls()
                .timeout(l.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(l.max_concurrency)
                .user_agent(concat!("tripline/", env!("CARGO_PKG_VERSION")))
                .build()?;
            lane_tasks.push(runtime.spawn(run_lane(shared.clone(), i, client, stopped.clone())));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tripline-webhook-reader".into())
                .spawn(move || read_alerts(&shared, &consumer, &stop))?
        };
        tracing::info!(
            endpoints = shared.lanes.len(),
            "webhooks: delivering committed alerts"
        );
        Ok(Some(Webhooks {
            shared,
            stop,
            stop_lanes,
            reader: Some(reader),
            lanes: lane_tasks,
            runtime: Some(runtime),
        }))
    }

    /// The delivery status, for the REST API.
    pub fn status(&self) -> Arc<dyn DeliveryStatus> {
        self.shared.clone()
    }
}

/// Deliveries queued for endpoints that are no longer configured: given up
/// with that reason (their alerts stay in the dead-letter topic).
fn dead_letter_orphans(shared: &Shared, orphans: Vec<outbox::Listed>) {
    let mut forgotten = Vec::new();
    for item in orphans {
        let reason = format!(
            "endpoint `{}` is no longer configured; the delivery was queued for it",
            item.endpoint
        );
        tracing::warn!(alert = %item.queued.alert_id, "webhooks: {reason}");
        if dead_letter_now(shared, &item.endpoint, &item.queued, &reason).is_ok() {
            forgotten.push((item.endpoint, item.seq, item.queued.alert_id));
        } else {
            tracing::error!("webhooks: the delivery stays in the outbox");
        }
    }
    if let Err(e) = shared.outbox.forget(&forgotten) {
        tracing::error!("{e}");
    }
}

/// The part of an alert that routes it.
#[derive(Deserialize)]
struct AlertHead<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    rule: std::borrow::Cow<'a, str>,
    severity: Severity,
    /// Endpoints the rule names.
    #[serde(default, borrow)]
    notify: Vec<std::borrow::Cow<'a, str>>,
}

/// How often the reader commits the alerts topic's offsets.
const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// The reader of the alerts topic (its own thread): queues deliveries,
/// commits offsets up to the oldest unfinished alert, and forgets the
/// deliveries of partitions that went to another instance.
fn read_alerts(shared: &Shared, consumer: &BaseConsumer, stop: &AtomicBool) {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assigned: BTreeSet<i32> = BTreeSet::new();
    #[allow(clippy::disallowed_methods)]
    let mut last_commit = std::time::Instant::now();
    let mut batch: Vec<(usize, u64, Queued)> = Vec::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let mut wait = Duration::from_millis(100);
        while !stopping && batch.len() < 500 {
            match consumer.poll(wait) {
                Some(Ok(m)) => {
                    wait = Duration::ZERO;
                    next.insert(m.partition(), m.offset() + 1);
                    route(shared, &m, &mut batch);
                }
                Some(Err(e)) => {
                    tracing::warn!("webhooks: reading the alerts topic: {e}");
                    break;
                }
                None => break,
            }
        }
        if !batch.is_empty() {
            let items: Vec<(&str, u64, Queued)> = batch
                .drain(..)
                .map(|(lane, seq, q)| (shared.lanes[lane].name.as_str(), seq, q))
                .collect();
            if let Err(e) = shared.outbox.enqueue(&items, now_ms()) {
                // Not committed past: read again after a restart.
                tracing::error!("{e}");
            }
            for l in &shared.lanes {
                l.wake.notify_one();
            }
        }
        if let Ok(tpl) = consumer.assignment() {
            let now: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            let lost: BTreeSet<i32> = assigned.difference(&now).copied().collect();
            if !lost.is_empty() {
                forget_partitions(shared, &lost);
                for p in &lost {
                    next.remove(p);
                    committed.remove(p);
                }
            }
            if now != assigned {
                tracing::info!(partitions = ?now, "webhooks: reading the alerts topic's partitions");
            }
            assigned = now;
        }
        if stopping || last_commit.elapsed() >= COMMIT_EVERY {
            #[allow(clippy::disallowed_methods)]
            let now = std::time::Instant::now();
            last_commit = now;
            commit(shared, consumer, &assigned, &next, &mut committed);
        }
        if stopping {
            return;
        }
    }
}

/// Queues an alert record for the endpoints that select it (dead-letters
/// a record that is not an alert).
fn route(
    shared: &Shared,
    m: &rdkafka::message::BorrowedMessage<'_>,
    batch: &mut Vec<(usize, u64, Queued)>,
) {
    let body = m.payload().unwrap_or_default();
    let queued = |alert_id: &str| Queued {
        alert_id: alert_id.to_string(),
        key: m.key().unwrap_or_default().to_vec(),
        partition: m.partition(),
        offset: m.offset(),
        body: body.to_vec(),
    };
    let head = match serde_json::from_slice::<AlertHead<'_>>(body) {
        Ok(h) => h,
        Err(e) => {
            let reason = format!("the alerts topic record is not an alert: {e}");
            tracing::error!(
                partition = m.partition(),
                offset = m.offset(),
                "webhooks: {reason}"
            );
            dead_letter_now(shared, "", &queued(""), &reason).ok();
            return;
        }
    };
    for name in &head.notify {
        if !shared.lanes.iter().any(|l| l.name == *name) {
            let reason = format!(
                "rule `{}` notifies endpoint `{name}`, which is not in webhooks.endpoints",
                head.rule
            );
            tracing::error!(alert = %head.id, "webhooks: {reason}");
            dead_letter_now(shared, name, &queued(&head.id), &reason).ok();
        }
    }
    let mut n = 0;
    for (i, l) in shared.lanes.iter().enumerate() {
        let named = head.notify.iter().any(|n| *n == l.name);
        if !named && !l.wants(&head.rule, head.severity) {
            continue;
        }
        // Read again after a restart or a rebalance: already queued (or
        // finished) here.
        let known = shared.outbox.known(&head.id, &l.name).unwrap_or(false)
            || batch
                .iter()
                .any(|(j, _, q)| *j == i && q.alert_id == head.id);
        if known {
            continue;
        }
        let seq = l.next_seq.fetch_add(1, Ordering::Relaxed);
        l.stats.queued.fetch_add(1, Ordering::Relaxed);
        batch.push((i, seq, queued(&head.id)));
        n += 1;
    }
    if n > 0 {
        let mut o = shared.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        *o.entry(m.partition())
            .or_default()
            .entry(m.offset())
            .or_default() += n;
    }
}

/// Commits each assigned partition's offset: its oldest unfinished alert,
/// or past everything read. The outbox is synced first, so no committed
/// offset is past a delivery the disk does not hold.
fn commit(
    shared: &Shared,
    consumer: &BaseConsumer,
    assigned: &BTreeSet<i32>,
    next: &BTreeMap<i32, i64>,
    committed: &mut BTreeMap<i32, i64>,
) {
    if let Err(e) = shared.outbox.sync() {
        return tracing::error!("{e}");
    }
    let mut tpl = TopicPartitionList::new();
    let mut offsets = Vec::new();
    {
        let o = shared.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        for p in assigned {
            let oldest = o.get(p).and_then(|m| m.keys().next().copied());
            let Some(off) = oldest.or_else(|| next.get(p).copied()) else {
                continue;
            };
            if committed.get(p) != Some(&off)
                && tpl
                    .add_partition_offset(&shared.alerts_topic, *p, Offset::Offset(off))
                    .is_ok()
            {
                offsets.push((*p, off));
            }
        }
    }
    if offsets.is_empty() {
        return;
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => committed.extend(offsets),
        Err(e) => tracing::warn!("webhooks: committing the alerts topic's offsets: {e}"),
    }
}

/// Drops the queued deliveries of partitions now read by another instance
/// (which delivers them from the last committed offset).
fn forget_partitions(shared: &Shared, lost: &BTreeSet<i32>) {
    let items = match shared.outbox.list() {
        Ok(items) => items,
        Err(e) => return tracing::error!("{e}"),
    };
    let mut forgotten = Vec::new();
    for item in items {
        if lost.contains(&item.queued.partition) {
            if let Some(l) = shared.lanes.iter().find(|l| l.name == item.endpoint) {
                l.stats.queued.fetch_sub(1, Ordering::Relaxed);
            }
            forgotten.push((item.endpoint, item.seq, item.queued.alert_id));
        }
    }
    if let Err(e) = shared.outbox.forget(&forgotten) {
        tracing::error!("{e}");
    }
    {
        let mut o = shared.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        for p in lost {
            o.remove(p);
        }
    }
    shared.revocations.fetch_add(1, Ordering::Relaxed);
    for l in &shared.lanes {
        l.wake.notify_one();
    }
    tracing::info!(
        partitions = ?lost,
        deliveries = forgotten.len(),
        "webhooks: partitions went to another instance; it delivers their queued alerts"
    );
}

/// A delivery in a lane's window.
struct Item {
    seq: u64,
    queued: Queued,
    body: Bytes,
    status: Status,
    in_flight: bool,
}

/// How a request went.
enum Outcome {
    Delivered(u16),
    Failed {
        error: String,
        status: Option<u16>,
        retry_after_ms: Option<i64>,
        retryable: bool,
    },
}

/// One endpoint's lane: loads its queue in order into a bounded window,
/// sends what is due (one request per key at a time), records outcomes.
async fn run_lane(
    shared: Arc<Shared>,
    lane: usize,
    client: reqwest::Client,
    mut stop: watch::Receiver<bool>,
) {
    let l = &shared.lanes[lane];
    let mut window: VecDeque<Item> = VecDeque::new();
    let mut next_load = 0u64;
    let mut seen_revocations = 0u64;
    let mut flights: JoinSet<(u64, Outcome)> = JoinSet::new();
    loop {
        if *stop.borrow() {
            // Requests on the way get the endpoint's timeout to finish and
            // be recorded; what is left stays queued for the next start.
            let drain = async {
                while let Some(done) = flights.join_next().await {
                    if let Ok((seq, outcome)) = done {
                        l.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                        record(&shared, l, &mut window, seq, outcome).await;
                    }
                }
            };
            tokio::time::timeout(l.timeout, drain).await.ok();
            return;
        }
        let revocations = shared.revocations.load(Ordering::Relaxed);
        if revocations != seen_revocations {
            seen_revocations = revocations;
            window.retain(|it| {
                let keep = it.in_flight || shared.outbox.is_queued(&l.name, it.seq).unwrap_or(true);
                if !keep && it.status.state == State::Retrying {
                    l.stats.retrying.fetch_sub(1, Ordering::Relaxed);
                }
                keep
            });
        }
        // Only when the reader has queued more than the window holds.
        if window.len() < l.window && next_load < l.next_seq.load(Ordering::Relaxed) {
            match shared
                .outbox
                .load(&l.name, next_load, l.window - window.len())
            {
                Ok(items) => {
                    for (seq, queued, status) in items {
                        next_load = seq + 1;
                        if status.state == State::Retrying {
                            l.stats.retrying.fetch_add(1, Ordering::Relaxed);
                        }
                        let body = Bytes::from(queued.body.clone());
                        window.push_back(Item {
                            seq,
                            queued,
                            body,
                            status,
                            in_flight: false,
                        });
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        let now = now_ms();
        let mut wake_at: Option<i64> = None;
        let mut starts = Vec::new();
        {
            let mut keys = hashbrown::HashSet::new();
            for (i, it) in window.iter().enumerate() {
                // Only the oldest delivery of a key may go.
                if !keys.insert(it.queued.key.as_slice()) || it.in_flight {
                    continue;
                }
                if it.status.next_attempt_ms > now {
                    let t = it.status.next_attempt_ms;
                    wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
                    continue;
                }
                if flights.len() + starts.len() >= l.max_concurrency {
                    break;
                }
                starts.push(i);
            }
        }
        for i in starts {
            let it = &mut window[i];
            it.in_flight = true;
            l.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let request = attempt(
                shared.clone(),
                lane,
                client.clone(),
                it.queued.alert_id.clone(),
                it.body.clone(),
            );
            let seq = it.seq;
            flights.spawn(async move { (seq, request.await) });
        }
        let sleep = wake_at.map_or(Duration::from_secs(3600), |t| {
            Duration::from_millis((t - now).max(1) as u64)
        });
        tokio::select! {
            Some(done) = flights.join_next(), if !flights.is_empty() => {
                if let Ok((seq, outcome)) = done {
                    l.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    record(&shared, l, &mut window, seq, outcome).await;
                }
            }
            _ = l.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Records a request's outcome: finishes the delivery, or schedules its
/// next attempt, or gives it up.
async fn record(
    shared: &Shared,
    l: &Lane,
    window: &mut VecDeque<Item>,
    seq: u64,
    outcome: Outcome,
) {
    let Some(i) = window.iter().position(|it| it.seq == seq) else {
        return;
    };
    // Its partition went to another instance while the request was on the
    // way: the reader forgot the delivery, and the new owner delivers it
    // from the topic. Recording a retry here would bring back a status
    // without a queued delivery, which a later read would take as handled.
    let failed = matches!(outcome, Outcome::Failed { .. });
    if failed && !shared.outbox.is_queued(&l.name, seq).unwrap_or(true) {
        if window[i].status.state == State::Retrying {
            l.stats.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        window.remove(i);
        return;
    }
    let now = now_ms();
    let it = &mut window[i];
    it.in_flight = false;
    let was_retrying = it.status.state == State::Retrying;
    let s = &mut it.status;
    s.attempts += 1;
    s.last_attempt_ms = Some(now);
    let first = *s.first_attempt_ms.get_or_insert(now);
    let finished = match outcome {
        Outcome::Delivered(code) => {
            s.state = State::Delivered;
            s.last_status = Some(code);
            s.finished_ms = Some(now);
            l.stats.delivered.fetch_add(1, Ordering::Relaxed);
            true
        }
        Outcome::Failed {
            error,
            status,
            retry_after_ms,
            retryable,
        } => {
            l.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            s.last_status = status;
            let horizon = first + l.give_up_ms;
            if retryable && now < horizon {
                let wait = retry_after_ms.unwrap_or_else(|| l.backoff_ms(s.attempts));
                s.state = State::Retrying;
                s.next_attempt_ms = (now + wait).min(horizon);
                s.last_error = Some(error);
                if let Err(e) = shared.outbox.update(&it.queued.alert_id, &l.name, s) {
                    tracing::error!("{e}");
                }
                if !was_retrying {
                    l.stats.retrying.fetch_add(1, Ordering::Relaxed);
                }
                false
            } else {
                let why = if retryable {
                    format!("gave up after {} attempts: {error}", s.attempts)
                } else {
                    format!("not retried: {error}")
                };
                let attempts = s.attempts;
                if let Err(e) =
                    send_dead_letter(shared, &l.name, &it.queued, &why, status, attempts).await
                {
                    // Tried again later: a delivery is only given up once
                    // its dead letter is written.
                    tracing::error!("webhooks: {e}");
                    let s = &mut it.status;
                    s.state = State::Retrying;
                    s.next_attempt_ms = now + l.max_backoff_ms as i64;
                    s.last_error = Some(why);
                    return;
                }
                let s = &mut it.status;
                s.state = State::Dead;
                s.last_error = Some(why);
                s.finished_ms = Some(now);
                l.stats.dead.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    endpoint = %l.name,
                    alert = %it.queued.alert_id,
                    "webhooks: delivery dead-lettered: {}",
                    s.last_error.as_deref().unwrap_or_default()
                );
                true
            }
        }
    };
    if finished {
        let it = &window[i];
        // Forgotten deliveries (see above) were already taken off the count.
        if shared.outbox.is_queued(&l.name, it.seq).unwrap_or(true) {
            l.stats.queued.fetch_sub(1, Ordering::Relaxed);
        }
        if let Err(e) = shared
            .outbox
            .finish(&l.name, it.seq, &it.queued.alert_id, &it.status)
        {
            tracing::error!("{e}");
        }
        if was_retrying {
            l.stats.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        shared.finished(it.queued.partition, it.queued.offset);
        window.remove(i);
    }
}

/// One signed POST of an alert.
async fn attempt(
    shared: Arc<Shared>,
    lane: usize,
    client: reqwest::Client,
    id: String,
    body: Bytes,
) -> Outcome {
    let l = &shared.lanes[lane];
    let timestamp = now_ms() / 1000;
    let signature = l.key.sign(&id, timestamp, &body);
    let sent = client
        .post(l.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header("idempotency-key", &id)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed {
                error: describe(&e, l.timeout),
                status: None,
                retry_after_ms: None,
                retryable: true,
            };
        }
    };
    let code = response.status();
    if code.is_success() {
        return Outcome::Delivered(code.as_u16());
    }
    let retry_after_ms = if matches!(code.as_u16(), 429 | 503) {
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after_ms(v, timestamp * 1000))
    } else {
        None
    };
    let excerpt = excerpt(response).await;
    Outcome::Failed {
        error: format!("HTTP {code}: {}", excerpt.trim()),
        status: Some(code.as_u16()),
        retry_after_ms,
        retryable: code.is_server_error() || matches!(code.as_u16(), 408 | 429),
    }
}

/// How much of a failed response's body the delivery status keeps.
const EXCERPT_BYTES: usize = 200;

/// The start of a failed response's body. Only that much is read: a
/// receiver's body may be endless, and the connection is dropped after it.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut text = Vec::with_capacity(EXCERPT_BYTES);
    while text.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = EXCERPT_BYTES - text.len();
                text.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// A `Retry-After` value (seconds, or an HTTP date) as a wait in ms.
fn retry_after_ms(v: &str, now_ms: i64) -> Option<i64> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u32>() {
        return Some(i64::from(s) * 1000);
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v)
        .ok()?;
    Some((at.as_millisecond() - now_ms).max(0))
}

/// A request error without its URL (which may hold a token) and with its
/// causes.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let mut text = String::from(if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// [`send_dead_letter`] from a thread outside the lanes' runtime (the
/// reader's, or the start), waiting for it; a failure is logged.
fn dead_letter_now(shared: &Shared, endpoint: &str, q: &Queued, reason: &str) -> Result<(), ()> {
    futures::executor::block_on(send_dead_letter(shared, endpoint, q, reason, None, 0))
        .map_err(|e| tracing::error!("webhooks: {e}"))
}

/// Writes a delivery given up to the webhooks' dead-letter topic: the
/// alert unchanged, what happened in headers.
async fn send_dead_letter(
    shared: &Shared,
    endpoint: &str,
    q: &Queued,
    reason: &str,
    status: Option<u16>,
    attempts: u32,
) -> Result<(), String> {
    let partition = q.partition.to_string();
    let offset = q.offset.to_string();
    let attempts = attempts.to_string();
    let status = status.map(|s| s.to_string()).unwrap_or_default();
    let headers = [
        ("tripline.webhook.endpoint", endpoint),
        ("tripline.webhook.error", reason),
        ("tripline.webhook.attempts", &attempts),
        ("tripline.webhook.last_status", &status),
        ("tripline.alert.id", &q.alert_id),
        ("tripline.source.topic", &shared.alerts_topic),
        ("tripline.source.partition", &partition),
        ("tripline.source.offset", &offset),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    });
    let record = FutureRecord::to(&shared.dead_letter_topic)
        .key(&q.key)
        .payload(&q.body)
        .headers(headers);
    shared
        .dead_letters
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| {
            format!(
                "writing to the dead-letter topic `{}`: {e}",
                shared.dead_letter_topic
            )
        })
}

/// An endpoint's counters, as the REST API shows them.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// The endpoint's name.
    pub name: String,
    /// Deliveries not finished (in memory or waiting in the outbox).
    pub queued: i64,
    /// Of those in memory, how many failed at least once.
    pub retrying: i64,
    /// Requests on the way.
    pub in_flight: i64,
    /// Deliveries finished with a 2xx since start.
    pub delivered: u64,
    /// Requests that failed since start.
    pub failed_attempts: u64,
    /// Deliveries given up (dead-lettered) since start.
    pub dead: u64,
}

/// One delivery of an alert, as the REST API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The endpoint's name.
    pub endpoint: String,
    /// pending, retrying, delivered or dead.
    pub state: State,
    /// Requests made.
    pub attempts: u32,
    /// When it was queued (RFC 3339).
    pub queued_at: String,
    /// When the last request was made.
    pub last_attempt_at: Option<String>,
    /// When the next request is due (pending and retrying).
    pub next_attempt_at: Option<String>,
    /// When it was delivered or given up.
    pub finished_at: Option<String>,
    /// The last HTTP status received.
    pub last_status: Option<u16>,
    /// The last failure.
    pub last_error: Option<String>,
}

fn time_text(ms: i64) -> String {
    crate::event::format_time(ms)
}

/// Delivery status, for the REST API.
pub trait DeliveryStatus: Send + Sync {
    /// Every endpoint's counters.
    fn endpoints(&self) -> Vec<EndpointView>;
    /// An alert's deliveries (none: not known here).
    fn deliveries(&self, alert_id: &str) -> Result<Vec<DeliveryView>, String>;
}

impl DeliveryStatus for Shared {
    fn endpoints(&self) -> Vec<EndpointView> {
        self.lanes
            .iter()
            .map(|l| {
                let s = &l.stats;
                EndpointView {
                    name: l.name.clone(),
                    queued: s.queued.load(Ordering::Relaxed),
                    retrying: s.retrying.load(Ordering::Relaxed),
                    in_flight: s.in_flight.load(Ordering::Relaxed),
                    delivered: s.delivered.load(Ordering::Relaxed),
                    failed_attempts: s.failed_attempts.load(Ordering::Relaxed),
                    dead: s.dead.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    fn deliveries(&self, alert_id: &str) -> Result<Vec<DeliveryView>, String> {
        let list = self.outbox.statuses(alert_id).map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .map(|(endpoint, s)| {
                let open = matches!(s.state, State::Pending | State::Retrying);
                DeliveryView {
                    endpoint,
                    state: s.state,
                    attempts: s.attempts,
                    queued_at: time_text(s.queued_ms),
                    last_attempt_at: s.last_attempt_ms.map(time_text),
                    next_attempt_at: open.then(|| time_text(s.next_attempt_ms)),
                    finished_at: s.finished_ms.map(time_text),
                    last_status: s.last_status,
                    last_error: s.last_error,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver failing with an endless body once made each attempt
    /// buffer hundreds of MB: the excerpt reads a few hundred bytes and
    /// drops the connection.
    #[test]
    fn a_failed_response_is_read_only_as_far_as_its_excerpt() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head);
            s.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "e".repeat(64 * 1024));
            let mut sent = 0usize;
            // Until the client hangs up (or far past what it may read).
            while sent < 1 << 30 && s.write_all(chunk.as_bytes()).is_ok() {
                sent += chunk.len();
            }
            sent
        });
        // As the lanes run: the runtime goes on after the attempt.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let text = runtime.block_on(async {
            let response = reqwest::Client::new()
                .get(format!("http://{addr}/"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 500);
            excerpt(response).await
        });
        assert_eq!(text, "e".repeat(EXCERPT_BYTES));
        // hyper closes a connection whose body was dropped unread.
        let sent = server.join().unwrap();
        drop(runtime);
        assert!(
            sent < 64 << 20,
            "the client read {sent} bytes of an endless body"
        );
    }

    fn lane(rules: &[&str], min: Severity) -> Lane {
        Lane::new(&WebhookEndpoint {
            name: "t".into(),
            url: "http://127.0.0.1:9/".into(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
            min_severity: min,
            secret: crate::config::Secret("0123456789abcdef0123".into()),
            ..WebhookEndpoint::default()
        })
        .unwrap()
    }

    #[test]
    fn endpoints_select_by_rule_and_severity() {
        let l = lane(&["velocity", "amount_*"], Severity::High);
        assert!(l.wants("velocity", Severity::High));
        assert!(l.wants("amount_spike", Severity::Critical));
        assert!(!l.wants("velocity", Severity::Medium));
        assert!(!l.wants("card_testing", Severity::Critical));
        assert!(lane(&[], Severity::Low).wants("anything", Severity::Low));
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let l = lane(&[], Severity::Low);
        for n in 1..=40 {
            let base = (500u64 << (n - 1).min(20)).min(60_000) as i64;
            let b = l.backoff_ms(n);
            assert!(
                b >= base / 2 && b <= base,
                "retry {n}: {b} not in {}..={base}",
                base / 2
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(retry_after_ms("7", 0), Some(7000));
        let now = jiff::Timestamp::from_second(1_000_000_000)
            .unwrap()
            .as_millisecond();
        assert_eq!(
            retry_after_ms("Sun, 09 Sep 2001 01:46:50 GMT", now),
            Some(10_000)
        );
        assert_eq!(retry_after_ms("soon", 0), None);
    }
}
