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
//! It first measures, alone and precisely, what telemetry adds per
//! checkpoint (the one place it counts): one `CheckpointCommitted::emit`.
//!
//! `KAFKA_BOOTSTRAP=$(scripts/kafka-broker start) cargo bench --bench telemetry [-- EVENTS [ROUNDS]]`
//! (default 200000 events, 3 rounds; 0 rounds: the per-checkpoint cost only).

#[path = "support/kafka.rs"]
mod support;

use std::path::Path;
use std::time::Duration;
use support::{cpu_seconds, now};
use tripline::adapters::kafka::{self, service};
use tripline::config::TelemetryConfig;
use tripline::engine::EngineOptions;
use tripline::telemetry::events::{Observer, Telemetry};

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

/// Telemetry on: every exporter, to the sink; off: logs only (no exporter,
/// so OpenTelemetry's no-op instruments). Logs are set up the same way.
fn telemetry_config(on: bool) -> TelemetryConfig {
    if on {
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
    }
}

/// One measured run in this (child) process; prints `RESULT wall cpu`.
fn child(brokers: &str, events: usize, on: bool) {
    let _telemetry = tripline::telemetry::init(&telemetry_config(on)).unwrap();
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
    let rules = tripline::files::load_rules(
        &[Path::new("benches/abc_10m.tl")],
        None,
        EngineOptions::default(),
    )
    .unwrap();
    let (t0, cpu0) = (now(), cpu_seconds());
    let handle = service::start(
        c.clone(),
        brokers.to_string(),
        rules,
        Default::default(),
        Default::default(),
    )
    .unwrap();
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
    std::fs::remove_dir_all(&c.state.dir).ok();
    println!(
        "RESULT {} {}",
        events as f64 / wall,
        events as f64 / cpu.max(1e-9)
    );
}

/// The cost of what telemetry adds per checkpoint, measured alone: one
/// `CheckpointCommitted::emit` for 8 partitions and 20 alerts (3 rules, 2
/// severities), with exporters on or off (no provider: no-op instruments).
/// Prints `EMIT <ns per emit>`.
fn emit_child(on: bool) {
    use tripline::telemetry::events::{AlertCommit, CheckpointCommitted, PartitionCommit};
    let _telemetry = tripline::telemetry::init(&telemetry_config(on)).unwrap();
    let topics = ["transactions", "tripline.by.TERMINAL_ID"];
    let rules = ["velocity", "amount_spike", "card_model"];
    let build = || CheckpointCommitted {
        partitions: (0..8)
            .map(|i| PartitionCommit {
                topic: topics[i % 2],
                partition: (i / 2) as i32,
                events: 2_500,
            })
            .collect(),
        alerts: (0..20)
            .map(|i| AlertCommit {
                rule: rules[i % 3],
                severity: if i % 2 == 0 { "high" } else { "medium" },
                shadow: false,
                cause_ms: Some(1_700_000_000_000),
                span: None,
            })
            .collect(),
        malformed: 1,
        late: 2,
        total: Duration::from_millis(3),
        committed_ms: 1_700_000_000_050,
        ..CheckpointCommitted::default()
    };
    for _ in 0..1_000 {
        Telemetry.checkpoint_committed(&build());
    }
    let n = 100_000;
    let t0 = now();
    for _ in 0..n {
        Telemetry.checkpoint_committed(&build());
    }
    println!("EMIT {}", t0.elapsed().as_nanos() as f64 / n as f64);
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
    let mode = std::env::var("TRIPLINE_BENCH_TELEMETRY").ok();
    if let Some(m @ ("emit-on" | "emit-off")) = mode.as_deref() {
        emit_child(m == "emit-on");
        return;
    }
    let brokers = support::brokers();
    if let Some(mode) = mode {
        child(&brokers, events, mode == "on");
        return;
    }
    // What telemetry adds per checkpoint, alone: precise where the
    // end-to-end comparison below is within the machine's noise.
    for mode in ["emit-off", "emit-on"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--bench")
            .env("TRIPLINE_BENCH_TELEMETRY", mode)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let ns: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("EMIT "))
            .unwrap_or_else(|| panic!("{mode}: {}", String::from_utf8_lossy(&out.stderr)))
            .parse()
            .unwrap();
        println!(
            "per checkpoint (8 partitions, 20 alerts), telemetry {}: {:.2} µs to count it = {:.3} % of a core at 10 checkpoints/s",
            &mode[5..],
            ns / 1000.0,
            ns * 10.0 / 1e9 * 100.0
        );
    }
    if rounds == 0 {
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
