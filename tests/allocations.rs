//! Allocations on the event path, counted by a counting allocator
//! (`stats_alloc`): once a key's state exists, what the engine allocates
//! to compute an event's features, score the model and run the rules.
//! Decoding is left out (an event owns its fields and text); what is
//! counted is `Engine::warm` and `Engine::on_event` over events already
//! decoded.
//!
//! The handbook sample with the shipped rules, replayed twice (see
//! [`allocations_per_event`]); the second pass is counted.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use tripline::engine::{Engine, Outputs, RuleSet};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn rules(paths: &[&str]) -> Arc<RuleSet> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ps: Vec<_> = paths.iter().map(|p| root.join(p)).collect();
    let refs: Vec<&Path> = ps.iter().map(|p| p.as_path()).collect();
    tripline::files::load_rules(&refs, None, Default::default()).expect("rules compile")
}

fn sample() -> String {
    let f = std::fs::File::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/handbook-sample.jsonl.gz"),
    )
    .expect("sample present");
    let mut text = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut text)
        .expect("gunzip");
    text
}

/// Allocations per event over a steady state: the sample (10 days) is
/// replayed four times, each 11 days after the one before (within the
/// stream's `skew`), and the fourth is counted. By then every key exists
/// and the 30-day windows hold as much as they will (three passes'
/// worth), so what is counted is what each event costs, not a key's first
/// growth. Returns the allocations per event and the alerts raised in the
/// counted pass.
fn allocations_per_event(rules: &Arc<RuleSet>, text: &str) -> (f64, usize) {
    const PASS: i64 = 11 * 86_400_000;
    let events: Vec<_> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| rules.decoder().decode(l.as_bytes(), i as u64).ok())
        .collect();
    let n = events.len();
    let pass = |k: i64| -> Vec<_> {
        events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.time += k * PASS;
                e.seq += k as u64 * n as u64;
                e
            })
            .collect()
    };
    let mut engine = Engine::new(rules.clone());
    let mut out = Outputs::default();
    for k in 0..3 {
        for e in pass(k) {
            engine.on_event(e, &mut out);
            out.alerts.clear();
        }
    }
    // As `replay` does: a batch's state warmed, then its events taken.
    let batches: Vec<Vec<_>> = pass(3).chunks(32).map(<[_]>::to_vec).collect();
    let mut alerts = 0;
    let region = Region::new(GLOBAL);
    for batch in batches {
        engine.warm(&batch);
        for e in batch {
            engine.on_event(e, &mut out);
            alerts += out.alerts.len();
            out.alerts.clear();
        }
    }
    let change = region.change();
    let stats = engine.stats();
    assert_eq!(
        stats.events as usize,
        4 * n,
        "every event is processed: {stats:?}"
    );
    let allocs = change.allocations + change.reallocations;
    (allocs as f64 / n as f64, alerts)
}

#[test]
fn the_fraud_rule_set_allocates_rarely_once_keys_are_warm() {
    let text = sample();
    let (features, _) =
        allocations_per_event(&rules(&["rules/stream.tl", "rules/features.tl"]), &text);
    let (all, alerts) = allocations_per_event(&rules(&["rules"]), &text);
    eprintln!(
        "allocations per event: features {features:.4}, the shipped rules {all:.4} ({alerts} alerts)"
    );
    // One per event: the `Arc` in which the engine shares an event with
    // partial matches and alerts. The 15 features add none (a window's log
    // reallocates now and then as a key's traffic varies).
    assert!(
        features < 1.1,
        "the features allocate {features:.4} times per event"
    );
    // The pattern rules' partial matches and the alerts add about one more.
    assert!(
        all < 2.5,
        "the shipped rules allocate {all:.4} times per event"
    );
}
