//! Helpers for the tests that run the service on a real Kafka-protocol
//! broker: the one at `KAFKA_BOOTSTRAP` (CI starts one with
//! `scripts/kafka-broker`; a real Apache Kafka works too), otherwise the
//! embedded broker started in the test process.
// Shared by several test binaries, each using a part.
#![allow(dead_code)]

use flate2::read::GzDecoder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tripline::adapters::kafka::{self, service};
use tripline::config::Config;
use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};

/// Tests pace themselves by the wall clock (waiting for a broker), never
/// judge results by it.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// Polls `probe` until it returns `Some`. A slow or loaded machine gets as
/// long as it keeps making progress: the wait fails only once the figure
/// `probe` reports (events in, alerts, deliveries…) has not changed for
/// `patience`, with `explain(figure)` as the message.
pub fn wait_progressing<T>(
    patience: Duration,
    mut probe: impl FnMut() -> (u64, Option<T>),
    explain: impl Fn(u64) -> String,
) -> T {
    let mut last = None;
    let mut since = now();
    loop {
        let (figure, done) = probe();
        if let Some(t) = done {
            return t;
        }
        if last != Some(figure) {
            last = Some(figure);
            since = now();
        }
        assert!(
            since.elapsed() < patience,
            "no progress for {patience:?}: {}",
            explain(figure)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn broker() -> String {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER
        .get_or_init(|| match std::env::var("KAFKA_BOOTSTRAP") {
            Ok(b) if !b.is_empty() => b,
            _ => kafka::broker::start("127.0.0.1:0")
                .expect("embedded broker")
                .to_string(),
        })
        .clone()
}

/// A configuration with topics and group of its own, so tests can share a broker.
pub fn config(test: &str) -> Config {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut c = Config::default();
    c.kafka.brokers = broker();
    c.kafka.group_id = format!("g-{name}");
    c.kafka.instance_id = name.clone();
    c.kafka.input_topic = format!("{name}.in");
    c.kafka.alerts_topic = format!("{name}.alerts");
    c.kafka.shadow_topic = format!("{name}.shadow");
    c.kafka.dead_letter_topic = format!("{name}.dlq");
    c.kafka.lists_topic = format!("{name}.lists");
    c.kafka.session_timeout_ms = 6000;
    c.kafka.max_poll_interval_ms = 10_000;
    c.kafka.partitions = 4;
    c.checkpoint.interval_ms = 100;
    c.runtime.shard_threads = 2;
    c.state.dir = std::env::temp_dir().join(format!("tripline-{name}.state"));
    c
}

/// Removes, when dropped, every file and directory the test named by a
/// [`config`] left in the temp directory: its state directory
/// (`tripline-{name}.state` and variants) and what tests name after its
/// group (`g-{name}-…` data directories, logs, rule files). A failing test
/// keeps them, to be looked at.
pub struct TestFiles {
    prefixes: [String; 2],
}

impl TestFiles {
    pub fn of(c: &Config) -> TestFiles {
        let name = &c.kafka.instance_id;
        TestFiles {
            prefixes: [format!("tripline-{name}"), format!("g-{name}")],
        }
    }

    fn owns(&self, file: &str) -> bool {
        // "g-x-1-1" must not take "g-x-1-10…": the name ends at '.', '-' or the end.
        self.prefixes.iter().any(|p| {
            file.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-']))
        })
    }
}

impl Drop for TestFiles {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(|f| self.owns(f)) {
                let path = e.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
}

pub struct Input {
    pub key: Option<String>,
    pub partition: Option<i32>,
    pub payload: Option<Vec<u8>>,
}

pub fn produce(c: &Config, records: &[Input]) {
    produce_to(c, &c.kafka.input_topic, records)
}

/// Produces `records` to `topic`, without a transaction.
pub fn produce_to(c: &Config, topic: &str, records: &[Input]) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::client_config(&c.kafka, &broker())
            .set("linger.ms", "5")
            .create()
            .unwrap();
    for r in records {
        let mut rec = BaseRecord::<str, [u8]>::to(topic);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_str());
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        if let Some(v) = &r.payload {
            rec = rec.payload(v.as_slice());
        }
        kafka::send_waiting(&producer, rec).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A committed record read back: key, value, headers.
pub type ReadRecord = ReadRecordOf<Vec<u8>>;

/// A committed record read back, its value as `V`.
pub type ReadRecordOf<V> = (Option<Vec<u8>>, V, Vec<(String, String)>);

/// Every committed record of `topic`, read until two quiet seconds (none
/// if it does not exist yet).
pub fn read_committed(c: &Config, topic: &str) -> Vec<ReadRecord> {
    read_committed_with(c, topic, |m| m.payload().unwrap_or_default().to_vec())
}

/// [`read_committed`] telling a record without a value (`None`) from an
/// empty one.
pub fn read_committed_values(c: &Config, topic: &str) -> Vec<Option<Vec<u8>>> {
    read_committed_with(c, topic, |m| m.payload().map(<[u8]>::to_vec))
        .into_iter()
        .map(|(_, v, _)| v)
        .collect()
}

fn read_committed_with<V>(
    c: &Config,
    topic: &str,
    value: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> V,
) -> Vec<ReadRecordOf<V>> {
    let consumer: BaseConsumer = kafka::client_config(&c.kafka, &broker())
        .set("group.id", format!("{}-reader", c.kafka.group_id))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // A topic the service has not created yet holds nothing.
    let Some(n) = kafka::partition_counts(&c.kafka, &broker(), &[topic]).unwrap()[0] else {
        return Vec::new();
    };
    consumer
        .assign(&kafka::from_beginning(topic, 0..n as i32).unwrap())
        .unwrap();
    let mut out = Vec::new();
    let mut quiet_since = now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.key().map(<[u8]>::to_vec), value(&m), headers));
            quiet_since = now();
        }
    }
    out
}

