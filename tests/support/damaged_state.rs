//! Restoring an engine from arbitrary stored state: the body of the
//! `snapshot_restore` fuzz target (`fuzz/`), shared with the test that
//! replays what it found (`tests/checkpoint.rs`).

use std::sync::Arc;
use tripline::engine::{Engine, Outputs, RuleSet};
use tripline::state::{MemoryStore, StateStore};

/// Rules with partial matches, a trailing negation, a past-ending window
/// and two key fields, so a checkpoint holds every kind of state.
pub fn rules() -> Arc<RuleSet> {
    let src = "stream s { key k time t time format epoch_ms lateness 30ms }\n\
               rule seq { within 40ms pattern { a: v == 0 then b: v == 1 repeat 1.. then c: v == 2 } }\n\
               rule absent { within 30ms pattern { a: v == 0 not then b: v == 1 } }\n\
               rule w { key g pattern { x: count(over 50ms ending 20ms ago) >= 2 } }";
    RuleSet::from_source("fuzz.tl", src, None).expect("compiles")
}

fn feed(engine: &mut Engine, rs: &RuleSet, events: &[&str], first_seq: u64, out: &mut Outputs) {
    for (i, l) in events.iter().enumerate() {
        let event = rs
            .decoder()
            .decode(l.as_bytes(), first_seq + i as u64)
            .expect("decodes");
        engine.on_event(event, out);
    }
}

/// A checkpoint of an engine mid-match (partials, windows, buffered events).
pub fn real_checkpoint(rs: &Arc<RuleSet>) -> MemoryStore {
    let mut e = Engine::new(rs.clone());
    let mut out = Outputs::default();
    let events = [
        r#"{"k":1,"g":0,"t":5,"v":0}"#,
        r#"{"k":1,"g":0,"t":9,"v":1}"#,
        r#"{"k":2,"g":0,"t":20,"v":0}"#,
        r#"{"k":1,"g":1,"t":35,"v":1}"#,
        r#"{"k":3,"g":1,"t":30,"v":2}"#,
    ];
    feed(&mut e, rs, &events, 0, &mut out);
    let mut store = MemoryStore::default();
    e.checkpoint(&mut store)
        .expect("a memory store accepts every batch");
    store
}

/// The store fuzz input `data` stands for. Starting with a zero byte: a
/// real checkpoint damaged by edits `[entry: u8][at: u16 LE][xor: u8]`, each
/// flipping bits of one stored value (so the fuzzer works past the headers).
/// Otherwise: entries `[key length: u8][value length: u16 LE][key][value]`.
pub fn store_from(rs: &Arc<RuleSet>, data: &[u8]) -> MemoryStore {
    if let Some((&0, edits)) = data.split_first() {
        let mut store = real_checkpoint(rs);
        let entries = store.scan_prefix(b"").unwrap_or_default();
        for edit in edits.chunks_exact(4) {
            if entries.is_empty() {
                break;
            }
            let (key, mut value) = entries[edit[0] as usize % entries.len()].clone();
            if !value.is_empty() {
                let at = u16::from_le_bytes([edit[1], edit[2]]) as usize % value.len();
                value[at] ^= edit[3];
            }
            let _ = store.write(vec![(key, Some(value))]);
        }
        return store;
    }
    let mut store = MemoryStore::default();
    let mut rest = data;
    while rest.len() >= 3 {
        let kl = rest[0] as usize;
        let vl = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        rest = &rest[3..];
        if rest.len() < kl + vl {
            break;
        }
        let (k, r) = rest.split_at(kl);
        let (v, r) = r.split_at(vl);
        rest = r;
        let _ = store.write(vec![(k.to_vec(), Some(v.to_vec()))]);
    }
    store
}

/// Restores from `store` and, when that succeeds, runs the engine on and to
/// the end: what it produced, or `None` if the state was refused.
pub fn run(rs: &Arc<RuleSet>, store: &MemoryStore) -> Option<Outputs> {
    let mut engine = Engine::new(rs.clone())
        .track_changes()
        .restored(store)
        .ok()?;
    let mut out = Outputs::default();
    let events = [
        r#"{"k":1,"g":0,"t":50,"v":2}"#,
        r#"{"k":2,"g":1,"t":60,"v":0}"#,
    ];
    feed(&mut engine, rs, &events, 100, &mut out);
    engine.take_changes();
    engine.finish(&mut out);
    for a in &out.alerts {
        a.to_json_line();
    }
    Some(out)
}
