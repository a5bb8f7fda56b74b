//! Checkpoint/restore equivalence: a straight run equals a run that is
//! checkpointed and restored (into a new engine) at random points, a run
//! whose idle keys are passivated to the store and read back, and a run split
//! over any number of partitions. And a damaged snapshot is an error, never
//! a panic.

#[path = "support/damaged_state.rs"]
mod damaged_state;

#[path = "support/feed.rs"]
mod feed_support;

use feed_support::feed;
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use tripline::engine::{Engine, Outputs, RuleSet};
use tripline::event::Value;
use tripline::state::{Change, Entry, MemoryStore, SnapshotError, StateStore};

/// One store seen by the test (which applies the engine's batches to it)
/// and by the engine (which reads passivated keys back from it).
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<MemoryStore>>);

impl StateStore for Shared {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        self.0.lock().unwrap().get(key)
    }
    fn write(&mut self, batch: Vec<Change>) -> Result<(), SnapshotError> {
        self.0.lock().unwrap().write(batch)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, SnapshotError> {
        self.0.lock().unwrap().scan_prefix(prefix)
    }
}

const RULES: &str = r#"
stream s { key k time t time format epoch_ms lateness 30ms }
rule seq { within 40ms pattern { a: v == 0 then b: v == 1 repeat 1.. then c: v == 2 } payload { n = count(b) } }
rule absent { within 30ms pattern { a: v == 0 not then b: v == 1 } }
rule burst { within 25ms skip past last pattern { x: true repeat 3 } payload { n = count(over 30ms), d = count(distinct v over 1s) } }
rule late_label { key g pattern { x: count(over 50ms ending 20ms ago) >= 2 and avg(v over 50ms ending 20ms ago) > 0.5 } }
rule timeouts { within 15ms report timeouts pattern { a: v == 1 next b: v == 1 } }
rule quiet { suppress 20ms pattern { x: v == 2 } payload { n = count(over 30ms) } }
"#;

fn rules() -> Arc<RuleSet> {
    RuleSet::from_source("c.tl", RULES, None).expect("compiles")
}

fn lines(raw: &[(u8, u8, i64)]) -> Vec<String> {
    let mut t = 0;
    raw.iter()
        .map(|(k, v, dt)| {
            t += dt;
            format!("{{\"k\":{k},\"g\":{},\"t\":{t},\"v\":{v}}}", (k + v) % 2)
        })
        .collect()
}

/// The input's outputs without interruption, to the end.
fn straight_run(rs: &Arc<RuleSet>, input: &[String]) -> Outputs {
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    feed(&mut engine, input, 0, &mut out);
    engine.finish(&mut out);
    out
}

/// Random cut points as the ends of the segments an input of `len` lines is
/// fed in: sorted and distinct, then `len` (even if a cut is already there,
/// so a checkpoint of the finished input is restored once more).
fn segment_ends(cuts: Vec<usize>, len: usize) -> Vec<usize> {
    let mut ends: Vec<usize> = cuts.into_iter().map(|c| c % (len + 1)).collect();
    ends.sort();
    ends.dedup();
    ends.push(len);
    ends
}

