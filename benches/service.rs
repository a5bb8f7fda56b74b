//! End-to-end benchmark of the service on a Kafka-protocol broker (the one
//! at `KAFKA_BOOTSTRAP`, else an embedded one):
//!
//! 1. throughput: the synthetic A/B/C stream (benches/abc_10m.tl) from the
//!    broker to committed alerts, next to a no-op consumer reading the same
//!    records from the same broker in the same run;
//! 2. latency: events produced one at a time, each matching a one-stage rule,
//!    timed from produce to the alert being readable by a read_committed
//!    consumer.
//!
//! `cargo bench --bench service [-- EVENTS [fraud]]` (default 1000000
//! events, 0 for the latency run alone; `fraud`: the handbook's transactions
//! and the shipped rules instead of the synthetic stream;
//! `CHECKPOINT_MS` sets the throughput run's checkpoint interval,
//! `KAFKA_CLIENT=key=value,…` librdkafka settings of the service). Rates are
//! given from the start (group join, and for the service its topics,
//! transactions and restore) and past it (from the no-op consumer's first
//! record, from the service's first commit). Per-core
//! figures divide by the CPU time this process used; run against a
//! standalone broker (`KAFKA_BOOTSTRAP=$(scripts/kafka-broker start)`) so
//! that the broker's own CPU time is not counted.

#[path = "support/kafka.rs"]
mod support;

// The allocator the `tripline` binary runs with: the figures are the service's as shipped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{cpu_seconds, now};
use tripline::adapters::kafka::{self, service};
use tripline::engine::{EngineOptions, RuleSet};

/// `KAFKA_CLIENT=key=value,…`: librdkafka settings for the service's
/// clients, to compare them (e.g. `fetch.queue.backoff.ms=1000`); an item
/// without `=` continues the previous value (`debug=protocol,eos`).
fn client_settings(c: &mut tripline::config::Config) {
    let mut last: Option<String> = None;
    for item in std::env::var("KAFKA_CLIENT").unwrap_or_default().split(',') {
        match (item.split_once('='), &last) {
            (Some((k, v)), _) => {
                c.kafka.client.insert(k.into(), v.into());
                last = Some(k.into());
            }
            (None, Some(k)) if !item.is_empty() => {
                if let Some(v) = c.kafka.client.get_mut(k) {
                    v.push(',');
                    v.push_str(item);
                }
            }
            _ => {}
        }
    }
}

/// A service counter's value.
fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// What the throughput run reads, and the rules it runs.
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// The synthetic A/B/C stream over 10 k keys, benches/abc_10m.tl.
    Synthetic,
    /// The handbook's card transactions, the shipped rules (rules/: 15
    /// windowed features, a 100-tree forest, 5 rules, terminal features
    /// keyed through an internal topic).
    Fraud,
}

impl Workload {
    fn rules(self) -> Arc<RuleSet> {
        let path = match self {
            Workload::Synthetic => "benches/abc_10m.tl",
            Workload::Fraud => "rules",
        };
        tripline::files::load_rules(&[Path::new(path)], None, EngineOptions::default()).unwrap()
    }

    fn produce(self, c: &tripline::config::Config, events: usize) {
        match self {
            Workload::Synthetic => support::produce_stream(c, events, 10_000),
            Workload::Fraud => produce_handbook(c, events),
        }
    }
}

