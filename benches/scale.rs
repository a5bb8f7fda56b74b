//! How throughput and memory grow with the work: one thread, the engine in
//! memory over a synthetic card stream read from one buffer (decoding
//! included), the heap it holds at the end counted by a counting allocator
//! (`stats_alloc`).
//!
//! 1. **keys**: 10 k → 100 k → 1 M (→ 10 M with `full`) cards, a pattern
//!    rule (A, B+, C within 10 min) and a card's count and average amount
//!    over a day;
//! 2. **window length**: 10 min → 6 h → 30 d, 10 k cards over 46 days of
//!    events: count, average, maximum and distinct terminals over the
//!    window, and five transactions within it (`skip past last event`);
//! 3. **rules**: 1 → 10 → 100 rules of the shipped kinds (a threshold, a
//!    velocity burst, card testing, an amount spike against a 30-day
//!    average), thresholds varied, 10 k cards.
//!
//! `cargo bench --bench scale [-- full|quick]` (`quick`: a fiftieth of the
//! events, to check that it runs). Prints a table per axis and
//! `scale,AXIS,VALUE,EVENTS,EVENTS_PER_S,HEAP_BYTES` lines, which
//! `scripts/plot-scale` draws.

#[path = "support/heap.rs"]
mod heap;
use heap::allocated;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

const STREAM: &str = "stream cards { key card  time ts  time format epoch_ms  lateness 1s }\n";

/// `n` events over `keys` cards, `step_ms` apart (with jitter below it),
/// as one buffer of JSON lines. Deterministic.
fn stream(n: u64, keys: u64, step_ms: i64) -> String {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = String::with_capacity(n as usize * 80);
    let start: i64 = 1_522_540_800_000;
    for i in 0..n {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(2_685_821_657_736_338_717);
        let kind = match (r >> 32) % 10 {
            0 => "A",
            1..=3 => "B",
            4 => "C",
            _ => "D",
        };
        let ts = start + i as i64 * step_ms + ((r >> 48) as i64 % step_ms.max(1));
        // Mostly small amounts, a few large ones, a few probes under 5.
        let amount = match (r >> 8) % 100 {
            0..=2 => (r >> 16) % 5,
            3..=5 => 500 + (r >> 16) % 2000,
            _ => 5 + (r >> 16) % 200,
        };
        out.push_str(&format!(
            "{{\"card\":{},\"ts\":{ts},\"type\":\"{kind}\",\"amount\":{amount}.{:02},\"terminal\":{}}}\n",
            r % keys,
            (r >> 24) % 100,
            (r >> 40) % 1000
        ));
    }
    out
}

fn compile(text: &str) -> Arc<RuleSet> {
    let dir = std::env::temp_dir().join(format!("tripline-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scale.tl");
    std::fs::write(&file, text).unwrap();
    let rs = tripline::files::load_rules(&[Path::new(&file)], None, EngineOptions::default())
        .expect("rules compile");
    std::fs::remove_dir_all(&dir).ok();
    rs
}

/// Replays `text` through `rules`: events/s and heap bytes held at the end
/// by the engine (the input buffer left out).
fn run(rules: &Arc<RuleSet>, text: &str) -> (u64, f64, isize, u64) {
    let before = allocated();
    let mut engine = Engine::new(rules.clone());
    let mut out = Outputs::default();
    let mut alerts = 0u64;
    let started = now();
    let mut n = 0u64;
    for (i, l) in text.lines().enumerate() {
        if let Ok(ev) = rules.decoder().decode(l.as_bytes(), i as u64) {
            engine.on_event(ev, &mut out);
            n += 1;
        }
        alerts += out.alerts.len() as u64;
        out.alerts.clear();
        out.late.clear();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let held = allocated() - before;
    drop(engine);
    (n, rate, held, alerts)
}

fn report(axis: &str, value: &str, per: u64, text: &str, rules: &Arc<RuleSet>, unit: &str) {
    let (n, rate, held, alerts) = run(rules, text);
    println!(
        "| {value} | {n} | {alerts} | {:.0} k | {:.1} MiB | {:.0} B per {unit} |",
        rate / 1e3,
        held as f64 / (1 << 20) as f64,
        held as f64 / per.max(1) as f64
    );
    println!("scale,{axis},{value},{n},{rate:.0},{held}");
}

fn header(title: &str, unit: &str) {
    println!("\n{title}\n");
    println!("| {unit} | events | alerts | events/s | heap held | heap per {unit} |");
    println!("|---|---|---|---|---|---|");
}

/// The rule kinds of the shipped set, `i`-th of them with its thresholds varied.
fn shipped_kind(i: usize) -> String {
    let v = i / 4;
    match i % 4 {
        0 => format!(
            "rule big_{i} {{ severity low pattern {{ tx: amount > {} }} }}\n",
            1000 + 10 * v
        ),
        1 => format!(
            "rule velocity_{i} {{ within {}m skip past last event \
             pattern {{ burst: amount >= 0 repeat {} }} }}\n",
            20 + v % 20,
            5 + v % 3
        ),
        2 => format!(
            "rule card_testing_{i} {{ within 6h skip past last event pattern {{ \
             probe: amount < 5 repeat 2.. consecutive greedy \
             then cashout: amount > {} and amount > 20 * max(probe.amount) }} }}\n",
            150 + v
        ),
        _ => format!(
            "rule amount_spike_{i} {{ pattern {{ tx: amount > {} and count(over 30d) >= 10 \
             and amount > {} * avg(amount over 30d) }} }}\n",
            100 + v,
            4 + v % 3
        ),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "full");
    let div: u64 = if std::env::args().any(|a| a == "quick") {
        50
    } else {
        1
    };

    header(
        "Keys: A, B+, C within 10 min and a day's count and average per card",
        "key",
    );
    let mut keys = vec![10_000u64, 100_000, 1_000_000];
    if full {
        keys.push(10_000_000);
    }
    let rules = compile(&format!(
        "{STREAM}rule abc {{ within 10m pattern {{ a: type == \"A\" \
         then b: type == \"B\" repeat 1.. then c: type == \"C\" }} }}\n\
         features day {{ n = count(over 1d)  avg_amount = avg(amount over 1d) }}\n"
    ));
    for &k in &keys {
        let n = (2 * k).max(2_000_000) / div;
        // A day's events spread over the stream whatever its length.
        let text = stream(n, k, (86_400_000 / n as i64).max(1));
        report("keys", &k.to_string(), k, &text, &rules, "key");
    }

    header(
        "Window length: 10 k cards, an event every 2 s (46 days)",
        "key",
    );
    let text = stream(2_000_000 / div, 10_000, 2_000 * div as i64);
    for w in ["10m", "6h", "30d"] {
        let rules = compile(&format!(
            "{STREAM}features w {{ n = count(over {w})  avg_amount = avg(amount over {w}) \
             most = max(amount over {w})  terminals = count(distinct terminal over {w}) }}\n\
             rule burst {{ within {w} skip past last event pattern {{ b: amount >= 0 repeat 5 }} }}\n"
        ));
        report("window", w, 10_000, &text, &rules, "key");
    }

    header(
        "Rules of the shipped kinds: 10 k cards, an event every 100 ms",
        "rule",
    );
    let text = stream(1_000_000 / div, 10_000, 100);
    for count in [1usize, 10, 100] {
        let mut src = STREAM.to_string();
        for i in 0..count {
            src.push_str(&shipped_kind(i));
        }
        report(
            "rules",
            &count.to_string(),
            count as u64,
            &text,
            &compile(&src),
            "rule",
        );
    }
}
