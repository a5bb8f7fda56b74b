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

mod deliver;
pub mod outbox;
mod reader;
pub mod sign;
mod status;

use deliver::*;
use reader::*;
pub use status::{DeliveryStatus, DeliveryView, EndpointView};

use self::outbox::{Outbox, OutboxError, Queued, State, Status};
use self::sign::SigningKey;
use crate::adapters::kafka::alerts::{AlertRecord, AlertsReader};
use crate::adapters::kafka::{client_config, ensure_topics};
use crate::adapters::worker::{Stop, Worker};
use crate::config::{Config, WebhookEndpoint};
use crate::rules::Severity;
use bytes::Bytes;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// A dead letter the producer could not write (the delivery stays pending
/// and is given up again later: a delivery ends only once its dead letter
/// is written).
#[derive(Debug, thiserror::Error)]
#[error("writing to the dead-letter topic `{topic}`: {source}")]
pub struct DeadLetterError {
    /// The webhooks' dead-letter topic.
    pub topic: String,
    /// What the producer said.
    #[source]
    pub source: KafkaError,
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
    stop_lanes: watch::Sender<bool>,
    reader: Option<Worker>,
    lanes: Vec<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.stop_and_join().ok();
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
        let reader = AlertsReader::member(
            config,
            brokers,
            "webhooks",
            &format!("{}-webhooks", k.group_id),
        )?;
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
        let reader = {
            let shared = shared.clone();
            Worker::spawn("tripline-webhook-reader", move |stop| {
                read_alerts(&shared, &reader, &stop);
                Ok(())
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?
        };
        tracing::info!(
            endpoints = shared.lanes.len(),
            "webhooks: delivering committed alerts"
        );
        Ok(Some(Webhooks {
            shared,
            stop_lanes,
            reader: Some(reader),
            lanes: lane_tasks,
            runtime: Some(runtime),
        }))
    }

    /// Stops reading and delivering, waiting up to the endpoints' timeout
    /// for requests on the way; what is not delivered stays in the outbox
    /// for the next start. (Dropping does the same.)
    pub fn stop(self) {
        drop(self);
    }

    /// The delivery status, for the REST API.
    pub fn status(&self) -> Arc<dyn DeliveryStatus> {
        self.shared.clone()
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
