//! Throughput and latency against offered load: the service on a
//! Kafka-protocol broker (the one at `KAFKA_BOOTSTRAP`, else an embedded
//! one), fed at fixed rates for a fixed time each. Per rate it reports the
//! rate the service committed at (input produced at the offered rate, from
//! the first record to the last one committed) and the latency of alerts:
//! every tenth event fires a one-stage rule, timed from its produce call to
//! the alert being readable by a read_committed consumer.
//!
//! `KAFKA_BOOTSTRAP=$(scripts/kafka-broker start) cargo bench --bench load [-- SECONDS RATE...]`
//! (default 10 s at 2k, 5k, 10k, 20k, 40k and 80k events/s). Each result is
//! also printed as a CSV line starting `load,` that
//! `scripts/plot-performance` turns into `docs/performance.png`.
//! `LOAD_TRACE=1` prints every alert's produce time (ms since the Unix
//! epoch) and latency (ms) to
//! stderr, to see when slow alerts happen; `TRIPLINE_LOG` (as for the
//! service, e.g. `tripline::telemetry=debug` for each checkpoint's timings)
//! turns the service's logs on.

#[path = "support/kafka.rs"]
mod support;

// The allocator the `tripline` binary runs with: the figures are the service's as shipped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::now;
use tripline::adapters::kafka::{self, service};
use tripline::engine::RuleSet;

const KEYS: u64 = 10_000;
/// The `n` of the warm-up event.
const WARM_UP: u64 = u64::MAX / 2;

struct Run {
    offered: f64,
    achieved: f64,
    p50: f64,
    p99: f64,
    max: f64,
    alerts: usize,
}

