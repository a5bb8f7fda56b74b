//! Engine behaviour not covered by the matcher tests: memory is released for
//! keys that went quiet, in both matching modes; records in through
//! `Engine::on_record`; warming a batch's state (`Engine::warm`) changes
//! no output.

use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};
use tripline::event::DecodeError;

const RULES: &str = r#"
stream s { key k time t time format epoch_ms }
rule abc { within 100ms pattern { a: v == "A" then b: v == "B" repeat 1.. then c: v == "C" } }
"#;

/// Key 1 starts a match and goes quiet while key 2 goes on with `filler`
/// events: the keys held before and after.
fn run(lazy: bool, filler: &str) -> (usize, usize) {
    let options = EngineOptions {
        lazy_regular_rules: lazy,
        ..EngineOptions::default()
    };
    let rs = RuleSet::from_source_with("e.tl", RULES, None, options).unwrap();
    assert_eq!(rs.rules()[0].matcher().lazy.is_some(), lazy);
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    let mut feed = |engine: &mut Engine, k: u32, t: i64, v: &str| {
        let line = format!(r#"{{"k":{k},"t":{t},"v":"{v}"}}"#);
        let ev = rs.decoder().decode(line.as_bytes(), t as u64).unwrap();
        engine.on_event(ev, &mut out);
    };
    // Key 1 starts a match and goes quiet; key 2 keeps the stream going.
    feed(&mut engine, 1, 0, "A");
    feed(&mut engine, 1, 10, "B");
    feed(&mut engine, 2, 20, "A");
    engine.sweep_idle_keys();
    let busy = engine.key_count();
    for t in 0..50 {
        feed(&mut engine, 2, 1_000 + t * 10, filler);
    }
    engine.sweep_idle_keys();
    (busy, engine.key_count())
}

#[test]
fn quiet_keys_are_released_in_both_modes() {
    // Explicit partial matches: after the window, neither key holds anything.
    assert_eq!(run(false, "B"), (2, 0));
    assert_eq!(run(false, "D"), (2, 0));
    // Lazy mode: key 1's window has passed and is dropped; key 2 keeps its
    // current window while it holds a possible start (A events)...
    assert_eq!(run(true, "A"), (2, 1));
    // ...but not B events that follow no A in the window: no match can hold
    // them, now or later.
    assert_eq!(run(true, "B"), (2, 0));
    // Events that meet no condition of a rule without strict contiguity are
    // not kept: key 2's window empties too.
    assert_eq!(run(true, "D"), (2, 0));
}

/// A partial match's deadline wakes its key as soon as the watermark passes
/// it: a reported timeout or a trailing `not then` raises its alert then, and
/// a partial match that times out with nothing to raise is let go, with its
/// key, without waiting for the key's next event.
#[test]
fn deadlines_wake_their_key_when_the_watermark_passes() {
    // (rule clauses, pattern, alerts of key 1 once time passed its window)
    let cases = [
        ("", r#"a: v == "A" then c: v == "C""#, 0),
        ("report timeouts", r#"a: v == "A" then c: v == "C""#, 1),
        ("", r#"a: v == "A" not then c: v == "C""#, 1),
    ];
    for (clauses, pattern, alerts) in cases {
        let src = format!(
            "stream s {{ key k time t time format epoch_ms }}\n\
             rule r {{ within 100ms {clauses} pattern {{ {pattern} }} }}"
        );
        // Explicit partial matches (a lazily matched window is let go by
        // the sweep: `quiet_keys_are_released_in_both_modes`).
        let options = EngineOptions {
            lazy_regular_rules: false,
            ..EngineOptions::default()
        };
        let rs = RuleSet::from_source_with("w.tl", &src, None, options).unwrap();
        let mut engine = Engine::new(rs.clone());
        let mut out = Outputs::default();
        let feed = |engine: &mut Engine, out: &mut Outputs, k: u32, t: i64, v: &str| {
            let line = format!(r#"{{"k":{k},"t":{t},"v":"{v}"}}"#);
            engine.on_event(rs.decoder().decode(line.as_bytes(), t as u64).unwrap(), out);
        };
        feed(&mut engine, &mut out, 1, 0, "A");
        // Key 2 moves the watermark well past key 1's window.
        feed(&mut engine, &mut out, 2, 500, "X");
        assert_eq!(out.alerts.len(), alerts, "{clauses} {pattern}");
        assert_eq!(engine.partial_matches(), 0, "{clauses} {pattern}");
        // Key 2 holds nothing either, but only the sweep drops an idle key
        // that was not woken.
        assert_eq!(engine.key_count(), 1, "{clauses} {pattern}");
        engine.sweep_idle_keys();
        assert_eq!(engine.key_count(), 0, "{clauses} {pattern}");
        // Nothing was held back: the end of input raises no more.
        engine.finish(&mut out);
        assert_eq!(out.alerts.len(), alerts, "{clauses} {pattern}");
    }
}

fn ordered_alerts(lateness: &str, lines: &[String]) -> Vec<String> {
    let src = format!(
        r#"
stream s {{ key k time t time format epoch_ms lateness {lateness} }}
rule absent {{ within 30ms pattern {{ a: v == 0 not then b: v == 1 }} }}
rule timeouts {{ within 15ms report timeouts pattern {{ a: v == 1 next b: v == 1 }} }}
rule seq {{ within 40ms skip past last pattern {{ a: v == 0 then b: v == 2 repeat 1.. then c: v == 1 }} }}
"#
    );
    let rs = RuleSet::from_source("o.tl", &src, None).unwrap();
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    for (i, l) in lines.iter().enumerate() {
        engine.on_event(
            rs.decoder().decode(l.as_bytes(), i as u64).unwrap(),
            &mut out,
        );
    }
    engine.finish(&mut out);
    out.alerts.iter().map(|a| a.to_json_line()).collect()
}

#[test]
fn immediate_and_buffered_release_give_the_same_order() {
    // A fixed pseudo-random in-order stream over 4 keys.
    let mut x: u64 = 7;
    let mut t = 0;
    let lines: Vec<String> = (0..400)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += (x % 7) as i64;
            format!(r#"{{"k":{},"t":{t},"v":{}}}"#, x % 4, (x >> 8) % 3)
        })
        .collect();
    let immediate = ordered_alerts("0ms", &lines);
    let buffered = ordered_alerts("10s", &lines);
    assert!(
        immediate.len() > 20,
        "the stream raises alerts of every kind"
    );
    assert!(immediate.iter().any(|a| a.contains(r#""kind":"timeout""#)));
    assert_eq!(immediate, buffered);
}

#[test]
fn a_record_is_decoded_shown_then_taken_and_a_bad_one_changes_nothing() {
    let rs = RuleSet::from_source("e.tl", RULES, None).unwrap();
    let mut engine = Engine::new(rs);
    let mut out = Outputs::default();
    let mut seen = Vec::new();
    let mut feed = |engine: &mut Engine, out: &mut Outputs, seq: u64, line: &str| {
        engine.on_record(0, line.as_bytes(), seq, out, |e, refused| {
            seen.push((e.seq, e.time, refused))
        })
    };
    for (seq, line) in [
        (1, r#"{"k":1,"t":0,"v":"A"}"#),
        (2, r#"{"k":1,"t":10,"v":"B"}"#),
        (3, r#"{"k":1,"t":20,"v":"C"}"#),
    ] {
        feed(&mut engine, &mut out, seq, line).unwrap();
    }
    assert_eq!(out.alerts.len(), 1);
    let err = feed(&mut engine, &mut out, 4, r#"{"k":1,"v":"A"}"#).unwrap_err();
    assert!(matches!(err, DecodeError::MissingTime(_)), "{err}");
    // At or before the watermark (lateness 0: the newest time seen, less 1).
    feed(&mut engine, &mut out, 5, r#"{"k":2,"t":5,"v":"A"}"#).unwrap();
    assert_eq!(
        seen,
        [(1, 0, false), (2, 10, false), (3, 20, false), (5, 5, true)],
        "the callback sees each decoded event, and whether the engine refuses it"
    );
    assert_eq!(out.late.len(), 1);
    assert_eq!(engine.stats().events, 3);
}

const ORDERED: &str = r#"
stream s { key k time t time format epoch_ms lateness 5ms order p desc, id }
rule ab { pattern { a: v == "a" next b: v == "b" } payload { first = a.id, second = b.id } }
"#;

/// Events with the same time go by the stream's `order` (p descending,
/// then id), whatever their arrival, and wait until the watermark passes
/// their time; buffered events keep that order through a checkpoint.
#[test]
fn events_with_the_same_time_go_by_the_stream_order() {
    use tripline::state::MemoryStore;
    let rs = RuleSet::from_source("o.tl", ORDERED, None).unwrap();
    let lines = [
        r#"{"k":1,"t":10,"v":"b","p":1,"id":3}"#,
        r#"{"k":1,"t":10,"v":"b","p":1,"id":2}"#,
        r#"{"k":1,"t":10,"v":"a","p":9,"id":4}"#,
        // Late-coming ties: the watermark is 10 - 5 - 1 = 4, so t = 10 is on time.
        r#"{"k":1,"t":10,"v":"a","p":9,"id":1}"#,
        r#"{"k":1,"t":12,"v":"c","p":0,"id":5}"#,
    ];
    for cut in 0..=lines.len() {
        let mut engine = Engine::new(rs.clone());
        let mut out = Outputs::default();
        for (i, l) in lines.iter().enumerate() {
            if i == cut {
                let mut store = MemoryStore::default();
                engine.checkpoint(&mut store).unwrap();
                engine = Engine::restore(rs.clone(), &store).unwrap();
            }
            engine.on_event(
                rs.decoder().decode(l.as_bytes(), i as u64).unwrap(),
                &mut out,
            );
        }
        assert!(
            out.alerts.is_empty(),
            "nothing at t = 10 before the watermark passes it"
        );
        engine.finish(&mut out);
        let got: Vec<(String, String)> = out
            .alerts
            .iter()
            .map(|a| {
                let v: serde_json::Value = serde_json::from_str(&a.to_json_line()).unwrap();
                (
                    v["values"]["first"].to_string(),
                    v["values"]["second"].to_string(),
                )
            })
            .collect();
        // Order: a#1, a#4 (p 9, by id), then b#2, b#3 (p 1, by id): a#4 next b#2.
        assert_eq!(
            got,
            [("4".into(), "2".into())],
            "checkpoint before event {cut}"
        );
    }
}

/// A shard whose stream says `stream_extra`, fed one approval of 650 at
/// `t0` when the clock reads `now`; then ticked at each of `ticks` (ms
/// after `now`): the alerts and waiting events after each tick.
fn quiet_input(stream_extra: &str, ticks: &[i64]) -> (tripline::runtime::Shard, Vec<(usize, u64)>) {
    use tripline::runtime::{Record, Shard};
    let rs = RuleSet::from_source(
        "q.tl",
        &format!(
            "stream s {{ key card time t time format epoch_ms lateness 5s {stream_extra} }}\n\
             rule big {{ pattern {{ b: amount > 600 }} }}"
        ),
        None,
    )
    .unwrap();
    let mut shard = Shard::standalone(0, rs);
    let now = 1_700_000_000_000;
    let t0: i64 = 1_522_540_800_000;
    let event = format!(r#"{{"card":7,"t":{t0},"amount":650}}"#);
    shard.process_batch_at(vec![Record::data(0, None, Some(event.into_bytes()))], now);
    let mut seen = Vec::new();
    for tick in ticks {
        shard.tick(now + tick);
        let out = shard.take_output();
        seen.push((out.alerts.len(), out.waiting_events));
    }
    (shard, seen)
}

/// On a quiet input, an event waiting for the watermark waits for as long
/// as no later event comes; with `advance after`, event time moves with
/// the wall clock once the input has been quiet that long, and the event
/// is released when the clock has covered the lateness too.
#[test]
fn a_quiet_input_releases_waiting_events_after_advance_after() {
    let (_, seen) = quiet_input("", &[0, 60_000, 86_400_000]);
    assert_eq!(seen, [(0, 1), (0, 1), (0, 1)], "without `advance after`");

    let (_, seen) = quiet_input("advance after 10s", &[0, 9_999, 10_000, 20_000]);
    assert_eq!(seen, [(0, 1), (0, 1), (1, 0), (0, 0)]);

    // Quiet for 2 s moves event time by 2 s: less than the lateness, so the
    // event waits until the clock has covered the 5 s of lateness.
    let (mut shard, seen) = quiet_input("advance after 2s", &[2_000, 4_999, 5_000, 60_000]);
    assert_eq!(seen, [(0, 1), (0, 1), (1, 0), (0, 0)]);
    // The trade-off: an event that comes later, older than where event
    // time moved to, is late (dead-lettered with the reason, never lost).
    let late = r#"{"card":7,"t":1522540801000,"amount":650}"#;
    shard.process_batch_at(
        vec![tripline::runtime::Record::data(
            1,
            None,
            Some(late.as_bytes().to_vec()),
        )],
        1_700_000_060_001,
    );
    let out = shard.take_output();
    assert_eq!(out.alerts.len(), 0);
    assert_eq!(out.dead_letters.len(), 1);
    assert!(
        out.dead_letters[0].reason.contains("watermark"),
        "{}",
        out.dead_letters[0].reason
    );
}

/// `advance after` reads as it is written and says what it expects when it
/// is not.
#[test]
fn advance_after_is_checked() {
    let source = |extra: &str| {
        format!(
            "stream s {{ key card time t time format epoch_ms lateness 5s {extra} }}\n\
             rule big {{ pattern {{ b: amount > 600 }} }}"
        )
    };
    let with = RuleSet::from_source("q.tl", &source("advance after 90s"), None).unwrap();
    assert_eq!(with.def().streams[0].advance_after_ms, Some(90_000));
    let error = RuleSet::from_source("q.tl", &source("advance 90s"), None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("q.tl:1:") && error.contains("advance after 30s"),
        "{error}"
    );
}

/// The alerts (as JSON lines) and feature rows of the shipped rules over the
/// handbook sample's first `n` events, with each batch of `warm` events'
/// state warmed first (`Engine::warm`, as `replay` does) when `warm > 0`.
fn shipped_rules_output(n: usize, warm: usize) -> (Vec<String>, Vec<String>) {
    use std::io::Read;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("rules");
    let rs = tripline::files::load_rules(&[rules.as_path()], None, Default::default()).unwrap();
    let f = std::fs::File::open(root.join("examples/handbook-sample.jsonl.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut text)
        .unwrap();
    let events: Vec<_> = text
        .lines()
        .take(n)
        .enumerate()
        .map(|(i, l)| rs.decoder().decode(l.as_bytes(), i as u64).unwrap())
        .collect();
    let mut engine = Engine::new(rs).collect_features();
    let mut out = Outputs::default();
    for batch in events.chunks(warm.max(1)) {
        if warm > 0 {
            engine.warm(batch);
        }
        for e in batch {
            engine.on_event(e.clone(), &mut out);
        }
    }
    engine.finish(&mut out);
    let alerts = out.alerts.iter().map(|a| a.to_json_line()).collect();
    let features = out
        .features
        .iter()
        .map(|r| format!("{} {:?}", r.event.seq, r.values))
        .collect();
    (alerts, features)
}

#[test]
fn warming_the_next_events_state_changes_no_output() {
    let (alerts, features) = shipped_rules_output(60_000, 0);
    assert!(
        alerts.len() > 10,
        "the sample raises alerts: {}",
        alerts.len()
    );
    assert_eq!(features.len(), 60_000);
    for warm in [1, 7, 32] {
        let (a, f) = shipped_rules_output(60_000, warm);
        assert_eq!(a, alerts, "alerts with batches of {warm}");
        assert_eq!(f, features, "features with batches of {warm}");
    }
}
