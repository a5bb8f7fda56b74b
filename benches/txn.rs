//! The checkpoint's Kafka calls alone, timed call by call: a transactional
//! producer and a read_committed group member do what the service does at
//! each checkpoint — begin a transaction, produce a few records, add the
//! consumer's offsets (`send_offsets_to_transaction`), wait until every
//! record is acknowledged, commit — every 100 ms, while another producer
//! writes input records (200 a second unless told). No engine, shard, state
//! or actor runs, so a slow call here is the broker's or the client's.
//!
//! `cargo bench --bench txn [-- SECONDS [BUSY [PARTITIONS [RATE]]]]`
//! (default 60 s; `BUSY` threads spin meanwhile, to see whether the calls
//! slow when the machine's cores are taken; the input and output topics have
//! `PARTITIONS` partitions, default 1, and every transaction writes to each
//! and adds each's offset, as a service member holding them all does; the
//! input is written at `RATE` records a second, default 200, so that the
//! member also fetches while the transactions run).
//! Uses the broker at `KAFKA_BOOTSTRAP`, else an embedded one.

#[path = "support/kafka.rs"]
mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::now;
use tripline::adapters::kafka;

const TIMEOUT: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(100);
/// Records each transaction produces (the alerts of 100 ms at 200/s, and a few).
const RECORDS: usize = 20;
/// The phases of a checkpoint, in order.
const PHASES: [&str; 5] = ["begin", "produce", "send_offsets", "acknowledged", "commit"];

/// One transaction: when it began (since the loop's start) and each phase's time.
struct Txn {
    at: Duration,
    phases: [Duration; 5],
}

impl Txn {
    fn total(&self) -> Duration {
        self.phases.iter().sum()
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(60);
    let busy = args.get(1).copied().unwrap_or(0);
    let partitions = args.get(2).copied().unwrap_or(1).max(1) as i32;
    let rate = args.get(3).copied().unwrap_or(200);
    let brokers = support::brokers();
    println!(
        "broker {brokers}, {seconds} s, {busy} busy threads, {partitions} partitions, input {rate}/s"
    );
    let c = support::config(&brokers, "txn", partitions);
    let (input, output) = (c.kafka.input_topic.clone(), c.kafka.alerts_topic.clone());
    kafka::ensure_topics(&c.kafka, &brokers, &[&input, &output], partitions).expect("topics");

    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // The input, a tenth of a second's records at a time.
    let per_tick = (rate / 10).max(1);
    let feeder = support::producer(&c);
    let (flag, topic) = (done.clone(), input.clone());
    threads.push(std::thread::spawn(move || {
        let mut n = 0u64;
        while !flag.load(Ordering::Relaxed) {
            for _ in 0..per_tick {
                n += 1;
                let key = (n % 100).to_string();
                support::send(&feeder, &topic, &key, &format!("{{\"n\":{n}}}"));
            }
            std::thread::sleep(INTERVAL);
        }
        feeder.flush(TIMEOUT).ok();
    }));
    for _ in 0..busy {
        let flag = done.clone();
        threads.push(std::thread::spawn(move || {
            let mut x = 0u64;
            while !flag.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }));
    }

    let consumer: BaseConsumer = kafka::group_member_config(&c.kafka, &brokers, &c.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&input]).expect("subscribe");
    let producer: BaseProducer = kafka::client_config(&c.kafka, &brokers)
        .set("transactional.id", format!("{}-txn", c.kafka.group_id))
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");

    // Join the group and read the first record before timing anything.
    // The next offset to read, per partition.
    let mut next = std::collections::BTreeMap::new();
    let joined = now();
    while next.is_empty() && joined.elapsed() < TIMEOUT {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            next.insert(m.partition(), m.offset() + 1);
        }
    }
    assert!(!next.is_empty(), "the group member reads the input");
    println!(
        "joined and read the first record in {:.2} s",
        joined.elapsed().as_secs_f64()
    );

    let group = consumer.group_metadata().expect("group metadata");
    let payload = "x".repeat(200);
    let start = now();
    let mut tick = start;
    let mut txns = Vec::new();
    let mut read = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick += INTERVAL;
        while let Some(Ok(m)) = consumer.poll(tick.saturating_duration_since(now())) {
            next.insert(m.partition(), m.offset() + 1);
            read += 1;
        }
        let mut phases = [Duration::ZERO; 5];
        let at = start.elapsed();
        let mut t = now();
        let mut lap = |i: usize, t: &mut Instant| {
            phases[i] = t.elapsed();
            *t = now();
        };
        producer.begin_transaction().expect("begin");
        lap(0, &mut t);
        for i in 0..RECORDS {
            let key = i.to_string();
            let partition = i as i32 % partitions;
            producer
                .send(
                    BaseRecord::to(&output)
                        .partition(partition)
                        .key(&key)
                        .payload(&payload),
                )
                .expect("send");
        }
        lap(1, &mut t);
        let mut tpl = TopicPartitionList::new();
        for (&p, &n) in &next {
            tpl.add_partition_offset(&input, p, Offset::Offset(n))
                .expect("offset");
        }
        producer
            .send_offsets_to_transaction(&tpl, &group, TIMEOUT)
            .expect("send_offsets_to_transaction");
        lap(2, &mut t);
        while producer.in_flight_count() > 0 {
            producer.poll(Duration::from_millis(1));
        }
        lap(3, &mut t);
        producer.commit_transaction(TIMEOUT).expect("commit");
        lap(4, &mut t);
        txns.push(Txn { at, phases });
    }
    done.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().ok();
    }
    consumer.unsubscribe();
    println!("{read} input records read while timing");
    report(&txns);
}

fn report(txns: &[Txn]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |sorted: &[Duration], p: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!("{} transactions", txns.len());
    println!("| phase | p50 | p99 | max |\n|---|---|---|---|");
    for (i, name) in PHASES.iter().enumerate().chain([(5, &"whole")]) {
        let mut d: Vec<Duration> = txns
            .iter()
            .map(|t| if i < 5 { t.phases[i] } else { t.total() })
            .collect();
        d.sort();
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(pct(&d, 0.5)),
            ms(pct(&d, 0.99)),
            ms(pct(&d, 1.0))
        );
    }
    let slow = txns
        .iter()
        .filter(|t| t.total() > Duration::from_millis(50))
        .count();
    println!("transactions over 50 ms: {slow}");
    let mut worst: Vec<&Txn> = txns.iter().collect();
    worst.sort_by_key(|t| std::cmp::Reverse(t.total()));
    for t in worst.iter().take(5) {
        let phases: Vec<String> = (PHASES.iter().zip(t.phases))
            .map(|(n, d)| format!("{n} {:.1}", ms(d)))
            .collect();
        println!(
            "  at {:.1} s: {:.1} ms ({})",
            t.at.as_secs_f64(),
            ms(t.total()),
            phases.join(", ")
        );
    }
}