/// Runs the service until it has committed `produced` input records (and
/// what it forwarded), then stops it. Returns its counters.
pub fn serve_until_caught_up(
    c: &Config,
    rules: Arc<RuleSet>,
    produced: u64,
) -> Arc<service::Progress> {
    let handle = service::start(
        c.clone(),
        broker(),
        rules,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let stopped_early = wait_progressing(
        Duration::from_secs(120),
        || {
            if handle.is_finished() {
                return (0, Some(true));
            }
            let p = handle.progress();
            let done = p.caught_up(produced).then_some(false);
            (p.records.load(Ordering::SeqCst), done)
        },
        |records| format!("{records} of {produced} records committed"),
    );
    if stopped_early {
        panic!("the service stopped early: {:?}", handle.join());
    }
    let progress = handle.progress().clone();
    handle.stop();
    handle.join().unwrap();
    progress
}

pub fn sample_lines() -> Vec<String> {
    let f = std::fs::File::open("examples/handbook-sample.jsonl.gz").unwrap();
    BufReader::new(GzDecoder::new(f))
        .lines()
        .map(Result::unwrap)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// What `tripline replay --flush` writes for these lines, one JSON alert each.
pub fn replay(rules: &Arc<RuleSet>, lines: &[String]) -> Vec<String> {
    let mut engine = Engine::new(rules.clone());
    let mut out = Outputs::default();
    for (i, l) in lines.iter().enumerate() {
        engine.on_event(
            rules.decoder().decode(l.as_bytes(), i as u64).unwrap(),
            &mut out,
        );
    }
    engine.finish(&mut out);
    out.alerts.iter().map(|a| a.to_json_line()).collect()
}

pub fn shipped_rules() -> Arc<RuleSet> {
    tripline::files::load_rules(&[Path::new("rules")], None, EngineOptions::default()).unwrap()
}

/// The handbook sample keyed by customer, then one event per partition far
/// past the sample: it moves every partition's watermark beyond every
/// deadline, as `replay --flush` does at the end. Returns the records and
/// the same events as lines (for [`replay`]).
pub fn sample_input(partitions: i32) -> (Vec<Input>, Vec<String>) {
    input_of(sample_lines(), partitions)
}

/// The first `events` events of the handbook sample, then the ending events
/// of [`sample_input`].
pub fn sample_head_input(partitions: i32, events: usize) -> (Vec<Input>, Vec<String>) {
    let mut lines = sample_lines();
    lines.truncate(events);
    input_of(lines, partitions)
}

/// The handbook sample repeated up to `events` events, each copy ten days
/// after the previous one (times and transaction ids shifted), then the
/// ending events of [`sample_input`].
pub fn scaled_input(partitions: i32, events: usize) -> (Vec<Input>, Vec<String>) {
    const TEN_DAYS_MS: i64 = 10 * 86_400_000;
    let sample = sample_lines();
    let mut lines = Vec::with_capacity(events);
    'copies: for copy in 0.. {
        for l in &sample {
            if lines.len() >= events {
                break 'copies;
            }
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let t = tripline::event::parse_time_str(v["TX_DATETIME"].as_str().unwrap()).unwrap();
            v["TX_DATETIME"] = tripline::event::format_time(t + copy * TEN_DAYS_MS).into();
            let id = v["TRANSACTION_ID"].as_i64().unwrap();
            v["TRANSACTION_ID"] = (id + copy * sample.len() as i64).into();
            lines.push(v.to_string());
        }
    }
    input_of(lines, partitions)
}

fn input_of(mut lines: Vec<String>, partitions: i32) -> (Vec<Input>, Vec<String>) {
    let mut input: Vec<Input> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Input {
                key: Some(v["CUSTOMER_ID"].to_string()),
                partition: None,
                payload: Some(l.clone().into_bytes()),
            }
        })
        .collect();
    // Ending events move every partition's watermark past the last
    // deadline (the longest window is 30 days), in steps the stream's
    // `skew` (7 days by default) takes: one far-future event would be
    // refused as future.
    let last = lines
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            tripline::event::parse_time_str(v["TX_DATETIME"].as_str()?)
        })
        .max()
        .unwrap_or(0);
    for step in 1..=8i64 {
        let time = tripline::event::format_time(last + step * 5 * 86_400_000);
        for p in 0..partitions {
            let end = format!(
                r#"{{"TRANSACTION_ID":-{},"TX_DATETIME":"{time}","CUSTOMER_ID":"end-{p}","TERMINAL_ID":"end-{p}","TX_AMOUNT":0,"TX_TIME_SECONDS":0,"TX_TIME_DAYS":0,"TX_FRAUD":0}}"#,
                step * 1000 + i64::from(p)
            );
            input.push(Input {
                key: Some(format!("end-{p}")),
                partition: Some(p),
                payload: Some(end.clone().into_bytes()),
            });
            lines.push(end);
        }
    }
    (input, lines)
}

/// The alerts on the alerts topic (read_committed), sorted.
pub fn committed_alerts(c: &Config) -> Vec<String> {
    let mut got: Vec<String> = read_committed(c, &c.kafka.alerts_topic)
        .into_iter()
        .map(|(_, v, _)| String::from_utf8(v).unwrap())
        .collect();
    got.sort();
    got
}
