//! State benchmark, on the real RocksDB store (a temporary data directory):
//!
//! 1. memory per key in memory: heap bytes per key after one event on each
//!    of N keys, counted by a counting allocator (`stats_alloc`), decoded
//!    and, once the keys are idle, frozen; for keys holding only a window
//!    aggregate and keys holding a started partial match, beside the
//!    encoded size and the estimate the memory budget counts;
//! 2. checkpoint cost: encoding the changes of 100 k dirty keys
//!    (`take_changes`) and writing them to RocksDB in one batch, in ms and
//!    bytes;
//! 3. restore: N keys read back from RocksDB into a fresh engine, all in
//!    memory, and with a memory budget (most keys left passivated);
//! 4. throughput with N active keys: events spread over all of them, in
//!    memory, and passivating to RocksDB under a budget of 1/8 of the keys'
//!    memory with a checkpoint every 100 k events;
//! 5. checkpoint encoding on the fraud workload: the bundled handbook
//!    sample under the shipped rules (`rules/`), the changes taken every
//!    2,000 events (what a shard encodes at each checkpoint), in ms and
//!    bytes.
//!
//! `cargo bench --bench state [-- KEYS]` (default 1000000 keys). Single
//! thread; figures are per core.

#[path = "support/heap.rs"]
mod heap;
use heap::allocated;
use std::path::Path;
use std::time::Instant;
use tripline::adapters::local::LocalState;
use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};
use tripline::event::Event;
use tripline::state::StateStore;

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

const START: i64 = 1_522_540_800_000;

/// Event `i` of a stream over `keys` keys: key `i % keys`, 1 ms apart,
/// type A (a started partial match of `abc`) or, every 8th visit, B.
fn event(rs: &RuleSet, i: u64, keys: u64) -> Event {
    let kind = if (i / keys) % 8 == 7 { "B" } else { "A" };
    let line = format!(
        "{{\"user\":{},\"ts\":{},\"type\":\"{kind}\",\"amount\":{}}}",
        i % keys,
        START + i as i64,
        i % 500
    );
    rs.decoder().decode(line.as_bytes(), i).expect("decodes")
}

fn feed(engine: &mut Engine, rs: &RuleSet, from: u64, to: u64, keys: u64, out: &mut Outputs) {
    for i in from..to {
        engine.on_event(event(rs, i, keys), out);
        out.alerts.clear();
    }
}

/// Takes the engine's changes and writes them to `store`: ms encoding, ms
/// writing, bytes, entries.
fn timed_checkpoint(engine: &mut Engine, store: &mut impl StateStore) -> (f64, f64, usize, usize) {
    let t = now();
    let batch = engine.take_changes();
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes = batch
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let entries = batch.len();
    let t = now();
    store.write(batch).expect("write");
    (encode_ms, t.elapsed().as_secs_f64() * 1e3, bytes, entries)
}

