//! What the benchmarks on a broker share: a configuration with topics and
//! group of their own, and the synthetic stream produced to its input.
// Shared by several bench binaries, each using a part.
#![allow(dead_code)]

#[path = "stream.rs"]
mod stream;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::time::{Duration, Instant};
use tripline::adapters::kafka;
use tripline::config::Config;

/// The broker at `KAFKA_BOOTSTRAP`, else an embedded one.
pub fn brokers() -> String {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.is_empty() => b,
        _ => kafka::broker::start("127.0.0.1:0")
            .expect("embedded broker")
            .to_string(),
    }
}

/// A configuration whose group and topics are named after the bench `name`
/// and this process, so runs can share a broker.
pub fn config(brokers: &str, name: &str, partitions: i32) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = brokers.to_string();
    c.kafka.group_id = format!("bench-{name}-{}", std::process::id());
    c.kafka.instance_id = c.kafka.group_id.clone();
    c.kafka.input_topic = format!("{}.in", c.kafka.group_id);
    c.kafka.alerts_topic = format!("{}.alerts", c.kafka.group_id);
    c.kafka.dead_letter_topic = format!("{}.dlq", c.kafka.group_id);
    c.kafka.partitions = partitions;
    c.kafka.session_timeout_ms = 6000;
    c.kafka.max_poll_interval_ms = 30_000;
    c.state.dir = std::env::temp_dir().join(format!("{}.state", c.kafka.group_id));
    c
}

/// A read_committed consumer of `partitions` of `topic` from their
/// beginning, in a group of its own (`<group>-<name>`, committing nothing),
/// asking the broker to hold an empty fetch for `wait_ms`.
pub fn assigned_reader(
    k: &tripline::config::KafkaConfig,
    brokers: &str,
    name: &str,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    wait_ms: u32,
) -> BaseConsumer {
    let consumer: BaseConsumer = kafka::client_config(k, brokers)
        .set("group.id", format!("{}-{name}", k.group_id))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", wait_ms.to_string())
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer
        .assign(&kafka::from_beginning(topic, partitions).expect("partitions"))
        .expect("assign");
    consumer
}

/// A producer batching for throughput, with room for a large backlog.
pub fn producer(c: &Config) -> ThreadedProducer<DefaultProducerContext> {
    kafka::client_config(&c.kafka, &c.kafka.brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

pub fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, value: &str) {
    kafka::send_waiting(p, BaseRecord::to(topic).key(key).payload(value)).expect("produce");
}

/// Produces `events` of the synthetic stream over `keys` keys to the input
/// topic, each keyed by its own key, and waits until all are written.
pub fn produce_stream(c: &Config, events: usize, keys: u64) {
    produce_part(c, events, keys, 0..events);
}

/// Produces the events at `part` of that stream (the same events, in the
/// same order, as [`produce_stream`] at those positions).
pub fn produce_part(c: &Config, events: usize, keys: u64, part: std::ops::Range<usize>) {
    let p = producer(c);
    for line in stream::lines(events, keys, 7)
        .skip(part.start)
        .take(part.len())
    {
        let key = line.split(&[':', ','][..]).nth(1).unwrap_or("0");
        send(&p, &c.kafka.input_topic, key, &line);
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

/// Benches time themselves by the wall clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// CPU seconds (user + system) this process has used so far.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}