fn run(brokers: &str, rate: u64, seconds: u64) -> Run {
    let partitions = 4;
    // Topics and groups of their own per run: a rate measured twice must
    // not read the first run's alerts (or resume from its offsets).
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let mut c = support::config(brokers, &format!("load-{rate}-{run}"), partitions);
    c.checkpoint.interval_ms = 100;
    kafka::ensure_topics(&c.kafka, brokers, &[&c.kafka.input_topic], partitions).unwrap();
    let rules = RuleSet::from_source(
        "load.tl",
        "stream s { key k time t time format epoch_ms lateness 0s }\n\
         rule flagged { pattern { x: f == 1 } }",
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
    kafka::ensure_topics(k, brokers, &[&k.alerts_topic], partitions).unwrap();
    while handle.progress().partitions.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = rate * seconds;
    let flagged = total.div_ceil(10) as usize;
    // The reader's and the producer's one clock.
    let clock_zero = now();
    // The same moment on the system clock, so that traces line up with the
    // service's log lines.
    #[allow(clippy::disallowed_methods)]
    let epoch_zero_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0;
    let start = clock_zero;
    // Nanoseconds after `start` at which each flagged event was produced.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..flagged).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let warm = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sent, done, warm) = (sent.clone(), done.clone(), warm.clone());
        let consumer =
            support::assigned_reader(k, brokers, "reader", &k.alerts_topic, 0..partitions, 1);
        // The reader only notes when each alert arrived: decoding them as they
        // come would delay the later alerts of a transaction by the time spent
        // on the earlier ones, which is the bench's time, not the service's.
        std::thread::spawn(move || {
            let mut arrived: Vec<(u64, Vec<u8>)> = Vec::with_capacity(sent.len());
            let mut warmed = false;
            while arrived.len() < sent.len() && !done.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) else {
                    continue;
                };
                let got = start.elapsed().as_nanos() as u64;
                let payload = m.payload().unwrap_or_default();
                if !warmed {
                    warmed = alert_n(payload) == WARM_UP;
                    warm.store(warmed, Ordering::Release);
                    continue;
                }
                arrived.push((got, payload.to_vec()));
            }
            arrived
        })
    };
    let producer = support::producer(&c);
    let base: i64 = 1_700_000_000_000;
    // Warm-up: one alert through the whole path (the reader's first fetch,
    // the producer's connections) before the clock that counts starts.
    kafka::send_waiting(
        &producer,
        BaseRecord::to(&k.input_topic).key("warm").payload(&format!(
            r#"{{"k":"warm","t":{},"n":{WARM_UP},"f":1}}"#,
            base - 1000
        )),
    )
    .unwrap();
    while !warm.load(Ordering::Acquire) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no warm-up alert"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = now();
    let offset = start.duration_since(clock_zero).as_nanos() as u64;
    let step = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..total {
        let due = step * i as u32;
        let behind = start.elapsed();
        if due > behind {
            std::thread::sleep(due - behind);
        }
        let key = (i * 7919) % KEYS;
        let flag = u8::from(i % 10 == 0);
        let line = format!(
            r#"{{"k":"u{key}","t":{},"n":{i},"f":{flag}}}"#,
            base + i as i64
        );
        if flag == 1 {
            sent[(i / 10) as usize].store(
                offset + start.elapsed().as_nanos() as u64,
                Ordering::Release,
            );
        }
        kafka::send_waiting(
            &producer,
            BaseRecord::to(&k.input_topic)
                .key(&format!("u{key}"))
                .payload(&line),
        )
        .unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let produced_in = start.elapsed().as_secs_f64();
    while !handle.progress().caught_up(total + 1) {
        assert!(!handle.is_finished(), "service stopped");
        std::thread::sleep(Duration::from_millis(2));
    }
    let committed_in = start.elapsed().as_secs_f64();
    let drain_until = now() + Duration::from_secs(10);
    while !reader.is_finished() && now() < drain_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::Relaxed);
    let trace = std::env::var_os("LOAD_TRACE").is_some();
    let mut lat: Vec<f64> = reader
        .join()
        .unwrap()
        .iter()
        .map(|(got, payload)| {
            let at = sent[(alert_n(payload) / 10) as usize].load(Ordering::Acquire);
            let ms = got.saturating_sub(at) as f64 / 1e6;
            if trace {
                eprintln!("trace {:.1} {ms:.1}", epoch_zero_ms + at as f64 / 1e6);
            }
            ms
        })
        .collect();
    handle.stop();
    handle.join().unwrap();
    std::fs::remove_dir_all(&c.state.dir).ok();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    Run {
        offered: total as f64 / produced_in,
        achieved: total as f64 / committed_in,
        p50: q(0.5),
        p99: q(0.99),
        max: lat[lat.len() - 1],
        alerts: lat.len(),
    }
}

/// The `n` of the event an alert of the `flagged` rule matched.
fn alert_n(payload: &[u8]) -> u64 {
    let alert: serde_json::Value = serde_json::from_slice(payload).unwrap();
    alert["matches"]["x"][0]["n"].as_u64().unwrap()
}

fn main() {
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = numbers.first().copied().unwrap_or(10);
    let rates: Vec<u64> = if numbers.len() > 1 {
        numbers[1..].to_vec()
    } else {
        vec![2_000, 5_000, 10_000, 20_000, 40_000, 80_000]
    };
    if std::env::var_os("TRIPLINE_LOG").is_some() {
        tripline::telemetry::init_logs(false);
    }
    let brokers = support::brokers();
    println!(
        "broker {brokers}; {seconds} s per rate, {KEYS} keys, 4 partitions, checkpoint every 100 ms, lateness 0"
    );
    println!(
        "{:>10}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  {:>7}",
        "target/s", "offered/s", "committed/s", "p50 ms", "p99 ms", "max ms", "alerts"
    );
    for rate in rates {
        let r = run(&brokers, rate, seconds);
        println!(
            "{rate:>10}  {:>10.0}  {:>10.0}  {:>9.1}  {:>9.1}  {:>9.1}  {:>7}",
            r.offered, r.achieved, r.p50, r.p99, r.max, r.alerts
        );
        println!(
            "load,{rate},{:.0},{:.0},{:.2},{:.2},{:.2}",
            r.offered, r.achieved, r.p50, r.p99, r.max
        );
    }
}