fn main() {
    let keys: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rules = tripline::files::load_rules(
        &[Path::new("benches/abc_6h.tl")],
        None,
        EngineOptions::default(),
    )
    .expect("rules compile");
    let dir = std::env::temp_dir().join(format!("tripline-bench-state-{}", std::process::id()));
    let local = LocalState::open(&dir).expect("data directory");
    println!("state benchmark: {keys} keys, rules benches/abc_6h.tl, RocksDB in {dir:?}");

    // 1. Memory per idle key: first keys whose only state is a window
    //    aggregate (one event each), then keys holding a started partial
    //    match (and with it the event). Beside each, the passivation
    //    estimate (encoded size + fixed overhead) the memory budget counts.
    let window_rules = RuleSet::from_source(
        "window.tl",
        "stream synthetic { key user time ts time format epoch_ms lateness 100ms }\n\
         rule many { pattern { x: count(over 1h) > 1000 } }",
        None,
    )
    .expect("rules compile");
    let per_key = |rules: &std::sync::Arc<RuleSet>, shard: i32| {
        let mut out = Outputs::default();
        // Decoded: measured without change tracking, whose set of dirty
        // keys would count as well.
        let before = allocated();
        let mut engine = Engine::new(rules.clone());
        feed(&mut engine, rules, 0, keys, keys, &mut out);
        let decoded = (allocated() - before) as f64 / engine.key_count() as f64;
        drop(engine);
        // Frozen: checkpoints with no events until every key is idle long
        // enough to be frozen. RocksDB's own memory (C++) is not counted.
        let mut store = local.shard("memory", shard).expect("store");
        let before = allocated();
        let mut engine =
            Engine::new(rules.clone()).with_passivation(Box::new(store.clone()), usize::MAX);
        feed(&mut engine, rules, 0, keys, keys, &mut out);
        let mut encoded = 0.0;
        for round in 0..100 {
            let batch = engine.take_changes();
            if round == 0 {
                encoded = batch
                    .iter()
                    .filter(|(k, _)| k.starts_with(b"k/"))
                    .filter_map(|(_, v)| v.as_ref())
                    .map(Vec::len)
                    .sum::<usize>() as f64
                    / engine.key_count() as f64;
            }
            store.write(batch).expect("write");
            engine.passivate(engine.batches(), usize::MAX);
            let stats = engine.passivation_stats().unwrap_or_default();
            if stats.frozen_keys as usize == engine.key_count() {
                break;
            }
        }
        let frozen = (allocated() - before) as f64 / engine.key_count() as f64;
        let estimate = engine
            .passivation_stats()
            .unwrap_or_default()
            .resident_bytes as f64
            / engine.key_count() as f64;
        (decoded, frozen, encoded, estimate)
    };
    let (decoded, frozen, encoded, estimate) = per_key(&window_rules, 0);
    println!(
        "memory per key, a window aggregate only: {decoded:.0} bytes decoded, \
         {frozen:.0} bytes idle (frozen; encoded {encoded:.0}, budget estimate {estimate:.0})"
    );
    let (decoded, frozen, encoded, estimate) = per_key(&rules, 1);
    println!(
        "memory per key, one partial match holding its event: {decoded:.0} bytes decoded, \
         {frozen:.0} bytes idle (frozen; encoded {encoded:.0}, budget estimate {estimate:.0})"
    );

    let before = allocated();
    let mut engine = Engine::new(rules.clone()).track_changes();
    let mut out = Outputs::default();
    feed(&mut engine, &rules, 0, keys, keys, &mut out);

    // 2. Checkpoint cost, first of all N keys (the initial snapshot), then
    //    of 100 k dirty keys.
    let mut store = local.shard("bench", 0).expect("store");
    let (encode_ms, write_ms, bytes, _) = timed_checkpoint(&mut engine, &mut store);
    println!(
        "checkpoint of all {keys} keys: {encode_ms:.0} ms encode + {write_ms:.0} ms RocksDB write, {} MB",
        bytes / 1_000_000
    );
    let dirty = 100_000u64.min(keys);
    let mut runs = Vec::new();
    for round in 0..5u64 {
        // Every 8th key changes per 100k-event slice: step over keys.
        let from = keys * (1 + round);
        let stride = (keys / dirty).max(1);
        for j in 0..dirty {
            engine.on_event(event(&rules, from + j * stride, keys), &mut out);
            out.alerts.clear();
        }
        runs.push(timed_checkpoint(&mut engine, &mut store));
    }
    runs.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    let (encode, write, bytes, n) = runs[runs.len() / 2];
    println!(
        "checkpoint of 100k dirty keys (median of 5): {encode:.1} ms encode + {write:.1} ms RocksDB write = {:.1} ms, {:.1} MB ({n} entries, {:.0} bytes/key)",
        encode + write,
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
    let resident_bytes = (allocated() - before) as usize;
    drop(engine);

    // 3. Restore.
    let t = now();
    let restored = Engine::new(rules.clone())
        .track_changes()
        .restored(&store)
        .expect("restore");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "restore of {} keys from RocksDB, all in memory: {secs:.2} s ({:.0} keys/s)",
        restored.key_count(),
        restored.key_count() as f64 / secs
    );
    drop(restored);
    let budget = resident_bytes / 8;
    let t = now();
    let restored = Engine::new(rules.clone())
        .with_passivation(Box::new(store.clone()), budget)
        .restored(&store)
        .expect("restore");
    let secs = t.elapsed().as_secs_f64();
    let stats = restored.passivation_stats().unwrap_or_default();
    println!(
        "restore with a {} MB budget: {secs:.2} s, {} keys in memory, {} passivated",
        budget >> 20,
        restored.key_count(),
        stats.cold_keys
    );
    drop(restored);

    // 4. Throughput with N active keys.
    let events = 2 * keys;
    let mut engine = Engine::new(rules.clone()).track_changes();
    feed(&mut engine, &rules, 0, keys, keys, &mut out);
    let t = now();
    feed(&mut engine, &rules, keys, keys + events, keys, &mut out);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "throughput, {} keys in memory: {:.0} events/s",
        engine.key_count(),
        events as f64 / secs
    );
    drop(engine);
    let mut pstore = local.shard("bench", 1).expect("store");
    let mut engine = Engine::new(rules.clone()).with_passivation(Box::new(pstore.clone()), budget);
    feed(&mut engine, &rules, 0, keys, keys, &mut out);
    pstore.write(engine.take_changes()).expect("write");
    engine.passivate(engine.batches(), budget);
    let t = now();
    let mut at = keys;
    while at < keys + events {
        let to = (at + 100_000).min(keys + events);
        feed(&mut engine, &rules, at, to, keys, &mut out);
        at = to;
        pstore.write(engine.take_changes()).expect("write");
        engine.passivate(engine.batches(), budget);
    }
    let secs = t.elapsed().as_secs_f64();
    let stats = engine.passivation_stats().unwrap_or_default();
    println!(
        "throughput, {keys} keys under a {} MB budget (checkpoint to RocksDB every 100k events): \
         {:.0} events/s; {} resident ({} of them frozen), {} passivated, {} evictions, \
         {} reads back, {} freezes, {} thaws",
        budget >> 20,
        events as f64 / secs,
        engine.key_count(),
        stats.frozen_keys,
        stats.cold_keys,
        stats.evictions,
        stats.loads,
        stats.freezes,
        stats.thaws
    );
    drop(engine);
    drop(store);
    drop(pstore);
    drop(local);
    std::fs::remove_dir_all(&dir).ok();

    // 5. Checkpoint encoding on the fraud workload.
    let fraud = tripline::files::load_rules(&[Path::new("rules")], None, EngineOptions::default())
        .expect("the shipped rules compile");
    let sample = std::fs::File::open("examples/handbook-sample.jsonl.gz").expect("the sample");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(flate2::read::GzDecoder::new(
        sample,
    )));
    let mut engine = Engine::new(fraud).track_changes();
    let (mut encode_ms, mut bytes, mut entries, mut takes, mut events) = (0.0, 0, 0, 0, 0u64);
    for (i, line) in lines.enumerate() {
        let line = line.expect("the sample reads");
        engine
            .on_record(0, line.as_bytes(), i as u64, &mut out, |_, _| {})
            .expect("the sample decodes");
        out = Outputs::default();
        events += 1;
        if events.is_multiple_of(2_000) {
            let t = now();
            let batch = engine.take_changes();
            encode_ms += t.elapsed().as_secs_f64() * 1e3;
            bytes += batch
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
            entries += batch.len();
            takes += 1;
        }
    }
    println!(
        "checkpoint encoding, the shipped rules over the handbook sample ({events} events, changes \
         taken every 2000): {encode_ms:.0} ms for {takes} checkpoints, {entries} entries, {:.1} MB \
         ({:.0} MB/s)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e3 / encode_ms.max(1e-9)
    );
}