/// Produces `events` transactions: the bundled handbook sample (10 days,
/// 95,815 transactions) as many times over as needed, each copy 10 days
/// after the previous one with its transactions renumbered, keyed by card.
fn produce_handbook(c: &tripline::config::Config, events: usize) {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open("examples/handbook-sample.jsonl.gz").expect("the sample");
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gunzip");
    let sample: Vec<&str> = text.lines().collect();
    let p = support::producer(c);
    for i in 0..events {
        let copy = (i / sample.len()) as i64;
        let mut tx: serde_json::Value = serde_json::from_str(sample[i % sample.len()]).unwrap();
        let at: jiff::civil::DateTime = tx["TX_DATETIME"].as_str().unwrap().parse().unwrap();
        let at = at.checked_add(jiff::Span::new().days(10 * copy)).unwrap();
        tx["TX_DATETIME"] = at.to_string().into();
        tx["TRANSACTION_ID"] = (i as u64).into();
        let key = tx["CUSTOMER_ID"].to_string();
        support::send(&p, &c.kafka.input_topic, &key, &tx.to_string());
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

fn throughput(brokers: &str, events: usize, workload: Workload) {
    let partitions = 4;
    let mut c = support::config(brokers, "throughput", partitions);
    if let Ok(ms) = std::env::var("CHECKPOINT_MS") {
        c.checkpoint.interval_ms = ms.parse().expect("CHECKPOINT_MS in ms");
    }
    client_settings(&mut c);
    // The published test broker answers a fetch with all it holds past the
    // offset, whatever the request's size limits: a backlog of a million
    // transactions exceeds librdkafka's default limit on a response (100 MB).
    // (The vendored one keeps to the limits, as Kafka does.)
    c.kafka
        .client
        .entry("receive.message.max.bytes".into())
        .or_insert_with(|| "2000000000".into());
    kafka::ensure_topics(&c.kafka, brokers, &[&c.kafka.input_topic], partitions).unwrap();
    workload.produce(&c, events);

    // The no-op consumer: a group member that reads every record and commits
    // nothing, read_committed like the service.
    let noop: BaseConsumer = kafka::client_config(&c.kafka, brokers)
        .set("group.id", format!("{}-noop", c.kafka.group_id))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    noop.subscribe(&[&c.kafka.input_topic]).unwrap();
    let (t0, cpu0) = (now(), cpu_seconds());
    let (mut n, mut bytes, mut first) = (0usize, 0usize, None);
    while n < events {
        if let Some(Ok(m)) = noop.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    let (noop_wall, noop_cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let noop_steady = (events - 1) as f64 / first.unwrap().elapsed().as_secs_f64();
    noop.unsubscribe();
    drop(noop);

    let rules = workload.rules();
    let (t0, cpu0) = (now(), cpu_seconds());
    let handle = service::start(
        c.clone(),
        brokers.to_string(),
        rules,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let p = handle.progress();
    // Its first commit: (seconds since start, records it committed).
    let mut first = None;
    while !p.caught_up(events as u64) {
        assert!(!handle.is_finished(), "service stopped");
        let records = get(&p.records);
        if first.is_none() && records > 0 {
            first = Some((t0.elapsed().as_secs_f64(), records));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let (startup, at_first) = first.unwrap_or((0.0, 0));
    // Past the start only when the first commit did not take most of the
    // records (too few events for the figure to mean anything).
    let steady = if at_first < events as u64 / 2 {
        (events as u64 - at_first) as f64 / (wall - startup)
    } else {
        f64::NAN
    };
    let alerts = get(&p.alerts);
    let (commits, pauses) = (get(&p.commits), get(&p.backpressure_pauses));
    let checkpoint_s = get(&p.checkpoint_micros) as f64 / 1e6;
    let barrier_s = get(&p.barrier_micros) as f64 / 1e6;
    let flush_s = get(&p.flush_micros) as f64 / 1e6;
    let flush_wait_s = get(&p.flush_wait_micros) as f64 / 1e6;
    let local_s = get(&p.local_micros) as f64 / 1e6;
    handle.stop();
    handle.join().unwrap();
    std::fs::remove_dir_all(&c.state.dir).ok();

    println!(
        "throughput: {events} events ({bytes} bytes) over {partitions} partitions, {}, checkpoint every {} ms",
        match workload {
            Workload::Synthetic => "the synthetic A, B+, C stream and rule",
            Workload::Fraud => "handbook transactions and the shipped rules",
        },
        c.checkpoint.interval_ms
    );
    println!(
        "  no-op consumer:  {:>9.0} events/s wall from subscribing, {noop_steady:>9.0} from its first record, {:>9.0} events per CPU-second",
        events as f64 / noop_wall,
        events as f64 / noop_cpu.max(1e-9)
    );
    println!(
        "  tripline serve:  {:>9.0} events/s wall from starting,    {steady:>9.0} from its first commit, {:>9.0} events per CPU-second ({alerts} alerts committed)",
        events as f64 / wall,
        events as f64 / cpu.max(1e-9),
    );
    println!(
        "  serve / no-op: {:.0} % from the start, {:.0} % past the start",
        100.0 * noop_wall / wall,
        100.0 * steady / noop_steady
    );
    println!(
        "  serve's {wall:.2} s: {startup:.2} s to its first commit (topics, transactions, group join, restore), checkpoints {checkpoint_s:.2} s ({commits} commits; of that, producing ahead of the barrier {flush_s:.2} s (waiting for the shards to reach it {flush_wait_s:.2} s), waiting for the shards at the barrier {barrier_s:.2} s, writing local state {local_s:.2} s), {pauses} partition pauses for backpressure"
    );
}

fn latency(brokers: &str, count: usize) {
    let mut c = support::config(brokers, "latency", 1);
    c.checkpoint.interval_ms = 100;
    client_settings(&mut c);
    kafka::ensure_topics(&c.kafka, brokers, &[&c.kafka.input_topic], 1).unwrap();
    let rules: Arc<RuleSet> = RuleSet::from_source(
        "latency.tl",
        "stream s { key k time t time format epoch_ms }\nrule every { pattern { x: n >= 0 } }",
        None,
    )
    .unwrap();
    let handle = service::start(
        c.clone(),
        brokers.to_string(),
        rules,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let k = &c.kafka;
    kafka::ensure_topics(k, brokers, &[&k.alerts_topic], 1).unwrap();
    let reader = support::assigned_reader(k, brokers, "reader", &k.alerts_topic, [0], 1);
    let p: ThreadedProducer<DefaultProducerContext> = kafka::client_config(k, brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // Let the service join its group before timing starts.
    while handle
        .progress()
        .partitions
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = std::env::var_os("LATENCY_PROBE").map(|_| Probe::start(k, brokers));
    // The first event also waits for what the start has left to do (the
    // state's restore, the transactional producer, the first fetch): it is
    // timed on its own, and the percentiles start after its alert.
    let base: i64 = 1_700_000_000_000;
    let event = |i: u64| {
        let key = format!("u{}", i % 16);
        let line = format!(r#"{{"k":"{key}","t":{},"n":{i}}}"#, base + i as i64);
        (key, line)
    };
    let alert_number = |m: &rdkafka::message::BorrowedMessage<'_>| {
        let alert: serde_json::Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
        alert["matches"]["x"][0]["n"].as_u64().unwrap()
    };
    let first_sent = now();
    let (key, line) = event(0);
    support::send(&p, &k.input_topic, &key, &line);
    loop {
        assert!(
            first_sent.elapsed() < Duration::from_secs(60),
            "no first alert"
        );
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(1))
            && alert_number(&m) == 0
        {
            break;
        }
    }
    let first_ms = first_sent.elapsed().as_secs_f64() * 1000.0;
    // The probe's own start (its first fetch) is not what it is there to see.
    while probe
        .as_ref()
        .is_some_and(|p| !p.started.load(Ordering::Relaxed))
    {
        assert!(
            first_sent.elapsed() < Duration::from_secs(60),
            "the probe reads nothing"
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    // Each event's send, on the monotonic clock and in epoch ms (to compare
    // with the alert record's timestamp, the time the service produced it).
    let mut sent: BTreeMap<u64, (Instant, i64)> = BTreeMap::new();
    let mut lat_ms: Vec<f64> = Vec::new();
    // (latency, event number, its send time from the first send, ms from
    // the send until the service produced the alert): where the slowest
    // ones fall, and the split between the service's side and the commit
    // and the reader's.
    let mut slowest: Vec<(f64, u64, f64, i64)> = Vec::new();
    let start = now();
    let mut next_send = start;
    let mut i = 1u64;
    while lat_ms.len() < count {
        if i <= count as u64 && now() >= next_send {
            let (key, line) = event(i);
            sent.insert(i, (now(), epoch_ms()));
            support::send(&p, &k.input_topic, &key, &line);
            i += 1;
            next_send += Duration::from_millis(5);
        }
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(1)) {
            let n = alert_number(&m);
            if let Some((t, at_ms)) = sent.remove(&n) {
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                lat_ms.push(ms);
                let produced = m.timestamp().to_millis().map_or(-1, |p| p - at_ms);
                slowest.push((ms, n, (t - start).as_secs_f64(), produced));
            }
        }
    }
    let probe = probe.map(Probe::stop);
    let p = handle.progress();
    let per_commit_ms = get(&p.checkpoint_micros) as f64 / 1e3 / get(&p.commits).max(1) as f64;
    handle.stop();
    handle.join().unwrap();
    std::fs::remove_dir_all(&c.state.dir).ok();
    lat_ms.sort_by(f64::total_cmp);
    let q = |p: f64| lat_ms[((lat_ms.len() - 1) as f64 * p) as usize];
    println!(
        "latency: {count} events at 200/s, lateness 0, checkpoint every {} ms, produce -> alert readable (read_committed)",
        c.checkpoint.interval_ms
    );
    println!(
        "  p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        lat_ms[lat_ms.len() - 1]
    );
    println!("  a checkpoint takes {per_commit_ms:.1} ms on average (barrier and transaction)");
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slowest: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|(ms, n, at, produced)| {
            format!("#{n} sent at {at:.2} s: {ms:.0} ms (alert produced at {produced} ms)")
        })
        .collect();
    println!("  slowest: {}", slowest.join(", "));
    println!(
        "  the first event, sent once the service held its partition (not in the percentiles): {first_ms:.0} ms"
    );
    if let Some((late, worst, at)) = probe {
        println!(
            "  probe (a read_committed consumer of the input beside the service): {late} records read more than 120 ms after their send, the latest {worst} ms (offset {at})"
        );
    }
}

/// `LATENCY_PROBE=1`: a read_committed consumer of the input beside the
/// service, counting the records it reads late (the record's timestamp is
/// its send time): whether a plain consumer of the same broker, in the same
/// run, sees records late when the service does.
struct Probe {
    /// It has read the first event (which it does not count).
    started: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, i64, i64)>,
}

impl Probe {
    fn start(k: &tripline::config::KafkaConfig, brokers: &str) -> Probe {
        let consumer = support::assigned_reader(k, brokers, "probe", &k.input_topic, [0], 10);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, first) = (stop.clone(), started.clone());
        let thread = std::thread::spawn(move || {
            // (records late, the latest's ms and offset)
            let (mut late, mut worst, mut at) = (0, 0, -1);
            while !flag.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
                    if m.offset() == 0 {
                        first.store(true, Ordering::Relaxed);
                        continue;
                    }
                    let ms = epoch_ms() - m.timestamp().to_millis().unwrap_or(0);
                    if ms > 120 {
                        late += 1;
                        if ms > worst {
                            (worst, at) = (ms, m.offset());
                        }
                    }
                }
            }
            (late, worst, at)
        });
        Probe {
            started,
            stop,
            thread,
        }
    }

    fn stop(self) -> (u64, i64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The wall clock in ms since the epoch, as Kafka record timestamps are.
#[allow(clippy::disallowed_methods)]
fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn main() {
    if std::env::var_os("TRIPLINE_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("TRIPLINE_LOG"))
            .init();
    }
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let workload = if std::env::args().any(|a| a == "fraud") {
        Workload::Fraud
    } else {
        Workload::Synthetic
    };
    let brokers = support::brokers();
    println!("broker {brokers}");
    if events > 0 {
        throughput(&brokers, events, workload);
    }
    latency(&brokers, 2000);
}
