//! Replay throughput: decode + engine, single thread, in events/s.
//!
//! - `replay/handbook_sample`: the shipped 10-day handbook sample with the
//!   shipped rules (the handbook feature sets among them).
//! - `replay/decode_only`, `replay/handbook_features`: the same events
//!   decoded only, and decoded then run through the 15 handbook features
//!   alone (`rules/features.tl`), every row collected: the difference is
//!   the feature update cost per event.
//! - `replay/serde_borrowed`: the ceiling for decoding such records,
//!   serde_json into a struct borrowing the line's strings.
//! - `replay/abc_10m`, `replay/abc_6h`: 1 M synthetic events over 10 k keys
//!   with "A, then one or more B, then C within 10 min / 6 h".

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use tripline::engine::{Engine, Outputs, RuleSet};

#[path = "support/stream.rs"]
mod stream;

// The allocator the `tripline` binary runs with: the figures are the CLI's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rules(paths: &[&str]) -> Arc<RuleSet> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ps: Vec<_> = paths.iter().map(|p| root.join(p)).collect();
    let refs: Vec<&Path> = ps.iter().map(|p| p.as_path()).collect();
    tripline::files::load_rules(&refs, None, Default::default()).expect("rules compile")
}

fn run(rs: &Arc<RuleSet>, lines: &[&[u8]]) -> u64 {
    run_with(Engine::new(rs.clone()), lines)
}

fn run_with(mut engine: Engine, lines: &[&[u8]]) -> u64 {
    let rs = engine.rules().clone();
    let mut out = Outputs::default();
    let mut alerts = 0u64;
    for (i, l) in lines.iter().enumerate() {
        if let Ok(ev) = rs.decoder().decode(l, i as u64) {
            engine.on_event(ev, &mut out);
        }
        alerts += (out.alerts.len() + out.features.len()) as u64;
        out.alerts.clear();
        out.late.clear();
        out.features.clear();
    }
    engine.finish(&mut out);
    alerts + out.alerts.len() as u64
}

/// A handbook record as serde_json decodes it at best.
#[derive(serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)] // Decoded to be measured, not read.
struct Transaction<'a> {
    transaction_id: u64,
    tx_datetime: &'a str,
    customer_id: u64,
    terminal_id: u64,
    tx_amount: f64,
    tx_time_seconds: u64,
    tx_time_days: u64,
    tx_fraud: u8,
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);

    let mut text = String::new();
    let f = std::fs::File::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/handbook-sample.jsonl.gz"),
    )
    .expect("sample present");
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut text)
        .expect("gunzip");
    let lines: Vec<&[u8]> = text.lines().map(str::as_bytes).collect();
    let rs = rules(&["rules"]);
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("handbook_sample", |b| b.iter(|| run(&rs, &lines)));
    let features = rules(&["rules/stream.tl", "rules/features.tl"]);
    g.bench_function("decode_only", |b| {
        b.iter(|| {
            lines
                .iter()
                .enumerate()
                .filter_map(|(i, l)| features.decoder().decode(l, i as u64).ok())
                .map(|ev| ev.time)
                .fold(0i64, i64::wrapping_add)
        })
    });
    // The ceiling for decoding such records: serde_json into a struct of
    // the record's own fields, strings borrowed from the line (no event
    // built, no time parsed).
    g.bench_function("serde_borrowed", |b| {
        b.iter(|| {
            lines
                .iter()
                .filter_map(|l| serde_json::from_slice::<Transaction<'_>>(l).ok())
                .map(|t| t.customer_id ^ t.terminal_id ^ t.tx_datetime.len() as u64)
                .fold(0u64, u64::wrapping_add)
        })
    });
    g.bench_function("handbook_features", |b| {
        b.iter(|| run_with(Engine::new(features.clone()).collect_features(), &lines))
    });

    // One buffer, as a file read into memory (and as the handbook sample
    // above), rather than a million separate strings scattered on the heap.
    let synthetic: String = stream::lines(1_000_000, 10_000, 42)
        .flat_map(|l| [l, "\n".to_string()])
        .collect();
    let lines: Vec<&[u8]> = synthetic.lines().map(str::as_bytes).collect();
    g.throughput(Throughput::Elements(lines.len() as u64));
    for (name, file) in [
        ("abc_10m", "benches/abc_10m.tl"),
        ("abc_6h", "benches/abc_6h.tl"),
    ] {
        let rs = rules(&[file]);
        g.bench_function(name, |b| b.iter(|| run(&rs, &lines)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