fn alert_lines(out: &Outputs) -> Vec<String> {
    out.alerts.iter().map(|a| a.to_json_line()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn restore_anywhere_equals_straight_run(
        raw in prop::collection::vec((0u8..3, 0u8..3, 0i64..8), 1..80),
        cuts in prop::collection::vec(0usize..80, 0..4),
    ) {
        let rs = rules();
        let input = lines(&raw);
        let want = straight_run(&rs, &input);
        let cuts = segment_ends(cuts, input.len());
        let mut got = Outputs::default();
        let mut engine = Engine::new(rs.clone());
        let mut at = 0;
        for cut in cuts {
            feed(&mut engine, &input[at..cut], at, &mut got);
            at = cut;
            let mut store = MemoryStore::default();
            engine.checkpoint(&mut store).expect("checkpoint");
            engine = Engine::restore(rs.clone(), &store).expect("restore");
        }
        engine.finish(&mut got);
        prop_assert_eq!(alert_lines(&got), alert_lines(&want));
        prop_assert_eq!(got.late.len(), want.late.len());
    }

    /// The service's changelog: only changed keys are written at each
    /// checkpoint, and the store they build restores the same run.
    #[test]
    fn incremental_changes_rebuild_the_full_checkpoint(
        raw in prop::collection::vec((0u8..3, 0u8..3, 0i64..8), 1..80),
        cuts in prop::collection::vec(0usize..80, 0..5),
    ) {
        let rs = rules();
        let input = lines(&raw);
        let want = straight_run(&rs, &input);
        let cuts = segment_ends(cuts, input.len());
        let mut changelog = MemoryStore::default();
        let mut got = Outputs::default();
        let mut engine = Engine::new(rs.clone()).track_changes();
        let mut at = 0;
        for cut in cuts {
            feed(&mut engine, &input[at..cut], at, &mut got);
            at = cut;
            changelog.write(engine.take_changes()).expect("apply changes");
            let mut full = MemoryStore::default();
            engine.checkpoint(&mut full).expect("checkpoint");
            // The same entries; a chunk of a log may still hold events no
            // window holds (until the chunk goes), which restores ignore.
            let entries = |s: &MemoryStore, chunks: bool| -> Vec<Vec<u8>> {
                s.scan_prefix(b"").unwrap().into_iter()
                    .filter(|(k, _)| k.starts_with(b"l/") == chunks)
                    .map(|(k, v)| if chunks { k } else { [k, v].concat() })
                    .collect()
            };
            prop_assert_eq!(entries(&changelog, false), entries(&full, false));
            prop_assert_eq!(entries(&changelog, true), entries(&full, true));
            engine = Engine::new(rs.clone()).track_changes().restored(&changelog).expect("restore");
            let mut again = MemoryStore::default();
            Engine::new(rs.clone()).restored(&changelog).expect("restore")
                .checkpoint(&mut again).expect("checkpoint");
            prop_assert_eq!(again.scan_prefix(b"").unwrap(), full.scan_prefix(b"").unwrap());
        }
        engine.finish(&mut got);
        prop_assert_eq!(alert_lines(&got), alert_lines(&want));
    }

    /// Memory so tight that every stored key is evicted at each
    /// checkpoint, or so ample that none is but idle ones are frozen: each
    /// is read back from the store, or decoded, on its next event or
    /// deadline, and the run is the straight one. Some batches reach the
    /// store late (as when the service's local write follows the commit),
    /// and the engine restarts from the store at some checkpoints.
    #[test]
    fn passivated_keys_read_back_equal_straight_run(
        raw in prop::collection::vec((0u8..4, 0u8..3, 0i64..8), 1..120),
        cuts in prop::collection::vec(0usize..120, 0..30),
        lag in any::<bool>(),
        restarts in any::<u32>(),
        tight in any::<bool>(),
    ) {
        let budget = if tight { 0 } else { usize::MAX };
        let rs = rules();
        let input = lines(&raw);
        let want = straight_run(&rs, &input);
        let cuts = segment_ends(cuts, input.len());
        let mut store = Shared::default();
        let passivating = |store: &Shared| {
            Engine::new(rs.clone()).with_passivation(Box::new(store.clone()), budget)
        };
        let mut engine = passivating(&store);
        let mut got = Outputs::default();
        let mut unwritten: Option<(u64, Vec<Change>)> = None;
        let mut at = 0;
        for (i, cut) in cuts.into_iter().enumerate() {
            feed(&mut engine, &input[at..cut], at, &mut got);
            at = cut;
            let batch = engine.take_changes();
            let number = engine.batches();
            if let Some((n, b)) = unwritten.take() {
                store.write(b).unwrap();
                engine.passivate(n, budget);
            }
            if lag {
                unwritten = Some((number, batch));
            } else {
                store.write(batch).unwrap();
                engine.passivate(number, budget);
            }
            if restarts & (1 << (i % 32)) != 0 && unwritten.is_none() {
                engine = passivating(&store).restored(&store).expect("restore");
            }
            prop_assert!(engine.take_state_error().is_none());
        }
        engine.finish(&mut got);
        prop_assert!(engine.take_state_error().is_none());
        prop_assert_eq!(alert_lines(&got), alert_lines(&want));
    }

    /// The same input split over 1 to 4 partitions by each rule's key (as
    /// the service partitions its input and internal topics), with
    /// checkpoints and restores in each: the same alerts.
    #[test]
    fn any_partition_count_gives_the_same_alerts(
        raw in prop::collection::vec((0u8..6, 0u8..3, 1i64..8), 1..80),
        partitions in 1usize..5,
        cuts in prop::collection::vec(0usize..80, 0..4),
    ) {
        let rs = rules();
        let input = lines(&raw);
        let mut want = alert_lines(&straight_run(&rs, &input));
        want.sort();
        let mut got = Vec::new();
        for keying in rs.keyings() {
            let part = rs.for_key(Some(keying.slot));
            for p in 0..partitions {
                // Each event keeps its position in the whole input as its
                // sequence number, as a record keeps its offset.
                let mine: Vec<usize> = (0..input.len())
                    .filter(|&i| {
                        let ev = part.decoder().decode(input[i].as_bytes(), 0).expect("decodes");
                        match ev.field(keying.slot) {
                            Value::Num(k) => *k as usize % partitions == p,
                            other => panic!("numeric keys only, not {other}"),
                        }
                    })
                    .collect();
                let ends = segment_ends(cuts.clone(), mine.len());
                let mut out = Outputs::default();
                let mut engine = Engine::new(part.clone());
                let mut at = 0;
                for end in ends {
                    for &i in &mine[at..end] {
                        let ev = part.decoder().decode(input[i].as_bytes(), i as u64).expect("decodes");
                        engine.on_event(ev, &mut out);
                    }
                    at = end;
                    let mut store = MemoryStore::default();
                    engine.checkpoint(&mut store).expect("checkpoint");
                    engine = Engine::restore(part.clone(), &store).expect("restore");
                }
                engine.finish(&mut out);
                got.extend(alert_lines(&out));
            }
        }
        got.sort();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn damaged_snapshots_are_errors_not_panics(
        raw in prop::collection::vec((0u8..3, 0u8..3, 0i64..8), 1..40),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        truncate in any::<bool>(),
    ) {
        let rs = rules();
        let input = lines(&raw);
        let mut engine = Engine::new(rs.clone());
        let mut out = Outputs::default();
        feed(&mut engine, &input, 0, &mut out);
        let mut store = MemoryStore::default();
        engine.checkpoint(&mut store).unwrap();
        let entries = store.scan_prefix(b"").unwrap();
        let mut damaged = MemoryStore::default();
        for (k, mut v) in entries {
            for (idx, byte) in &flips {
                let i = idx.index(v.len());
                v[i] ^= byte | 1;
            }
            if truncate {
                v.truncate(v.len() / 2);
            }
            damaged.write(vec![(k, Some(v))]).unwrap();
        }
        // Either an error naming the problem, or a state the engine can run on.
        if let Ok(mut e) = Engine::restore(rs.clone(), &damaged) {
            let mut out = Outputs::default();
            feed(&mut e, &input, 1000, &mut out);
            e.finish(&mut out);
        }
    }
}

/// State is stored with the rules it was written under, so restoring it
/// under other rules migrates it (`tests/migrate.rs` covers what survives).
#[test]
fn snapshot_of_other_rules_is_migrated() {
    let rs = rules();
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    feed(&mut engine, &lines(&[(1, 0, 1), (1, 1, 2)]), 0, &mut out);
    let mut store = MemoryStore::default();
    engine.checkpoint(&mut store).unwrap();
    let other = RuleSet::from_source("c.tl", &RULES.replace("40ms", "41ms"), None).unwrap();
    let mut restored = Engine::restore(other, &store).expect("migrates");
    let migration = restored.take_migration().expect("a migration report");
    assert_eq!(migration.keys, engine.key_count());
    assert_eq!(restored.key_count(), engine.key_count());
    assert!(
        Engine::restore(rs, &store)
            .unwrap()
            .take_migration()
            .is_none()
    );
}

#[test]
fn snapshot_times_no_event_can_have_are_refused() {
    use tripline::pattern::matcher::{MatcherSnapshot, MatcherState, PartialSnapshot};
    // Found by damaged_snapshots_are_errors_not_panics: a partial match starting
    // near i64::MAX gets a saturated deadline that advancing time never reaches,
    // so the engine re-fired the same timer forever.
    let rs = rules();
    let nfa = &rs.rules()[0].matcher().nfa;
    let start = PartialSnapshot {
        state: nfa.start,
        node: None,
        start_ts: 0,
        prev_ts: 0,
        start: None,
    };
    let stranded = PartialSnapshot {
        state: nfa.states.len() as u32 - 1,
        node: None,
        start_ts: i64::MAX - 5,
        prev_ts: i64::MAX - 5,
        start: Some((i64::MAX - 5, 0)),
    };
    let snap = |partials| MatcherSnapshot {
        nodes: vec![],
        partials,
        completed: vec![],
        recent: None,
    };
    let ok = MatcherState::from_snapshot(&snap(vec![start.clone()]), &[], nfa, None);
    assert!(ok.is_ok(), "{ok:?}");
    let bad = MatcherState::from_snapshot(&snap(vec![stranded, start]), &[], nfa, None);
    assert!(bad.unwrap_err().to_string().contains("out of range"));
}

/// A fuzzer-found kind of state (one bit flipped in a real checkpoint: a
/// partial match's deadline that survives advancing past it) that made the
/// engine run for minutes: the `snapshot_restore` target's input, replayed
/// (the bit found again in the first key's entry since logged events are
/// entries of their own).
#[test]
fn damaged_state_fuzz_regression_finishes() {
    let rs = damaged_state::rules();
    let store = damaged_state::store_from(&rs, &[0x00, 0x04, 0x6b, 0x00, 0x02]);
    if let Some(out) = damaged_state::run(&rs, &store) {
        assert!(
            out.errors
                .iter()
                .any(|r| r.message.contains("damaged state")),
            "the damage is reported: {:?}",
            out.errors
        );
    }
}

/// Keys left idle for a few checkpoints are frozen (kept encoded in
/// memory), decoded again by their next event or deadline, and the run is
/// the straight one; a restore with room in the budget keeps keys frozen.
#[test]
fn idle_keys_freeze_and_thaw() {
    let rs = rules();
    // Keys 0..4 start partial matches early; then only key 5 is busy for
    // many checkpoints; then keys 0..4 come back.
    let mut raw: Vec<(u8, u8, i64)> = (0..4).map(|k| (k, 0, 1)).collect();
    raw.extend((0..40).map(|i| (5, (i % 3) as u8, 1)));
    raw.extend((0..4).flat_map(|k| [(k, 1, 1), (k, 2, 1)]));
    let input = lines(&raw);
    let want = straight_run(&rs, &input);
    let store = Shared::default();
    let mut engine = Engine::new(rs.clone()).with_passivation(Box::new(store.clone()), usize::MAX);
    let mut got = Outputs::default();
    let mut most_frozen = 0;
    for (i, line) in input.iter().enumerate() {
        feed(&mut engine, std::slice::from_ref(line), i, &mut got);
        let batch = engine.take_changes();
        store.clone().write(batch).unwrap();
        engine.passivate(engine.batches(), usize::MAX);
        let stats = engine.passivation_stats().unwrap();
        most_frozen = most_frozen.max(stats.frozen_keys);
        assert_eq!(stats.cold_keys, 0, "nothing is evicted with room to spare");
    }
    engine.finish(&mut got);
    assert!(engine.take_state_error().is_none());
    let stats = engine.passivation_stats().unwrap();
    assert!(
        most_frozen >= 4,
        "the idle keys were frozen ({most_frozen})"
    );
    assert!(
        stats.thaws >= 4,
        "and decoded again ({} thaws)",
        stats.thaws
    );
    assert_eq!(alert_lines(&got), alert_lines(&want));

    let restored = Engine::new(rs.clone())
        .with_passivation(Box::new(store.clone()), usize::MAX)
        .restored(&store)
        .expect("restore");
    let stats = restored.passivation_stats().unwrap();
    assert!(restored.key_count() > 0);
    assert_eq!(stats.frozen_keys as usize, restored.key_count());
}

/// A key's 30-day window over 60 days of hourly events: each checkpoint
/// writes the key's entry and the chunk of its log its new events fell in,
/// and deletes the chunks that left the window, never the month's events
/// again; the store those batches build restores the run.
#[test]
fn a_checkpoint_writes_only_what_its_events_logged() {
    let src = "stream s { key k time t time format epoch_ms }\n\
               rule spike { pattern { e: v > 2 * avg(v over 30d) and count(over 30d) > 3 } }\n";
    let rs = RuleSet::from_source("month.tl", src, None).expect("compiles");
    let hour = 3_600_000i64;
    let event = |i: i64| {
        let spike = 20 * i64::from(i % 200 == 199);
        format!(
            r#"{{"k":1,"t":{},"v":{}}}"#,
            i * hour,
            1 + (i * 7) % 5 + spike
        )
    };
    let input: Vec<String> = (0..1440).map(event).collect();
    let mut engine = Engine::new(rs.clone()).track_changes();
    let mut store = MemoryStore::default();
    let mut out = Outputs::default();
    let (mut puts, mut deletes, mut largest) = (0usize, 0usize, 0usize);
    for (i, line) in input.iter().enumerate() {
        feed(&mut engine, std::slice::from_ref(line), i, &mut out);
        let batch = engine.take_changes();
        let chunks = |put: bool| {
            batch
                .iter()
                .filter(|(k, v)| k.starts_with(b"l/") && v.is_some() == put)
                .count()
        };
        assert!(
            chunks(true) <= 1,
            "event {i}: {} chunks written",
            chunks(true)
        );
        assert!(
            chunks(false) <= 1,
            "event {i}: {} chunks deleted",
            chunks(false)
        );
        puts += chunks(true);
        deletes += chunks(false);
        for (k, v) in &batch {
            if !k.starts_with(b"b/") {
                largest = largest.max(v.as_ref().map_or(0, Vec::len));
            }
        }
        store.write(batch).expect("applies");
    }
    // The window holds events 720..1440, in chunks 22..45 of 32 events;
    // chunks 0..22 went.
    assert_eq!(puts, 1440, "the newest chunk, at every event");
    assert_eq!(store.scan_prefix(b"l/").unwrap().len(), 23);
    assert_eq!(deletes, 22);
    assert!(largest < 800, "no entry holds the month: {largest} bytes");
    // The store restores the run: the same alerts to the end as without
    // a restore.
    let mut restored = Engine::new(rs.clone())
        .track_changes()
        .restored(&store)
        .expect("restores");
    let more: Vec<String> = (1440..1700).map(event).collect();
    let mut rest = Outputs::default();
    feed(&mut restored, &more, 1440, &mut rest);
    restored.finish(&mut rest);
    let mut straight = Outputs::default();
    feed(&mut engine, &more, 1440, &mut straight);
    engine.finish(&mut straight);
    assert!(!straight.alerts.is_empty());
    assert_eq!(alert_lines(&rest), alert_lines(&straight));
}
