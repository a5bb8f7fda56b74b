//! What telemetry costs the service: the end-to-end throughput of
//! `benches/service.rs` (the synthetic A/B/C stream from the broker to
//! committed alerts) with telemetry off (logs only; no exporter, so
//! OpenTelemetry's no-op instruments) and on (the Prometheus reader scraped every second, OTLP
//! metrics pushed every second and spans for a 0.001 share of events, to a
//! collector on loopback that accepts and drops them).
//!
//! Each run is a child process of this bench (telemetry is set up once per
//! process), alternating off and on; the figures are events per CPU-second
//! of the child, whose CPU time covers the service and its exporters but not
//! the broker's.
//!
//! `KAFKA_BOOTSTRAP=$(scripts/kafka-broker start) cargo bench --bench telemetry [-- EVENTS [ROUNDS]]`
//! (default 200000 events, 3 rounds).

#[path = "support/kafka.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use tripline::adapters::kafka::{self, service};
use tripline::config::TelemetryConfig;
use tripline::engine::{EngineOptions, RuleSet};

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// An OTLP/HTTP sink on loopback that answers 200 to everything; its URL.
fn sink() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let app = axum::Router::new().fallback(|| async { "" });
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            });
    });
    url
}

/// One measured run in this (child) process; prints `RESULT wall cpu`.
fn child(brokers: &str, events: usize, on: bool) {
    // Both set up logs the same way; only the exporters differ.
    let config = if on {
        TelemetryConfig {
            otlp_endpoint: sink(),
            otlp_interval_ms: 1000,
            ..TelemetryConfig::default()
        }
    } else {
        TelemetryConfig {
            prometheus: false,
            ..TelemetryConfig::default()
        }
    };
    let _telemetry = tripline::telemetry::init(&config).unwrap();
    if on {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                tripline::telemetry::prometheus_text();
            }
        });
    }
    let partitions = 4;
    let c = support::config(brokers, if on { "tel-on" } else { "tel-off" }, partitions);
    kafka::ensure_topics(&c.kafka, brokers, &[&c.kafka.input_topic], partitions).unwrap();
    support::produce_stream(&c, events, 10_000);
    let rules = RuleSet::load(
        &[Path::new("benches/abc_10m.tl")],
        None,
        EngineOptions::default(),
    )
    .unwrap();
    let (t0, cpu0) = (now(), cpu_seconds());
    let handle = service::start(c.clone(), brokers.to_string(), rules).unwrap();
    if on {
        let progress = handle.progress().clone();
        tripline::telemetry::observe_service(move || progress.figures());
    }
    while !handle.progress().caught_up(events as u64) {
        assert!(!handle.is_finished(), "service stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    handle.stop();
    handle.join().unwrap();
    println!(
        "RESULT {} {}",
        events as f64 / wall,
        events as f64 / cpu.max(1e-9)
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let events = numbers.first().copied().unwrap_or(200_000);
    let rounds = numbers.get(1).copied().unwrap_or(3);
    let brokers = match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.is_empty() => b,
        _ => kafka::broker::start("127.0.0.1:0")
            .expect("embedded broker")
            .to_string(),
    };
    if let Ok(mode) = std::env::var("TRIPLINE_BENCH_TELEMETRY") {
        child(&brokers, events, mode == "on");
        return;
    }
    println!("broker {brokers}; {events} events per run, {rounds} rounds of off/on");
    let mut runs: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for round in 0..rounds {
        for (i, mode) in ["off", "on"].iter().enumerate() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([events.to_string(), "--bench".into()])
                .env("TRIPLINE_BENCH_TELEMETRY", mode)
                .env("KAFKA_BOOTSTRAP", &brokers)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .unwrap_or_else(|| {
                    panic!(
                        "run {mode} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
            let v: Vec<f64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            println!(
                "  round {round} telemetry {mode:>3}: {:>9.0} events/s wall, {:>9.0} events per CPU-second",
                v[0], v[1]
            );
            runs[i].0.push(v[0]);
            runs[i].1.push(v[1]);
        }
    }
    let [(mut off_wall, mut off_cpu), (mut on_wall, mut on_cpu)] = runs;
    let (off_wall, off_cpu) = (median(&mut off_wall), median(&mut off_cpu));
    let (on_wall, on_cpu) = (median(&mut on_wall), median(&mut on_cpu));
    println!("median of {rounds}:");
    println!(
        "  telemetry off: {off_wall:>9.0} events/s wall, {off_cpu:>9.0} events per CPU-second"
    );
    println!("  telemetry on:  {on_wall:>9.0} events/s wall, {on_cpu:>9.0} events per CPU-second");
    println!(
        "  on vs off: {:+.1} % wall rate, {:+.1} % events per CPU-second",
        100.0 * (on_wall / off_wall - 1.0),
        100.0 * (on_cpu / off_cpu - 1.0)
    );
}
